"""Rendering one visit: the template sampled through the subject's deformation and the visit's atrophy, with head
shells, neck, bias field and Rician noise, on the scan's acquisition grid; region labels and volumes with and without
the atrophy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from preprocessing.synthetic.anatomy import (
    _BONE_LEVEL,
    _CORD_LEVEL,
    _CSF_LEVEL,
    _FAT_LEVEL,
    _MARROW_LEVEL,
    _MUSCLE_LEVEL,
    _SKIN_LEVEL,
    _WHITE_MATTER_LEVEL,
    HIPPOCAMPI,
    MEDIAL_TEMPORAL_LOBES,
    REGION_LABELS,
)
from preprocessing.synthetic.geometry import (
    ScanGeometry,
    _subject_deformation,
    acquisition_geometry,
    head_pose,
    subject_transform,
)
from preprocessing.synthetic.planning import SubjectPlan, VisitPlan
from preprocessing.synthetic.template import Template, _ventricle_flow, _ventricle_push, load_template

# Displacements are computed exactly on a grid this many times coarser than the scan and interpolated linearly
# (they are smooth on that scale); intensities and labels are then sampled once per voxel.
_COARSE_STRIDE = 2
_SLAB = 24  # slices rendered at a time, to bound memory


@dataclass
class RenderedScan:
    """A rendered scan on its stored grid (see :class:`ScanGeometry`), with its region labels and volumes."""

    volume: np.ndarray
    labels: np.ndarray
    geometry: ScanGeometry
    volumes_mm3: dict[int, float]
    reference_volumes_mm3: dict[int, float]
    info: dict[str, Any]


def _atrophy_displacement(points: np.ndarray, visit: VisitPlan, template: Template, push: float) -> np.ndarray:
    """Backward displacement (N, 3) in MNI mm at ``points`` (N, 3) for the visit's nominal atrophy.

    Sampling the template at ``points + displacement`` shrinks the hippocampi and MTL (weighted scaling about their
    centres: the sampling point moves outwards, 1 inside the region and smoothly 0 by 1.5-1.8 radii) and grows the
    ventricles (the sampling point moves up the gradient of their smoothed mask, into the ventricle).
    """
    mtl_scale = (1.0 - visit.mtl_loss) ** (-1.0 / 3.0) - 1.0
    hippocampus_scale = max((1.0 - visit.hippocampus_loss) ** (-1.0 / 3.0) - 1.0 - mtl_scale, 0.0)
    displacement = np.zeros_like(points)
    for regions, scale, reach in ((HIPPOCAMPI, hippocampus_scale, 1.8), (MEDIAL_TEMPORAL_LOBES, mtl_scale, 1.5)):
        if scale == 0.0:
            continue
        for ellipsoid in regions.values():
            centre = np.asarray(ellipsoid.centre)
            extent = reach * max(ellipsoid.semi_axes)
            near = np.flatnonzero(np.all(np.abs(points - centre) < extent, axis=1))  # cheap pre-selection
            radius = ellipsoid.radius(points[near])
            inside = radius < reach
            near, radius = near[inside], radius[inside]
            t = np.clip((radius - 1.0) / (reach - 1.0), 0.0, 1.0)
            weight = 0.5 * (1.0 + np.cos(np.pi * t))
            displacement[near] += (scale * weight)[:, None] * (points[near] - centre)
    if push > 0.0:
        voxels = points - template.origin
        near = np.flatnonzero(
            np.all(
                (voxels >= template.ventricle_offset)
                & (voxels <= template.ventricle_offset + template.ventricle_field.shape[1:]),
                axis=1,
            )
        )
        moved = _ventricle_flow(voxels[near], template.ventricle_field, template.ventricle_offset, push)
        displacement[near] += moved - voxels[near]
    return displacement


def _upsample(coarse: np.ndarray, stride: int, ranges: Sequence[tuple[int, int]]) -> np.ndarray:
    """Linear interpolation of ``coarse`` (C, a, b, c), whose sample n lies at voxel ``stride * n``, onto the voxels
    ``ranges`` (start, stop) of each axis: one axis at a time and with slices only, far cheaper than a general
    resampling of the same size.
    """
    out = coarse
    for axis in (3, 2, 1):  # the slab's axis first, so that the later passes work on the small slab only
        start, stop = ranges[axis - 1]
        count = stop - start
        shape = list(out.shape)
        shape[axis] = count
        result = np.empty(shape, dtype=np.float32)
        for residue in range(stride):
            first = (residue - start) % stride  # first output index at a position with this remainder
            if first >= count:
                continue
            n = len(range(first, count, stride))
            low = (start + first) // stride
            weight = np.float32(residue / stride)
            target = [slice(None)] * out.ndim
            target[axis] = slice(first, count, stride)
            lower = [slice(None)] * out.ndim
            lower[axis] = slice(low, low + n)
            if residue == 0:
                result[tuple(target)] = out[tuple(lower)]
            else:
                upper = [slice(None)] * out.ndim
                upper[axis] = slice(low + 1, low + 1 + n)
                result[tuple(target)] = out[tuple(lower)] * (1 - weight) + out[tuple(upper)] * weight
        out = result
    return out


def _head_profile(distance: np.ndarray, thickness: dict[str, float]) -> np.ndarray:
    """Intensity outside the brain by distance from it: CSF, skull (dark tables, brighter marrow), fat, skin, air."""
    csf, bone, fat, skin = thickness["csf"], thickness["skull"], thickness["fat"], thickness["skin"]
    edges = [0.0, csf, csf + 0.8, csf + 0.3 * bone, csf + 0.5 * bone, csf + 0.7 * bone, csf + bone]
    edges += [csf + bone + 0.8, csf + bone + fat, csf + bone + fat + 0.6, csf + bone + fat + skin]
    edges += [csf + bone + fat + skin + 0.8]
    values = [_CSF_LEVEL, _CSF_LEVEL, _BONE_LEVEL, _BONE_LEVEL, _MARROW_LEVEL, _BONE_LEVEL, _BONE_LEVEL]
    values += [_FAT_LEVEL, _FAT_LEVEL, _SKIN_LEVEL, _SKIN_LEVEL, 0.0]
    return np.interp(distance, edges, values).astype(np.float32)


def _neck(points: np.ndarray, outside_head: np.ndarray) -> np.ndarray:
    """Intensity of the neck below the skull (MNI mm points, (3, ...)): muscle with a fat rim, a spinal cord in a
    CSF-filled canal and vertebral bone; present only where the head shells have ended (``outside_head`` 0..1).
    """
    x, y, z = points
    presence = np.clip((-40.0 - z) / 20.0, 0.0, 1.0) * outside_head
    rim = 55.0 - np.sqrt((x / 1.0) ** 2 + ((y + 22.0) / 0.9) ** 2)  # mm inside the neck's outline
    value = np.interp(rim, [-0.5, 0.5, 1.5, 7.0, 8.0], [0.0, _SKIN_LEVEL, _FAT_LEVEL, _FAT_LEVEL, _MUSCLE_LEVEL])
    cord = np.sqrt(x**2 + (y + 45.0) ** 2)
    canal = np.interp(cord, [4.5, 5.5, 7.5, 8.5, 16.0, 17.0], [_CORD_LEVEL, _CSF_LEVEL, _CSF_LEVEL, 0.3, 0.3, 1.0])
    value = np.where(canal < 1.0, canal, value)
    return (presence * value).astype(np.float32)


def render_scan(subject: SubjectPlan, visit_index: int = 0, template: Template | None = None) -> RenderedScan:
    """Render one visit of a subject on its acquisition grid: intensities (uint16, as stored), region labels, and
    the region volumes with and without the visit's atrophy (same grid, same pose).
    """
    template = template or load_template()
    visit = subject.visits[visit_index]
    geometry = acquisition_geometry(subject, visit_index)
    shape = geometry.shape
    pose = head_pose(subject, visit_index)
    to_template = np.linalg.inv(pose) @ geometry.affine  # stored voxel -> MNI mm, before any deformation
    to_template32 = to_template.astype(np.float32)  # float32 arithmetic on the full-size arrays
    deformation, deformation_lo, deformation_step, deformation_rms = _subject_deformation(subject)
    push = _ventricle_push(template, visit.ventricle_growth)

    # Displacements on the coarse grid, where everything is computed exactly.
    stride = _COARSE_STRIDE
    coarse_shape = tuple((n - 1) // stride + 2 for n in shape)
    index = np.stack(np.meshgrid(*[np.arange(n) * stride for n in coarse_shape], indexing="ij"), axis=-1)
    index = index.reshape(-1, 3).astype(np.float64)
    mni = index @ to_template[:3, :3].T + to_template[:3, 3]
    grid_coords = ((mni - deformation_lo) / deformation_step).T
    subject_shift = np.stack(
        [ndi.map_coordinates(c, grid_coords, order=1, mode="nearest", prefilter=False) for c in deformation], axis=-1
    )
    anatomy = mni + subject_shift  # the subject's unatrophied anatomy, in template coordinates
    atrophied = anatomy + _atrophy_displacement(anatomy, visit, template, push)
    scanner = index @ geometry.affine[:3, :3].T + geometry.affine[:3, 3]
    visit_rng = np.random.default_rng([visit.seed, 3])
    log_bias, bias_amplitude = _bias_field(scanner, visit_rng)
    channels = np.concatenate([(atrophied - mni).T, (anatomy - mni).T, log_bias[None]]).astype(np.float32)
    channels = channels.reshape(7, *coarse_shape)

    head_rng = np.random.default_rng([subject.seed, 3])
    thickness = {
        "csf": float(head_rng.uniform(1.5, 3.0)),
        "skull": float(head_rng.uniform(5.0, 7.0)),
        "fat": float(head_rng.uniform(3.0, 5.0)),
        "skin": 1.5,
    }
    head_end = sum(thickness.values())
    gain = float(visit_rng.uniform(900.0, 1100.0))
    noise_sigma = float(visit_rng.uniform(0.02, 0.04)) * _WHITE_MATTER_LEVEL

    volume = np.empty(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    reference_counts = np.zeros(len(REGION_LABELS) + 1, dtype=np.int64)
    box_lo, box_hi = template.label_box
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    # The unatrophied anatomy is at most this far (mm) from where the scan's voxels sit before deformation.
    reach = float(np.abs(channels[3:6]).max()) + 1.0
    for k0 in range(0, shape[2], _SLAB):
        k1 = min(k0 + _SLAB, shape[2])
        fine = _upsample(channels[[0, 1, 2, 6]], stride, ((0, shape[0]), (0, shape[1]), (k0, k1)))
        position = np.stack(
            [
                to_template32[c, 0] * axes[0][:, None, None]
                + to_template32[c, 1] * axes[1][None, :, None]
                + to_template32[c, 2] * axes[2][None, None, k0:k1]
                + to_template32[c, 3]
                for c in range(3)
            ]
        )
        target = position + fine[0:3]
        t1 = ndi.map_coordinates(
            template.t1, target - template.origin.reshape(3, 1, 1, 1).astype(np.float32), order=1,
            mode="nearest", prefilter=False,
        )  # fmt: skip
        distance_coords = (target - template.distance_origin.reshape(3, 1, 1, 1)) / template.distance_step
        distance = ndi.map_coordinates(
            template.distance, distance_coords.astype(np.float32), order=1, mode="nearest", prefilter=False
        )
        outside = _head_profile(distance, thickness)
        outside += _neck(target, np.clip(distance - head_end, 0.0, 1.0))
        intensity = np.where(distance > 0.0, outside, t1)
        volume[:, :, k0:k1] = intensity * np.exp(fine[3])
        labels[:, :, k0:k1] = _sample_labels(template, target, box_lo, box_hi)

        # The same voxels without atrophy, for the reference volumes: only the block that can reach a region.
        near = np.ones(position.shape[1:], dtype=bool)
        for axis in range(3):
            near &= (position[axis] >= box_lo[axis] - reach) & (position[axis] <= box_hi[axis] + reach)
        if near.any():
            found = np.argwhere(near)
            lo, hi = found.min(axis=0), found.max(axis=0) + 1
            block = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
            ranges = ((lo[0], hi[0]), (lo[1], hi[1]), (k0 + lo[2], k0 + hi[2]))
            unatrophied = position[(slice(None), *block)] + _upsample(channels[3:6], stride, ranges)
            reference = _sample_labels(template, unatrophied, box_lo, box_hi)
            reference_counts += np.bincount(reference.ravel(), minlength=len(REGION_LABELS) + 1)

    # Rician noise: the magnitude of the signal plus complex Gaussian noise, as a magnitude image stores it.
    noise_rng = np.random.default_rng([visit.seed, 4])
    real = volume + noise_rng.standard_normal(shape, dtype=np.float32) * np.float32(noise_sigma)
    imaginary = noise_rng.standard_normal(shape, dtype=np.float32) * np.float32(noise_sigma)
    magnitude = np.sqrt(real * real + imaginary * imaginary) * np.float32(gain)
    stored = np.clip(np.rint(magnitude), 0, 2**16 - 1).astype(np.uint16)

    voxel_mm3 = float(np.prod(geometry.spacing))
    counts = np.bincount(labels.ravel(), minlength=len(REGION_LABELS) + 1)
    info = {
        "subject_transform": subject_transform(subject),
        "deformation_rms_mm": round(deformation_rms, 3),
        "head_shells_mm": {k: round(v, 3) for k, v in thickness.items()},
        "bias_field_amplitude": round(bias_amplitude, 4),
        "gain": round(gain, 3),
        "noise_sigma": round(noise_sigma * gain, 3),
        "ventricle_push": round(push, 4),
    }
    return RenderedScan(
        volume=stored,
        labels=labels,
        geometry=geometry,
        volumes_mm3={label: float(counts[label]) * voxel_mm3 for label in REGION_LABELS},
        reference_volumes_mm3={label: float(reference_counts[label]) * voxel_mm3 for label in REGION_LABELS},
        info=info,
    )


def _sample_labels(template: Template, target: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Region labels (nearest neighbour) at MNI positions ``target`` (3, ...), looked up only near a region."""
    out = np.zeros(target.shape[1:], dtype=np.uint8)
    near = np.ones(target.shape[1:], dtype=bool)
    for axis in range(3):
        near &= (target[axis] >= lo[axis]) & (target[axis] <= hi[axis])
    if near.any():
        coords = target[:, near] - template.origin[:, None].astype(np.float32)
        out[near] = ndi.map_coordinates(template.labels, coords, order=0, mode="constant", prefilter=False)
    return out


def _bias_field(points: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Log of a smooth multiplicative bias field at scanner positions (N, 3): a few plane waves with wavelengths of
    200-400 mm, scaled so that the field spans ``1 +- amplitude`` (amplitude 0.1-0.2) over the field of view.
    """
    log_bias = np.zeros(len(points))
    centre = points.mean(axis=0)
    for _ in range(4):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        frequency = rng.uniform(1 / 400, 1 / 200)
        log_bias += rng.uniform(0.5, 1.0) * np.cos(
            2 * np.pi * frequency * (points - centre) @ direction + rng.uniform(0, 2 * np.pi)
        )
    log_bias -= log_bias.mean()
    amplitude = float(rng.uniform(0.1, 0.2))
    log_bias *= np.log1p(amplitude) / max(float(np.abs(log_bias).max()), 1e-9)
    return log_bias.astype(np.float32), amplitude
