"""`make demo`'s script, scaled down (six subjects, 3 mm acquisitions, 16^3 volumes, one epoch), through its real
command lines: synthetic cohort -> conversion and chain -> split -> training -> evaluation -> explanations -> report."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scaled_down_demo_runs_every_step_and_reports_test_metrics(tmp_path):
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        DEMO_OUT=str(tmp_path / "demo"),
        DEMO_SUBJECTS="6",
        DEMO_MAX_VISITS="1",
        DEMO_VOXEL_SIZE="3.0 3.0",
        DEMO_SIZE="16",
        DEMO_EPOCHS="1",
        DEMO_WORKERS="2",
        TORCH_HOME=str(tmp_path / "torch"),  # no Kinetics weights there: the demo must say it starts from random
    )
    done = subprocess.run(
        ["bash", str(REPO / "demo.sh")], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "demo"
    assert "no Kinetics-400 weights" in done.stdout and "random weights" in done.stdout

    # Every scan went through the chain with the offline stripper, at the demo's size.
    with open(out / "data" / "manifest.csv", newline="") as handle:
        manifest = list(csv.DictReader(handle))
    assert len(manifest) == 6 and {row["status"] for row in manifest} == {"ok"}
    assert {row["stripper"] for row in manifest} == {"deepbet"}
    assert nib.load(manifest[0]["output"]).shape == (16, 16, 16)

    # The evaluation covers exactly the test partition, whose subjects the training never saw.
    datalist = json.loads((out / "data" / "datalist.json").read_text())
    test_ids = {item["image_id"] for item in datalist["test"]}
    train_subjects = {item["subject"] for item in datalist["training"] + datalist["validation"]}
    with open(out / "eval" / "predictions.csv", newline="") as handle:
        predictions = list(csv.DictReader(handle))
    assert {row["image_id"] for row in predictions} == test_ids
    assert not {row["subject"] for row in predictions} & train_subjects
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["n"] == len(test_ids) >= 2
    assert f"roc_auc            {metrics['roc_auc']:.3f}" in done.stdout  # the printed figures are the saved ones
    assert str(out / "eval") in done.stdout and (out / "models" / "model.pt").is_file()
    report = (out / "report" / "report.html").read_text()
    assert "Synthetic data" in report

    # The explanations of the test scans: their summary is printed and is a section of the report.
    summary = json.loads((out / "explain" / "summary.json").read_text())
    assert summary["n_scans"] == len(test_ids) and summary["settings"]["regions"] == ["truth"]
    assert summary["verdict"]["text"] in done.stdout and "randomisation check" in done.stdout
    assert "What the network looks at" in report and "density gain" in report

    # Run again: nothing is redone, the same metrics come out.
    again = subprocess.run(
        ["bash", str(REPO / "demo.sh")], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "already there" in again.stdout and "already trained" in again.stdout and "already explained" in again.stdout
    assert json.loads((out / "eval" / "metrics.json").read_text()) == metrics
