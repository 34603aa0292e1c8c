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
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
DEFAULT_BINS = 10
DEFAULT_THRESHOLD = 0.5
CONFIDENCE = 0.95

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


@dataclass(frozen=True)
class Predictions:
    """Per-scan (or per-subject) test predictions: ids, subject, true label (1 = AD) and AD probability."""

    image_id: np.ndarray
    subject: np.ndarray
    label: np.ndarray
    prob: np.ndarray
    level: str = "scan"

    def __post_init__(self) -> None:
        n = len(self.label)
        if not (len(self.image_id) == len(self.subject) == len(self.prob) == n) or n == 0:
            raise ValueError("Predictions need the same, non-zero number of ids, subjects, labels and probabilities.")
        if not np.isin(self.label, (0, 1)).all():
            raise ValueError(f"Labels must be 0 (CN) or 1 (AD), got {sorted(set(self.label.tolist()))}.")
        if not (np.isfinite(self.prob).all() and (self.prob >= 0).all() and (self.prob <= 1).all()):
            raise ValueError("prob_AD must be finite and within [0, 1].")

    def __len__(self) -> int:
        return len(self.label)

    @property
    def n_subjects(self) -> int:
        return len(np.unique(self.subject))

    def predicted(self, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        return (self.prob >= threshold).astype(int)


def make_predictions(
    image_id: Sequence[Any], subject: Sequence[Any], label: Sequence[int], prob: Sequence[float], level: str = "scan"
) -> Predictions:
    """Build :class:`Predictions` from plain sequences."""
    return Predictions(
        image_id=np.asarray([str(x) for x in image_id]),
        subject=np.asarray([str(x) for x in subject]),
        label=np.asarray(label, dtype=int),
        prob=np.asarray(prob, dtype=float),
        level=level,
    )


def read_predictions(path: str | Path) -> Predictions:
    """Read the bundle's ``predictions.csv`` (columns image_id, subject, label, prob_AD[, prediction])."""
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"image_id", "subject", "label", "prob_AD"} - set(rows[0] if rows else {})
    if not rows or missing:
        raise ValueError(f"{path} has no prediction rows or lacks columns {sorted(missing)}.")
    return make_predictions(
        [r["image_id"] for r in rows],
        [r["subject"] for r in rows],
        [int(r["label"]) for r in rows],
        [float(r["prob_AD"]) for r in rows],
    )


def concat_predictions(parts: Iterable[Predictions]) -> Predictions:
    """Pool predictions (e.g. the test folds of a cross-validation, each scan tested once)."""
    parts = list(parts)
    pooled = make_predictions(
        np.concatenate([p.image_id for p in parts]),
        np.concatenate([p.subject for p in parts]),
        np.concatenate([p.label for p in parts]),
        np.concatenate([p.prob for p in parts]),
        level=parts[0].level,
    )
    if len(np.unique(pooled.image_id)) != len(pooled):
        raise ValueError("A scan appears in more than one set of predictions.")
    return pooled


def per_subject(pred: Predictions) -> Predictions:
    """One row per subject: its label and the mean AD probability of its scans (subjects in sorted order)."""
    subjects, inverse = np.unique(pred.subject, return_inverse=True)
    counts = np.bincount(inverse)
    prob = np.bincount(inverse, weights=pred.prob) / counts
    label_sum = np.bincount(inverse, weights=pred.label)
    mixed = subjects[(label_sum != 0) & (label_sum != counts)]
    if len(mixed):
        raise ValueError(f"Subjects with both AD and CN scans cannot be aggregated: {', '.join(mixed[:10])}.")
    return Predictions(subjects, subjects, (label_sum > 0).astype(int), prob, level="subject")


# ----------------------------------------------------------------------------------------------- point estimates


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
    # package's __init__ has put the bundle folder on sys.path.
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


# --------------------------------------------------------------------------------------------------- bootstrap


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


# ------------------------------------------------------------------------------------------- model comparison


def align_predictions(a: Predictions, b: Predictions) -> tuple[Predictions, Predictions]:
    """Both models' predictions on the same scans, in the same order (matched by image_id); refuses different test
    sets or disagreeing labels/subjects, since a paired test is only valid on identical scans."""
    index_b = {image_id: i for i, image_id in enumerate(b.image_id)}
    if len(index_b) != len(b) or len(np.unique(a.image_id)) != len(a):
        raise ValueError("image_id must be unique within each predictions file.")
    only_a = sorted(set(a.image_id) - set(index_b))
    only_b = sorted(set(index_b) - set(a.image_id))
    if only_a or only_b:
        raise ValueError(
            f"The two models were not tested on the same scans: {len(only_a)} only in A (e.g. {only_a[:3]}), "
            f"{len(only_b)} only in B (e.g. {only_b[:3]})."
        )
    order = np.array([index_b[i] for i in a.image_id])
    b_aligned = Predictions(b.image_id[order], b.subject[order], b.label[order], b.prob[order], b.level)
    if not (np.array_equal(a.label, b_aligned.label) and np.array_equal(a.subject, b_aligned.subject)):
        raise ValueError("The two predictions files disagree on the label or subject of some scans.")
    return a, b_aligned


def _placements(prob: np.ndarray, ad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components from midranks (Sun & Xu 2014): for each AD scan the fraction of CN scans it
    outscores, for each CN scan the fraction of AD scans that outscore it (ties count one half)."""
    pos, neg = prob[ad], prob[~ad]
    m, n = len(pos), len(neg)
    ranks_all = stats.rankdata(np.r_[pos, neg])
    v10 = (ranks_all[:m] - stats.rankdata(pos)) / n
    v01 = 1.0 - (ranks_all[m:] - stats.rankdata(neg)) / m
    return v10, v01


def delong_test(label: Sequence[int], prob_a: Sequence[float], prob_b: Sequence[float]) -> dict[str, float]:
    """DeLong's test for the difference of two correlated ROC-AUCs on the same cases (DeLong, DeLong &
    Clarke-Pearson 1988; fast midrank form of Sun & Xu 2014). Implemented here because scikit-learn has none.

    Assumes independent cases: run it per subject, or use :func:`paired_bootstrap_auc` when subjects have several
    scans. Returns both AUCs, the difference A - B, its standard error, z, the two-sided p-value and a 95% CI.
    """
    y = np.asarray(label, dtype=int)
    ad = y == 1
    m, n = int(ad.sum()), int((~ad).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's test needs at least 2 AD and 2 CN cases, got {m} and {n}.")
    v10, v01 = zip(*(_placements(np.asarray(p, dtype=float), ad) for p in (prob_a, prob_b)), strict=True)
    v10, v01 = np.array(v10), np.array(v01)
    aucs = v10.mean(axis=1)
    covariance = np.cov(v10) / m + np.cov(v01) / n
    contrast = np.array([1.0, -1.0])
    variance = float(contrast @ covariance @ contrast)
    diff = float(aucs[0] - aucs[1])
    if variance <= 1e-15:  # identical rankings: no difference and no spread
        z, p_value, se = (0.0, 1.0, 0.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0, 0.0)
    else:
        se = math.sqrt(variance)
        z = diff / se
        p_value = float(2 * stats.norm.sf(abs(z)))
    half = stats.norm.ppf(0.975) * se
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "difference": diff,
        "se": se,
        "z": z,
        "p_value": p_value,
        "ci_low": diff - half,
        "ci_high": diff + half,
    }


def paired_bootstrap_auc(
    a: Predictions,
    b: Predictions,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, float | int | None]:
    """AUC difference A - B with subjects resampled together for both models (paired, cluster-aware). The p-value
    is two-sided from the difference over the bootstrap standard deviation (normal approximation, as pROC does);
    the interval is the percentile interval of the differences."""
    a, b = align_predictions(a, b)
    weights = subject_bootstrap_weights(a.subject, n_resamples, seed)
    diffs = weighted_auc(weights, a.label, a.prob) - weighted_auc(weights, b.label, b.prob)
    low, high, used = percentile_interval(diffs, confidence)
    auc_a = float(skm.roc_auc_score(a.label, a.prob))
    auc_b = float(skm.roc_auc_score(b.label, b.prob))
    diff = auc_a - auc_b
    sd = float(np.nanstd(diffs, ddof=1)) if used > 1 else 0.0
    if sd > 0:
        z = diff / sd
        p_value = float(2 * stats.norm.sf(abs(z)))
    else:
        z, p_value = (0.0, 1.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0)
    return {
        "auc_a": auc_a,
        "auc_b": auc_b,
        "difference": diff,
        "se": sd,
        "z": z,
        "p_value": p_value,
        "ci_low": low,
        "ci_high": high,
        "n_resamples_used": used,
    }


def mcnemar_test(label: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int]) -> dict[str, Any]:
    """Exact McNemar test of equal accuracy on paired cases: a binomial test on the discordant pairs (A right and
    B wrong vs A wrong and B right). statsmodels' implementation when installed, else scipy's exact binomial test."""
    y = np.asarray(label, dtype=int)
    right_a = np.asarray(pred_a, dtype=int) == y
    right_b = np.asarray(pred_b, dtype=int) == y
    table = [
        [int((right_a & right_b).sum()), int((right_a & ~right_b).sum())],
        [int((~right_a & right_b).sum()), int((~right_a & ~right_b).sum())],
    ]
    only_a, only_b = table[0][1], table[1][0]
    try:
        from statsmodels.stats.contingency_tables import mcnemar
    except ImportError:  # statsmodels is optional; the exact test is one binomial test
        p_value, implementation = exact_mcnemar_p(only_a, only_b), "scipy.stats.binomtest"
    else:
        p_value, implementation = float(mcnemar(table, exact=True).pvalue), "statsmodels mcnemar(exact=True)"
    return {
        "table_rows_A_cols_B": table,
        "labels": ["correct", "wrong"],
        "a_right_b_wrong": only_a,
        "a_wrong_b_right": only_b,
        "accuracy_a": float(right_a.mean()),
        "accuracy_b": float(right_b.mean()),
        "p_value": p_value,
        "implementation": implementation,
    }


def exact_mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of ``only_a`` successes in ``only_a + only_b`` trials, p=1/2."""
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def compare_models(
    a: Predictions,
    b: Predictions,
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Paired comparison of two models on the same test scans, per scan and per subject: DeLong and paired subject
    bootstrap for ROC-AUC, exact McNemar for accuracy. Per scan, DeLong treats scans as independent, which they are
    not when subjects have several scans; the subject bootstrap does not assume it."""
    a, b = align_predictions(a, b)
    result: dict[str, Any] = {"threshold": threshold, "n_resamples": n_resamples, "seed": seed}
    for level, (x, z) in {"scan": (a, b), "subject": (per_subject(a), per_subject(b))}.items():
        entry: dict[str, Any] = {"n": len(x)}
        try:
            entry["delong"] = delong_test(x.label, x.prob, z.prob)
        except ValueError as error:
            entry["delong"] = {"error": str(error)}
        entry["bootstrap"] = paired_bootstrap_auc(x, z, n_resamples, seed)
        entry["mcnemar"] = mcnemar_test(x.label, x.predicted(threshold), z.predicted(threshold))
        result[level] = entry
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
