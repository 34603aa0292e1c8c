"""Ignite handlers for the dissertation's training loop that MONAI does not provide (dissertation 4.6).

- ``EpochSeeder``: reseeds at every epoch so that a resumed run repeats the uninterrupted one exactly.
- ``NonFiniteLossGuard``: a NaN/inf loss never updates weights; repeated ones stop training with a clear error.
- ``DualEarlyStopping``: stops only when neither validation accuracy nor validation loss improved for ``patience``
  validations (ignite's EarlyStopping follows a single score).
- ``ResumeFromLatestCheckpoint``: resumes from the newest intact per-epoch checkpoint (an unreadable newest one,
  e.g. cut short by a crash, is skipped with a warning).
- ``BestMetricTrackerState``: lets a per-epoch checkpoint carry the best-so-far scores of MONAI's CheckpointSavers.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver
from monai.utils import set_determinism

from .checkpoints import read_checkpoint, state_dict_problem
from .data import BundleInputError

logger = logging.getLogger(__name__)

EPOCH_CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


class EpochSeeder:
    """Seed every random generator with ``seed + epoch`` at the start of each epoch.

    Shuffling and augmentation of an epoch then depend only on the seed and the epoch number, not on how many
    random numbers earlier epochs consumed, so "1 epoch + resume + 1 epoch" gives the same weights as 2 epochs.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        set_determinism(seed=self.seed + engine.state.epoch)


class NonFiniteLossGuard:
    """Drop the update of any batch whose loss is NaN or infinite, and stop after ``max_consecutive`` in a row.

    Runs after backward and before the optimizer step: gradients are set to None, which makes AdamW skip every
    parameter (no step, no weight decay, no moment update). The batch's image ids are logged so the offending scans
    can be inspected.

    Args:
        max_consecutive: number of non-finite losses in a row that aborts training with a RuntimeError.
        id_key: batch key holding the scan ids to report.
    """

    def __init__(self, max_consecutive: int = 3, id_key: str = "image_id") -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}.")
        self.max_consecutive = max_consecutive
        self.id_key = id_key
        self.consecutive = 0
        self.skipped: list[list[str]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = engine.state.output["loss"]
        if bool(torch.isfinite(loss.detach()).all()):
            self.consecutive = 0
            return
        for group in engine.optimizer.param_groups:
            for param in group["params"]:
                param.grad = None
        self.consecutive += 1
        ids = self._batch_ids(engine)
        self.skipped.append(ids)
        logger.warning(
            f"Non-finite loss ({loss.item()}) at epoch {engine.state.epoch}, iteration {engine.state.iteration}; "
            f"the update was skipped. Scans in the batch: {', '.join(ids)}"
        )
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"{self.consecutive} non-finite losses in a row (last batch: {', '.join(ids)}). Training stopped: "
                f"check these scans for NaN/inf voxels or constant images, or lower the learning rates."
            )

    def _batch_ids(self, engine: Engine) -> list[str]:
        batch = engine.state.batch
        ids = batch.get(self.id_key) if isinstance(batch, Mapping) else None
        if ids is None:
            return ["<unknown ids>"]
        return [str(i) for i in ids]


class DualEarlyStopping:
    """Early stopping with two counters, one on validation accuracy and one on validation loss (dissertation 4.6.4).

    Training stops only when neither metric improved for ``patience`` consecutive validations. Built with the
    validator whose metrics it reads and attached to the trainer it stops. Its state is saved in the per-epoch
    checkpoint so a resumed run continues counting where it stopped.

    Args:
        validator: the engine whose ``state.metrics`` hold the two metrics after each validation.
        patience: validations without improvement of both metrics before stopping.
        accuracy_metric: name of the validator metric that should increase.
        loss_metric: name of the validator metric that should decrease.
        min_delta: smallest change counted as an improvement.
    """

    def __init__(
        self,
        validator: Engine,
        patience: int = 5,
        accuracy_metric: str = "val_accuracy",
        loss_metric: str = "val_loss",
        min_delta: float = 0.0,
    ) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}.")
        self.validator = validator
        self.trainer: Engine | None = None
        self.patience = patience
        self.accuracy_metric = accuracy_metric
        self.loss_metric = loss_metric
        self.min_delta = min_delta
        self.best_accuracy = -math.inf
        self.best_loss = math.inf
        self.accuracy_counter = 0
        self.loss_counter = 0

    def attach(self, trainer: Engine) -> None:
        self.trainer = trainer
        self.validator.add_event_handler(Events.COMPLETED, self)

    def __call__(self, validator: Engine) -> None:
        accuracy = float(validator.state.metrics[self.accuracy_metric])
        loss = float(validator.state.metrics[self.loss_metric])
        if accuracy > self.best_accuracy + self.min_delta:
            self.best_accuracy, self.accuracy_counter = accuracy, 0
        else:
            self.accuracy_counter += 1
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.loss_counter = loss, 0
        else:
            self.loss_counter += 1
        if min(self.accuracy_counter, self.loss_counter) >= self.patience and self.trainer is not None:
            logger.info(
                f"Early stopping: neither {self.accuracy_metric} (best {self.best_accuracy:.4f}) nor "
                f"{self.loss_metric} (best {self.best_loss:.4f}) improved for {self.patience} validations."
            )
            self.trainer.terminate()

    def state_dict(self) -> dict[str, float]:
        return {
            "best_accuracy": self.best_accuracy,
            "best_loss": self.best_loss,
            "accuracy_counter": self.accuracy_counter,
            "loss_counter": self.loss_counter,
        }

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.best_accuracy = float(state["best_accuracy"])
        self.best_loss = float(state["best_loss"])
        self.accuracy_counter = int(state["accuracy_counter"])
        self.loss_counter = int(state["loss_counter"])


class BestMetricTrackerState:
    """Expose the best-score list of a MONAI ``CheckpointSaver`` (save_key_metric=True) as a checkpointable object.

    Without it a resumed run would forget the best score so far and overwrite the best model with the first
    validation after the restart. CheckpointSaver restores the list through its public ``load_state_dict``; it has
    no public accessor for saving it, hence the one read of its ignite Checkpoint here.
    """

    def __init__(self, saver: CheckpointSaver) -> None:
        if saver._key_metric_checkpoint is None:
            raise ValueError("The CheckpointSaver does not save a key metric (save_key_metric=False).")
        self.saver = saver

    def state_dict(self) -> dict:
        return self.saver._key_metric_checkpoint.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        self.saver.load_state_dict(state)


def epoch_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """The per-epoch checkpoints ``checkpoint_epoch=N.pt`` in ``ckpt_dir``, newest (highest N) first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := EPOCH_CHECKPOINT_PATTERN.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_epoch_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The per-epoch checkpoint with the highest epoch number in ``ckpt_dir``, or None."""
    found = epoch_checkpoints(ckpt_dir)
    return found[0] if found else None


EPOCH_CHECKPOINT_EXPECTED = "a per-epoch training checkpoint of this bundle (checkpoint_epoch=N.pt)"


def training_checkpoint_problem(checkpoint: Any, load_dict: Mapping[str, Any]) -> str | None:
    """Why a loaded per-epoch checkpoint cannot restore ``load_dict``, in words; None when it can."""
    if not isinstance(checkpoint, Mapping):
        return f"it holds a {type(checkpoint).__name__}, not a dict of training state"
    missing = [key for key in load_dict if key not in checkpoint]
    if missing:
        return (
            f"it lacks {', '.join(missing)} (written by another version of the bundle, or not a per-epoch checkpoint)"
        )
    network = load_dict.get("model")
    if isinstance(network, torch.nn.Module):
        if not isinstance(checkpoint["model"], Mapping):
            return "its 'model' entry is not a state dict"
        return state_dict_problem(checkpoint["model"], network)
    return None


class ResumeFromLatestCheckpoint:
    """Resume an interrupted run from the newest intact ``checkpoint_epoch=N.pt`` in ``ckpt_dir`` (if ``enabled``).

    The candidates are read (``torch.load(weights_only=True)``) and checked when the handler is attached, before the
    trainer runs. A newest file that cannot be read, typically one cut short when the machine stopped while saving,
    is skipped with a warning and the previous one is used (the per-epoch saver keeps two, so at most one epoch is
    trained again). No intact file at all stops with one line naming the files and the fix. The state (network,
    optimizer, scheduler, trainer, early stopping, best-model tracking) is restored at ``Events.STARTED``, as MONAI's
    CheckpointLoader does, since ``Engine.run`` would otherwise reset the trainer's epoch. Must be the first trainer
    handler so the state is restored before anything else reads it.

    Args:
        ckpt_dir: folder of the per-epoch checkpoints.
        load_dict: objects to restore, the same dict the per-epoch CheckpointSaver saves.
        enabled: False starts from scratch even if checkpoints exist.
        map_location: device for loading.
    """

    def __init__(
        self, ckpt_dir: str | Path, load_dict: dict[str, Any], enabled: bool = True, map_location: Any = None
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.load_dict = load_dict
        self.enabled = enabled
        self.map_location = map_location
        self.loaded_from: Path | None = None
        self.skipped: list[Path] = []
        self._checkpoint: Mapping[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        candidates = epoch_checkpoints(self.ckpt_dir)
        if not candidates:
            return
        broken: list[tuple[Path, str]] = []
        for path in candidates:
            try:
                checkpoint = read_checkpoint(path, EPOCH_CHECKPOINT_EXPECTED, self.map_location)
            except BundleInputError as err:
                broken.append((path, err.message))
                continue
            problem = training_checkpoint_problem(checkpoint, self.load_dict)
            if problem is None:
                break
            broken.append((path, f"{path} does not fit this run: {problem}"))
            checkpoint = None  # free it before reading the next candidate
        else:
            details = " ".join(reason for _, reason in broken)
            raise BundleInputError(
                f"cannot resume training: no intact per-epoch checkpoint in {self.ckpt_dir}. {details} Move these "
                f"files away, or start afresh with --resume False."
            )
        self.skipped = [p for p, _ in broken]
        for skipped, reason in broken:
            logger.warning(f"Skipping {skipped.name} for resuming: {reason}")
        if broken:
            logger.warning(
                f"Resuming from {path.name}, older than {broken[0][0].name}: the epochs after it are trained again."
            )
        epoch = int(EPOCH_CHECKPOINT_PATTERN.search(path.name).group(1))
        max_epochs = engine.state.max_epochs
        if max_epochs is not None and epoch > max_epochs:
            raise BundleInputError(
                f"{path} is at epoch {epoch}, beyond max_epochs {max_epochs}: pass --train#trainer#max_epochs "
                f"{epoch + 1} or more to continue it, or --resume False to start afresh."
            )
        logger.info(f"Resuming training from {path}.")
        self._checkpoint = checkpoint
        self.loaded_from = path
        engine.add_event_handler(Events.STARTED, self._restore)

    def _restore(self, engine: Engine) -> None:
        if self._checkpoint is None:  # restored once: a second run of the trainer continues from its own state
            return
        prior_max_epochs = engine.state.max_epochs  # the checkpoint's own max_epochs must not win
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=self._checkpoint, strict=True)
        engine.state.max_epochs = prior_max_epochs
        self._checkpoint = None
        logger.info(f"Restored all variables from {self.loaded_from}")


class EpochLogWriter:
    """Append one row per epoch to ``<output_dir>/training_log.csv``: mean training loss, the trainer's and the
    validator's metrics, and each param group's learning rate. The file is what training curves are drawn from,
    whether or not W&B is on, and survives a resume (rows of re-run epochs are replaced, not duplicated).

    Args:
        output_dir: folder of the CSV.
        validator: the engine whose metrics (e.g. val_accuracy, val_loss) are logged after each validation.
    """

    def __init__(self, output_dir: str | Path, validator: Engine | None = None, filename: str = "training_log.csv"):
        self.path = Path(output_dir) / filename
        self.validator = validator
        self._losses: list[float] = []
        self._learning_rates: dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _start_epoch(self, engine: Engine) -> None:
        self._losses = []
        # Read before the epoch-level scheduler steps at EPOCH_COMPLETED: the rates this epoch trained with.
        self._learning_rates = {
            f"lr_{group.get('name', index)}": float(group["lr"])
            for index, group in enumerate(engine.optimizer.param_groups)
        }

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output["loss"] if isinstance(output, Mapping) else output[0]["loss"]
        self._losses.append(float(loss))

    def _write(self, engine: Engine) -> None:
        import csv

        finite = [x for x in self._losses if math.isfinite(x)]
        row: dict[str, Any] = {"epoch": engine.state.epoch, "train_loss": sum(finite) / len(finite) if finite else None}
        row.update({k: float(v) for k, v in engine.state.metrics.items() if _is_number(v)})
        if self.validator is not None and self.validator.state.epoch == engine.state.epoch:
            row.update({k: float(v) for k, v in self.validator.state.metrics.items() if _is_number(v)})
        row.update(self._learning_rates)
        rows = []
        if self.path.is_file():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < engine.state.epoch]
        rows.append(row)
        columns = list(dict.fromkeys(k for r in rows for k in r))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) or (isinstance(value, torch.Tensor) and value.numel() == 1)
