"""Results and analysis for the AD vs CN bundle: metrics with subject-bootstrap confidence intervals, paired model
comparisons, k-fold cross-validation through the bundle, Bayesian post-test probabilities, a comparison with published
visual MRI reads, and a self-contained HTML report. Command line: ``python -m analysis -h``.

Modules: ``metrics`` (per-scan and per-subject metrics, bootstrap, DeLong, McNemar), ``bayes`` (Beta posteriors,
PPV/NPV and likelihood ratios at chosen prevalences), ``clinicians`` (published sensitivity/specificity of visual
reads, with citations), ``crossval`` (train and evaluate every fold, resumable), ``figures`` (PNG figures) and
``report`` (HTML and JSON report).
"""

import sys
from pathlib import Path

# The bundle's ``scripts`` package (e.g. ``scripts.evaluation.classification_metrics``) is imported from the bundle
# folder, as ``preprocessing`` does, since the bundle is not an installed package.
REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundle"
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))
