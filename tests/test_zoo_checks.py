"""What the MONAI model zoo's ``ci/verify_bundle.py`` checks in ``full`` mode, redone with MONAI's own functions on a
copy of the bundle laid out as a zoo reviewer would have it (with a ``models/model.pt``): required files, version and
changelog, metadata against the schema, the network's input/output, TorchScript export, and the inference
workflow's properties. Plus what a zoo reviewer reads: the data license, the bundle commands, a metadata description
that follows the real chain."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUNDLE_ROOT
from tiny_data import write_tiny_dataset

CONFIGS = BUNDLE_ROOT / "configs"

# Run in a separate process from inside the bundle copy (python -c puts the working folder first on sys.path),
# so the copy's own ``scripts`` package is the one the configs import.
ZOO_STEPS = r"""
import json, os
import torch
from monai.bundle import ckpt_export, create_workflow, verify_metadata, verify_net_in_out
from monai.bundle.properties import InferProperties, MetaProperties

root = os.getcwd()
for required in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):
    assert os.path.isfile(os.path.join(root, required)), required
print("directory ok")
meta = json.load(open("configs/metadata.json"))
assert meta["version"] in meta["changelog"], "version missing from changelog"
print("version ok")
verify_metadata(meta_file="configs/metadata.json", filepath="eval/schema.json")
print("metadata ok")
verify_net_in_out(net_id="network_def", meta_file="configs/metadata.json", config_file="configs/inference.json",
                  bundle_root=root)
print("net in/out ok")
ckpt_export(net_id="network_def", filepath="models/verify_model.ts", ckpt_file="models/model.pt",
            meta_file="configs/metadata.json", config_file="configs/inference.json", bundle_root=root)
torch.jit.load("models/verify_model.ts")
print("torchscript ok")
workflow = create_workflow(workflow_type="inference", bundle_root=root, config_file="configs/inference.json",
                           meta_file="configs/metadata.json", logging_file="configs/logging.conf",
                           dataset_dir="data/images")  # inference refuses an empty folder, so one tiny scan is there
workflow.properties = {**MetaProperties, **InferProperties}
problems = workflow.check_properties()
assert not problems, problems
print("properties ok")
"""


@pytest.fixture(scope="module")
def zoo_bundle(tmp_path_factory) -> Path:
    """The bundle copied to ``models/ad_t1_mri_r3d18_classification`` with an untrained ``model.pt`` (the zoo's own
    CI makes the same stand-in when weights are absent) and the metadata schema where ``verify_metadata`` caches it
    (the schema's address cannot be reached offline)."""
    target = tmp_path_factory.mktemp("zoo") / "models" / "ad_t1_mri_r3d18_classification"
    shutil.copytree(BUNDLE_ROOT, target, ignore=shutil.ignore_patterns("__pycache__", "eval", "*.pt", "*.ts"))
    (target / "eval").mkdir()
    shutil.copy(BUNDLE_ROOT / "docs" / "metadata_schema.json", target / "eval" / "schema.json")
    save = (
        "import torch; from scripts.network import VideoResNetClassifier as N; torch.manual_seed(0); "
        "torch.save(N(weights=None).state_dict(), 'models/model.pt')"
    )
    subprocess.run([sys.executable, "-c", save], cwd=target, check=True)
    write_tiny_dataset(target / "data", {"test": 1}, size=16)
    return target


@pytest.mark.slow
def test_full_mode_zoo_checks_pass(zoo_bundle):
    result = subprocess.run([sys.executable, "-c", ZOO_STEPS], cwd=zoo_bundle, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    steps = [line for line in result.stdout.splitlines() if line.endswith(" ok")]
    assert steps == [f"{s} ok" for s in ("directory", "version", "metadata", "net in/out", "torchscript", "properties")]


def test_the_zoo_checks_fail_without_a_model_file(zoo_bundle, tmp_path):
    # The directory step must really look: without models/model.pt the copy is refused.
    copy = tmp_path / "no_model"
    shutil.copytree(zoo_bundle, copy, ignore=shutil.ignore_patterns("*.pt", "*.ts"))
    first_step = ZOO_STEPS.split('print("directory ok")')[0]
    result = subprocess.run([sys.executable, "-c", first_step], cwd=copy, capture_output=True, text=True)
    assert result.returncode != 0 and "models/model.pt" in result.stderr


def test_reviewer_documents_are_in_the_bundle():
    license_text = (BUNDLE_ROOT / "docs" / "data_license.txt").read_text()
    for needed in ("ADNI", "Data Use Agreement", "ida.loni.usc.edu", "redistribut"):
        assert needed in license_text, needed
    card = (BUNDLE_ROOT / "docs" / "README.md").read_text()
    assert "## MONAI Bundle Commands" in card
    commands = card.split("## MONAI Bundle Commands")[1].split("\n## ")[0]
    for command in ("run training", "run evaluating", "configs/inference.json", "multi_gpu_train.json", "ckpt_export"):
        assert command in commands, command
    assert (BUNDLE_ROOT / "models" / "README.md").is_file()
    assert not (BUNDLE_ROOT / ".benchmark").exists()


def test_metadata_describes_the_chain_in_its_real_order():
    description = json.loads((CONFIGS / "metadata.json").read_text())["description"]
    steps = json.loads((CONFIGS / "preprocess.json").read_text())["volume_transforms"]
    words = {  # the phrase the description uses for each step of the chain
        "CheckVolumed": "refuse what is not one 3D volume",
        "ZeroBackgroundd": "negative background",
        "Orientationd": "reorient to RAS",
        "SkullStripd": "skull-strip",
        "N4BiasCorrectiond": "N4",
        "ResampleToSpacingd": "resample",
        "CropForegroundd": "crop to the brain",
        "CubicResized": "resize to 128x128x128",
        "ScaleInsideMaskd": "inside the brain mask to 0-1",
    }
    names = [step["_target_"].split(".")[-1] for step in steps]
    assert set(names) == set(words), "a step of preprocess.json is not named in the check"
    positions = [description.find(words[name]) for name in names]
    assert -1 not in positions, dict(zip(names, positions, strict=True))
    assert positions == sorted(positions), "metadata.json describes the chain in another order than preprocess.json"


def test_metadata_says_the_network_returns_logits():
    data_format = json.loads((CONFIGS / "metadata.json").read_text())["network_data_format"]
    assert data_format["outputs"]["pred"]["type"] == "logits" and data_format["outputs"]["pred"]["value_range"] == []
    assert data_format["post_processed_outputs"]["pred"]["type"] == "probabilities"
    inference = json.loads((CONFIGS / "inference.json").read_text())
    activations = [t for t in inference["postprocessing"]["transforms"] if t["_target_"] == "Activationsd"]
    assert activations and activations[0]["softmax"] is True
