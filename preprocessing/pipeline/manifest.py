"""Where a batch writes (:class:`BatchPaths`), its manifest (one row per scan: status, QC, outputs, step timings) and
the QC page of a manifest's rows.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_COLUMNS = [
    "image_id", "subject", "group", "label", "visit", "sex", "age", "acq_date", "source", "input", "output", "mask",
    "qc", "qc_status", "qc_reasons", "status", "error", "stripper", "input_shape", "input_voxel_size", "subject_raw",
    "duplicate_of", "session", "cdr", "mmse", "atrophy",
]  # fmt: skip
#: Row statuses: processed and QC not failed; processed but refused by QC (left out of splits); not processed.
STATUS_OK, STATUS_QC_FAILED, STATUS_FAILED = "ok", "qc_failed", "failed"
STEP_PREFIX = "seconds_"
MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class BatchPaths:
    """Where a batch writes: ``<out>/nifti`` (converted DICOM), ``images``, ``masks``, ``qc`` and the manifest."""

    out: Path

    @property
    def nifti(self) -> Path:
        return self.out / "nifti"

    @property
    def images(self) -> Path:
        return self.out / "images"

    @property
    def masks(self) -> Path:
        return self.out / "masks"

    @property
    def qc(self) -> Path:
        return self.out / "qc"

    @property
    def manifest(self) -> Path:
        return self.out / MANIFEST_NAME

    def outputs(self, subject: str, image_id: str) -> tuple[Path, Path, Path]:
        from preprocessing.convert import output_name

        name = output_name(subject, image_id)
        return self.images / name, self.masks / name, self.qc / name.replace(".nii.gz", ".png")


def read_manifest(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_manifest(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write the manifest atomically: fixed columns first, then every ``seconds_*`` column seen."""
    steps = sorted(
        {k for row in rows for k in row if k.startswith(STEP_PREFIX)}, key=lambda k: (k == "seconds_total", k)
    )
    columns = MANIFEST_COLUMNS + steps
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    os.replace(tmp, path)
    return path


def qc_overview(rows: Sequence[Mapping[str, Any]], out: Path) -> Path:
    """One HTML page with every scan's QC picture, failures first."""
    from preprocessing.qc import qc_page

    entries = [
        {
            "image_id": row.get("image_id"),
            "subject": row.get("subject"),
            "group": row.get("group"),
            "status": row.get("status"),
            "qc_status": row.get("qc_status") or None,
            "qc_reasons": row.get("qc_reasons") or None,
            "qc_png": row.get("qc") or None,
            "error": row.get("error") or None,
        }
        for row in rows
    ]
    return qc_page(entries, BatchPaths(Path(out)).qc / "index.html", title="Preprocessing QC")
