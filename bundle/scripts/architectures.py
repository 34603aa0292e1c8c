"""The architectures ``--arch`` selects: which torchvision model, its pretrained weights, and where to adapt it.

Every network is torchvision's own model (built by torchvision, loaded with torchvision-format weights); the bundle
only replaces its first convolution (1 input channel, kernel = sum of the RGB kernels), its head (``num_classes``
outputs) and, where the input size demands it, a pooling layer or the size of a table (see video_transformers.py).
Freezing presets keep the same names for every architecture, mapped to each one's blocks:

==============  ==========================  ====================================================  ========
arch            ``fc`` (head only)          ``layer4+fc`` (last stage + head)                     ``all``
==============  ==========================  ====================================================  ========
r3d_18 (etc.)   fc                          layer4, fc                                            all
s3d             classifier                  features.14-15 (Mixed_5b, Mixed_5c), classifier       all
swin3d_t        head                        features.6 (stage 4: 2 blocks), norm, head            all
mvit_v2_s       head                        blocks.14-15 (the 768-channel stage), norm, head      all
resnet18_2d     fc                          layer4, fc                                            all
==============  ==========================  ====================================================  ========
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models as tv_models
from torchvision.models import video as tv_video

from . import video_transformers
from .data import BundleInputError

PRESETS = ("fc", "layer4+fc", "all")


@dataclass(frozen=True)
class Architecture:
    """One ``--arch``: torchvision's builder and weights, and the names of the parts the bundle adapts.

    ``stem``/``head``: dotted paths (inside torchvision's model) of the first convolution and the output layer the
    bundle replaces; ``head_block``: the top-level block holding the head (its parameters get ``head_lr``);
    ``last_stage``: the blocks ``layer4+fc`` trains besides the head; ``size_problem``: what is wrong with a (D, H, W)
    input size for it, or None.
    """

    name: str
    builder: Callable[..., nn.Module]
    weights: tv_models.WeightsEnum
    pretraining: str
    stem: str
    head: str
    head_block: str
    last_stage: tuple[str, ...]
    size_problem: Callable[[tuple[int, int, int]], str | None] = lambda size: None
    adapt: Callable[[nn.Module, tuple[int, int, int]], None] | None = None
    is_2d: bool = False
    transformer: bool = False

    def trainable_blocks(self, preset: str) -> tuple[str, ...] | None:
        """Prefixes of the parameter names ``preset`` trains (None: all of them)."""
        if preset == "all":
            return None
        return (self.head_block,) if preset == "fc" else (*self.last_stage, self.head_block)


def _s3d_size_problem(size: tuple[int, int, int]) -> str | None:
    # Spatial /16 and temporal /4 before the last max pooling (kernel 2, no padding), which needs 2 voxels per axis.
    return f"its last max pooling needs sides of at least {S3D_MIN_SIZE}" if min(size) < S3D_MIN_SIZE else None


S3D_MIN_SIZE = 17


def _mvit_size_problem(size: tuple[int, int, int]) -> str | None:
    # Patches of 2x4x4 voxels, then the token grid is pooled by up to 8 in height and width (queries 3 x by 2, keys
    # by 8 in the first block): exact grids keep every pooled grid, and so the resized tables, as the weights expect.
    depth, height, width = size
    if depth % 2 or height % 32 or width % 32:
        return "it needs sides that are multiples of 32 (2x4x4-voxel patches, then token grids pooled by 8)"
    return None


_VIDEO_RESNET = {"stem": "stem.0", "head": "fc", "head_block": "fc", "last_stage": ("layer4",)}
ARCHITECTURES: dict[str, Architecture] = {
    "r3d_18": Architecture(
        "r3d_18", tv_video.r3d_18, tv_video.R3D_18_Weights.KINETICS400_V1, "Kinetics-400", **_VIDEO_RESNET
    ),
    "mc3_18": Architecture(
        "mc3_18", tv_video.mc3_18, tv_video.MC3_18_Weights.KINETICS400_V1, "Kinetics-400", **_VIDEO_RESNET
    ),
    "r2plus1d_18": Architecture(
        "r2plus1d_18", tv_video.r2plus1d_18, tv_video.R2Plus1D_18_Weights.KINETICS400_V1, "Kinetics-400",
        **_VIDEO_RESNET,
    ),
    "s3d": Architecture(
        "s3d", tv_video.s3d, tv_video.S3D_Weights.KINETICS400_V1, "Kinetics-400", stem="features.0.0.0",
        head="classifier.1", head_block="classifier", last_stage=("features.14", "features.15"),
        size_problem=_s3d_size_problem, adapt=video_transformers.adapt_s3d,
    ),
    "swin3d_t": Architecture(
        "swin3d_t", tv_video.swin3d_t, tv_video.Swin3D_T_Weights.KINETICS400_V1, "Kinetics-400",
        stem="patch_embed.proj", head="head", head_block="head", last_stage=("features.6", "norm"), transformer=True,
    ),
    "mvit_v2_s": Architecture(
        "mvit_v2_s", tv_video.mvit_v2_s, tv_video.MViT_V2_S_Weights.KINETICS400_V1, "Kinetics-400",
        stem="conv_proj", head="head.1", head_block="head", last_stage=("blocks.14", "blocks.15", "norm"),
        size_problem=_mvit_size_problem, adapt=video_transformers.adapt_mvit, transformer=True,
    ),
    "resnet18_2d": Architecture(
        "resnet18_2d", tv_models.resnet18, tv_models.ResNet18_Weights.IMAGENET1K_V1, "ImageNet-1k", stem="conv1",
        head="fc", head_block="fc", last_stage=("layer4",), is_2d=True,
    ),
}  # fmt: skip
SLICE_ARCH = "resnet18_2d"


def canonical_name(arch: str) -> str:
    """The registry name of ``arch``: itself, or ``resnet18_2d`` for any name containing ``2d`` or ``slice``."""
    if arch in ARCHITECTURES:
        return arch
    if isinstance(arch, str) and ("2d" in arch.lower() or "slice" in arch.lower()):
        return SLICE_ARCH
    raise BundleInputError(
        f"Unknown architecture '{arch}' (--arch), expected one of {sorted(ARCHITECTURES)} (any name containing "
        f"'2d' or 'slice' is the 2D slice model)."
    )


def architecture(arch: str) -> Architecture:
    return ARCHITECTURES[canonical_name(arch)]


def as_size(input_size: int | Sequence[int]) -> tuple[int, int, int]:
    """``128`` or ``[128, 128, 128]`` -> ``(128, 128, 128)``; anything else raises BundleInputError."""
    values = [input_size] * 3 if isinstance(input_size, int | float) else list(input_size)
    if len(values) != 3 or any(float(v) != int(v) or int(v) < 1 for v in values):
        raise BundleInputError(
            f"input_size must be a positive integer or three of them (the volumes' spatial_size), got {input_size!r}."
        )
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def check_input_size(arch: str, size: tuple[int, int, int]) -> None:
    """Raise BundleInputError, in one line, when ``arch`` cannot take volumes of ``size``."""
    spec = architecture(arch)
    problem = spec.size_problem(tuple(size))
    if problem is not None:
        shown = f"{size[0]}³" if len(set(size)) == 1 else "x".join(map(str, size))
        raise BundleInputError(
            f"{spec.name} cannot take {shown} volumes ({problem}): preprocess with 'python -m preprocessing run "
            f"--spatial-size 128' (the bundle's size) or choose another --arch."
        )


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def grayscale_stem_conv(conv: nn.Conv2d | nn.Conv3d, in_channels: int) -> nn.Conv2d | nn.Conv3d:
    """A first convolution for ``in_channels`` inputs whose kernel is the sum of the pretrained RGB kernels.

    For one channel this gives exactly the features of the same volume replicated to three channels, so the
    pretrained filters keep their meaning. For 3 channels the RGB kernels are kept as they are; for other counts the
    summed kernel is spread evenly over the channels.
    """
    if in_channels == conv.in_channels:
        return conv
    new = type(conv)(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        summed = conv.weight.sum(dim=1, keepdim=True)
        new.weight.copy_(summed.expand(-1, in_channels, *summed.shape[2:]) / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def new_head(old: nn.Linear | nn.Conv3d, num_classes: int) -> nn.Module:
    """A freshly initialised output layer of the same kind and input width as ``old``, with ``num_classes`` outputs."""
    if isinstance(old, nn.Conv3d):  # s3d: a 1x1x1 convolution before the spatial mean
        return nn.Conv3d(old.in_channels, num_classes, kernel_size=1, bias=old.bias is not None)
    return nn.Linear(old.in_features, num_classes)
