"""Pictures of relevance maps: overlays through both hippocampi, slice montages and a side-by-side of methods.

Shared by the test-set command and the one-scan page. Each function writes one PNG and returns its path. matplotlib
runs on the Agg backend (files only), so they render on servers and in CI.

Display convention: **neurological**, as the preprocessing QC pictures (``preprocessing/qc``), so that the QC
picture and the overlays on one page read the same way: the subject's left on the viewer's left in coronal and axial
views, anterior on the right in sagittal views, superior (coronal, sagittal) or anterior (axial) at the top. Arrays
are reoriented to RAS from their affine (``nibabel.orientations``) before slicing, and every panel carries the edge
letters computed from the reoriented affine, so a picture never depends on the reader knowing the convention.

Relevance is drawn where positive (evidence for AD), scaled to the 99th percentile of its positive values over the
whole volume (one scale for all panels of a map), and left transparent below :data:`HEAT_FLOOR` of that scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from nibabel import orientations as ornt  # noqa: E402
from scipy import ndimage  # noqa: E402

DPI = 110
CONVENTION = "neurological"
CONVENTION_TEXT = (
    "Neurological convention: subject's left on the viewer's left (coronal, axial), anterior on the right (sagittal)"
)
VIEWS = ("sagittal", "coronal", "axial")
# The RAS axis each view cuts across.
VIEW_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
HIPPOCAMPUS_LABELS = {"left": 1, "right": 2}
VENTRICLE_LABEL = 5
HEAT_CMAP = "jet"
HEAT_ALPHA = 0.55
HEAT_FLOOR = 0.15  # fraction of the 99th percentile below which relevance is not drawn (keeps the anatomy visible)
HEAT_PERCENTILE = 99.0
# White and magenta are not in the heat map's colours, and the dark stroke keeps them visible on white matter too.
CONTOUR_COLOURS = {1: "white", 2: "white", VENTRICLE_LABEL: "magenta"}
CONTOUR_WIDTH = 0.9
_CONTOUR_STROKE = [patheffects.withStroke(linewidth=2.2, foreground="black")]
_EDGE_COLOUR = "gold"


# --------------------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------------------


def hippocampus_centres(labels: np.ndarray) -> dict[str, tuple[int, int, int]]:
    """Voxel centroid (rounded) of label 1 as ``"left"`` and label 2 as ``"right"``; a missing label has no key."""
    labels = np.asarray(labels)
    centres = {}
    for side, value in HIPPOCAMPUS_LABELS.items():
        region = labels == value
        if region.any():
            centres[side] = tuple(int(round(c)) for c in ndimage.center_of_mass(region))
    return centres


class _RasVolume:
    """Arrays of one grid reoriented to RAS (lossless flips and transposes), with voxel sizes and edge letters.

    ``to_ras`` maps a voxel index of the stored grid to the reoriented one, so centres computed on the stored
    arrays (e.g. label centroids) land on the same anatomy.
    """

    def __init__(self, shape: Sequence[int], affine: np.ndarray | None) -> None:
        self.shape = tuple(int(n) for n in shape[:3])
        affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
        self.transform = ornt.io_orientation(affine)
        self.affine = affine @ ornt.inv_ornt_aff(self.transform, self.shape)
        self.codes = ornt.aff2axcodes(self.affine)
        self.sizes = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        self.ras_shape = tuple(int(n) for n in ornt.apply_orientation(np.zeros(self.shape, np.int8), self.transform)
                               .shape)  # fmt: skip

    def array(self, data: np.ndarray) -> np.ndarray:
        data = np.asarray(data)
        if data.shape[:3] != self.shape:
            raise ValueError(f"array of shape {data.shape} is not on the grid of shape {self.shape}")
        return ornt.apply_orientation(data, self.transform)

    def to_ras(self, index: Sequence[int]) -> tuple[int, int, int]:
        out = [0, 0, 0]
        for axis, (target, flip) in enumerate(self.transform):
            value = int(index[axis])
            out[int(target)] = self.shape[axis] - 1 - value if flip < 0 else value
        return tuple(out)

    def edges(self, view: str) -> tuple[str, str, str, str]:
        """(left, right, top, bottom) letters of a view as drawn by :func:`_cut` (from the reoriented affine)."""
        remaining = [a for a in range(3) if a != VIEW_AXIS[view]]
        column, row = remaining  # _cut transposes: the second remaining axis becomes the rows, its high end on top
        return _low(self.codes[column]), self.codes[column], self.codes[row], _low(self.codes[row])

    def pixel_mm(self, view: str) -> tuple[float, float]:
        """(row, column) pixel size in mm of a view."""
        column, row = (a for a in range(3) if a != VIEW_AXIS[view])
        return float(self.sizes[row]), float(self.sizes[column])


_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


def _low(code: str | None) -> str:
    return _OPPOSITE.get(code or "", "?")


def _cut(data: np.ndarray, view: str, index: int) -> np.ndarray:
    """One slice of an RAS array in display order: rows from the high end of the second remaining axis (S or A) at
    the top, columns from the low end of the first (L or P) at the left -- neurological."""
    axis = VIEW_AXIS[view]
    index = int(np.clip(index, 0, data.shape[axis] - 1))
    return np.ascontiguousarray(np.take(data, index, axis=axis).T[::-1, :])


# --------------------------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------------------------


def _window(image: np.ndarray) -> tuple[float, float]:
    """Grey range: 1st percentile of all voxels to 99.5th of the non-zero ones (a zero background would drag it)."""
    finite = np.nan_to_num(np.asarray(image, dtype=np.float32))
    nonzero = finite[finite != 0]
    lo = float(np.percentile(finite, 1.0))
    hi = float(np.percentile(nonzero if nonzero.size > 100 else finite, 99.5))
    return lo, hi if hi > lo else lo + 1.0


def heat_scale(relevance: np.ndarray) -> float:
    """The value drawn at full colour: the 99th percentile of the positive relevance (0 when there is none)."""
    values = np.asarray(relevance, dtype=np.float32)
    positive = values[np.isfinite(values) & (values > 0)]
    return float(np.percentile(positive, HEAT_PERCENTILE)) if positive.size else 0.0


def _heat_rgba(relevance_slice: np.ndarray, scale: float) -> np.ndarray:
    """RGBA of a relevance slice: colour by fraction of ``scale``, transparent below the floor and where <= 0."""
    fraction = np.clip(np.nan_to_num(relevance_slice) / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(
        relevance_slice, dtype=float)  # fmt: skip
    rgba = plt.get_cmap(HEAT_CMAP)(fraction)
    rgba[..., 3] = np.where(fraction >= HEAT_FLOOR, HEAT_ALPHA, 0.0)
    return rgba


def _panel(
    ax: plt.Axes,
    grid: _RasVolume,
    view: str,
    index: int,
    image: np.ndarray,
    window: tuple[float, float],
    relevance: np.ndarray | None,
    scale: float,
    labels: np.ndarray | None,
    marker: tuple[int, int, int] | None = None,
    edge_letters: bool = True,
) -> None:
    row_mm, col_mm = grid.pixel_mm(view)
    # aspect is the height/width of one pixel, so anisotropic voxels keep their physical proportions
    shown = _cut(image, view, index)
    ax.imshow(shown, cmap="gray", vmin=window[0], vmax=window[1], aspect=row_mm / col_mm,
              interpolation="nearest")  # fmt: skip
    if relevance is not None:
        ax.imshow(_heat_rgba(_cut(relevance, view, index), scale), aspect=row_mm / col_mm, interpolation="nearest")
    if labels is not None:
        cut = _cut(labels, view, index)
        for value, colour in CONTOUR_COLOURS.items():
            region = cut == value
            if region.any() and not region.all():
                contours = ax.contour(region.astype(np.float32), levels=[0.5], colors=colour, linewidths=CONTOUR_WIDTH)
                contours.set(path_effects=_CONTOUR_STROKE)
    height, width = shown.shape
    if marker is not None:
        column, row = (a for a in range(3) if a != VIEW_AXIS[view])
        ax.plot([marker[column]], [height - 1 - marker[row]], marker="+", color="white", markersize=7, mew=0.8)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if edge_letters:
        left, right, top, bottom = grid.edges(view)
        style = {"color": _EDGE_COLOUR, "fontsize": 8, "fontweight": "bold", "transform": ax.transAxes}
        ax.text(0.02, 0.5, left, ha="left", va="center", **style)
        ax.text(0.98, 0.5, right, ha="right", va="center", **style)
        ax.text(0.5, 0.98, top, ha="center", va="top", **style)
        ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def _colourbar(fig: plt.Figure, axes, label: str) -> None:
    mappable = plt.cm.ScalarMappable(cmap=HEAT_CMAP, norm=matplotlib.colors.Normalize(0, 1))
    bar = fig.colorbar(mappable, ax=axes, fraction=0.025, pad=0.01)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _contour_legend(fig: plt.Figure) -> None:
    handles = [Line2D([], [], color=CONTOUR_COLOURS[1], lw=1.5, path_effects=_CONTOUR_STROKE,
                      label="hippocampi"),
               Line2D([], [], color=CONTOUR_COLOURS[VENTRICLE_LABEL], lw=1.5, path_effects=_CONTOUR_STROKE,
                      label="lateral ventricles"),
               Line2D([], [], color="white", marker="+", lw=0, mec="0.3", label="slice centre")]  # fmt: skip
    fig.legend(handles=handles, loc="lower left", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.01, 0.0))


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    plt.close(fig)
    return path


def _checked(image: np.ndarray, *others: np.ndarray | None) -> None:
    shape = np.shape(image)
    if len(shape) != 3:
        raise ValueError(f"expected a 3D image, got shape {shape}")
    for other in others:
        if other is not None and np.shape(other) != shape:
            raise ValueError(f"arrays must share the image's grid {shape}, got {np.shape(other)}")


def _heat_note(scale: float) -> str:
    if scale <= 0:
        return "no positive relevance (nothing drawn)"
    return (
        f"colour: fraction of the 99th percentile of positive relevance ({scale:.3g}); below {HEAT_FLOOR:.0%} not drawn"
    )


# --------------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------------


def overlay_figure(
    image: np.ndarray,
    relevance: np.ndarray,
    labels: np.ndarray | None,
    affine: np.ndarray | None,
    out_png: str | Path,
    title: str = "",
    centres: Mapping[str, Sequence[int]] | None = None,
) -> Path:
    """One row per hippocampus (left, right): sagittal, coronal and axial planes through its centre, with the
    positive relevance as a heat map and the hippocampus (labels 1, 2) and ventricle (5) contours.

    ``image``, ``relevance`` and ``labels`` share one grid whose voxel-to-world map is ``affine`` (any orientation);
    ``centres`` are voxel indices on that grid (default :func:`hippocampus_centres` of ``labels``; without either,
    one row through the volume's centre).
    """
    _checked(image, relevance, labels)
    grid = _RasVolume(np.shape(image), affine)
    ras_image, ras_relevance = grid.array(np.nan_to_num(image)), grid.array(np.asarray(relevance, np.float32))
    ras_labels = grid.array(np.asarray(labels)) if labels is not None else None
    if centres is None:
        centres = hippocampus_centres(labels) if labels is not None else {}
    rows = [(f"{side} hippocampus", grid.to_ras(centres[side])) for side in ("left", "right") if side in centres]
    if not rows:
        rows = [("volume centre", tuple(n // 2 for n in grid.ras_shape))]
    window, scale = _window(ras_image), heat_scale(ras_relevance)
    fig, axes = plt.subplots(len(rows), 3, figsize=(10.5, 3.3 * len(rows) + 0.9), squeeze=False)
    for r, (name, centre) in enumerate(rows):
        for c, view in enumerate(VIEWS):
            ax = axes[r, c]
            _panel(ax, grid, view, centre[VIEW_AXIS[view]], ras_image, window, ras_relevance, scale, ras_labels,
                   marker=centre)  # fmt: skip
            ax.set_title(f"{name}: {view}", fontsize=9)
    fig.suptitle(title or "Relevance for AD", fontsize=11)
    fig.text(0.5, 0.955, f"{CONVENTION_TEXT}.\n{_heat_note(scale)}", ha="center", va="top", fontsize=7.5,
             color="0.25")  # fmt: skip
    fig.subplots_adjust(left=0.02, right=0.9, top=0.88, bottom=0.08, wspace=0.05, hspace=0.18)
    _colourbar(fig, axes, "relevance / 99th percentile")
    if labels is not None:
        _contour_legend(fig)
    return _save(fig, out_png)


def _brain_range(image: np.ndarray, axis: int) -> tuple[int, int]:
    """First and last slice along ``axis`` holding object voxels (the whole axis when there are none).

    Object = above a fifth of the grey window, in at least 1 % of the slice: a raw scan's background is never exactly
    zero, and a few bright noise voxels must not count as anatomy."""
    lo, hi = _window(image)
    foreground = np.asarray(image) > lo + 0.2 * (hi - lo)
    occupied = np.flatnonzero(np.mean(foreground, axis=tuple(a for a in range(3) if a != axis)) > 0.01)
    if occupied.size == 0:
        return 0, np.shape(image)[axis] - 1
    return int(occupied[0]), int(occupied[-1])


def montage_figure(
    image: np.ndarray,
    relevance: np.ndarray,
    out_png: str | Path,
    axis: int = 1,
    n_slices: int = 12,
    title: str = "",
    affine: np.ndarray | None = None,
) -> Path:
    """``n_slices`` evenly spaced slices across the brain along RAS ``axis`` (0 sagittal, 1 coronal, 2 axial), with
    the relevance overlay; ``affine`` (optional, default identity = RAS arrays, 1 mm) gives orientation and aspect."""
    _checked(image, relevance)
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    grid = _RasVolume(np.shape(image), affine)
    ras_image, ras_relevance = grid.array(np.nan_to_num(image)), grid.array(np.asarray(relevance, np.float32))
    view = VIEWS[axis]
    first, last = _brain_range(ras_image, axis)
    n_slices = max(1, int(n_slices))
    # Interior points of the brain's extent: the outermost slices hold only a rim of tissue.
    indices = np.unique(np.round(np.linspace(first, last, n_slices + 2)[1:-1]).astype(int))
    columns = min(6, len(indices))
    n_rows = int(np.ceil(len(indices) / columns))
    fig, axes = plt.subplots(n_rows, columns, figsize=(1.9 * columns + 0.8, 2.1 * n_rows + 0.8), squeeze=False)
    window, scale = _window(ras_image), heat_scale(ras_relevance)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, index in zip(axes.ravel(), indices, strict=False):
        ax.axis("on")
        _panel(ax, grid, view, int(index), ras_image, window, ras_relevance, scale, None, edge_letters=ax is axes[0, 0])
        millimetres = float(grid.affine[axis, axis] * index + grid.affine[axis, 3])
        ax.set_title(f"{view} {index} ({'xyz'[axis]} = {millimetres:.0f} mm)", fontsize=7)
    fig.suptitle(title or f"Relevance for AD, {view} slices", fontsize=11)
    fig.text(0.5, 0.935, f"{CONVENTION_TEXT}.\n{_heat_note(scale)}", ha="center", va="top", fontsize=7, color="0.25")
    fig.subplots_adjust(left=0.02, right=0.88, top=0.84, bottom=0.03, wspace=0.05, hspace=0.25)
    _colourbar(fig, axes, "relevance / 99th percentile")
    return _save(fig, out_png)


def _method_titles() -> Mapping[str, str]:
    try:  # lazily: maps imports torch and captum, which a figure of arrays does not need
        from analysis.explain.maps import METHOD_TITLES
    except ImportError:
        return {}
    return METHOD_TITLES


def methods_figure(
    image: np.ndarray,
    maps: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    affine: np.ndarray | None,
    out_png: str | Path,
    centre: Sequence[int] | None = None,
) -> Path:
    """One row per method (coronal, axial, sagittal through ``centre``; default the left hippocampus, else the right,
    else the volume's centre), each map on its own scale, to compare where the methods put the evidence."""
    if not maps:
        raise ValueError("methods_figure needs at least one map")
    _checked(image, labels, *maps.values())
    grid = _RasVolume(np.shape(image), affine)
    ras_image = grid.array(np.nan_to_num(image))
    ras_labels = grid.array(np.asarray(labels)) if labels is not None else None
    where = "given point"
    if centre is None:
        found = hippocampus_centres(labels) if labels is not None else {}
        side = next((s for s in ("left", "right") if s in found), None)
        centre = found[side] if side else tuple(n // 2 for n in np.shape(image))
        where = f"{side} hippocampus" if side else "volume centre"
    ras_centre = grid.to_ras(centre)
    titles = _method_titles()
    window = _window(ras_image)
    views = ("coronal", "axial", "sagittal")
    fig, axes = plt.subplots(len(maps), 3, figsize=(9.5, 2.9 * len(maps) + 0.9), squeeze=False)
    for r, (name, values) in enumerate(maps.items()):
        ras_values = grid.array(np.asarray(values, np.float32))
        scale = heat_scale(ras_values)
        for c, view in enumerate(views):
            ax = axes[r, c]
            _panel(ax, grid, view, ras_centre[VIEW_AXIS[view]], ras_image, window, ras_values, scale, ras_labels,
                   marker=ras_centre)  # fmt: skip
            ax.set_title(view, fontsize=8)
        axes[r, 0].set_ylabel(titles.get(name, name), fontsize=9)
    fig.suptitle(f"Relevance methods compared (through the {where})", fontsize=11)
    fig.text(0.5, 0.955, f"{CONVENTION_TEXT}.\nEach map on its own scale (99th percentile of its positive values); "
             f"below {HEAT_FLOOR:.0%} not drawn", ha="center", va="top", fontsize=7.5, color="0.25")  # fmt: skip
    fig.subplots_adjust(left=0.05, right=0.89, top=0.88, bottom=0.07, wspace=0.05, hspace=0.2)
    _colourbar(fig, axes, "relevance / 99th percentile")
    if labels is not None:
        _contour_legend(fig)
    return _save(fig, out_png)
