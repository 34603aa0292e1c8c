"""Resuming an interrupted training run from its per-epoch checkpoints (``checkpoint_epoch=N.pt``).

``ResumeFromLatestCheckpoint`` reads the candidates newest first and skips an unreadable newest one (e.g. cut short by
a crash) with a warning; under torchrun every process resumes from the same checkpoint or none starts
(:mod:`scripts.distributed`). MONAI's ``CheckpointLoader`` loads one named file and fails on a broken one, which is why
this is written here. Re-exported by :mod:`scripts.handlers`, where the configs name it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from . import distributed
from .checkpoints import read_checkpoint, state_dict_problem
from .data import BundleInputError

logger = logging.getLogger(__name__)

EPOCH_CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def epoch_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """The per-epoch checkpoints ``checkpoint_epoch=N.pt`` in ``ckpt_dir``, newest (highest N) first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := EPOCH_CHECKPOINT_PATTERN.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _epoch_of(path: Path) -> int:
    return int(EPOCH_CHECKPOINT_PATTERN.search(path.name).group(1))


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
    handler so the state is restored before anything else reads it. Under torchrun every process reads and restores
    the checkpoint itself (onto its own device), and all of them stop with one message unless they found the same
    epoch (e.g. a ``ckpt_dir`` that is not on a file system shared by the nodes).

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
        try:
            found, error = self._find(), None
        except BundleInputError as err:  # raised below, once every process has said what it found
            found, error = None, err
        epoch = -1 if error is not None else 0 if found is None else _epoch_of(found[0])
        epochs = distributed.gather_ints(epoch)  # [epoch] in a single process
        if error is not None:
            raise error
        if len(set(epochs)) > 1:
            raise self._disagreement(epochs)
        if found is None:
            return
        path, checkpoint, broken = found
        self.skipped = [p for p, _ in broken]
        for skipped, reason in broken:
            logger.warning(f"Skipping {skipped.name} for resuming: {reason}")
        if broken:
            logger.warning(
                f"Resuming from {path.name}, older than {broken[0][0].name}: the epochs after it are trained again."
            )
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

    def _find(self) -> tuple[Path, Mapping[str, Any], list[tuple[Path, str]]] | None:
        """The newest intact checkpoint that fits, its content and the newer ones skipped (with why); None if none."""
        candidates = epoch_checkpoints(self.ckpt_dir)
        if not candidates:
            return None
        broken: list[tuple[Path, str]] = []
        for path in candidates:
            try:
                checkpoint = read_checkpoint(path, EPOCH_CHECKPOINT_EXPECTED, self.map_location)
            except BundleInputError as err:
                broken.append((path, err.message))
                continue
            problem = training_checkpoint_problem(checkpoint, self.load_dict)
            if problem is None:
                return path, checkpoint, broken
            broken.append((path, f"{path} does not fit this run: {problem}"))
            checkpoint = None  # free it before reading the next candidate
        details = " ".join(reason for _, reason in broken)
        raise BundleInputError(
            f"cannot resume training: no intact per-epoch checkpoint in {self.ckpt_dir}. {details} Move these "
            f"files away, or start afresh with --resume False."
        )

    def _disagreement(self, epochs: list[int]) -> BundleInputError:
        """The error stopping every process when they would not all resume from the same epoch (under torchrun)."""
        seen = ", ".join(
            f"rank {r}: " + ("an unusable folder" if e < 0 else "nothing" if e == 0 else f"epoch {e}")
            for r, e in enumerate(epochs)
        )
        return BundleInputError(
            f"cannot resume training: the processes do not find the same checkpoint in {self.ckpt_dir} ({seen}). "
            f"--ckpt_dir must be one folder that every node sees (a shared file system), or pass --resume False."
        )

    def _restore(self, engine: Engine) -> None:
        if self._checkpoint is None:  # restored once: a second run of the trainer continues from its own state
            return
        prior_max_epochs = engine.state.max_epochs  # the checkpoint's own max_epochs must not win
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=self._checkpoint, strict=True)
        engine.state.max_epochs = prior_max_epochs
        self._checkpoint = None
        logger.info(f"Restored all variables from {self.loaded_from}")
