"""Reading the bundle's checkpoints safely, with errors that name the file and what it should have held.

``torch.load(weights_only=True)`` is the only loader used: a checkpoint is data, never code. torch's own messages for
a refused or broken file recommend ``weights_only=False`` (which would run whatever the file holds); they are
replaced here by one line naming the file, what was expected and the fix.

- :func:`read_checkpoint`: load a file or raise :class:`~scripts.data.BundleInputError` (:func:`why_unreadable`).
- :func:`model_state_dict`: the classifier's state dict inside a checkpoint (flat, or under ``model``).
- :func:`guess_architecture` / :func:`state_dict_problem`: which network a state dict holds, what does not fit.
- :class:`ModelCheckpointLoader`: the evaluator/inference handler replacing MONAI's ``CheckpointLoader``.
- :func:`model_classes` / :func:`check_model_classes`: the classes a model's outputs mean, and refusing a test
  datalist with other classes.
"""

from __future__ import annotations

import functools
import logging
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from .data import BundleInputError, datalist_classes, default_class_names

logger = logging.getLogger(__name__)

STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict")


def read_checkpoint(path: str | Path, expected: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a missing, truncated, foreign or unsafe file raises a named error.

    Args:
        path: the checkpoint file.
        expected: what the file should hold, for the message (e.g. "a checkpoint of r3d_18 (model.pt)").
        map_location: device the tensors are loaded to.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleInputError(f"{path} does not exist; expected {expected}.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, KeyError... for broken files
        raise BundleInputError(f"{path} cannot be loaded: {why_unreadable(path, err)}; expected {expected}.") from None


def why_unreadable(path: str | Path, err: Exception) -> str:
    """Why torch.load failed on ``path``, in words, without torch's advice to load with weights_only=False."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        return (
            f"it is not a complete PyTorch checkpoint ({size:,} bytes, no zip archive end): it was truncated "
            f"(interrupted copy or save, full disk) or is not a file written by torch.save"
        )
    text = str(err)
    if "weights only" in text.lower() or "weights_only" in text:
        # torch's message here advises weights_only=False, i.e. executing the file's code: never passed on.
        return (
            "it holds Python objects other than tensors and plain containers, which the bundle does not load "
            "(it loads with torch.load(weights_only=True) so that a checkpoint cannot run code)"
        )
    first_line = text.splitlines()[0][:200] if text else ""
    return f"torch.load failed on this zip archive, which may be damaged ({type(err).__name__}: {first_line})"


def model_state_dict(checkpoint: Any, path: str | Path, expected: str) -> dict[str, torch.Tensor]:
    """The model weights in a loaded checkpoint: a flat state dict (model.pt) or one under ``model``/``state_dict``."""
    if isinstance(checkpoint, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        kind = f"keys {sorted(map(str, checkpoint))[:6]}" if isinstance(checkpoint, Mapping) else type(checkpoint)
        raise BundleInputError(f"{path} holds no model weights ({kind}); expected {expected}.")
    return dict(checkpoint)


@functools.cache
def _backbone_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of torchvision's ``arch`` outside the layers the bundle replaces (built on the meta device)."""
    from .architectures import ARCHITECTURES  # imports network code, which imports this module: no top-level import

    spec = ARCHITECTURES[arch]
    with torch.device("meta"):
        model = spec.builder(weights=None)
    adapted = (spec.stem + ".", spec.head + ".")
    return {k: _shape(k, v) for k, v in model.state_dict().items() if not k.startswith(adapted)}


def _shape(key: str, tensor: torch.Tensor) -> tuple[int, ...]:
    """The shape of a state-dict entry, less the first dimension where it depends on the input size (MViT's
    relative-position tables are built for the volumes' size: a model for 32³ and one for 128³ are the same model)."""
    from .video_transformers import is_size_dependent

    return tuple(tensor.shape[1:]) if is_size_dependent(key) else tuple(tensor.shape)


def _plain_shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes keyed as in torchvision (this bundle's classifier prefixes every key with ``net.``)."""
    return {k.removeprefix("net."): _shape(k, v) for k, v in state.items() if isinstance(v, torch.Tensor)}


def guess_architecture(state: Mapping[str, Any]) -> str | None:
    """The architecture (an ``--arch`` name) whose layer names and shapes ``state`` has, else None.

    Works for torchvision's pretrained weights (400-class RGB video, 1000-class ImageNet for resnet18_2d) and for
    this bundle's classifiers alike: the first convolution and the head, which the bundle replaces, are ignored, and
    so is the length of MViT's relative-position tables. r3d_18 and mc3_18 share every name and differ in the kernel
    shapes of layer2-4 (3x3x3 against 1x3x3).
    """
    from .architectures import ARCHITECTURES

    shapes = _plain_shapes(state)
    for arch in ARCHITECTURES:
        reference = _backbone_shapes(arch)
        if all(shapes.get(k) == s for k, s in reference.items()):
            return arch
    return None


def state_dict_problem(state: Mapping[str, Any], network: nn.Module) -> str | None:
    """Why ``state`` cannot be loaded into ``network`` (a VolumeClassifier), in words; None when it fits."""
    from .architectures import ARCHITECTURES, architecture

    network = getattr(network, "module", network)
    own = {k: _shape(k, v) for k, v in network.state_dict().items()}
    given = {k: _shape(k, v) for k, v in state.items() if isinstance(v, torch.Tensor)}
    if own == given:
        return None
    arch = getattr(network, "arch", type(network).__name__)
    try:
        spec = architecture(arch)
    except BundleInputError:  # not a network of this bundle
        spec = None
    guess = guess_architecture(state)
    if guess is not None and (spec is None or guess != spec.name):
        return f"this file holds another architecture ({guess}?)"
    if guess is None:
        return f"this file does not hold any of the bundle's networks ({', '.join(ARCHITECTURES)})"
    if not any(k.startswith("net.") for k in given):
        return (
            f"it holds plain torchvision {arch} weights without the bundle's 1-channel stem and "
            f"class head (use such a file as --weights <path> for training)"
        )
    head_key, stem_key = f"net.{spec.head}.weight", f"net.{spec.stem}.weight"
    head, own_head = given.get(head_key), own.get(head_key)
    if head is not None and own_head is not None and head[0] != own_head[0]:
        return f"its head has {head[0]} outputs, not {own_head[0]} (--num_classes)"
    stem, own_stem = given.get(stem_key), own.get(stem_key)
    if stem is not None and own_stem is not None and stem[1] != own_stem[1]:
        return f"its first convolution takes {stem[1]} input channel(s), not {own_stem[1]}"
    missing = sorted(own.keys() - given.keys())
    unexpected = sorted(given.keys() - own.keys())
    reshaped = sorted(k for k in own.keys() & given.keys() if own[k] != given[k])
    example = missing[:1] or unexpected[:1] or reshaped[:1]
    return (
        f"its tensors do not match ({len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(reshaped)} of another shape, e.g. {example[0] if example else '?'})"
    )


def expected_model(network: nn.Module) -> str:
    """'a checkpoint of r3d_18 (2 classes, the model.pt training writes)': what a model file must hold."""
    network = getattr(network, "module", network)
    arch = getattr(network, "arch", type(network).__name__)
    return f"a checkpoint of {arch} (a model.pt written by this bundle's training)"


def load_model_weights(path: str | Path, network: nn.Module, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """Read ``path`` and check it fits ``network``; returns the state dict (not yet loaded into the network)."""
    expected = expected_model(network)
    state = model_state_dict(read_checkpoint(path, expected, map_location), path, expected)
    problem = state_dict_problem(state, network)
    if problem is not None:
        arch = getattr(getattr(network, "module", network), "arch", None)
        guess = guess_architecture(state)
        use_it = f"Use it with --arch {guess}, or pass" if guess and guess != arch else "Pass"
        raise BundleInputError(
            f"{path} is not {expected}: {problem}. {use_it} --model_file or --ckpt_dir of a model trained with "
            f"these settings."
        )
    return state


class ModelCheckpointLoader:
    """Load a trained model into an evaluator's network; a drop-in for MONAI's ``CheckpointLoader`` there.

    Like CheckpointLoader it loads at ``Events.STARTED``, but the file is read and checked when the handler is
    attached, i.e. when the evaluator is built and before any engine runs: a truncated, random or foreign file
    (e.g. an mc3_18 model given to r3d_18) stops the workflow with one line naming the file, what it holds and the
    fix, instead of an ignite exception traceback. Only ``torch.load(weights_only=True)`` is used.

    Args:
        load_path: the model file (``model.pt``: a flat state dict, or a dict holding one under ``model``).
        network: the network to load into (a ``VolumeClassifier``, possibly wrapped).
        map_location: device for loading.
    """

    def __init__(self, load_path: str | Path, network: nn.Module, map_location: Any = None) -> None:
        self.load_path = Path(load_path)
        self.network = network
        self.map_location = map_location
        self._state: dict[str, torch.Tensor] | None = None

    def attach(self, engine: Engine) -> None:
        # A missing file is left to Events.STARTED: building a workflow without running it (bundle property checks,
        # MONAI Label listing the bundle) must not need a trained model.
        if self.load_path.exists():
            self._state = load_model_weights(self.load_path, self.network, self.map_location)
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self._state is None:  # a second run of the same engine: read the file again
            self._state = load_model_weights(self.load_path, self.network, self.map_location)
        getattr(self.network, "module", self.network).load_state_dict(self._state)
        self._state = None  # do not keep a second copy of the weights for the whole run
        logger.info(f"Restored the model from {self.load_path}")


def _peek(path: str | Path) -> Mapping[str, Any] | None:
    """The state dict of a model file, memory-mapped (shapes are read, not the values); None when unreadable.

    A file that cannot be read is left to :class:`ModelCheckpointLoader`, which names what is wrong with it.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return model_state_dict(checkpoint, path, "a model")
    except (Exception, BundleInputError):  # a broken or foreign file: the loader reports it, in its words
        return None


def model_architecture(path: str | Path, default: str = "r3d_18") -> str:
    """The ``--arch`` of a model file, from its tensor names and shapes; ``default`` when it is missing or unknown.

    For workflows that load a trained model (``"arch": "$scripts.checkpoints.model_architecture(@model_file)"``):
    the network is then built as the file needs, whatever it was trained as.
    """
    state = _peek(path) if Path(path).is_file() else None
    return (guess_architecture(state) if state else None) or default


def head_size(path: str | Path) -> int | None:
    """Outputs of the classifier head in a model file (e.g. ``net.fc.weight`` rows); None when it cannot be read."""
    state = _peek(path)
    if state is None:
        return None
    from .architectures import ARCHITECTURES

    for key in dict.fromkeys(f"net.{spec.head}.weight" for spec in ARCHITECTURES.values()):
        head = state.get(key)
        # A Linear head (out, in) or s3d's 1x1x1 convolution (out, in, 1, 1, 1).
        if isinstance(head, torch.Tensor) and head.ndim in (2, 5):
            return int(head.shape[0])
    return None


def model_classes(model_file: str | Path, plan: Mapping[str, Any] | None = None) -> list[str]:
    """The classes a model's outputs mean, in output order.

    From the model's plan (``plan``, else ``<model folder>/plan.json``) when it names them; else the size of the
    head in ``model_file`` gives the default names for that many classes (CN, AD; CN, MCI, AD); else CN, AD (no
    model yet, e.g. while a workflow is only being checked).
    """
    from .plan import PLAN_NAME, plan_classes, read_plan

    if plan is None:
        plan = read_plan(Path(model_file).parent / PLAN_NAME)
    if plan is not None and "classes" in plan:
        return plan_classes(plan)
    size = head_size(model_file) if Path(model_file).is_file() else None
    return default_class_names(size) if size and size >= 2 else default_class_names(2)


def check_model_classes(model_file: str | Path, datalist: str | Path, classes: Sequence[str] | None = None) -> None:
    """Refuse, in one line naming both, a test datalist whose classes are not the ones the model was trained for.

    ``classes``: the datalist's classes when already known (the configs' ``class_names``). A missing model file is
    left to :func:`scripts.evaluation.require_trained_model`.
    """
    if not Path(model_file).is_file():
        return
    wanted = list(classes) if classes is not None else datalist_classes(datalist)
    trained = model_classes(model_file)
    if trained != wanted:
        raise BundleInputError(
            f"the model {model_file} was trained for the classes {', '.join(trained)}, but the datalist {datalist} "
            f"holds {', '.join(wanted)}: evaluate it on a datalist made with its classes, or pass the --ckpt_dir of "
            f"a model trained for {', '.join(wanted)}."
        )
