"""The numbers of ``python -m analysis compare-models``: per model, parameters, mean ± SD over folds of accuracy,
balanced accuracy and ROC-AUC, the AUC of the pooled out-of-fold predictions with a subject-bootstrap 95% CI, the
paired DeLong test against the reference model, and the benchmark's seconds per training step and peak memory; then
which model wins and whether "the more 2D, the worse" (r3d_18 > mc3_18 > r2plus1d_18 > resnet18_2d) holds.

It reads only ``<model>/fold_<k>/eval/predictions.csv`` (parameters and benchmark come with ``runs``), so it can be
recomputed at any time; :mod:`analysis.compare_models_output` writes the files.

Levels: the fold metrics and pooled metrics are per scan (default, as crossval reports them) or per subject
(``level``). DeLong's test assumes independent cases, so it is run on the per-subject predictions (a subject's mean
probability) whatever the level; with one scan per subject both are the same. The per-scan DeLong and the paired
subject bootstrap of the per-scan AUC difference are in comparison.json too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from analysis.metrics import (
    Predictions,
    align_predictions,
    concat_predictions,
    delong_test,
    evaluate_level,
    mean_std,
    paired_bootstrap_auc,
    per_subject,
    point_metrics,
    read_predictions,
)

TABLE_METRICS = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "roc_auc": "AUC"}
# The dissertation's "the more 2D, the worse": from full 3D convolutions to none (4.5.3).
MORE_2D_ORDER = ("r3d_18", "mc3_18", "r2plus1d_18", "resnet18_2d")
ALPHA = 0.05


def fold_predictions(model_dir: Path, folds: Sequence[int]) -> list[Predictions]:
    return [read_predictions(Path(model_dir) / f"fold_{k}" / "eval" / "predictions.csv") for k in folds]


def _at(pred: Predictions, level: str) -> Predictions:
    return per_subject(pred) if level == "subject" else pred


def model_metrics(
    parts: Sequence[Predictions], folds: Sequence[int], level: str, threshold: float, n_resamples: int, seed: int
) -> dict[str, Any]:
    """Per-fold point metrics, their mean ± sample SD, and the pooled out-of-fold metrics with subject-bootstrap
    intervals, at ``level``."""
    per_fold = []
    for k, pred in zip(folds, parts, strict=True):
        point = point_metrics(_at(pred, level).label, _at(pred, level).prob, threshold)
        per_fold.append({"fold": k, "n": len(_at(pred, level)), **{m: point[m] for m in TABLE_METRICS}})
    pooled = concat_predictions(parts)
    evaluated = evaluate_level(_at(pooled, level), threshold, n_resamples, seed)
    return {
        "folds": per_fold,
        "mean_std": {m: mean_std([fold[m] for fold in per_fold]) for m in TABLE_METRICS},
        "pooled": {
            "n": evaluated["n"],
            "n_subjects": evaluated["n_subjects"],
            **{m: evaluated["metrics"][m] for m in TABLE_METRICS},
        },
    }


def paired_comparison(a: Predictions, b: Predictions, n_resamples: int, seed: int) -> dict[str, Any]:
    """A against B on the same pooled scans: DeLong per subject (the table's p-value) and per scan, and the paired
    subject bootstrap of the per-scan AUC difference. Errors (different scans, one class) are recorded, not
    raised."""
    try:
        a, b = align_predictions(a, b)
    except ValueError as error:
        return {"error": str(error)}
    result: dict[str, Any] = {}
    for name, (x, y) in {"delong": (per_subject(a), per_subject(b)), "delong_scan": (a, b)}.items():
        try:
            result[name] = delong_test(x.label, x.prob, y.prob)
        except ValueError as error:
            result[name] = {"error": str(error)}
    result["bootstrap_scan"] = paired_bootstrap_auc(a, b, n_resamples, seed)
    return result


def summarize_comparison(
    runs: Mapping[str, Mapping[str, Any]],
    folds: Sequence[int],
    reference: str,
    level: str = "scan",
    threshold: float = 0.5,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The comparison of the models in ``runs`` (name -> ``{"dir", "kind", "parameters", "benchmark"}``): one entry
    per model in the given order, and the verdict."""
    if level not in ("scan", "subject"):
        raise ValueError(f"level must be 'scan' or 'subject', got {level!r}.")
    pooled = {name: concat_predictions(fold_predictions(Path(run["dir"]), folds)) for name, run in runs.items()}
    models = []
    for name, run in runs.items():
        parts = fold_predictions(Path(run["dir"]), folds)
        entry = {"model": name, **run}
        entry.update(model_metrics(parts, folds, level, threshold, n_resamples, seed))
        if name != reference:
            entry["vs_reference"] = paired_comparison(pooled[name], pooled[reference], n_resamples, seed)
        models.append(entry)
    ref_auc = pooled_auc(next(entry for entry in models if entry["model"] == reference))
    for entry in models:
        # The table's difference is that of its own AUC column (at ``level``); the p-value is DeLong's per subject.
        auc = pooled_auc(entry)
        entry["delta_auc"] = None if auc is None or ref_auc is None or entry["model"] == reference else auc - ref_auc
    summary: dict[str, Any] = {
        "reference": reference,
        "level": level,
        "folds": list(folds),
        "settings": {
            "threshold": threshold,
            "n_resamples": n_resamples,
            "seed": seed,
            "alpha": ALPHA,
            "interval": "percentile bootstrap over subjects (pooled out-of-fold predictions)",
            "delong": "paired DeLong test on the per-subject pooled predictions (a subject's mean probability)",
            "std": "sample (ddof=1) over folds",
        },
        "models": models,
    }
    summary["verdict"] = verdict(summary, pooled, n_resamples, seed)
    return summary


def pooled_auc(entry: Mapping[str, Any]) -> float | None:
    """The pooled out-of-fold ROC-AUC of a model entry (None when undefined)."""
    return entry["pooled"]["roc_auc"]["value"]


def _p_text(p: float) -> str:
    return f"p = {p:.3g}" if p >= 1e-4 else "p < 0.0001"


def _difference_text(comparison: Mapping[str, Any]) -> str:
    delong = comparison.get("delong", {})
    if "error" in comparison or "error" in delong:
        return f"DeLong not computed ({comparison.get('error') or delong.get('error')})"
    significant = "significant" if delong["p_value"] < ALPHA else "not significant"
    return f"{significant} (paired DeLong per subject, {_p_text(delong['p_value'])})"


def verdict(
    summary: Mapping[str, Any], pooled: Mapping[str, Predictions], n_resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Which model has the highest pooled AUC and whether its difference from the reference is significant; and
    whether the pooled AUCs fall in the order of :data:`MORE_2D_ORDER` (the models of it that were run)."""
    level, reference = summary["level"], summary["reference"]
    entries = {entry["model"]: entry for entry in summary["models"]}
    aucs = {name: pooled_auc(entry) for name, entry in entries.items() if pooled_auc(entry) is not None}
    result: dict[str, Any] = {"winner": None, "lines": []}
    if not aucs:
        result["lines"].append("No model has a defined pooled AUC (a class is missing from the test folds).")
        return result
    best = max(aucs.values())
    # A tie with the reference is reported as the reference winning: nothing beat it.
    winners = sorted((n for n, a in aucs.items() if a == best), key=lambda n: (n != reference, list(entries).index(n)))
    winner = winners[0]
    result["winner"] = winner
    result["tied"] = winners[1:]
    interval = entries[winner]["pooled"]["roc_auc"]
    head = f"Winner: {winner}{' (the reference)' if winner == reference else ''} has the highest pooled AUC per {level}"
    head += f", {best:.3f}"
    if interval.get("ci_low") is not None:
        head += f" (95% CI {interval['ci_low']:.3f}\u2013{interval['ci_high']:.3f})"
    if winners[1:] and winner != reference:
        head += f", tied with {', '.join(winners[1:])}"
    if winner != reference:
        ref_auc = aucs.get(reference)
        comparison = entries[winner]["vs_reference"]
        result["significant"] = comparison.get("delong", {}).get("p_value", 1.0) < ALPHA
        ref_text = "n/a" if ref_auc is None else f"{ref_auc:.3f}"
        head += f"; the reference {reference} has {ref_text}: the difference is {_difference_text(comparison)}."
    else:
        others = {n: a for n, a in aucs.items() if n != reference}
        if others:
            second = max(others, key=others.get)
            comparison = entries[second]["vs_reference"]
            result["runner_up"] = second
            result["significant"] = comparison.get("delong", {}).get("p_value", 1.0) < ALPHA
            if winners[1:]:
                head += f", tied with {', '.join(winners[1:])}: the difference from {second} is "
            else:
                head += f"; the next best, {second}, has {others[second]:.3f}: the difference is "
            head += f"{_difference_text(comparison)}."
        else:
            head += " (no other model to compare)."
    result["lines"].append(head)
    result["more_2d_worse"] = more_2d_worse(aucs, pooled, n_resamples, seed)
    result["lines"].append(result["more_2d_worse"]["text"])
    return result


def more_2d_worse(
    aucs: Mapping[str, float], pooled: Mapping[str, Predictions], n_resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Does the pooled AUC fall strictly along :data:`MORE_2D_ORDER` (among the models run)? With the paired
    DeLong p-value (per subject) of each adjacent pair, so a point-estimate order is not read as a finding."""
    chain = [name for name in MORE_2D_ORDER if name in aucs]
    if len(chain) < 2:
        return {
            "tested": False,
            "models": chain,
            "text": f'"The more 2D, the worse" is not tested: it needs at least two of {", ".join(MORE_2D_ORDER)}.',
        }
    pairs = []
    for a, b in zip(chain, chain[1:], strict=False):
        comparison = paired_comparison(pooled[a], pooled[b], n_resamples, seed)
        p = comparison.get("delong", {}).get("p_value")
        pairs.append({"a": a, "b": b, "auc_a": aucs[a], "auc_b": aucs[b], "delong_p": p})
    holds = all(pair["auc_a"] > pair["auc_b"] for pair in pairs)
    ranked = sorted(chain, key=lambda n: -aucs[n])
    order = f"{ranked[0]} {aucs[ranked[0]]:.3f}"
    for higher, name in zip(ranked, ranked[1:], strict=False):
        order += f" {'=' if aucs[name] == aucs[higher] else '>'} {name} {aucs[name]:.3f}"
    tested = [p["delong_p"] for p in pairs if p["delong_p"] is not None]
    significant = sum(p < ALPHA for p in tested)
    detail = ", ".join(f"{p['a']} vs {p['b']} {_p_text(p['delong_p'])}" for p in pairs if p["delong_p"] is not None)
    text = (
        f'"The more 2D, the worse" ({" > ".join(chain)}) {"holds" if holds else "does not hold"} here by pooled AUC: '
        f"{order}. Adjacent pairs significantly different: {significant} of {len(pairs)}"
        + (f" ({detail})." if detail else ".")
    )
    return {"tested": True, "holds": holds, "models": chain, "pairs": pairs, "n_significant": significant, "text": text}
