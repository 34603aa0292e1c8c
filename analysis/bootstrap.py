"""95% confidence intervals by bootstrap over subjects (a subject's scans are resampled together), for every metric
and for the ROC curve.

The bootstrap recomputes the point estimates' metrics on thousands of resamples; calling scikit-learn thousands of
times would take tens of seconds, so the resamples are expressed as per-scan weights (how often each scan's subject
was drawn) and every metric is computed for all resamples at once with weighted sums.
``tests/test_analysis_metrics.py`` checks the weighted arithmetic against scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from analysis.point_estimates import CONFUSION_CELLS, METRICS, calibration_bins, point_metrics, reliability_table
from analysis.predictions import (
    CONFIDENCE,
    DEFAULT_BINS,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    DEFAULT_THRESHOLD,
    Predictions,
    per_subject,
)


def subject_bootstrap_weights(
    subjects: Sequence[Any], n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """Resample subjects with replacement; return a (n_resamples, n_scans) array of how many times each scan is in
    each resample, which is how many times its subject was drawn, so a subject's scans always travel together.

    The number of draws of each of S subjects in a resample of size S is multinomial(S, 1/S each); drawing the
    counts directly is the same distribution as drawing S subject indices, without building index lists.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}.")
    _, inverse = np.unique(np.asarray(subjects), return_inverse=True)
    n_subjects = int(inverse.max()) + 1
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_subjects, np.full(n_subjects, 1.0 / n_subjects), size=n_resamples)
    return counts[:, inverse].astype(np.int32)


def resample_indices(weights_row: np.ndarray) -> np.ndarray:
    """The scan indices of one resample (each repeated as often as it was drawn), e.g. to inspect a resample."""
    return np.repeat(np.arange(len(weights_row)), weights_row)


def weighted_auc(weights: np.ndarray, label: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """ROC-AUC for each row of ``weights`` (Mann-Whitney form, ties count one half); NaN where a class is absent."""
    w = np.atleast_2d(weights).astype(float)
    order = np.argsort(prob, kind="mergesort")
    p = prob[order]
    y = label[order]
    w = w[:, order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])  # groups of tied scores
    neg = np.add.reduceat(w * (y == 0), starts, axis=1)
    pos = np.add.reduceat(w * (y == 1), starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    numerator = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def weighted_metrics(
    weights: np.ndarray,
    label: np.ndarray,
    prob: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    n_bins: int = DEFAULT_BINS,
) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` and the confusion counts for each row of ``weights`` at once (NaN where
    undefined). With a row of ones this is the plain metric on the data; with integer counts it equals the metric on
    the data with each scan repeated that many times."""
    w = np.atleast_2d(weights).astype(float)
    y = np.asarray(label, dtype=int)
    p = np.asarray(prob, dtype=float)
    ad = y == 1
    called = p >= threshold
    tp = w[:, ad & called].sum(axis=1)
    fn = w[:, ad & ~called].sum(axis=1)
    fp = w[:, ~ad & called].sum(axis=1)
    tn = w[:, ~ad & ~called].sum(axis=1)
    total = tp + fn + fp + tn
    bins = calibration_bins(p, n_bins)
    onehot = np.eye(n_bins)[bins]
    calibration_gap = w @ (onehot * (p - y)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = tp / (tp + fn)
        specificity = tn / (tn + fp)
        return {
            "accuracy": (tp + tn) / total,
            "balanced_accuracy": (sensitivity + specificity) / 2,
            "sensitivity": sensitivity,
            "specificity": specificity,
            "precision": tp / (tp + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "roc_auc": weighted_auc(w, y, p),
            "brier": w @ (p - y) ** 2 / total,
            "ece": np.abs(calibration_gap).sum(axis=1) / total,
            "tn": tn,
            "fp": fp,
            "fn": fn,
            "tp": tp,
        }


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float | None, float | None, int]:
    """Percentile interval of the finite values and how many there were (resamples where the metric was defined)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None, None, 0
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high), int(finite.size)


def evaluate_level(
    pred: Predictions,
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    n_bins: int = DEFAULT_BINS,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Point estimates and subject-bootstrap percentile intervals of every metric for one level (scan or subject)."""
    point = point_metrics(pred.label, pred.prob, threshold, n_bins)
    weights = subject_bootstrap_weights(pred.subject, n_resamples, seed)
    boot = weighted_metrics(weights, pred.label, pred.prob, threshold, n_bins)
    metrics = {}
    for name in METRICS:
        low, high, used = percentile_interval(boot[name], confidence)
        metrics[name] = {"value": point[name], "ci_low": low, "ci_high": high, "n_resamples_used": used}
    confusion = {}
    for cell in CONFUSION_CELLS:
        low, high, used = percentile_interval(boot[cell], confidence)
        confusion[cell] = {"value": point["confusion_matrix"][cell], "ci_low": low, "ci_high": high}
    return {
        "level": pred.level,
        "n": len(pred),
        "n_subjects": pred.n_subjects,
        "n_AD": int(pred.label.sum()),
        "n_CN": int((1 - pred.label).sum()),
        "metrics": metrics,
        "confusion_matrix": confusion,
        "reliability": reliability_table(pred.label, pred.prob, n_bins),
    }


def evaluate_predictions(
    pred: Predictions,
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    n_bins: int = DEFAULT_BINS,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Metrics with intervals per scan and per subject. Both levels resample the same subjects (same seed and the
    same sorted subject order), so their intervals come from the same resamples."""
    settings = {
        "threshold": threshold,
        "n_resamples": n_resamples,
        "seed": seed,
        "calibration_bins": n_bins,
        "confidence": confidence,
        "interval": "percentile bootstrap over subjects (a subject's scans are resampled together)",
    }
    return {
        "settings": settings,
        "scan": evaluate_level(pred, threshold, n_resamples, seed, n_bins, confidence),
        "subject": evaluate_level(per_subject(pred), threshold, n_resamples, seed, n_bins, confidence),
    }


def roc_with_band(
    pred: Predictions,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = CONFIDENCE,
    grid_points: int = 101,
) -> dict[str, Any]:
    """ROC curve (scikit-learn) and a pointwise percentile band of the true-positive rate at fixed false-positive
    rates, from the same subject bootstrap; resamples with one class only are skipped."""
    fpr, tpr, _ = skm.roc_curve(pred.label, pred.prob)
    grid = np.linspace(0.0, 1.0, grid_points)
    weights = subject_bootstrap_weights(pred.subject, n_resamples, seed).astype(float)
    order = np.argsort(-pred.prob, kind="mergesort")
    p = pred.prob[order]
    y = pred.label[order]
    w = weights[:, order]
    ends = np.r_[np.flatnonzero(p[1:] != p[:-1]), len(p) - 1]  # last scan of each group of tied scores
    tps = np.cumsum(w * (y == 1), axis=1)[:, ends]
    fps = np.cumsum(w * (y == 0), axis=1)[:, ends]
    curves = []
    for tp_row, fp_row in zip(tps, fps, strict=True):
        if tp_row[-1] == 0 or fp_row[-1] == 0:
            continue
        curves.append(np.interp(grid, np.r_[0.0, fp_row / fp_row[-1]], np.r_[0.0, tp_row / tp_row[-1]]))
    tail = 100 * (1 - confidence) / 2
    band = np.percentile(np.array(curves), [tail, 100 - tail], axis=0) if curves else np.full((2, len(grid)), np.nan)
    return {
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "grid": grid.tolist(),
        "tpr_low": band[0].tolist(),
        "tpr_high": band[1].tolist(),
        "n_resamples_used": len(curves),
        "auc": float(skm.roc_auc_score(pred.label, pred.prob)) if len(np.unique(pred.label)) == 2 else None,
    }
