"""WandbHandler against real MONAI engines and a real (offline) wandb run.

wandb 0.31 writes no ``wandb-summary.json``/``config.yaml`` for offline runs and has no public Python reader for the
``.wandb`` file, so :func:`read_records` decodes it directly: it is a LevelDB-style log (7-byte file header
``":W&B", 0xBEE1, version``; 32 KiB blocks; records ``crc32 | length | type`` with FULL/FIRST/MIDDLE/LAST chunks) of
``wandb.proto.wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import sys
import time
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from ignite.metrics import Accuracy, Loss
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, ValidationHandler, from_engine
from torch import nn

from scripts.tracking import PRIVACY_SETTINGS, WandbHandler, WandbTrackingWarning

BATCH, N_TRAIN, N_VAL, EPOCHS = 4, 12, 8, 2
ITERS_PER_EPOCH = N_TRAIN // BATCH
CONFIG = {"learning_rate": 0.001, "batch_size": BATCH, "model": {"name": "tiny", "pretrained": False}}
LRS = {"backbone": 1e-3, "head": 1e-2}


# ---------------------------------------------------------------------------------------------- .wandb reader


def read_records(path: Path) -> list:
    """Every protobuf ``Record`` of a ``.wandb`` file, in order, with each chunk's CRC checked."""
    from wandb.proto import wandb_internal_pb2

    buf = path.read_bytes()
    ident, magic, _version = struct.unpack_from("<4sHB", buf, 0)
    assert (ident, magic) == (b":W&B", 0xBEE1), "not a .wandb file"
    block, pos, pending, records = 32768, 7, b"", []
    while pos < len(buf):
        if block - pos % block < 7:  # block trailer: zero padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack_from("<IHB", buf, pos)
        if pos + 7 + length > len(buf):  # still being written
            break
        data = buf[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        assert zlib.crc32(data, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, "corrupt chunk"
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _items(updates) -> dict:
    return {"/".join(u.nested_key) if u.nested_key else u.key: json.loads(u.value_json) for u in updates}


class OfflineRun:
    """History rows, final summary, config, artifacts and exit record of one offline run folder."""

    def __init__(self, folder: Path, timeout: float = 20.0) -> None:
        self.folder = folder
        (wandb_file,) = folder.glob("run-*.wandb")
        # run.finish() can return before wandb-core has flushed the file: wait for its closing "exit" record.
        deadline = time.monotonic() + timeout
        while True:
            self.records = read_records(wandb_file)
            if any(r.HasField("exit") for r in self.records) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        by_kind: dict[str, list] = {}
        for r in self.records:
            by_kind.setdefault(r.WhichOneof("record_type"), []).append(getattr(r, r.WhichOneof("record_type")))
        self.kinds = by_kind
        self.history = [_items(h.item) for h in by_kind.get("history", [])]
        self.summary: dict = {}
        for s in by_kind.get("summary", []):
            self.summary.update(_items(s.update))
        (self.run_record,) = by_kind["run"]
        self.config = {u.key: json.loads(u.value_json) for u in self.run_record.config.update}
        for c in by_kind.get("config", []):
            self.config.update({u.key: json.loads(u.value_json) for u in c.update})
        self.artifacts = by_kind.get("artifact", [])
        self.exit = by_kind["exit"][-1] if "exit" in by_kind else None


def offline_runs(root: Path) -> list[Path]:
    return sorted((root / "wandb").glob("offline-run-*"))


# ---------------------------------------------------------------------------------------------- tiny workflow


class TinyNet(nn.Module):
    def __init__(self, fail_at_call: int | None = None) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)
        self.fail_at_call, self.calls = fail_at_call, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_at_call is not None and self.calls >= self.fail_at_call:
            raise RuntimeError("boom")
        return self.head(self.backbone(x))


def _data(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return [{"image": x[i], "label": y[i]} for i in range(n)]


def run_workflow(tmp: Path, fail_at_call: int | None = None, **handler_kwargs) -> dict:
    """Train TinyNet for 2 epochs with validation each epoch and a WandbHandler; returns what the engines saw."""
    torch.manual_seed(0)
    net = TinyNet(fail_at_call)
    optimizer = torch.optim.AdamW(
        [
            {"params": net.backbone.parameters(), "lr": LRS["backbone"], "name": "backbone"},
            {"params": net.head.parameters(), "lr": LRS["head"], "name": "head"},
        ]
    )
    pred_label = from_engine(["pred", "label"])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=torch.utils.data.DataLoader(_data(N_VAL, 1), batch_size=BATCH),
        network=net,
        key_val_metric={"val_accuracy": Accuracy(output_transform=pred_label)},
        additional_metrics={"val_loss": Loss(nn.CrossEntropyLoss(), output_transform=pred_label)},
        decollate=False,
    )
    ckpt_dir = tmp / "ckpt"
    ckpt_dir.mkdir()
    checkpoints = [ckpt_dir / "model.pt", ckpt_dir / "best_loss_model.pt"]
    for i, path in enumerate(checkpoints):
        path.write_bytes(f"fake checkpoint {i}".encode())
    handler = WandbHandler(
        **{
            "project": "ad-t1-mri",
            "run_dir": tmp,
            "config": CONFIG,
            "validator": evaluator,
            "checkpoints": [*map(str, checkpoints), str(ckpt_dir / "missing.pt")],
            "run_name": None,
            **handler_kwargs,
        }
    )
    seen: dict = {"losses": [], "val": [], "lr_per_epoch": []}
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=EPOCHS,
        train_data_loader=torch.utils.data.DataLoader(_data(N_TRAIN, 0), batch_size=BATCH, shuffle=True),
        network=net,
        optimizer=optimizer,
        loss_function=nn.CrossEntropyLoss(),
        key_train_metric={"train_accuracy": Accuracy(output_transform=pred_label)},
        train_handlers=[
            # halves the lrs at each EPOCH_COMPLETED, before the W&B handler runs: it must log the lrs the epoch used
            LrScheduleHandler(torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5), print_lr=False),
            handler,
            ValidationHandler(validator=evaluator, interval=1, epoch_level=True),
        ],
        decollate=False,
    )
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen["losses"].append(e.state.output["loss"].item())
    )
    trainer.add_event_handler(
        Events.EPOCH_STARTED,
        lambda e: seen["lr_per_epoch"].append({g["name"]: g["lr"] for g in optimizer.param_groups}),
    )
    evaluator.add_event_handler(Events.COMPLETED, lambda e: seen["val"].append(dict(e.state.metrics)))
    trainer.run()
    seen.update(trainer=trainer, handler=handler, checkpoints=checkpoints)
    return seen


@pytest.fixture(autouse=True)
def _wandb_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep wandb's own data/cache/config folders (artifact staging, core logs) out of the home directory."""
    home = tmp_path_factory.getbasetemp() / "wandb_home"
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        monkeypatch.setenv(var, str(home / sub))


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, OfflineRun]:
    """One offline run shared by the assertions below (wandb's service start is the slow part)."""
    tmp = tmp_path_factory.mktemp("wandb_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)
        mp.delenv("WANDB_API_KEY", raising=False)
        base = tmp_path_factory.getbasetemp() / "wandb_home"
        mp.setenv("WANDB_DATA_DIR", str(base / "data"))
        mp.setenv("WANDB_CACHE_DIR", str(base / "cache"))
        mp.setenv("WANDB_CONFIG_DIR", str(base / "config"))
        seen = run_workflow(tmp)
    folders = offline_runs(tmp)
    assert len(folders) == 1, f"expected one offline run under {tmp / 'wandb'}, found {folders}"
    return seen, OfflineRun(folders[0])


# ---------------------------------------------------------------------------------------------- offline run


def test_run_is_offline_and_finished_cleanly(offline) -> None:
    seen, run = offline
    assert seen["handler"].run is None, "run not finished at COMPLETED"
    assert run.run_record.project == "ad-t1-mri"
    assert run.exit is not None and run.exit.exit_code == 0
    assert "offline" in str(run.run_record.telemetry.feature)


def test_loss_logged_every_iteration_at_global_step(offline) -> None:
    seen, run = offline
    rows = [r for r in run.history if "train/loss" in r]
    assert len(rows) == EPOCHS * ITERS_PER_EPOCH == len(seen["losses"])
    assert [r["_step"] for r in rows] == list(range(1, EPOCHS * ITERS_PER_EPOCH + 1))
    assert [r["train/loss"] for r in rows] == pytest.approx(seen["losses"], rel=1e-6)


def test_val_metrics_logged_every_epoch(offline) -> None:
    seen, run = offline
    rows = [r for r in run.history if "val/val_accuracy" in r]
    assert len(rows) == EPOCHS == len(seen["val"])
    for epoch, (row, val) in enumerate(zip(rows, seen["val"], strict=True), start=1):
        assert row["epoch"] == epoch
        assert row["_step"] == epoch * ITERS_PER_EPOCH
        assert row["val/val_accuracy"] == pytest.approx(val["val_accuracy"])
        assert row["val/val_loss"] == pytest.approx(val["val_loss"])


def test_learning_rates_and_train_metrics_logged_per_epoch(offline) -> None:
    seen, run = offline
    rows = [r for r in run.history if "lr/head" in r]
    assert len(rows) == EPOCHS
    assert seen["lr_per_epoch"][1]["head"] == pytest.approx(LRS["head"] / 2)  # the scheduler did change the lr
    for row, lrs in zip(rows, seen["lr_per_epoch"], strict=True):
        assert row["lr/head"] == pytest.approx(lrs["head"]) and row["lr/backbone"] == pytest.approx(lrs["backbone"])
        assert "train/train_accuracy" in row
    assert {m.name or m.glob_name: m.step_metric for m in run.kinds["metric"] if m.step_metric} == {
        "lr/backbone": "epoch",
        "lr/head": "epoch",
        "train/train_accuracy": "epoch",
        "val/val_accuracy": "epoch",
        "val/val_loss": "epoch",
    }


def test_summary_holds_final_values(offline) -> None:
    seen, run = offline
    s = run.summary
    assert s["train/loss"] == pytest.approx(seen["losses"][-1], rel=1e-6)
    assert s["val/val_accuracy"] == pytest.approx(seen["val"][-1]["val_accuracy"])
    assert s["val/val_loss"] == pytest.approx(seen["val"][-1]["val_loss"])
    assert s["train/train_accuracy"] == pytest.approx(seen["trainer"].state.metrics["train_accuracy"])
    assert s["lr/head"] == pytest.approx(LRS["head"] / 2) and s["lr/backbone"] == pytest.approx(LRS["backbone"] / 2)
    assert s["epoch"] == EPOCHS and s["_step"] == EPOCHS * ITERS_PER_EPOCH


def test_config_recorded(offline) -> None:
    _, run = offline
    assert {k: v for k, v in run.config.items() if not k.startswith("_")} == CONFIG


def test_checkpoints_logged_as_one_model_artifact(offline) -> None:
    seen, run = offline
    (artifact,) = run.artifacts
    assert artifact.type == "model"
    assert artifact.name == f"model-{run.run_record.run_id}"
    assert json.loads(artifact.metadata) == {"epochs": EPOCHS, "iterations": EPOCHS * ITERS_PER_EPOCH}
    contents = {c.path: c for c in artifact.manifest.contents}
    assert set(contents) == {"model.pt", "best_loss_model.pt"}  # missing.pt skipped
    for path in seen["checkpoints"]:
        entry = contents[path.name]
        assert entry.digest == base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()
        assert entry.size == path.stat().st_size
        assert Path(entry.local_path).read_bytes() == path.read_bytes()  # staged copy


def test_no_personal_data_recorded(offline) -> None:
    import socket

    _, run = offline
    assert run.run_record.host == ""
    assert not run.run_record.git.remote_url and not run.run_record.git.commit
    assert "stats" not in run.kinds  # no system metrics
    files = {p.name for p in (run.folder / "files").glob("*")} if (run.folder / "files").exists() else set()
    assert not files & {"wandb-metadata.json", "requirements.txt", "output.log", "diff.patch"}
    hostname = socket.gethostname().encode()
    if len(hostname) >= 4:  # a short hostname could match random bytes
        assert hostname not in (next(run.folder.glob("run-*.wandb"))).read_bytes()


def test_privacy_settings_exist_in_wandb() -> None:
    import wandb

    settings = wandb.Settings(**PRIVACY_SETTINGS)  # unknown fields would raise (extra="forbid")
    for key, value in PRIVACY_SETTINGS.items():
        assert getattr(settings, key) == value
    with pytest.raises(Exception):  # noqa: B017 - proves that a misspelt setting would not pass silently
        wandb.Settings(x_disable_metaa=True)


# ---------------------------------------------------------------------------------------------- other modes


def test_disabled_handler_creates_nothing_and_never_imports_wandb(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # any "import wandb" would now raise ImportError
    with warnings.catch_warnings():
        warnings.simplefilter("error", WandbTrackingWarning)
        seen = run_workflow(tmp_path, enabled="False")
    assert not (tmp_path / "wandb").exists()
    assert seen["handler"].run is None and len(seen["losses"]) == EPOCHS * ITERS_PER_EPOCH


def test_wandb_mode_disabled_is_respected(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with warnings.catch_warnings():
        warnings.simplefilter("error", WandbTrackingWarning)  # a disabled run is a no-op run, not a failure
        seen = run_workflow(tmp_path)
    assert offline_runs(tmp_path) == [] and not list((tmp_path / "wandb").glob("*run-*"))
    assert len(seen["val"]) == EPOCHS


def test_failed_init_warns_and_training_continues(tmp_path, monkeypatch) -> None:
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("no service")

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(WandbTrackingWarning, match="no service"):
        seen = run_workflow(tmp_path)
    assert len(seen["losses"]) == EPOCHS * ITERS_PER_EPOCH and len(seen["val"]) == EPOCHS


def test_exception_finishes_run_with_error_and_is_reraised(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(RuntimeError, match="boom"):
        run_workflow(tmp_path, fail_at_call=6)  # forward calls 1-3: epoch 1, 4-5: validation, 6: epoch 2
    (folder,) = offline_runs(tmp_path)
    run = OfflineRun(folder)
    assert run.exit is not None and run.exit.exit_code == 1
    assert len([r for r in run.history if "train/loss" in r]) == ITERS_PER_EPOCH
    assert run.artifacts == []


def test_nan_loss_is_logged_not_fatal(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    handler = WandbHandler(project="ad-t1-mri", run_dir=tmp_path, config={"x": 1})
    engine = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[0, 1],
        network=nn.Linear(1, 1),
        optimizer=torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1),
        loss_function=nn.MSELoss(),
        iteration_update=lambda e, b: [{"loss": torch.tensor(float("nan") if b else 1.0)}],  # decollated output
        train_handlers=[handler],
        decollate=False,
    )
    engine.run()
    (folder,) = offline_runs(tmp_path)
    losses = [r["train/loss"] for r in OfflineRun(folder).history if "train/loss" in r]
    assert losses[0] == 1.0 and math.isnan(losses[1])
