"""Test predictions of the AD vs CN classifier (per scan, or per subject with :func:`per_subject`) and the defaults
shared by the metrics: threshold, bootstrap resamples and seed, calibration bins, confidence level.

Positive class: AD (label 1). A scan is predicted AD when ``prob_AD >= threshold`` (0.5 by default, as in the
bundle's evaluation). Per subject, a subject's probability is the mean of its scans' probabilities.

A predictions.csv with more than two classes (columns ``prob_<class>`` in class order, ``label`` the class index) is
read here as the binary contrast AD against all other classes ("AD vs CN+MCI"), so that the bootstrap, the Bayesian
analysis, DeLong and calibration work unchanged on it; :mod:`analysis.multiclass` reads its k-class view.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
DEFAULT_BINS = 10
DEFAULT_THRESHOLD = 0.5
CONFIDENCE = 0.95
DEFAULT_CLASSES = ("CN", "AD")
POSITIVE_CLASS = "AD"


@dataclass(frozen=True)
class Predictions:
    """Per-scan (or per-subject) test predictions: ids, subject, true label (1 = AD) and AD probability.

    ``classes`` are the classes of the file they came from; ``label`` is 1 for AD and 0 for every other class.
    """

    image_id: np.ndarray
    subject: np.ndarray
    label: np.ndarray
    prob: np.ndarray
    level: str = "scan"
    classes: tuple[str, ...] = DEFAULT_CLASSES

    def __post_init__(self) -> None:
        n = len(self.label)
        if not (len(self.image_id) == len(self.subject) == len(self.prob) == n) or n == 0:
            raise ValueError("Predictions need the same, non-zero number of ids, subjects, labels and probabilities.")
        if not np.isin(self.label, (0, 1)).all():
            raise ValueError(f"Labels must be 0 (CN) or 1 (AD), got {sorted(set(self.label.tolist()))}.")
        if not (np.isfinite(self.prob).all() and (self.prob >= 0).all() and (self.prob <= 1).all()):
            raise ValueError("prob_AD must be finite and within [0, 1].")

    def __len__(self) -> int:
        return len(self.label)

    @property
    def n_subjects(self) -> int:
        return len(np.unique(self.subject))

    def predicted(self, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        return (self.prob >= threshold).astype(int)

    @property
    def contrast(self) -> str:
        """The binary contrast these labels encode, e.g. ``AD vs CN`` or ``AD vs CN+MCI``."""
        return contrast_name(self.classes)


def contrast_name(classes: Sequence[str]) -> str:
    """``AD vs CN`` for two classes, ``AD vs CN+MCI`` for three: AD against every other class."""
    return f"{POSITIVE_CLASS} vs " + "+".join(c for c in classes if c != POSITIVE_CLASS)


def make_predictions(
    image_id: Sequence[Any],
    subject: Sequence[Any],
    label: Sequence[int],
    prob: Sequence[float],
    level: str = "scan",
    classes: Sequence[str] = DEFAULT_CLASSES,
) -> Predictions:
    """Build :class:`Predictions` from plain sequences."""
    return Predictions(
        image_id=np.asarray([str(x) for x in image_id]),
        subject=np.asarray([str(x) for x in subject]),
        label=np.asarray(label, dtype=int),
        prob=np.asarray(prob, dtype=float),
        level=level,
        classes=tuple(classes),
    )


def read_prediction_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """The classes of a predictions.csv (from its ``prob_<class>`` columns, in order) and its rows.

    A file from before the class list (only ``prob_AD``) has the classes CN, AD. Every label must be a class index.
    """
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    classes = [c[len("prob_") :] for c in header if c.startswith("prob_")]
    classes = list(DEFAULT_CLASSES) if classes == [POSITIVE_CLASS] else classes
    missing = {"image_id", "subject", "label"} - set(header)
    if not rows or missing or len(classes) < 2:
        raise ValueError(
            f"{path} has no prediction rows or lacks columns ({sorted(missing) or 'prob_<class> per class'}); "
            "write it with the bundle's evaluation (columns image_id, subject, label, prob_<class>...)."
        )
    labels = {r["label"].strip() for r in rows}
    if not labels <= {str(i) for i in range(len(classes))}:
        raise ValueError(f"{path}: labels {sorted(labels)} are not class indices of {classes} (0..{len(classes) - 1}).")
    return classes, rows


def read_predictions(path: str | Path) -> Predictions:
    """Read the bundle's ``predictions.csv`` as AD against the other classes (label 1 = AD, prob = prob_AD).

    Columns image_id, subject, label, prob_<class> for each class[, prediction]; binary files give AD vs CN exactly
    as before, k-class files AD vs the rest (see :attr:`Predictions.contrast`).
    """
    classes, rows = read_prediction_rows(path)
    if POSITIVE_CLASS not in classes:
        raise ValueError(f"{path} has no prob_{POSITIVE_CLASS} column (classes {classes}); the analysis needs AD.")
    ad = str(classes.index(POSITIVE_CLASS))
    return make_predictions(
        [r["image_id"] for r in rows],
        [r["subject"] for r in rows],
        [int(r["label"].strip() == ad) for r in rows],
        [float(r[f"prob_{POSITIVE_CLASS}"]) for r in rows],
        classes=classes,
    )


def concat_predictions(parts: Iterable[Predictions]) -> Predictions:
    """Pool predictions (e.g. the test folds of a cross-validation, each scan tested once)."""
    parts = list(parts)
    if len({p.classes for p in parts}) > 1:
        raise ValueError(
            f"Predictions of different class lists cannot be pooled: {sorted({p.classes for p in parts})}."
        )
    pooled = make_predictions(
        np.concatenate([p.image_id for p in parts]),
        np.concatenate([p.subject for p in parts]),
        np.concatenate([p.label for p in parts]),
        np.concatenate([p.prob for p in parts]),
        level=parts[0].level,
        classes=parts[0].classes,
    )
    if len(np.unique(pooled.image_id)) != len(pooled):
        raise ValueError("A scan appears in more than one set of predictions.")
    return pooled


def per_subject(pred: Predictions) -> Predictions:
    """One row per subject: its label and the mean AD probability of its scans (subjects in sorted order)."""
    subjects, inverse = np.unique(pred.subject, return_inverse=True)
    counts = np.bincount(inverse)
    prob = np.bincount(inverse, weights=pred.prob) / counts
    label_sum = np.bincount(inverse, weights=pred.label)
    mixed = subjects[(label_sum != 0) & (label_sum != counts)]
    if len(mixed):
        raise ValueError(f"Subjects with both AD and CN scans cannot be aggregated: {', '.join(mixed[:10])}.")
    return Predictions(subjects, subjects, (label_sum > 0).astype(int), prob, level="subject", classes=pred.classes)
