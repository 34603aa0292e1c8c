"""Relevance maps against anatomy: region maps on the model grid, each region's share of the positive relevance and
its density for its volume, the pointing game, model-grid maps on the native scan, and subject-bootstrap summaries.

Region maps carry the generator's labels (:data:`preprocessing.synthetic.REGION_LABELS`, 1-6): a synthetic scan's
truth (:func:`truth_regions_on_grid`) or its MNI152 labels aligned to any scan (:func:`template_regions_on_grid`).
:func:`partition` makes :data:`REGIONS` of labels 1-5 and a brain mask; label 6 (a control) is in the rest of the brain.
The ANTs registration of :func:`template_regions_on_grid` runs in a worker (``analysis.explain.registration``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage, stats

# The ANTs worker lives in its own module; these names stay importable from here.
from analysis.explain.registration import (  # noqa: F401
    _REGISTRATION_MM,
    _SEED_OFFSET,
    _in_worker,
    _mni_labels,
    _register_labels,
    _serve,
)
from analysis.metrics import percentile_interval, subject_bootstrap_weights
from preprocessing.synthetic import REGION_LABELS

REGIONS: tuple[str, ...] = (
    "left_hippocampus",
    "right_hippocampus",
    "medial_temporal_lobe",
    "lateral_ventricles",
    "rest_of_brain",
    "outside_brain",
)
COMBINED: dict[str, tuple[str, ...]] = {
    "hippocampi": ("left_hippocampus", "right_hippocampus"),
    "hippocampi_and_ventricles": ("left_hippocampus", "right_hippocampus", "lateral_ventricles"),
}
REGION_TITLES: dict[str, str] = {
    "left_hippocampus": "Left hippocampus",
    "right_hippocampus": "Right hippocampus",
    "medial_temporal_lobe": "Medial temporal lobes (without hippocampi)",
    "lateral_ventricles": "Lateral ventricles",
    "rest_of_brain": "Rest of the brain",
    "outside_brain": "Outside the brain",
    "hippocampi": "Both hippocampi",
    "hippocampi_and_ventricles": "Hippocampi and lateral ventricles",
}
METRICS = ("fraction", "volume_share", "density_gain")
_NAMES = REGIONS + tuple(COMBINED)

# Looked up by name in REGION_LABELS, so a renumbering in the generator follows here.
_ID = {name: label for label, name in REGION_LABELS.items()}
LABELS_OF: dict[str, tuple[int, ...]] = {
    "left_hippocampus": (_ID["left_hippocampus"],),
    "right_hippocampus": (_ID["right_hippocampus"],),
    "medial_temporal_lobe": (_ID["left_medial_temporal_lobe"], _ID["right_medial_temporal_lobe"]),
    "lateral_ventricles": (_ID["lateral_ventricles"],),
}
_LABELLED = tuple(label for labels in LABELS_OF.values() for label in labels)


def _volume(array: Any, name: str) -> np.ndarray:
    """A 3D array; a single channel, leading (as the chain and the maps carry it) or trailing, is dropped."""
    array = np.asarray(array)
    if array.ndim == 4 and 1 in (array.shape[0], array.shape[-1]):
        array = array[0] if array.shape[0] == 1 else array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3D volume, got shape {array.shape}")
    return array


def _members(name: str) -> tuple[str, ...]:
    if name in COMBINED or name in REGIONS:
        return COMBINED.get(name, (name,))
    raise ValueError(f"unknown region {name!r}; known: {', '.join(_NAMES)}")


# ----------------------------------------------------------------------------------------------- grids


def _resample(values: np.ndarray, values_affine: np.ndarray, shape: Sequence[int], affine: np.ndarray, order: int):
    """``values`` (on ``values_affine``) at the voxel centres of the grid (``shape``, ``affine``) through world mm; 0
    where a centre is outside the source's voxels. Order 0 keeps the dtype (bool: uint8), others give float32."""
    to_source = np.linalg.inv(np.asarray(values_affine, dtype=float)) @ np.asarray(affine, dtype=float)
    source = values.astype(np.uint8) if values.dtype == bool else values
    if order > 1:  # the spline coefficients once, not once per slab
        source = ndimage.spline_filter(source.astype(np.float64), order=order, mode="nearest")
    dtype = source.dtype if order == 0 else np.float32
    out = np.zeros(tuple(shape), dtype=dtype)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    upper = np.asarray(source.shape, dtype=float)[:, None, None, None] - 0.5
    slab = max(1, 2_000_000 // max(shape[0] * shape[1], 1))
    for k0 in range(0, shape[2], slab):
        k = np.arange(k0, min(k0 + slab, shape[2]))
        index = np.stack(np.broadcast_arrays(i[..., None], j[..., None], k[None, None, :]))
        points = np.tensordot(to_source[:3, :3], index, axes=1) + to_source[:3, 3, None, None, None]
        inside = ((points >= -0.5) & (points < upper)).all(axis=0)
        # Edge extension serves only the half voxel inside the border; past it the source voxels end, and the map.
        # (Slabs: a native 256^3 grid never holds all its coordinates at once.)
        sampled = ndimage.map_coordinates(source, points, order=order, mode="nearest", prefilter=False, output=dtype)
        out[..., k0 : k0 + len(k)] = np.where(inside, sampled, 0)
    return out


def truth_regions_on_grid(regions_path: str | Path, reference: nib.Nifti1Image) -> np.ndarray:
    """The generator's truth region map (``<subject>_<image_id>_regions.nii.gz``) on ``reference``'s grid: each voxel
    takes the label of the region-map voxel nearest its centre in world coordinates (int16; 0 outside the map)."""
    regions = nib.load(str(regions_path))
    labels = np.rint(_volume(np.asanyarray(regions.dataobj), "region map")).astype(np.int16)
    return _resample(labels, regions.affine, reference.shape[:3], reference.affine, order=0)


def to_native_grid(
    values: np.ndarray, model_affine: np.ndarray, native: nib.Nifti1Image, order: int = 1
) -> nib.Nifti1Image:
    """A map on the model grid (``model_affine``: model voxels to the scan's world mm, as the chain writes it) on the
    native scan's grid, by spline ``order`` (0 = nearest, keeps the dtype; otherwise float32); 0 outside the model's
    field of view (the chain crops the scan to the brain)."""
    resampled = _resample(_volume(values, "values"), model_affine, native.shape[:3], native.affine, order)
    return nib.Nifti1Image(resampled, native.affine)


# ----------------------------------------------------------------------------------------------- template labels


def template_regions_on_grid(
    image: nib.Nifti1Image, brain_mask: np.ndarray | None = None, syn: bool = False, seed: int = 0
) -> np.ndarray:
    """The generator's MNI152 region labels (1-6) brought onto ``image``'s grid (model-ready or native), int16.

    ANTs aligns the MNI152 brain (zero background) to ``image`` (times ``brain_mask`` when given: pass it for a scan
    with skull): affine, global correlation, at 4 mm; with ``syn`` then a SyN warp (cross correlation, 8 and 4 mm).
    The labels follow by the "genericLabel" interpolator, each voxel taking the label at its centre. Seeded and
    single-threaded, in a worker process that lives as long as this one, so repeatable. One core: the first call
    starts the worker (~15 s); then 4 s (32^3) to 7 s (128^3) a scan, 15-25 s with SyN.

    Approximate by nature: the template's hippocampus, not this brain's, placed by 12 affine parameters; atrophy
    shows as misplaced labels, not smaller ones, unless ``syn`` (which in turn can bend labels onto wrong edges).
    For scans without truth; its error can be measured on synthetic scans against :func:`truth_regions_on_grid`.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    data = _volume(np.asanyarray(image.dataobj), "image").astype(np.float32)
    if brain_mask is not None:
        mask = _volume(brain_mask, "brain_mask").astype(bool)
        if mask.shape != data.shape:
            raise ValueError(f"brain_mask shape {mask.shape} differs from the image's {data.shape}")
        data = np.where(mask, data, np.float32(0))
    return _in_worker(data, np.asarray(image.affine, dtype=float), bool(syn), int(seed))


# ----------------------------------------------------------------------------------------------- relevance in regions


def partition(labels: np.ndarray, brain_mask: np.ndarray) -> dict[str, np.ndarray]:
    """:data:`REGIONS` as boolean masks; every voxel is in exactly one.

    Labelled regions come first and keep all their voxels, inside the brain mask or not: a tight mask can shave the
    medial temporal edge, and relevance on the anatomy counts for the anatomy. ``rest_of_brain`` is the rest of the
    mask (label 6 included), ``outside_brain`` everything else. "The brain" below is every region but outside_brain.
    """
    labels, brain = _volume(labels, "labels"), _volume(brain_mask, "brain_mask").astype(bool)
    if labels.shape != brain.shape:
        raise ValueError(f"labels {labels.shape} and brain_mask {brain.shape} differ in shape")
    masks = {name: np.isin(labels, ids) for name, ids in LABELS_OF.items()}
    labelled = np.isin(labels, _LABELLED)
    masks.update(rest_of_brain=brain & ~labelled, outside_brain=~brain & ~labelled)
    return {name: masks[name] for name in REGIONS}


def relevance_by_region(
    relevance: np.ndarray, labels: np.ndarray, brain_mask: np.ndarray
) -> dict[str, dict[str, float]]:
    """``fraction``, ``volume_share`` and ``density_gain`` of every :data:`REGIONS` and :data:`COMBINED` name.

    Only positive relevance counts (negative values are set to 0: they argue for the other class, not "elsewhere").
    ``fraction`` = positive relevance in the region / all positive relevance in the grid (REGIONS sum to 1).
    ``volume_share`` = region voxels / brain voxels for brain regions, outside voxels / grid voxels for
    ``outside_brain``. ``density_gain`` = (fraction / fraction inside the brain) / volume_share for brain regions, so
    1.0 is the brain's mean density whatever leaks outside; fraction / volume_share for ``outside_brain``. An all-zero
    map gives NaN fractions and gains (with a warning); an empty region a NaN gain. NaN or infinite relevance raises.
    """
    values = _volume(relevance, "relevance").astype(np.float64)
    masks = partition(labels, brain_mask)
    if values.shape != masks["outside_brain"].shape:
        raise ValueError(f"relevance {values.shape} and labels {masks['outside_brain'].shape} differ in shape")
    if not np.isfinite(values).all():
        raise ValueError("relevance has NaN or infinite values")
    positive = np.clip(values, 0.0, None)
    total = float(positive.sum())
    if total <= 0:
        warnings.warn("relevance map has no positive value: region fractions are undefined (NaN)", stacklevel=2)
    summed = {name: float(positive[mask].sum()) for name, mask in masks.items()}
    voxels = {name: int(mask.sum()) for name, mask in masks.items()}
    n_brain = positive.size - voxels["outside_brain"]
    inside = (total - summed["outside_brain"]) / total if total > 0 else math.nan
    out = {}
    for name in _NAMES:
        fraction = sum(summed[m] for m in _members(name)) / total if total > 0 else math.nan
        count = sum(voxels[m] for m in _members(name))
        outside = name == "outside_brain"
        share = count / positive.size if outside else (count / n_brain if n_brain else math.nan)
        relative = fraction if outside else (fraction / inside if inside > 0 else math.nan)
        gain = relative / share if share > 0 else math.nan
        out[name] = {"fraction": fraction, "volume_share": share, "density_gain": gain}
    return out


def pointing_game(
    relevance: np.ndarray,
    labels: np.ndarray,
    brain_mask: np.ndarray,
    target: Sequence[str] = COMBINED["hippocampi_and_ventricles"],
    margin_voxels: int = 1,
) -> bool:
    """Whether the map's maximum lies in ``target`` (REGIONS or COMBINED names) grown by ``margin_voxels`` (a cube:
    every voxel within that many voxels along each axis, diagonals included). Every voxel tied at the maximum must be
    inside, so a flat map scores a miss rather than a hit decided by array order."""
    if margin_voxels < 0:
        raise ValueError(f"margin_voxels must be >= 0, got {margin_voxels}")
    values = _volume(relevance, "relevance")
    masks = partition(labels, brain_mask)
    region = np.zeros(values.shape, dtype=bool)
    for member in {m for name in target for m in _members(name)}:
        region |= masks[member]
    if margin_voxels:
        region = ndimage.binary_dilation(region, np.ones((3, 3, 3), dtype=bool), iterations=margin_voxels)
    peak = values == np.nanmax(values)
    return bool(peak.any() and region[peak].all())


def region_volumes_ml(labels: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """Volume (ml) on this grid of each labelled region and of COMBINED (rest_of_brain and outside_brain need a mask
    and are left out). With template labels on a real scan this is the registered volume, a stand-in."""
    labels = _volume(labels, "labels")
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0
    counts = {name: int(np.isin(labels, ids).sum()) for name, ids in LABELS_OF.items()}
    return {name: sum(counts[m] for m in _members(name)) * voxel_ml for name in tuple(LABELS_OF) + tuple(COMBINED)}


# ----------------------------------------------------------------------------------------------- summaries


def region_row(subject: str, image_id: str, group: str, method: str, by_region: Mapping, pointing: bool) -> dict:
    """One row of :func:`summarise`: ``subject``, ``image_id``, ``group``, ``method`` (str), ``pointing_game`` (bool)
    and, for every REGIONS and COMBINED name and every metric of :data:`METRICS`, ``"<name>_<metric>"`` (float, e.g.
    ``"hippocampi_and_ventricles_density_gain"``) from :func:`relevance_by_region`'s output."""
    row: dict[str, Any] = dict(subject=str(subject), image_id=str(image_id), group=str(group), method=str(method))
    row["pointing_game"] = bool(pointing)
    row.update({f"{name}_{m}": float(by_region[name][m]) for name in _NAMES for m in METRICS})
    return row


def _mean_and_interval(metric: str, subjects: np.ndarray, values: Sequence, resamples: int, seed: int) -> dict:
    """``<metric>_mean`` over subjects (each the mean of its finite values) and ``<metric>_ci_low``/``_ci_high``, the
    95 % percentile interval of that mean over resampled subjects; None for all three when no subject has a value."""
    _, inverse = np.unique(subjects, return_inverse=True)
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    counts = np.bincount(inverse, weights=finite.astype(float))
    per_subject = np.bincount(inverse, weights=np.where(finite, values, 0.0))[counts > 0] / counts[counts > 0]
    mean = low = high = None
    if per_subject.size:
        weights = subject_bootstrap_weights(np.arange(per_subject.size), resamples, seed).astype(float)
        mean, (low, high, _) = float(per_subject.mean()), percentile_interval(weights @ per_subject / weights.sum(1))
    return {f"{metric}_mean": mean, f"{metric}_ci_low": low, f"{metric}_ci_high": high}


def summarise(rows: Sequence[Mapping], resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Mean and 95 % subject-bootstrap interval of each region's fraction, volume share and density gain, and the
    pointing-game hit rate, per (group, method, region), for every group and for ``"all"``.

    ``rows``: one per (scan, method), as :func:`region_row` builds them. Each subject counts once: its scans are
    averaged first (per method and metric, over finite values), the mean is over subjects, the bootstrap draws
    subjects. Output, one dict per (group, method, region): ``group``, ``method``, ``region``, ``title``, ``n_scans``,
    ``n_subjects``, and ``<m>_mean``, ``<m>_ci_low``, ``<m>_ci_high`` for ``m`` in :data:`METRICS` and for
    ``pointing_game`` (hit rate; the same in every region of a group and method); None where nothing is defined.
    Groups sorted, then ``"all"``; methods in order of appearance; regions in REGIONS then COMBINED order.
    """
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    groups = sorted({str(r["group"]) for r in rows}) + (["all"] if rows else [])
    out = []
    for group in groups:
        for method in methods:
            chosen = [r for r in rows if str(r["method"]) == method and group in ("all", str(r["group"]))]
            if not chosen:
                continue
            subjects = np.asarray([str(r["subject"]) for r in chosen])
            hits = _mean_and_interval("pointing_game", subjects, [r["pointing_game"] for r in chosen], resamples, seed)
            for name in _NAMES:
                entry: dict[str, Any] = {"group": group, "method": method, "region": name}
                entry.update(title=REGION_TITLES[name], n_scans=len(chosen), n_subjects=len(np.unique(subjects)))
                for metric in METRICS:
                    column = [r[f"{name}_{metric}"] for r in chosen]
                    entry.update(_mean_and_interval(metric, subjects, column, resamples, seed))
                out.append({**entry, **hits})
    return out


def correlation(
    x: Sequence[float], y: Sequence[float], subjects: Sequence[str], resamples: int = 2000, seed: int = 0
) -> dict:
    """Pearson ``r`` with a 95 % subject-bootstrap interval (a subject's scans are drawn together) and Spearman
    ``rho`` of the finite (x, y) pairs, e.g. hippocampal relevance against the true hippocampal volume change.

    Keys: ``r``, ``r_ci_low``, ``r_ci_high``, ``rho``, ``n``, ``n_subjects``, ``n_resamples_used`` and ``reason``
    (None, or why ``r`` is None: fewer than 3 pairs, or a constant variable). No p-values: scans of one subject are
    not independent; the interval is the inference.
    """
    x, y, subject = np.asarray(x, dtype=float), np.asarray(y, dtype=float), np.asarray([str(s) for s in subjects])
    if not len(x) == len(y) == len(subject):
        raise ValueError(f"x, y and subjects differ in length: {len(x)}, {len(y)}, {len(subject)}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, subject = x[keep], y[keep], subject[keep]
    out: dict[str, Any] = dict(r=None, r_ci_low=None, r_ci_high=None, rho=None, n=int(len(x)))
    out.update(n_subjects=int(len(np.unique(subject))), n_resamples_used=0, reason=None)
    if len(x) < 3:
        out["reason"] = f"{len(x)} finite pairs; a correlation needs at least 3"
        return out
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        out["reason"] = "x or y is constant"
        return out
    out["r"], out["rho"] = float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0])
    # Weighted Pearson of every resample at once; the weights count how often each scan's subject was drawn.
    w = subject_bootstrap_weights(subject, resamples, seed).astype(float)
    n = w.sum(axis=1, keepdims=True)
    dx, dy = x - (w @ x)[:, None] / n, y - (w @ y)[:, None] / n
    sxy, sxx, syy = (w * dx * dy).sum(axis=1), (w * dx * dx).sum(axis=1), (w * dy * dy).sum(axis=1)
    # A resample of a single subject's values can leave only rounding error as variance: no correlation there.
    tiny = 1e-12 * len(x)
    defined = (sxx > tiny * np.sum((x - x.mean()) ** 2)) & (syy > tiny * np.sum((y - y.mean()) ** 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(defined, sxy / np.sqrt(sxx * syy), np.nan)
    out["r_ci_low"], out["r_ci_high"], out["n_resamples_used"] = percentile_interval(np.clip(r, -1.0, 1.0))
    return out
