"""k-fold cross-validation through the bundle: train and evaluate every fold datalist, resumably, and summarise the
folds as mean ± standard deviation, as the dissertation reports them ("accuracy: 77.26% ± 2.34").

For fold ``k`` (``<folds_dir>/fold_<k>.json``, written by ``python -m preprocessing split --folds 3``):

    <out>/fold_<k>/models/          checkpoints (--ckpt_dir)
    <out>/fold_<k>/eval/            training_log.csv, predictions.csv, metrics.json (--output_dir)
    <out>/fold_<k>/training.done    written once training returned successfully
    <out>/fold_<k>/train.log, evaluate.log
    <out>/fold_<k>/eval_external/   the fold's model on an external test datalist (--external-datalist), with
                                    evaluate_external.log


Resuming: a fold whose ``eval/metrics.json`` exists is finished and skipped; a fold with ``training.done`` but no
metrics is only evaluated; any other fold is trained, and an interrupted training resumes from its last epoch
checkpoint because the bundle does (``ResumeFromLatestCheckpoint``). The marker matters: re-running a finished
training would resume from the last checkpoint and train further whenever early stopping had ended it before
``max_epochs``.
The external evaluation resumes the same way: a fold whose ``eval_external/metrics.json`` exists is not evaluated
again. The bundle refuses external test scans that share a subject or an image with the model's training data; that
refusal (its one ``error: ...`` line) stops the run naming the fold.

Standard deviations are sample standard deviations (ddof=1) over folds.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from analysis import BUNDLE_ROOT
from analysis.external import EXTERNAL_DIR, pool_fold_predictions
from analysis.metrics import (
    DEFAULT_THRESHOLD,
    Predictions,
    concat_predictions,
    mean_std,
    per_subject,
    point_metrics,
    read_predictions,
)

TRAIN_CONFIG = "configs/train.json"
EVALUATE_CONFIG = "['configs/train.json','configs/evaluate.json']"
FOLD_PATTERN = re.compile(r"^fold_(\d+)\.json$")
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc")
# Overrides that must not reach the evaluation run: evaluate.json sets weights to none so that evaluating never
# downloads the Kinetics checkpoint it is about to overwrite with the trained model.
TRAINING_ONLY_KEYS = {"weights"}

# (command, working directory, log file) -> exit status. Tests pass a recording runner.
Runner = Callable[[Sequence[str], Path, Path], int]


class CrossvalError(RuntimeError):
    """A fold's training or evaluation failed; the message names its log."""


def run_logged(command: Sequence[str], cwd: Path, log_path: Path) -> int:
    """Run ``command`` in ``cwd`` with stdout and stderr appended to ``log_path``; return its exit status."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        return subprocess.run(list(command), cwd=cwd, stdout=log, stderr=subprocess.STDOUT).returncode


def find_folds(folds_dir: str | Path) -> list[tuple[int, Path]]:
    """``(k, path)`` of every ``fold_<k>.json`` in ``folds_dir``, by k."""
    folds = []
    for path in Path(folds_dir).iterdir():
        match = FOLD_PATTERN.match(path.name)
        if match:
            folds.append((int(match.group(1)), path.resolve()))
    if not folds:
        raise FileNotFoundError(f"No fold_<k>.json in {folds_dir}; write them with 'python -m preprocessing split'.")
    return sorted(folds)


def select_folds(folds: Sequence[tuple[int, Path]], wanted: Sequence[int] | None) -> list[tuple[int, Path]]:
    """The folds numbered in ``wanted`` (all when None), refusing a number that has no ``fold_<k>.json``."""
    if wanted is None:
        return list(folds)
    found = dict(folds)
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise CrossvalError(f"no fold_<k>.json for fold(s) {missing}; the folds found are {sorted(found)}.")
    return [(k, found[k]) for k in sorted(set(wanted))]


def bundle_overrides(epochs: int | None = None, extra: Sequence[str] = ()) -> list[str]:
    """Bundle command-line overrides: ``--epochs N`` becomes ``--train#trainer#max_epochs N``; ``extra`` are
    ``--key value`` pairs passed through unchanged."""
    extra = list(extra)
    if len(extra) % 2 or any(not key.startswith("--") for key in extra[::2]):
        raise ValueError(f"Bundle overrides must be '--key value' pairs, got {extra}.")
    overrides = ["--train#trainer#max_epochs", str(epochs)] if epochs is not None else []
    return overrides + extra


def _without_training_only(overrides: Sequence[str]) -> list[str]:
    pairs = zip(overrides[::2], overrides[1::2], strict=True)
    return [item for key, value in pairs if key[2:] not in TRAINING_ONLY_KEYS for item in (key, value)]


def fold_commands(
    fold_json: Path,
    dataset_dir: Path,
    fold_dir: Path,
    overrides: Sequence[str] = (),
    python: str = sys.executable,
    external: tuple[Path, Path] | None = None,
) -> dict[str, list[str]]:
    """The training and evaluation command lines of one fold (run from the bundle folder; absolute paths); with
    ``external`` = (datalist, dataset_dir) also the evaluation of the fold's model on that external test set."""
    common = [
        "--datalist", str(fold_json), "--dataset_dir", str(dataset_dir),
        "--ckpt_dir", str(fold_dir / "models"), "--output_dir", str(fold_dir / "eval"),
    ]  # fmt: skip
    bundle = [python, "-m", "monai.bundle", "run"]
    evaluate = [*bundle, "evaluating", "--config_file", EVALUATE_CONFIG]
    commands = {
        "training": [*bundle, "training", "--config_file", TRAIN_CONFIG, *common, *overrides],
        "evaluating": [*evaluate, *common] + _without_training_only(overrides),
    }
    if external is not None:
        commands["evaluating_external"] = [
            *evaluate, "--datalist", str(external[0]), "--dataset_dir", str(external[1]),
            "--ckpt_dir", str(fold_dir / "models"), "--output_dir", str(fold_dir / EXTERNAL_DIR),
        ] + _without_training_only(overrides)  # fmt: skip
    return commands


def fold_metrics(eval_dir: Path, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Point metrics of one fold's test predictions, per scan and per subject."""
    pred = read_predictions(eval_dir / "predictions.csv")
    return {
        "n_scans": len(pred),
        "n_subjects": pred.n_subjects,
        "scan": _metrics(pred, threshold),
        "subject": _metrics(per_subject(pred), threshold),
    }


def _metrics(pred: Predictions, threshold: float) -> dict[str, Any]:
    return point_metrics(pred.label, pred.prob, threshold)


def run_crossval(
    folds_dir: str | Path,
    dataset_dir: str | Path,
    out: str | Path,
    overrides: Sequence[str] = (),
    runner: Runner = run_logged,
    python: str = sys.executable,
    threshold: float = DEFAULT_THRESHOLD,
    log: Callable[[str], None] = print,
    external_datalist: str | Path | None = None,
    external_dataset_dir: str | Path | None = None,
    folds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every fold that is not finished (and, with ``external_datalist``, evaluate each fold's model
    on that external test set), then write ``crossval.json`` and ``crossval.csv`` in ``out`` and return the
    summary. ``folds`` restricts the run to those fold numbers (default: every ``fold_<k>.json``)."""
    out = Path(out).resolve()
    dataset_dir = Path(dataset_dir).resolve()
    external = None
    if external_datalist is not None:
        if external_dataset_dir is None:
            raise CrossvalError("--external-datalist needs --external-dataset-dir (the external images' root).")
        external = (Path(external_datalist).resolve(), Path(external_dataset_dir).resolve())
    selected = select_folds(find_folds(folds_dir), folds)
    out.mkdir(parents=True, exist_ok=True)
    for k, fold_json in selected:
        fold_dir = out / f"fold_{k}"
        commands = fold_commands(fold_json, dataset_dir, fold_dir, overrides, python, external)
        metrics_file = fold_dir / "eval" / "metrics.json"
        if metrics_file.is_file():
            log(f"fold {k}: finished earlier ({metrics_file}), skipped")
        else:
            _train_and_evaluate(runner, commands, fold_dir, k, log)
        if external is not None:
            _evaluate_external(runner, commands["evaluating_external"], fold_dir, k, log)
    summary = summarize_folds(out, selected, threshold, external=external)
    summary["folds_dir"] = str(Path(folds_dir).resolve())
    summary["dataset_dir"] = str(dataset_dir)
    summary["overrides"] = list(overrides)
    write_summary(summary, out)
    log(format_summary(summary))
    return summary


def _train_and_evaluate(runner: Runner, commands: dict[str, list[str]], fold_dir: Path, k: int, log: Callable) -> None:
    marker = fold_dir / "training.done"
    if marker.is_file():
        log(f"fold {k}: training finished earlier, evaluating only")
    else:
        log(f"fold {k}: training (log: {fold_dir / 'train.log'})")
        _run(runner, commands["training"], fold_dir / "train.log", f"fold {k} training")
        marker.write_text("training finished\n")
    log(f"fold {k}: evaluating (log: {fold_dir / 'evaluate.log'})")
    _run(runner, commands["evaluating"], fold_dir / "evaluate.log", f"fold {k} evaluation")
    metrics_file = fold_dir / "eval" / "metrics.json"
    if not metrics_file.is_file():
        raise CrossvalError(f"fold {k}: evaluation wrote no {metrics_file}; see {fold_dir / 'evaluate.log'}.")


def _evaluate_external(runner: Runner, command: list[str], fold_dir: Path, k: int, log: Callable) -> None:
    metrics_file = fold_dir / EXTERNAL_DIR / "metrics.json"
    if metrics_file.is_file():
        log(f"fold {k}: external evaluation finished earlier ({metrics_file}), skipped")
        return
    log_path = fold_dir / "evaluate_external.log"
    log(f"fold {k}: evaluating on the external test set (log: {log_path})")
    _run(runner, command, log_path, f"fold {k} external evaluation")
    if not metrics_file.is_file():
        raise CrossvalError(f"fold {k}: external evaluation wrote no {metrics_file}; see {log_path}.")


def _run(runner: Runner, command: Sequence[str], log_path: Path, what: str) -> None:
    status = runner(command, BUNDLE_ROOT, log_path)
    if status != 0:
        text = log_path.read_text() if log_path.is_file() else ""
        lines = [line for line in text.splitlines() if line.strip()]
        if lines and lines[-1].startswith("error: "):
            # A refused input (the bundle's BundleInputError, e.g. external test scans of training subjects): its
            # one line says what and how to fix it, so it is the whole message.
            raise CrossvalError(f"{what} refused: {lines[-1][len('error: ') :]} (log: {log_path})")
        raise CrossvalError(f"{what} failed (exit status {status}); full log: {log_path}\n{text[-3000:]}")


def summarize_folds(
    out: Path,
    folds: Sequence[tuple[int, Path]],
    threshold: float = DEFAULT_THRESHOLD,
    external: tuple[Path, Path] | None = None,
) -> dict:
    """Per-fold metrics and their mean ± sample standard deviation, per scan and per subject; with ``external``
    (datalist, dataset_dir) the same for every fold's external evaluation, and the pooled metrics of both."""
    stats = _fold_statistics(out, folds, "eval", threshold)
    summary: dict[str, Any] = {"k": len(stats["folds"]), "threshold": threshold, "std": "sample (ddof=1)", **stats}
    if external is not None:
        summary["pooled"] = _pooled(concat_predictions(_fold_predictions(stats)), threshold)
        outside = _fold_statistics(out, folds, EXTERNAL_DIR, threshold)
        parts = dict(zip([f"fold {f['fold']}" for f in outside["folds"]], _fold_predictions(outside), strict=True))
        summary["external"] = {
            "datalist": str(external[0]),
            "dataset_dir": str(external[1]),
            **outside,
            "pooled": _pooled(pool_fold_predictions(parts), threshold),
        }
    return summary


def _fold_statistics(out: Path, folds: Sequence[tuple[int, Path]], folder: str, threshold: float) -> dict:
    per_fold = []
    for k, fold_json in folds:
        eval_dir = out / f"fold_{k}" / folder
        per_fold.append(
            {"fold": k, "datalist": str(fold_json), "eval_dir": str(eval_dir), **fold_metrics(eval_dir, threshold)}
        )
    summary: dict[str, Any] = {"folds": per_fold}
    for level in ("scan", "subject"):
        summary[f"{level}_mean_std"] = {
            name: mean_std([fold[level][name] for fold in per_fold]) for name in SUMMARY_METRICS
        }
    return summary


def _fold_predictions(summary: dict[str, Any]) -> list[Predictions]:
    return [read_predictions(Path(fold["eval_dir"]) / "predictions.csv") for fold in summary["folds"]]


def _pooled(pred: Predictions, threshold: float) -> dict[str, Any]:
    """Point metrics of pooled predictions (every fold's test scans, or every fold's external evaluations)."""
    return {
        "n_scans": len(pred),
        "n_subjects": pred.n_subjects,
        "scan": _metrics(pred, threshold),
        "subject": _metrics(per_subject(pred), threshold),
    }


def write_summary(summary: dict[str, Any], out: Path) -> None:
    """``crossval.json`` (everything) and ``crossval.csv`` (one row per fold, then mean and std rows; with an external
    test set also a pooled row, and the same rows of the external evaluations with levels ``external_scan`` and
    ``external_subject``)."""
    _atomic_write(out / "crossval.json", json.dumps(summary, indent=2) + "\n")
    columns = ["fold", "level", "n_scans", "n_subjects", *SUMMARY_METRICS]
    lines = [columns]
    sections = [("", summary)] + ([("external_", summary["external"])] if summary.get("external") else [])
    for prefix, section in sections:
        for level in ("scan", "subject"):
            name = prefix + level
            for fold in section["folds"]:
                lines.append(
                    [fold["fold"], name, fold["n_scans"], fold["n_subjects"]]
                    + [fold[level][m] for m in SUMMARY_METRICS]
                )
            for statistic in ("mean", "std"):
                stats = section[f"{level}_mean_std"]
                lines.append([statistic, name, "", ""] + [stats[m][statistic] for m in SUMMARY_METRICS])
            if "pooled" in section:
                pooled = section["pooled"]
                counts = [pooled["n_scans"], pooled["n_subjects"]]
                lines.append(["pooled", name, *counts] + [pooled[level][m] for m in SUMMARY_METRICS])
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(["" if v is None else v for v in line] for line in lines)
    _atomic_write(out / "crossval.csv", buffer.getvalue())


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def format_summary(summary: dict[str, Any], level: str = "scan") -> str:
    """Per-fold metrics, then lines like ``accuracy: 77.26% ± 2.34`` (mean ± sample std over folds, in percent)."""
    lines = [f"{summary['k']}-fold cross-validation, per {level}:"]
    for fold in summary["folds"]:
        values = ", ".join(
            f"{name} {'n/a' if fold[level][name] is None else f'{100 * fold[level][name]:.2f}%'}"
            for name in SUMMARY_METRICS
        )
        lines.append(f"  fold {fold['fold']} ({fold['n_scans']} scans, {fold['n_subjects']} subjects): {values}")
    lines.append("Mean ± sample standard deviation (ddof=1) over folds:")
    for name, stats in summary[f"{level}_mean_std"].items():
        if stats["mean"] is None:
            lines.append(f"{name}: n/a")
            continue
        spread = f"{100 * stats['std']:.2f}" if stats["std"] is not None else "n/a"
        lines.append(f"{name}: {100 * stats['mean']:.2f}% ± {spread}")
    external = summary.get("external")
    if external:
        lines.append(f"External test set {external['datalist']}, every fold's model, per {level}:")
        for fold in external["folds"]:
            values = ", ".join(f"{name} {_percent(fold[level][name])}" for name in SUMMARY_METRICS)
            lines.append(f"  fold {fold['fold']} ({fold['n_scans']} scans, {fold['n_subjects']} subjects): {values}")
        lines.append("Pooled predictions, internal (test folds) | external (all folds' models):")
        for name in SUMMARY_METRICS:
            inside, outside = summary["pooled"][level][name], external["pooled"][level][name]
            lines.append(f"{name}: {_percent(inside)} | {_percent(outside)}")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"
