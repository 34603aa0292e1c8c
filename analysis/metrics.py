"""Classification metrics per scan and per subject, with 95% confidence intervals by bootstrap over subjects, and
paired comparisons of two models on the same test scans (DeLong and paired bootstrap for ROC-AUC, McNemar for
accuracy).

Point estimates use scikit-learn (through the bundle's ``scripts.evaluation.classification_metrics``). The bootstrap
recomputes the same metrics on thousands of resamples; calling scikit-learn thousands of times would take tens of
seconds, so the resamples are expressed as per-scan weights (how often each scan's subject was drawn) and every metric
is computed for all resamples at once with weighted sums. ``tests/test_analysis_metrics.py`` checks the weighted
arithmetic against scikit-learn.

Positive class: AD (label 1). A scan is predicted AD when ``prob_AD >= threshold`` (0.5 by default, as in the
bundle's evaluation). Per subject, a subject's probability is the mean of its scans' probabilities.

The code lives in ``analysis.predictions`` (the predictions and the defaults), ``analysis.point_estimates`` (point
metrics, calibration, formatting), ``analysis.bootstrap`` (subject bootstrap, intervals, ROC band) and
``analysis.model_comparison`` (DeLong, paired bootstrap, McNemar); every name is importable from here as before.
"""

from __future__ import annotations

from analysis.bootstrap import (
    evaluate_level,
    evaluate_predictions,
    percentile_interval,
    resample_indices,
    roc_with_band,
    subject_bootstrap_weights,
    weighted_auc,
    weighted_metrics,
)
from analysis.model_comparison import (
    _placements,
    align_predictions,
    compare_models,
    delong_test,
    exact_mcnemar_p,
    mcnemar_test,
    paired_bootstrap_auc,
)
from analysis.point_estimates import (
    CONFUSION_CELLS,
    METRICS,
    calibration_bins,
    expected_calibration_error,
    format_interval,
    mean_std,
    point_metrics,
    reliability_table,
)
from analysis.predictions import (
    CONFIDENCE,
    DEFAULT_BINS,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    DEFAULT_THRESHOLD,
    Predictions,
    concat_predictions,
    make_predictions,
    per_subject,
    read_predictions,
)

__all__ = [
    "CONFIDENCE",
    "CONFUSION_CELLS",
    "DEFAULT_BINS",
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "DEFAULT_THRESHOLD",
    "METRICS",
    "Predictions",
    "_placements",
    "align_predictions",
    "calibration_bins",
    "compare_models",
    "concat_predictions",
    "delong_test",
    "evaluate_level",
    "evaluate_predictions",
    "exact_mcnemar_p",
    "expected_calibration_error",
    "format_interval",
    "make_predictions",
    "mcnemar_test",
    "mean_std",
    "paired_bootstrap_auc",
    "per_subject",
    "percentile_interval",
    "point_metrics",
    "read_predictions",
    "reliability_table",
    "resample_indices",
    "roc_with_band",
    "subject_bootstrap_weights",
    "weighted_auc",
    "weighted_metrics",
]
