"""The volumetric baseline (``python -m analysis volumetric``): hippocampal and lateral-ventricle volumes as fractions
of the brain volume (:mod:`analysis.volumetric_features`), then a logistic regression, in the spirit of the HAVAs
score of Coupé et al. (2022): hippocampal atrophy and ventricular enlargement, nothing else.

Per fold datalist: the regression (standardised features, class-balanced weights, seeded) is fitted on the
``training`` and ``validation`` partitions (no hyperparameter is tuned, so validation is training data here) and
applied to ``test``. Outputs in the bundle's evaluation format, so every analysis reads them as it reads a network's:

    <out>/fold_<k>/eval/predictions.csv    image_id, subject, label, prob_CN, prob_AD, prediction
    <out>/fold_<k>/eval/metrics.json       scripts.evaluation's binary metrics (written last: marks the fold done)
    <out>/fold_<k>/eval/features.csv       every scan of the fold: partition, volumes (ml), features
    <out>/fold_<k>/eval/volumetric_model.json   coefficients (per standard deviation), intercept, scaling
    <out>/crossval.json, crossval.csv      per fold, mean ± sd and pooled, as ``analysis crossval`` writes them
    <out>/scans/                           each scan's measurement (JSON, registered regions), shared by the folds

Resuming: a fold whose ``metrics.json`` exists is skipped; a scan measured before (same bytes, same method) is read
from ``scans/``, so a scan in several folds is registered once. ``analysis report --crossval-dir <out>`` reports the
baseline as it reports a network's cross-validation.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from analysis.volumetric_features import (
    FEATURE_TITLES,
    FEATURES,
    REGION_SOURCES,
    Scan,
    _atomic_write,
    cached_features,
    default_cache_dir,
    feature_row,
    method_name,
)

DEFAULT_THRESHOLD = 0.5
CLASSES = ("CN", "AD")


def read_scans(datalist: Path, dataset_dir: Path) -> list[Scan]:
    """Every entry of the datalist's training, validation and test partitions, with its brain mask when the chain
    left one (``masks/<name>`` beside ``images/``, or the manifest's ``mask`` column)."""
    try:
        data = json.loads(Path(datalist).read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: cannot read the datalist {datalist} ({error}); pass a datalist of 'split'") from None
    classes = tuple(data.get("classes") or CLASSES)
    if classes != CLASSES:
        raise SystemExit(
            f"error: {datalist} has the classes {','.join(classes)}; the volumetric baseline is binary (CN,AD): "
            "split with --classes CN,AD"
        )
    masks = _manifest_masks(Path(dataset_dir))
    scans = []
    for partition in ("training", "validation", "test"):
        for index, entry in enumerate(data.get(partition) or []):
            try:
                image = Path(entry["image"])
                label = int(entry["label"])
            except (KeyError, TypeError, ValueError):
                raise SystemExit(f"error: {datalist}: {partition}[{index}] needs 'image' and a 0/1 'label'") from None
            image = image if image.is_absolute() else Path(dataset_dir) / image
            if not image.is_file():
                raise SystemExit(
                    f"error: {datalist}: {partition}[{index}]: {image} does not exist; check --dataset-dir"
                )
            if label not in (0, 1):
                raise SystemExit(f"error: {datalist}: {partition}[{index}] has label {label}; CN is 0, AD is 1")
            mask = next(
                (p for p in (masks.get(image.name), image.parent.parent / "masks" / image.name) if p and p.is_file()),
                None,
            )
            subject = str(entry.get("subject") or image.name)
            scans.append(Scan(image, mask, subject, str(entry.get("image_id") or image.name), label, partition))
    return scans


def _manifest_masks(dataset_dir: Path) -> dict[str, Path]:
    path = dataset_dir / "manifest.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {Path(r["output"]).name: Path(r["mask"]) for r in rows if r.get("output") and r.get("mask")}


def fit_logistic(features: np.ndarray, labels: np.ndarray, seed: int = 0):
    """Standardised features, then an L2 logistic regression (C = 1, class-balanced weights as the network's
    class-weighted loss, lbfgs; seeded, though lbfgs draws nothing)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", random_state=seed))
    return model.fit(features, labels)


def model_summary(model, regions: str, method: str, n_train: int) -> dict[str, Any]:
    """What ``volumetric_model.json`` holds: coefficients per standard deviation of each feature (positive: a larger
    value means AD is more likely), intercept, the training scans' means and standard deviations."""
    scaler, regression = model[0], model[-1]
    return {
        "model": "logistic regression on standardised features (scikit-learn)",
        "regions": regions,
        "method": method,
        "features": {name: FEATURE_TITLES[name] for name in FEATURES},
        "coefficients": {name: float(c) for name, c in zip(FEATURES, regression.coef_[0], strict=True)},
        "intercept": float(regression.intercept_[0]),
        "feature_mean": {name: float(v) for name, v in zip(FEATURES, scaler.mean_, strict=True)},
        "feature_std": {name: float(v) for name, v in zip(FEATURES, scaler.scale_, strict=True)},
        "n_coefficients": len(FEATURES) + 1,
        "n_training_scans": int(n_train),
    }


def run_volumetric_fold(
    datalist: Path,
    dataset_dir: Path,
    out_dir: Path,
    regions: str = "template",
    truth_dir: Path | None = None,
    seed: int = 0,
    *,
    syn: bool = False,
    cache_dir: Path | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    progress: bool = True,
) -> Path:
    """Fit on the datalist's training (+validation) partition, predict its test partition; write ``predictions.csv``,
    ``metrics.json`` (last), ``features.csv`` and ``volumetric_model.json`` in ``out_dir``; return ``out_dir``.

    A ``metrics.json`` already in ``out_dir`` means the fold is done: nothing is read or fitted. Scans are measured
    once per ``cache_dir`` (default :func:`analysis.volumetric_features.default_cache_dir`)."""
    from scripts.evaluation import PredictionWriter, prediction_columns

    out_dir = Path(out_dir)
    if (out_dir / "metrics.json").is_file():
        return out_dir
    method = method_name(regions, syn, seed)
    if regions == "truth" and truth_dir is None:
        raise SystemExit("error: --regions truth needs --truth-dir (the synthetic cohort's truth/ folder)")
    scans = read_scans(Path(datalist), Path(dataset_dir))
    train = [s for s in scans if s.partition != "test"]
    test = [s for s in scans if s.partition == "test"]
    if not test:
        raise SystemExit(f"error: {datalist} has no test scans; the baseline predicts the 'test' partition")
    if len({s.label for s in train}) < 2:
        raise SystemExit(f"error: {datalist}: training and validation hold one class only; both CN and AD are needed")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(out_dir)
    records = [
        cached_features(scan, cache, regions, truth_dir, syn, seed)
        for scan in tqdm(scans, desc=f"volumetric features ({method})", unit="scan", disable=not progress)
    ]
    x = np.array([[r["features"][name] for name in FEATURES] for r in records], dtype=float)
    is_train = np.array([s.partition != "test" for s in scans])
    model = fit_logistic(x[is_train], np.array([s.label for s in train]), seed)
    prob_ad = model.predict_proba(x[~is_train])[:, list(model.classes_).index(1)]

    writer = PredictionWriter(out_dir, threshold=threshold, classes=list(CLASSES))
    writer.rows = [
        {"image_id": s.image_id, "subject": s.subject, "label": s.label, "prob_CN": 1.0 - float(p),
         "prob_AD": float(p), "prediction": int(p >= threshold)}
        for s, p in zip(test, prob_ad, strict=True)
    ]  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [feature_row(s, r) for s, r in zip(scans, records, strict=True)]
    _atomic_write(out_dir / "features.csv", _csv(rows, list(dict.fromkeys(k for row in rows for k in row))))
    summary = model_summary(model, regions, method, len(train))
    _atomic_write(out_dir / "volumetric_model.json", json.dumps(summary, indent=2) + "\n")
    _atomic_write(out_dir / "predictions.csv", _csv(writer.rows, list(prediction_columns(CLASSES))))
    _atomic_write(out_dir / "metrics.json", json.dumps(writer.metrics(), indent=2) + "\n")
    return out_dir


def _csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV text; probabilities with 6 decimals as the bundle's PredictionWriter writes them."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6f}" if k.startswith("prob_") else v for k, v in row.items()})
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Hippocampal and lateral-ventricle volumes over brain volume per scan, then a logistic regression fitted on "
        "each fold's training and validation scans and applied to its test scans. Writes O/fold_<k>/eval/ "
        "(predictions.csv, metrics.json as the bundle's evaluation, features.csv, volumetric_model.json), "
        "O/crossval.json and .csv, and O/scans/ (each scan measured once); finished folds are skipped."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--folds-dir", type=Path, help="folder with fold_<k>.json datalists (each fold into O/fold_<k>/eval)"
    )
    source.add_argument("--datalist", type=Path, help="a single datalist (results directly in --out)")
    parser.add_argument("--dataset-dir", type=Path, required=True, help="the images' root (the bundle's dataset_dir)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--regions",
        choices=REGION_SOURCES,
        default="template",
        help="template: MNI152 regions registered onto each scan; truth: the synthetic cohort's truth",
    )
    parser.add_argument("--truth-dir", type=Path, help="truth/ of 'preprocessing synth' (with --regions truth)")
    parser.add_argument(
        "--syn", action="store_true", help="SyN warp after the affine (hippocampi follow atrophy; slower)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of registration and regression")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="AD probability threshold")


def main(args: argparse.Namespace) -> int:
    from analysis.crossval import find_folds, format_summary, summarize_folds, write_summary
    from analysis.metrics import concat_predictions, per_subject, point_metrics, read_predictions

    options = dict(regions=args.regions, truth_dir=args.truth_dir, seed=args.seed, syn=args.syn)
    if args.datalist is not None:
        out = run_volumetric_fold(args.datalist, args.dataset_dir, args.out, threshold=args.threshold, **options)
        metrics = json.loads((out / "metrics.json").read_text())
        print(f"Test: {_line(metrics)}\nWritten to {out}")
        return 0
    try:
        folds = find_folds(args.folds_dir)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise SystemExit(f"error: {error}") from None
    cache = Path(args.out) / "scans"
    for k, fold_json in folds:
        eval_dir = Path(args.out) / f"fold_{k}" / "eval"
        done = (eval_dir / "metrics.json").is_file()
        run_volumetric_fold(fold_json, args.dataset_dir, eval_dir, cache_dir=cache, threshold=args.threshold, **options)
        metrics = json.loads((eval_dir / "metrics.json").read_text())
        print(f"fold {k}{' (finished earlier)' if done else ''}: {_line(metrics)}")
    summary = summarize_folds(Path(args.out), folds, args.threshold)
    pooled = concat_predictions(read_predictions(Path(f["eval_dir"]) / "predictions.csv") for f in summary["folds"])
    summary["pooled"] = {
        "n_scans": len(pooled),
        "n_subjects": pooled.n_subjects,
        "scan": point_metrics(pooled.label, pooled.prob, args.threshold),
        "subject": point_metrics(per_subject(pooled).label, per_subject(pooled).prob, args.threshold),
    }
    summary.update(model="volumetric", method=method_name(args.regions, args.syn, args.seed))
    write_summary(summary, Path(args.out))
    print(format_summary(summary))
    scan = summary["pooled"]["scan"]
    print(
        f"Pooled out-of-fold predictions ({len(pooled)} scans, {pooled.n_subjects} subjects): "
        + ", ".join(f"{name} {_value(scan.get(name))}" for name in ("roc_auc", "accuracy", "balanced_accuracy"))
    )
    print(f"Written {Path(args.out) / 'crossval.json'} and {Path(args.out) / 'crossval.csv'}")
    return 0


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _line(metrics: dict) -> str:
    return (
        f"{metrics['n']} scans ({metrics['n_subjects']} subjects): AUC {_value(metrics['roc_auc'])}, accuracy "
        f"{_value(metrics['accuracy'])}, balanced accuracy {_value(metrics['balanced_accuracy'])}"
    )
