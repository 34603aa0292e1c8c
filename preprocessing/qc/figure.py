"""The QC figure of one scan: raw (top row) and preprocessed (bottom row), three RAS mid-slices each with the
brain-mask outline, written as a small palette PNG.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage

from preprocessing.qc.views import (
    _VIEW_AXIS,
    DISPLAY_CONVENTION,
    EDGE_LABELS,
    VIEWS,
    _array,
    _as_3d,
    _canonical,
    _default_centre,
    _slices_from_ras,
    _spacing_from_sizes,
    _voxel_sizes,
)

FIG_SIZE_IN = (9.0, 6.0)
FIG_DPI = 90
# Pixel size of every QC PNG as (height, width); fixed because bbox_inches="tight" is not used.
FIG_PIXELS = (round(FIG_SIZE_IN[1] * FIG_DPI), round(FIG_SIZE_IN[0] * FIG_DPI))
MASK_COLOUR = "red"
# Everything else drawn in colour (edge letters, notes) avoids red so the outline stays unambiguous.
_LABEL_COLOUR = "gold"
_NOTE_COLOUR = "orange"
WINDOW_PERCENTILES = (1.0, 99.0)
EXPECTED_PROCESSED_CODES = ("R", "A", "S")


def _window(data: np.ndarray) -> tuple[float, float]:
    """Robust display range: 1st percentile of all voxels, 99th percentile of the non-zero ones.

    Percentiles ignore a bias-field hot spot or a few outlier voxels that would otherwise set the top. The top is taken
    over non-zero voxels because zero padding or skull-stripped background can be most of a volume and would drag it
    down; the bottom is taken over all voxels so that it sits at the background and the dimmest tissue (CSF, scalp)
    stays visible instead of being clipped to black.
    """
    flat = data.ravel()
    step = max(1, flat.size // 4_000_000)  # a subsample is plenty for two percentiles of a 256^3 scan
    sample = flat[::step]
    nonzero = sample[sample != 0]
    lo = float(np.percentile(sample, WINDOW_PERCENTILES[0]))
    hi = float(np.percentile(nonzero if nonzero.size >= 100 else sample, WINDOW_PERCENTILES[1]))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _mask_centre(mask: np.ndarray) -> tuple[int, int, int] | None:
    if not mask.any():
        return None
    return tuple(int(round(c)) for c in ndimage.center_of_mass(mask))


def _codes(img: nib.spatialimages.SpatialImage) -> str:
    return "".join(c or "?" for c in nib.aff2axcodes(img.affine))


def _describe(img: nib.spatialimages.SpatialImage) -> str:
    shape = "x".join(str(int(n)) for n in img.shape[:3])
    sizes = "x".join(f"{s:.2g}" for s in _voxel_sizes(img.affine))
    return f"stored {_codes(img)}\n{shape}\n{sizes} mm"


class _Row:
    """What one row of the figure shows: the RAS slices, their pixel spacing, window and optional mask outline."""

    def __init__(self, name: str, stored: nib.spatialimages.SpatialImage) -> None:
        self.name = name
        self.stored = _as_3d(stored)
        self.canon = _canonical(self.stored)  # the same path as ras_mid_slices, which the tests pin down
        self.data = _array(self.canon)
        self.spacing = _spacing_from_sizes(_voxel_sizes(self.canon.affine))
        self.window = _window(self.data)
        self.mask: np.ndarray | None = None

    def slices(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, tuple[int, int, int]]:
        # Centre on the brain (the mask's centre of mass) when there is a mask; raw scans often include neck and air.
        centre = (_mask_centre(self.mask) if self.mask is not None else None) or _default_centre(self.data.shape)
        images = _slices_from_ras(self.data, centre)
        masks = _slices_from_ras(self.mask, centre) if self.mask is not None else None
        return images, masks, centre


def _draw_panel(ax, view: str, image: np.ndarray, mask: np.ndarray | None, row: _Row, index: int) -> None:
    row_mm, col_mm = row.spacing[view]
    lo, hi = row.window
    # aspect = height/width of one pixel, so anisotropic voxels keep their true physical proportions.
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, aspect=row_mm / col_mm, interpolation="antialiased")
    if mask is not None and mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=MASK_COLOUR, linewidths=1.2)
    height, width = image.shape
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.3")
    axis_name = "xyz"[_VIEW_AXIS[view]]
    ax.set_title(f"{view} ({axis_name}={index})", color="white", fontsize=9, pad=3)
    left, right, top, bottom = EDGE_LABELS[view]
    # A dark backing keeps the letters legible where they fall on bright scalp or brain.
    backing = {"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 1.0}
    style = {"color": _LABEL_COLOUR, "fontsize": 10, "fontweight": "bold", "transform": ax.transAxes, "bbox": backing}
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def _render_png(fig: Figure) -> bytes:
    """PNG bytes of ``fig``, quantised to a 256-colour palette.

    A grey-scale picture plus a red outline and a few label colours fits a palette with no visible loss, and the
    palette PNG is several times smaller than RGBA -- it matters with one picture per scan of a whole cohort.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIG_DPI, facecolor=fig.get_facecolor())
    buffer.seek(0)
    with Image.open(buffer) as rgba:
        palette = rgba.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename, so a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; QC output is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def qc_figure(raw_path: Path, processed_path: Path, mask_path: Path | None, out_png: Path, title: str = "") -> Path:
    """Write a QC PNG of one scan: raw (top row) and preprocessed (bottom row), three RAS mid-slices each.

    Both volumes are reoriented to RAS for display (neurological convention, see :mod:`preprocessing.qc`) and drawn with
    their true voxel proportions and a 1st-99th percentile intensity window. ``mask_path`` (a brain mask on the raw
    scan's grid, compared after RAS reorientation) is outlined in red on the raw row and centres its slices; a mask that
    instead matches the preprocessed grid is drawn on that row, and any other mask is skipped with a note in the figure.
    Returns ``out_png``; the file is ``FIG_PIXELS`` in size and written atomically.
    """
    out_png = Path(out_png)
    rows = [_Row("raw", nib.load(str(raw_path))), _Row("preprocessed", nib.load(str(processed_path)))]
    notes: list[str] = []
    if mask_path is not None:
        mask = _array(_canonical(nib.load(str(mask_path)))) > 0
        target = next((row for row in rows if row.data.shape == mask.shape), None)
        if target is None:
            notes.append(
                f"mask {mask.shape} matches neither raw {rows[0].data.shape} nor preprocessed "
                f"{rows[1].data.shape}: not drawn"
            )
        else:
            target.mask = mask
            if target is not rows[0]:
                notes.append("mask is on the preprocessed grid: outlined on the bottom row")
            if not mask.any():
                notes.append("mask is empty")
    else:
        notes.append("no brain mask given")
    processed_codes = nib.aff2axcodes(rows[1].stored.affine)
    if tuple(processed_codes) != EXPECTED_PROCESSED_CODES:
        notes.append(f"preprocessed scan is stored {''.join(c or '?' for c in processed_codes)}, not RAS")

    fig = Figure(figsize=FIG_SIZE_IN, dpi=FIG_DPI, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(
        2, 3, gridspec_kw={"left": 0.09, "right": 0.99, "top": 0.87, "bottom": 0.06, "wspace": 0.04, "hspace": 0.16}
    )
    for r, row in enumerate(rows):
        images, masks, centre = row.slices()
        for c, view in enumerate(VIEWS):
            mask_slice = masks[view] if masks is not None else None
            _draw_panel(axes[r, c], view, images[view], mask_slice, row, centre[_VIEW_AXIS[view]])
        axes[r, 0].set_ylabel(f"{row.name}\n{_describe(row.stored)}", color="white", fontsize=8)
    heading = title or Path(raw_path).name
    fig.suptitle(heading, color="white", fontsize=11, y=0.985)
    fig.text(
        0.5,
        0.925,
        f"{DISPLAY_CONVENTION} convention (subject's left on viewer's left), shown in RAS; "
        f"window {WINDOW_PERCENTILES[0]:g}-{WINDOW_PERCENTILES[1]:g} percentile; mask outline in {MASK_COLOUR}",
        color="0.8",
        fontsize=8,
        ha="center",
    )
    if notes:
        fig.text(0.01, 0.012, "; ".join(notes), color=_NOTE_COLOUR, fontsize=8, ha="left", va="bottom")
    _atomic_write(out_png, _render_png(fig))
    return out_png
