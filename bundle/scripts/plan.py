"""The preprocessing plan: the settings that made a model's training volumes, stored with the data and the model.

A model trained on 2 mm / 32³ volumes gives meaningless probabilities for 1 mm / 128³ ones, and nothing in a volume
says how it was made. So, as nnU-Net keeps its plans beside a trained model, the batch preprocessing writes
``plan.json`` beside the datalist (every resolved setting of ``configs/preprocess.json``, the QC thresholds, the
skull-stripper weights' hash and the package versions); training copies it into ``ckpt_dir`` and into each epoch
checkpoint; evaluation and inference read the plan of the model they load and refuse settings that contradict it.

``configs/preprocess.json`` stays the one source of every default: the settings are its top-level values.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .data import DEFAULT_CLASSES, class_list_problem

logger = logging.getLogger(__name__)

PLAN_NAME = "plan.json"
PLAN_FORMAT = 1
PREPROCESS_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "preprocess.json"
#: Settings that change the model-ready volume: a model must see volumes made with the values it was trained on.
MODEL_READY_KEYS = ("skull_stripper", "spacing", "spatial_size", "crop_margin")
#: Top-level keys of preprocess.json that are declarations, not settings.
_NOT_SETTINGS = ("imports", "preprocessing", "qc")
_VERSIONED_PACKAGES = ("monai", "torch", "antspyx", "nibabel", "numpy", "scipy", "deepbet", "dicom2nifti", "itk")


class PlanError(SystemExit):
    """A plan is missing a setting, or a setting contradicts the plan of the data or model.

    Derived from SystemExit on purpose: MONAI wraps any ``Exception`` raised inside a config expression into a
    ``Failed to evaluate ConfigExpression`` traceback, whereas this message is printed alone, as the last line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


def _is_declaration(value: Any) -> bool:
    if isinstance(value, Mapping):
        return "_target_" in value
    return isinstance(value, list) and any(isinstance(item, Mapping) and "_target_" in item for item in value)


def _read_config(config_file: str | Path | None = None) -> dict:
    with open(config_file or PREPROCESS_CONFIG) as f:
        return json.load(f)


def default_settings(config_file: str | Path | None = None) -> dict[str, Any]:
    """Every setting of ``configs/preprocess.json`` (its top-level values that are not transform declarations)."""
    config = _read_config(config_file)
    return {
        key: copy.deepcopy(value)
        for key, value in config.items()
        if key not in _NOT_SETTINGS and not key.startswith("_") and not _is_declaration(value)
    }


def default_qc_thresholds(config_file: str | Path | None = None) -> dict[str, Any]:
    return copy.deepcopy(_read_config(config_file).get("qc", {}))


def resolve_settings(overrides: Mapping[str, Any] | None = None, config_file: str | Path | None = None) -> dict:
    """The defaults with ``overrides`` applied; an unknown setting name is refused (a typo must not be ignored)."""
    settings = default_settings(config_file)
    unknown = sorted(set(overrides or {}) - set(settings))
    if unknown:
        raise PlanError(f"unknown preprocessing setting(s) {unknown}; known: {sorted(settings)}")
    settings.update(copy.deepcopy(dict(overrides or {})))
    return settings


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_plan(
    overrides: Mapping[str, Any] | None = None,
    qc_thresholds: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The plan of a preprocessing run: resolved settings, QC thresholds, weights hash, chain, versions and the
    class list its labels index (``classes``, default CN, AD)."""
    classes = list(classes or DEFAULT_CLASSES)
    problem = class_list_problem(classes)
    if problem:
        raise PlanError(f"the class list {problem}")
    settings = resolve_settings(overrides, config_file)
    weights = None
    if settings.get("skull_stripper") == "synthstrip":
        from scripts.skull_strip import resolve_synthstrip_weights

        path = resolve_synthstrip_weights(settings.get("synthstrip_weights"))
        # Only the file's name and hash: the path is one machine's (and may hold a user name).
        weights = {"file": path.name, "sha256": file_sha256(path)}
    config = _read_config(config_file)
    qc = default_qc_thresholds(config_file)
    qc.update(dict(qc_thresholds or {}))
    chain = [item.get("_target_") for key in ("load_transforms", "volume_transforms") for item in config.get(key, [])]
    stored = dict(settings)
    stored.pop("synthstrip_weights", None)  # a local path; the hash above identifies the weights
    return {
        "plan_format": PLAN_FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": stored,
        "skull_stripper_weights": weights,
        "qc": qc,
        "chain": chain,
        "versions": _versions(),
        "classes": classes,
    }


def plan_classes(plan: Mapping[str, Any] | None) -> list[str]:
    """The class list of a plan (its labels index it); ``["CN", "AD"]`` for no plan or a plan made before classes."""
    classes = plan.get("classes") if isinstance(plan, Mapping) else None
    if classes is None:
        return list(DEFAULT_CLASSES)
    problem = class_list_problem(classes)
    if problem:
        raise PlanError(f"the 'classes' of the plan {problem}; rerun 'python -m preprocessing run'")
    return list(classes)


def read_plan(path: str | Path) -> dict[str, Any] | None:
    """The plan in ``path`` (a plan.json, or a folder holding one); None if there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / PLAN_NAME
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PlanError(f"{path} is not a valid plan file ({error}); rerun 'python -m preprocessing run'") from error
    if not isinstance(plan, dict) or "settings" not in plan:
        raise PlanError(f"{path} is not a preprocessing plan (no 'settings'); rerun 'python -m preprocessing run'")
    return plan


def differences(expected: Mapping[str, Any], given: Mapping[str, Any], keys=MODEL_READY_KEYS) -> list[str]:
    """``"key: expected -> given"`` for every model-ready setting whose values differ (numbers compared as floats)."""

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, int | float) and isinstance(b, int | float):
            return abs(float(a) - float(b)) < 1e-9
        return a == b

    return [f"{key} {expected[key]!r} vs {given[key]!r}" for key in keys if key in expected and key in given
            if not same(expected[key], given[key])]  # fmt: skip


def _atomic_write_json(data: Mapping, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def write_plan(plan: Mapping[str, Any], folder: str | Path) -> Path:
    """Write ``<folder>/plan.json``; refuse when the folder already holds volumes made with other settings or
    labelled with another class list."""
    path = Path(folder) / PLAN_NAME
    old = read_plan(path)
    if old is not None:
        changed = differences(old["settings"], plan["settings"])
        if changed:
            raise PlanError(
                f"{folder} already holds volumes made with other settings ({'; '.join(changed)} in {path} vs now). "
                f"Mixing them would give one dataset two grids: use another --out, or the settings of {path}"
            )
        before, now = plan_classes(old), plan_classes(plan)
        if before != now:
            # Labels are indices into the class list: label 1 would mean AD in one part of the manifest, MCI in another.
            raise PlanError(
                f"{folder} already holds scans labelled with the classes {', '.join(before)} ({path}), not "
                f"{', '.join(now)}: use another --out, or the classes of {path}"
            )
    return _atomic_write_json(plan, path)


def model_plan(model_file: str | Path) -> dict[str, Any] | None:
    """The plan stored beside a model (``<ckpt_dir>/plan.json``); None, with a warning, for older models."""
    plan = read_plan(Path(model_file).parent / PLAN_NAME)
    if plan is None:
        warnings.warn(
            f"No {PLAN_NAME} beside {model_file}: the settings of configs/preprocess.json are assumed. "
            f"Copy the plan.json of the model's training data next to it to be sure.",
            stacklevel=2,
        )
    return plan


def chain_overrides_for_model(
    plan: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None, force: bool = False
) -> dict[str, Any]:
    """Settings for preprocessing a raw scan for a model: its plan's, plus ``overrides`` that do not contradict it.

    An override of a model-ready setting (size, spacing, stripper, margin) with another value is refused, naming both
    values, unless ``force``; then it is used with a warning.
    """
    overrides = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    settings = dict(plan["settings"]) if plan else {}
    changed = differences(settings, overrides)
    if changed and not force:
        raise PlanError(
            f"the model was trained on volumes made with other settings: {'; '.join(changed)} (model plan vs "
            f"override). Drop the override, or pass --force_preprocess True to use it anyway"
        )
    if changed:
        warnings.warn(f"Preprocessing differs from the model's plan ({'; '.join(changed)}); forced.", stacklevel=2)
    settings.update(overrides)
    return {k: v for k, v in settings.items() if k in default_settings()}


def chain_for_plan(plan: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None, force: bool = False):
    """The per-volume chain with the settings of a model's plan (see chain_overrides_for_model)."""
    from scripts.preprocess import load_chain

    return load_chain(**chain_overrides_for_model(plan, overrides, force))


def plan_value(plan: Mapping[str, Any] | None, key: str) -> Any:
    """A setting of the plan, or its default in configs/preprocess.json for a model without one."""
    settings = plan["settings"] if plan else {}
    return settings[key] if key in settings else default_settings()[key]


def preprocess_section(name: str) -> Any:
    """One declaration of configs/preprocess.json, parsed (e.g. the load transforms the bundle configs share)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(PREPROCESS_CONFIG))
    return parser.get_parsed_content(name)


def check_dataset_matches_model(dataset_dir: str | Path, model_file: str | Path) -> None:
    """Refuse to evaluate a model on volumes made with other model-ready settings than its training data."""
    data_plan, trained_plan = read_plan(dataset_dir), read_plan(Path(model_file).parent / PLAN_NAME)
    if data_plan is None or trained_plan is None:
        missing = [str(Path(p) / PLAN_NAME) for p, plan in ((dataset_dir, data_plan),
                   (Path(model_file).parent, trained_plan)) if plan is None]  # fmt: skip
        logger.warning(f"No plan at {', '.join(missing)}: cannot check that the volumes match the model.")
        return
    changed = differences(trained_plan["settings"], data_plan["settings"])
    if changed:
        raise PlanError(
            f"the volumes in {dataset_dir} were made with other settings than the model's training data: "
            f"{'; '.join(changed)} (model vs data). Preprocess them with the model's plan"
        )


class PlanState:
    """The dataset's plan as an object of the training checkpoint (it has state_dict/load_state_dict).

    Copies ``<dataset_dir>/plan.json`` into ``ckpt_dir`` on :meth:`copy_to_ckpt_dir`; on resume, a checkpoint whose
    plan contradicts the dataset's is refused (resuming on volumes made differently would mix two grids).
    ``classes``, the training datalist's class list, must be the plan's; a plan made before plans named classes
    gets them in the copy, so that the model records what its outputs mean.
    """

    def __init__(self, dataset_dir: str | Path, ckpt_dir: str | Path, classes: Sequence[str] | None = None) -> None:
        self.dataset_dir, self.ckpt_dir = Path(dataset_dir), Path(ckpt_dir)
        self.plan = read_plan(self.dataset_dir)
        self.classes = list(classes) if classes is not None else None
        if self.plan is not None and self.classes is not None and "classes" not in self.plan:
            self.plan["classes"] = list(self.classes)

    def copy_to_ckpt_dir(self) -> Path | None:
        if self.plan is None:
            logger.warning(
                f"No {PLAN_NAME} in {self.dataset_dir}: the model will not record how its volumes were made "
                f"(make the data with 'python -m preprocessing run', which writes it)."
            )
            return None
        if self.classes is not None and plan_classes(self.plan) != self.classes:
            raise PlanError(
                f"the datalist's classes {', '.join(self.classes)} are not those of {self.dataset_dir / PLAN_NAME} "
                f"({', '.join(plan_classes(self.plan))}): make the datalist with 'python -m preprocessing split' "
                f"from this plan's data, or train on the data its classes were made for"
            )
        target = self.ckpt_dir / PLAN_NAME
        old = read_plan(target)
        if old is not None and plan_classes(old) != plan_classes(self.plan):
            raise PlanError(
                f"{target} belongs to a model trained for the classes {', '.join(plan_classes(old))}, not "
                f"{', '.join(plan_classes(self.plan))}; use another --ckpt_dir"
            )
        if old is not None and differences(old["settings"], self.plan["settings"]):
            raise PlanError(
                f"{target} belongs to a model trained on other volumes "
                f"({'; '.join(differences(old['settings'], self.plan['settings']))}); use another --ckpt_dir"
            )
        return _atomic_write_json(self.plan, target)

    def state_dict(self) -> dict[str, Any]:
        return {"plan": json.dumps(self.plan) if self.plan is not None else ""}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        stored = json.loads(state["plan"]) if state.get("plan") else None
        if stored is not None and self.plan is not None:
            changed = differences(stored["settings"], self.plan["settings"])
            if plan_classes(stored) != plan_classes(self.plan):
                changed.append(f"classes {plan_classes(stored)} vs {plan_classes(self.plan)}")
            if changed:
                raise PlanError(
                    f"the checkpoint in {self.ckpt_dir} was trained on volumes made with other settings "
                    f"({'; '.join(changed)}; checkpoint vs {self.dataset_dir}); "
                    f"use --resume False or another --ckpt_dir"
                )
