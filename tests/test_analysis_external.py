"""External validation (``analysis.external``): internal against external with the drop and its interval, the
report's section (``--external-eval-dir``), and cross-validation's evaluation of every fold's model on an external
test datalist (resumable; a refusal by the bundle is one line naming the fold)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_analysis_multiclass import FAST, write_class_eval_dir

from analysis import crossval, external, report
from analysis.__main__ import main
from analysis.metrics import read_predictions


def test_drop_is_internal_minus_external_with_an_interval(tmp_path):
    write_class_eval_dir(tmp_path / "int", classes=("CN", "AD"), n_subjects=80, skill=3.0)
    write_class_eval_dir(tmp_path / "ext", classes=("CN", "AD"), n_subjects=80, skill=0.5, seed=1, prefix="X")
    internal, outside = read_predictions(tmp_path / "int" / "predictions.csv"), external.read_external(tmp_path / "ext")
    result = external.external_comparison(internal, outside, n_resamples=300)
    assert result["contrast"] == "AD vs CN" and result["n_shared_subjects"] == 0
    assert list(result["scan"]["metrics"]) == list(external.EXTERNAL_METRICS)
    for level in ("scan", "subject"):
        for row in result[level]["metrics"].values():
            assert row["drop"]["value"] == pytest.approx(row["internal"]["value"] - row["external"]["value"])
            assert row["drop"]["ci_low"] <= row["drop"]["value"] <= row["drop"]["ci_high"]
    auc = result["scan"]["metrics"]["roc_auc"]
    assert auc["drop"]["ci_low"] > 0  # a much better internal AUC: the whole interval is a drop
    assert result["scan"]["n_external"] == 120 and result["subject"]["n_external"] == 80
    # The two sets are resampled independently: the drop's interval is wider than either set's own.
    width = {k: auc[k]["ci_high"] - auc[k]["ci_low"] for k in ("internal", "external", "drop")}
    assert width["drop"] > max(width["internal"], width["external"])


def test_same_model_twice_is_no_drop_and_other_classes_are_refused(tmp_path):
    write_class_eval_dir(tmp_path / "a", classes=("CN", "AD"))
    pred = read_predictions(tmp_path / "a" / "predictions.csv")
    result = external.external_comparison(pred, pred, n_resamples=200)
    row = result["scan"]["metrics"]["accuracy"]
    assert row["drop"]["value"] == 0 and row["drop"]["ci_low"] < 0 < row["drop"]["ci_high"]
    assert result["n_shared_subjects"] == pred.n_subjects  # flagged: not independent
    write_class_eval_dir(tmp_path / "b")
    with pytest.raises(ValueError, match=r"classes \['CN', 'AD'\] and external classes \['CN', 'MCI', 'AD'\]"):
        external.external_comparison(pred, external.read_external(tmp_path / "b"))
    with pytest.raises(ValueError, match="has no predictions.csv"):
        external.read_external(tmp_path)


def test_report_shows_internal_and_external_side_by_side(tmp_path, capsys):
    write_class_eval_dir(tmp_path / "eval", classes=("CN", "AD"), skill=2.5)
    write_class_eval_dir(tmp_path / "ext", classes=("CN", "AD"), skill=0.8, seed=3, prefix="X")
    out = tmp_path / "report"
    argv = ["report", "--eval-dir", str(tmp_path / "eval"), "--external-eval-dir", str(tmp_path / "ext")]
    assert main([*argv, "--out", str(out), "--resamples", "200", "--draws", "2000"]) == 0
    html = (out / "report.html").read_text()
    assert "External validation</h2>" in html and "Drop, internal \u2212 external" in html
    assert "External (36 subjects)" in html and "Balanced accuracy" in html
    assert (out / "external_validation.png").is_file() and "external_validation.png" in html
    data = json.loads((out / "report.json").read_text())
    assert data["external"]["sources"]["external"] == str((tmp_path / "ext").resolve())
    assert "External validation." in " ".join(data["limitations"])


def fake_eval(output_dir: Path, prefix: str, skill: float, seed: int) -> None:
    write_class_eval_dir(output_dir, classes=("CN", "AD"), n_subjects=12, prefix=prefix, skill=skill, seed=seed)


class ExternalBundle:
    """Records the bundle runs and writes what they would; ``refuse`` makes the external evaluation of that fold
    fail as the bundle does on leaked test scans (its last line ``error: ...``)."""

    def __init__(self, refuse: int | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.refuse = refuse

    def __call__(self, command, cwd, log_path) -> int:
        output = Path(command[command.index("--output_dir") + 1])
        fold = output.parent.name
        self.calls.append((fold, f"{command[4]} {output.name}"))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if output.name == external.EXTERNAL_DIR:
            assert command[command.index("--datalist") + 1].endswith("external.json")
            if self.refuse is not None and fold == f"fold_{self.refuse}":
                log_path.write_text("Traceback ...\nerror: test scan X1 shares subject 002_S_0001 with training.\n")
                return 1
            fake_eval(output, "X", skill=0.5, seed=7)  # the same external scans for every fold
        elif command[4] == "evaluating":
            k = int(fold.split("_")[1])
            fake_eval(output, f"F{k}", skill=2.0, seed=k)
        log_path.write_text("ok\n")
        return 0


def test_crossval_evaluates_every_fold_on_the_external_set_and_resumes(tmp_path):
    folds = tmp_path / "folds"
    folds.mkdir()
    for k in (0, 1):
        (folds / f"fold_{k}.json").write_text("{}")
    (tmp_path / "external.json").write_text("{}")
    out, bundle, lines = tmp_path / "cv", ExternalBundle(), []
    options = {"external_datalist": tmp_path / "external.json", "external_dataset_dir": tmp_path}
    summary = crossval.run_crossval(folds, tmp_path, out, runner=bundle, log=lines.append, **options)
    stages = ("training eval", "evaluating eval", "evaluating eval_external")
    assert bundle.calls == [(f"fold_{k}", stage) for k in (0, 1) for stage in stages]
    ext = summary["external"]
    assert ext["datalist"] == str((tmp_path / "external.json").resolve())
    assert [fold["n_scans"] for fold in ext["folds"]] == [18, 18]
    assert ext["pooled"]["n_scans"] == 36 and ext["pooled"]["n_subjects"] == 12  # each fold's model, same people
    assert summary["pooled"]["n_scans"] == 36 and summary["pooled"]["n_subjects"] == 24
    assert "Pooled predictions, internal (test folds) | external (all folds' models):" in lines[-1]
    rows = list(csv.DictReader((out / "crossval.csv").open()))
    assert [r["fold"] for r in rows if r["level"] == "external_scan"] == ["0", "1", "mean", "std", "pooled"]
    # Resuming: nothing runs again; a lost external evaluation is redone alone.
    bundle.calls.clear()
    crossval.run_crossval(folds, tmp_path, out, runner=bundle, log=lines.append, **options)
    assert bundle.calls == []
    (out / "fold_1" / external.EXTERNAL_DIR / "metrics.json").unlink()
    crossval.run_crossval(folds, tmp_path, out, runner=bundle, log=lines.append, **options)
    assert bundle.calls == [("fold_1", "evaluating eval_external")]
    # The cross-validation report shows the pooled internal and external results without being told.
    html = report.write_report(tmp_path / "report", crossval_dir=out, **FAST).read_text()
    assert "External validation</h2>" in html and "External (12 subjects)" in html


def test_crossval_reports_a_refused_external_evaluation_in_one_line(tmp_path, capsys):
    folds = tmp_path / "folds"
    folds.mkdir()
    (folds / "fold_0.json").write_text("{}")
    (tmp_path / "external.json").write_text("{}")
    options = {"external_datalist": tmp_path / "external.json", "external_dataset_dir": tmp_path}
    with pytest.raises(crossval.CrossvalError) as caught:
        crossval.run_crossval(folds, tmp_path, tmp_path / "cv", runner=ExternalBundle(refuse=0), log=print, **options)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("fold 0 external evaluation refused: test scan X1 shares subject 002_S_0001")
    with pytest.raises(crossval.CrossvalError, match="needs --external-dataset-dir"):
        crossval.run_crossval(folds, tmp_path, tmp_path / "cv", external_datalist=tmp_path / "external.json")


def test_crossval_command_passes_the_external_options(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(crossval, "run_crossval", lambda *args, **kwargs: seen.update(kwargs))
    argv = ["crossval", "--folds-dir", str(tmp_path), "--dataset-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    argv += ["--external-datalist", "ext.json", "--external-dataset-dir", "ext_data", "--num_workers", "0"]
    assert main(argv) == 0
    assert seen["external_datalist"] == Path("ext.json") and seen["external_dataset_dir"] == Path("ext_data")
    outside = (Path("/e.json"), Path("/x"))
    commands = crossval.fold_commands(Path("/f/fold_0.json"), Path("/d"), Path("/o/fold_0"), ["--weights", "none"],
                                      "py", outside)  # fmt: skip
    command = commands["evaluating_external"]
    assert command[command.index("--datalist") + 1] == "/e.json" and command[command.index("--dataset_dir") + 1] == "/x"
    assert command[command.index("--output_dir") + 1] == "/o/fold_0/eval_external"
    assert command[command.index("--ckpt_dir") + 1] == "/o/fold_0/models" and "--weights" not in command
    assert np.all([c in commands for c in ("training", "evaluating")])


@pytest.mark.slow
def test_real_crossval_evaluates_each_fold_model_on_an_external_cohort(tmp_path, monkeypatch):
    from test_analysis_crossval import BUNDLE_ARGS, write_folds
    from tiny_data import write_tiny_dataset

    monkeypatch.setenv("WANDB_MODE", "disabled")
    folds_dir = write_folds(tmp_path / "data")
    other = tmp_path / "other"
    datalist = json.loads(write_tiny_dataset(other, {"test": 4}, size=16, seed=5).read_text())
    for entry in datalist["test"]:  # another cohort: other people, other images
        entry["subject"], entry["image_id"] = f"OTHER_{entry['subject']}", f"O{entry['image_id']}"
    (other / "external.json").write_text(json.dumps(datalist))
    out = tmp_path / "cv"
    options = {"external_datalist": other / "external.json", "external_dataset_dir": other}
    overrides = crossval.bundle_overrides(1, BUNDLE_ARGS)
    summary = crossval.run_crossval(folds_dir, tmp_path / "data", out, overrides, log=lambda _: None, **options)
    assert [fold["n_scans"] for fold in summary["external"]["folds"]] == [4, 4]
    assert summary["external"]["pooled"]["n_subjects"] == 4
    assert (out / "fold_1" / external.EXTERNAL_DIR / "predictions.csv").is_file()

    # A training subject of fold 0 in the external test set: the bundle refuses, crossval says so in one line (the
    # fold's external evaluation is redone, nothing is retrained).
    training_subject = json.loads((folds_dir / "fold_0.json").read_text())["training"][0]["subject"]
    datalist["test"][0]["subject"] = training_subject
    (other / "leaky.json").write_text(json.dumps(datalist))
    options["external_datalist"] = other / "leaky.json"
    (out / "fold_0" / external.EXTERNAL_DIR / "metrics.json").unlink()
    with pytest.raises(crossval.CrossvalError, match=r"^fold 0 external evaluation refused: [^\n]+$"):
        crossval.run_crossval(folds_dir, tmp_path / "data", out, overrides, log=lambda _: None, **options)
