"""Batch preprocessing: DICOM conversion, the per-volume chain of ``bundle/configs/preprocess.json``, QC pictures and
the manifest, for every scan of a discovery, in parallel worker processes.

Resumable: a scan whose preprocessed image and mask already exist is not redone, and every file is written under a
temporary name and renamed. One scan's failure never stops the batch; the manifest and the summary give its reason.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

MANIFEST_COLUMNS = [
    "image_id", "subject", "group", "label", "visit", "sex", "age", "acq_date", "source", "input", "output", "mask",
    "qc", "status", "error", "stripper", "input_shape", "input_voxel_size",
]  # fmt: skip
STEP_PREFIX = "seconds_"
MANIFEST_NAME = "manifest.csv"

_CHAIN = None  # the chain of one worker process, built once on first use


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


def _chain(overrides: Mapping[str, Any]):
    global _CHAIN
    if _CHAIN is None:
        from scripts.preprocess import load_chain

        _CHAIN = load_chain(**overrides)
    return _CHAIN


def _save_nifti(tensor, path: Path) -> None:
    """Write a channel-first MetaTensor as NIfTI with its affine, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(tensor[0].detach().cpu().numpy(), dtype=np.float32)
    image = nib.Nifti1Image(array, np.asarray(tensor.affine, dtype=np.float64))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".nii.gz", dir=path.parent)
    os.close(fd)
    try:
        nib.save(image, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def process_scan(record: Mapping[str, Any], out: str, chain_overrides: Mapping[str, Any], make_qc: bool = True) -> dict:
    """Convert (if DICOM), preprocess, save and picture one scan; never raises, returns its manifest row."""
    from scripts.preprocess import run_chain_timed

    paths = BatchPaths(Path(out))
    row = {k: record.get(k) for k in MANIFEST_COLUMNS if k in record}
    row.update(status="failed", error=None)
    started = time.perf_counter()
    image_path, mask_path, qc_path = paths.outputs(str(record["subject"]), str(record["image_id"]))
    try:
        if record.get("dicom_dir"):
            from preprocessing.convert import convert_series

            conversion = convert_series(
                record["dicom_dir"], paths.nifti, str(record["subject"]), str(record["image_id"])
            )
            row[f"{STEP_PREFIX}convert"] = round(conversion.seconds, 3)
            if not conversion.ok:
                row["error"] = f"DICOM conversion: {conversion.reason}"
                return row
            raw = Path(conversion.output_path)
        else:
            raw = Path(record["nifti_path"])
        row["input"] = str(raw)
        header = nib.load(str(raw))
        row["input_shape"] = "x".join(str(n) for n in header.shape)
        row["input_voxel_size"] = "x".join(f"{z:.3g}" for z in header.header.get_zooms()[:3])
        data, seconds = run_chain_timed(_chain(chain_overrides), {"image": str(raw)})
        row.update({f"{STEP_PREFIX}{name}": round(value, 3) for name, value in seconds.items()})
        _save_nifti(data["brain_mask"], mask_path)
        _save_nifti(data["image"], image_path)  # written last: its presence marks the scan as done
        row.update(output=str(image_path), mask=str(mask_path), stripper=data.get("skull_stripper"))
        if make_qc:
            from preprocessing.qc import qc_figure

            qc_start = time.perf_counter()
            title = f"{record['subject']}  {record['image_id']}  {record.get('group') or ''}"
            qc_figure(raw, image_path, mask_path, qc_path, title=title)
            row["qc"] = str(qc_path)
            row[f"{STEP_PREFIX}qc"] = round(time.perf_counter() - qc_start, 3)
        row["status"] = "ok"
    except Exception as error:  # one scan's failure must not stop the batch; its reason goes to the manifest
        row["error"] = f"{type(error).__name__}: {error}".strip()
        if os.environ.get("PREPROCESSING_DEBUG"):
            row["error"] += "\n" + traceback.format_exc()
    finally:
        row[f"{STEP_PREFIX}total"] = round(time.perf_counter() - started, 3)
    return row


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


def run_batch(
    records: Iterable[Mapping[str, Any]],
    out: Path,
    workers: int | None = None,
    chain_overrides: Mapping[str, Any] | None = None,
    make_qc: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[dict]:
    """Process every record (dicts with image_id, subject, group, label, ... and dicom_dir or nifti_path).

    Scans whose image and mask exist are kept from the previous manifest (resume). Returns the manifest rows, also
    written to ``<out>/manifest.csv`` after every finished scan so an interrupted batch loses nothing.
    """
    paths = BatchPaths(Path(out))
    chain_overrides = dict(chain_overrides or {})
    records = list(records)
    previous = {row["image_id"]: row for row in read_manifest(paths.manifest)}
    rows: dict[str, dict] = {}
    todo = []
    for record in records:
        image_path, mask_path, _ = paths.outputs(str(record["subject"]), str(record["image_id"]))
        old = previous.get(str(record["image_id"]))
        if image_path.exists() and mask_path.exists() and old is not None and old.get("status") == "ok":
            rows[str(record["image_id"])] = old
        else:
            todo.append(record)
    order = [str(r["image_id"]) for r in records]
    workers = max(1, min(workers or os.cpu_count() or 1, max(1, len(todo))))
    progress = progress or (lambda iterable, **_: iterable)

    def save() -> None:
        write_manifest([rows[i] for i in order if i in rows], paths.manifest)

    if todo:
        # Each worker gets an equal share of the cores for torch/ITK, so workers do not oversubscribe the machine.
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        env_backup = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")}
        os.environ.update(OMP_NUM_THREADS=threads, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=threads)
        try:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(process_scan, r, str(paths.out), chain_overrides, make_qc) for r in todo]
                for future in progress(as_completed(futures), total=len(futures), desc="preprocessing", unit="scan"):
                    row = future.result()
                    rows[str(row["image_id"])] = row
                    save()
        finally:
            for key, value in env_backup.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    save()
    return [rows[i] for i in order if i in rows]


def qc_overview(rows: Sequence[Mapping[str, Any]], out: Path) -> Path:
    """One HTML page with every scan's QC picture, failures first."""
    from preprocessing.qc import qc_page

    entries = [
        {
            "image_id": row.get("image_id"),
            "subject": row.get("subject"),
            "group": row.get("group"),
            "status": row.get("status"),
            "qc_png": row.get("qc") or None,
            "error": row.get("error") or None,
        }
        for row in rows
    ]
    return qc_page(entries, BatchPaths(Path(out)).qc / "index.html", title="Preprocessing QC")
