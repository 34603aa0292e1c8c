"""Paired comparisons of two models on the same test scans: DeLong and paired subject bootstrap for ROC-AUC, exact
McNemar for accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from analysis.bootstrap import percentile_interval, subject_bootstrap_weights, weighted_auc
from analysis.predictions import (
    CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    DEFAULT_THRESHOLD,
    Predictions,
    per_subject,
)


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
    b_aligned = Predictions(b.image_id[order], b.subject[order], b.label[order], b.prob[order], b.level, b.classes)
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
