"""Multi-GPU training and evaluation (configs/multi_gpu_train.json, multi_gpu_evaluate.json).

Without GPUs the same configs run as CPU processes that talk through gloo, so torchrun with two processes checks
here what a multi-GPU job does: one writer, the same epochs on every process, resuming, evaluating the result. The
decisions the processes must share (non-finite guard, early stopping, resume) are also checked on two forked gloo
processes that are given different inputs on purpose.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from conftest import BUNDLE_ROOT
from ignite.engine import Engine
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.handlers import LrScheduleHandler, StatsHandler, ValidationHandler
from tiny_data import write_tiny_dataset

from scripts import plan as plan_mod
from scripts.checkpoints import ModelCheckpointLoader
from scripts.data import BundleInputError
from scripts.distributed import DistributedPredictionWriter, round_robin
from scripts.evaluation import PredictionWriter
from scripts.handlers import (
    DualEarlyStopping,
    EpochLogWriter,
    EpochSeeder,
    NonFiniteLossGuard,
    ResumeFromLatestCheckpoint,
)
from scripts.tracking import WandbHandler

CONFIGS = BUNDLE_ROOT / "configs"
MULTI_TRAIN = "['configs/train.json','configs/multi_gpu_train.json']"
STOPPED = re.compile(r"Rank (\d+) of (\d+) stopped training at epoch (\d+) \(iteration (\d+)\)")
WRITERS = (EpochLogWriter, WandbHandler)
CHECKPOINT_NAME = re.compile(r"^(model\.pt|best_loss_model\.pt|checkpoint_epoch=\d+\.pt|(plan|training_data)\.json)$")


# ------------------------------------------------------------------------------------------- config structure


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_dataset(root, {"training": 4, "validation": 2, "test": 2}, size=16)
    plan_mod.write_plan(plan_mod.build_plan({"skull_stripper": "none", "spatial_size": 16}), root)
    return root


def parser_for(files: list[str], dataset: Path, run_dir: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in files])
    settings = {
        "dataset_dir": str(dataset),
        "ckpt_dir": str(run_dir / "models"),
        "output_dir": str(run_dir / "eval"),
        "weights": "none",
        "use_wandb": False,
        "num_workers": 0,
        "device": "$torch.device('cpu')",
        **overrides,
    }
    for key, value in settings.items():
        parser[key] = value
    return parser


def types(handlers: list) -> list[type]:
    return [type(h) for h in handlers]


def attached(engine: Engine) -> list:
    """The objects whose methods are registered as event handlers of ``engine``."""
    owners = []
    for handlers in engine._event_handlers.values():
        for handler, _, _ in handlers:
            parent = getattr(handler, "_parent", None)  # ignite wraps handlers of filtered events
            handler = parent() if parent is not None else handler
            owners.append(getattr(handler, "__self__", None))
    return owners


ALL_TRAIN_HANDLERS = [
    EpochSeeder, NonFiniteLossGuard, LrScheduleHandler, ValidationHandler, EpochLogWriter, WandbHandler, StatsHandler,
]  # fmt: skip


@pytest.mark.parametrize("process", ["single", "rank 0", "rank 1"])
def test_only_the_main_process_attaches_the_writers(tiny, tmp_path, process):
    if process == "single":
        parser = parser_for(["train.json"], tiny, tmp_path)
    else:  # the multi-GPU override, resolved as rank 0 or 1 of 2 would, without starting a process group
        rank = int(process[-1])
        parser = parser_for(
            ["train.json", "multi_gpu_train.json"], tiny, tmp_path,
            is_main_process=rank == 0, network="$@network_def.to(@device)", **{"hyperparameters#world_size": 2},
            **{f"{part}#sampler#{key}": value for part in ("train", "validate") for key, value in
               (("num_replicas", 2), ("rank", rank))},
        )  # fmt: skip
    main = process != "rank 1"
    # The training steps up to trainer.run(): copy the plan, attach resume, early stopping and the savers.
    steps = parser["training"]
    assert steps[-1] == "$@train#trainer.run()"
    for index in range(len(steps) - 1):
        parser.get_parsed_content(f"training#{index}")
    trainer, evaluator = parser.get_parsed_content("train#trainer"), parser.get_parsed_content("validate#evaluator")

    handlers = types(parser.get_parsed_content("train#handlers"))
    assert handlers == (ALL_TRAIN_HANDLERS if main else [h for h in ALL_TRAIN_HANDLERS if h not in WRITERS])
    assert types(parser.get_parsed_content("validate#handlers")) == [StatsHandler]
    assert (parser.get_parsed_content("train#epoch_checkpoint") in attached(trainer)) is main
    for saver in ("validate#best_accuracy_saver", "validate#best_loss_saver"):
        assert (parser.get_parsed_content(saver) in attached(evaluator)) is main
    assert (tmp_path / "models" / "plan.json").exists() is main
    assert (tmp_path / "models" / "training_data.json").exists() is main  # the external-validation record
    assert isinstance(parser.get_parsed_content("train#resume_handler"), ResumeFromLatestCheckpoint)  # every rank
    # Every rank restores the whole training state; DDP's module is what the checkpoint holds.
    assert set(parser.get_parsed_content("train#checkpoint_dict")) == {
        "model", "optimizer", "lr_scheduler", "trainer", "early_stopping", "best_accuracy_tracker",
        "best_loss_tracker", "plan",
    }  # fmt: skip


def test_evaluate_handlers_are_unchanged(tiny, tmp_path):
    evaluate = parser_for(["train.json", "evaluate.json"], tiny, tmp_path)
    handlers = evaluate.get_parsed_content("validate#handlers")
    assert types(handlers) == [ModelCheckpointLoader, StatsHandler, PredictionWriter]


def test_multi_gpu_evaluation_gathers_the_predictions_on_every_rank(tiny, tmp_path):
    parser = parser_for(
        ["train.json", "evaluate.json", "multi_gpu_evaluate.json"], tiny, tmp_path,
        **{"validate#sampler#num_replicas": 2, "validate#sampler#rank": 1},
    )  # fmt: skip
    handlers = parser.get_parsed_content("validate#handlers")
    assert types(handlers) == [ModelCheckpointLoader, StatsHandler, DistributedPredictionWriter]
    sampler = parser.get_parsed_content("validate#dataloader").sampler
    assert list(sampler) == [1]  # rank 1 of 2 evaluates the second of the two test scans


def test_multi_gpu_initialize_runs_every_single_process_check():
    def config(name: str) -> dict:
        return json.loads((CONFIGS / name).read_text())

    for single, override in (("train.json", "multi_gpu_train.json"), ("evaluate.json", "multi_gpu_evaluate.json")):
        steps = config(override)["initialize"]
        expected = config(single)["initialize"]
        assert [s for s in steps if s in expected] == expected, f"{override} lost a step of {single}'s initialize"
        assert steps.index(expected[0]) > steps.index("$scripts.distributed.init_process_group(@device)")
        assert config(override)["finalize"][-1] == "$scripts.distributed.destroy_process_group()"
    # The network stays the one inference uses (MONAI's checks read network_def).
    assert "network_def" not in config("multi_gpu_train.json")
    assert "network_def" not in config("multi_gpu_evaluate.json")


def test_round_robin_restores_the_dataset_order():
    # A non-shuffling DistributedSampler with even_divisible=False gives rank r the items r, r+N, r+2N...
    items = list(range(7))
    assert round_robin([items[r::3] for r in range(3)]) == items
    assert round_robin([items[0::2], items[1::2]]) == items
    assert round_robin([[0], []]) == [0]


# ------------------------------------------------------------------------------ agreement on two gloo processes


def _child(scenario, rank: int, folder: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=2)
    try:
        result = ("returned", scenario(rank, folder))
    except BaseException as err:  # BundleInputError is a SystemExit
        result = ("raised", type(err).__name__, str(err))
    (folder / f"result{rank}.pkl").write_bytes(pickle.dumps(result))
    dist.destroy_process_group()


def on_two_processes(scenario, folder: Path, timeout: float = 120) -> list[tuple]:
    """Run ``scenario(rank, folder)`` on two forked processes joined in a gloo group; their results by rank."""
    context = multiprocessing.get_context("fork")  # the children inherit the imported modules: no import time
    processes = [context.Process(target=_child, args=(scenario, rank, folder)) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
    hung = [p for p in processes if p.is_alive()]
    for process in hung:
        process.kill()
    assert not hung, "a process hung: the two processes did not take the same collective steps"
    return [pickle.loads((folder / f"result{rank}.pkl").read_bytes()) for rank in range(2)]


def _guard_scenario(rank: int, folder: Path) -> list:
    param = torch.nn.Parameter(torch.ones(1))
    guard = NonFiniteLossGuard(max_consecutive=2)
    steps = []
    for loss in (0.5, float("nan") if rank == 1 else 0.5, float("nan") if rank == 1 else 0.5):
        param.grad = torch.ones(1)
        engine = SimpleNamespace(
            optimizer=SimpleNamespace(param_groups=[{"params": [param]}]),
            state=SimpleNamespace(output={"loss": torch.tensor(loss)}, batch={"image_id": [f"I{rank}"]}, epoch=1,
                                  iteration=len(steps) + 1),
        )  # fmt: skip
        try:
            guard(engine)
            steps.append(("kept" if param.grad is not None else "dropped", guard.consecutive))
        except RuntimeError as err:
            steps.append(("stopped", str(err)))
    return steps


def test_non_finite_loss_on_one_process_drops_the_update_on_every_process(tmp_path):
    # Rank 1 alone has NaN losses; DDP has already averaged them into rank 0's gradients too.
    results = on_two_processes(_guard_scenario, tmp_path)
    for kind, steps in results:
        assert kind == "returned"
        assert steps[:2] == [("kept", 0), ("dropped", 1)]
        assert steps[2][0] == "stopped" and "2 non-finite losses in a row" in steps[2][1]
    assert "I1" in results[1][1][2][1] and "on another process" in results[0][1][2][1]


def _early_stopping_scenario(rank: int, folder: Path) -> dict:
    # Rank 1 sees improving metrics, rank 0 does not: both must follow rank 0 and stop together.
    rounds = [(0.5, 0.7), (0.5, 0.7)] if rank == 0 else [(0.9, 0.1), (1.0, 0.05)]
    validator = SimpleNamespace(state=SimpleNamespace(metrics={}))
    stops: list[int] = []
    stopping = DualEarlyStopping(validator, patience=1)
    stopping.trainer = SimpleNamespace(terminate=lambda: stops.append(len(stops)))
    stopped_after = []
    for accuracy, loss in rounds:
        validator.state.metrics = {"val_accuracy": accuracy, "val_loss": loss}
        stopping(validator)
        stopped_after.append(bool(stops))
    return {"stopped_after": stopped_after, "state": stopping.state_dict()}


def test_early_stopping_takes_the_same_decision_on_every_process(tmp_path):
    results = on_two_processes(_early_stopping_scenario, tmp_path)
    expected = {"best_accuracy": 0.5, "best_loss": 0.7, "accuracy_counter": 1, "loss_counter": 1}
    for kind, result in results:
        assert kind == "returned"
        assert result["stopped_after"] == [False, True]
        assert result["state"] == pytest.approx(expected)


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = int(state["n"])


def _resume_scenario(rank: int, folder: Path) -> str | None:
    ckpt_dir = folder / ("shared" if (folder / "same").exists() or rank == 0 else "elsewhere")
    handler = ResumeFromLatestCheckpoint(ckpt_dir, load_dict={"counter": _Counter()}, map_location="cpu")
    handler.attach(Engine(lambda engine, batch: None))
    return handler.loaded_from.name if handler.loaded_from else None


@pytest.mark.parametrize("same_folder", [True, False])
def test_every_process_resumes_from_the_same_checkpoint_or_none_starts(tmp_path, same_folder):
    (tmp_path / "shared").mkdir()
    (tmp_path / "elsewhere").mkdir()  # e.g. a node-local --ckpt_dir on a second node
    torch.save({"counter": {"n": 3}}, tmp_path / "shared" / "checkpoint_epoch=4.pt")
    if same_folder:
        (tmp_path / "same").touch()
    results = on_two_processes(_resume_scenario, tmp_path)
    if same_folder:
        assert results == [("returned", "checkpoint_epoch=4.pt")] * 2
    else:
        for result in results:
            assert result[:2] == ("raised", BundleInputError.__name__)
            assert "the processes do not find the same checkpoint" in result[2]
            assert "rank 0: epoch 4, rank 1: nothing" in result[2]


def _writer_scenario(rank: int, folder: Path) -> int:
    writer = DistributedPredictionWriter(folder / "out")
    writer.rows = [  # rank r evaluated scans r, r + 2, ... (DistributedSampler, no shuffling)
        {"image_id": f"I{i}", "subject": f"S{i}", "label": i % 2, "prob_AD": 0.1 + 0.2 * i, "prediction": int(i > 1)}
        for i in range(rank, 5, 2)
    ]
    writer._write(None)
    return len(writer.rows)


def test_prediction_writer_gathers_every_process_rows_on_rank0(tmp_path):
    assert on_two_processes(_writer_scenario, tmp_path) == [("returned", 5), ("returned", 2)]
    with (tmp_path / "out" / "predictions.csv").open() as f:
        assert [r["image_id"] for r in csv.DictReader(f)] == ["I0", "I1", "I2", "I3", "I4"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["n"] == 5


# ------------------------------------------------------------------------------------- torchrun, two processes


def cli_env() -> dict[str, str]:
    # CPU processes with gloo even where GPUs exist; one thread per process.
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def run_cli(command: list[str], timeout: float = 600) -> str:
    result = subprocess.run(
        command, cwd=BUNDLE_ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )  # a process waiting forever for another one would hit the timeout
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command[:8])} failed ({result.returncode}):\n{log[-8000:]}"
    return log


def torchrun(*args: str) -> str:
    # torchrun is `python -m torch.distributed.run`; this way it uses the test's interpreter.
    return run_cli([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                    "-m", "monai.bundle", *args])  # fmt: skip


def stops(log: str) -> dict[int, tuple[int, int]]:
    """{rank: (epoch, iteration)} from the line each process logs when its training ends."""
    found = {int(m.group(1)): (int(m.group(3)), int(m.group(4))) for m in STOPPED.finditer(log)}
    assert all(int(m.group(2)) == 2 for m in STOPPED.finditer(log))
    return found


def train_args(dataset: Path, run_dir: Path, max_epochs: int) -> list[str]:
    return [
        "run", "training", "--config_file", MULTI_TRAIN, "--dataset_dir", str(dataset),
        "--ckpt_dir", str(run_dir / "models"), "--output_dir", str(run_dir / "eval"), "--weights", "none",
        "--use_wandb", "False", "--num_workers", "0", "--train#trainer#max_epochs", str(max_epochs),
    ]  # fmt: skip


def check_checkpoints(models: Path) -> dict[str, dict]:
    """Every file is one of the bundle's checkpoints (no per-rank copy, no temporary file) and loads intact."""
    names = sorted(p.name for p in models.iterdir())
    assert all(CHECKPOINT_NAME.match(name) for name in names), names
    loaded = {}
    for name in (n for n in names if n.endswith(".pt")):
        assert zipfile.is_zipfile(models / name), name
        loaded[name] = torch.load(models / name, map_location="cpu", weights_only=True)
    for state in (loaded["model.pt"], loaded["best_loss_model.pt"]):
        assert all(key.startswith("net.") for key in state)  # DDP's module, unwrapped: evaluate.json loads it
    return loaded


def epoch_log(run_dir: Path) -> list[int]:
    with (run_dir / "eval" / "training_log.csv").open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> tuple[Path, str, str]:
    """Two epochs on two processes, then a resumed run to epoch 3."""
    run_dir = tmp_path_factory.mktemp("multi_gpu")
    first = torchrun(*train_args(tiny, run_dir, 2))
    models = run_dir / "models"
    assert sorted(p.name for p in models.iterdir()) == [
        "best_loss_model.pt", "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "model.pt", "plan.json",
        "training_data.json",
    ]  # fmt: skip
    check_checkpoints(models)
    second = torchrun(*train_args(tiny, run_dir, 3))
    return run_dir, first, second


@pytest.mark.slow
def test_two_processes_write_once_stop_together_and_resume(trained, tiny):
    run_dir, first, second = trained
    models = run_dir / "models"
    # 4 training scans over 2 processes in batches of 2: one iteration per epoch on each process.
    assert stops(first) == {0: (2, 2), 1: (2, 2)}
    assert "Process 1 of 2 (gloo) runs on cpu." in first

    # Each process read the per-epoch checkpoint and restored it; both continued to epoch 3 and stopped there.
    resumed_from = f"Resuming training from {models / 'checkpoint_epoch=2.pt'}."
    assert second.count(resumed_from) == 2
    assert second.count(f"Restored all variables from {models / 'checkpoint_epoch=2.pt'}") == 2
    assert "Epoch: 3/3, Iter: 1/1" in second and "Epoch: 1/3" not in second and "Epoch: 2/3" not in second
    assert stops(second) == {0: (3, 3), 1: (3, 3)}

    loaded = check_checkpoints(models)
    assert {"checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"} <= set(loaded)
    last = loaded["checkpoint_epoch=3.pt"]
    assert last["trainer"]["iteration"] == 3 and last["lr_scheduler"]["last_epoch"] == 3
    assert all(key.startswith("net.") for key in last["model"])
    dataset_plan = json.loads((tiny / "plan.json").read_text())
    assert json.loads((models / "plan.json").read_text()) == dataset_plan  # copied by rank 0
    assert json.loads(last["plan"]["plan"]) == dataset_plan  # and carried by the checkpoint
    assert epoch_log(run_dir) == [1, 2, 3]  # one writer: no row twice


@pytest.mark.slow
def test_single_process_evaluate_reads_the_multi_gpu_model(trained, tiny):
    # evaluate.json exactly as a single-process run uses it (in this process, which has imported MONAI already).
    run_dir, _, _ = trained
    out = run_dir / "test_single"
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
        logging_file=False,
        workflow_type=None,
        run_id="evaluating",
        dataset_dir=str(tiny),
        ckpt_dir=str(run_dir / "models"),
        output_dir=str(out),
        num_workers=0,
        device="$torch.device('cpu')",
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 2
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    test_items = json.loads((tiny / "datalist.json").read_text())["test"]
    assert [r["image_id"] for r in rows] == [item["image_id"] for item in test_items]
