"""Inference over a folder that may hold anything: every file gets a row, the good ones a probability.

MONAI's Dataset raises on the first unreadable file and stops the whole run, and ClassificationSaver writes rows
without a header or a status. Here each file is preprocessed inside a guard: a file that cannot be read, breaks the
chain or fails quality control becomes a placeholder item that carries its status and reason, and the table writer
gives it a row without a probability (the network's output for the placeholder is discarded).
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor

from scripts.data import DEFAULT_CLASSES

logger = logging.getLogger(__name__)

#: File names inference picks up in a folder: NIfTI and FreeSurfer volumes (DICOM must be converted first).
VOLUME_PATTERNS = ("*.nii", "*.nii.gz", "*.mgz", "*.mgh")
_META_KEYS = ("file", "image_id", "status", "qc_status", "qc_reasons", "error")


def prediction_columns(classes: Sequence[str] = DEFAULT_CLASSES) -> list[str]:
    """The header of inference's predictions.csv: ids, status, QC, ``prob_<class>`` per class, ``prediction``."""
    return ["image_id", "file", "status", "qc_status", "qc_reasons", "error"] + [
        f"prob_{name}" for name in classes
    ] + ["prediction"]  # fmt: skip


PREDICTION_COLUMNS = prediction_columns()


def image_id_of(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".mgz", ".mgh"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_volumes(folder: str | Path) -> list[dict[str, str]]:
    """Dataset items for every volume file in ``folder`` (sorted); fails naming the folder when there is none."""
    paths = sorted({p for pattern in VOLUME_PATTERNS for p in glob.glob(os.path.join(str(folder), pattern))})
    if not paths:
        from scripts.plan import PlanError

        raise PlanError(
            f"no volumes ({', '.join(VOLUME_PATTERNS)}) in {folder}; pass --dataset_dir <folder with your scans>"
        )
    return [{"image": path, "file": path, "image_id": image_id_of(path)} for path in paths]


class GuardedPreprocessing:
    """Preprocess one item with ``chain`` then ``normalization``; on any failure, or a QC fail, a placeholder.

    Args:
        chain: the per-volume chain (raw input) or the load transforms (model-ready input).
        normalization: the model's input normalisation, applied after the chain.
        spatial_size: edge of the model-ready cube, for the placeholder.
        raw_input: run quality control (it judges a raw scan and its brain mask).
        qc_thresholds: overrides of the QC thresholds (the model's plan).
        force_qc: predict scans that fail QC anyway; their row keeps ``qc_status`` fail.
    """

    def __init__(
        self,
        chain: Callable,
        normalization: Sequence[Callable] = (),
        spatial_size: int = 128,
        raw_input: bool = True,
        qc_thresholds: Mapping[str, Any] | None = None,
        force_qc: bool = False,
    ) -> None:
        self.chain, self.normalization = chain, list(normalization)
        self.spatial_size, self.raw_input = int(spatial_size), bool(raw_input)
        self.qc_thresholds, self.force_qc = dict(qc_thresholds or {}), bool(force_qc)

    def _placeholder(self, item: Mapping[str, Any], status: str, error: str) -> dict[str, Any]:
        size = (1,) + (self.spatial_size,) * 3
        image = MetaTensor(torch.zeros(size, dtype=torch.float32), meta={"filename_or_obj": item["file"]})
        logger.warning(f"{item['file']}: {status}: {error}")
        return {**{k: item.get(k, "") for k in _META_KEYS}, "image": image, "status": status, "error": error}

    def __call__(self, item: Mapping[str, Any]) -> dict[str, Any]:
        from scripts import quality

        item = {**{k: "" for k in _META_KEYS}, **dict(item)}
        verdict = None
        try:
            if self.raw_input:
                verdict = quality.assess_input(item["file"], None, self.qc_thresholds)
            data = self.chain({"image": item["file"]})
            if self.raw_input:
                verdict = verdict.merged(
                    quality.assess_output(
                        data["image"][0].detach().cpu().numpy(),
                        data["brain_mask"][0].detach().cpu().numpy(),
                        data["image"].affine.detach().cpu().numpy(),
                        self.qc_thresholds,
                    )
                )
            for transform in self.normalization:
                data = transform(data)
        except Exception as error:  # one file must not stop the folder: its row says why
            out = self._placeholder(item, "failed", f"{type(error).__name__}: {error}")
            if verdict is not None:
                out.update(verdict.as_row())
            return out
        qc = verdict.as_row() if verdict is not None else {"qc_status": "", "qc_reasons": ""}
        if verdict is not None and verdict.status == "fail" and not self.force_qc:
            out = self._placeholder(item, "qc_failed", f"quality control: {qc['qc_reasons']} (--force_qc True)")
            out.update(qc)
            return out
        return {**item, **qc, "image": data["image"], "status": "ok"}


class PredictionTable:
    """Write ``predictions.csv`` (header, one row per file: image id, file, status, QC, probabilities).

    Rows of files that were not predicted have empty probabilities, so none is lost from the table. ``classes``: the
    model's classes in output order (``prob_<class>`` columns; ``prediction`` is the most probable class's name).
    """

    def __init__(
        self, output_dir: str | Path, filename: str = "predictions.csv", classes: Sequence[str] | None = None
    ) -> None:
        self.path = Path(output_dir) / filename
        self.classes = list(classes) if classes is not None else list(DEFAULT_CLASSES)
        self.columns = prediction_columns(self.classes)
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        items = batch if isinstance(batch, list) else [batch]
        outputs = output if isinstance(output, list) else [output]
        for item, out in zip(items, outputs, strict=True):
            row = {key: _text(item.get(key)) for key in _META_KEYS}
            if row["status"] in ("ok", ""):
                probs = torch.as_tensor(out["pred"]).detach().float().cpu().flatten().tolist()
                row.update({f"prob_{name}": f"{p:.6f}" for name, p in zip(self.classes, probs, strict=True)})
                row["prediction"] = self.classes[int(max(range(len(probs)), key=probs.__getitem__))]
                row["status"] = "ok"
            self.rows.append(row)

    def _write(self, engine: Engine) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: row.get(k, "") for k in self.columns} for row in self.rows)
        os.replace(tmp, self.path)
        bad = [row for row in self.rows if row["status"] != "ok"]
        logger.info(f"Predictions for {len(self.rows) - len(bad)} of {len(self.rows)} files: {self.path}")
        for row in bad:
            logger.warning(f"not predicted: {row['file']}: {row['status']}: {row['error']}")


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):  # a string field of a collated batch of one
        value = value[0] if value else ""
    return "" if value is None else str(value)
