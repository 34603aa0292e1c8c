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
"""

from __future__ import annotations

import copy
import os
import pickle
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage
from torch import nn

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

SYNTHSTRIP_WEIGHTS_NAME = "synthstrip.1.pt"
OUTSIDE_DISTANCE = 100.0  # mm; voxels the network never saw are treated as far outside the brain
METHODS = ("synthstrip", "deepbet", "none")

# World (RAS) direction of each voxel axis of the conformed grid: LIA = axis 0 -> Left, 1 -> Inferior, 2 -> Anterior,
# given as (RAS world axis, sign).
_LIA = ((0, -1.0), (2, -1.0), (1, 1.0))


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

    The file is a ``torch.save`` of ``{"model_state_dict": ...}`` (a bare state dict is accepted too).
    """
    path = resolve_synthstrip_weights(weights)
    try:
        # weights_only: the file is only tensors and plain containers, so refuse arbitrary pickled code.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Some checkpoints carry extra pickled objects next to the weights; the user chose this file (or their own
        # FreeSurfer install did), so fall back to a full load rather than fail, but say so.
        warnings.warn(f"{path} is not loadable with weights_only=True ({error}); loading it fully.", stacklevel=2)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state_dict = checkpoint.get("model_state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path} holds no 'model_state_dict'; is it a SynthStrip checkpoint?")
    model = SynthStripNet()
    model.load_state_dict(state_dict)  # strict: a wrong file must fail loudly, not run half-initialised
    # channels-last 3D convolutions run ~1.5x faster on CPU (oneDNN) and give the same numbers.
    return model.to(device=device, memory_format=torch.channels_last_3d).eval()


# --------------------------------------------------------------------------------------------------------------------
# Geometry and intensities
# --------------------------------------------------------------------------------------------------------------------
def _lia_directions(affine: np.ndarray) -> np.ndarray:
    """Unit voxel-axis directions (columns) of the input, permuted and flipped to be closest to LIA.

    Like FreeSurfer's conform, this reorders the input's own axes rather than rotating onto the world axes, so an
    oblique scan keeps its obliquity and a 1 mm scan that is only permuted/flipped is resampled without blurring.
    """
    from nibabel.orientations import io_orientation

    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    units = linear / np.linalg.norm(linear, axis=0, keepdims=True)
    ornt = io_orientation(affine)  # per input axis: (closest RAS world axis, sign that points it along +axis)
    directions = np.zeros((3, 3))
    for out_axis, (world_axis, sign) in enumerate(_LIA):
        in_axis = int(np.flatnonzero(ornt[:, 0] == world_axis)[0])
        directions[:, out_axis] = units[:, in_axis] * ornt[in_axis, 1] * sign
    return directions


def _foreground_index_box(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest voxel index (inclusive) of non-zero voxels; the whole volume when nothing is non-zero."""
    nonzero = [np.flatnonzero(volume.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if any(idx.size == 0 for idx in nonzero):
        return np.zeros(3), np.asarray(volume.shape, dtype=np.float64) - 1
    return np.array([idx[0] for idx in nonzero], float), np.array([idx[-1] for idx in nonzero], float)


def conform_grid(
    volume: np.ndarray, affine: np.ndarray, multiple: int = 64, min_size: int = 192, max_size: int = 320
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and voxel-to-world affine of the SynthStrip input grid for a 3D ``volume`` with ``affine``.

    1 mm isotropic, LIA, centred on the bounding box of the non-zero voxels, each axis the box extent rounded up to
    a multiple of ``multiple`` and clipped to ``[min_size, max_size]`` (larger heads are centre-cropped, as in
    FreeSurfer).
    """
    affine = np.asarray(affine, dtype=np.float64)
    directions = _lia_directions(affine)
    low, high = _foreground_index_box(np.asarray(volume))
    # The 8 corners of the box (voxel centres) in world mm, then in the conformed axes.
    corners = np.array(np.meshgrid(*zip(low, high, strict=True), indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:4]
    centre = affine[:3, :3] @ ((low + high) / 2) + affine[:3, 3]
    along = np.linalg.solve(directions, world - centre[:, None])
    extent = np.ceil(along.max(axis=1) - along.min(axis=1) - 1e-6).astype(int) + 1
    shape = np.clip(np.ceil(extent / multiple).astype(int) * multiple, min_size, max_size)
    grid_affine = np.eye(4)
    grid_affine[:3, :3] = directions
    # Put the grid's centre, index (n - 1) / 2, on the centre of the foreground box.
    grid_affine[:3, 3] = centre - directions @ ((shape - 1) / 2)
    return (int(shape[0]), int(shape[1]), int(shape[2])), grid_affine


def resample_to_grid(
    data: np.ndarray,
    src_affine: np.ndarray,
    dst_shape: Sequence[int],
    dst_affine: np.ndarray,
    order: int = 1,
    fill: float = 0.0,
) -> np.ndarray:
    """Resample 3D ``data`` (on ``src_affine``) onto the grid ``dst_shape``/``dst_affine``; outside gets ``fill``."""
    # Destination voxel index -> world -> source voxel index, one matrix for scipy's pull-resampling.
    index_map = np.linalg.inv(np.asarray(src_affine, np.float64)) @ np.asarray(dst_affine, np.float64)
    return ndimage.affine_transform(
        np.asarray(data, dtype=np.float32),
        index_map[:3, :3],
        offset=index_map[:3, 3],
        output_shape=tuple(int(s) for s in dst_shape),
        output=np.float32,
        order=order,
        mode="constant",
        cval=fill,
        prefilter=False,  # only orders 0 and 1 are used; no spline prefilter needed
    )


def normalize_intensities(volume: np.ndarray) -> np.ndarray:
    """SynthStrip's input scaling: minus the minimum, divided by the 99th percentile, clipped to [0, 1]."""
    volume = np.asarray(volume, dtype=np.float32)
    volume = volume - volume.min()
    scale = float(np.percentile(volume, 99))
    if scale <= 0:  # mostly empty volume: fall back to the maximum so the few bright voxels still reach 1
        scale = float(volume.max())
    if scale <= 0:
        return np.zeros_like(volume)
    return np.clip(volume / scale, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------------------------
# Prediction and mask
# --------------------------------------------------------------------------------------------------------------------
def synthstrip_distance(
    model: nn.Module, volume: np.ndarray, affine: np.ndarray, device: str | torch.device | None = None
) -> np.ndarray:
    """Signed distance (mm, negative inside) predicted by ``model``, on the grid of the 3D ``volume``/``affine``."""
    volume = np.asarray(volume, dtype=np.float32)
    shape, grid_affine = conform_grid(volume, affine)
    # Nearest neighbour, as FreeSurfer conforms; zero outside the scan, like its padding.
    conformed = normalize_intensities(resample_to_grid(volume, affine, shape, grid_affine, order=0, fill=0.0))
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        batch = torch.from_numpy(conformed)[None, None].to(device).contiguous(memory_format=torch.channels_last_3d)
        prediction = model(batch)
        del batch
        distance = prediction[0, 0].float().cpu().numpy()
    del prediction, conformed
    return resample_to_grid(distance, grid_affine, volume.shape, affine, order=1, fill=OUTSIDE_DISTANCE)


def mask_from_distance(distance: np.ndarray, border: float = 1.0) -> np.ndarray:
    """Brain mask from a signed distance map: ``distance < border``, largest connected component, holes filled."""
    mask = np.asarray(distance) < border
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(sizes.argmax())
    del labels
    # Fill inside the component's bounding box only: same result, much less work on a 256^3 volume.
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    mask[box] = ndimage.binary_fill_holes(mask[box])
    return mask


def synthstrip_mask(
    model: nn.Module,
    volume: np.ndarray,
    affine: np.ndarray,
    border: float = 1.0,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Boolean SynthStrip brain mask on the grid of the 3D ``volume``/``affine``."""
    return mask_from_distance(synthstrip_distance(model, volume, affine, device), border)


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


class _DeepBetStripper:
    """deepbet (Fisch et al. 2024, MIT, weights in its wheel), run through its ``BrainExtraction`` class in memory."""

    def __init__(self, device: str | torch.device) -> None:
        try:
            import nibabel as nib
            from deepbet import BrainExtraction
        except ImportError as error:
            raise ImportError(
                "method='deepbet' needs the optional 'deepbet' package: pip install deepbet==1.0.2 "
                "(MIT licence; its weights ship in the wheel, no download at run time)."
            ) from error
        self._nib = nib
        with warnings.catch_warnings():
            # deepbet's models are TorchScript; torch warns that torch.jit.load is deprecated. Nothing to act on here.
            warnings.simplefilter("ignore", FutureWarning)
            # deepbet picks CUDA/MPS by itself unless no_gpu is set.
            self.extractor = BrainExtraction(no_gpu=torch.device(device).type == "cpu")

    def __call__(self, volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
        image = self._nib.Nifti1Image(np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=np.float64))
        with torch.inference_mode():
            # run() reorients to RAS internally and returns the mask in the input's voxel order and affine.
            _, mask_image, _ = self.extractor.run(image)
        return np.asarray(mask_image.dataobj).astype(bool)


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
