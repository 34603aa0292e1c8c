"""A synthetic ADNI-like cohort with known atrophy, written as an ADNI download (DICOM series + collection CSV).

Why: ADNI data cannot be shipped, yet the pipeline (discovery, conversion, skull stripping, resampling, training) and
later the explanations need scans whose disease signal is known exactly. Here every scan is made from a real template
with a recorded, purely anatomical AD effect:

* Anatomy: the MNI152 2009a symmetric T1 template that nilearn bundles (1 mm, skull-stripped, with grey and white
  matter maps). Each subject is the template under a random smooth deformation (a few mm, 20 mm correlation) and a
  random affine (head size, small rotations, translation); both are the subject's own and identical at every visit,
  which only adds a small scan-to-scan repositioning.
* Disease: a smooth backward displacement field shrinks both hippocampi and the medial temporal lobes (a weighted
  scaling about each region's centre, 1 inside the region and smoothly 0 a few mm outside) and enlarges the lateral
  ventricles (a push along the gradient of their smoothed mask). The same field warps intensities and region masks,
  so the recorded volume change is measured from the warped masks rather than taken from the nominal parameter. AD
  subjects get disease on top of the mild age-related change that CN subjects also get; it progresses across their
  visits. No intensity differs by group: gain, bias field and noise come from the same distributions for everyone.
* Scanner: a CSF, skull (with marrow) and scalp shell around the brain and a neck below it (skull stripping has work
  to do), a smooth multiplicative bias field, Rician noise, and a sagittal acquisition stored as DICOM rows A->P,
  columns S->I, slices L->R (not RAS), with voxel sizes of 1.0-1.25 mm and a whole-head field of view.
* Truth per scan, on the grid and with the affine that dicom2nifti gives the converted NIfTI (LAS):
  ``truth/<subject>_<image_id>_regions.nii.gz`` (labels in :data:`REGION_LABELS`) and ``..._truth.json`` (region
  volumes of this scan, of the same subject without any atrophy on the same grid, their percentage change, group,
  visit, age), plus ``truth/cohort.json``.

Everything is deterministic for a seed (file bytes included: DICOM UIDs are derived from the seed) and does not
depend on the number of worker processes. ``python -m preprocessing synth`` is the command line.
"""

from __future__ import annotations

import csv
import datetime as dt
import inspect
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from preprocessing.dicom_writer import write_series_from_affine

# ---------------------------------------------------------------- what the truth files mean

#: Labels of the truth region maps (``*_regions.nii.gz``). MTL labels exclude the hippocampus; label 6 is deep white
#: matter outside every deformation, a control region (explanations should not focus there; intensities there do not
#: depend on the group).
REGION_LABELS: dict[int, str] = {
    1: "left_hippocampus",
    2: "right_hippocampus",
    3: "left_medial_temporal_lobe",
    4: "right_medial_temporal_lobe",
    5: "lateral_ventricles",
    6: "reference_white_matter",
}
#: Sums of labels that are reported too.
REGION_GROUPS: dict[str, tuple[int, ...]] = {"hippocampi": (1, 2), "medial_temporal_lobes": (3, 4)}

#: ADNI visit codes used, with their months from baseline.
VISIT_MONTHS: tuple[tuple[str, int], ...] = (("sc", 0), ("m06", 6), ("m12", 12), ("m24", 24))

#: Default AD disease strength: the mean hippocampal volume loss from disease at an AD subject's first visit. With
#: the age-related change on top, AD hippocampi are 17-27 % smaller than the subject's own unatrophied ones at the first
#: visit and up to ~32 % by m24; ventricles 30-65 % larger; CN change a few % (see plan_cohort).
DEFAULT_ATROPHY = 0.18

#: Default lateral ventricular growth of AD per unit of hippocampal loss from disease (0.18 -> about +30 %).
DEFAULT_VENTRICLE_RATIO = 1.7

#: Series description of every good scan (and the folder name ADNI gives it).
MPRAGE = "MPRAGE"
#: Kinds of broken scans written with ``broken=True``, and what the pipeline should say about each.
BROKEN_KINDS: dict[str, str] = {
    "missing_slice": "one slice file of the series is missing: conversion fails (inconsistent slice increment)",
    "localizer": "a 3-plane localizer of the same visit: discovery skips it by its description (not MPRAGE)",
    "non_dicom_file": "a text file inside the series folder: conversion fails (not DICOM)",
    "truncated_file": "one DICOM file cut short: conversion fails (unreadable or short pixel data)",
}

# ---------------------------------------------------------------- anatomy in MNI space (mm)


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in MNI millimetres: centre, direction of its long axis, semi-axes (long, lateral, vertical)."""

    centre: tuple[float, float, float]
    long_axis: tuple[float, float, float]
    semi_axes: tuple[float, float, float]

    def frame(self) -> np.ndarray:
        """Rows: unit long axis, a horizontal axis across it, and their cross product (roughly vertical)."""
        long_axis = np.asarray(self.long_axis, dtype=float)
        long_axis /= np.linalg.norm(long_axis)
        across = np.cross(long_axis, [0.0, 0.0, 1.0])
        across /= np.linalg.norm(across)
        return np.stack([long_axis, across, np.cross(long_axis, across)])

    def radius(self, points: np.ndarray) -> np.ndarray:
        """Normalised radius of ``points`` (..., 3): 1 on the surface, < 1 inside."""
        local = (points - np.asarray(self.centre)) @ self.frame().T / np.asarray(self.semi_axes)
        return np.sqrt(np.sum(local * local, axis=-1))

    def mirrored(self) -> Ellipsoid:
        """The same ellipsoid in the other hemisphere (the 2009a symmetric template is left-right symmetric)."""
        (x, y, z), (ax, ay, az) = self.centre, self.long_axis
        return Ellipsoid((-x, y, z), (-ax, ay, az), self.semi_axes)


# Hippocampus: checked on slices of the template (see save_region_overview): the grey-matter band under the temporal
# horn from the head (y ~ -8, z ~ -22) to the tail (y ~ -38, z ~ -4), running back, up and slightly medially.
_RIGHT_HIPPOCAMPUS = Ellipsoid((28.0, -22.0, -14.0), (-0.15, -0.85, 0.45), (21.0, 7.0, 5.5))
# Medial temporal lobe: a larger ellipsoid around it (amygdala, entorhinal and parahippocampal cortex).
_RIGHT_MTL = Ellipsoid((25.0, -16.0, -20.0), (-0.15, -0.85, 0.45), (30.0, 11.5, 11.5))
HIPPOCAMPI: dict[str, Ellipsoid] = {"left": _RIGHT_HIPPOCAMPUS.mirrored(), "right": _RIGHT_HIPPOCAMPUS}
MEDIAL_TEMPORAL_LOBES: dict[str, Ellipsoid] = {"left": _RIGHT_MTL.mirrored(), "right": _RIGHT_MTL}
#: Lateral ventricles: CSF-dark voxels inside the brain within this box (|x| range, y range, z range), largest
#: connected component per hemisphere (frontal horns, bodies, atria; not the temporal horns).
VENTRICLE_BOX: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] = ((2, 32), (-55, 28), (-2, 32))
_CSF_THRESHOLD = 0.45  # template T1 (0..1): CSF ~0.28, grey matter ~0.65, white matter ~0.87
_GM_THRESHOLD = 0.3
#: Reference white matter: spheres in the centrum semiovale, white-matter probability > 0.95.
REFERENCE_WM_SPHERES: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((-28.0, -12.0, 40.0), 8.0),
    ((28.0, -12.0, 40.0), 8.0),
)

# Profile of the shells around the brain (template T1 units) and of the neck; thicknesses are drawn per subject.
_CSF_LEVEL = 0.22
_BONE_LEVEL = 0.05
_MARROW_LEVEL = 0.35
_FAT_LEVEL = 0.95
_SKIN_LEVEL = 0.6
_MUSCLE_LEVEL = 0.42
_CORD_LEVEL = 0.75
_WHITE_MATTER_LEVEL = 0.87  # template white matter; noise is a fraction of it

# Field of view of the sagittal acquisition (L-R, A-P, S-I) in mm, centred on this point of the head (MNI mm).
FIELD_OF_VIEW_MM: tuple[float, float, float] = (192.0, 240.0, 256.0)
_HEAD_CENTRE_MNI = (0.0, -17.0, -22.0)

# Displacements are computed exactly on a grid this many times coarser than the scan and interpolated linearly
# (they are smooth on that scale); intensities and labels are then sampled once per voxel.
_COARSE_STRIDE = 2
_SLAB = 24  # slices rendered at a time, to bound memory
_VENTRICLE_SIGMA_MM = 3.0
_DIST_STEP_MM = 2.0


# ---------------------------------------------------------------- template


@dataclass(frozen=True)
class Template:
    """The template arrays the renderer samples, all in MNI space (RAS axes, 1 mm voxels from ``origin``).

    ``t1`` is the skull-stripped T1 (0..1) with CSF intensity outside the brain; ``labels`` the region map
    (:data:`REGION_LABELS`); ``distance`` the distance (mm) from the brain on a ``distance_step`` mm grid starting at
    ``distance_origin``; ``ventricle_field`` the gradient (per mm) of the smoothed ventricle mask on a crop of the
    template starting at voxel ``ventricle_offset``; ``ventricle_calibration`` pairs of (push strength, measured
    ventricular growth) for turning a wanted growth into a push.
    """

    t1: np.ndarray
    labels: np.ndarray
    origin: np.ndarray
    distance: np.ndarray
    distance_origin: np.ndarray
    distance_step: float
    ventricle_field: np.ndarray
    ventricle_offset: np.ndarray
    ventricle_calibration: tuple[tuple[float, ...], tuple[float, ...]]
    label_box: tuple[np.ndarray, np.ndarray]
    volumes_mm3: dict[int, float]
    source: dict[str, str]


@lru_cache(maxsize=1)
def load_template() -> Template:
    """The MNI152 2009a template bundled with nilearn, with the regions and fields the renderer needs (cached).

    Loads offline: nilearn ships these 1 mm images inside the package.
    """
    import nilearn
    from nilearn import datasets

    t1_image = datasets.load_mni152_template(resolution=1)
    affine = np.asarray(t1_image.affine, dtype=float)
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise RuntimeError(f"unexpected MNI template affine (expected 1 mm RAS voxels): {affine.tolist()}")
    origin = affine[:3, 3].copy()
    t1 = np.asarray(t1_image.get_fdata(dtype=np.float32))
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32))
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32))
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata()) > 0
    brain = ndi.binary_fill_holes(brain)

    labels = _region_labels(t1, gm, wm, brain, origin)
    filled = np.where(brain, t1, np.float32(_CSF_LEVEL)).astype(np.float32)
    distance, distance_origin = _distance_from_brain(brain, origin)
    ventricle_field, ventricle_offset = _ventricle_field(labels == 5)
    calibration = _calibrate_ventricles(labels == 5, ventricle_field, ventricle_offset)
    found = np.argwhere(labels > 0)
    label_box = (found.min(axis=0) + origin - 2.0, found.max(axis=0) + origin + 2.0)
    counts = np.bincount(labels.ravel(), minlength=len(REGION_LABELS) + 1)
    return Template(
        t1=filled,
        labels=labels,
        origin=origin,
        distance=distance,
        distance_origin=distance_origin,
        distance_step=_DIST_STEP_MM,
        ventricle_field=ventricle_field,
        ventricle_offset=ventricle_offset,
        ventricle_calibration=calibration,
        label_box=label_box,
        volumes_mm3={label: float(counts[label]) for label in REGION_LABELS},
        source={
            "template": "MNI152 2009a symmetric (ICBM 2009a nonlinear symmetric), 1 mm, as bundled by nilearn",
            "nilearn_version": nilearn.__version__,
            "loaders": "nilearn.datasets.load_mni152_template/_gm_template/_wm_template/_brain_mask(resolution=1)",
        },
    )


def _mni_grid(shape: Sequence[int], origin: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple, np.ndarray]:
    """Index slices of the voxels between ``lo`` and ``hi`` (mm) and their MNI coordinates (x, y, z, 3)."""
    start = np.maximum(np.floor(lo - origin).astype(int), 0)
    stop = np.minimum(np.ceil(hi - origin).astype(int) + 1, np.asarray(shape))
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    axes = [np.arange(a, b, dtype=np.float32) + np.float32(o) for a, b, o in zip(start, stop, origin, strict=True)]
    return box, np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def _region_labels(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, brain: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """The region map of :data:`REGION_LABELS` on the template grid."""
    labels = np.zeros(t1.shape, dtype=np.uint8)
    for side, hippocampus_label, mtl_label in (("left", 1, 3), ("right", 2, 4)):
        mtl = MEDIAL_TEMPORAL_LOBES[side]
        reach = np.max(mtl.semi_axes)
        box, points = _mni_grid(t1.shape, origin, np.asarray(mtl.centre) - reach, np.asarray(mtl.centre) + reach)
        grey = gm[box] > _GM_THRESHOLD
        in_hippocampus = grey & (HIPPOCAMPI[side].radius(points) <= 1.0)
        in_mtl = grey & (mtl.radius(points) <= 1.0) & ~in_hippocampus
        region = labels[box]
        region[in_mtl & (region == 0)] = mtl_label
        region[in_hippocampus] = hippocampus_label

    (ax_lo, ax_hi), (y_lo, y_hi), (z_lo, z_hi) = VENTRICLE_BOX
    box, points = _mni_grid(t1.shape, origin, np.array([-ax_hi, y_lo, z_lo]), np.array([ax_hi, y_hi, z_hi]))
    dark = brain[box] & (t1[box] < _CSF_THRESHOLD) & (np.abs(points[..., 0]) >= ax_lo)
    components, _ = ndi.label(dark)
    ventricles = np.zeros_like(dark)
    for hemisphere in (points[..., 0] < 0, points[..., 0] > 0):
        sizes = np.bincount(components[hemisphere & dark])
        sizes[0] = 0
        if sizes.max() > 0:
            ventricles |= components == int(np.argmax(sizes))
    region = labels[box]
    region[ventricles & (region == 0)] = 5

    for centre, radius in REFERENCE_WM_SPHERES:
        lo, hi = np.asarray(centre) - radius, np.asarray(centre) + radius
        box, points = _mni_grid(t1.shape, origin, lo, hi)
        inside = np.sum((points - np.asarray(centre)) ** 2, axis=-1) <= radius**2
        region = labels[box]
        region[inside & (wm[box] > 0.95) & (region == 0)] = 6
    return labels


def _distance_from_brain(brain: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) from the brain on a 2 mm grid padded by 30 mm (enough for every shell), and its origin."""
    step = int(_DIST_STEP_MM)
    padded_shape = [int(np.ceil(n / step)) * step for n in brain.shape]
    padded = np.zeros(padded_shape, dtype=np.float32)
    padded[: brain.shape[0], : brain.shape[1], : brain.shape[2]] = brain
    coarse = padded.reshape(padded_shape[0] // step, step, padded_shape[1] // step, step, -1, step).mean(axis=(1, 3, 5))
    pad = int(30 / _DIST_STEP_MM)
    inside = np.pad(coarse >= 0.5, pad)
    distance = ndi.distance_transform_edt(~inside, sampling=_DIST_STEP_MM).astype(np.float32)
    # Coarse voxel c covers fine voxels step*c .. step*c+step-1: its centre is half a fine voxel in from them.
    distance_origin = origin + (step - 1) / 2.0 - pad * _DIST_STEP_MM
    return distance, distance_origin


def _ventricle_field(ventricles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient (per mm) of the Gaussian-smoothed ventricle mask on a crop with a 5-sigma margin (zero beyond)."""
    found = np.argwhere(ventricles)
    margin = int(np.ceil(5 * _VENTRICLE_SIGMA_MM))
    lo = np.maximum(found.min(axis=0) - margin, 0)
    hi = np.minimum(found.max(axis=0) + margin + 1, ventricles.shape)
    crop = ventricles[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
    smooth = ndi.gaussian_filter(crop, _VENTRICLE_SIGMA_MM, mode="constant")
    gradient = np.stack(np.gradient(smooth), axis=0).astype(np.float32)
    # A smooth window takes the field to exactly zero at the crop's edge, so no displacement leaks anywhere else.
    for axis in range(3):
        n = gradient.shape[axis + 1]
        ramp = np.minimum(np.arange(n), np.arange(n)[::-1]) / 4.0
        window = np.clip(ramp, 0.0, 1.0).astype(np.float32)
        gradient *= window.reshape([1 if a != axis + 1 else n for a in range(4)])
    return gradient, lo.astype(float)


def _calibrate_ventricles(
    ventricles: np.ndarray, field: np.ndarray, offset: np.ndarray
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Measured ventricular growth for a range of push strengths (push in mm per unit of mask gradient)."""
    lo = offset.astype(int)
    crop_shape = field.shape[1:]
    crop = ventricles[lo[0] : lo[0] + crop_shape[0], lo[1] : lo[1] + crop_shape[1], lo[2] : lo[2] + crop_shape[2]]
    base = float(crop.sum())
    grid = np.indices(crop_shape, dtype=np.float32)
    strengths = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
    growth = []
    points = grid.reshape(3, -1).T
    for strength in strengths:
        coords = _ventricle_flow(points, field, np.zeros(3), strength).T.reshape(grid.shape)
        warped = ndi.map_coordinates(crop.astype(np.float32), coords, order=1, mode="constant", prefilter=False)
        growth.append(float(warped.sum()) / base - 1.0)
    return strengths, tuple(np.maximum.accumulate(growth))


def _ventricle_flow(points: np.ndarray, field: np.ndarray, offset: np.ndarray, push: float) -> np.ndarray:
    """Move ``points`` (N, 3; voxel coordinates of the template) up the smoothed ventricle mask's gradient.

    The push is taken in small steps (at most 5 units each) rather than at once: one large step would fold tissue
    over itself where the gradient changes fast, while a sequence of small ones follows the flow of the field, which
    never folds. Sampling the template at the moved points makes the ventricles grow.
    """
    steps = max(1, int(np.ceil(push / 5.0)))
    moved = points.astype(np.float32, copy=True)
    for _ in range(steps if push > 0 else 0):
        coords = (moved - offset.astype(np.float32)).T
        for axis in range(3):
            moved[:, axis] += np.float32(push / steps) * ndi.map_coordinates(
                field[axis], coords, order=1, mode="constant", cval=0.0, prefilter=False
            )
    return moved


def _ventricle_push(template: Template, growth: float) -> float:
    """Push strength that grows the template's ventricles by ``growth`` (fraction), from the calibration curve."""
    strengths, growths = template.ventricle_calibration
    if growth > growths[-1]:
        raise ValueError(f"ventricular growth {growth:.2f} beyond the calibrated range (max {growths[-1]:.2f})")
    return float(np.interp(growth, growths, strengths))


# ---------------------------------------------------------------- cohort plan


@dataclass(frozen=True)
class VisitPlan:
    """One scan of a subject: ADNI identifiers, date, age and the nominal atrophy (fractions, age and disease)."""

    image_id: str
    visit: str
    months: int
    date: str
    time: str
    age: float
    hippocampus_loss: float
    mtl_loss: float
    ventricle_growth: float
    seed: int


@dataclass(frozen=True)
class BrokenPlan:
    """An extra, deliberately broken image of a subject (see :data:`BROKEN_KINDS`), written at ``visit_index``."""

    kind: str
    image_id: str
    description: str
    visit_index: int = 0


@dataclass(frozen=True)
class SubjectPlan:
    """A subject: demographics, scanner voxel sizes, the random stream of its anatomy, and its visits."""

    subject: str
    group: str
    sex: str
    seed: int
    in_plane_mm: float
    slice_mm: float
    field_strength: float
    visits: tuple[VisitPlan, ...]
    broken: tuple[BrokenPlan, ...] = ()


@dataclass
class CohortInfo:
    """Where a generated cohort is and what it holds."""

    out: Path
    adni_dir: Path
    collection_csv: Path
    truth_dir: Path
    n_subjects: int
    n_scans: int
    groups: dict[str, dict[str, int]]
    broken: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def seconds_per_scan(self) -> float:
        """Wall-clock seconds per good scan (all workers together)."""
        return self.seconds / max(self.n_scans, 1)


def plan_cohort(
    n_subjects: int = 40,
    ad_fraction: float = 0.5,
    visits: tuple[int, int] = (1, 4),
    atrophy: float = DEFAULT_ATROPHY,
    seed: int = 0,
    broken: bool = False,
    voxel_size: tuple[float, float] = (1.0, 1.25),
    ventricle_ratio: float = DEFAULT_VENTRICLE_RATIO,
) -> list[SubjectPlan]:
    """Subjects, visits and nominal atrophy of a cohort, deterministic for ``seed`` (cheap: nothing is rendered).

    AD subjects lose ``atrophy`` (x U(0.85, 1.15)) of their hippocampal volume from disease by the first visit, and
    ``atrophy`` x U(0.12, 0.2) more of what remains per year; the medial temporal lobe loses 0.45 times as much and
    the lateral ventricles grow by ``ventricle_ratio`` (default 1.7) times the hippocampal loss. Everyone (CN too)
    gets an age-related change on top: per year over 60, 0.25 % hippocampal and 0.15 % MTL loss and 0.5 % ventricular
    growth. ``voxel_size`` is the range of in-plane and slice spacings (drawn per subject; the same scanner at every
    visit).
    """
    if n_subjects < 1:
        raise ValueError("n_subjects must be at least 1")
    if not 0.0 <= ad_fraction <= 1.0:
        raise ValueError("ad_fraction must be within 0..1")
    if not 1 <= visits[0] <= visits[1] <= len(VISIT_MONTHS):
        raise ValueError(f"visits must be a range within 1..{len(VISIT_MONTHS)}, got {visits}")
    if not 0.0 <= atrophy <= 0.4:
        raise ValueError("atrophy (hippocampal volume loss of AD subjects at baseline) must be within 0..0.4")
    if not 0.0 <= ventricle_ratio <= 4.0:
        raise ValueError("ventricle_ratio (ventricular growth per unit of hippocampal loss) must be within 0..4")
    if not 0.5 <= voxel_size[0] <= voxel_size[1] <= 4.0:
        raise ValueError(f"voxel_size must be a range within 0.5..4 mm, got {voxel_size}")

    rng = np.random.default_rng([seed, 0])
    n_ad = int(round(n_subjects * ad_fraction))
    groups = np.array(["AD"] * n_ad + ["CN"] * (n_subjects - n_ad))
    rng.shuffle(groups)
    numbers = rng.choice(np.arange(1000, 10000), size=n_subjects, replace=False)
    sites = rng.choice([2, 5, 6, 11, 13, 16, 18, 22, 23, 27, 31, 35, 41, 52, 67, 94, 100, 116, 130, 941], n_subjects)
    next_image = int(rng.integers(20000, 90000))

    def new_image_id() -> str:
        nonlocal next_image
        next_image += int(rng.integers(1, 400))
        return f"I{next_image}"

    subjects: list[SubjectPlan] = []
    for index in range(n_subjects):
        group = str(groups[index])
        sub_rng = np.random.default_rng([seed, 1, index])
        sex = "F" if sub_rng.random() < 0.5 else "M"
        age = float(np.clip(sub_rng.normal(76.0 if group == "AD" else 74.5, 6.5), 60.0, 88.0))
        n_visits = int(sub_rng.integers(visits[0], visits[1] + 1))
        baseline = dt.date(2005, 9, 1) + dt.timedelta(days=int(sub_rng.integers(0, 4 * 365)))
        severity = float(sub_rng.uniform(0.85, 1.15))
        rate = float(sub_rng.uniform(0.12, 0.2))
        visit_plans = []
        for code, months in VISIT_MONTHS[:n_visits]:
            years = months / 12.0
            jitter = int(sub_rng.integers(-14, 15)) if months else 0
            date = baseline + dt.timedelta(days=int(round(months * 30.44)) + jitter)
            clock = dt.time(int(sub_rng.integers(7, 19)), int(sub_rng.integers(0, 60)), int(sub_rng.integers(0, 60)))
            age_then = age + (date - baseline).days / 365.25
            over_60 = max(age_then - 60.0, 0.0)
            disease = 0.0
            if group == "AD":
                disease = 1.0 - (1.0 - atrophy * severity) * (1.0 - atrophy * rate) ** years
            hippocampus = 1.0 - (1.0 - 0.0025 * over_60) * (1.0 - disease)
            mtl = 1.0 - (1.0 - 0.0015 * over_60) * (1.0 - 0.45 * disease)
            ventricles = (1.0 + 0.005 * over_60) * (1.0 + ventricle_ratio * disease) - 1.0
            visit_plans.append(
                VisitPlan(
                    image_id=new_image_id(),
                    visit=code,
                    months=months,
                    date=date.isoformat(),
                    time=clock.strftime("%H%M%S"),
                    age=round(age_then, 2),
                    hippocampus_loss=round(hippocampus, 6),
                    mtl_loss=round(mtl, 6),
                    ventricle_growth=round(ventricles, 6),
                    seed=int(sub_rng.integers(2**62)),
                )
            )
        subjects.append(
            SubjectPlan(
                subject=f"{int(sites[index]):03d}_S_{int(numbers[index]):04d}",
                group=group,
                sex=sex,
                seed=int(sub_rng.integers(2**62)),
                in_plane_mm=round(float(sub_rng.uniform(*voxel_size)), 3),
                slice_mm=round(float(sub_rng.uniform(*voxel_size)), 2),
                field_strength=1.5 if sub_rng.random() < 0.5 else 3.0,
                visits=tuple(visit_plans),
            )
        )
    if broken:
        kinds = ("missing_slice", "localizer", "non_dicom_file", "truncated_file")
        for k, kind in enumerate(kinds):
            index = k % n_subjects
            description = "Localizer" if kind == "localizer" else "MPRAGE Repeat"
            extra = BrokenPlan(kind=kind, image_id=new_image_id(), description=description)
            subjects[index] = replace(subjects[index], broken=subjects[index].broken + (extra,))
    return subjects


# ---------------------------------------------------------------- geometry


@dataclass(frozen=True)
class ScanGeometry:
    """The stored (DICOM) grid of a scan: ``volume[i, j, k]`` with i along rows (A->P), j down (S->I), k to the right.

    ``affine`` maps (i, j, k) to scanner RAS mm; :meth:`nifti` gives the grid dicom2nifti makes of it.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k (mm)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def nifti(self) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
        """``(shape, affine, orientation transform)`` of the converted NIfTI: dicom2nifti reorients to LAS."""
        current = nib.orientations.io_orientation(self.affine)
        transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(("L", "A", "S")))
        affine = self.affine @ nib.orientations.inv_ornt_aff(transform, self.shape)
        shape = tuple(int(self.shape[int(axis)]) for axis in np.argsort(transform[:, 0]))
        return shape, affine, transform


def acquisition_geometry(subject: SubjectPlan, visit_index: int = 0) -> ScanGeometry:
    """Sagittal whole-head acquisition for one visit: the field of view of :data:`FIELD_OF_VIEW_MM`, centred on the
    subject's head as positioned at that visit (give or take 3 mm), with the subject's voxel sizes.
    """
    spacing = np.array([subject.in_plane_mm, subject.in_plane_mm, subject.slice_mm])
    fov_lr, fov_ap, fov_si = FIELD_OF_VIEW_MM
    shape = (int(round(fov_ap / spacing[0])), int(round(fov_si / spacing[1])), int(round(fov_lr / spacing[2])))
    pose = head_pose(subject, visit_index)
    rng = np.random.default_rng([subject.seed, 20, visit_index])
    centre = (pose @ np.append(_HEAD_CENTRE_MNI, 1.0))[:3] + rng.uniform(-3.0, 3.0, 3)
    # Rows run A->P (RAS -y), columns S->I (-z), slices L->R (+x): the writer's "sagittal" orientation.
    directions = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing
    extent = (np.array(shape) - 1) * spacing
    corner_offset = directions @ (extent / 2.0)
    affine[:3, 3] = np.round(centre - corner_offset, 3)
    return ScanGeometry(shape=shape, affine=affine)


def _rotation(degrees: Sequence[float]) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    rx, ry, rz = np.deg2rad(np.asarray(degrees, dtype=float))
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return z @ y @ x


def subject_transform(subject: SubjectPlan) -> dict[str, list[float]]:
    """The subject's own affine: per-axis scale (head size), rotation (degrees) and translation (mm)."""
    rng = np.random.default_rng([subject.seed, 1])
    # Centred below 1: the MNI152 brain is larger than most individual brains.
    scale = rng.uniform(0.86, 0.98) * rng.uniform(0.97, 1.03, 3)
    return {
        "scale": [round(float(v), 5) for v in scale],
        "rotation_deg": [round(float(v), 4) for v in rng.uniform(-6.0, 6.0, 3)],
        "translation_mm": [round(float(v), 3) for v in rng.uniform(-4.0, 4.0, 3)],
    }


def head_pose(subject: SubjectPlan, visit_index: int = 0) -> np.ndarray:
    """4x4 map from MNI mm to scanner RAS mm: the subject's affine (about the head centre) and the visit's
    repositioning (rotations of about 1 degree, shifts of about 1.5 mm).
    """
    params = subject_transform(subject)
    rng = np.random.default_rng([subject.seed, 10, visit_index])
    centre = np.asarray(_HEAD_CENTRE_MNI)
    linear = _rotation(params["rotation_deg"]) @ np.diag(params["scale"])
    subject_affine = np.eye(4)
    subject_affine[:3, :3] = linear
    subject_affine[:3, 3] = np.asarray(params["translation_mm"]) - linear @ centre
    visit = np.eye(4)
    visit[:3, :3] = _rotation(rng.normal(0.0, 1.0, 3))
    visit[:3, 3] = rng.normal(0.0, 1.5, 3)
    return visit @ subject_affine


def _subject_deformation(subject: SubjectPlan) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The subject's smooth random backward displacement (3, x, y, z) on a 10 mm MNI grid, its origin and step, and
    its RMS amplitude (1.5-3 mm; correlation length about 20 mm, so it changes shapes without folding them).
    """
    rng = np.random.default_rng([subject.seed, 2])
    step = 10.0
    lo = np.array([-140.0, -180.0, -230.0])
    shape = (29, 34, 40)
    noise = rng.standard_normal((3, *shape)).astype(np.float32)
    field_ = np.stack([ndi.gaussian_filter(c, 2.0, mode="nearest") for c in noise])
    amplitude = float(rng.uniform(1.5, 3.0))
    field_ *= amplitude / float(np.sqrt(np.mean(field_**2)))
    return field_, lo, step, amplitude


# ---------------------------------------------------------------- rendering


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


# ---------------------------------------------------------------- writing a cohort


def generate_cohort(
    out: Path | str,
    workers: int | None = None,
    progress: Callable[..., Iterable] | None = None,
    overwrite: bool = False,
    **plan_options: Any,
) -> CohortInfo:
    """Write a synthetic ADNI-like cohort under ``out``: ``ADNI/`` (DICOM), ``collection.csv`` and ``truth/``.

    ``plan_options`` are the arguments of :func:`plan_cohort` (subjects, visits, atrophy, ventricle ratio, seed,
    broken scans, voxel sizes), which says what each does; they are recorded in ``truth/cohort.json``. Subjects are
    rendered in ``workers`` processes (default: one per CPU core); the files do not depend on it. ``progress`` wraps
    an iterable like ``tqdm`` does. An existing cohort in ``out`` is replaced only with ``overwrite``.
    """
    # One list of cohort settings (plan_cohort's signature): bound here to record them with their defaults.
    arguments = inspect.signature(plan_cohort).bind(**plan_options)
    arguments.apply_defaults()
    start = time.perf_counter()
    out = Path(out)
    adni_dir, truth_dir, collection_csv = out / "ADNI", out / "truth", out / "collection.csv"
    existing = [p for p in (adni_dir, truth_dir, collection_csv) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds a cohort ({existing[0].name}); pass overwrite=True to replace it")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    plans = plan_cohort(**arguments.arguments)
    template = load_template()  # loaded before the workers start, so forked workers share it
    workers = max(1, min(workers or os.cpu_count() or 1, len(plans)))
    progress = progress or (lambda iterable, **_: iterable)
    results: dict[str, list[dict[str, Any]]] = {}
    if workers == 1:
        for plan in progress(plans, total=len(plans), desc="synthesising", unit="subject"):
            results[plan.subject] = _write_subject(out, plan)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_write_subject, out, plan): plan.subject for plan in plans}
            for future in progress(as_completed(futures), total=len(futures), desc="synthesising", unit="subject"):
                results[futures[future]] = future.result()

    records = [record for plan in plans for record in results[plan.subject]]
    scans = [r for r in records if r["kind"] == "scan"]
    broken_records = [r for r in records if r["kind"] != "scan"]
    _write_collection_csv(collection_csv, plans, records)
    _write_cohort_json(truth_dir / "cohort.json", plans, records, template, dict(arguments.arguments))
    groups: dict[str, dict[str, int]] = {}
    for group in ("AD", "CN"):
        members = [r for r in scans if r["group"] == group]
        groups[group] = {"subjects": len({r["subject"] for r in members}), "scans": len(members)}
    return CohortInfo(
        out=out,
        adni_dir=adni_dir,
        collection_csv=collection_csv,
        truth_dir=truth_dir,
        n_subjects=len(plans),
        n_scans=len(scans),
        groups=groups,
        broken=[
            {k: str(r[k]) for k in ("kind", "subject", "image_id", "description", "expected")} for r in broken_records
        ],
        seconds=time.perf_counter() - start,
    )


def _session_folder(date: str, clock: str, minutes: int = 0) -> str:
    """ADNI's acquisition folder name, ``YYYY-MM-DD_HH_MM_SS.0``, ``minutes`` after the visit's start."""
    moment = dt.datetime.fromisoformat(f"{date}T{clock[:2]}:{clock[2:4]}:{clock[4:6]}") + dt.timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%d_%H_%M_%S.0")


def _dicom_tags(subject: SubjectPlan, visit: VisitPlan, minutes: int = 0) -> dict[str, Any]:
    """Header tags of one series that are not geometry: dates and times, patient sex and age, field strength."""
    moment = dt.datetime.fromisoformat(f"{visit.date}T{visit.time[:2]}:{visit.time[2:4]}:{visit.time[4:6]}")
    moment += dt.timedelta(minutes=minutes)
    date, clock = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")
    return {
        "StudyDate": visit.date.replace("-", ""),
        "StudyTime": visit.time,
        "SeriesDate": date,
        "SeriesTime": clock,
        "AcquisitionDate": date,
        "AcquisitionTime": clock,
        "ContentDate": date,
        "ContentTime": clock,
        "PatientSex": subject.sex,
        "PatientAge": f"{int(visit.age):03d}Y",
        "MagneticFieldStrength": subject.field_strength,
        "MRAcquisitionType": "3D",
        "StudyDescription": "ADNI-like synthetic cohort",
        "InstitutionName": "Synthetic (not ADNI data)",
        "BodyPartExamined": "BRAIN",
    }


def _write_subject(out: Path, subject: SubjectPlan) -> list[dict[str, Any]]:
    """Render and write every visit of one subject (and its broken extras); one record per image written."""
    template = load_template()
    records = []
    for visit_index, visit in enumerate(subject.visits):
        started = time.perf_counter()
        scan = render_scan(subject, visit_index, template)
        folder = out / "ADNI" / subject.subject / MPRAGE / _session_folder(visit.date, visit.time) / visit.image_id
        write_series_from_affine(
            folder,
            scan.volume,
            scan.geometry.affine,
            patient_id=subject.subject,
            series_description=MPRAGE,
            series_number=2,
            file_prefix=f"ADNI_{subject.subject}_MR_{MPRAGE}_{visit.image_id}",
            uid_seed=f"{subject.subject}/{visit.image_id}/{visit.seed}",
            extra_tags=_dicom_tags(subject, visit),
        )
        record = _write_truth(out / "truth", subject, visit, scan, template)
        record.update(kind="scan", dicom_dir=str(folder.relative_to(out)), seconds=time.perf_counter() - started)
        records.append(record)
        for extra in subject.broken:
            if extra.visit_index == visit_index:
                records.append(_write_broken(out, subject, visit, scan, extra))
    return records


def _write_truth(
    truth_dir: Path, subject: SubjectPlan, visit: VisitPlan, scan: RenderedScan, template: Template
) -> dict[str, Any]:
    """The scan's region map (on the grid dicom2nifti will give it) and its truth JSON; returns the JSON's content."""
    truth_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{subject.subject}_{visit.image_id}"
    shape, affine, transform = scan.geometry.nifti()
    labels = nib.orientations.apply_orientation(scan.labels, transform).astype(np.uint8)
    image = nib.Nifti1Image(labels, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, truth_dir / f"{stem}_regions.nii.gz")

    volumes = _named_volumes(scan.volumes_mm3)
    reference = _named_volumes(scan.reference_volumes_mm3)
    change = {name: round(100.0 * (volumes[name] / reference[name] - 1.0), 3) if reference[name] else None
              for name in volumes}  # fmt: skip
    record = {
        "subject": subject.subject,
        "image_id": visit.image_id,
        "group": subject.group,
        "label": 1 if subject.group == "AD" else 0,
        "sex": subject.sex,
        "age": visit.age,
        "visit": visit.visit,
        "months": visit.months,
        "acq_date": visit.date,
        "description": MPRAGE,
        "regions_nifti": f"{stem}_regions.nii.gz",
        "labels": {str(k): v for k, v in REGION_LABELS.items()},
        "volumes_mm3": volumes,
        "reference_volumes_mm3": reference,
        "percent_change": change,
        "nominal": {
            "hippocampus_loss": visit.hippocampus_loss,
            "medial_temporal_lobe_loss": visit.mtl_loss,
            "ventricle_growth": visit.ventricle_growth,
        },
        "geometry": {
            "nifti_shape": list(shape),
            "voxel_mm": [round(v, 6) for v in (scan.geometry.spacing[2], *scan.geometry.spacing[:2])],
            "nifti_affine": np.round(affine, 6).tolist(),
            "nifti_orientation": "".join(nib.aff2axcodes(affine)),
            "dicom_shape": list(scan.geometry.shape),
            "dicom_orientation": "".join(nib.aff2axcodes(scan.geometry.affine)),
        },
        "rendering": scan.info,
        "template_volumes_mm3": _named_volumes(template.volumes_mm3),
    }
    note = {
        "about": "Ground truth of a synthetic scan. volumes_mm3: regions of this scan, counted in the regions "
        "NIfTI; reference_volumes_mm3: the same subject, pose and grid without any atrophy (age or disease); "
        "percent_change: 100 * (volume / reference - 1). Labels: MTL excludes the hippocampus; label 6 is a control "
        "region of deep white matter that no deformation touches."
    }
    (truth_dir / f"{stem}_truth.json").write_text(json.dumps({**note, **record}, indent=2) + "\n")
    return record


def _named_volumes(volumes: dict[int, float]) -> dict[str, float]:
    """Volumes by region name, plus the left+right sums of :data:`REGION_GROUPS`, rounded to 0.001 mm^3."""
    named = {REGION_LABELS[label]: round(value, 3) for label, value in volumes.items()}
    for name, members in REGION_GROUPS.items():
        named[name] = round(sum(volumes[m] for m in members), 3)
    return named


def _write_broken(
    out: Path, subject: SubjectPlan, visit: VisitPlan, scan: RenderedScan, extra: BrokenPlan
) -> dict[str, Any]:
    """Write one broken image (a repeat of the visit's scan, or a localizer) as :data:`BROKEN_KINDS` describes."""
    # Minutes after the visit's MPRAGE: the localizer comes first, repeats after it.
    minutes = {"localizer": -2, "missing_slice": 12, "non_dicom_file": 14, "truncated_file": 16}[extra.kind]
    folder_name = extra.description.replace(" ", "_")
    folder = out / "ADNI" / subject.subject / folder_name / _session_folder(visit.date, visit.time, minutes)
    folder = folder / extra.image_id
    common = {
        "patient_id": subject.subject,
        "series_description": extra.description,
        "uid_seed": f"{subject.subject}/{extra.image_id}/{visit.seed}/{extra.kind}",
        "extra_tags": _dicom_tags(subject, visit, minutes),
    }
    if extra.kind == "localizer":
        _write_localizer(folder, scan, common)
    else:
        drop = (scan.volume.shape[2] // 2,) if extra.kind == "missing_slice" else ()
        paths = write_series_from_affine(
            folder, scan.volume, scan.geometry.affine, series_number=3, drop_slices=drop,
            file_prefix=f"ADNI_{subject.subject}_MR_{folder_name}_{extra.image_id}", **common,
        )  # fmt: skip
        if extra.kind == "non_dicom_file":
            (folder / "notes.txt").write_text("scan notes: patient moved, repeated\n")
        elif extra.kind == "truncated_file":
            victim = paths[len(paths) // 2]
            data = victim.read_bytes()
            victim.write_bytes(data[: len(data) // 2])
    return {
        "kind": extra.kind,
        "subject": subject.subject,
        "group": subject.group,
        "sex": subject.sex,
        "age": visit.age,
        "visit": visit.visit,
        "acq_date": visit.date,
        "image_id": extra.image_id,
        "description": extra.description,
        "expected": BROKEN_KINDS[extra.kind],
        "dicom_dir": str(folder.relative_to(out)),
    }


def _write_localizer(folder: Path, scan: RenderedScan, common: dict[str, Any]) -> None:
    """Three single-slice series files through the middle of the scan, sagittal, coronal and axial, sharing one
    series UID: the planning scan that comes before an MPRAGE.
    """
    volume, affine = scan.volume, scan.geometry.affine
    ni, nj, nk = volume.shape
    # The stored grid's axes run A->P (i), S->I (j), L->R (k); each plane keeps two of them.
    planes = {
        "sagittal": (volume[:, :, nk // 2][:, :, None], affine @ _axes_affine((0, 1, 2), (0, 0, nk // 2))),
        "coronal": (volume[ni // 2, :, :].T[:, :, None], affine @ _axes_affine((2, 1, 0), (ni // 2, 0, 0))),
        "axial": (volume[:, nj // 2, :].T[:, :, None], affine @ _axes_affine((2, 0, 1), (0, nj // 2, 0))),
    }
    series_uid = None
    for offset, (plane, (pixels, plane_affine)) in enumerate(planes.items()):
        written = write_series_from_affine(
            folder, pixels, plane_affine, series_number=1, series_uid=series_uid, instance_offset=offset,
            file_prefix=f"localizer_{plane}", **common,
        )  # fmt: skip
        if series_uid is None:
            import pydicom

            series_uid = str(pydicom.dcmread(written[0], stop_before_pixels=True).SeriesInstanceUID)


def _axes_affine(order: tuple[int, int, int], start: tuple[int, int, int]) -> np.ndarray:
    """Voxel map from a plane's (i, j, k) to the stored grid: plane axis n runs along stored axis ``order[n]``."""
    matrix = np.zeros((4, 4))
    for plane_axis, stored_axis in enumerate(order):
        matrix[stored_axis, plane_axis] = 1.0
    matrix[:3, 3] = start
    matrix[3, 3] = 1.0
    return matrix


def _write_collection_csv(path: Path, plans: Sequence[SubjectPlan], records: Sequence[dict[str, Any]]) -> None:
    """ADNI's image collection CSV: one quoted row per image, dates as M/D/YYYY, ages in whole years."""
    path.parent.mkdir(parents=True, exist_ok=True)
    last = max(dt.date.fromisoformat(r["acq_date"]) for r in records)
    downloaded = last + dt.timedelta(days=30)
    header = ["Image Data ID", "Subject", "Group", "Sex", "Age", "Visit", "Modality", "Description", "Type",
              "Acq Date", "Format", "Downloaded"]  # fmt: skip
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(header)
        for r in records:
            date = dt.date.fromisoformat(r["acq_date"])
            writer.writerow(
                [r["image_id"], r["subject"], r["group"], r["sex"], str(int(r["age"])), r["visit"], "MRI",
                 r["description"], "Original", f"{date.month}/{date.day}/{date.year}", "DCM",
                 f"{downloaded.month}/{downloaded.day}/{downloaded.year}"]
            )  # fmt: skip


def _write_cohort_json(
    path: Path,
    plans: Sequence[SubjectPlan],
    records: Sequence[dict[str, Any]],
    template: Template,
    parameters: dict[str, Any],
) -> None:
    """Everything about the cohort in one file: parameters, template, region definitions, per-scan truth, summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scans = [r for r in records if r["kind"] == "scan"]
    subjects = []
    for plan in plans:
        subjects.append(
            {
                "subject": plan.subject,
                "group": plan.group,
                "sex": plan.sex,
                "voxel_mm": [plan.slice_mm, plan.in_plane_mm, plan.in_plane_mm],
                "field_strength": plan.field_strength,
                "transform": subject_transform(plan),
                "scans": [
                    {
                        key: r[key]
                        for key in (
                            "image_id",
                            "visit",
                            "months",
                            "acq_date",
                            "age",
                            "volumes_mm3",
                            "reference_volumes_mm3",
                            "percent_change",
                            "nominal",
                            "regions_nifti",
                        )
                    }
                    for r in scans
                    if r["subject"] == plan.subject
                ],  # fmt: skip
            }
        )
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for group in ("AD", "CN"):
        for code, _ in VISIT_MONTHS:
            members = [r for r in scans if r["group"] == group and r["visit"] == code]
            if members:
                summary.setdefault(group, {})[code] = {
                    "scans": len(members),
                    **{
                        f"mean_percent_change_{name}": round(
                            float(np.mean([r["percent_change"][name] for r in members])), 2
                        )
                        for name in ("hippocampi", "medial_temporal_lobes", "lateral_ventricles")
                    },
                }
    regions = {
        "hippocampi": {side: _ellipsoid_record(e) for side, e in HIPPOCAMPI.items()},
        "medial_temporal_lobes": {side: _ellipsoid_record(e) for side, e in MEDIAL_TEMPORAL_LOBES.items()},
        "hippocampus_rule": f"grey matter probability > {_GM_THRESHOLD} inside the hippocampus ellipsoid",
        "medial_temporal_lobe_rule": f"grey matter probability > {_GM_THRESHOLD} inside the MTL ellipsoid, "
        "not hippocampus",
        "lateral_ventricles_rule": f"brain voxels with template T1 < {_CSF_THRESHOLD} in |x| {VENTRICLE_BOX[0]}, "
        f"y {VENTRICLE_BOX[1]}, z {VENTRICLE_BOX[2]} (MNI mm), largest connected component per hemisphere",
        "reference_white_matter_rule": "white matter probability > 0.95 within spheres (centre, radius mm) "
        f"{[list(s) for s in REFERENCE_WM_SPHERES]}",
    }
    payload = {
        "about": "Synthetic ADNI-like cohort with known atrophy (preprocessing.synthetic). Not ADNI data.",
        "parameters": parameters,
        "template": template.source,
        "labels": {str(k): v for k, v in REGION_LABELS.items()},
        "regions_mni": regions,
        "template_volumes_mm3": _named_volumes(template.volumes_mm3),
        "summary_by_group_and_visit": summary,
        "subjects": subjects,
        "broken": [
            {k: r[k] for k in ("kind", "subject", "image_id", "description", "expected", "dicom_dir")}
            for r in records
            if r["kind"] != "scan"
        ],  # fmt: skip
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _ellipsoid_record(ellipsoid: Ellipsoid) -> dict[str, list[float]]:
    return {
        "centre": list(ellipsoid.centre),
        "long_axis": list(ellipsoid.long_axis),
        "semi_axes_long_lateral_vertical": list(ellipsoid.semi_axes),
    }


def save_region_overview(path: Path | str, template: Template | None = None) -> Path:
    """A PNG of the truth regions over the template (sagittal, coronal and axial slices through them), for checking
    by eye that the ellipsoid and box rules land on the hippocampi, MTL and lateral ventricles.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    template = template or load_template()
    t1, labels, origin = template.t1, template.labels, template.origin
    colours = ListedColormap(["none", "red", "orange", "deepskyblue", "cyan", "lime", "magenta"])
    axis_of = {"sagittal": 0, "coronal": 1, "axial": 2}
    # (plane, MNI mm of the cut, horizontal and vertical limits in mm)
    views = [
        ("sagittal", 28, (-60, 20), (-50, 40)),
        ("sagittal", 14, (-70, 40), (-30, 50)),
        ("coronal", -22, (-60, 60), (-45, 45)),
        ("coronal", -8, (-60, 60), (-45, 45)),
        ("axial", -14, (-60, 60), (-60, 30)),
        ("axial", 15, (-50, 50), (-65, 40)),
        ("axial", 40, (-50, 50), (-65, 40)),
        ("coronal", -40, (-60, 60), (-20, 50)),
    ]
    figure, axes = plt.subplots(2, 4, figsize=(20, 10))
    for axis, (kind, mm, xlim, ylim) in zip(axes.flat, views, strict=True):
        cut = axis_of[kind]
        index = int(round(mm - origin[cut]))
        image, regions = np.take(t1, index, axis=cut), np.take(labels, index, axis=cut)
        h_origin, v_origin = (origin[a] for a in range(3) if a != cut)  # MNI coordinates on the view's axes
        extent = (h_origin - 0.5, h_origin + image.shape[0] - 0.5, v_origin - 0.5, v_origin + image.shape[1] - 0.5)
        axis.imshow(image.T, origin="lower", cmap="gray", extent=extent, vmin=0, vmax=1)
        shown = np.ma.masked_equal(regions.T, 0)
        axis.imshow(shown, origin="lower", cmap=colours, extent=extent, vmin=0, vmax=6, alpha=0.45,
                    interpolation="nearest")  # fmt: skip
        axis.set_xlim(*xlim)
        axis.set_ylim(*ylim)
        axis.set_title(f"MNI {kind} {'xyz'[cut]}={mm:+d} mm")
    legend = ", ".join(
        f"{colour}: {name}" for colour, name in zip(colours.colors[1:], REGION_LABELS.values(), strict=True)
    )
    figure.suptitle(f"Truth regions on the MNI152 2009a template ({legend})", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=70)
    plt.close(figure)
    return path
