"""Experiment tracking with Weights & Biases for MONAI's ignite engines.

MONAI ships MLflow and ClearML handlers but none for W&B, which the dissertation used. :class:`WandbHandler` fills
that gap. It is written to be safe by default: it runs offline unless the user chose another ``WANDB_MODE``, collects
no machine metadata, system metrics, hostname, git state, code, requirements or console output, and it never stops a
training run because W&B could not start.
"""

from __future__ import annotations

import logging
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ignite.engine import Engine, Events

if TYPE_CHECKING:  # wandb is imported lazily so that ``enabled=False`` never loads it
    from wandb.sdk.wandb_run import Run

logger = logging.getLogger(__name__)

#: W&B settings applied to every run (the user's ``settings`` argument may override them). All exist in wandb 0.31.
PRIVACY_SETTINGS: dict[str, Any] = {
    "x_disable_meta": True,  # no wandb-metadata.json: hostname, username, OS, program path, command-line args, GPU
    "x_disable_stats": True,  # no system-metrics sampling (CPU, memory, disk, network, GPU)
    "x_disable_machine_info": True,  # no automatic machine-info collection
    "disable_git": True,  # no git remote URL / commit / diff
    "disable_code": True,  # no copy of the running script
    "save_code": False,
    "x_save_requirements": False,  # pip freeze can list file:// paths that contain the user's home directory
    "console": "off",  # console logs hold absolute paths (and so usernames); the metrics are logged explicitly
    "host": "",  # without this wandb fills in socket.gethostname() and stores it in the run record
}

OFFLINE_BY_DEFAULT = "offline"


class WandbTrackingWarning(UserWarning):
    """W&B could not be used; training continues without tracking."""


def _as_bool(value: bool | str | int) -> bool:
    """``True``/``False`` from a bool or from a command-line string such as ``"False"``, ``"0"`` or ``"no"``."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"Cannot read {value!r} as a boolean for WandbHandler(enabled=...).")
    return bool(value)


def _as_scalar(value: Any) -> float | None:
    """A float from a Python number, a NumPy scalar or a tensor (mean of its elements); ``None`` if not numeric.

    Non-finite values (NaN, inf) are returned as they are so that a diverging loss shows up in W&B.
    """
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Number):
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):  # complex numbers
            return None
    if isinstance(value, torch.Tensor):
        if value.numel() == 0 or value.is_complex():
            return None
        return float(value.detach().float().mean().item())
    if isinstance(value, np.ndarray) and value.size and value.dtype.kind in "biuf":
        return float(np.mean(value.astype(np.float64)))
    return None


def _loss_from_output(output: Any) -> float | None:
    """The loss of one iteration from a MONAI engine output (batched dict, list of decollated dicts or a tensor)."""
    if isinstance(output, (list, tuple)):
        output = output[0] if output else None
    if isinstance(output, Mapping):
        output = output.get("loss")
    return _as_scalar(output)


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a (resolved) config: mappings, sequences and scalars kept, anything else as text."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    scalar = _as_scalar(value)
    return scalar if scalar is not None else str(value)


class WandbHandler:
    """Log a MONAI training run to Weights & Biases: loss, learning rates, metrics, config and best checkpoints.

    Attach it to the trainer (MONAI calls ``attach(trainer)`` for every item of ``train#handlers``; the item is
    ``_disabled_`` unless ``is_main_process``, which ``configs/multi_gpu_train.json`` makes true on rank 0 only, so
    a multi-GPU job makes one W&B run). It records:

    * at every training iteration, ``train/loss`` (the engine output's ``"loss"``; NaN is logged as NaN);
    * at every training epoch, ``lr/<group>`` for each optimizer param group (its ``"name"``, else its index) as it
      was when the epoch started, and ``train/<metric>`` for the trainer's epoch metrics;
    * after every validation run, ``val/<metric>`` for the validator's metrics;
    * at the end of training, the existing files of ``checkpoints`` as one W&B artifact of type ``"model"``; then
      the run is finished. If the trainer raises, the run is finished with exit code 1 and the exception re-raised.

    Step scheme: W&B's step is always the trainer's global iteration (``trainer.state.iteration``), so every
    ``log`` call goes forward monotonically and epoch-level values share the row of the epoch's last iteration.
    Epoch-level keys also carry an ``epoch`` value and are declared with ``define_metric(..., step_metric="epoch")``,
    so W&B plots them against the epoch while ``train/loss`` is plotted against iterations.

    The W&B run is created when the trainer starts (not at construction), offline unless the environment variable
    ``WANDB_MODE`` says otherwise (``online``, ``disabled``...), and with :data:`PRIVACY_SETTINGS`. Run files go
    to ``<run_dir>/wandb/``. If W&B cannot be imported or initialised, a :class:`WandbTrackingWarning` is issued
    and training continues untracked; errors while logging are likewise reported once and ignored.

    Args:
        enabled: ``False`` (or ``"False"``/``"0"`` from the command line) makes :meth:`attach` a no-op; W&B is then
            never imported.
        project: W&B project name.
        run_dir: directory under which W&B writes its ``wandb/`` folder (created if missing).
        config: the resolved hyperparameters, logged as the run's config (non-JSON values are stored as text).
        validator: the evaluator run by ``ValidationHandler``; its metrics are logged as ``val/<metric>``.
        checkpoints: checkpoint files to store as a ``"model"`` artifact when training completes; missing files
            are skipped.
        run_name: display name of the run; ``None`` lets W&B choose a random one.
        tags: optional run tags.
        artifact_name: name of the checkpoint artifact; ``None`` gives ``"model-<run id>"``.
        settings: extra ``wandb.Settings`` fields, applied over :data:`PRIVACY_SETTINGS`.
    """

    def __init__(
        self,
        enabled: bool | str = True,
        project: str = "ad-t1-mri",
        run_dir: str | os.PathLike[str] = ".",
        config: Mapping[str, Any] | None = None,
        validator: Engine | None = None,
        checkpoints: Sequence[str | os.PathLike[str]] = (),
        run_name: str | None = None,
        tags: Sequence[str] | None = None,
        artifact_name: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.enabled = _as_bool(enabled)
        self.project = project
        self.run_dir = Path(run_dir)
        self.config = dict(config) if config is not None else {}
        self.validator = validator
        self.checkpoints = [Path(p) for p in checkpoints]
        self.run_name = run_name
        self.tags = list(tags) if tags else None
        self.artifact_name = artifact_name
        self.settings = dict(settings) if settings else {}

        self.run: Run | None = None
        self._trainer: Engine | None = None
        self._epoch_lrs: dict[str, float] = {}
        self._defined: set[str] = set()
        self._failed_calls: set[str] = set()

    # ------------------------------------------------------------------ attaching

    def attach(self, engine: Engine) -> None:
        """Register the handler's callbacks on the trainer (and on the validator, if one was given)."""
        if not self.enabled:
            return
        self._trainer = engine
        callbacks = (
            (Events.STARTED, self.start),
            (Events.EPOCH_STARTED, self.epoch_started),
            (Events.ITERATION_COMPLETED, self.iteration_completed),
            (Events.EPOCH_COMPLETED, self.epoch_completed),
            (Events.COMPLETED, self.completed),
            (Events.EXCEPTION_RAISED, self.exception_raised),
        )
        for event, callback in callbacks:
            if not engine.has_event_handler(callback, event):
                engine.add_event_handler(event, callback)
        if self.validator is not None and not self.validator.has_event_handler(self.validation_completed):
            # COMPLETED (not EPOCH_COMPLETED) so that every metric of the validator has been computed.
            self.validator.add_event_handler(Events.COMPLETED, self.validation_completed)

    # ------------------------------------------------------------------ run life cycle

    def start(self, engine: Engine) -> None:
        """Create the W&B run (once per training run) with the config; warn and go on untracked on failure."""
        if self.run is not None:
            return
        try:
            import wandb

            # WANDB_MODE is read here rather than left to wandb: wandb caches its environment settings per process
            # at the first init, so a WANDB_MODE changed later in the same process would otherwise be ignored.
            mode = os.environ.get("WANDB_MODE") or OFFLINE_BY_DEFAULT
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=self.project,
                name=self.run_name,
                dir=str(self.run_dir),
                config=_plain(self.config),
                tags=self.tags,
                job_type="train",
                reinit="create_new",
                settings=wandb.Settings(**{**PRIVACY_SETTINGS, **self.settings}),
                mode=mode,
            )
        except Exception as e:  # tracking must never stop training
            self.run = None
            message = (
                f"Weights & Biases could not be initialised ({type(e).__name__}: {e}); training continues untracked."
            )
            logger.warning(message)
            warnings.warn(message, WandbTrackingWarning, stacklevel=2)
            return
        self._defined.clear()
        self._failed_calls.clear()
        self._call("define_metric", self.run.define_metric, "epoch")

    def completed(self, engine: Engine) -> None:
        """Log the checkpoints as a ``"model"`` artifact, then finish the run."""
        if self.run is None:
            return
        self._call("log_artifact", self._log_checkpoints, engine)
        self._finish(exit_code=0)

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        """Finish the run with exit code 1, then re-raise ``e``.

        Ignite only re-raises by itself when *no* ``EXCEPTION_RAISED`` handler is registered, so this handler must
        re-raise (as MONAI's ``StatsHandler`` does) or the failure would be swallowed. Because the first handler to
        re-raise ends the chain, list this handler before ``StatsHandler`` in ``train#handlers``; otherwise the run
        is closed by wandb's own exit hook when the process ends.
        """
        if self.run is not None:
            self._finish(exit_code=1)
        raise e

    def _finish(self, exit_code: int) -> None:
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=exit_code)
            except Exception as err:
                self._warn_once("finish", err)

    # ------------------------------------------------------------------ logging

    def epoch_started(self, engine: Engine) -> None:
        """Remember the learning rates the epoch starts with (an epoch-level scheduler may change them at its end)."""
        self._epoch_lrs = self._learning_rates(engine)

    def iteration_completed(self, engine: Engine) -> None:
        """Log ``train/loss`` at step = global iteration."""
        if self.run is None:
            return
        loss = _loss_from_output(engine.state.output)
        if loss is not None:
            self._log({"train/loss": loss}, step=engine.state.iteration)

    def epoch_completed(self, engine: Engine) -> None:
        """Log the epoch's learning rates (``lr/<group>``) and the trainer's epoch metrics (``train/<metric>``)."""
        if self.run is None:
            return
        values = {f"lr/{name}": lr for name, lr in (self._epoch_lrs or self._learning_rates(engine)).items()}
        values.update(self._metrics(engine, prefix="train/"))
        self._log_epoch(values, epoch=engine.state.epoch, step=engine.state.iteration)

    def validation_completed(self, validator: Engine) -> None:
        """Log the validator's metrics as ``val/<metric>`` at the trainer's current step and epoch."""
        if self.run is None or self._trainer is None:
            return
        values = self._metrics(validator, prefix="val/")
        state = self._trainer.state
        self._log_epoch(values, epoch=state.epoch, step=state.iteration)

    def _log_epoch(self, values: dict[str, float], epoch: int, step: int) -> None:
        if not values:
            return
        for key in values:
            if key not in self._defined:
                self._call("define_metric", self.run.define_metric, key, step_metric="epoch")  # type: ignore[union-attr]
                self._defined.add(key)
        self._log({**values, "epoch": epoch}, step=step)

    def _log(self, values: dict[str, float], step: int) -> None:
        self._call("log", self.run.log, values, step=step)  # type: ignore[union-attr]

    def _log_checkpoints(self, engine: Engine) -> None:
        import wandb

        existing = [p for p in self.checkpoints if p.is_file()]
        for missing in (p for p in self.checkpoints if not p.is_file()):
            logger.info("Checkpoint %s does not exist; not logged to W&B.", missing)
        if not existing or self.run is None:
            return
        artifact = wandb.Artifact(
            name=self.artifact_name or f"model-{self.run.id}",
            type="model",
            description="Checkpoints saved by the MONAI bundle's training run.",
            metadata={"epochs": engine.state.epoch, "iterations": engine.state.iteration},
        )
        used: set[str] = set()
        for index, path in enumerate(existing):
            name = path.name if path.name not in used else f"{index}_{path.name}"
            used.add(name)
            artifact.add_file(str(path), name=name)  # copied to W&B's staging area, so later overwrites are safe
        self.run.log_artifact(artifact)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _learning_rates(engine: Engine) -> dict[str, float]:
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is None:
            return {}
        rates = {}
        for index, group in enumerate(optimizer.param_groups):
            lr = _as_scalar(group.get("lr"))
            if lr is not None:
                rates[str(group.get("name", index))] = lr
        return rates

    @staticmethod
    def _metrics(engine: Engine, prefix: str) -> dict[str, float]:
        values = {}
        for name, value in (engine.state.metrics or {}).items():
            scalar = _as_scalar(value)
            if scalar is None:
                logger.debug("Metric %s is not a scalar; not logged to W&B.", name)
                continue
            values[f"{prefix}{name}"] = scalar
        return values

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> None:
        try:
            function(*args, **kwargs)
        except Exception as e:  # tracking must never stop training
            self._warn_once(what, e)

    def _warn_once(self, what: str, error: Exception) -> None:
        if what in self._failed_calls:
            return
        self._failed_calls.add(what)
        message = f"W&B {what} failed ({type(error).__name__}: {error}); training continues."
        logger.warning(message)
        warnings.warn(message, WandbTrackingWarning, stacklevel=3)


__all__ = ["PRIVACY_SETTINGS", "WandbHandler", "WandbTrackingWarning"]
