"""Inputs for the quality-control tests, written by the tests themselves: things that are not usable brain scans
(a fruit, noise, a tiny volume, a thick-slice 2D series) and good heads to compare them with.

Each ``write_*`` function writes under the path it is given and returns the path of what it wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from preprocessing.dicom_writer import write_series_from_affine

# Sagittal storage as ADNI's MPRAGE: voxel i runs A->P (RAS -y), j runs S->I (-z), k (the slice) runs L->R (+x).
_SAGITTAL_DIRECTIONS = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def centred_affine(shape: Sequence[int], spacing: float | Sequence[float], directions: np.ndarray | None = None):
    """A voxel-to-RAS affine with the given voxel sizes whose grid is centred on world (0, 0, 0)."""
    spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    directions = np.eye(3) if directions is None else np.asarray(directions, dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape, dtype=float) - 1) / 2)
    return affine


def world_coordinates(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """RAS millimetres of every voxel centre, shape (*shape, 3)."""
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), axis=-1)
    return ijk @ np.asarray(affine, dtype=np.float32)[:3, :3].T + np.asarray(affine, dtype=np.float32)[:3, 3]


def _save(path: Path | str, volume: np.ndarray, affine: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine), str(path))
    return path


def _smooth_noise(shape: Sequence[int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise smoothed over ``sigma`` voxels: a texture without structure."""
    noise = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)).astype(np.float32), sigma)
    return noise / max(float(noise.std()), 1e-9)


def head_phantom_volume(shape: Sequence[int], affine: np.ndarray, seed: int = 0) -> np.ndarray:
    """A T1-like head on any grid: white-matter core, grey-matter shell, CSF, dark skull, bright scalp, noise.

    The same layers as ``preprocessing.benchmark.head_phantom`` but defined in world millimetres, so that it can be
    sampled on anisotropic and non-RAS grids (a thick-slice sagittal series).
    """
    rng = np.random.default_rng(seed)
    world = world_coordinates(shape, affine)
    radius = np.sqrt(((world / np.array([68.0, 85.0, 70.0], np.float32)) ** 2).sum(-1))
    volume = np.zeros(tuple(shape), np.float32)
    volume[radius < 1.18] = 150.0  # scalp
    volume[radius < 1.10] = 50.0  # skull
    volume[radius < 1.05] = 200.0  # CSF
    volume[radius < 1.0] = 550.0  # grey matter
    volume[radius < 0.75] = 850.0  # white matter
    return np.clip(volume + 20.0 * rng.standard_normal(volume.shape), 0.0, None).astype(np.float32)


def write_fruit_phantom(path: Path | str, seed: int = 0, spacing: float = 2.0) -> Path:
    """A head-sized (about 150 mm) fruit: a near-homogeneous flesh with a smooth texture, a slightly brighter rind,
    a few dark seeds near the centre, inside a bright skull-like shell. Not a brain: one tissue, no grey/white
    contrast, no brain shape."""
    rng = np.random.default_rng(seed)
    shape = (int(round(180 / spacing)),) * 3
    affine = centred_affine(shape, spacing)
    world = world_coordinates(shape, affine)
    radius = np.sqrt(((world / np.array([62.0, 70.0, 58.0], np.float32)) ** 2).sum(-1))
    volume = np.zeros(shape, np.float32)
    volume[(radius > 1.12) & (radius < 1.22)] = 900.0  # the shell around it, like a skull with marrow
    volume[radius < 1.0] = 600.0 * (1.0 + 0.04 * _smooth_noise(shape, 3.0, rng))[radius < 1.0]
    volume[(radius > 0.94) & (radius < 1.0)] = 680.0  # rind
    for _ in range(6):  # seeds: small dark ellipsoids around the core
        centre = rng.uniform(-15.0, 15.0, 3).astype(np.float32)
        seed_radius = np.sqrt((((world - centre) / np.array([4.0, 6.0, 3.0], np.float32)) ** 2).sum(-1))
        volume[seed_radius < 1.0] = 250.0
    volume += 15.0 * rng.standard_normal(shape).astype(np.float32)
    return _save(path, np.clip(volume, 0.0, None), affine)


def write_noise_cube(path: Path | str, seed: int = 0, size: int = 64, spacing: float = 2.0) -> Path:
    """A cube of uniform random noise (``size``³ voxels of ``spacing`` mm): no object at all."""
    rng = np.random.default_rng(seed)
    volume = rng.uniform(0.0, 1000.0, (size, size, size))
    return _save(path, volume, centred_affine((size,) * 3, spacing))


def write_tiny_volume(path: Path | str, seed: int = 0) -> Path:
    """An 8³ volume at 1 mm with a bright ball in it: a valid 3D image, far too small to be a head."""
    rng = np.random.default_rng(seed)
    shape = (8, 8, 8)
    affine = centred_affine(shape, 1.0)
    radius = np.linalg.norm(world_coordinates(shape, affine), axis=-1)
    volume = np.where(radius < 2.5, 800.0, 100.0) + 10.0 * rng.standard_normal(shape)
    return _save(path, volume, affine)


def write_head_series(
    folder: Path | str,
    slice_mm: float = 5.0,
    in_plane_mm: float = 2.0,
    acquisition: str = "2D",
    fov_mm: Sequence[float] = (180.0, 240.0, 240.0),
    seed: int = 0,
) -> Path:
    """A sagittal DICOM series of a head phantom (slices L->R ``slice_mm`` apart, ``fov_mm`` as L-R, A-P, S-I) with
    ``MRAcquisitionType`` ``acquisition``; SliceThickness and SpacingBetweenSlices equal ``slice_mm``."""
    spacing = np.array([in_plane_mm, in_plane_mm, slice_mm])
    shape = (int(round(fov_mm[1] / in_plane_mm)), int(round(fov_mm[2] / in_plane_mm)), int(round(fov_mm[0] / slice_mm)))
    affine = centred_affine(shape, spacing, _SAGITTAL_DIRECTIONS)
    volume = head_phantom_volume(shape, affine, seed)
    write_series_from_affine(
        folder,
        volume,
        affine,
        series_description="T1 SAG" if acquisition == "2D" else "MPRAGE",
        uid_seed=f"qc-{acquisition}-{slice_mm}-{seed}",
        extra_tags={"MRAcquisitionType": acquisition},
    )
    return Path(folder)


def write_thick_slice_series(folder: Path | str, seed: int = 0) -> Path:
    """A 2D multi-slice sagittal T1 series with 5 mm slices (MRAcquisitionType 2D, SliceThickness 5,
    SpacingBetweenSlices 5), as DICOM files: the kind of clinical scan a 3D-trained model must not be given."""
    return write_head_series(folder, slice_mm=5.0, in_plane_mm=1.0, acquisition="2D", seed=seed)


def write_phantom_head(path: Path | str, spacing: float = 2.0, seed: int = 0) -> Path:
    """The layered head phantom (:func:`head_phantom_volume`) as a whole-head NIfTI at ``spacing`` mm."""
    shape = tuple(int(round(n / spacing)) for n in (180.0, 220.0, 180.0))
    affine = centred_affine(shape, spacing)
    return _save(path, head_phantom_volume(shape, affine, seed), affine)


def write_synthetic_head(path: Path | str, subject: int = 0, voxel_mm: float = 2.0, seed: int = 0) -> Path:
    """A realistic head (with skull, scalp, neck, bias field, noise) of the synthetic cohort: subject ``subject`` of
    ``preprocessing.synthetic.plan_cohort(seed=seed)`` at ``voxel_mm`` mm, rendered on its sagittal acquisition grid
    and saved with that grid's RAS affine (as a converted ADNI MPRAGE would be, up to the axis order)."""
    from preprocessing.synthetic import plan_cohort, render_scan

    plans = plan_cohort(n_subjects=subject + 1, visits=(1, 1), seed=seed, voxel_size=(voxel_mm, voxel_mm))
    scan = render_scan(plans[subject])
    return _save(path, scan.volume, scan.geometry.affine)
