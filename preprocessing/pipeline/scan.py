"""One scan of a batch: DICOM conversion, input QC, the per-volume chain, output QC, the saved volumes and the QC
picture, as one manifest row; it never raises.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from preprocessing.cohorts.analyze import analyze_to_nifti, is_analyze
from preprocessing.pipeline.manifest import (
    MANIFEST_COLUMNS,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_QC_FAILED,
    STEP_PREFIX,
    BatchPaths,
)

_CHAIN = None  # (settings, chain) of one worker process, built on first use and again when the settings change


def _chain(overrides: Mapping[str, Any]):
    global _CHAIN
    key = json.dumps(dict(overrides), sort_keys=True, default=str)
    if _CHAIN is None or _CHAIN[0] != key:  # another plan in the same process (a notebook, a scan report) rebuilds
        from scripts.preprocess import load_chain

        _CHAIN = (key, load_chain(**overrides))
    return _CHAIN[1]


def _limit_threads() -> None:
    """Hold torch to the worker's share of the cores (``OMP_NUM_THREADS``, set by the batch for each worker).

    OpenMP reads that variable once, when torch is first imported: a worker forked from a process that had already
    imported torch (a notebook, the benchmark, a test) inherits a pool as large as the machine, and two such workers
    on two cores each run two threads -- measured 2 with ``torch.get_num_threads()`` in a worker. ITK (ANTs) reads its
    variable when first used, which the batch's parent does not do.
    """
    try:
        threads = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return
    import torch

    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


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


def process_scan(
    record: Mapping[str, Any],
    out: str,
    chain_overrides: Mapping[str, Any],
    make_qc: bool = True,
    qc_thresholds: Mapping[str, Any] | None = None,
) -> dict:
    """Convert (if DICOM), check, preprocess, check again, save and picture one scan; never raises.

    Returns its manifest row: ``status`` is ``ok``, ``qc_failed`` (processed, but quality control refused it; the
    volume is kept for the QC page and left out of splits) or ``failed``; ``qc_status`` is pass/warn/fail with
    ``qc_reasons``.
    """
    _limit_threads()
    from scripts import quality
    from scripts.preprocess import run_chain_timed

    paths = BatchPaths(Path(out))
    row = {k: record.get(k) for k in MANIFEST_COLUMNS if k in record}
    row.update(status=STATUS_FAILED, error=None)
    started = time.perf_counter()
    image_path, mask_path, qc_path = paths.outputs(str(record["subject"]), str(record["image_id"]))
    verdict = None
    try:
        headers = None
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
            headers = quality.dicom_acquisition_headers(record["dicom_dir"])
        else:
            raw = Path(record["nifti_path"])
            if is_analyze(raw):  # no reliable orientation: converted with the cohort's known layout first
                from preprocessing.convert import output_name

                convert_start = time.perf_counter()
                name = output_name(str(record["subject"]), str(record["image_id"]))
                raw = analyze_to_nifti(raw, paths.nifti / name, layout=record.get("source"))
                row[f"{STEP_PREFIX}convert"] = round(time.perf_counter() - convert_start, 3)
        row["input"] = str(raw)
        header = nib.load(str(raw))
        row["input_shape"] = "x".join(str(n) for n in header.shape)
        row["input_voxel_size"] = "x".join(f"{z:.3g}" for z in header.header.get_zooms()[:3])
        verdict = quality.assess_input(raw, headers, qc_thresholds)
        data, seconds = run_chain_timed(_chain(chain_overrides), {"image": str(raw)})
        row.update({f"{STEP_PREFIX}{name}": round(value, 3) for name, value in seconds.items()})
        qc_start = time.perf_counter()
        verdict = verdict.merged(
            quality.assess_output(
                data["image"][0].detach().cpu().numpy(),
                data["brain_mask"][0].detach().cpu().numpy(),
                data["image"].affine.detach().cpu().numpy(),
                qc_thresholds,
            )
        )
        row[f"{STEP_PREFIX}quality"] = round(time.perf_counter() - qc_start, 3)
        _save_nifti(data["brain_mask"], mask_path)
        _save_nifti(data["image"], image_path)  # written last: its presence marks the scan as done
        row.update(output=str(image_path), mask=str(mask_path), stripper=data.get("skull_stripper"))
        if make_qc:
            from preprocessing.qc import qc_figure

            qc_start = time.perf_counter()
            title = f"{record['subject']}  {record['image_id']}  {record.get('group') or ''}  QC {verdict.status}"
            qc_figure(raw, image_path, mask_path, qc_path, title=title)
            row["qc"] = str(qc_path)
            row[f"{STEP_PREFIX}qc"] = round(time.perf_counter() - qc_start, 3)
        row["status"] = STATUS_QC_FAILED if verdict.status == "fail" else STATUS_OK
    except Exception as error:  # one scan's failure must not stop the batch; its reason goes to the manifest
        row["error"] = f"{type(error).__name__}: {error}".strip()
        if os.environ.get("PREPROCESSING_DEBUG"):
            row["error"] += "\n" + traceback.format_exc()
    finally:
        row[f"{STEP_PREFIX}total"] = round(time.perf_counter() - started, 3)
        if verdict is not None:
            row.update(verdict.as_row())
            if row["status"] == STATUS_QC_FAILED:
                row["error"] = f"quality control: {row['qc_reasons']}"
            elif row["status"] == STATUS_FAILED and verdict.status == "fail":
                # The chain broke on an input QC had already refused: the QC reason is the one to act on.
                row["error"] = f"quality control: {row['qc_reasons']}; then {row['error']}"
        elif row["status"] == STATUS_FAILED:
            row.update(qc_status="fail", qc_reasons="not processed")
    return row
