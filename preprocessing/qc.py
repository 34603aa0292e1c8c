"""Quality-control pictures for T1 MRI preprocessing.

A failed skull strip, a left-right flip or a scan stored in an unexpected orientation is easy to see and easy to miss
in numbers, so every scan gets one small PNG: the raw scan (as converted) on top, the preprocessed scan (128^3, RAS)
below, each as three orthogonal mid-slices with the brain-mask outline in red. ``qc_page`` collects the PNGs of a whole
run into one HTML page, failures first.

Display convention: **neurological** -- the subject's left is on the viewer's left in the coronal and axial views
(radiological would mirror that). Sagittal views have anterior on the right; superior is up in sagittal and coronal,
anterior is up in axial. Every panel carries its L/R, A/P, S/I edge letters, so the picture does not depend on the
reader knowing the convention.

Both volumes are reoriented to RAS with ``nibabel.as_closest_canonical`` before slicing. That uses the affine (not the
array order), so a scan whose header says it is stored as, say, LIA is displayed right; a scan whose *header* is wrong
(e.g. a flip lost in conversion) is displayed wrong -- which is exactly what the picture is for.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePath
from urllib.parse import quote

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage

DISPLAY_CONVENTION = "neurological"
VIEWS = ("sagittal", "coronal", "axial")
# Edge letters of each view as returned by ras_mid_slices: (left, right, top, bottom) of the displayed picture.
EDGE_LABELS: dict[str, tuple[str, str, str, str]] = {
    "sagittal": ("P", "A", "S", "I"),
    "coronal": ("L", "R", "S", "I"),
    "axial": ("L", "R", "A", "P"),
}
# The RAS axis each view is a slice across (0 = x/R, 1 = y/A, 2 = z/S).
_VIEW_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}

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


# --------------------------------------------------------------------------------------------------------------------
# Geometry: RAS mid-slices in display order
# --------------------------------------------------------------------------------------------------------------------


def _as_3d(img: nib.spatialimages.SpatialImage) -> nib.spatialimages.SpatialImage:
    """First volume of a 4D+ image (converters sometimes write a trailing singleton or a short series)."""
    if len(img.shape) < 3:
        raise ValueError(f"expected a 3D volume, got shape {img.shape}")
    while len(img.shape) > 3:
        img = img.slicer[..., 0]
    return img


def _canonical(img: nib.spatialimages.SpatialImage) -> nib.spatialimages.SpatialImage:
    return nib.as_closest_canonical(_as_3d(img))


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes in mm from the affine's column norms (the header zooms can disagree with a rewritten affine)."""
    return np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))


def _array(canon: nib.spatialimages.SpatialImage) -> np.ndarray:
    data = np.asarray(canon.get_fdata(dtype=np.float32))
    return np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)


def _default_centre(shape: Sequence[int]) -> tuple[int, int, int]:
    return tuple(int(n) // 2 for n in shape[:3])


def _slices_from_ras(data: np.ndarray, centre: Sequence[int]) -> dict[str, np.ndarray]:
    """Cut the three mid-slices out of an RAS-ordered array and put them in display order.

    Each cut keeps its two remaining axes in RAS order as (rows, cols): sagittal (A, S), coronal (R, S), axial (R, A).
    Transposing makes the second of them (S, S, A) the rows, and flipping the rows puts its positive end at the top;
    the columns then run P->A (sagittal) or L->R (coronal, axial), i.e. neurological.
    """
    c = [int(np.clip(ci, 0, n - 1)) for ci, n in zip(centre, data.shape, strict=True)]
    cuts = {"sagittal": data[c[0], :, :], "coronal": data[:, c[1], :], "axial": data[:, :, c[2]]}
    return {view: np.ascontiguousarray(cut.T[::-1, :]) for view, cut in cuts.items()}


def _spacing_from_sizes(sizes: Sequence[float]) -> dict[str, tuple[float, float]]:
    dx, dy, dz = (float(s) for s in sizes)
    return {"sagittal": (dz, dy), "coronal": (dz, dx), "axial": (dy, dx)}


def ras_mid_slices(img: nib.spatialimages.SpatialImage, centre: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Three orthogonal slices of ``img`` after reorientation to RAS, in display order.

    ``centre`` is a voxel index in the RAS-reoriented grid (default: the volume's centre, ``shape // 2``). Keys are
    ``"sagittal"``, ``"coronal"``, ``"axial"``; each value is a 2D array as it appears on screen (``[0, 0]`` is the
    top-left pixel, no further flips needed with ``imshow(origin="upper")``), laid out as in ``EDGE_LABELS``:
    sagittal P->A left to right, S at top; coronal L->R, S at top; axial L->R, A at top (neurological).
    """
    canon = _canonical(img)
    data = _array(canon)
    return _slices_from_ras(data, _default_centre(data.shape) if centre is None else centre)


def ras_pixel_spacing(img: nib.spatialimages.SpatialImage) -> dict[str, tuple[float, float]]:
    """Pixel size in mm, (row, column), of each view returned by ``ras_mid_slices`` -- from the affine."""
    return _spacing_from_sizes(_voxel_sizes(_canonical(img).affine))


# --------------------------------------------------------------------------------------------------------------------
# The QC figure
# --------------------------------------------------------------------------------------------------------------------


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

    Both volumes are reoriented to RAS for display (neurological convention, see the module docstring) and drawn with
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


# --------------------------------------------------------------------------------------------------------------------
# The HTML page
# --------------------------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1em; background: #fafafa; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .3em 0; }
.counts { font-size: 1.1em; margin: .2em 0; }
.counts .ok, .status.ok { color: #1a7f37; }
.counts .failed, .status.failed { color: #c00; font-weight: bold; }
.counts .warn, .status.warn { color: #b35900; font-weight: bold; }
.card.warn { border-color: #e08a00; }
.card .reasons { color: #b35900; font-size: .85em; margin: 4px 0 0 0; }
.legend { color: #555; font-size: .9em; margin: .2em 0 1em 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 4px; padding: 6px; }
.card.failed { border-color: #c00; }
.card:has(> input.zoom:checked) { grid-column: 1 / -1; }
.card input.zoom { display: none; }
.card label { cursor: zoom-in; display: block; }
.card img { width: 100%; height: auto; display: block; background: #000; }
.card .meta { font-size: .9em; margin-top: 4px; overflow-wrap: anywhere; }
.card .id { font-weight: bold; }
.card .error { color: #c00; white-space: pre-wrap; font-family: monospace; font-size: .85em;
  max-height: 12em; overflow: auto; margin: 4px 0 0 0; }
.nopic { color: #777; font-style: italic; padding: 1em 0; }
"""


def _relative_src(png: Path, folder: Path) -> str:
    """URL of ``png`` relative to the HTML's folder, so the folder can be moved or zipped as a whole."""
    try:
        rel = os.path.relpath(os.path.abspath(png), os.path.abspath(folder))
    except ValueError:  # different drive on Windows: no relative path exists
        return png.resolve().as_uri()
    return quote(PurePath(rel).as_posix(), safe="/")


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _rank(entry: dict) -> int:
    """0: not processed or refused by QC, 1: QC warning, 2: fine. Anything unknown counts as a failure."""
    if entry.get("status") != "ok":
        return 0
    return {"warn": 1, "pass": 2}.get(str(entry.get("qc_status") or "pass"), 0)


def _card(entry: dict, number: int, folder: Path, embed: bool) -> str:
    esc = html.escape
    image_id = str(entry.get("image_id") or "")
    status = str(entry.get("status") or "")
    kind = ("failed", "warn", "ok")[_rank(entry)]
    parts = [f'<div class="card {kind}">']
    png = entry.get("qc_png")
    if png is not None and Path(png).is_file():
        src = _data_uri(Path(png)) if embed else _relative_src(Path(png), folder)
        parts.append(f'<input type="checkbox" class="zoom" id="zoom-{number}">')
        parts.append(
            f'<label for="zoom-{number}" title="click to enlarge">'
            f'<img src="{esc(src)}" alt="{esc("QC picture of " + image_id)}" loading="lazy"></label>'
        )
    elif png is not None:
        parts.append(f'<div class="nopic">QC picture missing: {esc(str(png))}</div>')
    else:
        parts.append('<div class="nopic">no QC picture</div>')
    qc_status = entry.get("qc_status")
    parts.append(
        f'<div class="meta"><span class="id">{esc(image_id)}</span><br>'
        f"subject {esc(str(entry.get('subject') or ''))} &middot; group {esc(str(entry.get('group') or ''))} "
        f'&middot; <span class="status {kind}">{esc(status or "unknown")}</span>'
        + (f' &middot; QC <span class="status {kind}">{esc(str(qc_status))}</span>' if qc_status else "")
        + "</div>"
    )
    error = entry.get("error")
    if error:
        parts.append(f'<p class="error">{esc(str(error))}</p>')
    elif entry.get("qc_reasons"):
        parts.append(f'<p class="reasons">{esc(str(entry["qc_reasons"]))}</p>')
    parts.append("</div>")
    return "\n".join(parts)


def qc_page(entries: list[dict], out_html: Path, title: str, embed: bool = False) -> Path:
    """Write one self-contained HTML page with a thumbnail grid of all QC pictures.

    Each entry is a dict with ``image_id``, ``subject``, ``group``, ``status`` ("ok"/"failed"/"qc_failed"),
    ``qc_status`` (pass/warn/fail or None), ``qc_reasons``, ``qc_png`` (path or None) and ``error`` (text or None).
    Failed scans come first, with their error in red, then QC warnings; any status other than "ok" counts as failed
    so that a typo never hides a scan among the good ones. Pictures are referenced by paths relative
    to the page's folder (zip the folder to share it) or, with ``embed=True``, inlined as base64 ``data:`` URIs for a
    single-file page. All text is HTML-escaped. The page is written atomically; returns ``out_html``.
    """
    out_html = Path(out_html)
    folder = out_html.parent
    ordered = sorted(entries, key=_rank)  # stable: failed first, then QC warnings, input order kept
    ranks = [_rank(e) for e in entries]
    n_ok, n_warn, n_failed = ranks.count(2), ranks.count(1), ranks.count(0)
    cards = "\n".join(_card(entry, i, folder, embed) for i, entry in enumerate(ordered))
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="counts">{len(entries)} scans: <span class="ok">{n_ok} ok</span>,
<span class="warn">{n_warn} with QC warnings</span>, <span class="failed">{n_failed} failed</span></p>
<p class="legend">Each picture: raw scan (top row) and preprocessed scan (bottom row), sagittal / coronal / axial
mid-slices, shown in RAS in {DISPLAY_CONVENTION} convention (subject's left on viewer's left);
brain-mask outline in {MASK_COLOUR}. Failed scans (not processed, or refused by quality control) are listed
first, then scans with QC warnings. Click a picture to enlarge it.</p>
<div class="grid">
{cards}
</div>
</body>
</html>
"""
    _atomic_write(out_html, page.encode("utf-8"))
    return out_html
