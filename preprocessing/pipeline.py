"""Batch preprocessing: DICOM conversion, the per-volume chain of ``bundle/configs/preprocess.json``, QC pictures and
the manifest, for every scan of a discovery, in parallel worker processes.

Resumable: a scan whose preprocessed image and mask already exist is not redone, and every file is written under a
temporary name and renamed. One scan's failure never stops the batch; the manifest and the summary give its reason.
"""

from __future__ import annotations

import csv
import json
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
    "qc", "qc_status", "qc_reasons", "status", "error", "stripper", "input_shape", "input_voxel_size", "subject_raw",
    "duplicate_of",
]  # fmt: skip
#: Row statuses: processed and QC not failed; processed but refused by QC (left out of splits); not processed.
STATUS_OK, STATUS_QC_FAILED, STATUS_FAILED = "ok", "qc_failed", "failed"
STEP_PREFIX = "seconds_"
MANIFEST_NAME = "manifest.csv"

_CHAIN = None  # (settings, chain) of one worker process, built on first use and again when the settings change


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
    key = json.dumps(dict(overrides), sort_keys=True, default=str)
    if _CHAIN is None or _CHAIN[0] != key:  # another plan in the same process (a notebook, a scan report) rebuilds
        from scripts.preprocess import load_chain

        _CHAIN = (key, load_chain(**overrides))
    return _CHAIN[1]


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
    progress: Callable[..., Iterable] | None = None,
    qc_thresholds: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Process every record (dicts with image_id, subject, group, label, ... and dicom_dir or nifti_path).

    Scans whose image and mask exist are kept from the previous manifest (resume). Returns the manifest rows, also
    written to ``<out>/manifest.csv`` after every finished scan so an interrupted batch loses nothing.

    At most ``workers`` scans are handed to the worker processes at a time. Ctrl-C (SIGINT) or SIGTERM starts no
    further scan and lets the running ones finish; a second one abandons them (their workers are stopped and their
    temporary files removed). Either way the manifest is saved with every finished scan, the number left undone is
    printed, and KeyboardInterrupt is raised; running the same command again resumes.
    """
    import signal
    import sys
    import threading
    from concurrent.futures import FIRST_COMPLETED, Future, wait
    from concurrent.futures.process import BrokenProcessPool

    paths = BatchPaths(Path(out))
    chain_overrides = dict(chain_overrides or {})
    records = list(records)
    previous = {row["image_id"]: row for row in read_manifest(paths.manifest)}
    rows: dict[str, dict] = {}
    todo = []
    for record in records:
        image_path, mask_path, _ = paths.outputs(str(record["subject"]), str(record["image_id"]))
        old = previous.get(str(record["image_id"]))
        if (
            image_path.exists()
            and mask_path.exists()
            and old is not None
            and old.get("status") in (STATUS_OK, STATUS_QC_FAILED)
        ):
            rows[str(record["image_id"])] = old
        else:
            todo.append(record)
    order = [str(r["image_id"]) for r in records]
    workers = max(1, min(workers or os.cpu_count() or 1, max(1, len(todo))))
    progress = progress or (lambda iterable, **_: iterable)

    def save() -> None:
        write_manifest([rows[i] for i in order if i in rows], paths.manifest)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if not todo:
        save()
        return [rows[i] for i in order if i in rows]

    # Submitted lazily, never more than `workers` at a time: a scan handed to the pool cannot be taken back once a
    # worker has it, so an interrupt must find only the running scans there, not the whole batch queued.
    waiting = list(reversed(todo))  # pop() takes the next in order
    in_flight: dict[Future, Mapping[str, Any]] = {}
    done_now: list[str] = []
    # An interrupt between recording a row and forgetting its future must not record it twice.
    recorded: set[Future] = set()
    started = time.time()

    def record_row(future: Future, record: Mapping[str, Any]) -> None:
        if future in recorded:
            return
        try:
            row = future.result()
        except BrokenProcessPool:
            # A worker died (killed by the OOM killer, a crash in native code): every scan it held is lost with it.
            row = {k: record.get(k) for k in MANIFEST_COLUMNS if k in record}
            row.update(
                status=STATUS_FAILED, qc_status="fail", qc_reasons="not processed",
                error="the worker process died while this scan ran (out of memory?); rerun to retry",
            )  # fmt: skip
        rows[str(row["image_id"])] = row
        done_now.append(str(row["image_id"]))
        recorded.add(future)
        save()

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, initializer=_leave_interrupts_to_the_parent)

    pool = new_pool()

    def finished_rows() -> Iterable[dict]:
        nonlocal pool
        while waiting or in_flight:
            while waiting and len(in_flight) < workers:
                record = waiting[-1]
                future = pool.submit(process_scan, record, str(paths.out), chain_overrides, make_qc, qc_thresholds)
                in_flight[future] = record
                waiting.pop()
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                broken = broken or isinstance(future.exception(), BrokenProcessPool)
                record_row(future, in_flight[future])
                del in_flight[future]
                yield rows[done_now[-1]]
            if broken:  # the pool is unusable after a worker died; the rest of the batch gets a fresh one
                pool.shutdown(wait=False, cancel_futures=True)
                pool = new_pool()

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    # SIGTERM (kill, a scheduler's cancel) takes the same path as Ctrl-C. Only the main thread may set handlers.
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, interrupt)
    # Each worker gets an equal share of the cores for torch/ITK, so workers do not oversubscribe the machine.
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env_backup = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")}
    os.environ.update(OMP_NUM_THREADS=threads, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=threads)
    abandoned: list[Mapping[str, Any]] = []
    try:
        try:
            for _ in progress(finished_rows(), total=len(todo), desc="preprocessing", unit="scan"):
                pass
        except KeyboardInterrupt:
            say(
                f"\nInterrupted: {len(waiting)} scans not started are cancelled; waiting for the {len(in_flight)} "
                "running to finish (press Ctrl-C again to abandon them)."
            )
            try:
                for future in as_completed(list(in_flight)):
                    record = in_flight.pop(future)
                    if isinstance(future.exception(), BrokenProcessPool):
                        abandoned.append(record)  # its worker was killed too (e.g. SIGTERM to the process group)
                    else:
                        record_row(future, record)
            except KeyboardInterrupt:
                abandoned.extend(in_flight.values())
                in_flight.clear()
                _stop_workers(pool)
            _remove_partial_files(paths, abandoned, since=started)
            save()
            undone = len(todo) - len(done_now)
            say(
                f"Stopped: {len(done_now)} of {len(todo)} scans done in this run ({len(abandoned)} abandoned), "
                f"{undone} left undone. Manifest: {paths.manifest}. Run the same command again to resume."
            )
            raise
    finally:
        pool.shutdown(wait=not abandoned, cancel_futures=True)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        for key, value in env_backup.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    save()
    return [rows[i] for i in order if i in rows]


def _leave_interrupts_to_the_parent() -> None:
    """Worker initializer: Ctrl-C reaches the whole process group, but only the parent decides what stops (it lets
    running scans finish); SIGTERM keeps its default (the parent stops abandoned workers with it), also where the
    worker was forked with the parent's handler. The helpers below serve run_batch's interrupt path."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate a pool's worker processes and wait briefly for them, so nothing writes after the cleanup."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public API before Python 3.14
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)


def _remove_partial_files(paths: BatchPaths, records: Sequence[Mapping[str, Any]], since: float) -> None:
    """Remove the temporary files of abandoned scans: hidden ``.<name>.*`` next to each output (written by
    ``_save_nifti`` and the QC picture) and the ``.partial-*`` folders DICOM conversion made during this batch.
    Finished outputs are only ever renamed into place, so none of these is a file a rerun would accept."""
    import shutil

    for record in records:
        for output in paths.outputs(str(record["subject"]), str(record["image_id"])):
            for tmp in output.parent.glob(f".{output.name}.*"):
                tmp.unlink(missing_ok=True)
    if records and paths.nifti.is_dir():
        for partial in paths.nifti.glob(".partial-*"):
            if partial.is_dir() and partial.stat().st_mtime >= since:
                shutil.rmtree(partial, ignore_errors=True)


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
