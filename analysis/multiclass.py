"""k-class metrics (e.g. CN / MCI / AD) with 95% confidence intervals by bootstrap over subjects: accuracy, balanced
accuracy, per-class sensitivity and specificity, one-vs-rest and macro ROC-AUC, and the k x k confusion matrix.

The k-class view of a predictions.csv keeps the class index as label and every ``prob_<class>`` column. A scan is
predicted the class of highest probability; with two classes it is predicted AD when ``prob_AD >= threshold``, so a
binary file gives exactly the numbers of :mod:`analysis.bootstrap`. Per subject, a subject's probabilities are the
means over its scans.

Definitions (each class c against all others): sensitivity = share of class-c scans predicted c; specificity = share
of other scans not predicted c; one-vs-rest AUC = ROC-AUC of ``prob_c`` for class c against the rest; macro AUC = the
unweighted mean of the one-vs-rest AUCs (scikit-learn's ``roc_auc_score(multi_class="ovr", average="macro")``);
balanced accuracy = the mean of the per-class sensitivities. A resample that lacks a class leaves the metrics that
need it undefined; such resamples are skipped and counted, as for the binary metrics.

The bootstrap reuses :func:`analysis.bootstrap.subject_bootstrap_weights` (resample subjects, weight scans) and
:func:`analysis.bootstrap.weighted_auc` per one-vs-rest contrast, so all resamples are computed at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.bootstrap import percentile_interval, subject_bootstrap_weights, weighted_auc
from analysis.predictions import (
    CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    DEFAULT_THRESHOLD,
    POSITIVE_CLASS,
    read_prediction_rows,
)

SUMMARY = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "macro_auc": "Macro ROC-AUC"}
PER_CLASS = {"sensitivity": "Sensitivity", "specificity": "Specificity", "ovr_auc": "One-vs-rest ROC-AUC"}


@dataclass(frozen=True)
class ClassPredictions:
    """Per-scan (or per-subject) k-class predictions: ids, subject, class index and one probability per class."""

    image_id: np.ndarray
    subject: np.ndarray
    label: np.ndarray
    probs: np.ndarray  # (n, k), columns in the order of ``classes``
    classes: tuple[str, ...]
    level: str = "scan"

    def __post_init__(self) -> None:
        n, k = len(self.label), len(self.classes)
        if n == 0 or not (len(self.image_id) == len(self.subject) == n) or self.probs.shape != (n, k):
            raise ValueError(f"k-class predictions need n ids, subjects, labels and an (n, {k}) probability array.")
        if not np.isin(self.label, np.arange(k)).all():
            raise ValueError(f"Labels must be class indices 0..{k - 1} of {list(self.classes)}.")
        if not (np.isfinite(self.probs).all() and (self.probs >= 0).all() and (self.probs <= 1).all()):
            raise ValueError("Class probabilities must be finite and within [0, 1].")

    def __len__(self) -> int:
        return len(self.label)

    @property
    def k(self) -> int:
        return len(self.classes)

    @property
    def n_subjects(self) -> int:
        return len(np.unique(self.subject))

    def predicted(self, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        """Predicted class index: AD at ``prob_AD >= threshold`` for two classes (as the bundle), else the argmax."""
        if self.k == 2 and POSITIVE_CLASS in self.classes:
            ad = self.classes.index(POSITIVE_CLASS)
            return np.where(self.probs[:, ad] >= threshold, ad, 1 - ad)
        return np.argmax(self.probs, axis=1)


def read_class_predictions(path: str | Path) -> ClassPredictions:
    """The k-class view of a predictions.csv (a file with only prob_AD reads as CN/AD, prob_CN = 1 - prob_AD)."""
    classes, rows = read_prediction_rows(path)
    if all(f"prob_{c}" in rows[0] for c in classes):
        probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows], dtype=float)
    else:  # a file from before the class list: prob_AD only
        ad = np.array([float(r[f"prob_{POSITIVE_CLASS}"]) for r in rows], dtype=float)
        probs = np.column_stack([1 - ad, ad])
    return ClassPredictions(
        image_id=np.asarray([r["image_id"] for r in rows]),
        subject=np.asarray([r["subject"] for r in rows]),
        label=np.asarray([int(r["label"]) for r in rows], dtype=int),
        probs=probs,
        classes=tuple(classes),
    )


def concat_class_predictions(parts: Sequence[ClassPredictions]) -> ClassPredictions:
    """Pool k-class predictions of the same classes (e.g. the test folds of a cross-validation)."""
    if len({p.classes for p in parts}) != 1:
        raise ValueError(f"Cannot pool predictions of different class lists: {sorted({p.classes for p in parts})}.")
    pooled = ClassPredictions(
        np.concatenate([p.image_id for p in parts]),
        np.concatenate([p.subject for p in parts]),
        np.concatenate([p.label for p in parts]),
        np.concatenate([p.probs for p in parts]),
        parts[0].classes,
        parts[0].level,
    )
    if len(np.unique(pooled.image_id)) != len(pooled):
        raise ValueError("A scan appears in more than one set of predictions.")
    return pooled


def class_per_subject(pred: ClassPredictions) -> ClassPredictions:
    """One row per subject (sorted): its class and the mean class probabilities of its scans."""
    subjects, inverse = np.unique(pred.subject, return_inverse=True)
    counts = np.bincount(inverse)
    probs = np.stack([np.bincount(inverse, weights=pred.probs[:, c]) for c in range(pred.k)], axis=1) / counts[:, None]
    first = np.full(len(subjects), -1)
    first[inverse[::-1]] = pred.label[::-1]  # any one label per subject; checked against all below
    mixed = subjects[np.bincount(inverse, weights=(pred.label != first[inverse])) > 0]
    if len(mixed):
        raise ValueError(f"Subjects with scans of different classes cannot be aggregated: {', '.join(mixed[:10])}.")
    return ClassPredictions(subjects, subjects, first, probs, pred.classes, level="subject")


def weighted_class_metrics(
    weights: np.ndarray, label: np.ndarray, predicted: np.ndarray, probs: np.ndarray
) -> dict[str, np.ndarray]:
    """Every k-class metric for each row of ``weights`` at once (NaN where undefined): confusion (R, k, k), per-class
    sensitivity, specificity and one-vs-rest AUC (R, k), accuracy, balanced accuracy and macro AUC (R,). A row of
    ones gives the plain metrics of the data."""
    w = np.atleast_2d(weights).astype(float)
    k = probs.shape[1]
    cell = np.eye(k * k)[label * k + predicted]  # (n, k*k): one-hot of (true, predicted)
    confusion = (w @ cell).reshape(-1, k, k)
    total = confusion.sum(axis=(1, 2))
    true_n = confusion.sum(axis=2)
    called_n = confusion.sum(axis=1)
    hit = np.diagonal(confusion, axis1=1, axis2=2)
    ovr = np.stack([weighted_auc(w, (label == c).astype(int), probs[:, c]) for c in range(k)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = hit / true_n
        specificity = (total[:, None] - true_n - called_n + hit) / (total[:, None] - true_n)
        return {
            "confusion": confusion,
            "sensitivity": sensitivity,
            "specificity": specificity,
            "ovr_auc": ovr,
            "accuracy": hit.sum(axis=1) / total,
            "balanced_accuracy": sensitivity.mean(axis=1),  # NaN when a class is absent: undefined, skipped
            "macro_auc": ovr.mean(axis=1),
        }


def _entry(value: float, boot: np.ndarray, confidence: float) -> dict[str, Any]:
    low, high, used = percentile_interval(boot, confidence)
    defined = value is not None and np.isfinite(value)
    return {"value": float(value) if defined else None, "ci_low": low, "ci_high": high, "n_resamples_used": used}


def evaluate_class_level(
    pred: ClassPredictions,
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Point estimates and subject-bootstrap percentile intervals of the k-class metrics for one level."""
    predicted = pred.predicted(threshold)
    point = weighted_class_metrics(np.ones((1, len(pred))), pred.label, predicted, pred.probs)
    weights = subject_bootstrap_weights(pred.subject, n_resamples, seed)
    boot = weighted_class_metrics(weights, pred.label, predicted, pred.probs)
    result: dict[str, Any] = {
        "level": pred.level,
        "n": len(pred),
        "n_subjects": pred.n_subjects,
        "n_per_class": {c: int((pred.label == i).sum()) for i, c in enumerate(pred.classes)},
    }
    for name in SUMMARY:
        result[name] = _entry(point[name][0], boot[name], confidence)
    result["per_class"] = {
        c: {"n": result["n_per_class"][c], **{m: _entry(point[m][0, i], boot[m][:, i], confidence) for m in PER_CLASS}}
        for i, c in enumerate(pred.classes)
    }
    cells = []
    for i in range(pred.k):
        row = []
        for j in range(pred.k):
            low, high, _ = percentile_interval(boot["confusion"][:, i, j], confidence)
            row.append({"value": int(point["confusion"][0, i, j]), "ci_low": low, "ci_high": high})
        cells.append(row)
    result["confusion_matrix"] = {"labels": list(pred.classes), "rows_true_cols_pred": cells}
    return result


def evaluate_multiclass(
    pred: ClassPredictions,
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """k-class metrics with intervals per scan and per subject (the same subject resamples at both levels)."""
    rule = "argmax of the class probabilities" if pred.k > 2 else f"AD when prob_AD >= {threshold}"
    return {
        "classes": list(pred.classes),
        "settings": {
            "prediction": rule,
            "n_resamples": n_resamples,
            "seed": seed,
            "confidence": confidence,
            "interval": "percentile bootstrap over subjects (a subject's scans are resampled together)",
        },
        "scan": evaluate_class_level(pred, threshold, n_resamples, seed, confidence),
        "subject": evaluate_class_level(class_per_subject(pred), threshold, n_resamples, seed, confidence),
    }


def confusion_counts(entry: dict[str, Any]) -> list[list[int]]:
    """The plain k x k counts (rows true, columns predicted) of a level's ``confusion_matrix``."""
    return [[cell["value"] for cell in row] for row in entry["confusion_matrix"]["rows_true_cols_pred"]]


def format_multiclass(result: dict[str, Any], fmt: Any) -> list[str]:
    """Printable lines of :func:`evaluate_multiclass` (``fmt`` formats a value/interval entry)."""
    lines = []
    for level in ("scan", "subject"):
        entry = result[level]
        counts = ", ".join(f"{c} {n}" for c, n in entry["n_per_class"].items())
        lines.append(f"{len(result['classes'])} classes, per {level} ({entry['n']} {level}s: {counts}; 95% CI):")
        for name, label in SUMMARY.items():
            lines.append(f"  {label}: {fmt(entry[name])}")
        for c, values in entry["per_class"].items():
            lines.append(f"  {c}: " + ", ".join(f"{label.lower()} {fmt(values[m])}" for m, label in PER_CLASS.items()))
        lines.append(f"  confusion matrix (rows true, columns predicted; {' / '.join(result['classes'])}):")
        for c, row in zip(result["classes"], confusion_counts(entry), strict=True):
            lines.append(f"    {c:>5}: " + "  ".join(f"{v:>4}" for v in row))
    return lines


def class_counts(labels: Sequence[int], subjects: Sequence[str], classes: Sequence[str]) -> dict[str, int]:
    """Scans and subjects in total and per class (keys ``<class>_scans``, ``<class>_subjects``; AD first, as the
    binary report lists them)."""
    labels = [int(y) for y in labels]
    subjects = [str(s) for s in subjects]
    counts = {"scans": len(labels), "subjects": len(set(subjects))}
    order = list(reversed(list(classes)))
    for c in order:
        counts[f"{c}_scans"] = sum(1 for y in labels if y == list(classes).index(c))
    for c in order:
        counts[f"{c}_subjects"] = len({s for y, s in zip(labels, subjects, strict=True) if y == list(classes).index(c)})
    return counts
