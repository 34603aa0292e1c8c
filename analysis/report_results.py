"""The numbers behind the report: cohort counts (datalist and test set), metrics with intervals, ROC bands, Bayesian
post-test probabilities and the clinician comparison, for an evaluation folder or a cross-validation folder.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sklearn import metrics as skm

from analysis import bayes, clinicians
from analysis.metrics import (
    DEFAULT_BINS,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    DEFAULT_THRESHOLD,
    Predictions,
    concat_predictions,
    evaluate_predictions,
    per_subject,
    read_predictions,
    roc_with_band,
)

PARTITIONS = ("training", "validation", "test")


# ------------------------------------------------------------------------------------------------- inputs


def read_training_log(path: Path) -> list[dict[str, str]]:
    """Rows of ``training_log.csv`` (``EpochLogWriter``), or [] when the file does not exist."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _counts(items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    ad = [i for i in items if int(i["label"]) == 1]
    cn = [i for i in items if int(i["label"]) == 0]
    return {
        "scans": len(items),
        "subjects": len({str(i["subject"]) for i in items}),
        "AD_scans": len(ad),
        "CN_scans": len(cn),
        "AD_subjects": len({str(i["subject"]) for i in ad}),
        "CN_subjects": len({str(i["subject"]) for i in cn}),
    }


def datalist_summary(path: str | Path) -> dict[str, Any]:
    """Scans, subjects and AD/CN counts per partition of a datalist JSON."""
    datalist = json.loads(Path(path).read_text())
    return {
        "datalist": str(path),
        "partitions": {name: _counts(datalist[name]) for name in PARTITIONS if name in datalist},
    }


def predictions_summary(pred: Predictions) -> dict[str, int]:
    """Counts of the evaluated (test) scans and subjects."""
    items = [{"label": int(y), "subject": s} for y, s in zip(pred.label, pred.subject, strict=True)]
    return _counts(items)


# ------------------------------------------------------------------------------------------------- analysis


def analyse(
    pred: Predictions,
    prevalences: Sequence[bayes.Prevalence],
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    n_bins: int = DEFAULT_BINS,
    n_draws: int = bayes.DEFAULT_DRAWS,
    bayes_level: str = "subject",
) -> dict[str, Any]:
    """Metrics with intervals, ROC band, Bayesian analysis and clinician comparison of one set of predictions."""
    if bayes_level not in ("scan", "subject"):
        raise ValueError(f"bayes_level must be 'scan' or 'subject', got {bayes_level!r}.")
    metrics = evaluate_predictions(pred, threshold, n_resamples, seed, n_bins)
    subject_pred = per_subject(pred)
    confusion = metrics[bayes_level]["confusion_matrix"]
    posterior = bayes.bayesian_analysis(confusion, prevalences, n_draws=n_draws, seed=seed)
    posterior["level"] = bayes_level
    curves = bayes.predictive_value_curves(confusion, n_draws=n_draws, seed=seed)
    comparison = clinicians.clinician_comparison(
        prevalences, posterior["sensitivity"]["median"], posterior["specificity"]["median"]
    )
    return {
        "cohort": {"test": predictions_summary(pred)},
        "metrics": metrics,
        "roc": {
            "scan": roc_with_band(pred, n_resamples, seed),
            "subject": roc_with_band(subject_pred, n_resamples, seed),
        },
        "bayes": posterior,
        "predictive_value_curves": curves,
        "clinicians": comparison,
    }


def evaluation_results(
    eval_dir: str | Path, prevalences: Sequence[bayes.Prevalence], datalist: str | Path | None = None, **options: Any
) -> dict[str, Any]:
    """Analysis of one evaluation folder."""
    eval_dir = Path(eval_dir)
    pred = read_predictions(eval_dir / "predictions.csv")
    results = {"kind": "evaluation", "source": str(eval_dir.resolve()), **analyse(pred, prevalences, **options)}
    if datalist is not None:
        results["cohort"]["datalist"] = datalist_summary(datalist)
    results["training_logs"] = {"training": read_training_log(eval_dir / "training_log.csv")}
    return results


def crossval_results(
    crossval_dir: str | Path, prevalences: Sequence[bayes.Prevalence], **options: Any
) -> dict[str, Any]:
    """Analysis of a cross-validation: the pooled test predictions of all folds (each scan tested once) with
    intervals, plus the per-fold metrics and mean ± standard deviation from ``crossval.json``."""
    crossval_dir = Path(crossval_dir)
    summary = json.loads((crossval_dir / "crossval.json").read_text())
    fold_preds = {}
    for fold in summary["folds"]:
        eval_dir = _fold_eval_dir(crossval_dir, fold)
        fold_preds[f"fold {fold['fold']}"] = read_predictions(eval_dir / "predictions.csv")
    pooled = concat_predictions(fold_preds.values())
    results = {
        "kind": "cross-validation",
        "source": str(crossval_dir.resolve()),
        **analyse(pooled, prevalences, **options),
    }
    results["crossval"] = summary
    results["roc"]["folds"] = {}
    for name, pred in fold_preds.items():
        if len(set(pred.label.tolist())) == 2:
            fpr, tpr, _ = skm.roc_curve(pred.label, pred.prob)
            auc = float(skm.roc_auc_score(pred.label, pred.prob))
            results["roc"]["folds"][name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": auc}
    results["cohort"]["folds"] = {}
    for fold in summary["folds"]:
        if Path(fold["datalist"]).is_file():
            results["cohort"]["folds"][f"fold {fold['fold']}"] = datalist_summary(fold["datalist"])
    results["training_logs"] = {
        f"fold {fold['fold']}": read_training_log(_fold_eval_dir(crossval_dir, fold) / "training_log.csv")
        for fold in summary["folds"]
    }
    return results


def _fold_eval_dir(crossval_dir: Path, fold: Mapping[str, Any]) -> Path:
    # Prefer the fold folder next to crossval.json, so a moved or copied cross-validation folder still reports.
    local = crossval_dir / f"fold_{fold['fold']}" / "eval"
    return local if local.is_dir() else Path(fold["eval_dir"])
