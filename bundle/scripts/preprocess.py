"""The per-volume preprocessing steps that MONAI has no transform for (dissertation 4.2), and the loader of the one
declaration of the chain, ``configs/preprocess.json``, shared by batch preprocessing and bundle inference.

- ``N4BiasCorrectiond``: ANTs N4 inside the brain mask, fitted on a coarse grid of fixed voxel size in mm.
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
from . import bias_field
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
# 180x220x180 skull-stripped phantom with 2 cores; fitted inside the brain mask it gives the correction of the
# defaults with the same mask and 0.98 against the unmasked defaults, whose fit is pulled by the zero background.
# Tolerance 1e-6 is never reached on heads (N4's convergence measure stays near 2e-4), so all 200 iterations run, and
# their cost grows with the voxels of N4's grid: shrink 4 on the native grid meant 1.6x1.6x6 mm and 7 times a 1 mm
# scan's work for a 0.4x0.4x1.5 mm one. So the fit runs on blocks of at least ``spacing_mm`` (scripts/bias_field.py).
# Measured on synthetic MNI-derived heads with deepbet masks, one ITK thread, this 2-core machine at load 3-6 (CPU s):
#   1 mm (192x240x256):           shrink 4 native 14 s wall in the chain -> 4 mm blocks 9.4 s CPU, 14 s wall;
#   0.4x0.4x1.5 (128x600x640):    shrink 4 native 61 s wall in the chain -> 8.2 s CPU, 12 s wall;
#   2 mm, 8 mm blocks (demo):     1.24 s CPU -> 1.12 s CPU.
# Correlation with the native-grid shrink-4 correction inside the mask: 0.9999 (1 mm), 0.9996 (0.4x0.4x1.5, 2 mm).
FAST_N4 = {"spacing_mm": 4.0, "convergence": {"iters": [50, 50, 50, 50], "tol": 1e-6}}


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
    """N4 bias-field correction (ANTs) fitted inside the brain mask on a grid of blocks of at least ``spacing_mm``,
    applied to every brain voxel of the native grid; voxels outside the mask keep their value.

    The scan is cut into blocks of whole voxels (at least ``spacing_mm`` along each axis, chosen from the voxel size, so
    a 0.4x0.4x1.5 mm scan gets 10x10x3-voxel blocks and a 1 mm scan 4x4x4), N4 fits its field on the centre voxel of
    each block (ANTs' shrink with a factor per axis), and the log field is interpolated back with a cubic spline onto
    the brain's voxels (see :mod:`scripts.bias_field`).

    Args:
        keys: image key(s) to correct.
        mask_key: key of the brain mask on the same grid; None fits on the whole image.
        spacing_mm: smallest edge in mm of the blocks N4 is fitted on.
        convergence: N4's ``{"iters": [...], "tol": ...}``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str | None = "brain_mask",
        spacing_mm: float = FAST_N4["spacing_mm"],
        convergence: Mapping[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not float(spacing_mm) > 0:
            raise ValueError(f"spacing_mm must be positive, got {spacing_mm}.")
        self.mask_key = mask_key
        self.spacing_mm = float(spacing_mm)
        self.convergence = dict(convergence or FAST_N4["convergence"])

    def correct(self, source: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """``source`` divided by the bias field fitted inside ``mask`` (brain voxels only; the rest unchanged)."""
        if not mask.any():
            raise ValueError("The brain mask is empty: no voxels to fit the bias field on.")
        # N4 models a multiplicative field and needs positive intensities; shift, correct, shift back.
        offset = min(float(source.min()), 0.0)
        factors = bias_field.block_factors(affine, self.spacing_mm)
        blocks, inside = bias_field.block_samples(source - np.float32(offset), mask, factors)
        if not inside.any():  # a mask that misses every block centre (a sliver): fit on the native grid
            factors = (1, 1, 1)
            blocks, inside = bias_field.block_samples(source - np.float32(offset), mask, factors)
        grid = bias_field.block_affine(affine, factors)
        field = ants.n4_bias_field_correction(
            to_ants(blocks, grid), mask=to_ants(inside.astype(np.float32), grid), shrink_factor=1,
            convergence=self.convergence, return_bias_field=True,
        ).numpy()  # fmt: skip
        box = bias_field.bounding_box(mask)
        log_field = bias_field.upsample_log_field(np.log(np.maximum(field, 1e-12)), factors, box)
        corrected = np.array(source, dtype=np.float32, copy=True)
        brain, region = mask[box], corrected[box]  # region is a view: written through
        region[brain] = (region[brain] - offset) / np.exp(log_field[brain]) + offset
        return corrected

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = None
        if self.mask_key is not None:
            mask = _require_meta(d, self.mask_key)[0].numpy() > 0
        for key in self.key_iterator(d):
            image = _require_meta(d, key)
            source = image[0].numpy().astype(np.float32)
            if mask is not None and mask.shape != source.shape:
                raise ValueError(f"'{key}' {source.shape} and '{self.mask_key}' {mask.shape} differ in shape.")
            brain = np.ones(source.shape, bool) if mask is None else mask
            corrected = self.correct(source, brain, np.asarray(image.affine, dtype=np.float64))
            d[key] = _with_array(image, corrected)
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

    With ``box_key`` (the brain mask), only the part of the output grid that the next step keeps is interpolated for
    the images: the mask's bounding box on the new grid plus ``box_margin`` voxels (``CropForegroundd`` with that
    margin follows and finds the same box and the same values), not the whole head's field of view. They are read
    from the input around that box (plus 16 voxels, where the B-spline prefilter's influence has fallen below 1e-9)
    and clipped to the whole input's range as before.

    Args:
        keys: keys to resample (images and masks alike, all on one grid).
        spacing: output voxel size in mm.
        nearest_keys: keys resampled with nearest neighbour.
        box_key: mask whose bounding box (plus ``box_margin``) is the part of the output computed; None computes the
            whole field of view.
        box_margin: voxels of the output grid kept around the box.
    """

    # Input voxels kept around the needed region: the cubic B-spline prefilter's pole is 0.268, 0.268**16 < 1e-9.
    SPLINE_MARGIN = 16

    def __init__(
        self,
        keys: KeysCollection = ("image", "brain_mask"),
        spacing: float | Sequence[float] = 1.0,
        nearest_keys: Sequence[str] = ("brain_mask",),
        box_key: str | None = None,
        box_margin: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, nearest_keys, allow_missing_keys)
        self.spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing, dtype=float), (3,)))
        self.box_key = box_key
        self.box_margin = int(box_margin)

    def interpolate(self, source: np.ndarray, affine: np.ndarray, nearest: bool) -> tuple[np.ndarray, np.ndarray]:
        resampled = ants.resample_image(
            to_ants(source, affine), self.spacing, use_voxels=False, interp_type=1 if nearest else 4
        )
        return resampled.numpy(), ras_affine(resampled)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self.box_key is None or self.box_key not in data:
            return super().__call__(data)
        d = dict(data)
        box_image = _require_meta(d, self.box_key)
        box_source = (box_image[0].numpy() > 0).astype(np.float32)
        box_affine = np.asarray(box_image.affine, dtype=np.float64)
        # Already on the output spacing (a 1 mm scan): ANTs' grid is the input's and a B-spline through the samples
        # returns them, so nothing is interpolated.
        same_grid = np.allclose(np.linalg.norm(box_affine[:3, :3], axis=0), self.spacing, rtol=0.0, atol=1e-6)
        # Otherwise the mask is resampled as before, on ANTs' whole grid: where output centres fall half-way between
        # input voxels (1 mm from 0.4 mm) nearest neighbour breaks ties by float rounding, which another ANTs call
        # path breaks differently -- a one-voxel shift of the crop box (model-ready Dice 0.991 on a 0.4 mm head).
        if same_grid:
            grid_mask, grid_affine = box_source, box_affine
        else:
            grid_mask, grid_affine = self.interpolate(box_source, box_affine, True)
        if not grid_mask.any():
            return super().__call__(data)
        hits = [np.flatnonzero(grid_mask.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
        lo = np.array([max(0, int(h[0]) - self.box_margin) for h in hits])
        hi = np.array([min(n, int(h[-1]) + 1 + self.box_margin) for h, n in zip(hits, grid_mask.shape, strict=True)])
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        shift = np.eye(4)
        shift[:3, 3] = lo
        out_affine = grid_affine @ shift
        target = to_ants(np.zeros(hi - lo, np.float32), out_affine)
        for key in self.key_iterator(d):
            image = _require_meta(d, key)
            source = image[0].numpy().astype(np.float32)
            affine = np.asarray(image.affine, dtype=np.float64)
            nearest = key in self.nearest_keys
            if key == self.box_key:
                array = grid_mask[box]
            elif same_grid and np.allclose(affine, box_affine, rtol=0.0, atol=1e-6):
                array = source[box]
            else:
                cropped, cropped_affine = self._around(source, affine, out_affine, target.shape)
                array = ants.resample_image_to_target(
                    to_ants(cropped, cropped_affine), target, interp_type="nearestNeighbor" if nearest else "bSpline"
                ).numpy()
            if not nearest:
                array = np.clip(array, source.min(), source.max())
            d[key] = _with_array(image, array.astype(np.float32), out_affine)
        return d

    def _around(
        self, source: np.ndarray, affine: np.ndarray, out_affine: np.ndarray, out_shape: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The input voxels that the output box's interpolation reads (plus the spline margin), and their affine."""
        corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in out_shape], indexing="ij")).reshape(3, -1)
        world = out_affine[:3, :3] @ corners + out_affine[:3, 3:4]
        ijk = np.linalg.solve(affine[:3, :3], world - affine[:3, 3:4])
        lo = np.maximum(np.floor(ijk.min(axis=1)).astype(int) - self.SPLINE_MARGIN, 0)
        hi = np.minimum(np.ceil(ijk.max(axis=1)).astype(int) + 1 + self.SPLINE_MARGIN, source.shape)
        shift = np.eye(4)
        shift[:3, 3] = lo
        return source[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))], affine @ shift


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
