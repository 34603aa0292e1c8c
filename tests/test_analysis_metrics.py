"""Metrics of ``analysis.metrics`` against hand-computed cases and scikit-learn; the subject bootstrap; DeLong and
McNemar."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from analysis import metrics as m

# Six scans of five subjects (s1 has two). Probabilities avoid the bin edges so every scan is in its own bin.
SIX = {
    "image_id": ["i1", "i2", "i3", "i4", "i5", "i6"],
    "subject": ["s1", "s1", "s2", "s3", "s4", "s5"],
    "label": [1, 1, 1, 0, 0, 0],
    "prob": [0.85, 0.65, 0.45, 0.75, 0.25, 0.15],
}


@pytest.fixture
def six_csv(tmp_path) -> Path:
    path = tmp_path / "predictions.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "subject", "label", "prob_AD", "prediction"])
        for i, s, y, p in zip(SIX["image_id"], SIX["subject"], SIX["label"], SIX["prob"], strict=True):
            writer.writerow([i, s, y, p, int(p >= 0.5)])
    return path


def random_predictions(n_subjects: int = 40, seed: int = 0, max_scans: int = 4) -> m.Predictions:
    rng = np.random.default_rng(seed)
    ids, subjects, labels, probs = [], [], [], []
    for s in range(n_subjects):
        label = s % 2
        base = rng.normal(0.7 if label else -0.7, 1.0)
        for v in range(int(rng.integers(1, max_scans + 1))):
            ids.append(f"I{s}_{v}")
            subjects.append(f"S{s:03d}")
            labels.append(label)
            probs.append(round(float(1 / (1 + np.exp(-(base + rng.normal(0, 0.5))))), 2))  # rounding makes ties
    return m.make_predictions(ids, subjects, labels, probs)


def test_hand_computed_scan_metrics(six_csv):
    pred = m.read_predictions(six_csv)
    result = m.point_metrics(pred.label, pred.prob)
    # Predicted AD: i1, i2, i4 -> TP 2 (i1, i2), FN 1 (i3), FP 1 (i4), TN 2 (i5, i6).
    assert result["confusion_matrix"] == {"tn": 2, "fp": 1, "fn": 1, "tp": 2}
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["sensitivity"] == pytest.approx(2 / 3)
    assert result["specificity"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert result["balanced_accuracy"] == pytest.approx(2 / 3)
    # Brier: mean squared distance to the label.
    assert result["brier"] == pytest.approx((0.15**2 + 0.35**2 + 0.55**2 + 0.75**2 + 0.25**2 + 0.15**2) / 6)
    # AUC by counting AD-CN pairs: 0.85 beats 3 CN, 0.65 beats 2, 0.45 beats 2 -> 7 of 9 pairs.
    assert result["roc_auc"] == pytest.approx(7 / 9)
    # ECE with 10 bins: every scan alone in its bin, so ECE = mean |p - y|.
    assert result["ece"] == pytest.approx((0.15 + 0.35 + 0.55 + 0.75 + 0.25 + 0.15) / 6)


def test_per_subject_uses_the_mean_probability_of_a_subjects_scans(six_csv):
    subjects = m.per_subject(m.read_predictions(six_csv))
    assert subjects.level == "subject"
    assert subjects.subject.tolist() == ["s1", "s2", "s3", "s4", "s5"]
    assert subjects.prob.tolist() == pytest.approx([0.75, 0.45, 0.75, 0.25, 0.15])
    assert subjects.label.tolist() == [1, 1, 0, 0, 0]
    result = m.point_metrics(subjects.label, subjects.prob)
    assert result["confusion_matrix"] == {"tn": 2, "fp": 1, "fn": 1, "tp": 1}
    assert result["accuracy"] == pytest.approx(3 / 5)
    # AD {0.75, 0.45} vs CN {0.75, 0.25, 0.15}: the tie counts one half -> (2.5 + 2) / 6.
    assert result["roc_auc"] == pytest.approx(4.5 / 6)


def test_per_subject_refuses_a_subject_with_both_labels():
    pred = m.make_predictions(["a", "b"], ["s1", "s1"], [0, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="s1"):
        m.per_subject(pred)


def test_undefined_metrics_are_none_not_zero():
    result = m.point_metrics([1, 1, 1], [0.2, 0.3, 0.1])
    assert result["roc_auc"] is None and result["specificity"] is None and result["precision"] is None
    assert result["sensitivity"] == 0.0


def test_weighted_metrics_with_unit_weights_equal_scikit_learn():
    pred = random_predictions(seed=1)
    got = m.weighted_metrics(np.ones((1, len(pred))), pred.label, pred.prob)
    called = pred.predicted()
    assert got["accuracy"][0] == pytest.approx(skm.accuracy_score(pred.label, called))
    assert got["balanced_accuracy"][0] == pytest.approx(skm.balanced_accuracy_score(pred.label, called))
    assert got["sensitivity"][0] == pytest.approx(skm.recall_score(pred.label, called))
    assert got["specificity"][0] == pytest.approx(skm.recall_score(pred.label, called, pos_label=0))
    assert got["precision"][0] == pytest.approx(skm.precision_score(pred.label, called))
    assert got["f1"][0] == pytest.approx(skm.f1_score(pred.label, called))
    assert got["roc_auc"][0] == pytest.approx(skm.roc_auc_score(pred.label, pred.prob))
    assert got["brier"][0] == pytest.approx(skm.brier_score_loss(pred.label, pred.prob))
    assert got["ece"][0] == pytest.approx(m.expected_calibration_error(pred.label, pred.prob))


def test_weighted_metrics_with_counts_equal_metrics_on_repeated_scans():
    pred = random_predictions(seed=2)
    weights = m.subject_bootstrap_weights(pred.subject, n_resamples=5, seed=3)
    got = m.weighted_metrics(weights, pred.label, pred.prob)
    for row in range(5):
        index = m.resample_indices(weights[row])
        y, p = pred.label[index], pred.prob[index]
        assert got["accuracy"][row] == pytest.approx(skm.accuracy_score(y, p >= 0.5))
        assert got["roc_auc"][row] == pytest.approx(skm.roc_auc_score(y, p))
        assert got["brier"][row] == pytest.approx(skm.brier_score_loss(y, p))
        assert got["ece"][row] == pytest.approx(m.expected_calibration_error(y, p))


def test_subject_bootstrap_keeps_a_subjects_scans_together():
    pred = random_predictions(n_subjects=30, seed=4)
    weights = m.subject_bootstrap_weights(pred.subject, n_resamples=500, seed=0)
    subjects, first_scan = np.unique(pred.subject, return_index=True)
    for s in subjects:
        columns = weights[:, pred.subject == s]
        # In every resample each scan of the subject appears as often as the subject was drawn.
        assert (columns == columns[:, :1]).all(), s
    # Each resample draws as many subjects as there are (with replacement).
    assert (weights[:, first_scan].sum(axis=1) == len(subjects)).all()
    # Subjects are drawn, not scans: the mean count of each subject is about 1.
    assert weights[:, first_scan].mean() == pytest.approx(1.0, abs=0.05)
    # Seeded: the same seed gives the same resamples, another seed others.
    assert np.array_equal(weights, m.subject_bootstrap_weights(pred.subject, 500, seed=0))
    assert not np.array_equal(weights, m.subject_bootstrap_weights(pred.subject, 500, seed=1))


def test_resamples_without_both_classes_are_skipped_and_counted():
    # Two subjects, one AD and one CN: a resample has both with probability 1/2.
    pred = m.make_predictions(["a", "b", "c"], ["ad", "ad", "cn"], [1, 1, 0], [0.9, 0.6, 0.3])
    result = m.evaluate_level(pred, n_resamples=1000, seed=0)
    weights = m.subject_bootstrap_weights(pred.subject, 1000, seed=0)
    both = int(((weights[:, 0] > 0) & (weights[:, 2] > 0)).sum())
    assert result["metrics"]["roc_auc"]["n_resamples_used"] == both
    assert 400 < both < 600
    assert result["metrics"]["accuracy"]["n_resamples_used"] == 1000  # always defined


def test_evaluate_predictions_reports_both_levels_with_intervals():
    pred = random_predictions(n_subjects=50, seed=5)
    result = m.evaluate_predictions(pred, n_resamples=300, seed=0)
    assert result["settings"]["n_resamples"] == 300 and result["settings"]["calibration_bins"] == 10
    assert result["scan"]["n"] == len(pred) and result["subject"]["n"] == 50
    for level in ("scan", "subject"):
        for name in m.METRICS:
            entry = result[level]["metrics"][name]
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], (level, name)
        assert sum(c["value"] for c in result[level]["confusion_matrix"].values()) == result[level]["n"]


def test_two_thousand_resamples_over_a_hundred_scans_give_stable_intervals():
    pred = random_predictions(n_subjects=40, seed=6)  # about 100 scans
    first = m.evaluate_predictions(pred, n_resamples=2000, seed=0)
    again = m.evaluate_predictions(pred, n_resamples=2000, seed=0)
    auc = first["subject"]["metrics"]["roc_auc"]
    assert auc == again["subject"]["metrics"]["roc_auc"]  # the seed fixes the bootstrap
    assert auc["ci_low"] < auc["value"] < auc["ci_high"]


def test_reliability_table_uses_the_bins_of_scikit_learn():
    pred = random_predictions(seed=7)
    table = m.reliability_table(pred.label, pred.prob, n_bins=10)
    prob_true, prob_pred = calibration_curve(pred.label, pred.prob, n_bins=10)
    used = [row for row in table if row["count"]]
    assert [row["fraction_AD"] for row in used] == pytest.approx(prob_true.tolist())
    assert [row["mean_predicted"] for row in used] == pytest.approx(prob_pred.tolist())
    assert sum(row["count"] for row in table) == len(pred)


def test_roc_band_surrounds_the_curve():
    pred = random_predictions(n_subjects=60, seed=8)
    roc = m.roc_with_band(pred, n_resamples=300, seed=0)
    tpr = np.interp(roc["grid"], roc["fpr"], roc["tpr"])
    low, high = np.array(roc["tpr_low"]), np.array(roc["tpr_high"])
    assert (low <= high).all()
    assert ((low <= tpr + 1e-9) & (tpr <= high + 1e-9)).mean() > 0.9
    assert roc["auc"] == pytest.approx(skm.roc_auc_score(pred.label, pred.prob))


def brute_force_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Difference of AUCs and its variance straight from DeLong et al.'s pairwise definition."""
    pos, neg = y == 1, y == 0

    def components(p):
        x, z = p[pos], p[neg]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (v10a, v01a), (v10b, v01b) = components(a), components(b)
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    s = s10 / pos.sum() + s01 / neg.sum()
    return v10a.mean() - v10b.mean(), s[0, 0] + s[1, 1] - 2 * s[0, 1]


def test_delong_matches_the_pairwise_definition():
    rng = np.random.default_rng(9)
    y = np.array([1] * 30 + [0] * 25)
    a = np.round(rng.normal(y * 1.0, 1.0), 1)  # rounded: ties
    b = np.round(a + rng.normal(0, 0.8, len(y)), 1)
    result = m.delong_test(y, a, b)
    diff, variance = brute_force_delong(y, a, b)
    assert result["difference"] == pytest.approx(diff)
    assert result["se"] == pytest.approx(np.sqrt(variance))
    assert result["auc_a"] == pytest.approx(skm.roc_auc_score(y, a))
    assert result["p_value"] == pytest.approx(2 * stats.norm.sf(abs(diff / np.sqrt(variance))))


def test_delong_of_identical_models_is_no_difference():
    pred = random_predictions(seed=10)
    result = m.delong_test(pred.label, pred.prob, pred.prob)
    assert result["difference"] == 0 and result["z"] == 0 and result["p_value"] == 1


def test_delong_agrees_with_the_paired_bootstrap_on_independent_cases():
    rng = np.random.default_rng(11)
    n = 400
    y = rng.integers(0, 2, n)
    a = 1 / (1 + np.exp(-(rng.normal(y * 1.2, 1.0))))
    b = 1 / (1 + np.exp(-(0.5 * np.log(a / (1 - a)) + rng.normal(0, 0.8, n))))
    ids = [str(i) for i in range(n)]
    pa, pb = m.make_predictions(ids, ids, y, a), m.make_predictions(ids, ids, y, b)
    delong = m.delong_test(y, a, b)
    boot = m.paired_bootstrap_auc(pa, pb, n_resamples=2000, seed=0)
    assert boot["difference"] == pytest.approx(delong["difference"])
    assert boot["se"] == pytest.approx(delong["se"], rel=0.15)


def test_mcnemar_on_a_hand_made_table():
    # 10 cases, all AD. A right on 8, B right on 3: A right/B wrong 6, A wrong/B right 1, both right 2, both wrong 1.
    y = [1] * 10
    pred_a = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    pred_b = [0, 0, 0, 0, 0, 0, 1, 1, 1, 0]
    result = m.mcnemar_test(y, pred_a, pred_b)
    assert result["table_rows_A_cols_B"] == [[2, 6], [1, 1]]
    # Exact test on the 7 discordant pairs: 2 * P(X <= 1), X ~ Binomial(7, 1/2) = 2 * 8/128.
    assert result["p_value"] == pytest.approx(16 / 128)
    assert m.exact_mcnemar_p(6, 1) == pytest.approx(16 / 128)
    assert m.exact_mcnemar_p(0, 0) == 1.0


def test_paired_comparison_needs_the_same_scans():
    a = m.make_predictions(["x", "y"], ["s1", "s2"], [1, 0], [0.9, 0.1])
    b = m.make_predictions(["x", "z"], ["s1", "s3"], [1, 0], [0.8, 0.2])
    with pytest.raises(ValueError, match="same scans"):
        m.compare_models(a, b)


def test_compare_models_reports_scan_and_subject_levels():
    a = random_predictions(seed=12)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(len(a))  # B's file in another order: matched by image_id
    b = m.make_predictions(
        a.image_id[shuffled], a.subject[shuffled], a.label[shuffled], np.clip(a.prob[shuffled] + 0.1, 0, 1)
    )
    result = m.compare_models(a, b, n_resamples=200)
    for level in ("scan", "subject"):
        entry = result[level]
        assert {"delong", "bootstrap", "mcnemar"} <= set(entry)
        assert 0 <= entry["mcnemar"]["p_value"] <= 1 and 0 <= entry["delong"]["p_value"] <= 1
    # A monotone shift of every probability leaves the ranking, so the AUCs are equal.
    assert result["scan"]["delong"]["difference"] == pytest.approx(0.0)


def test_mean_std_uses_the_sample_standard_deviation():
    summary = m.mean_std([0.75, 0.78, 0.79, None])
    assert summary["mean"] == pytest.approx((0.75 + 0.78 + 0.79) / 3)
    assert summary["std"] == pytest.approx(np.std([0.75, 0.78, 0.79], ddof=1))
    assert summary["n"] == 3


def test_format_interval():
    assert m.format_interval({"value": 0.7726, "ci_low": 0.7, "ci_high": 0.81}) == "0.773 (0.700\u20130.810)"
    assert m.format_interval({"value": None}) == "n/a"
