"""The SynthStrip network and its weights: :class:`SynthStripNet` and :func:`load_synthstrip_model`.

SynthStrip (Hoopes et al., NeuroImage 2022) predicts a signed distance to the brain boundary (mm, negative inside).
Its weights come under the FreeSurfer licence, so they are never shipped here: users point ``weights`` at
``synthstrip.1.pt`` or set ``FREESURFER_HOME`` (see ``shared/spec/synthstrip.md``). The file is read with
``torch.load(weights_only=True)`` only, so a weights file cannot run code; the official file (a ``torch.save`` of a
dict with the state dict under ``model_state_dict``: tensors and plain containers) loads that way. Used through
:mod:`scripts.skull_strip`, which re-exports every name here.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .data import BundleInputError

SYNTHSTRIP_WEIGHTS_NAME = "synthstrip.1.pt"


# --------------------------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------------------------
class _ConvBlock(nn.Module):
    """3x3x3 convolution (+ LeakyReLU 0.2). The attribute is called ``conv`` so state-dict keys match the official."""

    def __init__(self, in_channels: int, out_channels: int, activation: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=True)
        # In place: at 256^3 every feature map is gigabytes on CPU, so avoid a second copy per activation.
        self.activation = nn.LeakyReLU(0.2, inplace=True) if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.activation(x) if self.activation is not None else x


class SynthStripNet(nn.Module):
    """SynthStrip 3D U-Net; output is the signed distance to the brain boundary in mm (negative inside).

    Parameter names equal those of the official ``model_state_dict`` (``encoder.0.0.conv.weight``, ...,
    ``remaining.2.conv.bias``), so the released weights load without renaming. Input: ``(N, 1, X, Y, Z)`` with every
    spatial size divisible by 64 (six 2x poolings).
    """

    ENCODER_FEATURES = (16, 32, 64, 64, 64, 64)
    DECODER_FEATURES = (64, 64, 64, 64, 64, 32)
    FINAL_FEATURES = (16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleList()
        channels = 1
        for features in self.ENCODER_FEATURES:
            self.encoder.append(nn.ModuleList([_ConvBlock(channels, features), _ConvBlock(features, features)]))
            channels = features
        skips = list(reversed(self.ENCODER_FEATURES))  # concatenated deepest first
        self.decoder = nn.ModuleList()
        for features, skip in zip(self.DECODER_FEATURES, skips, strict=True):
            self.decoder.append(nn.ModuleList([_ConvBlock(channels, features), _ConvBlock(features, features)]))
            channels = features + skip  # upsampled features, then the encoder output of that resolution
        self.remaining = nn.ModuleList()
        for features in self.FINAL_FEATURES:
            self.remaining.append(_ConvBlock(channels, features))
            channels = features
        self.remaining.append(_ConvBlock(channels, 1, activation=False))
        self.pool = nn.MaxPool3d(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2 ** len(self.encoder)
        if any(s % factor for s in x.shape[2:]):
            raise ValueError(f"SynthStripNet needs spatial sizes divisible by {factor}, got {tuple(x.shape[2:])}.")
        skips = []
        for level in self.encoder:
            for block in level:
                x = block(x)
            skips.append(x)
            x = self.pool(x)
        for level in self.decoder:
            for block in level:
                x = block(x)
            # pop() frees each skip as soon as it is used, which lowers the peak memory of a CPU forward.
            x = torch.cat([self.upsample(x), skips.pop()], dim=1)
        for block in self.remaining:
            x = block(x)
        return x


# --------------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------------
def _missing_weights_message(detail: str) -> str:
    return (
        f"SynthStrip weights not found ({detail}). The weights are under the FreeSurfer licence and are not shipped "
        f"with this bundle. Fix either by (1) passing the path to '{SYNTHSTRIP_WEIGHTS_NAME}' explicitly "
        f"(load_synthstrip_model(weights=...) / SkullStripd(weights=...), the bundle's skull-strip weights option), "
        f"or (2) installing FreeSurfer (7.3 or later) and setting FREESURFER_HOME so that "
        f"$FREESURFER_HOME/models/{SYNTHSTRIP_WEIGHTS_NAME} exists. Offline alternative without FreeSurfer: the "
        f"MIT-licensed 'deepbet' stripper (pip install deepbet), selected with method='deepbet'."
    )


def _unsafe_weights_message(path: Path, error: pickle.UnpicklingError) -> str:
    """Why ``path`` is refused and what to do, without torch's advice to load it with ``weights_only=False``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    found = [line.removeprefix("WeightsUnpickler error:").strip() for line in lines if "WeightsUnpickler" in line]
    # torch's reason ("Unsupported global: GLOBAL x.y was not an allowed global by default"), first sentence only:
    # the rest advises allow-listing the object, i.e. running the file's code.
    reason = (found or lines or [type(error).__name__])[0].split(". ")[0].rstrip(".")[:300]
    return (
        f"SynthStrip weights {path} cannot be loaded safely: the file holds Python objects other than tensors and "
        f"plain containers ({reason}), and SynthStrip weights are only loaded with torch.load(weights_only=True) so "
        f"that a weights file cannot run code. The official FreeSurfer '{SYNTHSTRIP_WEIGHTS_NAME}' loads this way: "
        f"use that file, or re-save this checkpoint's state dict alone (in a Python session you trust with the file: "
        f"torch.save({{'model_state_dict': model.state_dict()}}, '{SYNTHSTRIP_WEIGHTS_NAME}')) and pass the new file."
    )


def resolve_synthstrip_weights(weights: str | Path | None = None) -> Path:
    """Path of the SynthStrip weights: ``weights`` if given, else ``$FREESURFER_HOME/models/synthstrip.1.pt``."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(_missing_weights_message(f"no file at the given path {path}"))
        return path
    home = os.environ.get("FREESURFER_HOME")
    if not home:
        raise FileNotFoundError(_missing_weights_message("no path given and FREESURFER_HOME is not set"))
    path = Path(home).expanduser() / "models" / SYNTHSTRIP_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(_missing_weights_message(f"FREESURFER_HOME is set but {path} does not exist"))
    return path


def load_synthstrip_model(weights: str | Path | None = None, device: str | torch.device = "cpu") -> SynthStripNet:
    """Build :class:`SynthStripNet`, load the official weights into it, and return it in eval mode on ``device``.

    The file is a ``torch.save`` of ``{"model_state_dict": ...}`` (a bare state dict is accepted too), read with
    ``weights_only=True`` only: a file holding other pickled objects raises :class:`~scripts.data.BundleInputError`
    that names it and says how to re-save its state dict. It is never loaded in full.
    """
    path = resolve_synthstrip_weights(weights)
    try:
        # weights_only: the file is only tensors and plain containers, so refuse arbitrary pickled code.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise BundleInputError(_unsafe_weights_message(path, error)) from None
    state_dict = checkpoint.get("model_state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path} holds no 'model_state_dict'; is it a SynthStrip checkpoint?")
    model = SynthStripNet()
    model.load_state_dict(state_dict)  # strict: a wrong file must fail loudly, not run half-initialised
    # channels-last 3D convolutions run ~1.5x faster on CPU (oneDNN) and give the same numbers.
    return model.to(device=device, memory_format=torch.channels_last_3d).eval()
