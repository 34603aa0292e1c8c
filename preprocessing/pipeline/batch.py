"""Running a batch: every scan in worker processes (a local pool or a Dask cluster, see :mod:`.executors`),
resumable from the manifest, saved after every finished scan, and stopped cleanly by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import CancelledError, Future, as_completed
from pathlib import Path
from typing import Any

from preprocessing.pipeline.executors import LocalExecutor, ScanExecutor
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
    executor: ScanExecutor | None = None,
    task: Callable[..., dict] = process_scan,
) -> list[dict]:
    """Process every record (dicts with image_id, subject, group, label, ... and dicom_dir or nifti_path).

    Scans whose image and mask exist are kept from the previous manifest (resume). Returns the manifest rows, also
    written to ``<out>/manifest.csv`` after every finished scan so an interrupted batch loses nothing (in batches of
    thousands, within seconds of it; every row is saved before an interrupt or the end returns).

    Scans run on ``executor`` (default: a local pool of ``workers`` processes; see :mod:`.executors` for Dask and
    SLURM), never more than its ``slots()`` at a time; only this process writes the manifest. A scan whose worker
    dies gets a ``failed`` row saying so and the batch goes on. Ctrl-C (SIGINT) or SIGTERM starts no further scan
    and lets the running ones finish; a second one abandons them (their workers are stopped and their temporary
    files removed). Either way the manifest is saved with every finished scan, the number left undone is printed,
    and KeyboardInterrupt is raised; running the same command again resumes. ``task`` is ``process_scan`` with its
    arguments; tests replace it to kill a worker.
    """
    import signal
    import sys
    import threading
    from concurrent.futures import FIRST_COMPLETED, wait

    executor = executor or LocalExecutor(workers)
    paths = BatchPaths(Path(out))
    chain_overrides = dict(chain_overrides or {})
    records = list(records)
    if not executor.same_directory:  # workers elsewhere start in another folder: relative paths would miss
        paths = BatchPaths(paths.out.resolve())
        records = [_absolute_inputs(record) for record in records]
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
    progress = progress or (lambda iterable, **_: iterable)

    # Each save rewrites the whole manifest (0.2 s for 10,000 rows): a big batch on many workers saves at most once
    # per 10 save-durations, so the client spends at most a tenth of its time there; a small one saves every scan.
    saving = {"at": 0.0, "seconds": 0.0, "dirty": False}

    def save() -> None:
        start = time.monotonic()
        write_manifest([rows[i] for i in order if i in rows], paths.manifest)
        saving.update(at=time.monotonic(), seconds=time.monotonic() - start, dirty=False)

    def save_due_in() -> float | None:
        """Seconds until unsaved rows must be saved (0: now), None when all are saved."""
        if not saving["dirty"]:
            return None
        return max(0.0, saving["at"] + 10 * saving["seconds"] - time.monotonic())

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if not todo:
        save()
        return [rows[i] for i in order if i in rows]

    # Submitted lazily, never more than the executor's slots at a time: a scan handed to a worker cannot be taken
    # back, so an interrupt must find only the running scans there, not the whole batch queued.
    waiting = list(reversed(todo))  # pop() takes the next in order
    in_flight: dict[Future, Mapping[str, Any]] = {}
    done_now: list[str] = []
    # An interrupt between recording a row and forgetting its future must not record it twice.
    recorded: set[Future] = set()
    started = time.time()

    def record_row(future: Future, record: Mapping[str, Any]) -> None:
        if future in recorded:
            return
        lost = lost_worker(future)
        if lost is None:
            row = future.result()  # process_scan never raises: an exception here is a bug and propagates
        else:  # every scan a dead worker held is lost with it
            row = {k: record.get(k) for k in MANIFEST_COLUMNS if k in record}
            row.update(status=STATUS_FAILED, qc_status="fail", qc_reasons="not processed", error=lost)
        rows[str(row["image_id"])] = row
        done_now.append(str(row["image_id"]))
        recorded.add(future)
        saving["dirty"] = True
        if save_due_in() == 0:
            save()

    def lost_worker(future: Future) -> str | None:
        try:
            error = future.exception()
        except CancelledError as cancelled:  # cancelled by the cluster, not by this loop (it cancels only on exit)
            error = cancelled
        return None if error is None else executor.lost_worker(error)

    def finished_rows() -> Iterable[dict]:
        while waiting or in_flight:
            while waiting and len(in_flight) < executor.slots():
                record = waiting[-1]
                future = executor.submit(task, record, str(paths.out), chain_overrides, make_qc, qc_thresholds)
                in_flight[future] = record
                waiting.pop()
            done, _ = wait(list(in_flight), timeout=save_due_in(), return_when=FIRST_COMPLETED)
            if save_due_in() == 0:
                save()
            broken = False
            for future in done:
                broken = broken or lost_worker(future) is not None
                record_row(future, in_flight[future])
                del in_flight[future]
                yield rows[done_now[-1]]
            if broken:
                executor.recover()

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    # SIGTERM (kill, a scheduler's cancel) takes the same path as Ctrl-C. Only the main thread may set handlers.
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, interrupt)
    abandoned: list[Mapping[str, Any]] = []
    try:
        executor.start(len(todo))
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
                    if lost_worker(future) is not None:
                        abandoned.append(record)  # its worker was killed too (e.g. SIGTERM to the process group)
                    else:
                        record_row(future, record)
            except KeyboardInterrupt:
                abandoned.extend(in_flight.values())
                in_flight.clear()
                executor.abandon()
            _remove_partial_files(paths, abandoned, since=started)
            save()
            undone = len(todo) - len(done_now)
            say(
                f"Stopped: {len(done_now)} of {len(todo)} scans done in this run ({len(abandoned)} abandoned), "
                f"{undone} left undone. Manifest: {paths.manifest}. Run the same command again to resume."
            )
            raise
    finally:
        executor.stop(wait=not abandoned)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    save()
    return [rows[i] for i in order if i in rows]


def _absolute_inputs(record: Mapping[str, Any]) -> dict:
    """The record with its input paths absolute, for workers that run in another folder (or on another machine,
    which must see the same paths)."""
    record = dict(record)
    for key in ("nifti_path", "dicom_dir"):
        if record.get(key):
            record[key] = str(Path(record[key]).resolve())
    return record


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
