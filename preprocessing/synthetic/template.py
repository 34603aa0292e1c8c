"""The template the renderer samples: nilearn's MNI152 2009a T1 with the truth region map, the distance from the brain
and the ventricle push field (computed once per process, cached), plus a picture of the regions for checking by eye.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from preprocessing.synthetic.anatomy import (
    _CSF_LEVEL,
    _CSF_THRESHOLD,
    _GM_THRESHOLD,
    HIPPOCAMPI,
    MEDIAL_TEMPORAL_LOBES,
    REFERENCE_WM_SPHERES,
    REGION_LABELS,
    VENTRICLE_BOX,
)

_VENTRICLE_SIGMA_MM = 3.0  # smoothing (mm) of the ventricle mask whose gradient pushes the ventricles
_DIST_STEP_MM = 2.0  # grid step (mm) of the distance from the brain


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
