"""The bundle's training, evaluation and inference workflows, run through the real ``python -m monai.bundle`` CLI
on tiny volumes written by the tests (32³ instead of 128³, a few epochs)."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import bundle_cli
from tiny_data import write_tiny_dataset

from preprocessing.benchmark import head_phantom

pytestmark = pytest.mark.slow

TRAIN = "configs/train.json"
EVALUATE = "['configs/train.json','configs/evaluate.json']"


def run_args(dataset: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset_dir", str(dataset), "--ckpt_dir", str(run_dir / "models"), "--output_dir", str(run_dir / "eval"),
        "--weights", "none", "--use_wandb", "False", "--num_workers", "0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_dataset")
    write_tiny_dataset(root, {"training": 4, "validation": 2, "test": 2}, scans_per_subject=1, size=32)
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("trained")
    result = bundle_cli(
        "run", "training", "--config_file", TRAIN, *run_args(dataset, run_dir, "--train#trainer#max_epochs", "2")
    )
    return run_dir, result


def test_training_saves_three_kinds_of_checkpoint(trained):
    run_dir, result = trained
    models = run_dir / "models"
    # Two per-epoch checkpoints are kept, so a newest one broken by a crash can be skipped when resuming.
    names = sorted(p.name for p in models.iterdir())
    expected = ["best_loss_model.pt", "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "model.pt"]
    expected.append("training_data.json")  # the external-validation record (scripts.external)
    assert names == expected
    best = torch.load(models / "model.pt", weights_only=True)
    assert best["net.fc.weight"].shape == (2, 512) and best["net.stem.0.weight"].shape == (64, 1, 3, 7, 7)
    epoch = torch.load(models / "checkpoint_epoch=2.pt", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer", "early_stopping"} <= set(epoch)
    assert epoch["trainer"]["iteration"] == 4  # 2 epochs x (4 scans / batch 2)
    assert [g["lr"] for g in epoch["optimizer"]["param_groups"]] == pytest.approx([6.545e-4, 6.545e-5], rel=1e-3)
    log = result.stdout + result.stderr
    assert "total parameters: 33,148,482; trainable: 24,909,826 (75.15%); frozen: 8,238,656" in log
    with (run_dir / "eval" / "training_log.csv").open() as f:
        epochs = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in epochs] == [1, 2]
    assert [float(row["lr_head"]) for row in epochs] == pytest.approx([1e-3, 9.045e-4], rel=1e-3)
    assert all(0.0 <= float(row["val_accuracy"]) <= 1.0 and float(row["val_loss"]) > 0 for row in epochs)


def test_evaluating_writes_metrics_and_per_scan_predictions(trained, dataset):
    run_dir, _ = trained
    out_card = run_dir / "eval_card"
    out_zoo = run_dir / "eval_zoo"
    common = ["--dataset_dir", str(dataset), "--ckpt_dir", str(run_dir / "models"), "--num_workers", "0"]
    bundle_cli("run", "evaluating", "--config_file", EVALUATE, *common, "--output_dir", str(out_card))
    bundle_cli("run", "--config_file", EVALUATE, *common, "--output_dir", str(out_zoo))

    metrics = json.loads((out_card / "metrics.json").read_text())
    expected_keys = {"accuracy", "balanced_accuracy", "precision", "recall", "sensitivity", "specificity", "f1"}
    assert expected_keys | {"roc_auc", "confusion_matrix", "n"} <= set(metrics)
    assert metrics["n"] == 2 and metrics["n_AD"] == 1 and metrics["classes"] == ["CN", "AD"]
    assert sum(map(sum, metrics["confusion_matrix"]["rows_true_cols_pred"])) == 2
    with (out_card / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    test_items = json.loads((dataset / "datalist.json").read_text())["test"]
    assert [r["image_id"] for r in rows] == [item["image_id"] for item in test_items]
    assert [int(r["label"]) for r in rows] == [item["label"] for item in test_items]
    for row in rows:
        assert 0.0 <= float(row["prob_AD"]) <= 1.0
        assert float(row["prob_CN"]) + float(row["prob_AD"]) == pytest.approx(1.0, abs=1e-5)
        assert int(row["prediction"]) == int(float(row["prob_AD"]) >= 0.5)
    # Both command forms evaluate the same model the same way.
    assert (out_zoo / "predictions.csv").read_text() == (out_card / "predictions.csv").read_text()


def test_inference_writes_softmax_probabilities(trained, dataset):
    run_dir, _ = trained
    out = run_dir / "infer"
    bundle_cli(
        "run", "--config_file", "configs/inference.json", "--dataset_dir", str(dataset / "images"),
        "--ckpt_dir", str(run_dir / "models"), "--output_dir", str(out), "--num_workers", "0", "--raw_input", "False",
    )  # fmt: skip
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 8
    for row in rows:
        assert Path(row["file"]).name == row["image_id"] + ".nii.gz" and row["status"] == "ok"
        assert float(row["prob_CN"]) + float(row["prob_AD"]) == pytest.approx(1.0, abs=1e-5)
        assert 0.0 < float(row["prob_AD"]) < 1.0  # probabilities, not one-hot
        assert row["prediction"] == ("AD" if float(row["prob_AD"]) > 0.5 else "CN")


def test_inference_from_raw_t1_runs_the_declared_preprocessing(trained, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    to_psr = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(("P", "S", "R"))
    )
    for seed in (0, 1):
        image, brain, affine = head_phantom(shape=(72, 88, 72), spacing=2.5, seed=seed)
        stripped = np.where(brain, image, 0).astype(np.float32)  # already skull-stripped: --..#skull_stripper none
        nib.save(nib.Nifti1Image(stripped, affine).as_reoriented(to_psr), str(raw / f"scan{seed}.nii.gz"))
    out = tmp_path / "infer_raw"
    result = bundle_cli(
        "run", "--config_file", "configs/inference.json", "--dataset_dir", str(raw), "--force_qc", "True",
        "--preprocess_overrides#skull_stripper", "none", "--preprocess_overrides#spatial_size", "32",
        "--ckpt_dir", str(trained[0] / "models"), "--output_dir", str(out), "--num_workers", "0",
    )  # fmt: skip
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [Path(r["file"]).name for r in rows] == ["scan0.nii.gz", "scan1.nii.gz"]
    assert all(float(r["prob_CN"]) + float(r["prob_AD"]) == pytest.approx(1.0, abs=1e-5) for r in rows)
    assert all(r["qc_status"] in ("pass", "warn", "fail") for r in rows)  # judged, and forced through if it failed
    assert "N4" not in result.stderr  # no warnings or errors from the chain


def test_one_epoch_resume_one_epoch_equals_two_epochs(trained, dataset, tmp_path):
    reference = torch.load(trained[0] / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    bundle_cli(
        "run", "training", "--config_file", TRAIN, *run_args(dataset, tmp_path, "--train#trainer#max_epochs", "1")
    )
    assert (tmp_path / "models" / "checkpoint_epoch=1.pt").exists()
    resumed = bundle_cli("run", "--config_file", TRAIN, *run_args(dataset, tmp_path, "--train#trainer#max_epochs", "2"))
    assert "Resuming training from" in resumed.stdout + resumed.stderr
    result = torch.load(tmp_path / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    for name, value in reference["model"].items():
        assert torch.equal(value, result["model"][name]), name
    assert result["trainer"] == reference["trainer"]
    assert result["early_stopping"] == reference["early_stopping"]
    assert result["lr_scheduler"]["last_epoch"] == reference["lr_scheduler"]["last_epoch"] == 2
    for a, b in zip(reference["optimizer"]["state"].values(), result["optimizer"]["state"].values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    best_reference = torch.load(trained[0] / "models" / "model.pt", weights_only=True)
    best_resumed = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(best_reference[k], best_resumed[k]) for k in best_reference)


def test_subject_in_two_partitions_is_refused(dataset, tmp_path):
    datalist = json.loads((dataset / "datalist.json").read_text())
    leaked = dict(datalist["training"][0], image_id="LEAK")
    datalist["test"].append(leaked)
    bad = tmp_path / "leaky.json"
    bad.write_text(json.dumps(datalist))
    result = bundle_cli(
        "run", "training", "--config_file", TRAIN, *run_args(dataset, tmp_path, "--datalist", str(bad)), check=False
    )
    assert result.returncode != 0
    assert f"{leaked['subject']} (test/training)" in result.stderr
    assert not (tmp_path / "models").exists()


def test_non_finite_losses_are_skipped_then_stop_training(tmp_path):
    dataset = tmp_path / "nan_data"
    write_tiny_dataset(
        dataset,
        {"training": 4, "validation": 2, "test": 0},
        size=16,
        nan_image_ids=("I0010", "I0020", "I0030", "I0040"),
    )
    result = bundle_cli(
        "run", "training", "--config_file", TRAIN,
        *run_args(dataset, tmp_path, "--train#trainer#max_epochs", "1", "--max_nonfinite_losses", "2"), check=False,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "2 non-finite losses in a row" in log
    assert "the update was skipped" in log and "I0010" in log
    assert not list((tmp_path / "models").glob("checkpoint_epoch=*.pt"))


def test_training_only_the_head_stays_finite(dataset, tmp_path):
    result = bundle_cli(
        "run", "training", "--config_file", TRAIN,
        *run_args(dataset, tmp_path, "--trainable", "fc", "--train#trainer#max_epochs", "2"),
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert "trainable: 1,026 (0.00%)" in log
    assert "Non-finite loss" not in log
    state = torch.load(tmp_path / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
