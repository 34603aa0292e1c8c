"""Running a batch: every scan in worker processes, resumable from the manifest, saved after every finished scan,
and stopped cleanly by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from preprocessing.pipeline.manifest import (
    MANIFEST_COLUMNS,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_QC_FAILED,
    BatchPaths,
    read_manifest,
    write_manifest,
)
from preprocessing.pipeline.scan import process_scan


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
