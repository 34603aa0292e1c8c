"""Results and analysis for the AD vs CN bundle: metrics with subject-bootstrap confidence intervals, paired model
comparisons, k-fold cross-validation through the bundle, Bayesian post-test probabilities, a comparison with published
visual MRI reads, and a self-contained HTML report. Command line: ``python -m analysis -h``.

Modules: ``metrics`` (the public face of ``predictions``, ``point_estimates``, ``bootstrap`` and
``model_comparison``: per-scan and per-subject metrics, subject bootstrap, DeLong, McNemar), ``bayes`` (Beta
posteriors, PPV/NPV and likelihood ratios at chosen prevalences), ``clinicians`` (published sensitivity/specificity of
visual reads, with citations), ``crossval`` (train and evaluate every fold, resumable), ``figures`` (PNG figures),
``report`` (HTML and JSON report; ``report_results`` gathers, ``report_html`` and ``templates/`` render) and
``explain`` (relevance maps and their regions).
"""

from preprocessing.bundle_scripts import bundle_root, load_bundle_scripts

# The bundle's ``scripts`` package (e.g. ``scripts.evaluation.classification_metrics``) is loaded from the bundle
# folder, as MONAI does for a bundle's own code.
load_bundle_scripts()
BUNDLE_ROOT = bundle_root()
