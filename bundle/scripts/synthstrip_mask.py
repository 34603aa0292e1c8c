"""SynthStrip's geometry, intensities and mask, around the network (see ``shared/spec/synthstrip.md``).

As FreeSurfer's ``mri_synthstrip`` does it: conform to 1 mm isotropic LIA on a grid whose axes are multiples of 64
(:func:`conform_grid`, :func:`resample_to_grid`), scale intensities (:func:`normalize_intensities`), predict the
signed distance and resample it back onto the input grid (:func:`synthstrip_distance`), threshold it and keep the
largest connected component with its holes filled (:func:`mask_from_distance`). Every step works with voxel-to-world
affines. Used through :mod:`scripts.skull_strip`, which re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

OUTSIDE_DISTANCE = 100.0  # mm; voxels the network never saw are treated as far outside the brain

# World (RAS) direction of each voxel axis of the conformed grid: LIA = axis 0 -> Left, 1 -> Inferior, 2 -> Anterior,
# given as (RAS world axis, sign).
_LIA = ((0, -1.0), (2, -1.0), (1, 1.0))


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
