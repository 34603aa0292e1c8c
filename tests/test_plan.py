"""The preprocessing plan: one source of defaults, written by ``preprocessing run``, carried by training, and obeyed
by raw inference (same probability as batch preprocessing + inference; contradicting overrides refused)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE_ROOT, REPO_ROOT

from scripts import plan as plan_mod
from scripts.network import VideoResNetClassifier

NON_DEFAULT = {"skull_stripper": "none", "spacing": 2.0, "spatial_size": 32}


def test_defaults_come_from_preprocess_json_only():
    config = json.loads((BUNDLE_ROOT / "configs" / "preprocess.json").read_text())
    settings = plan_mod.default_settings()
    assert settings["spatial_size"] == config["spatial_size"] and settings["spacing"] == config["spacing"]
    assert "load_transforms" not in settings and "qc" not in settings and "imports" not in settings
    from preprocessing.__main__ import build_parser

    args = build_parser().parse_args(["run", "--out", "x", "--nifti-csv", "y.csv"])
    assert (args.spatial_size, args.spacing, args.skull_stripper) == (
        config["spatial_size"], config["spacing"], config["skull_stripper"]
    )  # fmt: skip


def test_unknown_setting_is_refused():
    with pytest.raises(plan_mod.PlanError, match="unknown preprocessing setting"):
        plan_mod.resolve_settings({"spatial_sise": 64})


def test_plan_records_settings_versions_and_refuses_a_second_grid(tmp_path):
    plan = plan_mod.build_plan(NON_DEFAULT)
    assert plan["settings"]["spatial_size"] == 32 and plan["settings"]["crop_margin"] == 3
    assert "synthstrip_weights" not in plan["settings"]  # a local path is not part of the plan
    assert {"monai", "torch", "nibabel"} <= set(plan["versions"]) and plan["qc"]
    assert "scripts.skull_strip.SkullStripd" in plan["chain"] and "CropForegroundd" in plan["chain"]
    plan_mod.write_plan(plan, tmp_path)
    plan_mod.write_plan(plan_mod.build_plan(NON_DEFAULT), tmp_path)  # same settings: a resumed run
    with pytest.raises(plan_mod.PlanError, match=r"spatial_size 32 .*vs 64"):
        plan_mod.write_plan(plan_mod.build_plan({**NON_DEFAULT, "spatial_size": 64}), tmp_path)


def test_synthstrip_weights_are_identified_by_hash(tmp_path):
    weights = tmp_path / "synthstrip.1.pt"
    weights.write_bytes(b"not really weights")
    plan = plan_mod.build_plan({"skull_stripper": "synthstrip", "synthstrip_weights": str(weights)})
    assert plan["skull_stripper_weights"]["file"] == "synthstrip.1.pt"
    assert len(plan["skull_stripper_weights"]["sha256"]) == 64 and str(tmp_path) not in json.dumps(plan)


def test_overrides_that_change_the_model_ready_volume_are_refused():
    plan = plan_mod.build_plan(NON_DEFAULT)
    assert plan_mod.chain_overrides_for_model(plan, {"strip_device": "cpu"})["spatial_size"] == 32
    with pytest.raises(plan_mod.PlanError, match=r"spatial_size 32 vs 128.*--force_preprocess True"):
        plan_mod.chain_overrides_for_model(plan, {"spatial_size": 128})
    with pytest.warns(UserWarning, match="forced"):
        assert plan_mod.chain_overrides_for_model(plan, {"spacing": 1.0}, force=True)["spacing"] == 1.0


# ---------------------------------------------------------------------------------------------------------------
# End to end: batch preprocessing + inference against raw inference, under a non-default plan
# ---------------------------------------------------------------------------------------------------------------


def _brain(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A skull-stripped MNI152 brain (nilearn's template) at 2 mm, slightly varied per seed."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template = load_mni152_template(resolution=2)
    mask = np.asarray(load_mni152_brain_mask(resolution=2).get_fdata()) > 0
    rng = np.random.default_rng(seed)
    data = np.asarray(template.get_fdata(), dtype=np.float32) * (1.0 + 0.02 * seed)
    data = (data + rng.normal(0, 0.01, data.shape).astype(np.float32)) * mask
    return np.clip(data, 0, None), template.affine


def _cli(module: str, *args: str, cwd: Path = REPO_ROOT, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{module} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="module")
def raw_and_model(tmp_path_factory):
    """Three raw files (two brains, one corrupt), their batch-preprocessed volumes, and a model with their plan."""
    root = tmp_path_factory.mktemp("plan_e2e")
    raw = root / "raw"
    raw.mkdir()
    rows = ["path,subject,label"]
    for i in range(2):
        data, affine = _brain(i)
        nib.save(nib.Nifti1Image(data, affine), str(raw / f"brain{i}.nii.gz"))
        rows.append(f"raw/brain{i}.nii.gz,{100 + i:03d}_S_{1000 + i},{'AD' if i else 'CN'}")
    (root / "scans.csv").write_text("\n".join(rows) + "\n")
    prepared = root / "prepared"
    args = ["--skull-stripper", "none", "--spacing", "2", "--spatial-size", "32", "--no-qc", "--workers", "1"]
    _cli("preprocessing", "run", "--nifti-csv", str(root / "scans.csv"), "--out", str(prepared), *args)
    (raw / "broken.nii.gz").write_bytes(b"\x1f\x8b this is not a gzip stream")
    models = root / "models"
    models.mkdir()
    torch.manual_seed(0)
    torch.save(VideoResNetClassifier(weights=None).state_dict(), models / "model.pt")
    (models / "plan.json").write_text((prepared / "plan.json").read_text())
    return root, raw, prepared, models


def _predictions(path: Path) -> dict[str, dict]:
    with path.open(newline="") as f:
        return {row["image_id"]: row for row in csv.DictReader(f)}


def test_batch_run_writes_the_plan_and_qc_columns(raw_and_model):
    _, _, prepared, _ = raw_and_model
    plan = plan_mod.read_plan(prepared)
    assert {k: plan["settings"][k] for k in NON_DEFAULT} == NON_DEFAULT
    with (prepared / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["status"] for row in rows] == ["ok", "ok"], rows
    assert all(row["qc_status"] in ("pass", "warn") for row in rows)


def test_raw_inference_equals_batch_preprocessing_then_inference(raw_and_model, tmp_path):
    root, raw, prepared, models = raw_and_model
    common = ["--ckpt_dir", str(models), "--num_workers", "0", "--device", "cpu"]
    _cli("monai.bundle", "run", "--config_file", "configs/inference.json", "--dataset_dir", str(raw),
         "--output_dir", str(tmp_path / "raw"), *common, cwd=BUNDLE_ROOT)  # fmt: skip
    _cli("monai.bundle", "run", "--config_file", "configs/inference.json", "--dataset_dir", str(prepared / "images"),
         "--output_dir", str(tmp_path / "prepared"), "--raw_input", "False", *common, cwd=BUNDLE_ROOT)  # fmt: skip
    from_raw = _predictions(tmp_path / "raw" / "predictions.csv")
    from_prepared = _predictions(tmp_path / "prepared" / "predictions.csv")
    assert sorted(from_raw) == ["brain0", "brain1", "broken"]  # every file has a row
    assert from_raw["broken"]["status"] == "failed" and from_raw["broken"]["prob_AD"] == ""
    assert "broken.nii.gz" in from_raw["broken"]["file"] and from_raw["broken"]["error"]
    for i, name in enumerate(("brain0", "brain1")):
        batch_name = next(n for n in from_prepared if n.startswith(f"{100 + i:03d}_S_{1000 + i}"))
        assert from_raw[name]["status"] == "ok" and from_raw[name]["qc_status"] in ("pass", "warn")
        assert float(from_raw[name]["prob_AD"]) == pytest.approx(float(from_prepared[batch_name]["prob_AD"]), abs=1e-5)
        assert float(from_raw[name]["prob_CN"]) + float(from_raw[name]["prob_AD"]) == pytest.approx(1.0, abs=1e-5)


def test_an_override_that_contradicts_the_model_plan_is_refused(raw_and_model, tmp_path):
    _, raw, _, models = raw_and_model
    result = _cli("monai.bundle", "run", "--config_file", "configs/inference.json", "--dataset_dir", str(raw),
                  "--ckpt_dir", str(models), "--output_dir", str(tmp_path), "--num_workers", "0",
                  "--preprocess_overrides#spatial_size", "128", cwd=BUNDLE_ROOT, check=False)  # fmt: skip
    assert result.returncode != 0
    last = (result.stdout + result.stderr).strip().splitlines()[-1]
    assert "spatial_size 32 vs 128" in last and "--force_preprocess True" in last, last
    assert not (tmp_path / "predictions.csv").exists()
