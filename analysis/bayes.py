"""Bayesian post-test probabilities: what a positive or negative result means at the prevalence where the model would
be used, not at the 50/50 of a balanced test set.

Model. Sensitivity and specificity get independent Beta(1, 1) (uniform) priors; with the test confusion matrix the
posteriors are Beta(1 + TP, 1 + FN) and Beta(1 + TN, 1 + FP). From ``n_draws`` posterior draws (seeded) follow the
posteriors of, at prevalence p,

    PPV = sens p / (sens p + (1 - spec)(1 - p))         P(AD | predicted AD)
    NPV = spec (1 - p) / (spec (1 - p) + (1 - sens) p)  P(CN | predicted CN)
    LR+ = sens / (1 - spec),  LR- = (1 - sens) / spec   (independent of p)

reported as medians with 95% equal-tailed credible intervals. The binomial model assumes independent cases, so the
report uses the per-subject confusion matrix by default (scans of one person are not independent).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PRIOR = (1.0, 1.0)
PRIOR_TEXT = "Beta(1, 1) (uniform) priors for sensitivity and specificity, independent"
DEFAULT_DRAWS = 20000
DEFAULT_SEED = 0
CREDIBLE = 0.95
CELLS = ("tp", "fn", "tn", "fp")


@dataclass(frozen=True)
class Prevalence:
    """A prevalence of AD at which post-test probabilities are evaluated, with where the number comes from."""

    key: str
    label: str
    value: float
    source: str
    url: str | None = None
    note: str = ""
    short: str = ""  # label in figures

    def __post_init__(self) -> None:
        if not 0 < self.value < 1:
            raise ValueError(f"Prevalence must be strictly between 0 and 1, got {self.value}.")


# Each value below was read in the cited text (or, where said, in text quoting it); see the notes.
GENERAL_POPULATION_65 = Prevalence(
    key="population_65plus",
    label="General population aged 65+ (United States)",
    value=0.108,
    source=(
        "Alzheimer's Association. 2023 Alzheimer's Disease Facts and Figures: an estimated 6.7 million Americans "
        "aged 65 and older live with Alzheimer's dementia in 2023, about 1 in 9 (10.8%) of people aged 65 and older."
    ),
    url="https://www.alz.org/alzheimers-dementia/facts-figures",
    short="Aged 65+ (US)",
    note=(
        "Alzheimer's dementia diagnosed clinically, all people aged 65+; checked through pages quoting the 2023 "
        "report, not the report itself. Other years of the report give about 1 in 9 as well (10.7-11%)."
    ),
)
MEMORY_CLINIC = Prevalence(
    key="memory_clinic",
    label="Memory clinic (one German university memory clinic, 1985-2009)",
    value=0.461,
    source=(
        "Trends of patient referral to a memory clinic and towards earlier diagnosis from 1985-2009. "
        "Int Psychogeriatr. 2015;27(12):1939-44. doi:10.1017/S104161021500157X (PMID 26424328): 1,821 of the "
        "3,951 persons examined were diagnosed with dementia due to AD (1821/3951 = 46.1%)."
    ),
    url="https://pubmed.ncbi.nlm.nih.gov/26424328/",
    short="Memory clinic",
    note=(
        "Varies widely between clinics: e.g. 17.3% of 104 patients of a Brazilian university memory clinic had AD "
        "(Bottino CMC et al. Dement Neuropsychol. 2008;2(1):52-56). Set your own clinic's value with --prevalence."
    ),
)
CASE_CONTROL = Prevalence(
    key="study_design",
    label="This study's balanced test set (design, not a population)",
    value=0.5,
    source="AD and CN scans balanced 50/50 by the cohort builder (bundle/scripts/cohort.py)",
    short="Test set (50/50)",
    note="Case-control sampling: PPV and NPV here are those of the test set, not of any clinic.",
)
DEFAULT_PREVALENCES: tuple[Prevalence, ...] = (GENERAL_POPULATION_65, MEMORY_CLINIC, CASE_CONTROL)


def user_prevalence(value: float) -> Prevalence:
    """A prevalence given by the user (e.g. ``--prevalence 0.2``)."""
    return Prevalence(
        key=f"user_{value:g}",
        label=f"User-specified prevalence {value:g}",
        value=float(value),
        source="given on the command line (--prevalence)",
        short="User-given",
    )


def design_prevalence(classes: Sequence[str]) -> Prevalence:
    """The study design's share of AD: 50/50 for CN and AD; with k balanced classes (e.g. CN, MCI, AD) 1 in k."""
    if len(classes) <= 2:
        return CASE_CONTROL
    names = ", ".join(classes)
    return Prevalence(
        key=CASE_CONTROL.key,
        label=CASE_CONTROL.label,
        value=1 / len(classes),
        source=f"{names} scans balanced by the cohort builder (bundle/scripts/cohort.py): AD is 1 in {len(classes)}",
        short=f"Test set (1/{len(classes)})",
        note="Case-control sampling: PPV and NPV here are those of the test set, not of any clinic.",
    )


def prevalences_with(
    extra: Iterable[float] = (), defaults: Sequence[Prevalence] = DEFAULT_PREVALENCES, classes: Sequence[str] = ()
) -> list:
    """The default prevalences followed by the user's, in the order given; with more than two ``classes`` the study
    design's prevalence is theirs (:func:`design_prevalence`)."""
    design = design_prevalence(classes)
    return [design if p.key == CASE_CONTROL.key else p for p in defaults] + [user_prevalence(v) for v in extra]


def posterior_parameters(tp: int, fn: int, tn: int, fp: int, prior: tuple[float, float] = PRIOR) -> dict:
    """Beta posterior parameters: sensitivity Beta(a + TP, b + FN), specificity Beta(a + TN, b + FP)."""
    if min(tp, fn, tn, fp) < 0:
        raise ValueError("Confusion-matrix counts must be non-negative.")
    a, b = prior
    return {"sensitivity": (a + tp, b + fn), "specificity": (a + tn, b + fp)}


def sample_posteriors(
    tp: int,
    fn: int,
    tn: int,
    fp: int,
    n_draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
    prior: tuple[float, float] = PRIOR,
) -> tuple[np.ndarray, np.ndarray]:
    """Independent posterior draws of sensitivity and specificity."""
    params = posterior_parameters(tp, fn, tn, fp, prior)
    rng = np.random.default_rng(seed)
    return rng.beta(*params["sensitivity"], size=n_draws), rng.beta(*params["specificity"], size=n_draws)


def predictive_values(
    sensitivity: np.ndarray | float, specificity: np.ndarray | float, prevalence: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """PPV = P(AD | positive) and NPV = P(CN | negative) at ``prevalence``, elementwise (Bayes' theorem)."""
    s = np.asarray(sensitivity, dtype=float)
    t = np.asarray(specificity, dtype=float)
    p = np.asarray(prevalence, dtype=float)
    ppv = s * p / (s * p + (1 - t) * (1 - p))
    npv = t * (1 - p) / (t * (1 - p) + (1 - s) * p)
    return ppv, npv


def likelihood_ratios(
    sensitivity: np.ndarray | float, specificity: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """LR+ = sens / (1 - spec) and LR- = (1 - sens) / spec (inf where spec is exactly 1)."""
    s = np.asarray(sensitivity, dtype=float)
    t = np.asarray(specificity, dtype=float)
    with np.errstate(divide="ignore"):
        return s / (1 - t), (1 - s) / t


def summarize(samples: np.ndarray, credible: float = CREDIBLE) -> dict[str, float]:
    """Median and equal-tailed credible interval of posterior draws."""
    tail = 100 * (1 - credible) / 2
    low, median, high = np.percentile(samples, [tail, 50, 100 - tail])
    return {"median": float(median), "ci_low": float(low), "ci_high": float(high)}


def confusion_counts(confusion: Mapping[str, Any]) -> dict[str, int]:
    """``tp``, ``fn``, ``tn``, ``fp`` as ints, from plain counts or ``{"value": n}`` entries."""
    return {k: int(confusion[k]["value"] if isinstance(confusion[k], Mapping) else confusion[k]) for k in CELLS}


def bayesian_analysis(
    confusion: Mapping[str, int],
    prevalences: Sequence[Prevalence] = DEFAULT_PREVALENCES,
    n_draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
    prior: tuple[float, float] = PRIOR,
    credible: float = CREDIBLE,
) -> dict[str, Any]:
    """Posteriors of sensitivity, specificity and likelihood ratios, and of PPV/NPV at each prevalence.

    ``confusion`` holds ``tp``, ``fn``, ``tn``, ``fp`` (plain counts, or ``{"value": n}`` entries as produced by
    :func:`analysis.metrics.evaluate_level`).
    """
    counts = confusion_counts(confusion)
    sens, spec = sample_posteriors(counts["tp"], counts["fn"], counts["tn"], counts["fp"], n_draws, seed, prior)
    params = posterior_parameters(counts["tp"], counts["fn"], counts["tn"], counts["fp"], prior)
    lr_pos, lr_neg = likelihood_ratios(sens, spec)
    rows = []
    for prevalence in prevalences:
        ppv, npv = predictive_values(sens, spec, prevalence.value)
        rows.append(
            {
                "prevalence": asdict(prevalence),
                "ppv": summarize(ppv, credible),
                "npv": summarize(npv, credible),
                "p_ad_given_negative": summarize(1 - npv, credible),
            }
        )
    return {
        "prior": {"text": PRIOR_TEXT, "alpha": prior[0], "beta": prior[1]},
        "confusion_matrix": counts,
        "n_draws": n_draws,
        "seed": seed,
        "credible_level": credible,
        "sensitivity": {"beta_parameters": list(params["sensitivity"]), **summarize(sens, credible)},
        "specificity": {"beta_parameters": list(params["specificity"]), **summarize(spec, credible)},
        "lr_positive": summarize(lr_pos, credible),
        "lr_negative": summarize(lr_neg, credible),
        "by_prevalence": rows,
    }


def predictive_value_curves(
    confusion: Mapping[str, int],
    grid: Sequence[float] | None = None,
    n_draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
    prior: tuple[float, float] = PRIOR,
    credible: float = CREDIBLE,
) -> dict[str, list[float]]:
    """Posterior median and credible band of PPV and NPV over a grid of prevalences (for the figure)."""
    counts = confusion_counts(confusion)
    grid_array = np.asarray(grid if grid is not None else np.linspace(0.01, 0.99, 99), dtype=float)
    sens, spec = sample_posteriors(counts["tp"], counts["fn"], counts["tn"], counts["fp"], n_draws, seed, prior)
    tail = 100 * (1 - credible) / 2
    out: dict[str, list[float]] = {"prevalence": grid_array.tolist()}
    # Draws x prevalences at once, by broadcasting.
    ppv, npv = predictive_values(sens[:, None], spec[:, None], grid_array[None, :])
    for name, values in (("ppv", ppv), ("npv", npv)):
        low, median, high = np.percentile(values, [tail, 50, 100 - tail], axis=0)
        out[f"{name}_median"] = median.tolist()
        out[f"{name}_low"] = low.tolist()
        out[f"{name}_high"] = high.tolist()
    return out
