"""Skull stripping with SynthStrip (default) or deepbet (optional, offline), as a MONAI dictionary transform.

SynthStrip (Hoopes et al., NeuroImage 2022) predicts a signed distance to the brain boundary (mm, negative inside).
Its weights come under the FreeSurfer licence, so they are never shipped here: users point ``weights`` at
``synthstrip.1.pt`` or set ``FREESURFER_HOME``. The network and the pre/post-processing follow FreeSurfer's
``mri_synthstrip`` (see ``shared/spec/synthstrip.md``):

1. conform to 1 mm isotropic LIA (nearest neighbour), crop to the non-zero bounding box and centre-pad/crop each axis
   to a multiple of 64 within [192, 320] -- done here as one resampling onto a grid defined by an explicit affine;
2. intensities minus their minimum, divided by the 99th percentile, clipped to [0, 1];
3. predict the distance, resample it (linearly) back onto the input grid, filling outside the network's field of view
   with a large positive distance;
4. mask = distance < border, keep the largest connected component, fill its holes.

Every step works with voxel-to-world affines, so the mask lands exactly on the input grid whatever its orientation.

The parts live in their own modules and every name is importable from here: the network and its weights in
:mod:`scripts.synthstrip_net`, steps 1-4 in :mod:`scripts.synthstrip_mask`, the deepbet backend in
:mod:`scripts.deepbet_stripper`; this module holds the strippers and :class:`SkullStripd`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

# Every part is importable from here too (``as`` marks a re-export); code that replaces a name for a test (e.g.
# load_synthstrip_model) replaces it in this module, where _SynthStripper looks it up.
from .deepbet_stripper import _DeepBetStripper as _DeepBetStripper
from .synthstrip_mask import _LIA as _LIA
from .synthstrip_mask import OUTSIDE_DISTANCE as OUTSIDE_DISTANCE
from .synthstrip_mask import _foreground_index_box as _foreground_index_box
from .synthstrip_mask import _lia_directions as _lia_directions
from .synthstrip_mask import (
    conform_grid,
    mask_from_distance,
    normalize_intensities,
    resample_to_grid,
    synthstrip_distance,
    synthstrip_mask,
)
from .synthstrip_net import SYNTHSTRIP_WEIGHTS_NAME as SYNTHSTRIP_WEIGHTS_NAME
from .synthstrip_net import SynthStripNet, load_synthstrip_model, resolve_synthstrip_weights
from .synthstrip_net import _ConvBlock as _ConvBlock
from .synthstrip_net import _missing_weights_message as _missing_weights_message
from .synthstrip_net import _unsafe_weights_message as _unsafe_weights_message

__all__ = [
    "SkullStripd",
    "SynthStripNet",
    "conform_grid",
    "load_synthstrip_model",
    "mask_from_distance",
    "normalize_intensities",
    "resample_to_grid",
    "resolve_synthstrip_weights",
    "synthstrip_distance",
    "synthstrip_mask",
]

METHODS = ("synthstrip", "deepbet", "none")


# --------------------------------------------------------------------------------------------------------------------
# Strippers: callables (volume, affine) -> boolean mask on the same grid
# --------------------------------------------------------------------------------------------------------------------
class _SynthStripper:
    def __init__(self, weights: str | Path | None, border: float, device: str | torch.device) -> None:
        self.model = load_synthstrip_model(weights, device)
        self.border = border
        self.device = device

    def __call__(self, volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
        return synthstrip_mask(self.model, volume, affine, self.border, self.device)


def _prestripped_mask(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """For inputs that are already skull-stripped (e.g. OASIS's masked images): the brain is the non-zero voxels."""
    return np.asarray(volume) != 0


# --------------------------------------------------------------------------------------------------------------------
# MONAI transform
# --------------------------------------------------------------------------------------------------------------------
class SkullStripd(MapTransform):
    """Skull-strip channel-first images: background set to 0, the brain mask stored under ``mask_key``.

    Expects MetaTensors with a correct affine (``LoadImaged(ensure_channel_first=True)``). The mask is computed from
    the first channel of the first key and applied to every key (they must share its grid). ``data[mask_key]`` is a
    float32 0/1 MetaTensor of shape ``(1, X, Y, Z)`` with the image's affine and meta; ``data["skull_stripper"]``
    names the method that ran. The stripper (network weights) is loaded on first use, once per transform instance.

    Args:
        keys: image key(s) to strip.
        method: ``"synthstrip"`` (FreeSurfer weights required), ``"deepbet"`` (optional package, offline) or
            ``"none"`` for inputs that are already skull-stripped (the mask is their non-zero voxels).
        weights: path to ``synthstrip.1.pt``; default ``$FREESURFER_HOME/models/synthstrip.1.pt``. SynthStrip only.
        border: mask boundary in mm from the predicted brain surface (SynthStrip's ``-b``); SynthStrip only.
        mask_key: where to store the mask.
        device: torch device for the network.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        method: str = "synthstrip",
        weights: str | Path | None = None,
        border: float = 1.0,
        mask_key: str = "brain_mask",
        device: str | torch.device = "cpu",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        method = method.lower()
        if method not in METHODS:
            raise ValueError(f"Unknown skull-stripping method {method!r}; choose one of {METHODS}.")
        self.method = method
        self.weights = weights
        self.border = float(border)
        self.mask_key = mask_key
        self.device = device
        self._stripper: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    @property
    def stripper(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """The loaded stripper, created on first access (so building a transform chain needs no weights)."""
        if self._stripper is None:
            if self.method == "synthstrip":
                self._stripper = _SynthStripper(self.weights, self.border, self.device)
            elif self.method == "none":
                self._stripper = _prestripped_mask
            else:
                self._stripper = _DeepBetStripper(self.device)
        return self._stripper

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        reference = d[keys[0]]
        if not isinstance(reference, MetaTensor) or reference.ndim != 4:
            raise TypeError(
                f"SkullStripd needs a channel-first 3D MetaTensor with its affine under '{keys[0]}' "
                f"(LoadImaged(ensure_channel_first=True)); got {type(reference).__name__} "
                f"with shape {tuple(getattr(reference, 'shape', ()))}."
            )
        affine = reference.affine.detach().cpu().numpy().astype(np.float64)
        volume = reference[0].detach().cpu().numpy().astype(np.float32)
        mask = torch.from_numpy(self.stripper(volume, affine))
        if not bool(mask.any()):
            raise ValueError(f"Skull stripping ({self.method}) found no brain: the mask is empty.")
        for key in keys:
            image = d[key]
            if tuple(image.shape[1:]) != tuple(mask.shape):
                raise ValueError(f"'{key}' has spatial shape {tuple(image.shape[1:])}, mask has {tuple(mask.shape)}.")
            d[key] = image * mask.to(device=image.device, dtype=image.dtype)
        # Same grid as the image: a copy of its meta (affine included), so later spatial transforms treat both alike.
        d[self.mask_key] = MetaTensor(mask[None].to(torch.float32), meta=copy.deepcopy(reference.meta))
        d["skull_stripper"] = self.method
        return d
