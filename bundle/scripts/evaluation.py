"""Test-set evaluation: per-scan predictions and classification metrics written by the evaluator.

``predictions.csv`` holds ``image_id, subject, label, prob_<class>`` for every class in order, ``prediction``; with two
classes the prediction is ``prob_<second class> >= threshold`` (0/1), with more the index of the most probable class.
``metrics.json`` holds :func:`classification_metrics` for two classes and :func:`multiclass_metrics` for more, each
with ``classes`` and ``n_subjects``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from sklearn import metrics as skm

from .data import DEFAULT_CLASSES, BundleInputError, class_list_problem

logger = logging.getLogger(__name__)


def prediction_columns(classes: Sequence[str] = DEFAULT_CLASSES) -> tuple[str, ...]:
    """``image_id, subject, label, prob_<class>... , prediction``: the header of predictions.csv."""
    return ("image_id", "subject", "label", *(f"prob_{name}" for name in classes), "prediction")


PREDICTION_COLUMNS = prediction_columns()


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


def multiclass_metrics(labels: Sequence[int], probs: Sequence[Sequence[float]], classes: Sequence[str]) -> dict:
    """Metrics of a k-class classifier (k > 2) from labels and per-class probabilities (rows in class order).

    The prediction is the most probable class. Per class: sensitivity (recall of the class) and specificity (recall
    of the other classes) from the k x k confusion matrix, and the one-vs-rest ROC-AUC; ``macro_auc`` is
    scikit-learn's one-vs-rest macro average. A value that is undefined on this test set (a class absent, so no
    positives or no negatives) is None rather than a number that would look measured. With an ``AD`` class,
    ``ad_vs_rest`` holds :func:`classification_metrics` of AD against every other class, the contrast the binary
    analyses (bootstrap, Bayes, DeLong) use.
    """
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=float)
    k = len(classes)
    if y.ndim != 1 or y.size == 0 or p.shape != (y.size, k):
        raise ValueError(f"labels (n,) and probs (n, {k}) must be non-empty and agree, got {y.shape}, {p.shape}")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must be 0 to {k - 1} (classes {', '.join(classes)}), got {sorted(set(y.tolist()))}")
    pred = p.argmax(axis=1)
    matrix = skm.confusion_matrix(y, pred, labels=list(range(k)))
    present = [c for c in range(k) if (y == c).any()]
    per_class, ovr_auc = {}, {}
    for c, name in enumerate(classes):
        positives, negatives = int(matrix[c].sum()), int(y.size - matrix[c].sum())
        true_negatives = int(negatives - (matrix[:, c].sum() - matrix[c, c]))
        per_class[name] = {
            "sensitivity": float(matrix[c, c] / positives) if positives else None,
            "specificity": float(true_negatives / negatives) if negatives else None,
            "n": positives,
        }
        ovr_auc[name] = float(skm.roc_auc_score(y == c, p[:, c])) if positives and negatives else None
    result = {
        "classes": list(classes),
        "n": int(y.size),
        "n_per_class": {name: int((y == c).sum()) for c, name in enumerate(classes)},
        "accuracy": float(skm.accuracy_score(y, pred)),
        # The mean recall over the classes present: scikit-learn's definition (it warns about absent ones).
        "balanced_accuracy": _quiet(skm.balanced_accuracy_score, y, pred) if len(present) >= 2 else None,
        "per_class": per_class,
        "ovr_auc": ovr_auc,
        "macro_auc": (
            float(skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(k))))
            if len(present) == k
            else None
        ),
        "confusion_matrix": {"labels": list(classes), "rows_true_cols_pred": matrix.astype(int).tolist()},
    }
    if "AD" in classes:
        ad = list(classes).index("AD")
        result["ad_vs_rest"] = classification_metrics((y == ad).astype(int), p[:, ad])
    return result


def _quiet(function, *args) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(function(*args))


class PredictionWriter:
    """Collect per-scan class probabilities from an evaluator and write ``predictions.csv`` and ``metrics.json``.

    MONAI's ClassificationSaver writes only file names and raw outputs; the analysis needs the subject and scan ids
    next to label and probabilities (subject-level bootstrap, per-subject metrics), hence this handler.

    Args:
        output_dir: folder for ``predictions.csv`` and ``metrics.json``.
        threshold: with two classes, the probability of the second (AD) at or above which a scan is predicted AD.
        classes: the classes of the network's outputs, in order (the datalist's; default CN, AD).
    """

    def __init__(self, output_dir: str | Path, threshold: float = 0.5, classes: Sequence[str] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.threshold = threshold
        self.classes = list(classes) if classes is not None else list(DEFAULT_CLASSES)
        problem = class_list_problem(self.classes)
        if problem:
            raise BundleInputError(f"the classes of the evaluation {problem}.")
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
        if logits.shape[1] != len(self.classes):
            raise BundleInputError(
                f"the network has {logits.shape[1]} outputs but the evaluation expects the classes "
                f"{', '.join(self.classes)}; evaluate with the datalist's classes (drop --num_classes)."
            )
        probs = torch.softmax(logits.detach().float(), dim=1).cpu().numpy()
        labels = batch["label"]
        for i, p in enumerate(probs):
            if len(self.classes) == 2:
                prediction = int(p[1] >= self.threshold)
            else:
                prediction = int(np.argmax(p))
            self.rows.append(
                {
                    "image_id": str(batch["image_id"][i]),
                    "subject": str(batch["subject"][i]),
                    "label": int(labels[i]),
                    **{f"prob_{name}": float(v) for name, v in zip(self.classes, p, strict=True)},
                    "prediction": prediction,
                }
            )

    def metrics(self) -> dict:
        """The metrics of the collected rows (binary keys for two classes, :func:`multiclass_metrics` for more)."""
        labels = [r["label"] for r in self.rows]
        if len(self.classes) == 2:
            positive = f"prob_{self.classes[1]}"
            result = {"classes": list(self.classes)}
            result.update(classification_metrics(labels, [r[positive] for r in self.rows], self.threshold))
        else:
            probs = [[r[f"prob_{name}"] for name in self.classes] for r in self.rows]
            result = multiclass_metrics(labels, probs, self.classes)
        result["n_subjects"] = len({r["subject"] for r in self.rows})
        return result

    def _write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.output_dir / "predictions.csv", _csv_text(self.rows, self.classes))
        result = self.metrics()
        _atomic_write(self.output_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
        auc = ("ROC-AUC", result["roc_auc"]) if "roc_auc" in result else ("macro one-vs-rest AUC", result["macro_auc"])
        logger.info(
            f"Test metrics over {result['n']} scans ({result['n_subjects']} subjects, classes "
            f"{', '.join(self.classes)}): accuracy {result['accuracy']:.4f}, balanced accuracy "
            f"{result['balanced_accuracy']}, {auc[0]} {auc[1]}. Written to {self.output_dir / 'metrics.json'} and "
            f"{self.output_dir / 'predictions.csv'}"
        )


def _csv_text(rows: list[dict], classes: Sequence[str] = DEFAULT_CLASSES) -> str:
    import io

    buffer = io.StringIO()
    columns = prediction_columns(classes)
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{row[k]:.6f}" if k.startswith("prob_") and k in row else row.get(k, "") for k in columns})
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
