"""Ignite handlers for the dissertation's training loop that MONAI does not provide (dissertation 4.6).

- ``EpochSeeder``: reseeds at every epoch so that a resumed run repeats the uninterrupted one exactly.
- ``NonFiniteLossGuard``: a NaN/inf loss never updates weights; repeated ones stop training with a clear error.
- ``DualEarlyStopping``: stops only when neither validation accuracy nor validation loss improved for ``patience``
  validations (ignite's EarlyStopping follows a single score).
- ``ResumeFromLatestCheckpoint`` (in :mod:`scripts.resume`): resumes from the newest intact per-epoch checkpoint
  (an unreadable newest one, e.g. cut short by a crash, is skipped with a warning).
- ``BestMetricTrackerState``: lets a per-epoch checkpoint carry the best-so-far scores of MONAI's CheckpointSavers.

Under torchrun (``configs/multi_gpu_train.json``) every process runs these handlers, and the decisions that must be
the same everywhere are taken together (:mod:`scripts.distributed`): the guard skips an update on all processes
when any of them saw a non-finite loss, early stopping decides on rank 0's validation metrics, and every process
resumes from the same checkpoint or none starts. Without torchrun they behave as in a single process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver
from monai.utils import set_determinism

from . import distributed
from .resume import (  # noqa: F401  (re-exported: the configs and tests name them here)
    EPOCH_CHECKPOINT_PATTERN,
    ResumeFromLatestCheckpoint,
    epoch_checkpoints,
    latest_epoch_checkpoint,
    training_checkpoint_problem,
)

logger = logging.getLogger(__name__)

#: Under torchrun, rank r seeds with ``seed + epoch + r * RANK_SEED_STRIDE`` (rank 0, and a single process, with
#: ``seed + epoch``), so the processes draw different augmentations.
RANK_SEED_STRIDE = 100_000


class EpochSeeder:
    """Seed every random generator with ``seed + epoch`` at the start of each epoch.

    Shuffling and augmentation of an epoch then depend only on the seed and the epoch number, not on how many
    random numbers earlier epochs consumed, so "1 epoch + resume + 1 epoch" gives the same weights as 2 epochs.
    Under torchrun, rank r adds ``r * RANK_SEED_STRIDE`` so that the processes do not repeat each other's noise.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        set_determinism(seed=self.seed + engine.state.epoch + distributed.rank() * RANK_SEED_STRIDE)


class NonFiniteLossGuard:
    """Drop the update of any batch whose loss is NaN or infinite, and stop after ``max_consecutive`` in a row.

    Runs after backward and before the optimizer step: gradients are set to None, which makes AdamW skip every
    parameter (no step, no weight decay, no moment update). The batch's image ids are logged so the offending scans
    can be inspected. Under torchrun the processes' gradients are averaged during backward, so one process's
    non-finite loss spoils every process's gradients: the update is then dropped on all of them, they count the
    same streak and stop together.

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
        finite_here = bool(torch.isfinite(loss.detach()).all())
        if not distributed.any_process(not finite_here):
            self.consecutive = 0
            return
        scaler = getattr(engine, "scaler", None)  # MONAI's trainer makes a GradScaler whenever amp=True
        for group in engine.optimizer.param_groups:
            for param in group["params"]:
                if scaler is not None and param.grad is not None:
                    # GradScaler.step() asserts that it saw gradients; NaN ones make it skip the update itself.
                    param.grad.fill_(math.nan)
                elif scaler is None:
                    param.grad = None
        self.consecutive += 1
        ids = self._batch_ids(engine)
        self.skipped.append(ids)
        where = f"epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        if finite_here:  # only under torchrun: another process's loss was not finite
            logger.warning(f"Non-finite loss on another process at {where}; the update was skipped on every process.")
            last = "on another process"
        else:
            logger.warning(
                f"Non-finite loss ({loss.item()}) at {where}; the update was skipped. Scans in the batch: "
                f"{', '.join(ids)}"
            )
            last = ", ".join(ids)
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"{self.consecutive} non-finite losses in a row (last batch: {last}). Training stopped: "
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
    checkpoint so a resumed run continues counting where it stopped. Under torchrun every process decides on rank
    0's two values (MONAI's metrics are already reduced over the processes; the broadcast makes equality certain),
    so all of them stop at the same epoch and hold the state rank 0 saves.

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
        accuracy, loss = distributed.broadcast_from_rank0([accuracy, loss])
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
