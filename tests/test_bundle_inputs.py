"""Wrong bundle inputs (datalist, --weights, checkpoints) stop the real ``python -m monai.bundle`` CLI with one line
naming the input, and a broken newest epoch checkpoint is skipped when resuming. Tiny 16³ volumes throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import BUNDLE_ROOT
from ignite.engine import Engine
from tiny_data import write_tiny_dataset

from scripts.checkpoints import ModelCheckpointLoader
from scripts.data import BundleInputError, validate_datalist
from scripts.handlers import ResumeFromLatestCheckpoint
from scripts.network import VideoResNetClassifier, weights_default

pytestmark = pytest.mark.slow

TRAIN = "configs/train.json"
EVALUATE = "['configs/train.json','configs/evaluate.json']"
NOT_JSON = '{\n  "training": [\n    {"image": "images/a.nii.gz", "label": 0,}\n  ]\n}\n'


def bundle_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``python -m monai.bundle <args>`` from the bundle folder; returns the exit code and the output.

    stdout and stderr are merged in the order they are written (unbuffered, as on a terminal), so the last line
    is the last thing a user sees.
    """
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=BUNDLE_ROOT,
        env={**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return result.returncode, result.stdout


def last_line(output: str) -> str:
    return [line for line in output.splitlines() if line.strip()][-1]


def train_args(dataset: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "run", "training", "--config_file", TRAIN, "--dataset_dir", str(dataset),
        "--ckpt_dir", str(run_dir / "models"), "--output_dir", str(run_dir / "eval"), "--weights", "none",
        "--use_wandb", "False", "--num_workers", "0", "--train#trainer#max_epochs", "1", *extra,
    ]  # fmt: skip


def evaluate_args(dataset: Path, *extra: str) -> list[str]:
    return [
        "run", "evaluating", "--config_file", EVALUATE, "--dataset_dir", str(dataset), "--num_workers", "0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny16")
    write_tiny_dataset(root, {"training": 4, "validation": 2, "test": 2}, size=16)
    return root


def edited(change: Callable[[dict], None]) -> Callable[[dict], dict]:
    def apply(datalist: dict) -> dict:
        change(datalist)
        return datalist

    return apply


# Case -> (how the datalist is spoiled, the workflow, what the last line must contain). "{dl}" is the datalist path.
DATALIST_CASES = {
    "label_2": (
        edited(lambda d: d["training"][1].update(label=2)),
        "training",
        ["error: training entry 1 (images/S001_I0020.nii.gz) of {dl} has label 2; labels are 0=CN, 1=AD."],
    ),
    "label_AD": (
        edited(lambda d: d["training"][3].update(label="AD")),
        "training",
        ["error: training entry 3 (images/S003_I0040.nii.gz) of {dl} has label 'AD'; labels are 0=CN, 1=AD."],
    ),
    "empty_training": (edited(lambda d: d.update(training=[])), "training", ["the 'training' partition of {dl}"]),
    "not_json": (
        None,
        "training",
        ["error: Datalist {dl} is not valid JSON: Expecting property name", "at line 3, column 45."],
    ),
    "one_class": (
        edited(lambda d: d.update(training=[e for e in d["training"] if e["label"] == 0])),
        "training",
        ["error: the 'training' partition of {dl} holds only CN (label 0) scans", "(0=CN, 1=AD)"],
    ),
    "missing_image": (
        edited(lambda d: d["validation"][0].update(image="images/absent.nii.gz")),
        "training",
        ["error: validation entry 0 (images/absent.nii.gz) of {dl}: the image does not exist under dataset_dir="],
    ),
    "missing_partition": (
        edited(lambda d: d.pop("validation")),
        "training",
        ["error: {dl} has no 'validation' partition (it has: training, test)"],
    ),
    "missing_subject": (
        edited(lambda d: d["training"][0].pop("subject")),
        "training",
        ["error: training entry 0 (images/S000_I0010.nii.gz) of {dl} has no 'subject' id"],
    ),
    "evaluating_without_test": (
        edited(lambda d: d.pop("test")),
        "evaluating",
        ["error: {dl} has no 'test' partition (it has: training, validation)"],
    ),
}


@pytest.mark.parametrize("case", DATALIST_CASES)
def test_spoiled_datalist_stops_before_the_network_with_one_named_line(case, failing_runs):
    returncode, output, path = failing_runs[case]
    assert returncode == 1, output[-3000:]
    line = last_line(output)
    for expected in DATALIST_CASES[case][2]:
        assert expected.format(dl=path) in line, output[-3000:]
    assert "random initialisation" not in output  # refused before the network was built
    assert "Traceback" not in output


def test_validate_datalist_returns_the_datalist_and_raises_for_python_callers(dataset, tmp_path):
    datalist = validate_datalist(dataset / "datalist.json", dataset, require=("training", "validation", "test"))
    assert [len(datalist[p]) for p in ("training", "validation", "test")] == [4, 2, 2]
    (tmp_path / "bad.json").write_text(json.dumps({"training": [{"image": "x.nii.gz", "label": 1}]}))
    with pytest.raises(BundleInputError) as err:
        validate_datalist(tmp_path / "bad.json", tmp_path, require=("training",))
    assert err.value.code == f"error: {err.value.message}"  # what the interpreter prints, exit status 1
    assert "training entry 0 (x.nii.gz)" in err.value.message and "(1 more problem(s)" in err.value.message


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "--weights", "None"], "none"),
        (["run", "--weights=None"], "none"),
        (["run", "--weights", "none"], "kinetics400"),  # a string: fire passes it, the override replaces the default
        (["run", "--arch", "None"], "kinetics400"),
        (["run", "--weights", "None", "--weights", "x.pt"], "kinetics400"),  # the last one wins, as in fire
    ],
)
def test_weights_default_sees_the_none_that_monai_drops(argv, expected):
    assert weights_default("kinetics400", argv) == expected


@pytest.fixture(scope="module")
def trained_from_none(dataset, tmp_path_factory) -> tuple[Path, Path, int, str]:
    """Two epochs with ``--weights None`` and an empty torch hub cache (nothing to load, nothing downloadable)."""
    run_dir = tmp_path_factory.mktemp("weights_none")
    torch_home = tmp_path_factory.mktemp("torch_home")
    args = train_args(dataset, run_dir, "--train#trainer#max_epochs", "2")
    args[args.index("--weights") + 1] = "None"
    returncode, output = bundle_cli(*args, env={"TORCH_HOME": str(torch_home)})
    return run_dir, torch_home, returncode, output


def test_weights_None_on_the_cli_trains_from_random_weights(trained_from_none):
    run_dir, torch_home, returncode, output = trained_from_none
    assert returncode == 0, output[-3000:]
    assert "r3d_18: random initialisation (--weights none)." in output
    assert "Kinetics" not in output and not any(torch_home.iterdir())  # no load or download was attempted
    names = sorted(p.name for p in (run_dir / "models").iterdir())
    expected = ["best_loss_model.pt", "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "model.pt"]
    expected.append("training_data.json")  # the external-validation record (scripts.external)
    assert names == expected


def test_truncated_newest_epoch_checkpoint_resumes_from_the_previous_one(trained_from_none, dataset):
    run_dir, _, returncode, _ = trained_from_none
    assert returncode == 0
    models = run_dir / "models"
    epoch2 = torch.load(models / "checkpoint_epoch=2.pt", weights_only=True)["model"]
    with (models / "checkpoint_epoch=2.pt").open("r+b") as f:
        f.truncate(100_000)
    returncode, output = bundle_cli(*train_args(dataset, run_dir, "--train#trainer#max_epochs", "3"))
    assert returncode == 0, output[-3000:]
    assert "Skipping checkpoint_epoch=2.pt for resuming" in output and "truncated" in output
    assert "Resuming from checkpoint_epoch=1.pt, older than checkpoint_epoch=2.pt" in output
    redone = torch.load(models / "checkpoint_epoch=2.pt", weights_only=True)["model"]
    assert all(torch.equal(epoch2[k], redone[k]) for k in epoch2)  # the lost epoch was trained again, identically
    assert torch.load(models / "checkpoint_epoch=3.pt", weights_only=True)["trainer"]["iteration"] == 6


def open_zip_head() -> bytes:
    """The first 200 kB of a real torch.save zip: what an interrupted copy of model.pt leaves."""
    import io

    buffer = io.BytesIO()
    torch.save({"net.fc.weight": torch.zeros(2, 512), "pad": torch.zeros(200_000)}, buffer)
    return buffer.getvalue()[:200_000]


def write_mc3_model(path: Path) -> Path:
    # model.pt as CheckpointSaver(save_dict={"model": network}) writes it: the flat state dict of the classifier.
    torch.save(VideoResNetClassifier(arch="mc3_18", weights=None).state_dict(), path)
    return path


# Case -> (how model.pt is written, what the last line of `run evaluating` must contain, extra arguments).
# Evaluation builds the architecture a model file holds; an --arch that contradicts the file is refused.
MODEL_CASES = {
    "truncated": (lambda p: p.write_bytes(open_zip_head()), ["cannot be loaded", "truncated"], []),
    "mc3_18": (
        write_mc3_model,
        ["is not a checkpoint of r3d_18", "this file holds another architecture (mc3_18?)"],
        ["--arch", "r3d_18"],
    ),
}


@pytest.fixture(scope="module")
def failing_runs(dataset, tmp_path_factory) -> dict[str, tuple[int, str, Path]]:
    """Every spoiled-datalist and broken-model case run through the CLI, two at a time (one per core: each run
    spends most of its time importing torch and MONAI). Case -> (exit code, output, the spoiled file)."""
    folder = tmp_path_factory.mktemp("spoiled")
    good = json.loads((dataset / "datalist.json").read_text())
    jobs: dict[str, tuple[list[str], Path]] = {}
    for case, (spoil, workflow, _) in DATALIST_CASES.items():
        path = folder / f"{case}.json"
        path.write_text(NOT_JSON if spoil is None else json.dumps(spoil(json.loads(json.dumps(good)))))
        if workflow == "training":
            args = train_args(dataset, folder / case, "--datalist", str(path))
        else:
            args = evaluate_args(dataset, "--datalist", str(path), "--ckpt_dir", str(folder / case))
        jobs[case] = (args, path)
    for case, (write, _, extra) in MODEL_CASES.items():
        path = folder / case / "model.pt"
        path.parent.mkdir()
        write(path)
        jobs[case] = (evaluate_args(dataset, "--ckpt_dir", str(path.parent), "--output_dir", str(folder), *extra), path)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(bundle_cli, *args) for case, (args, _) in jobs.items()}
        return {case: (*future.result(), jobs[case][1]) for case, future in futures.items()}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_broken_or_foreign_model_stops_evaluating_with_one_named_line(case, failing_runs):
    returncode, output, path = failing_runs[case]
    assert returncode == 1, output[-3000:]
    line = last_line(output)
    assert line.startswith(f"error: {path} ")
    assert "expected a checkpoint of r3d_18" in line or "is not a checkpoint of r3d_18" in line
    for expected in MODEL_CASES[case][1]:
        assert expected in line
    assert "weights_only=False" not in output and "Traceback" not in output


def test_no_intact_epoch_checkpoint_names_the_files_and_the_fix(tmp_path):
    for epoch in (1, 2):
        (tmp_path / f"checkpoint_epoch={epoch}.pt").write_bytes(os.urandom(1000))
    handler = ResumeFromLatestCheckpoint(tmp_path, load_dict={"model": torch.nn.Linear(2, 2)})
    with pytest.raises(BundleInputError) as err:
        handler.attach(Engine(lambda engine, batch: None))
    message = err.value.message
    assert message.startswith(f"cannot resume training: no intact per-epoch checkpoint in {tmp_path}.")
    assert "checkpoint_epoch=2.pt cannot be loaded" in message and "checkpoint_epoch=1.pt cannot be loaded" in message
    assert message.endswith("start afresh with --resume False.")


def test_resuming_past_max_epochs_says_which_option_to_raise(tmp_path):
    network = torch.nn.Linear(2, 2)
    torch.save({"model": network.state_dict()}, tmp_path / "checkpoint_epoch=5.pt")
    engine = Engine(lambda engine, batch: None)
    engine.state.max_epochs = 3
    with pytest.raises(BundleInputError) as err:
        ResumeFromLatestCheckpoint(tmp_path, load_dict={"model": network}).attach(engine)
    assert err.value.message == (
        f"{tmp_path / 'checkpoint_epoch=5.pt'} is at epoch 5, beyond max_epochs 3: pass --train#trainer#max_epochs 6 "
        f"or more to continue it, or --resume False to start afresh."
    )


def test_random_bytes_as_model_file_are_refused_when_the_loader_is_attached(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(os.urandom(50_000))
    loader = ModelCheckpointLoader(path, VideoResNetClassifier(weights=None))
    with pytest.raises(BundleInputError) as err:
        loader.attach(Engine(lambda engine, batch: None))
    assert err.value.message.startswith(f"{path} cannot be loaded: it is not a complete PyTorch checkpoint")
    assert err.value.message.endswith("expected a checkpoint of r3d_18 (a model.pt written by this bundle's training).")


def test_truncated_weights_file_is_named(tmp_path):
    path = tmp_path / "video_weights.pth"
    path.write_bytes(open_zip_head())
    with pytest.raises(BundleInputError, match=r"video_weights.pth cannot be loaded: .*expected r3d_18 weights"):
        VideoResNetClassifier(weights=str(path))
    write_mc3_model(path)
    with pytest.raises(BundleInputError, match=r"another architecture \(mc3_18\?\)\. Pass --arch mc3_18"):
        VideoResNetClassifier(weights=str(path))


def test_damaged_cached_kinetics_weights_are_named_not_reported_as_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "r3d_18-b3b3357e.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(open_zip_head())
    with pytest.raises(BundleInputError) as err:
        VideoResNetClassifier(weights="kinetics400")
    assert err.value.message.startswith(f"The cached Kinetics-400 weights {cached} cannot be loaded: it is not a")
    assert "Delete the file so that it is downloaded again" in err.value.message
    assert "weights_only=False" not in err.value.message
