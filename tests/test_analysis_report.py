"""The HTML report (``analysis.report``) and the ``python -m analysis`` commands that print results."""

from __future__ import annotations

import base64
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT

from analysis import report
from analysis.__main__ import main
from analysis.crossval import summarize_folds
from analysis.figures import FIGURE_FILES

FAST = {"n_resamples": 200, "n_draws": 2000}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The figures of a binary evaluation; stages and external validation appear only with their inputs.
OPTIONAL_SECTIONS = ("explanations", "stages", "external", "comparison")
BINARY_FIGURES = {name: file for name, file in FIGURE_FILES.items() if name not in OPTIONAL_SECTIONS}


def write_eval_dir(path: Path, seed: int = 0, n_subjects: int = 24, prefix: str = "", log: bool = True) -> Path:
    """An evaluation folder as the bundle writes it: predictions.csv and training_log.csv."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    with (path / "predictions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "subject", "label", "prob_AD", "prediction"])
        for s in range(n_subjects):
            label = s % 2
            for v in range(1 + s % 3):
                p = float(1 / (1 + np.exp(-rng.normal(1.0 if label else -1.0, 1.2))))
                writer.writerow([f"{prefix}I{s}{v}", f"{prefix}S{s:03d}", label, f"{p:.6f}", int(p >= 0.5)])
    if log:
        with (path / "training_log.csv").open("w") as f:
            f.write("epoch,train_loss,train_accuracy,val_accuracy,val_loss,lr_head,lr_backbone\n")
            for epoch in range(1, 6):
                f.write(f"{epoch},{0.7 - 0.05 * epoch},{0.5 + 0.05 * epoch},{0.5 + 0.04 * epoch},0.6,0.001,0.0001\n")
    return path


def embedded_images(html: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_evaluation_report_is_self_contained_with_every_figure_and_section(tmp_path):
    eval_dir = write_eval_dir(tmp_path / "eval")
    datalist = tmp_path / "datalist.json"
    items = [{"image": "x", "label": i % 2, "subject": f"T{i}", "image_id": f"T{i}"} for i in range(6)]
    datalist.write_text(json.dumps({"training": items[:4], "validation": items[4:], "test": []}))
    out = tmp_path / "report"
    path = report.write_report(
        out, eval_dir=eval_dir, datalist=datalist, extra_prevalences=[0.2], synthetic=True, **FAST
    )
    html = path.read_text()
    # Every figure is embedded as a PNG data URI and also saved beside the report.
    images = embedded_images(html)
    assert len(images) == len(BINARY_FIGURES) == 5
    assert all(image.startswith(PNG_SIGNATURE) for image in images)
    for filename in BINARY_FIGURES.values():
        assert (out / filename).read_bytes() in images
    # Every section (explanations only with --explain-dir, stages and external validation only with their inputs),
    # and nothing loaded from elsewhere (links to sources are plain hyperlinks).
    for key, title in report.SECTION_TITLES.items():
        assert (f">{title}</h2>" in html) == (key not in OPTIONAL_SECTIONS)
    assert not re.search(r'<(img|script|link|iframe)[^>]+(src|href)="(?!data:)', html)
    assert "<style>" in html
    expected = ["Research use only", "not a medical device", "Synthetic data", "Case-control sampling", "Beta(1, 1)"]
    expected += ["2023 Alzheimer", "PMID 26424328", "PMID 34510246", "Klöppel", "User-specified prevalence 0.2"]
    for text in expected:
        assert text in html, text
    # report.json holds the numbers behind the page.
    data = json.loads((out / "report.json").read_text())
    assert data["kind"] == "evaluation" and data["synthetic"] is True
    assert data["cohort"]["test"]["subjects"] == 24
    assert data["cohort"]["datalist"]["partitions"]["training"]["scans"] == 4
    assert data["metrics"]["scan"]["metrics"]["roc_auc"]["n_resamples_used"] == 200
    assert [row["prevalence"]["value"] for row in data["bayes"]["by_prevalence"]] == [0.108, 0.461, 0.5, 0.2]
    assert data["bayes"]["level"] == "subject"
    assert set(data["figures"]) == set(BINARY_FIGURES)


def test_report_without_training_log_says_so(tmp_path):
    eval_dir = write_eval_dir(tmp_path / "eval", log=False)
    html = report.write_report(tmp_path / "report", eval_dir=eval_dir, **FAST).read_text()
    assert len(embedded_images(html)) == 4
    assert "No training_log.csv" in html
    assert not (tmp_path / "report" / FIGURE_FILES["training"]).exists()


def test_crossval_report_pools_the_folds_and_shows_mean_and_sd(tmp_path):
    cv = tmp_path / "cv"
    folds = []
    for k in range(3):
        eval_dir = write_eval_dir(cv / f"fold_{k}" / "eval", seed=k, n_subjects=10, prefix=f"F{k}")
        folds.append({"fold": k, "datalist": str(tmp_path / "missing.json"), "eval_dir": str(eval_dir)})
    summary = summarize_folds(cv, [(k, Path(f["datalist"])) for k, f in enumerate(folds)])
    (cv / "crossval.json").write_text(json.dumps(summary))
    html = report.write_report(tmp_path / "report", crossval_dir=cv, **FAST).read_text()
    assert len(embedded_images(html)) == 5
    assert "3-fold cross-validation" in html and "mean ± SD" in html
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["kind"] == "cross-validation"
    assert data["metrics"]["subject"]["n"] == 30  # pooled: every fold's subjects
    assert set(data["roc"]["folds"]) == {"fold 0", "fold 1", "fold 2"}
    assert set(data["training_logs"]) == {"fold 0", "fold 1", "fold 2"}


def test_metrics_compare_and_bayes_commands_print_results(tmp_path, capsys):
    a = write_eval_dir(tmp_path / "a", seed=1) / "predictions.csv"
    rows = list(csv.DictReader(a.open()))
    b = tmp_path / "b.csv"
    with b.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in reversed(rows):  # another order, other probabilities
            writer.writerow({**row, "prob_AD": f"{1 - float(row['prob_AD']):.6f}"})
    assert main(["metrics", str(a), "--resamples", "200", "--out", str(tmp_path / "m.json")]) == 0
    assert main(["compare", "--a", str(a), "--b", str(b), "--resamples", "200"]) == 0
    assert main(["bayes", "--counts", "40", "10", "45", "5", "--prevalence", "0.3", "--draws", "2000"]) == 0
    printed = capsys.readouterr().out
    assert "Per scan" in printed and "ROC-AUC" in printed and "resamples used" in printed
    assert "DeLong z =" in printed and "exact McNemar p =" in printed and "Paired subject bootstrap" in printed
    assert "PPV" in printed and "User-specified prevalence 0.3" in printed
    assert json.loads((tmp_path / "m.json").read_text())["subject"]["n"] == 24


@pytest.mark.parametrize(
    "command, option",
    [("metrics", "--out"), ("compare", "--a"), ("bayes", "--prevalence"), ("stages", "--atrophy-bins"),
     ("crossval", "--external-datalist"), ("report", "--external-eval-dir"), ("explain", "--truth-dir"),
     ("scan-report", "--force-qc")],
)  # fmt: skip
def test_every_command_answers_help(command, option):
    result = subprocess.run(
        [sys.executable, "-m", "analysis", command, "-h"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0 and "usage: python -m analysis" in result.stdout
    assert option in result.stdout  # the command's own options, also for the lazily loaded ones


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_report_on_a_test_set_with_one_class_marks_undefined_metrics(tmp_path):
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "predictions.csv").write_text(
        "image_id,subject,label,prob_AD,prediction\na,s1,1,0.7,1\nb,s1,1,0.4,0\nc,s2,1,0.9,1\n"
    )
    html = report.write_report(tmp_path / "report", eval_dir=eval_dir, **FAST).read_text()
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["metrics"]["scan"]["metrics"]["roc_auc"] == {
        "value": None, "ci_low": None, "ci_high": None, "n_resamples_used": 0
    }  # fmt: skip
    assert len(embedded_images(html)) == 4 and "n/a" in html
