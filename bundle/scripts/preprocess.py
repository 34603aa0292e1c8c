"""The per-volume preprocessing steps that MONAI has no transform for (dissertation 4.2), and the loader of the one
declaration of the chain, ``configs/preprocess.json``, shared by batch preprocessing and bundle inference.

- ``N4BiasCorrectiond``: ANTs N4 inside the brain mask.
- ``ResampleToSpacingd``: ANTs resampling to 1 mm with a cubic B-spline (clipped, since B-splines overshoot).
- ``CubicResized``: cubic resize to 128³ (MONAI's Resize has no cubic mode in 3D).
- ``ScaleInsideMaskd``: percentile scaling computed inside the brain mask, background exactly 0.
- ``LoadVolumed``: MONAI's loader that also reads FreeSurfer ``.mgz``/``.mgh`` and names the file when it cannot read.
- ``ZeroBackgroundd``: brings a scan stored with a negative intensity offset back to a zero background.

The loading and admission steps (``LoadVolumed``, ``CheckVolumed``, ``ZeroBackgroundd``) are in
:mod:`scripts.volume_loading`; every name there is importable from here too, as the configs expect.

Images are channel-first MetaTensors whose affine maps voxels to RAS world coordinates (MONAI's convention); ANTs
works in LPS, so the conversion flips the first two world axes.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ants
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, ScaleIntensityRange
from scipy import ndimage

# Re-exported (``as``): the configs and callers name these scripts.preprocess.*.
from .volume_loading import NIBABEL_SUFFIXES as NIBABEL_SUFFIXES
from .volume_loading import SUPPORTED_FORMATS as SUPPORTED_FORMATS
from .volume_loading import CheckVolumed as CheckVolumed
from .volume_loading import ImageReadError as ImageReadError
from .volume_loading import LoadVolume as LoadVolume
from .volume_loading import LoadVolumed as LoadVolumed
from .volume_loading import NibabelVolumeReader as NibabelVolumeReader
from .volume_loading import ZeroBackgroundd as ZeroBackgroundd
from .volume_loading import _first_line as _first_line
from .volume_loading import border_level as border_level

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "preprocess.json"

# N4 settings. ANTs' defaults (shrink 4, 4 levels x 50 iterations, tolerance 1e-7, whole image) took 32 s on a
# 180x220x180 skull-stripped phantom with 2 cores. Fitting inside the brain mask and stopping at tolerance 1e-6 took
# 7 s and gave the correction of the defaults with the same mask (correlation of the corrected brains 1.0000) and
# 0.98 against the unmasked defaults, whose fit is pulled by the zero background (tests/test_preprocess.py).
FAST_N4 = {"shrink_factor": 4, "convergence": {"iters": [50, 50, 50, 50], "tol": 1e-6}}


def to_ants(image: torch.Tensor | np.ndarray, affine: np.ndarray | torch.Tensor) -> ants.ANTsImage:
    """A 3D ANTs image with the geometry of a RAS affine."""
    affine = np.asarray(affine, dtype=np.float64)
    data = np.asarray(image, dtype=np.float32)
    lps = LPS_FROM_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return ants.from_numpy(data, origin=tuple(lps[:3, 3]), spacing=tuple(spacing), direction=direction)


def ras_affine(image: ants.ANTsImage) -> np.ndarray:
    """The RAS voxel-to-world affine of an ANTs image."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.direction) * np.asarray(image.spacing)
    lps[:3, 3] = image.origin
    return LPS_FROM_RAS @ lps


def _with_array(reference: MetaTensor, array: np.ndarray, affine: np.ndarray | None = None) -> MetaTensor:
    out = MetaTensor(torch.as_tensor(np.ascontiguousarray(array))[None], meta=dict(reference.meta))
    out.affine = torch.as_tensor(reference.affine if affine is None else affine, dtype=torch.float64)
    return out


def _require_meta(data: Mapping, key: Hashable) -> MetaTensor:
    image = data[key]
    if not isinstance(image, MetaTensor):
        raise TypeError(f"'{key}' must be a MetaTensor with an affine (load it with LoadImaged), got {type(image)}.")
    if image.shape[0] != 1 or image.ndim != 4:
        raise ValueError(f"'{key}' must be one 3D channel (1, X, Y, Z), got shape {tuple(image.shape)}.")
    return image


class N4BiasCorrectiond(MapTransform):
    """N4 bias-field correction (ANTs) fitted inside the brain mask; voxels outside the mask keep their value.

    Args:
        keys: image key(s) to correct.
        mask_key: key of the brain mask on the same grid; None fits on the whole image (ANTs' default, slower).
        shrink_factor: N4's down-sampling factor.
        convergence: N4's ``{"iters": [...], "tol": ...}``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str | None = "brain_mask",
        shrink_factor: int = FAST_N4["shrink_factor"],
        convergence: Mapping[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.shrink_factor = shrink_factor
        self.convergence = dict(convergence or FAST_N4["convergence"])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = None
        if self.mask_key is not None:
            mask_tensor = _require_meta(d, self.mask_key)
            mask = to_ants((mask_tensor[0] > 0).float().numpy(), mask_tensor.affine)
        for key in self.key_iterator(d):
            image = _require_meta(d, key)
            source = image[0].numpy()
            if mask is not None and mask.numpy().shape != source.shape:
                raise ValueError(f"'{key}' {source.shape} and '{self.mask_key}' {mask.numpy().shape} differ in shape.")
            # N4 models a multiplicative field and needs positive intensities; shift, correct, shift back.
            offset = min(float(source.min()), 0.0)
            shifted = to_ants(source - offset, image.affine)
            corrected = ants.n4_bias_field_correction(
                shifted, mask=mask, shrink_factor=self.shrink_factor, convergence=self.convergence
            ).numpy()
            corrected = corrected + offset
            if mask is not None:
                corrected = np.where(mask.numpy() > 0, corrected, source)
            d[key] = _with_array(image, corrected.astype(np.float32))
        return d


class _Interpolated(MapTransform):
    """Shared loop of the two interpolating steps: each key is interpolated on its own, masks (``nearest_keys``)
    with nearest neighbour, images with a cubic spline clipped to their input range (splines overshoot at edges)."""

    def __init__(self, keys: KeysCollection, nearest_keys: Sequence[str], allow_missing_keys: bool) -> None:
        super().__init__(keys, allow_missing_keys)
        self.nearest_keys = set(nearest_keys)

    def interpolate(self, source: np.ndarray, affine: np.ndarray, nearest: bool) -> tuple[np.ndarray, np.ndarray]:
        """The interpolated array and its RAS affine."""
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = _require_meta(d, key)
            source = image[0].numpy().astype(np.float32)
            nearest = key in self.nearest_keys
            array, affine = self.interpolate(source, np.asarray(image.affine, dtype=np.float64), nearest)
            if not nearest:
                array = np.clip(array, source.min(), source.max())
            d[key] = _with_array(image, array.astype(np.float32), affine)
        return d


class ResampleToSpacingd(_Interpolated):
    """Resample to isotropic voxels with ANTs (``ants.resample_image(..., use_voxels=False)``): cubic B-spline for
    images, nearest neighbour for masks.

    Args:
        keys: keys to resample (images and masks alike, all on one grid).
        spacing: output voxel size in mm.
        nearest_keys: keys resampled with nearest neighbour.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "brain_mask"),
        spacing: float | Sequence[float] = 1.0,
        nearest_keys: Sequence[str] = ("brain_mask",),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, nearest_keys, allow_missing_keys)
        self.spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing, dtype=float), (3,)))

    def interpolate(self, source: np.ndarray, affine: np.ndarray, nearest: bool) -> tuple[np.ndarray, np.ndarray]:
        resampled = ants.resample_image(
            to_ants(source, affine), self.spacing, use_voxels=False, interp_type=1 if nearest else 4
        )
        return resampled.numpy(), ras_affine(resampled)


class CubicResized(_Interpolated):
    """Resize to a fixed shape with cubic spline interpolation (``scipy.ndimage.zoom(order=3)``, as the dissertation
    did; MONAI's Resize has no cubic mode in 3D), keeping the world extent: the voxel size changes by the zoom factor.

    Args:
        keys: keys to resize.
        spatial_size: output shape, an int for a cube.
        nearest_keys: keys resized with nearest neighbour.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "brain_mask"),
        spatial_size: int | Sequence[int] = 128,
        nearest_keys: Sequence[str] = ("brain_mask",),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, nearest_keys, allow_missing_keys)
        self.spatial_size = tuple(int(s) for s in np.broadcast_to(np.asarray(spatial_size), (3,)))

    def interpolate(self, source: np.ndarray, affine: np.ndarray, nearest: bool) -> tuple[np.ndarray, np.ndarray]:
        factors = [t / s for t, s in zip(self.spatial_size, source.shape, strict=True)]
        array = ndimage.zoom(source, factors, order=0 if nearest else 3, mode="nearest", grid_mode=True)
        return array, _zoomed_affine(affine, factors)


def _zoomed_affine(affine: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """Affine of a grid that covers the same extent with voxels ``1/factor`` times the old size.

    With ``grid_mode=True`` zoom maps voxel edges to voxel edges, so the new voxel centre ``j`` sits at old voxel
    coordinate ``(j + 0.5) / f - 0.5``.
    """
    scale = np.diag([1.0 / f for f in factors] + [1.0])
    scale[:3, 3] = [0.5 / f - 0.5 for f in factors]
    return affine @ scale


class ScaleInsideMaskd(MapTransform):
    """Map the ``lower``..``upper`` percentiles of the intensities inside the brain mask to 0..1 (clipped), and set
    every voxel outside the mask to exactly 0.

    MONAI has no masked form of this: ``ScaleIntensityRangePercentiles`` takes its percentiles over the whole volume
    (so a background below the brain's intensities drags the lower one, and a background above them comes out at 1),
    ``NormalizeIntensity(nonzero=True)`` z-scores instead of scaling to a range and picks the voxels by value, not by
    the mask. So the percentiles are taken here over the masked voxels and MONAI's ``ScaleIntensityRange`` applies
    them. With a lower percentile taken inside the brain (rather than 0 = the background's value) the result does not
    change when a constant is added to the scan or it is multiplied by a positive constant.

    Args:
        keys: image key(s) to scale.
        mask_key: key of the brain mask on the same grid (voxels > 0 are brain).
        lower: percentile of the brain intensities mapped to 0.
        upper: percentile of the brain intensities mapped to 1.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str = "brain_mask",
        lower: float = 0.5,
        upper: float = 99.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"Percentiles must satisfy 0 <= lower < upper <= 100, got {lower} and {upper}.")
        self.mask_key = mask_key
        self.lower = float(lower)
        self.upper = float(upper)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = torch.as_tensor(d[self.mask_key])
        for key in self.key_iterator(d):
            image = d[key]
            if tuple(image.shape[-3:]) != tuple(mask.shape[-3:]):
                raise ValueError(f"'{key}' {tuple(image.shape)} and '{self.mask_key}' {tuple(mask.shape)} differ.")
            brain = (mask > 0).to(device=image.device).expand_as(image)
            values = torch.as_tensor(image)[brain].detach().cpu().numpy().astype(np.float64)
            if values.size == 0:
                raise ValueError(f"The brain mask '{self.mask_key}' is empty: nothing to scale.")
            low, high = np.percentile(values, [self.lower, self.upper])
            if not high > low:
                raise ValueError(f"Constant brain intensities ({low:g}) inside '{self.mask_key}': nothing to scale.")
            scaled = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)(image)
            d[key] = torch.where(brain, scaled, torch.zeros((), dtype=scaled.dtype, device=scaled.device))
        return d


def load_chain(config_file: str | Path | None = None, **overrides: Any) -> Compose:
    """The per-volume chain (``preprocessing`` in ``configs/preprocess.json``), with config overrides such as
    ``skull_stripper="deepbet"`` or ``spatial_size=64``."""
    parser = ConfigParser()
    parser.read_config(str(config_file or DEFAULT_CONFIG))
    parser.update(overrides)
    return parser.get_parsed_content("preprocessing")


def run_chain_timed(chain: Compose, data: Mapping[Hashable, Any]) -> tuple[dict, dict[str, float]]:
    """Apply the chain one transform at a time and return the result and the seconds spent in each step."""
    seconds: dict[str, float] = {}
    for transform in chain.transforms:
        start = time.perf_counter()
        data = transform(data)
        name = type(transform).__name__
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
    return dict(data), seconds
