"""Ctrl-C and SIGTERM during ``python -m preprocessing run``: scans not started are cancelled, the running one
finishes, the manifest keeps every finished scan, nothing half-written is left, and a rerun resumes without redoing
the finished scans."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from tiny_data import write_phantom_scans

pytestmark = pytest.mark.slow

N_SCANS = 8
SUBJECTS = [f"{100 + i:03d}_S_{1000 + i:04d}" for i in range(N_SCANS)]
STARTUP_S = 240  # a cold worker imports torch, MONAI and ANTs; generous for a loaded machine
EXIT_S = 120  # from the signal: the one running scan (a few seconds of N4) finishes, then the process exits


def write_inputs(root: Path) -> Path:
    """Pre-stripped phantom heads (zero background, integer intensities) big enough for N4 to take a few seconds."""
    lines = write_phantom_scans(root, SUBJECTS, shape=(52, 64, 52), spacing=2.8)
    csv_path = root / "scans.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


def command(csv_path: Path, out: Path) -> list[str]:
    # The phantom is no real brain: the template check of quality control would refuse it (and takes seconds).
    return [
        sys.executable, "-m", "preprocessing", "run", "--nifti-csv", str(csv_path), "--out", str(out),
        "--skull-stripper", "none", "--spacing", "2", "--spatial-size", "16", "--no-qc", "--workers", "1",
        "--qc-set", "template_check=false",
    ]  # fmt: skip


def start(csv_path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command(csv_path, out),
        cwd=REPO_ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a stray worker can be killed with it if the test fails
        # A test runner started in the background inherits SIGINT ignored; the CLI must see it as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def manifest(out: Path) -> list[dict]:
    path = out / "manifest.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def interrupt_after(process: subprocess.Popen, out: Path, finished: int, signum: int) -> tuple[str, float]:
    """Send ``signum`` once the manifest lists more than ``finished`` scans; return stderr and seconds to exit."""
    deadline = time.monotonic() + STARTUP_S
    while len(manifest(out)) <= finished:
        assert process.poll() is None, f"ended before the signal:\n{process.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "no scan finished in time"
        time.sleep(0.05)
    sent = time.monotonic()
    process.send_signal(signum)
    try:
        _, stderr = process.communicate(timeout=EXIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"still running {EXIT_S} s after {signal.Signals(signum).name}") from None
    return stderr, time.monotonic() - sent


def check_stopped_cleanly(process: subprocess.Popen, out: Path, stderr: str, most: int) -> dict[str, int]:
    """The batch stopped early with a clear message; returns image mtimes by image id of the finished scans."""
    assert process.returncode != 0, stderr[-3000:]
    rows = manifest(out)
    assert 1 <= len(rows) <= most, f"{len(rows)} scans finished: pending ones were not cancelled"
    assert {row["status"] for row in rows} == {"ok"}, rows
    assert "left undone" in stderr and "Run the same command again to resume" in stderr, stderr[-3000:]
    for folder in ("images", "masks"):
        assert not [p.name for p in (out / folder).iterdir() if p.name.startswith(".")], "temporary files left"
    # Cancelled means never started: no scan beyond the manifest's was processed (and its result thrown away).
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(Path(row["output"]).name for row in rows)
    mtimes = {}
    for row in rows:
        assert Path(row["output"]).is_file() and Path(row["mask"]).is_file()
        mtimes[row["image_id"]] = os.stat(row["output"]).st_mtime_ns
    return mtimes


def test_interrupted_batch_keeps_finished_scans_and_resumes(tmp_path):
    csv_path, out = write_inputs(tmp_path), tmp_path / "out"
    processes = []
    try:
        # Ctrl-C after the first scan: the second (running) one finishes, the other six never start.
        processes.append(first := start(csv_path, out))
        stderr, seconds = interrupt_after(first, out, finished=0, signum=signal.SIGINT)
        assert seconds < EXIT_S
        kept = check_stopped_cleanly(first, out, stderr, most=3)
        assert "Interrupted" in stderr

        # SIGTERM (kill, a scheduler's cancel) on the rerun: it resumes, and stops the same way.
        processes.append(second := start(csv_path, out))
        stderr, _ = interrupt_after(second, out, finished=len(kept), signum=signal.SIGTERM)
        after_term = check_stopped_cleanly(second, out, stderr, most=len(kept) + 3)
        assert len(after_term) > len(kept)
        assert {i: after_term[i] for i in kept} == kept  # the first run's scans were not redone

        # Run to the end: every scan ok, none of the earlier ones redone.
        processes.append(last := start(csv_path, out))
        _, stderr = last.communicate(timeout=STARTUP_S + 60 * N_SCANS)
        assert last.returncode == 0, stderr[-3000:]
        rows = manifest(out)
        assert [row["status"] for row in rows] == ["ok"] * N_SCANS
        final = {row["image_id"]: os.stat(row["output"]).st_mtime_ns for row in rows}
        assert {i: final[i] for i in after_term} == after_term
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
