"""Point estimates of the classification metrics (scikit-learn, through the bundle's
``scripts.evaluation.classification_metrics``), calibration bins and the reliability table, and the formatting of
estimates with intervals and of mean ± SD over folds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from analysis.predictions import DEFAULT_BINS, DEFAULT_THRESHOLD

# Reported metrics, in table order, with their display names.
METRICS: dict[str, str] = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "precision": "Precision (PPV at the test set's prevalence)",
    "f1": "F1",
    "roc_auc": "ROC-AUC",
    "brier": "Brier score",
    "ece": "Expected calibration error",
}
CONFUSION_CELLS = ("tn", "fp", "fn", "tp")


def calibration_bins(prob: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Equal-width bin index (0 .. n_bins-1) of each probability, with scikit-learn's ``calibration_curve`` rule
    (a probability on an inner edge belongs to the lower bin), so the reliability diagram and ECE share bins."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], prob)


def expected_calibration_error(label: Sequence[int], prob: Sequence[float], n_bins: int = DEFAULT_BINS) -> float:
    """ECE with ``n_bins`` equal-width bins: sum over bins of (bin share of scans) x |mean prob - fraction AD|."""
    y = np.asarray(label, dtype=float)
    p = np.asarray(prob, dtype=float)
    bins = calibration_bins(p, n_bins)
    gap = np.bincount(bins, weights=p, minlength=n_bins) - np.bincount(bins, weights=y, minlength=n_bins)
    return float(np.abs(gap).sum() / len(y))


def reliability_table(label: Sequence[int], prob: Sequence[float], n_bins: int = DEFAULT_BINS) -> list[dict]:
    """Per equal-width bin: edges, number of scans, mean predicted AD probability and observed fraction AD."""
    y = np.asarray(label, dtype=float)
    p = np.asarray(prob, dtype=float)
    bins = calibration_bins(p, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    rows = []
    for b in range(n_bins):
        rows.append(
            {
                "lower": b / n_bins,
                "upper": (b + 1) / n_bins,
                "count": int(count[b]),
                "mean_predicted": float(sum_p[b] / count[b]) if count[b] else None,
                "fraction_AD": float(sum_y[b] / count[b]) if count[b] else None,
            }
        )
    return rows


def point_metrics(
    label: Sequence[int], prob: Sequence[float], threshold: float = DEFAULT_THRESHOLD, n_bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """Every metric of :data:`METRICS` plus the confusion matrix, from scikit-learn.

    A metric that is undefined on these data is None: ROC-AUC, balanced accuracy, sensitivity or specificity without
    both classes, precision when nothing is predicted AD (scikit-learn's ``zero_division=0`` would report 0, which
    reads like a measurement), F1 when there are neither AD scans nor AD predictions.
    """
    # Imported here, not at the top: it imports torch (seconds), which nothing else in this module needs. The
    # package's __init__ has loaded the bundle's ``scripts`` package.
    from scripts.evaluation import classification_metrics

    y = np.asarray(label, dtype=int)
    p = np.asarray(prob, dtype=float)
    base = classification_metrics(y, p, threshold=threshold)
    (tn, fp), (fn, tp) = base["confusion_matrix"]["rows_true_cols_pred"]
    result: dict[str, Any] = {name: base.get(name) for name in ("accuracy", "balanced_accuracy", "roc_auc", "f1")}
    result["sensitivity"] = base["sensitivity"] if tp + fn else None
    result["specificity"] = base["specificity"] if tn + fp else None
    result["precision"] = base["precision"] if tp + fp else None
    if tp + fp + fn == 0:
        result["f1"] = None
    result["brier"] = float(skm.brier_score_loss(y, p, pos_label=1))
    result["ece"] = expected_calibration_error(y, p, n_bins)
    result["confusion_matrix"] = {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}
    return result


def mean_std(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation (ddof=1, as cross-validation results are usually reported) of the
    defined values."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std(ddof=1)) if finite.size > 1 else None,
        "n": int(finite.size),
    }


def format_interval(entry: Mapping[str, Any], percent: bool = False, digits: int = 3) -> str:
    """``0.773 (0.712-0.829)`` (or ``77.3% (71.2-82.9)``); ``n/a`` when undefined."""
    value = entry.get("value")
    if value is None:
        return "n/a"
    scale, unit, d = (100.0, "%", digits - 2 if digits > 2 else 1) if percent else (1.0, "", digits)
    text = f"{value * scale:.{d}f}{unit}"
    if entry.get("ci_low") is not None:
        text += f" ({entry['ci_low'] * scale:.{d}f}\u2013{entry['ci_high'] * scale:.{d}f})"
    return text
