"""Model-zoo style checks of the bundle: network in/out against metadata, TorchScript export, workflow properties."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import BUNDLE_ROOT, bundle_cli
from monai.bundle import ConfigWorkflow
from tiny_data import write_tiny_dataset

from scripts.checkpoints import model_architecture
from scripts.network import VideoResNetClassifier

pytestmark = pytest.mark.slow
CONFIGS = BUNDLE_ROOT / "configs"


@pytest.mark.parametrize("config", ["configs/inference.json", "configs/train.json"])
def test_verify_net_in_out_at_full_size(config):
    # The metadata's 128³ input goes through the network defined in each config.
    bundle_cli(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        config,
        "--weights",
        "none",
        "--device",
        "cpu",
    )


def test_torchscript_export_gives_the_same_probabilities(tmp_path):
    torch.manual_seed(0)
    model = VideoResNetClassifier(weights=None).eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    bundle_cli(
        "ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"),
        "--ckpt_file", str(tmp_path / "model.pt"),
        "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json",
    )  # fmt: skip
    extra = {"metadata.json": "", "inference.json": ""}
    exported = torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra).eval()
    assert (
        json.loads(extra["metadata.json"])["version"] == json.loads((CONFIGS / "metadata.json").read_text())["version"]
    )
    volume = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = torch.softmax(model(volume), dim=1)
        actual = torch.softmax(exported(volume), dim=1)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected, torch.full_like(expected, 0.5))  # a real, non-trivial prediction


def test_train_workflow_has_every_required_property(tmp_path):
    write_tiny_dataset(tmp_path, {"training": 2, "validation": 2, "test": 2}, size=16)
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        dataset_dir=str(tmp_path),
        weights="none",
        use_wandb=False,
        num_workers=0,
        ckpt_dir=str(tmp_path / "models"),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.max_epochs == 50 and workflow.val_interval == 1


def test_infer_workflow_has_every_required_property(tmp_path):
    write_tiny_dataset(tmp_path, {"test": 1}, size=16)
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        dataset_dir=str(tmp_path / "images"),
    )
    workflow.initialize()
    assert workflow.check_properties() == []


def test_network_is_defined_identically_for_training_and_inference():
    train = json.loads((CONFIGS / "train.json").read_text())
    infer = json.loads((CONFIGS / "inference.json").read_text())
    train_net = {k: v for k, v in train["network_def"].items() if k != "weights"}
    infer_net = {k: v for k, v in infer["network_def"].items() if k != "weights"}
    assert train_net == infer_net
    for key in ("trainable", "num_classes"):
        assert train[key] == infer[key], key
    # Inference builds the architecture of the model file, and training's default when there is no file yet.
    assert infer["arch"] == "$scripts.checkpoints.model_architecture(@model_file)"
    assert model_architecture(CONFIGS / "no_such_model.pt") == train["arch"]
    assert infer["network_def"]["weights"] is None  # inference loads model.pt, never the video weights
    # Validation/test and inference normalise the same way (z-normalisation only).
    assert infer["load"] == train["train"]["deterministic_transforms"]
    assert infer["normalization"] == train["train"]["normalization"]
