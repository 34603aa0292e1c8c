"""The grid arithmetic behind :class:`scripts.preprocess.N4BiasCorrectiond`: N4 is fitted on a coarse grid of fixed
physical resolution and its field is brought back onto the scan's own grid.

ANTs' N4 on the native grid costs with the number of native voxels (its ``shrink_factor`` is a fixed number of
voxels, so a 0.4x0.4x1.5 mm scan is fitted on a 1.6x1.6x6 mm grid with 7 times the voxels of a 1 mm scan's), and it
evaluates the field on every native voxel at the end. Here the scan is cut into blocks of whole voxels whose
size is at least ``spacing_mm`` along each axis, N4 runs on one voxel of each block (shrink 1), and the log of its
field is interpolated (cubic spline, separable) onto the brain's voxels only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def block_factors(affine: np.ndarray, spacing_mm: float) -> tuple[int, int, int]:
    """Voxels per block along each axis: the fewest whole native voxels that span at least ``spacing_mm``.

    At least, not closest: N4's cost grows with its grid's voxels, and rounding 4 mm to 3 mm voxels would fit a 3 mm
    scan on its native grid (80 s a scan in a batch here).
    """
    if not spacing_mm > 0:
        raise ValueError(f"The N4 fitting grid's spacing must be positive, got {spacing_mm} mm.")
    sizes = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    return tuple(max(1, int(np.ceil(spacing_mm / size - 1e-6))) for size in sizes)


def block_affine(affine: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Affine of the block grid: block ``c`` is sampled at native voxel ``f*c + f//2``."""
    scale = np.diag([float(f) for f in factors] + [1.0])
    scale[:3, 3] = [f // 2 for f in factors]
    return np.asarray(affine, dtype=np.float64) @ scale


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """Index box of the non-zero voxels (the mask must not be empty)."""
    ranges = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        ranges.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(ranges)


def block_samples(image: np.ndarray, mask: np.ndarray, factors: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The voxel at the centre of each block, and whether it is brain: what ITK's shrink does, per axis.

    Samples, not block means: N4 sharpens the histogram of the brain's intensities, and means over 4 mm mix grey and
    white matter into a histogram it cannot sharpen -- on the benchmark's phantom the means gave a correction
    correlating 0.94 with N4 on the native grid, the samples 0.997. The field of view, not just the brain, stays the
    fitting domain: N4 spreads its B-spline mesh over the image, so the control points stay where native N4 has them.
    """
    centre = tuple(slice(f // 2, None, f) for f in factors)
    return np.ascontiguousarray(image[centre], dtype=np.float32), np.ascontiguousarray(mask[centre])


def _upsampling_matrix(n_blocks: int, factor: int, native: slice) -> np.ndarray:
    """(native voxels, blocks): cubic-spline interpolation weights of the block values at native voxels ``native``."""
    position = (np.arange(native.start, native.stop) - factor // 2) / factor
    unit = np.eye(n_blocks)
    columns = [ndimage.map_coordinates(unit[j], [position], order=3, mode="nearest") for j in range(n_blocks)]
    return np.stack(columns, axis=1).astype(np.float32)


def upsample_log_field(log_field: np.ndarray, factors: Sequence[int], box: Sequence[slice]) -> np.ndarray:
    """The block grid's log field interpolated (cubic spline) at the native voxels of ``box``.

    A spline on a grid is a tensor product, so three small matrix products replace 3D interpolation: a 0.4 mm scan's
    brain box (13 million voxels) takes a fraction of a second.
    """
    weights = [_upsampling_matrix(n, f, b) for n, f, b in zip(log_field.shape, factors, box, strict=True)]
    field = np.einsum("ia,abc->ibc", weights[0], log_field.astype(np.float32))
    field = np.einsum("jb,ibc->ijc", weights[1], field)
    return field @ weights[2].T
