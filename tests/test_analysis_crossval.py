"""Cross-validation through the bundle (``analysis.crossval``): command lines, resumption, the fold summary, and one
real run on tiny volumes that is resumed without retraining a finished fold."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLE_ROOT
from tiny_data import write_tiny_dataset

from analysis import crossval
from analysis.__main__ import main
from scripts import cohort

BUNDLE_ARGS = ["--weights", "none", "--use_wandb", "False", "--num_workers", "0"]


def write_folds(root: Path, k: int = 2, subjects: int = 8, scans_per_subject: int = 2, size: int = 16) -> Path:
    """Tiny volumes and ``folds/fold_<k>.json`` made by the project's own subject-level k-fold split."""
    datalist = write_tiny_dataset(root, {"all": subjects}, scans_per_subject=scans_per_subject, size=size)
    scans = json.loads(datalist.read_text())["all"]
    for scan in scans:
        scan["image"] = str(root / scan["image"])
    for index, fold in enumerate(cohort.kfold_datalists(scans, k=k, val_fraction=0.25, seed=0)):
        cohort.write_datalist(fold, root / "folds" / f"fold_{index}.json", dataset_dir=root)
    return root / "folds"


def fake_predictions(eval_dir: Path, seed: int) -> None:
    """What the bundle's evaluation writes, for runs without the bundle."""
    rng = np.random.default_rng(seed)
    eval_dir.mkdir(parents=True, exist_ok=True)
    with (eval_dir / "predictions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "subject", "label", "prob_AD", "prediction"])
        for i in range(12):
            label, p = i % 2, float(rng.uniform())
            writer.writerow([f"F{seed}I{i}", f"F{seed}S{i // 2 * 2 + label}", label, f"{p:.4f}", int(p >= 0.5)])
    (eval_dir / "metrics.json").write_text("{}")


class FakeBundle:
    """A runner that records the commands and writes what training and evaluation would write."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    def __call__(self, command, cwd, log_path) -> int:
        stage = command[4]
        fold_dir = Path(command[command.index("--ckpt_dir") + 1]).parent
        self.calls.append((fold_dir.name, stage))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"{stage} log\n")
        if stage == self.fail:
            return 3
        if stage == "training":
            (fold_dir / "models").mkdir(parents=True, exist_ok=True)
            (fold_dir / "models" / "checkpoint_epoch=1.pt").write_text("")
        else:
            fake_predictions(fold_dir / "eval", seed=int(fold_dir.name.split("_")[1]))
        return 0


@pytest.fixture
def fake_folds(tmp_path) -> Path:
    folds = tmp_path / "folds"
    folds.mkdir()
    for k in (0, 1, 2, 10):
        (folds / f"fold_{k}.json").write_text("{}")
    (folds / "notes.json").write_text("{}")
    return folds


def test_find_folds_orders_by_fold_number(fake_folds, tmp_path):
    assert [k for k, _ in crossval.find_folds(fake_folds)] == [0, 1, 2, 10]
    with pytest.raises(FileNotFoundError, match="fold_<k>.json"):
        crossval.find_folds(tmp_path)


def test_overrides_and_commands():
    overrides = crossval.bundle_overrides(3, BUNDLE_ARGS)
    assert overrides[:2] == ["--train#trainer#max_epochs", "3"]
    with pytest.raises(ValueError, match="pairs"):
        crossval.bundle_overrides(None, ["--weights"])
    with pytest.raises(ValueError, match="pairs"):
        crossval.bundle_overrides(None, ["weights", "none"])
    commands = crossval.fold_commands(Path("/f/fold_0.json"), Path("/data"), Path("/out/fold_0"), overrides, "py")
    train, evaluate = commands["training"], commands["evaluating"]
    assert train[:5] == ["py", "-m", "monai.bundle", "run", "training"]
    assert train[train.index("--config_file") + 1] == "configs/train.json"
    assert train[train.index("--ckpt_dir") + 1] == "/out/fold_0/models"
    assert train[train.index("--output_dir") + 1] == "/out/fold_0/eval"
    assert "--weights" in train
    assert evaluate[4] == "evaluating"
    assert evaluate[evaluate.index("--config_file") + 1] == "['configs/train.json','configs/evaluate.json']"
    assert evaluate[evaluate.index("--datalist") + 1] == "/f/fold_0.json"
    assert "--weights" not in evaluate  # evaluate.json builds the network without downloading weights
    assert evaluate[evaluate.index("--num_workers") + 1] == "0"


def test_resumes_by_stage_with_a_fake_bundle(fake_folds, tmp_path):
    out = tmp_path / "cv"
    bundle = FakeBundle()
    summary = crossval.run_crossval(fake_folds, tmp_path, out, runner=bundle, log=lambda _: None)
    assert bundle.calls == [(f"fold_{k}", s) for k in (0, 1, 2, 10) for s in ("training", "evaluating")]
    assert summary["k"] == 4
    # Finished folds are skipped; a fold with training done but no metrics is only evaluated; a fold whose training
    # never finished is trained again (the bundle then resumes from its checkpoints).
    (out / "fold_1" / "eval" / "metrics.json").unlink()
    (out / "fold_2" / "eval" / "metrics.json").unlink()
    (out / "fold_2" / "training.done").unlink()
    bundle.calls.clear()
    crossval.run_crossval(fake_folds, tmp_path, out, runner=bundle, log=lambda _: None)
    assert bundle.calls == [("fold_1", "evaluating"), ("fold_2", "training"), ("fold_2", "evaluating")]


def test_a_failed_training_stops_with_its_log_and_leaves_no_marker(fake_folds, tmp_path):
    out = tmp_path / "cv"
    with pytest.raises(crossval.CrossvalError, match="fold 0 training failed .*train.log"):
        crossval.run_crossval(fake_folds, tmp_path, out, runner=FakeBundle(fail="training"), log=lambda _: None)
    assert not (out / "fold_0" / "training.done").exists()


def test_summary_is_mean_and_sample_std_over_folds(fake_folds, tmp_path):
    out = tmp_path / "cv"
    lines: list[str] = []
    summary = crossval.run_crossval(fake_folds, tmp_path, out, runner=FakeBundle(), log=lines.append)
    accuracies = [fold["scan"]["accuracy"] for fold in summary["folds"]]
    stats = summary["scan_mean_std"]["accuracy"]
    assert stats["mean"] == pytest.approx(np.mean(accuracies))
    assert stats["std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert f"accuracy: {100 * stats['mean']:.2f}% ± {100 * stats['std']:.2f}" in lines[-1]
    assert json.loads((out / "crossval.json").read_text())["scan_mean_std"]["accuracy"] == stats
    rows = list(csv.DictReader((out / "crossval.csv").open()))
    scan_rows = [r for r in rows if r["level"] == "scan"]
    assert [r["fold"] for r in scan_rows] == ["0", "1", "2", "10", "mean", "std"]
    assert float(scan_rows[-1]["accuracy"]) == pytest.approx(stats["std"])


def test_cli_passes_extra_pairs_to_the_bundle(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(crossval, "run_crossval", lambda *args, **kwargs: seen.update(overrides=args[3]))
    argv = ["crossval", "--folds-dir", str(tmp_path), "--dataset-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*argv, "--epochs", "2", *BUNDLE_ARGS]) == 0
    assert seen["overrides"] == ["--train#trainer#max_epochs", "2", *BUNDLE_ARGS]
    with pytest.raises(SystemExit):
        main([*argv, "--weights"])  # a key without a value


@pytest.mark.slow
def test_real_crossval_resumes_without_retraining_a_finished_fold(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    dataset = tmp_path / "data"
    folds_dir = write_folds(dataset)
    out = tmp_path / "cv"
    calls: list[str] = []

    def recording(command, cwd, log_path):
        assert Path(cwd) == BUNDLE_ROOT and command[0] == sys.executable
        calls.append(f"{Path(command[command.index('--ckpt_dir') + 1]).parent.name} {command[4]}")
        return crossval.run_logged(command, cwd, log_path)

    overrides = crossval.bundle_overrides(1, BUNDLE_ARGS)
    summary = crossval.run_crossval(folds_dir, dataset, out, overrides, runner=recording, log=lambda _: None)
    assert calls == ["fold_0 training", "fold_0 evaluating", "fold_1 training", "fold_1 evaluating"]
    assert summary["k"] == 2
    for fold in summary["folds"]:
        assert fold["n_scans"] == 8 and fold["n_subjects"] == 4
        assert 0 <= fold["scan"]["accuracy"] <= 1
    checkpoints = sorted(out.glob("fold_*/models/*.pt"))
    assert {p.name for p in checkpoints} >= {"checkpoint_epoch=1.pt", "model.pt"}
    mtimes = {p: p.stat().st_mtime_ns for p in checkpoints}
    assert (out / "fold_0" / "eval" / "training_log.csv").is_file()

    # Run again, deleting nothing: no training and no evaluation starts, and the summary is the same.
    calls.clear()
    again = crossval.run_crossval(folds_dir, dataset, out, overrides, runner=recording, log=lambda _: None)
    assert calls == []
    assert again["folds"] == summary["folds"]
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == mtimes

    # A fold whose evaluation was lost is evaluated again from its trained model, not retrained.
    (out / "fold_1" / "eval" / "metrics.json").unlink()
    crossval.run_crossval(folds_dir, dataset, out, overrides, runner=recording, log=lambda _: None)
    assert calls == ["fold_1 evaluating"]
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == mtimes

    # The cross-validation report reads this folder.
    from analysis import report

    html = report.write_report(tmp_path / "report", crossval_dir=out, n_resamples=100, n_draws=2000).read_text()
    assert html.count('src="data:image/png;base64,') == 5
    assert "2-fold cross-validation" in html
