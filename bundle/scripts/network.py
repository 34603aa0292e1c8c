"""Pretrained torchvision networks adapted to single-channel MRI volumes (dissertation 4.5, issue 11).

torchvision builds every network (the video ResNets r3d_18, mc3_18, r2plus1d_18; the video models s3d, swin3d_t,
mvit_v2_s; the 2D resnet18 of the slice baseline); this module loads their pretrained weights and adapts them: a
1-channel first convolution whose kernel is the sum of the pretrained RGB kernels, a new head, layer freezing chosen
by preset name. Which blocks each architecture adapts and freezes is in architectures.py; what the transformers and
s3d need for 128³ volumes in video_transformers.py; the slicing of the 2D model in slice_model.py.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn

from . import slice_model, video_transformers
from .architectures import (
    ARCHITECTURES,
    PRESETS,
    architecture,
    as_size,
    canonical_name,
    check_input_size,
    grayscale_stem_conv,
    new_head,
    set_module,
)
from .checkpoints import guess_architecture, model_state_dict, read_checkpoint, state_dict_problem, why_unreadable
from .data import BundleInputError

logger = logging.getLogger(__name__)

__all__ = ["ARCHITECTURES", "VideoResNetClassifier", "VolumeClassifier", "param_groups", "log_parameter_counts"]

# Values of ``weights`` meaning random initialisation. "none" is the form to write on the command line: see
# weights_default() for why ``--weights None`` needs help.
RANDOM_INIT = ("none", "null", "")
# Values of ``weights`` meaning torchvision's pretrained checkpoint of the architecture. "kinetics400", the config's
# default, also selects the 2D model's ImageNet weights, so that --arch alone switches models.
PRETRAINED = ("kinetics400", "imagenet")


def weights_default(default: str = "kinetics400", argv: Sequence[str] | None = None) -> str:
    """The config's default ``weights``, or ``"none"`` when the command line says ``--weights None``.

    MONAI's CLI goes through fire, which turns the word ``None`` into Python None, and monai.bundle.scripts'
    ``update_kwargs(..., ignore_none=True)`` (called by ``create_workflow`` for ``run``) then drops every override
    whose value is None. ``--weights None`` would silently keep "kinetics400" and try to download weights, so the
    default itself looks for that override on ``sys.argv``. ``--weights none`` (a string) reaches the config
    normally; a Python caller of ``monai.bundle.run`` must likewise pass ``weights="none"``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    value = None
    for index, arg in enumerate(argv):
        if arg == "--weights" and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--weights="):
            value = arg.split("=", 1)[1]
    return "none" if value is not None and value.strip() == "None" else default


def is_random_init(weights: str | Path | None) -> bool:
    """True for ``None``, "none", "null" (any case) and "": the network starts from random weights."""
    return weights is None or str(weights).strip().lower() in RANDOM_INIT


def kinetics_checkpoint_path(arch: str = "r3d_18") -> Path:
    """Where torch hub keeps the pretrained checkpoint of ``arch`` (``$TORCH_HOME/hub/checkpoints/<file>``).

    Kinetics-400 for the video models, ImageNet-1k for the 2D slice model.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(architecture(arch).weights.url).name


def load_kinetics_state_dict(arch: str = "r3d_18") -> dict[str, torch.Tensor]:
    """The pretrained weights of ``arch`` from the torch hub cache, downloading them if the machine is online."""
    spec = architecture(arch)
    weights_enum, source = spec.weights, spec.pretraining
    cached = kinetics_checkpoint_path(arch)
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=not cached.exists())
    except Exception as err:  # URLError offline; RuntimeError, UnpicklingError... for a damaged cached file
        if cached.is_file() and not isinstance(err, URLError):
            raise BundleInputError(
                f"The cached {source} weights {cached} cannot be loaded: {why_unreadable(cached, err)}. Delete the "
                f"file so that it is downloaded again (or copy a good '{cached.name}' from {weights_enum.url} there), "
                f"or pass --weights <path> or --weights none."
            ) from None
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleInputError(
            f"{source} weights for {arch} are not in the torch hub cache and could not be downloaded ({reason}). "
            f"Copy the file '{cached.name}' (from {weights_enum.url}) into '{cached.parent}/' "
            f"(set TORCH_HOME to use another cache folder), pass a local checkpoint with --weights <path>, "
            f"or train from random weights with --weights none."
        ) from None


def load_checkpoint_state_dict(path: str | Path, arch: str = "r3d_18") -> dict[str, torch.Tensor]:
    """A state dict from a local file: a plain state dict, or a dict holding one under 'model'/'state_dict'.

    A missing, truncated or unsafe file raises :class:`BundleInputError` naming it (weights_only=True loading).
    """
    path = Path(path)
    expected = _expected_weights(arch)
    if not path.is_file():
        raise BundleInputError(
            f"Weights file not found: {path}. Pass an existing checkpoint, --weights kinetics400 or --weights none."
        )
    return model_state_dict(read_checkpoint(path, expected), path, expected)


def _expected_weights(arch: str) -> str:
    kind = "torchvision ImageNet" if architecture(arch).is_2d else "torchvision video"
    return f"{arch} weights ({kind} weights, or a model.pt of this bundle)"


def _load_or_explain(module: nn.Module, state: dict, weights: str | Path, arch: str) -> None:
    """``module.load_state_dict(state)``, turning torch's size-mismatch list into one line naming the file."""
    try:
        module.load_state_dict(state)
    except RuntimeError:
        guess = guess_architecture(state)
        if guess is not None and guess != canonical_name(arch):
            problem, fix = (
                f"this file holds another architecture ({guess}?)",
                f"Pass --arch {guess}, or weights of {arch}.",
            )
        else:
            adapted = state_dict_problem(state, module) if isinstance(module, VolumeClassifier) else None
            problem = adapted or f"its tensors do not fit torchvision's {arch}"
            fix = f"Pass weights of {arch} made with the same --num_classes."
        raise BundleInputError(f"{weights} is not {_expected_weights(arch)}: {problem}. {fix}") from None


class VolumeClassifier(nn.Module):
    """A pretrained torchvision network turned into a single-channel volume classifier with partial freezing.

    Wrong inputs (unknown arch, preset or input size, missing/broken/foreign weights) raise
    :class:`BundleInputError`, so the bundle CLI ends with one line naming them.

    Args:
        arch: ``r3d_18`` (the dissertation's model), ``mc3_18``, ``r2plus1d_18``, ``s3d``, ``swin3d_t``,
            ``mvit_v2_s`` or ``resnet18_2d`` (any name containing ``2d`` or ``slice``: the 2D slice model).
        weights: ``"kinetics400"`` (torchvision's pretrained checkpoint from the torch hub cache: Kinetics-400 for the
            video models, ImageNet-1k for the 2D model, which also accepts ``"imagenet"``), a path to a checkpoint of
            the same architecture (torchvision's format, or this classifier's own state dict), or ``None`` /
            ``"none"`` / ``"null"`` for random initialisation.
        in_channels: input channels of the volume (1 for T1).
        num_classes: outputs of the new head, one per class of the datalist (2: CN=0, AD=1; 3: CN, MCI, AD).
        trainable: ``"fc"`` (head only), ``"layer4+fc"`` (last stage + head; default, as in the dissertation) or
            ``"all"``; the blocks per architecture are listed in architectures.py.
        input_size: the volumes' size (an int for a cube): checked against the architecture and used by mvit_v2_s
            to size its relative-position tables.
        activation_checkpointing: recompute the transformer blocks' activations in the backward pass (swin3d_t,
            mvit_v2_s; ignored by the CNNs).
        slice_count, slice_axis: the 2D model's slices per volume and their plane (coronal, axial, sagittal).

    The input is ``(B, C, D, H, W)``; the video models read the first spatial axis as time.
    """

    def __init__(
        self,
        arch: str = "r3d_18",
        weights: str | Path | None = "kinetics400",
        in_channels: int = 1,
        num_classes: int = 2,
        trainable: str = "layer4+fc",
        input_size: int | Sequence[int] = 128,
        activation_checkpointing: bool = False,
        slice_count: int = slice_model.DEFAULT_SLICE_COUNT,
        slice_axis: str = slice_model.DEFAULT_SLICE_AXIS,
    ) -> None:
        super().__init__()
        spec = architecture(arch)
        if trainable not in PRESETS:
            raise BundleInputError(f"trainable must be one of {sorted(PRESETS)}, got '{trainable}'.")
        size = as_size(input_size)
        check_input_size(arch, size)
        self.arch, self.spec, self.trainable = arch, spec, trainable
        self.activation_checkpointing = False
        self.set_activation_checkpointing(activation_checkpointing)
        self._checked_sizes = {size}
        # Whether the forward is torchvision's (all but the 2D slices and MViT's grid from the input): TorchScript
        # export scripts only that path.
        self._plain_forward: bool = not spec.is_2d and spec.name != "mvit_v2_s"
        self.net = spec.builder(weights=None)  # torchvision's model as published (e.g. 400 classes, RGB)

        own_checkpoint = self._read_weights(weights)
        set_module(self.net, spec.stem, grayscale_stem_conv(self.net.get_submodule(spec.stem), in_channels))
        set_module(self.net, spec.head, new_head(self.net.get_submodule(spec.head), num_classes))
        if spec.adapt is not None:
            spec.adapt(self.net, size)
        if spec.is_2d:
            self.slices = slice_model.SliceSettings(slice_axis, slice_count)
        if spec.name == "mvit_v2_s":
            self.register_load_state_dict_pre_hook(video_transformers.adopt_table_lengths)
        if own_checkpoint is not None:
            _load_or_explain(self, own_checkpoint, weights, arch)
            logger.info(f"Loaded classifier weights from {weights}.")

        blocks = spec.trainable_blocks(trainable)
        for name, param in self.net.named_parameters():
            param.requires_grad = _inside(name, blocks)
        # Frozen BatchNorm layers are kept in eval mode (see train()): in train mode they would still normalise with
        # the statistics of each batch of 2 and overwrite the pretrained running statistics, so "frozen" features
        # would drift and the frozen part would not be frozen at all. (LayerNorm, in the transformers, keeps no
        # statistics: frozen means its weights only.)
        self._frozen_norm_names = tuple(
            name
            for name, module in self.net.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not _inside(name, blocks)
        )

    def _read_weights(self, weights: str | Path | None) -> dict | None:
        """Load torchvision-format weights into ``self.net``; return this classifier's own state dict to load later."""
        arch, spec = self.arch, self.spec
        if is_random_init(weights):
            logger.info(f"{arch}: random initialisation (--weights none).")
            return None
        if str(weights) in PRETRAINED:
            if str(weights) == "imagenet" and not spec.is_2d:
                raise BundleInputError(
                    f"--weights imagenet is for the 2D model (resnet18_2d); {arch} starts from its {spec.pretraining} "
                    f"weights with --weights kinetics400, or from random weights with --weights none."
                )
            state = load_kinetics_state_dict(arch)
            source = f"{spec.pretraining} weights ({kinetics_checkpoint_path(arch).name})"
        else:
            state, source = load_checkpoint_state_dict(weights, arch), str(weights)
        if any(key.startswith("net.") for key in state):
            return state  # already this classifier's weights: loaded after adapting
        _load_or_explain(self.net, state, weights, arch)
        logger.info(f"Loaded {arch} {source}.")
        return None

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute the transformer blocks' activations in the backward pass (swin3d_t, mvit_v2_s)."""
        if enabled and not self.spec.transformer:
            logger.info(f"{self.arch}: activation checkpointing applies to the transformers only; ignored.")
        self.activation_checkpointing = bool(enabled) and self.spec.transformer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript export (ckpt_export): torchvision's own forward
            if not self._plain_forward:
                raise RuntimeError("this architecture cannot be scripted: export it with ckpt_export --use_trace True")
            return self.net(x)
        return self._forward(x)

    @torch.jit.unused
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[2:])
        if size not in self._checked_sizes:  # once per input size: a clear error instead of one deep inside torch
            check_input_size(self.arch, size)
            self._checked_sizes.add(size)
        if self.spec.is_2d:
            return slice_model.slice_forward(self.net, x, self.slices)
        if self.spec.name == "mvit_v2_s":
            return video_transformers.mvit_forward(self.net, x, self.activation_checkpointing)
        if self.spec.name == "swin3d_t":
            return video_transformers.swin_forward(self.net, x, self.activation_checkpointing)
        return self.net(x)

    def train(self, mode: bool = True) -> VolumeClassifier:
        super().train(mode)
        if mode:
            modules = dict(self.net.named_modules())
            for name in self._frozen_norm_names:
                modules[name].eval()
        return self

    def parameter_counts(self) -> dict[str, int]:
        """Total, trainable and frozen parameter counts."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"total": total, "trainable": trainable, "frozen": total - trainable}

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.net.get_submodule(self.spec.head_block).parameters() if p.requires_grad)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        head = (self.spec.head_block,)
        return (p for name, p in self.net.named_parameters() if p.requires_grad and not _inside(name, head))


# The configs' ``_target_`` and the tests use the original name, from when every model was a video ResNet.
VideoResNetClassifier = VolumeClassifier


def _inside(name: str, blocks: tuple[str, ...] | None) -> bool:
    """Whether parameter/module ``name`` lies in one of ``blocks`` (dotted prefixes; None: everything)."""
    return blocks is None or any(name == block or name.startswith(block + ".") for block in blocks)


def configure(
    network: nn.Module,
    activation_checkpointing: bool = False,
    slice_count: int = slice_model.DEFAULT_SLICE_COUNT,
    slice_axis: str = slice_model.DEFAULT_SLICE_AXIS,
) -> nn.Module:
    """Apply train.json's training-only options to the built network (possibly DDP-wrapped); returns it.

    These are not arguments of ``network_def`` because that definition is shared with inference.json (tested to be
    identical), and inference needs neither: the 2D model's slices are buffers of its state dict, so a trained model
    keeps using its own whatever a later workflow says, and checkpointing only matters for a backward pass. Applied
    before a resumed checkpoint is loaded, which then restores the slices the run was started with.
    """
    model = getattr(network, "module", network)
    model.set_activation_checkpointing(activation_checkpointing)
    if model.spec.is_2d:
        model.slices.set(slice_axis, slice_count)
        logger.info(f"{model.arch}: {model.slices.slice_count} {model.slices.slice_axis} slices per volume.")
    return network


def param_groups(network: nn.Module, head_lr: float, backbone_lr: float) -> list[dict]:
    """AdamW parameter groups: the new head at ``head_lr`` and the other trainable layers at ``backbone_lr``.

    Empty groups (e.g. no trainable backbone with ``trainable="fc"``) are left out.
    """
    network = getattr(network, "module", network)  # unwrap DistributedDataParallel
    groups = [
        {"name": "head", "params": list(network.head_parameters()), "lr": head_lr},
        {"name": "backbone", "params": list(network.backbone_parameters()), "lr": backbone_lr},
    ]
    return [g for g in groups if g["params"]]


def log_parameter_counts(network: nn.Module) -> dict[str, int]:
    """Log total/trainable/frozen parameters in the dissertation's form (4.5.4) and return the counts."""
    network = getattr(network, "module", network)
    counts = network.parameter_counts()
    total = counts["total"]
    logger.info(
        f"{network.arch} (trainable='{network.trainable}'): total parameters: {total:,}; "
        f"trainable: {counts['trainable']:,} ({100 * counts['trainable'] / total:.2f}%); "
        f"frozen: {counts['frozen']:,} ({100 * counts['frozen'] / total:.2f}%)"
    )
    return counts


def require_inputs(paths: list[str], folder: str | Path) -> None:
    """Fail early, with the fix, when inference finds no volumes."""
    if not paths:
        raise FileNotFoundError(f"No NIfTI volumes (*.nii, *.nii.gz) found in {folder}. Pass --dataset_dir <folder>.")
