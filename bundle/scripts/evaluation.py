"""Test-set evaluation: per-scan predictions and classification metrics written by the evaluator."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from sklearn import metrics as skm

from .data import BundleInputError

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("image_id", "subject", "label", "prob_AD", "prediction")


def classification_metrics(labels: Sequence[int], prob_ad: Sequence[float], threshold: float = 0.5) -> dict:
    """Binary metrics (AD = positive class) from labels and AD probabilities, computed with scikit-learn.

    ROC-AUC is None when only one class is present (it is undefined then).
    """
    y = np.asarray(labels, dtype=int)
    p = np.asarray(prob_ad, dtype=float)
    if y.shape != p.shape or y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels and prob_ad must be non-empty 1D sequences of equal length, got {y.shape}, {p.shape}")
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    both_classes = len(np.unique(y)) == 2
    return {
        "n": int(y.size),
        "n_AD": int(y.sum()),
        "n_CN": int((1 - y).sum()),
        "threshold": threshold,
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)) if both_classes else None,
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "sensitivity": float(skm.recall_score(y, pred, zero_division=0)),
        "specificity": float(skm.recall_score(y, pred, pos_label=0, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y, p)) if both_classes else None,
        "confusion_matrix": {"labels": ["CN", "AD"], "rows_true_cols_pred": [[int(tn), int(fp)], [int(fn), int(tp)]]},
    }


class PredictionWriter:
    """Collect per-scan AD probabilities from an evaluator and write ``predictions.csv`` and ``metrics.json``.

    MONAI's ClassificationSaver writes only file names and raw outputs; the analysis needs the subject and scan ids
    next to label and probability (subject-level bootstrap, per-subject metrics), hence this handler.

    Args:
        output_dir: folder for ``predictions.csv`` and ``metrics.json``.
        threshold: AD probability at or above which a scan is predicted AD.
    """

    def __init__(self, output_dir: str | Path, threshold: float = 0.5) -> None:
        self.output_dir = Path(output_dir)
        self.threshold = threshold
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        output, batch = engine.state.output, engine.state.batch
        logits = output["pred"] if isinstance(output, Mapping) else torch.stack([o["pred"] for o in output])
        prob_ad = torch.softmax(logits.detach().float(), dim=1)[:, 1].cpu().numpy()
        labels = batch["label"]
        for i, p in enumerate(prob_ad):
            self.rows.append(
                {
                    "image_id": str(batch["image_id"][i]),
                    "subject": str(batch["subject"][i]),
                    "label": int(labels[i]),
                    "prob_AD": float(p),
                    "prediction": int(p >= self.threshold),
                }
            )

    def _write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.output_dir / "predictions.csv", _csv_text(self.rows))
        result = classification_metrics([r["label"] for r in self.rows], [r["prob_AD"] for r in self.rows])
        result["n_subjects"] = len({r["subject"] for r in self.rows})
        _atomic_write(self.output_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
        logger.info(
            f"Test metrics over {result['n']} scans ({result['n_subjects']} subjects): accuracy "
            f"{result['accuracy']:.4f}, balanced accuracy {result['balanced_accuracy']}, ROC-AUC {result['roc_auc']}. "
            f"Written to {self.output_dir / 'metrics.json'} and {self.output_dir / 'predictions.csv'}"
        )


def _csv_text(rows: list[dict]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PREDICTION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "prob_AD": f"{row['prob_AD']:.6f}"})
    return buffer.getvalue()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def require_trained_model(path: str | Path) -> None:
    """Fail early, with the fix, when the model to evaluate does not exist (one line: a BundleInputError)."""
    if not Path(path).is_file():
        raise BundleInputError(
            f"No trained model at {path}. Train first (python -m monai.bundle run training --config_file "
            f"configs/train.json ...), or pass --ckpt_dir <folder holding model.pt> or --model_file <path>."
        )
