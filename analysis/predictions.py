"""Test predictions of the AD vs CN classifier (per scan, or per subject with :func:`per_subject`) and the defaults
shared by the metrics: threshold, bootstrap resamples and seed, calibration bins, confidence level.

Positive class: AD (label 1). A scan is predicted AD when ``prob_AD >= threshold`` (0.5 by default, as in the
bundle's evaluation). Per subject, a subject's probability is the mean of its scans' probabilities.
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


@dataclass(frozen=True)
class Predictions:
    """Per-scan (or per-subject) test predictions: ids, subject, true label (1 = AD) and AD probability."""

    image_id: np.ndarray
    subject: np.ndarray
    label: np.ndarray
    prob: np.ndarray
    level: str = "scan"

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


def make_predictions(
    image_id: Sequence[Any], subject: Sequence[Any], label: Sequence[int], prob: Sequence[float], level: str = "scan"
) -> Predictions:
    """Build :class:`Predictions` from plain sequences."""
    return Predictions(
        image_id=np.asarray([str(x) for x in image_id]),
        subject=np.asarray([str(x) for x in subject]),
        label=np.asarray(label, dtype=int),
        prob=np.asarray(prob, dtype=float),
        level=level,
    )


def read_predictions(path: str | Path) -> Predictions:
    """Read the bundle's ``predictions.csv`` (columns image_id, subject, label, prob_AD[, prediction])."""
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"image_id", "subject", "label", "prob_AD"} - set(rows[0] if rows else {})
    if not rows or missing:
        raise ValueError(f"{path} has no prediction rows or lacks columns {sorted(missing)}.")
    return make_predictions(
        [r["image_id"] for r in rows],
        [r["subject"] for r in rows],
        [int(r["label"]) for r in rows],
        [float(r["prob_AD"]) for r in rows],
    )


def concat_predictions(parts: Iterable[Predictions]) -> Predictions:
    """Pool predictions (e.g. the test folds of a cross-validation, each scan tested once)."""
    parts = list(parts)
    pooled = make_predictions(
        np.concatenate([p.image_id for p in parts]),
        np.concatenate([p.subject for p in parts]),
        np.concatenate([p.label for p in parts]),
        np.concatenate([p.prob for p in parts]),
        level=parts[0].level,
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
    return Predictions(subjects, subjects, (label_sum > 0).astype(int), prob, level="subject")
