"""Results and analysis for the AD vs CN bundle: metrics with subject-bootstrap confidence intervals, paired model
comparisons, k-fold cross-validation through the bundle, Bayesian post-test probabilities, a comparison with published
visual MRI reads, and a self-contained HTML report. Command line: ``python -m analysis -h``.

Modules: ``metrics`` (the public face of ``predictions``, ``point_estimates``, ``bootstrap`` and
``model_comparison``: per-scan and per-subject metrics, subject bootstrap, DeLong, McNemar), ``bayes`` (Beta
posteriors, PPV/NPV and likelihood ratios at chosen prevalences), ``clinicians`` (published sensitivity/specificity of
visual reads, with citations), ``crossval`` (train and evaluate every fold, resumable, optionally also on an
external test set), ``multiclass`` (k-class metrics: per-class sensitivity/specificity, one-vs-rest and macro AUC,
k x k confusion matrix, with subject-bootstrap intervals), ``stages`` (accuracy by disease stage: CDR, MMSE,
synthetic atrophy), ``external`` (internal against external validation, the drop and its interval), ``figures`` (PNG
figures), ``report`` (HTML and JSON report; ``report_results`` gathers, ``report_html``, ``report_sections`` and
``templates/`` render) and ``explain`` (relevance maps and their regions).

With more than two classes (e.g. CN, MCI, AD), the binary metrics, ROC, calibration, DeLong and the Bayesian analysis
are those of AD against all other classes (``read_predictions``); ``multiclass`` gives the k-class view.
"""

from preprocessing.bundle_scripts import bundle_root, load_bundle_scripts

# The bundle's ``scripts`` package (e.g. ``scripts.evaluation.classification_metrics``) is loaded from the bundle
# folder, as MONAI does for a bundle's own code.
load_bundle_scripts()
BUNDLE_ROOT = bundle_root()
