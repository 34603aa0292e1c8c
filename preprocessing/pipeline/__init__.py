"""Batch preprocessing: DICOM conversion, the per-volume chain of ``bundle/configs/preprocess.json``, QC pictures and
the manifest, for every scan of a discovery, in parallel worker processes.

Resumable: a scan whose preprocessed image and mask already exist is not redone, and every file is written under a
temporary name and renamed. One scan's failure never stops the batch; the manifest and the summary give its reason.

Modules: :mod:`.manifest` (output folders and the manifest), :mod:`.scan` (one scan), :mod:`.batch` (the batch in
worker processes, with resume and interrupts) and :mod:`.executors` (where the workers run: a local pool, a Dask
cluster, SLURM jobs).
"""

from preprocessing.pipeline.batch import run_batch
from preprocessing.pipeline.manifest import (
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_QC_FAILED,
    STEP_PREFIX,
    BatchPaths,
    qc_overview,
    read_manifest,
    write_manifest,
)
from preprocessing.pipeline.scan import process_scan

__all__ = [
    "MANIFEST_COLUMNS", "MANIFEST_NAME", "STATUS_FAILED", "STATUS_OK", "STATUS_QC_FAILED", "STEP_PREFIX", "BatchPaths",
    "process_scan", "qc_overview", "read_manifest", "run_batch", "write_manifest",
]  # fmt: skip
