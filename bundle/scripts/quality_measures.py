"""The measures behind :func:`scripts.quality.assess_output`, each a plain function of arrays.

Brain volume, connectedness and compactness of the mask, the T1 surface contrast, the grey/white bimodality, and the
agreement with the MNI152 brain after a fast affine alignment (ANTs). Used through :mod:`scripts.quality`, which
re-exports every name here (and calls :func:`template_agreement` through its own namespace).
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

# Seed of ANTs' sampling jitter: with the global-correlation metric the registration is then repeatable to the bit.
# (Mattes mutual information is not: its per-thread histograms are summed in a varying order.)
REGISTRATION_SEED = 20240601
# Depth percentiles (of the brain's voxels) of the surface band and the inner band compared by surface_contrast.
_DEPTH_PERCENTILES = (25, 50, 90)
# The 2-class intensity fit runs on a histogram of this many bins (a 128³ brain has a million voxels), and needs
# at least this many voxels to say anything.
_FIT_BINS = 256
_MIN_FIT_VALUES = 50


def brain_volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
    """Volume of the mask in millilitres; a voxel's volume is the determinant of the affine's linear part."""
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))
    return float(np.count_nonzero(mask)) * voxel_mm3 / 1000.0


def _largest_component(mask: np.ndarray) -> tuple[np.ndarray, float]:
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))  # 26-connected: touching corners are one part
    if count == 0:
        return np.zeros_like(mask, dtype=bool), 0.0
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1, float(sizes.max() / sizes.sum())


def largest_component_fraction(mask: np.ndarray) -> float:
    """Fraction of the mask in its largest connected part (1.0 for one brain; small for a scattered mask)."""
    return _largest_component(np.asarray(mask, dtype=bool))[1]


def compactness(mask: np.ndarray) -> float:
    """Solidity of the mask's largest connected part: its volume over that of its convex hull (of voxel corners).

    A ratio of volumes is unchanged by any linear map, so it is the same in voxel and in world coordinates and the
    distorting cube resize does not change it. A ball is about 0.9 at 32³ (the hull of corners is slightly larger
    than the voxels), a brain 0.81-0.87, scattered voxels below 0.3.
    """
    part, _ = _largest_component(np.asarray(mask, dtype=bool))
    if part.sum() < 4:
        return 0.0
    # The hull of a voxel set is that of the outer corners of the first and last voxel of each line along one axis.
    lines = part.any(axis=2)
    columns = np.argwhere(lines)
    first = np.argmax(part, axis=2)[lines] - 0.5
    last = part.shape[2] - 0.5 - np.argmax(part[:, :, ::-1], axis=2)[lines]
    square = (columns[:, None, :] + np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])).reshape(-1, 2)
    corners = np.concatenate(
        [np.column_stack([square, np.repeat(first, 4)]), np.column_stack([square, np.repeat(last, 4)])]
    )
    try:
        hull = ConvexHull(corners)
    except Exception:  # noqa: BLE001 - flat or degenerate: no volume to fill
        return 0.0
    return float(part.sum() / hull.volume)


def surface_contrast(image: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> float:
    """How much darker the brain's surface is than its depth: ``1 - mean(outer) / mean(inner)``.

    On T1 the outer quarter of the brain by depth (cortex and sulcal CSF) is darker than the white matter below it;
    the deepest tenth is left out (ventricles, deep grey matter). Depth is the distance to the mask's edge in mm
    (voxel sizes from ``affine``), so the cube resize does not bias it. T1 brains give 0.28-0.33 here, a fruit or
    noise 0.09-0.12 (the edge voxels' blur with the zero background alone), a T2 image would be negative.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.sum() < _MIN_FIT_VALUES:
        return 0.0
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)[mask]
    values = np.asarray(image, dtype=np.float64)[mask]
    outer_limit, inner_low, inner_high = np.percentile(depth, _DEPTH_PERCENTILES)
    outer, inner = values[depth <= outer_limit], values[(depth > inner_low) & (depth <= inner_high)]
    if outer.size == 0 or inner.size == 0 or inner.mean() <= 0:
        return 0.0
    return float(1.0 - outer.mean() / inner.mean())


def bimodality(values: np.ndarray) -> tuple[float, float]:
    """Grey/white separation of intensities: Ashman's D of a two-Gaussian fit, and the smaller class's share.

    ``D = sqrt(2) |m1 - m2| / sqrt(s1² + s2²)``, fitted by EM (from a median split: deterministic) on a fine
    histogram of the values between the 1st and 99th percentiles (the scaling piles the top 0.5 % at 1.0). Reported,
    not judged: at 32³ partial volume merges grey and white into one skewed peak, and the T1 brains here score
    1.9-2.2, barely above one Gaussian tissue (1.7) and below uniform noise (3.0); two clean tissues score 6.
    :func:`surface_contrast` and the template correlation tell brains from the rest instead.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    low, high = np.percentile(values, [1, 99]) if values.size >= _MIN_FIT_VALUES else (0.0, 0.0)
    if high <= low:
        return 0.0, 0.0
    counts, edges = np.histogram(values, bins=_FIT_BINS, range=(low, high))
    x, weights = (edges[:-1] + edges[1:]) / 2, counts / counts.sum()
    floor = (high - low) / _FIT_BINS  # a class narrower than a bin is a single value: keep it from collapsing
    split = x[np.searchsorted(np.cumsum(weights), 0.5)]
    resp = np.stack([x <= split, x > split], axis=1) * weights[:, None]
    for _ in range(500):
        share = resp.sum(axis=0)
        if share.min() < 1e-9:
            return 0.0, 0.0
        mean = (resp * x[:, None]).sum(axis=0) / share
        sd = np.maximum(np.sqrt((resp * (x[:, None] - mean) ** 2).sum(axis=0) / share), floor)
        density = share / sd * np.exp(-0.5 * ((x[:, None] - mean) / sd) ** 2)
        updated = weights[:, None] * density / np.maximum(density.sum(axis=1, keepdims=True), 1e-300)
        converged = np.abs(updated - resp).max() < 1e-10
        resp = updated
        if converged:
            break
    return float(np.sqrt(2.0) * abs(mean[1] - mean[0]) / np.sqrt((sd**2).sum())), float(share.min())


@lru_cache(maxsize=1)
def _template(resolution_mm: float) -> tuple[Any, Any, Any]:
    """The MNI152 brain (T1 masked to the brain), its mask, and the brain at the registration resolution, as ANTs
    images. nilearn ships these 2 mm images in its wheel: nothing is downloaded."""
    import ants
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    from scripts.preprocess import to_ants

    t1, brain = load_mni152_template(resolution=2), load_mni152_brain_mask(resolution=2)
    inside = np.asarray(brain.dataobj) > 0
    # Masked like the chain masks its output, so both images are a brain on a zero background.
    t1_brain = to_ants(np.asarray(t1.get_fdata(), dtype=np.float32) * inside, t1.affine)
    mask = to_ants(inside.astype(np.float32), brain.affine)
    coarse = ants.resample_image(t1_brain, (resolution_mm,) * 3, use_voxels=False, interp_type=0)
    return t1_brain, mask, coarse


def template_agreement(
    image: np.ndarray, mask: np.ndarray, affine: np.ndarray, resolution_mm: float = 4.0
) -> tuple[float, float]:
    """``(dice, correlation)`` of the MNI152 brain affinely aligned onto a masked brain image.

    ANTs aligns the template brain to ``image * mask`` at ``resolution_mm`` (affine, global-correlation metric, two
    levels at 4x and 2x that resolution, seeded: about a second). Dice compares the warped template mask with
    ``mask``; the correlation is that of the warped template's intensities with ``image`` inside ``mask``: a T1
    brain shows its white matter, cortex and ventricles where the template does (0.74-0.85 here), a fruit or noise
    does not (0.24-0.27, 0.08).
    """
    import ants
    import ants.config

    from scripts.preprocess import to_ants

    mask = np.asarray(mask, dtype=bool)
    template, template_mask, template_coarse = _template(float(resolution_mm))
    fixed = to_ants(np.where(mask, image, 0.0).astype(np.float32), affine)
    fixed_coarse = ants.resample_image(fixed, (float(resolution_mm),) * 3, use_voxels=False, interp_type=0)
    previous_seed, ants.config._random_seed = ants.config._random_seed, REGISTRATION_SEED  # read by registration
    try:
        with tempfile.TemporaryDirectory(prefix="qc-ants-") as scratch:
            registration = ants.registration(
                fixed_coarse, template_coarse, type_of_transform="Affine", outprefix=str(Path(scratch) / "qc_"),
                aff_metric="GC", aff_random_sampling_rate=1.0, aff_iterations=(100, 50), aff_shrink_factors=(4, 2),
                aff_smoothing_sigmas=(2, 1),
            )  # fmt: skip
            transforms = registration["fwdtransforms"]
            warped_mask = ants.apply_transforms(fixed, template_mask, transforms, interpolator="linear").numpy()
            warped = ants.apply_transforms(fixed, template, transforms, interpolator="linear").numpy()
    finally:
        ants.config._random_seed = previous_seed
    warped_mask = warped_mask > 0.5
    dice = 2.0 * np.count_nonzero(warped_mask & mask) / max(np.count_nonzero(warped_mask) + np.count_nonzero(mask), 1)
    inside_template, inside_image = warped[mask], np.asarray(image, dtype=np.float64)[mask]
    if inside_template.std() == 0.0 or inside_image.std() == 0.0:
        return float(dice), 0.0
    return float(dice), float(np.corrcoef(inside_template, inside_image)[0, 1])
