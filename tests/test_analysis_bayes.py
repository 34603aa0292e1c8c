"""Bayesian post-test probabilities (``analysis.bayes``) and the clinician comparison (``analysis.clinicians``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from analysis import bayes, clinicians

QUANTILES = (0.025, 0.5, 0.975)


def test_beta_posteriors_from_the_confusion_matrix_with_a_uniform_prior():
    params = bayes.posterior_parameters(tp=8, fn=2, tn=15, fp=5)
    assert params == {"sensitivity": (9.0, 3.0), "specificity": (16.0, 6.0)}
    sens, spec = bayes.sample_posteriors(8, 2, 15, 5, n_draws=20000, seed=0)
    assert np.percentile(sens, [2.5, 50, 97.5]) == pytest.approx(stats.beta(9, 3).ppf(QUANTILES), abs=0.01)
    assert np.percentile(spec, [2.5, 50, 97.5]) == pytest.approx(stats.beta(16, 6).ppf(QUANTILES), abs=0.01)


def test_predictive_values_and_likelihood_ratios_closed_form():
    ppv, npv = bayes.predictive_values(0.8, 0.9, 0.1)
    assert float(ppv) == pytest.approx(0.08 / (0.08 + 0.09))
    assert float(npv) == pytest.approx(0.81 / (0.81 + 0.02))
    lr_pos, lr_neg = bayes.likelihood_ratios(0.8, 0.9)
    assert float(lr_pos) == pytest.approx(8.0)
    assert float(lr_neg) == pytest.approx(0.2 / 0.9)


def test_symmetric_test_at_prevalence_one_half_has_ppv_equal_to_sensitivity():
    # Closed form: with sens = spec = s and p = 1/2, PPV = s / (s + 1 - s) = s, and NPV = s.
    s = np.linspace(0.01, 0.99, 99)
    ppv, npv = bayes.predictive_values(s, s, 0.5)
    assert ppv == pytest.approx(s) and npv == pytest.approx(s)
    # So for a symmetric test whose accuracy has the Beta posterior of 45 right and 15 wrong calls, the posterior of
    # the PPV at 50% prevalence is that Beta: its median and 95% interval are the Beta quantiles.
    theta = np.random.default_rng(0).beta(46, 16, size=20000)
    ppv_draws, _ = bayes.predictive_values(theta, theta, 0.5)
    assert np.percentile(ppv_draws, [2.5, 50, 97.5]) == pytest.approx(stats.beta(46, 16).ppf(QUANTILES), abs=0.005)


def _ppv_half_cdf(z: float, sens: tuple[float, float], spec: tuple[float, float]) -> float:
    """P(PPV <= z) at prevalence 1/2 for independent sens ~ Beta(*sens), spec ~ Beta(*spec), by integration:
    PPV = s / (s + u) with u = 1 - spec ~ Beta(spec[1], spec[0]), so PPV <= z iff s <= u z / (1 - z)."""
    s_dist, u_dist = stats.beta(*sens), stats.beta(spec[1], spec[0])
    value, _ = integrate.quad(lambda u: s_dist.cdf(min(1.0, u * z / (1 - z))) * u_dist.pdf(u), 0, 1, limit=200)
    return value


def test_posterior_ppv_at_one_half_from_a_symmetric_confusion_matrix():
    counts = {"tp": 40, "fn": 10, "tn": 40, "fp": 10}
    result = bayes.bayesian_analysis(counts, [bayes.CASE_CONTROL], n_draws=20000, seed=1)
    beta = stats.beta(41, 11)
    for name in ("sensitivity", "specificity"):
        summary = result[name]
        assert [summary["ci_low"], summary["median"], summary["ci_high"]] == pytest.approx(
            beta.ppf(QUANTILES), abs=0.01
        )
    row = result["by_prevalence"][0]
    assert row["prevalence"]["value"] == 0.5
    # Sensitivity and specificity are independent a posteriori, so the PPV posterior is that of s / (s + 1 - t);
    # its quantiles, found by integrating the two Beta densities, match the sampled ones.
    expected = [
        optimize.brentq(lambda z, q=q: _ppv_half_cdf(z, (41, 11), (41, 11)) - q, 1e-6, 1 - 1e-6) for q in QUANTILES
    ]
    got = [row["ppv"]["ci_low"], row["ppv"]["median"], row["ppv"]["ci_high"]]
    assert got == pytest.approx(expected, abs=0.005)
    # Symmetric data: the median PPV at 1/2 is close to the median sensitivity and NPV mirrors PPV; but with
    # independent sensitivity and specificity the PPV interval is narrower than the sensitivity's Beta interval,
    # so the PPV posterior equals the Beta only for a test known to be symmetric (previous test).
    assert row["ppv"]["median"] == pytest.approx(beta.median(), abs=0.01)
    assert row["npv"]["median"] == pytest.approx(row["ppv"]["median"], abs=0.01)
    assert row["ppv"]["ci_high"] - row["ppv"]["ci_low"] < 0.9 * (beta.ppf(0.975) - beta.ppf(0.025))


def test_bayesian_analysis_lists_every_prevalence_with_its_source():
    prevalences = bayes.prevalences_with([0.2])
    result = bayes.bayesian_analysis({"tp": 30, "fn": 10, "tn": 33, "fp": 7}, prevalences, n_draws=5000, seed=0)
    assert result["prior"]["alpha"] == 1 and result["prior"]["beta"] == 1 and "Beta(1, 1)" in result["prior"]["text"]
    keys = [row["prevalence"]["key"] for row in result["by_prevalence"]]
    assert keys == ["population_65plus", "memory_clinic", "study_design", "user_0.2"]
    for row in result["by_prevalence"]:
        assert row["prevalence"]["source"]
        assert row["ppv"]["ci_low"] < row["ppv"]["median"] < row["ppv"]["ci_high"]
        assert row["p_ad_given_negative"]["median"] == pytest.approx(1 - row["npv"]["median"], abs=1e-3)
    ppv = [row["ppv"]["median"] for row in result["by_prevalence"]]
    assert ppv[0] < ppv[3] < ppv[1] < ppv[2]  # PPV rises with prevalence: 0.108 < 0.2 < 0.461 < 0.5
    again = bayes.bayesian_analysis({"tp": 30, "fn": 10, "tn": 33, "fp": 7}, prevalences, n_draws=5000, seed=0)
    assert again == result  # seeded


def test_default_prevalences_are_the_documented_values():
    assert bayes.GENERAL_POPULATION_65.value == pytest.approx(0.108)
    assert "2023 Alzheimer's Disease Facts and Figures" in bayes.GENERAL_POPULATION_65.source
    assert bayes.MEMORY_CLINIC.value == pytest.approx(round(1821 / 3951, 3))
    assert "PMID 26424328" in bayes.MEMORY_CLINIC.source
    with pytest.raises(ValueError):
        bayes.user_prevalence(1.0)


def test_predictive_value_curves_have_bands_around_the_median():
    curves = bayes.predictive_value_curves({"tp": 20, "fn": 5, "tn": 22, "fp": 3}, n_draws=4000, seed=0)
    for name in ("ppv", "npv"):
        low, median, high = (np.array(curves[f"{name}_{k}"]) for k in ("low", "median", "high"))
        assert (low <= median).all() and (median <= high).all()
    assert np.all(np.diff(curves["ppv_median"]) > 0) and np.all(np.diff(curves["npv_median"]) < 0)


def test_clinician_rows_have_citations_and_use_the_closed_form():
    prevalences = bayes.prevalences_with([0.3])
    rows = clinicians.clinician_comparison(prevalences, model_sensitivity=0.8, model_specificity=0.7)
    assert rows[0]["key"] == "model"
    assert len(rows) == 1 + len(clinicians.CLINICIAN_REFERENCES)
    for row in rows[1:]:
        assert row["citation"] and row["url"].startswith("https://") and row["population"]
        s, t = row["sensitivity"], row["specificity"]
        for entry, prevalence in zip(row["by_prevalence"], prevalences, strict=True):
            p = prevalence.value
            assert entry["ppv"] == pytest.approx(s * p / (s * p + (1 - t) * (1 - p)))
            assert entry["npv"] == pytest.approx(t * (1 - p) / (t * (1 - p) + (1 - s) * p))
        assert row["lr_positive"] == pytest.approx(s / (1 - t))
    meta = next(r for r in rows if r["key"] == "mta_meta_analysis_2021")
    assert (meta["sensitivity"], meta["specificity"]) == (0.74, 0.88)
