"""``python -m preprocessing run --scheduler dask://...|slurm``: the same scans, manifest, resume and failure isolation
as the local process pool, on a real Dask cluster of worker processes; the SLURM path without SLURM (a fake sbatch);
and one clear error line for every scheduler that cannot be used."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import pytest
from conftest import REPO_ROOT
from distributed import Client, LocalCluster, get_task_stream
from tiny_data import write_phantom_scans

import preprocessing.pipeline.batch as batch
from preprocessing.__main__ import main
from preprocessing.pipeline import run_batch
from preprocessing.pipeline.executors import (
    DaskExecutor,
    ScanExecutor,
    SchedulerError,
    SlurmOptions,
    make_executor,
    parse_scheduler,
)

pytestmark = pytest.mark.slow

SUBJECTS = [f"{100 + i:03d}_S_{1000 + i:04d}" for i in range(3)]
BROKEN = "300_S_3000"
# Tiny pre-stripped phantoms: the template check of QC would refuse them (and takes seconds).
OPTIONS = ["--skull-stripper", "none", "--spacing", "4", "--spatial-size", "16", "--no-qc",
           "--qc-set", "template_check=false", "--qc-set", "max_slice_spacing_mm=5"]  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    # The scheduler runs in this process and reads allowed-failures when it starts: no retry of a killed scan, so
    # the worker-death test needs one death, not four.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as local:
            yield local


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    lines = write_phantom_scans(root, SUBJECTS, shape=(36, 44, 36), spacing=4.0)
    (root / "broken.nii.gz").write_bytes(b"not a gzip file")  # a corrupt download
    lines.append(f"broken.nii.gz,{BROKEN},CN")
    (root / "scans.csv").write_text("\n".join(lines) + "\n")
    return root / "scans.csv"


def manifest(out: Path) -> list[dict]:
    with (out / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def comparable(row: dict) -> dict:
    """A manifest row without timings, output folders as names only."""
    kept = {k: v for k, v in row.items() if not k.startswith("seconds_")}
    for key in ("output", "mask", "qc"):
        kept[key] = Path(kept[key]).name if kept.get(key) else ""
    return kept


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "preprocessing", "run", *args], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_dask_batch_equals_local_and_resumes(cluster, inputs, tmp_path):
    local_out, dask_out = tmp_path / "local", tmp_path / "dask"
    local = cli("--nifti-csv", str(inputs), "--out", str(local_out), "--workers", "2", *OPTIONS)
    assert local.returncode == 0, local.stderr[-3000:]

    address = cluster.scheduler_address.replace("tcp://", "dask://")
    argv = ["run", "--nifti-csv", str(inputs), "--out", str(dask_out), "--scheduler", address, *OPTIONS]
    assert main(argv) == 0
    rows = manifest(dask_out)
    assert [r["subject"] for r in rows] == [*SUBJECTS, BROKEN]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"]
    assert "broken.nii.gz" in rows[-1]["error"] and rows[-1]["qc_reasons"] == "not processed"
    assert [comparable(r) for r in rows] == [comparable(r) for r in manifest(local_out)]
    for row in rows[:3]:
        for key in ("output", "mask"):
            dask_volume = nib.load(row[key])
            local_volume = nib.load(local_out / Path(row[key]).parent.name / Path(row[key]).name)
            assert dask_volume.shape == (16, 16, 16)
            np.testing.assert_allclose(dask_volume.get_fdata(), local_volume.get_fdata(), atol=1e-6)
            np.testing.assert_allclose(dask_volume.affine, local_volume.affine, atol=1e-6)

    # A rerun keeps the finished scans (same files, same rows) and tries the failed one again.
    mtimes = {r["image_id"]: os.stat(r["output"]).st_mtime_ns for r in rows[:3]}
    with Client(cluster) as client, get_task_stream(client) as tasks:  # every task the cluster runs meanwhile
        assert main(argv) == 0
    assert len(tasks.data) == 1  # the broken scan only
    again = manifest(dask_out)
    assert [comparable(r) for r in again] == [comparable(r) for r in rows]
    assert {r["image_id"]: os.stat(r["output"]).st_mtime_ns for r in again[:3]} == mtimes


def test_dead_worker_fails_its_scan_and_the_batch_goes_on(cluster, tmp_path):
    def scan_or_die(record, out, *_):  # defined here, so cloudpickle sends it by value to the workers
        import os

        if record["image_id"] == "die":
            os._exit(1)  # what the OOM killer does to a worker
        return {"image_id": record["image_id"], "subject": record["subject"], "status": "ok"}

    records = [{"image_id": i, "subject": f"S{i}"} for i in ("a", "die", "b", "c")]
    with DaskExecutor(Client(cluster), max_in_flight=1) as executor:  # one at a time: only "die" is on the worker
        rows = run_batch(records, tmp_path, executor=executor, task=scan_or_die)
    assert [r["image_id"] for r in rows] == ["a", "die", "b", "c"]
    assert [r["status"] for r in rows] == ["ok", "failed", "ok", "ok"]
    assert "worker running this scan died" in rows[1]["error"] and rows[1]["qc_reasons"] == "not processed"
    assert [r["image_id"] for r in manifest(tmp_path)] == ["a", "die", "b", "c"]


def fake_slurm(folder: Path) -> Path:
    """``sbatch`` that keeps each job script and prints a job id, ``scancel`` that notes what it cancelled."""
    folder.mkdir()
    (folder / "sbatch").write_text(f'#!/bin/sh\ncp "$1" "{folder}/job-$$.sh"\necho "Submitted batch job $$"\n')
    (folder / "scancel").write_text(f'#!/bin/sh\necho "$@" >> "{folder}/cancelled.txt"\n')
    for name in ("sbatch", "scancel"):
        (folder / name).chmod(0o755)
    return folder


def test_slurm_jobs_carry_the_requested_resources(tmp_path, monkeypatch):
    bin_dir = fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = SlurmOptions(jobs=3, cores=2, memory="6GB", walltime="01:30:00", queue="short")
    with make_executor("slurm", slurm=options) as executor:
        script = executor.cluster.job_script()
        # scale() submits in the background; this waits for it (no public call does without workers joining).
        executor.cluster.sync(executor.cluster._correct_state)
        assert executor.slots() == 6  # no worker has started yet: the jobs' cores
        assert executor.description.startswith("3 SLURM jobs of 2 cores, Dask scheduler tcp://")
    for line in ("#SBATCH -p short", "#SBATCH --cpus-per-task=2", "#SBATCH --mem=6G", "#SBATCH -t 01:30:00",
                 "export OMP_NUM_THREADS=1", "export ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1"):  # fmt: skip
        assert line in script, script
    assert "--nworkers 2" in script and "--nthreads 1" in script and sys.executable in script
    jobs = sorted(bin_dir.glob("job-*.sh"))
    assert len(jobs) == 3 and all("#SBATCH -p short" in job.read_text() for job in jobs)
    assert len((bin_dir / "cancelled.txt").read_text().split()) == 3  # closing the batch cancels its jobs
    for memory in ("16", "lots", "0GB"):  # a bare number would be bytes
        with pytest.raises(SchedulerError, match=f"--memory '{memory}' is no amount of memory. Fix: .* 16GB"):
            make_executor("slurm", slurm=SlurmOptions(memory=memory))
    assert len(list(bin_dir.glob("job-*.sh"))) == 3  # nothing submitted for them


def test_scheduler_values():
    assert parse_scheduler("local") == ("local", None)
    assert parse_scheduler("dask://node1:8786") == ("dask", "tcp://node1:8786")
    assert parse_scheduler("dask://tls://10.0.0.5:8786") == ("dask", "tls://10.0.0.5:8786")
    for bad in ("dask", "dask://node1", "dask://:8786", "sge", "tcp://node1:8786"):
        with pytest.raises(SchedulerError, match="Fix: give local, slurm or dask://HOST:PORT"):
            parse_scheduler(bad)


@pytest.mark.parametrize(
    ("scheduler", "message"),
    [
        ("dask:/node1:8786", "is not a scheduler. Fix: give local, slurm or dask://HOST:PORT"),
        ("dask://127.0.0.1:9", "no Dask scheduler answered at tcp://127.0.0.1:9 within 5 s"),
        ("slurm", "'sbatch' is not on PATH"),
    ],
)
def test_unusable_scheduler_is_one_error_line(scheduler, message, inputs, tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # no sbatch here
    result = subprocess.run(
        [sys.executable, "-m", "preprocessing", "run", "--nifti-csv", str(inputs), "--out", str(tmp_path / "out"),
         "--scheduler", scheduler], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Fix:" in last, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # stopped before any work


def test_local_scheduler_does_not_load_dask():
    code = (
        "import sys; from preprocessing.__main__ import build_parser; "
        "from preprocessing.pipeline.executors import make_executor; "
        "build_parser().parse_args(['run', '--out', 'x', '--scheduler', 'local']); make_executor('local', 2); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'dask_jobqueue')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


class ThreadExecutor(ScanExecutor):
    """Any concurrent.futures executor serves run_batch's loop: here threads, for scans that take no time."""

    def start(self, pending: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(2)

    def slots(self) -> int:
        return 2

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def lost_worker(self, error: BaseException) -> None:
        return None

    def stop(self, wait: bool) -> None:
        self.pool.shutdown(wait=wait)


def instant_scan(record, out, *_):
    return {"image_id": record["image_id"], "subject": record["subject"], "status": "ok"}


def test_big_manifest_is_saved_less_often_but_completely(tmp_path, monkeypatch):
    saves = []

    def slow_write(rows, path):  # as slow as a manifest of thousands of rows
        import time

        saves.append(len(rows))
        time.sleep(0.05)
        return real_write(rows, path)

    real_write = batch.write_manifest
    monkeypatch.setattr(batch, "write_manifest", slow_write)
    records = [{"image_id": f"I{i}", "subject": f"S{i}"} for i in range(60)]
    rows = run_batch(records, tmp_path, executor=ThreadExecutor(), task=instant_scan)
    assert [r["image_id"] for r in rows] == [r["image_id"] for r in records]
    assert [r["image_id"] for r in manifest(tmp_path)] == [r["image_id"] for r in records]
    assert saves[-1] == 60 and len(saves) < 30  # not once per scan, yet the last save holds every row
