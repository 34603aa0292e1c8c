"""External validation: the same model evaluated on its own cohort's test set (internal) and on another cohort's test
datalist (external), side by side, with the drop (internal minus external) and its 95% interval.

The two test sets hold different people, so they are resampled independently: ``n_resamples`` subject bootstraps of
each set (seeds ``seed`` and ``seed + 1``), each metric computed on every resample, and the drop's interval is the
percentile interval of the resample-wise differences (resamples where either metric is undefined are skipped).

A cross-validation evaluates every fold's model on the same external scans (``<out>/fold_<k>/eval_external``); pooled,
an external scan then appears once per fold (its image id prefixed with the fold), and the subject bootstrap keeps all
of a subject's rows together, so the repeated predictions do not narrow the interval.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from analysis.bootstrap import percentile_interval, subject_bootstrap_weights, weighted_metrics
from analysis.point_estimates import METRICS, point_metrics
from analysis.predictions import (
    CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    DEFAULT_THRESHOLD,
    Predictions,
    make_predictions,
    per_subject,
    read_predictions,
)

EXTERNAL_METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity")
EXTERNAL_DIR = "eval_external"


def pool_fold_predictions(parts: Mapping[str, Predictions]) -> Predictions:
    """Pool several evaluations of the same scans (one per fold model): image ids get the fold as prefix, subjects
    stay, so a subject's rows of every fold are resampled together."""
    parts = dict(parts)
    if len({p.classes for p in parts.values()}) > 1:
        raise ValueError("External evaluations of the folds have different class lists.")
    first = next(iter(parts.values()))
    return make_predictions(
        [f"{name}/{i}" for name, p in parts.items() for i in p.image_id],
        np.concatenate([p.subject for p in parts.values()]),
        np.concatenate([p.label for p in parts.values()]),
        np.concatenate([p.prob for p in parts.values()]),
        classes=first.classes,
    )


def crossval_external_predictions(crossval_dir: str | Path) -> Predictions | None:
    """The pooled external predictions of a cross-validation folder, or None when it has no external evaluation."""
    crossval_dir = Path(crossval_dir)
    summary = json.loads((crossval_dir / "crossval.json").read_text())
    if not summary.get("external"):
        return None
    parts = {}
    for fold in summary["external"]["folds"]:
        local = crossval_dir / f"fold_{fold['fold']}" / EXTERNAL_DIR
        eval_dir = local if local.is_dir() else Path(fold["eval_dir"])
        parts[f"fold {fold['fold']}"] = read_predictions(eval_dir / "predictions.csv")
    return pool_fold_predictions(parts)


def read_external(path: str | Path) -> Predictions:
    """External predictions from an evaluation folder (predictions.csv) or a cross-validation folder run with
    ``--external-datalist`` (every fold's ``eval_external``, pooled)."""
    path = Path(path)
    if (path / "predictions.csv").is_file():
        return read_predictions(path / "predictions.csv")
    if (path / "crossval.json").is_file():
        pooled = crossval_external_predictions(path)
        if pooled is not None:
            return pooled
    raise ValueError(
        f"{path} has no predictions.csv (nor a cross-validation with external evaluations); give the output_dir of "
        "the evaluation on the external test datalist (run evaluating --datalist <external> --output_dir <dir>)."
    )


def _level_comparison(
    internal: Predictions, external: Predictions, threshold: float, n_resamples: int, seed: int, confidence: float
) -> dict[str, Any]:
    sets = {}
    for name, pred, offset in (("internal", internal, 0), ("external", external, 1)):
        weights = subject_bootstrap_weights(pred.subject, n_resamples, seed + offset)
        sets[name] = (
            point_metrics(pred.label, pred.prob, threshold),
            weighted_metrics(weights, pred.label, pred.prob, threshold),
        )
    rows = {}
    for metric in EXTERNAL_METRICS:
        row = {}
        for name, (point, boot) in sets.items():
            low, high, used = percentile_interval(boot[metric], confidence)
            row[name] = {"value": point[metric], "ci_low": low, "ci_high": high, "n_resamples_used": used}
        a, b = row["internal"]["value"], row["external"]["value"]
        low, high, used = percentile_interval(sets["internal"][1][metric] - sets["external"][1][metric], confidence)
        drop = None if a is None or b is None else float(a - b)
        row["drop"] = {"value": drop, "ci_low": low, "ci_high": high, "n_resamples_used": used}
        rows[metric] = row
    return {
        "n_internal": len(internal),
        "n_external": len(external),
        "n_subjects_internal": internal.n_subjects,
        "n_subjects_external": external.n_subjects,
        "metrics": rows,
    }


def external_comparison(
    internal: Predictions,
    external: Predictions,
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = CONFIDENCE,
    sources: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Internal and external metrics with intervals and the drop with its interval, per scan and per subject."""
    if internal.classes != external.classes:
        raise ValueError(
            f"Internal classes {list(internal.classes)} and external classes {list(external.classes)} differ; the "
            "external test datalist must have the classes of the model."
        )
    shared = sorted(set(internal.subject.tolist()) & set(external.subject.tolist()))
    return {
        "contrast": internal.contrast,
        "sources": dict(sources or {}),
        "metrics": {m: METRICS[m] for m in EXTERNAL_METRICS},
        "shared_subjects": shared[:20],
        "n_shared_subjects": len(shared),
        "settings": {
            "threshold": threshold,
            "n_resamples": n_resamples,
            "seeds": [seed, seed + 1],
            "confidence": confidence,
            "interval": "percentile bootstrap over subjects, independently for the two sets; the drop's interval is "
            "the percentile interval of the differences between paired-by-index resamples",
        },
        "scan": _level_comparison(internal, external, threshold, n_resamples, seed, confidence),
        "subject": _level_comparison(
            per_subject(internal), per_subject(external), threshold, n_resamples, seed, confidence
        ),
    }


def format_external(result: Mapping[str, Any], fmt: Any) -> list[str]:
    """Printable lines of :func:`external_comparison` (``fmt`` formats a value/interval entry)."""
    lines = [f"External validation ({result['contrast']}); drop = internal minus external, 95% CI:"]
    for level in ("scan", "subject"):
        entry = result[level]
        lines.append(f"  per {level}: internal {entry['n_internal']} {level}s, external {entry['n_external']} {level}s")
        for metric, row in entry["metrics"].items():
            label = result["metrics"][metric].split(" (")[0]
            lines.append(
                f"    {label}: internal {fmt(row['internal'])}, external {fmt(row['external'])}, "
                f"drop {fmt(row['drop'])}"
            )
    return lines
