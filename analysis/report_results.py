"""The numbers behind the report: cohort counts (datalist and test set), metrics with intervals, ROC bands, Bayesian
post-test probabilities and the clinician comparison, for an evaluation folder or a cross-validation folder; with more
than two classes also the k-class metrics, and (see :func:`add_sections`) accuracy by disease stage and the external
validation.

The binary metrics, ROC, calibration and the Bayesian analysis are those of AD against every other class (for two
classes AD vs CN, as always).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sklearn import metrics as skm

from analysis import bayes, clinicians, external, multiclass, stages
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
from analysis.predictions import DEFAULT_CLASSES

PARTITIONS = ("training", "validation", "test")


# ------------------------------------------------------------------------------------------------- inputs


def read_training_log(path: Path) -> list[dict[str, str]]:
    """Rows of ``training_log.csv`` (``EpochLogWriter``), or [] when the file does not exist."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _counts(items: Sequence[Mapping[str, Any]], classes: Sequence[str] = DEFAULT_CLASSES) -> dict[str, int]:
    return multiclass.class_counts([i["label"] for i in items], [i["subject"] for i in items], classes)


def datalist_summary(path: str | Path) -> dict[str, Any]:
    """Scans, subjects and per-class counts per partition of a datalist JSON (its ``classes``, CN/AD if absent)."""
    datalist = json.loads(Path(path).read_text())
    classes = datalist.get("classes") or list(DEFAULT_CLASSES)
    return {
        "datalist": str(path),
        "classes": list(classes),
        "partitions": {name: _counts(datalist[name], classes) for name in PARTITIONS if name in datalist},
    }


def predictions_summary(pred: Predictions | multiclass.ClassPredictions) -> dict[str, int]:
    """Counts of the evaluated (test) scans and subjects, per class (AD vs the rest for binary predictions)."""
    if isinstance(pred, multiclass.ClassPredictions):
        return multiclass.class_counts(pred.label, pred.subject, pred.classes)
    return multiclass.class_counts(pred.label, pred.subject, ("rest", "AD") if len(pred.classes) > 2 else pred.classes)


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
    class_pred: multiclass.ClassPredictions | None = None,
) -> dict[str, Any]:
    """Metrics with intervals, ROC band, Bayesian analysis and clinician comparison of one set of predictions (AD
    against the rest); with ``class_pred`` of more than two classes also the k-class metrics."""
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
    result = {
        "classes": list(pred.classes),
        "contrast": pred.contrast,
        "cohort": {"test": predictions_summary(class_pred if class_pred is not None else pred)},
        "metrics": metrics,
        "roc": {
            "scan": roc_with_band(pred, n_resamples, seed),
            "subject": roc_with_band(subject_pred, n_resamples, seed),
        },
        "bayes": posterior,
        "predictive_value_curves": curves,
        "clinicians": comparison,
    }
    if class_pred is not None and class_pred.k > 2:
        result["multiclass"] = multiclass.evaluate_multiclass(class_pred, threshold, n_resamples, seed)
    return result


def evaluation_results(
    eval_dir: str | Path,
    prevalences: Sequence[bayes.Prevalence],
    datalist: str | Path | None = None,
    sections: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Analysis of one evaluation folder; ``sections`` are the arguments of :func:`add_sections`."""
    eval_dir = Path(eval_dir)
    pred = read_predictions(eval_dir / "predictions.csv")
    class_pred = multiclass.read_class_predictions(eval_dir / "predictions.csv")
    results = {
        "kind": "evaluation",
        "source": str(eval_dir.resolve()),
        **analyse(pred, prevalences, class_pred=class_pred, **options),
    }
    if datalist is not None:
        results["cohort"]["datalist"] = datalist_summary(datalist)
    results["training_logs"] = {"training": read_training_log(eval_dir / "training_log.csv")}
    datalists = [datalist] if datalist is not None else []
    add_sections(results, pred, class_pred, datalists, **(sections or {}), **_bootstrap(options))
    return results


def crossval_results(
    crossval_dir: str | Path,
    prevalences: Sequence[bayes.Prevalence],
    datalist: str | Path | None = None,
    sections: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Analysis of a cross-validation: the pooled test predictions of all folds (each scan tested once) with
    intervals, plus the per-fold metrics and mean ± standard deviation from ``crossval.json``."""
    crossval_dir = Path(crossval_dir)
    summary = json.loads((crossval_dir / "crossval.json").read_text())
    fold_preds, class_preds = {}, []
    for fold in summary["folds"]:
        eval_dir = _fold_eval_dir(crossval_dir, fold)
        fold_preds[f"fold {fold['fold']}"] = read_predictions(eval_dir / "predictions.csv")
        class_preds.append(multiclass.read_class_predictions(eval_dir / "predictions.csv"))
    pooled = concat_predictions(fold_preds.values())
    class_pred = multiclass.concat_class_predictions(class_preds)
    results = {
        "kind": "cross-validation",
        "source": str(crossval_dir.resolve()),
        **analyse(pooled, prevalences, class_pred=class_pred, **options),
    }
    results["crossval"] = summary
    results["roc"]["folds"] = {}
    for name, pred in fold_preds.items():
        if len(set(pred.label.tolist())) == 2:
            fpr, tpr, _ = skm.roc_curve(pred.label, pred.prob)
            auc = float(skm.roc_auc_score(pred.label, pred.prob))
            results["roc"]["folds"][name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": auc}
    if datalist is not None:
        results["cohort"]["datalist"] = datalist_summary(datalist)
    results["cohort"]["folds"] = {}
    datalists = [datalist] if datalist is not None else []
    for fold in summary["folds"]:
        if Path(fold["datalist"]).is_file():
            results["cohort"]["folds"][f"fold {fold['fold']}"] = datalist_summary(fold["datalist"])
            datalists.append(fold["datalist"])
    results["training_logs"] = {
        f"fold {fold['fold']}": read_training_log(_fold_eval_dir(crossval_dir, fold) / "training_log.csv")
        for fold in summary["folds"]
    }
    external_dir = (sections or {}).get("external_eval_dir")
    if external_dir is None and summary.get("external"):
        external_dir = crossval_dir  # the folds' own external evaluations (crossval --external-datalist)
    sections = {**(sections or {}), "external_eval_dir": external_dir}
    add_sections(results, pooled, class_pred, datalists, **sections, **_bootstrap(options))
    return results


def _bootstrap(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: options[k] for k in ("threshold", "n_resamples", "seed") if k in options}


def add_sections(
    results: dict[str, Any],
    pred: Predictions,
    class_pred: multiclass.ClassPredictions,
    datalists: Sequence[str | Path] = (),
    stage_cuts: Mapping[str, Sequence[float] | str] | None = None,
    external_eval_dir: str | Path | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> None:
    """Add accuracy by disease stage (when the datalists carry a ``clinical`` table with values for the staged test
    scans) and the external validation (the predictions in ``external_eval_dir``: an evaluation folder, or a
    cross-validation folder with external evaluations) to ``results``."""
    clinical = stages.read_clinical(datalists)
    if clinical:
        staged = stages.stage_analysis(class_pred, clinical, stage_cuts, threshold, n_resamples, seed)
        if staged["variables"]:
            results["stages"] = staged
    if external_eval_dir is not None:
        sources = {"internal": results["source"], "external": str(Path(external_eval_dir).resolve())}
        outside = external.read_external(external_eval_dir)
        results["external"] = external.external_comparison(pred, outside, threshold, n_resamples, seed, sources=sources)


def _fold_eval_dir(crossval_dir: Path, fold: Mapping[str, Any]) -> Path:
    # Prefer the fold folder next to crossval.json, so a moved or copied cross-validation folder still reports.
    local = crossval_dir / f"fold_{fold['fold']}" / "eval"
    return local if local.is_dir() else Path(fold["eval_dir"])
