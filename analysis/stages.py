"""Accuracy by disease stage: test metrics stratified by CDR, MMSE or (synthetic cohort) atrophy strength, to test the
expectation that the classifier is more accurate the more advanced the disease.

Stage measures come from the datalist's top-level ``"clinical": {image_id: {"cdr", "mmse", "atrophy"}}``, written by
``python -m preprocessing split`` from the manifest. Bins (options of ``python -m analysis stages`` and ``report``):

- CDR (global Clinical Dementia Rating): cut points 0.5, 1, 2 give the bins 0 / 0.5 / 1 / >=2 (a bin holds the values
  from its lower cut point up to, not including, the next one).
- MMSE (0-30, higher is healthier): cut points 27, 21, 10 give 30-27 / 26-21 / 20-10 / <10, listed from the least to
  the most impaired.
- Atrophy (the synthetic cohort's per-scan AD atrophy strength): tertiles of the staged scans' values by default, or
  fixed cut points.

How CN enters. Only the scans of the disease classes (every class but the first, CN) are placed in stage bins; CN
scans have no stage beyond "normal" (CDR 0), and a CN scan with a low MMSE is still a CN scan. All CN test scans form
one reference group: each bin's ROC-AUC is the AD scans of that bin against all CN scans (prob_AD), and the reference
row gives the CN scans' specificity once.

Per bin, per scan: scans and subjects; sensitivity for AD = share of the bin's AD scans called AD (prob_AD >=
threshold, the AD-vs-rest call of the metrics table); for more than two classes also the share of the bin's scans
predicted their own class (argmax); ROC-AUC when the bin has AD scans and there are CN scans. 95% intervals come from
one subject bootstrap of the whole test set (the same resamples for every bin). The trend is the change in
sensitivity per bin: the least-squares slope of "called AD" (0/1) on the bin number over the AD scans, with its
interval from the same resamples; above 0 means more advanced stages are detected more often. A subject's scans can fall
into different bins (stage changes between visits); the bootstrap still resamples subjects with all their scans.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.bootstrap import percentile_interval, subject_bootstrap_weights, weighted_auc
from analysis.multiclass import ClassPredictions
from analysis.predictions import CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, DEFAULT_THRESHOLD, POSITIVE_CLASS

CDR_SCALE = (0.0, 0.5, 1.0, 2.0, 3.0)
DEFAULT_CDR_CUTS = (0.5, 1.0, 2.0)
DEFAULT_MMSE_CUTS = (27.0, 21.0, 10.0)
TERTILES = "tertiles"
VARIABLES = {"cdr": "CDR (global)", "mmse": "MMSE", "atrophy": "Atrophy strength (synthetic cohort)"}
HOW_CN_ENTERS = (
    "Only scans of the disease classes are placed in stage bins; all CN test scans form one reference group: each "
    "bin's ROC-AUC is its AD scans against all CN scans, and the reference row gives the CN scans' specificity."
)


class StageError(ValueError):
    """Stage bins or clinical values that cannot be used; the message names the fix."""


@dataclass(frozen=True)
class StageBins:
    """Bins of one stage measure, from the least to the most advanced stage. ``cuts`` ascend for an ascending measure
    (CDR, atrophy: bins (-inf, c1), [c1, c2), ..., [cm, inf)) and descend for MMSE (bins [c1, inf), [c2, c1), ...,
    (-inf, cm))."""

    variable: str
    cuts: tuple[float, ...]
    labels: tuple[str, ...]
    rule: str  # how the cut points were chosen, for the report

    @property
    def descending(self) -> bool:
        return self.variable == "mmse"

    def assign(self, values: np.ndarray) -> np.ndarray:
        """Bin index of each value (least advanced first); -1 where the value is missing (NaN)."""
        if self.descending:
            index = np.searchsorted(-np.asarray(self.cuts), -values, side="left")  # a cut point is in the upper bin
        else:
            index = np.searchsorted(np.asarray(self.cuts), values, side="right")
        return np.where(np.isnan(values), -1, index)


def parse_cuts(text: str, allow_tertiles: bool = False) -> tuple[float, ...] | str:
    """``"0.5,1,2"`` -> (0.5, 1.0, 2.0); ``"tertiles"`` where allowed."""
    if allow_tertiles and text.strip().lower() == TERTILES:
        return TERTILES
    try:
        cuts = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise StageError(f"stage bins must be comma-separated numbers (e.g. 0.5,1,2), got {text!r}") from None
    if not cuts:
        raise StageError(f"stage bins need at least one cut point, got {text!r}")
    return cuts


def _number(value: float) -> str:
    return f"{value:.3g}"


def make_bins(variable: str, cuts: Sequence[float] | str, staged_values: np.ndarray | None = None) -> StageBins:
    """The bins of ``variable`` from cut points (or ``"tertiles"`` of ``staged_values``, for atrophy)."""
    rule = "fixed cut points"
    if isinstance(cuts, str):
        finite = staged_values[np.isfinite(staged_values)] if staged_values is not None else np.array([])
        if finite.size == 0:
            raise StageError(f"no {variable} values to take tertiles of")
        cuts = tuple(float(q) for q in np.unique(np.quantile(finite, [1 / 3, 2 / 3])))
        rule = "tertiles of the staged test scans' values"
    cuts = tuple(float(c) for c in cuts)
    descending = variable == "mmse"
    if list(cuts) != sorted(set(cuts), reverse=descending):
        order = "descending (e.g. 27,21,10)" if descending else "ascending (e.g. 0.5,1,2)"
        raise StageError(f"{variable} cut points must be distinct and {order}, got {','.join(map(_number, cuts))}")
    return StageBins(variable, cuts, _labels(variable, cuts), rule)


def _labels(variable: str, cuts: tuple[float, ...]) -> tuple[str, ...]:
    edges = [-np.inf, *cuts, np.inf]
    if variable == "mmse":  # integer scores: [lo, hi) is hi-1 down to lo
        tops = [30.0, *(c - 1 for c in cuts[:-1])]
        labels = [f"{_number(hi)}\u2013{_number(lo)}" for hi, lo in zip(tops, cuts, strict=True)]
        return (*labels, f"<{_number(cuts[-1])}")
    labels = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        inside = [v for v in CDR_SCALE if lo <= v < hi] if variable == "cdr" else []
        if variable == "cdr" and len(inside) == 1 and hi != np.inf:
            labels.append(_number(inside[0]))
        elif i == 0:
            labels.append(f"<{_number(hi)}")
        elif hi == np.inf:
            labels.append(f"\u2265{_number(lo)}")
        else:
            labels.append(f"{_number(lo)} to <{_number(hi)}")
    return tuple(labels)


def read_clinical(datalists: Iterable[str | Path | Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """The ``clinical`` tables of one or more datalists, merged (image_id -> {"cdr", "mmse", "atrophy"})."""
    merged: dict[str, dict[str, float]] = {}
    for datalist in datalists:
        data = json.loads(Path(datalist).read_text()) if not isinstance(datalist, Mapping) else datalist
        table = data.get("clinical") or {}
        if not isinstance(table, Mapping):
            raise StageError(f"{datalist}: 'clinical' must map image_id to {{cdr, mmse, atrophy}}")
        for image_id, values in table.items():
            merged.setdefault(str(image_id), {}).update({k: float(v) for k, v in values.items() if v is not None})
    return merged


def _entry(num: float, den: float, boot_num: np.ndarray, boot_den: np.ndarray, confidence: float) -> dict[str, Any]:
    with np.errstate(invalid="ignore", divide="ignore"):
        low, high, used = percentile_interval(boot_num / boot_den, confidence)
    value = float(num / den) if den else None
    return {"value": value, "ci_low": low, "ci_high": high, "n_resamples_used": used}


def _share(mask: np.ndarray, hit: np.ndarray, weights: np.ndarray, confidence: float) -> dict[str, Any]:
    """Share of the ``mask`` scans where ``hit`` holds, with its bootstrap interval."""
    return _entry(
        float((mask & hit).sum()),
        float(mask.sum()),
        weights[:, mask & hit].sum(axis=1),
        weights[:, mask].sum(axis=1),
        confidence,
    )


def _auc(positive: np.ndarray, negative: np.ndarray, prob: np.ndarray, weights: np.ndarray, confidence: float) -> dict:
    subset = positive | negative
    if not positive.any() or not negative.any():
        return {"value": None, "ci_low": None, "ci_high": None, "n_resamples_used": 0}
    y, p = positive[subset].astype(int), prob[subset]
    point = float(weighted_auc(np.ones((1, subset.sum())), y, p)[0])
    low, high, used = percentile_interval(weighted_auc(weights[:, subset], y, p), confidence)
    return {"value": point, "ci_low": low, "ci_high": high, "n_resamples_used": used}


def stage_analysis(
    pred: ClassPredictions,
    clinical: Mapping[str, Mapping[str, float]],
    cuts: Mapping[str, Sequence[float] | str] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Per-scan metrics by stage bin for every stage measure that some staged test scan has (see the module text)."""
    if POSITIVE_CLASS not in pred.classes:
        raise StageError(f"stage analysis needs an AD class, got {list(pred.classes)}")
    cuts = {"cdr": DEFAULT_CDR_CUTS, "mmse": DEFAULT_MMSE_CUTS, "atrophy": TERTILES, **(cuts or {})}
    ad_index = pred.classes.index(POSITIVE_CLASS)
    reference = pred.label == 0
    staged = ~reference
    ad = pred.label == ad_index
    called_ad = pred.probs[:, ad_index] >= threshold
    correct = pred.predicted(threshold) == pred.label
    weights = subject_bootstrap_weights(pred.subject, n_resamples, seed).astype(float)
    result: dict[str, Any] = {
        "classes": list(pred.classes),
        "reference_class": pred.classes[0],
        "how_cn_enters": HOW_CN_ENTERS,
        "settings": {
            "threshold": threshold,
            "n_resamples": n_resamples,
            "seed": seed,
            "confidence": confidence,
            "level": "scan",
            "interval": "percentile bootstrap over subjects, the same resamples for every bin",
        },
        "reference": {
            "n_scans": int(reference.sum()),
            "n_subjects": len(set(pred.subject[reference].tolist())),
            "specificity": _share(reference, ~called_ad, weights, confidence),
            "correct": _share(reference, correct, weights, confidence),
        },
        "variables": {},
    }
    matched = sum(1 for i in pred.image_id if str(i) in clinical)
    result["n_scans_with_clinical"] = matched
    for variable, title in VARIABLES.items():
        values = np.array([clinical.get(str(i), {}).get(variable, np.nan) for i in pred.image_id], dtype=float)
        if not np.isfinite(values[staged]).any():
            continue
        bins = make_bins(variable, cuts[variable], values[staged])
        index = np.where(staged, bins.assign(values), -1)
        rows = []
        for b, label in enumerate(bins.labels):
            in_bin = index == b
            rows.append(
                {
                    "label": label,
                    "n_scans": int(in_bin.sum()),
                    "n_subjects": len(set(pred.subject[in_bin].tolist())),
                    "n_per_class": {
                        c: int((in_bin & (pred.label == i)).sum()) for i, c in enumerate(pred.classes[1:], 1)
                    },
                    "sensitivity": _share(in_bin & ad, called_ad, weights, confidence),
                    "correct": _share(in_bin, correct, weights, confidence),
                    "auc": _auc(in_bin & ad, reference, pred.probs[:, ad_index], weights, confidence),
                }
            )
        result["variables"][variable] = {
            "title": title,
            "cuts": list(bins.cuts),
            "rule": bins.rule,
            "n_staged_without_value": int((staged & np.isnan(values)).sum()),
            "bins": rows,
            "trend": _trend(index, ad, called_ad, weights, confidence, bins.labels),
        }
    return result


def _slope(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weighted least-squares slope of y on x for each row of ``weights`` (NaN where x does not vary)."""
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_x, mean_y = weights @ x / total, weights @ y / total
        cov = weights @ (x * y) / total - mean_x * mean_y
        var = weights @ (x * x) / total - mean_x**2
        return np.where(var > 1e-12, cov / var, np.nan)


def _trend(
    index: np.ndarray, ad: np.ndarray, called: np.ndarray, weights: np.ndarray, confidence: float, labels: Sequence[str]
) -> dict[str, Any] | None:
    """Change in sensitivity per bin: the least-squares slope of "called AD" (0/1) on the bin number (0 = least
    advanced) over the AD scans that have a bin. Every scan counts once, so a bin of two scans cannot swing it the
    way a difference between the two outermost bins would."""
    staged = ad & (index >= 0)
    used = sorted(set(index[staged].tolist()))
    if len(used) < 2:
        return None
    x, y = index[staged].astype(float), called[staged].astype(float)
    value = float(_slope(np.ones((1, len(x))), x, y)[0])
    low, high, n = percentile_interval(_slope(weights[:, staged], x, y), confidence)
    return {
        "from": labels[used[0]],
        "to": labels[used[-1]],
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "n_resamples_used": n,
    }


def format_stages(result: Mapping[str, Any], fmt: Any) -> list[str]:
    """Printable lines of :func:`stage_analysis` (``fmt`` formats a value/interval entry)."""
    ref = result["reference"]
    k = len(result["classes"])
    lines = [
        f"Accuracy by disease stage, per scan (95% CI, subject bootstrap). {result['how_cn_enters']}",
        f"Reference: {ref['n_scans']} {result['reference_class']} scans of {ref['n_subjects']} subjects, "
        f"specificity {fmt(ref['specificity'])}",
    ]
    if not result["variables"]:
        lines.append(
            f"No stage values (cdr, mmse, atrophy) for the staged test scans ({result['n_scans_with_clinical']} "
            "scans found in the datalist's 'clinical' table)."
        )
    for entry in result["variables"].values():
        lines.append(
            f"{entry['title']} ({entry['rule']}; {entry['n_staged_without_value']} staged scans without value):"
        )
        for row in entry["bins"]:
            line = f"  {row['label']:>10}: {row['n_scans']:>4} scans, {row['n_subjects']:>4} subjects; "
            line += f"sensitivity for AD {fmt(row['sensitivity'])}"
            if k > 2:
                line += f", correct class {fmt(row['correct'])}"
            lines.append(line + f", AUC vs all CN {fmt(row['auc'])}")
        trend = entry["trend"]
        if trend is not None:
            lines.append(f"  trend: sensitivity change per bin ({trend['from']} to {trend['to']}) {fmt(trend)}")
    return lines
