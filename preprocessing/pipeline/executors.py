"""Where a batch's scans run: a local process pool (the default), an existing Dask cluster (``dask://HOST:PORT``) or
Dask workers started as SLURM jobs (``slurm``, through dask-jobqueue).

:func:`preprocessing.pipeline.batch.run_batch` has one loop for all of them; an executor here only submits one scan,
says how many scans may be in flight, recognises a lost worker and stops. Dask and dask-jobqueue are imported only
when a Dask scheduler is chosen, so the local pool works without them.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from dataclasses import dataclass
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
CONNECT_TIMEOUT_S = 5
SCHEDULERS_HELP = "local, slurm or dask://HOST:PORT"


class SchedulerError(RuntimeError):
    """A scheduler that cannot be used (bad value, unreachable, no SLURM); the message names the fix."""


@dataclass(frozen=True)
class SlurmOptions:
    """One SLURM job of Dask workers: ``cores`` single-threaded worker processes sharing ``memory``."""

    jobs: int = 1
    cores: int = 4
    memory: str = "16GB"
    walltime: str = "04:00:00"
    queue: str | None = None


class ScanExecutor:
    """What run_batch needs of the place scans run. Subclasses implement every method; use as a context manager
    (``close`` releases a client or cluster after the batch)."""

    #: Whether workers share this process's working directory (else run_batch hands them absolute paths).
    same_directory = True
    #: Where the scans run, for the command line's report.
    description = "local process pool"

    def start(self, pending: int) -> None:
        """Get ready to run ``pending`` scans (a fresh start after a previous ``stop``)."""

    def slots(self) -> int:
        """How many scans may be in flight now: enough to keep every worker busy, few enough that an interrupt
        finds only running scans to wait for."""
        raise NotImplementedError

    def submit(self, fn: Callable[..., dict], *args: Any) -> Future:
        raise NotImplementedError

    def lost_worker(self, error: BaseException) -> str | None:
        """The manifest's error text when ``error`` (a scan future's exception) means its worker was lost, else None
        (the error is a bug and propagates)."""
        raise NotImplementedError

    def recover(self) -> None:
        """Called after a lost worker, before further submissions."""

    def abandon(self) -> None:
        """Stop the running scans now (a second Ctrl-C)."""

    def stop(self, wait: bool) -> None:
        """Cancel what has not started; with ``wait``, let running scans end."""

    def close(self) -> None:
        """Release the client or cluster (after the batch, also after a failure)."""

    def __enter__(self) -> ScanExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(ScanExecutor):
    """A process pool of ``workers`` processes (default: one per core), each with an equal share of the cores for
    torch and ITK so workers do not oversubscribe the machine."""

    def __init__(self, workers: int | None = None) -> None:
        self.requested = workers
        self.workers = 1
        self._pool = None
        self._env_backup: dict[str, str | None] = {}

    def start(self, pending: int) -> None:
        self.workers = max(1, min(self.requested or os.cpu_count() or 1, max(1, pending)))
        threads = str(max(1, (os.cpu_count() or 1) // self.workers))
        self._env_backup = {k: os.environ.get(k) for k in THREAD_VARIABLES}
        os.environ.update(dict.fromkeys(THREAD_VARIABLES, threads))  # inherited by the workers when they start
        self._pool = self._new_pool()

    def _new_pool(self):
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=self.workers, initializer=_leave_interrupts_to_the_parent)

    def slots(self) -> int:
        return self.workers

    def submit(self, fn: Callable[..., dict], *args: Any) -> Future:
        return self._pool.submit(fn, *args)

    def lost_worker(self, error: BaseException) -> str | None:
        from concurrent.futures.process import BrokenProcessPool

        if isinstance(error, BrokenProcessPool):  # killed by the OOM killer, a crash in native code
            return "the worker process died while this scan ran (out of memory?); rerun to retry"
        return None

    def recover(self) -> None:
        # A pool is unusable after one of its workers died: the rest of the batch gets a fresh one.
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    def abandon(self) -> None:
        """Terminate the workers and wait briefly for them, so nothing writes after the cleanup."""
        processes = list((getattr(self._pool, "_processes", None) or {}).values())  # no public API before 3.14
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=10)

    def stop(self, wait: bool) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None
        for key, value in self._env_backup.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._env_backup = {}


def _leave_interrupts_to_the_parent() -> None:
    """Worker initializer: Ctrl-C reaches the whole process group, but only the parent decides what stops (it lets
    running scans finish); SIGTERM keeps its default (the parent stops abandoned workers with it), also where the
    worker was forked with the parent's handler."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class DaskExecutor(ScanExecutor):
    """Scans as tasks of a ``distributed.Client``, one scan per worker thread.

    Through ``client.get_executor()`` the futures are concurrent.futures ones, so run_batch's loop is the same. A
    scan whose worker dies is retried by the scheduler (``distributed.scheduler.allowed-failures`` times) and then
    fails with ``KilledWorker``; the batch records it and goes on.
    """

    same_directory = False

    def __init__(
        self, client: Any, cluster: Any = None, max_in_flight: int | None = None, expected_threads: int = 1
    ) -> None:
        self.client = client
        self.cluster = cluster  # closed with the client when this executor started it (SLURM)
        self.max_in_flight = max_in_flight
        self.expected_threads = expected_threads
        self.description = f"Dask scheduler {client.scheduler.address}"
        self._executor = None
        self._threads_seen = 0
        self._counted_at = float("-inf")

    def start(self, pending: int) -> None:
        # pure=False: every submission runs, even one that equals an earlier (a retry after a lost worker).
        self._executor = self.client.get_executor(pure=False)

    def slots(self) -> int:
        if self.max_in_flight:
            return self.max_in_flight
        # Workers come and go (SLURM jobs start late, adaptive clusters): counted again every few seconds.
        if time.monotonic() - self._counted_at > 2:
            try:
                self._threads_seen = sum(self.client.nthreads().values())
                self._counted_at = time.monotonic()
            except (OSError, FuturesTimeoutError):  # keep the last count while the scheduler is unreachable
                pass
        return max(1, self._threads_seen or self.expected_threads)

    def submit(self, fn: Callable[..., dict], *args: Any) -> Future:
        return self._executor.submit(run_single_threaded, fn, *args)

    def lost_worker(self, error: BaseException) -> str | None:
        from distributed import KilledWorker

        if isinstance(error, KilledWorker):
            return "the Dask worker running this scan died each time it was tried (out of memory?); rerun to retry"
        # Anything else came from the cluster, not the scan (process_scan never raises): the scan is lost, not bad.
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        return f"the Dask cluster lost this scan ({reason}); rerun to retry"

    def abandon(self) -> None:
        # A running task cannot be interrupted in its worker thread: its result is dropped, and since its scan has
        # no manifest row a rerun redoes it even if its files appear later.
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def stop(self, wait: bool) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=wait)
            self._executor = None

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()  # cancels the SLURM jobs


def run_single_threaded(fn: Callable[..., dict], *args: Any) -> dict:
    """Run one scan in a Dask worker with one thread for torch, OpenMP and ITK, as each worker thread runs a scan.

    Pickled by reference: unpickling it in the worker imports ``preprocessing``, which loads the bundle's ``scripts``
    package before the scan needs it. The variables cover libraries the worker has not loaded yet; torch, usually
    loaded already, is held to them by ``process_scan`` itself (``scan._limit_threads``), as in a local worker.
    """
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    return fn(*args)


def parse_scheduler(value: str) -> tuple[str, str | None]:
    """``local``, ``slurm`` or ``dask://HOST:PORT`` as (kind, address); the address is Dask's (``tcp://HOST:PORT``,
    or the given protocol for ``dask://tls://...``). Raises SchedulerError for anything else."""
    if value in ("local", "slurm"):
        return value, None
    if value.startswith("dask://"):
        rest = value[len("dask://") :]
        address = rest if "://" in rest else f"tcp://{rest}"
        host, _, port = address.split("://", 1)[1].rpartition(":")
        if host and port.isdigit():
            return "dask", address
    raise SchedulerError(
        f"--scheduler {value!r} is not a scheduler. Fix: give {SCHEDULERS_HELP} (HOST:PORT as 'dask scheduler' "
        "prints it, e.g. dask://10.0.0.5:8786)"
    )


def slurm_cluster_options(options: SlurmOptions) -> dict[str, Any]:
    """SLURMCluster arguments: every job runs ``cores`` worker processes of one thread each (one scan each, no
    threads shared between scans), with the thread variables set before Python starts."""
    return {
        "cores": options.cores,
        "processes": options.cores,
        "memory": options.memory,
        "walltime": options.walltime,
        "queue": options.queue,
        "python": sys.executable,
        "job_name": "ad-preprocess",
        "job_script_prologue": [f"export {name}=1" for name in THREAD_VARIABLES],
    }


def make_executor(
    scheduler: str = "local", workers: int | None = None, slurm: SlurmOptions | None = None
) -> ScanExecutor:
    """The executor for ``--scheduler``; ``workers`` is the local pool's size, or the most scans in flight on a Dask
    cluster (default: its worker threads). Raises SchedulerError with the fix when the scheduler cannot be used."""
    kind, address = parse_scheduler(scheduler)
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "slurm":
        slurm = slurm or SlurmOptions()
        if shutil.which("sbatch") is None:
            raise SchedulerError(
                "--scheduler slurm: 'sbatch' is not on PATH. Fix: run on a SLURM login node (module load slurm), or "
                "start Dask workers yourself and use --scheduler dask://HOST:PORT"
            )
    try:
        from distributed import Client
    except ImportError as error:
        raise SchedulerError(
            f"--scheduler {scheduler}: {error}. Fix: pip install -r requirements.txt (dask, distributed, dask-jobqueue)"
        ) from error
    if kind == "dask":
        try:
            client = Client(address, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, FuturesTimeoutError) as error:
            raise SchedulerError(
                f"--scheduler {scheduler}: no Dask scheduler answered at {address} within {CONNECT_TIMEOUT_S} s "
                f"({type(error).__name__}). Fix: start one ('dask scheduler', then 'dask worker {address}') or give "
                "the address it prints"
            ) from error
        return DaskExecutor(client, max_in_flight=workers)
    from dask.utils import parse_bytes
    from dask_jobqueue import SLURMCluster

    try:
        valid = parse_bytes(slurm.memory) > 0 and not slurm.memory.strip().isdigit()  # a bare number is bytes
    except ValueError:
        valid = False
    if not valid:
        raise SchedulerError(f"--memory {slurm.memory!r} is no amount of memory. Fix: give it with a unit, e.g. 16GB")
    cluster = SLURMCluster(**slurm_cluster_options(slurm))
    try:
        cluster.scale(jobs=slurm.jobs)
        client = Client(cluster)
    except BaseException:
        cluster.close()
        raise
    executor = DaskExecutor(client, cluster, max_in_flight=workers, expected_threads=slurm.jobs * slurm.cores)
    executor.description = f"{slurm.jobs} SLURM jobs of {slurm.cores} cores, {executor.description}"
    return executor
