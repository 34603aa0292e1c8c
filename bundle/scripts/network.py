"""Video-pretrained 3D ResNets adapted to single-channel MRI (dissertation 4.5).

torchvision's video ResNets (r3d_18, and the alternatives mc3_18 and r2plus1d_18) are built by torchvision itself;
this module only adapts them: a 1-channel stem whose kernel is the sum of the pretrained RGB kernels, a new head,
and layer freezing chosen by name.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn
from torchvision.models import video as tv_video

from .checkpoints import guess_architecture, model_state_dict, read_checkpoint, state_dict_problem, why_unreadable
from .data import BundleInputError

logger = logging.getLogger(__name__)

# Architecture name -> (torchvision builder, its Kinetics-400 weights enum member).
ARCHITECTURES = {
    "r3d_18": (tv_video.r3d_18, tv_video.R3D_18_Weights.KINETICS400_V1),
    "mc3_18": (tv_video.mc3_18, tv_video.MC3_18_Weights.KINETICS400_V1),
    "r2plus1d_18": (tv_video.r2plus1d_18, tv_video.R2Plus1D_18_Weights.KINETICS400_V1),
}

# Freezing presets: which top-level blocks stay trainable. The dissertation trained layer4 and fc (4.5.2).
TRAINABLE_BLOCKS = {
    "fc": ("fc",),
    "layer4+fc": ("layer4", "fc"),
    "all": ("stem", "layer1", "layer2", "layer3", "layer4", "fc"),
}
HEAD_BLOCK = "fc"
# Values of ``weights`` meaning random initialisation. "none" is the form to write on the command line: see
# weights_default() for why ``--weights None`` needs help.
RANDOM_INIT = ("none", "null", "")


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
    """Where torch hub keeps the Kinetics-400 checkpoint of ``arch`` (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    _, weights_enum = _architecture(arch)
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_enum.url).name


def load_kinetics_state_dict(arch: str = "r3d_18") -> dict[str, torch.Tensor]:
    """The Kinetics-400 weights from the torch hub cache, downloading them if the machine is online."""
    _, weights_enum = _architecture(arch)
    cached = kinetics_checkpoint_path(arch)
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=not cached.exists())
    except Exception as err:  # URLError offline; RuntimeError, UnpicklingError... for a damaged cached file
        if cached.is_file() and not isinstance(err, URLError):
            raise BundleInputError(
                f"The cached Kinetics-400 weights {cached} cannot be loaded: {why_unreadable(cached, err)}. Delete the "
                f"file so that it is downloaded again (or copy a good '{cached.name}' from {weights_enum.url} there), "
                f"or pass --weights <path> or --weights none."
            ) from None
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleInputError(
            f"Kinetics-400 weights for {arch} are not in the torch hub cache and could not be downloaded ({reason}). "
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
    return f"{arch} weights (torchvision video weights, or a model.pt of this bundle)"


def _load_or_explain(module: nn.Module, state: dict, weights: str | Path, arch: str) -> None:
    """``module.load_state_dict(state)``, turning torch's size-mismatch list into one line naming the file."""
    try:
        module.load_state_dict(state)
    except RuntimeError:
        guess = guess_architecture(state)
        if guess is not None and guess != arch:
            problem, fix = (
                f"this file holds another architecture ({guess}?)",
                f"Pass --arch {guess}, or weights of {arch}.",
            )
        else:
            adapted = state_dict_problem(state, module) if isinstance(module, VideoResNetClassifier) else None
            problem = adapted or f"its tensors do not fit torchvision's {arch}"
            fix = f"Pass weights of {arch} made with the same --num_classes."
        raise BundleInputError(f"{weights} is not {_expected_weights(arch)}: {problem}. {fix}") from None


class VideoResNetClassifier(nn.Module):
    """A torchvision video ResNet turned into a single-channel volume classifier with partial freezing.

    Wrong inputs (unknown arch or preset, missing/broken/foreign weights) raise :class:`BundleInputError`, so the
    bundle CLI ends with one line naming them.

    Args:
        arch: ``r3d_18`` (the dissertation's model), ``mc3_18`` or ``r2plus1d_18``.
        weights: ``"kinetics400"`` (torchvision's Kinetics-400 checkpoint from the torch hub cache), a path to a
            checkpoint of the same architecture (400-class RGB video weights, or this classifier's own state dict),
            or ``None`` / ``"none"`` / ``"null"`` for random initialisation.
        in_channels: input channels of the volume (1 for T1).
        num_classes: outputs of the new head, one per class of the datalist (2: CN=0, AD=1; 3: CN, MCI, AD).
        trainable: ``"fc"``, ``"layer4+fc"`` (default, as in the dissertation) or ``"all"``.

    The input is ``(B, C, D, H, W)``; torchvision reads the depth axis as video time, which the 3D convolutions of
    r3d_18 treat like the two spatial axes.
    """

    def __init__(
        self,
        arch: str = "r3d_18",
        weights: str | Path | None = "kinetics400",
        in_channels: int = 1,
        num_classes: int = 2,
        trainable: str = "layer4+fc",
    ) -> None:
        super().__init__()
        builder, _ = _architecture(arch)
        if trainable not in TRAINABLE_BLOCKS:
            raise BundleInputError(f"trainable must be one of {sorted(TRAINABLE_BLOCKS)}, got '{trainable}'.")
        self.arch = arch
        self.trainable = trainable
        self.net = builder(weights=None)

        own_checkpoint = None
        if is_random_init(weights):
            logger.info(f"{arch}: random initialisation (--weights none).")
        else:
            if str(weights) == "kinetics400":
                state = load_kinetics_state_dict(arch)
            else:
                state = load_checkpoint_state_dict(weights, arch)
            if _is_adapted_state_dict(state):
                own_checkpoint = state  # already this classifier's weights: load after adapting
            else:
                _load_or_explain(self.net, state, weights, arch)
                logger.info(f"Loaded {arch} video weights from {weights}.")

        self.net.stem[0] = _grayscale_stem_conv(self.net.stem[0], in_channels)
        self.net.fc = nn.Linear(self.net.fc.in_features, num_classes)
        if own_checkpoint is not None:
            _load_or_explain(self, own_checkpoint, weights, arch)
            logger.info(f"Loaded classifier weights from {weights}.")

        trainable_blocks = TRAINABLE_BLOCKS[trainable]
        for name, param in self.net.named_parameters():
            param.requires_grad = name.split(".")[0] in trainable_blocks
        # Frozen BatchNorm layers are kept in eval mode (see train()): in train mode they would still normalise with
        # the statistics of each batch of 2 and overwrite the pretrained running statistics, so "frozen" features
        # would drift and the frozen part would not be frozen at all.
        self._frozen_norm_names = tuple(
            name
            for name, module in self.net.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and name.split(".")[0] not in trainable_blocks
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train(self, mode: bool = True) -> VideoResNetClassifier:
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
        return (p for p in self.net.fc.parameters() if p.requires_grad)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return (p for name, p in self.net.named_parameters() if p.requires_grad and not name.startswith(HEAD_BLOCK))


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


def _architecture(arch: str):
    if arch not in ARCHITECTURES:
        raise BundleInputError(f"Unknown architecture '{arch}' (--arch), expected one of {sorted(ARCHITECTURES)}.")
    return ARCHITECTURES[arch]


def _is_adapted_state_dict(state: dict) -> bool:
    return any(key.startswith("net.") for key in state)


def _grayscale_stem_conv(conv: nn.Conv3d, in_channels: int) -> nn.Conv3d:
    """A stem convolution for ``in_channels`` inputs whose kernel is the sum of the RGB kernels.

    For one channel this gives exactly the features of the same volume replicated to three channels, so the
    pretrained filters keep their meaning. For several channels the summed kernel is spread evenly over them.
    """
    new = nn.Conv3d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        summed = conv.weight.sum(dim=1, keepdim=True)
        new.weight.copy_(summed.repeat(1, in_channels, 1, 1, 1) / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def require_inputs(paths: list[str], folder: str | Path) -> None:
    """Fail early, with the fix, when inference finds no volumes."""
    if not paths:
        raise FileNotFoundError(f"No NIfTI volumes (*.nii, *.nii.gz) found in {folder}. Pass --dataset_dir <folder>.")
