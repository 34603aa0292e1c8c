"""Tests of the QC pictures and page (preprocessing.qc).

Volumes are defined in world (scanner, RAS mm) space and sampled onto voxel grids through hand-written affines, so
the expected picture follows from anatomy alone and not from nibabel's own reorientation code that qc.py uses.
"""

from __future__ import annotations

import base64
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest

from preprocessing.qc import EDGE_LABELS, FIG_PIXELS, qc_figure, qc_page, ras_mid_slices, ras_pixel_spacing

# World axis and direction of each orientation letter.
_AXIS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
RAW_SHAPE = (40, 48, 36)
ZOOMS = (1.0, 1.5, 2.0)


def make_affine(codes: str, zooms: tuple[float, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Affine of a grid stored in orientation ``codes`` (e.g. "LIA"), voxel sizes ``zooms``, centred on world 0."""
    affine = np.eye(4)
    for data_axis, code in enumerate(codes):
        world_axis, sign = _AXIS[code]
        affine[:3, data_axis] = 0.0
        affine[world_axis, data_axis] = sign * zooms[data_axis]
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def world_coords(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    return (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape((3, *shape))


def head(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid 'brain' inside a dimmer 'scalp' shell; returns (intensities, brain mask)."""
    x, y, z = xyz
    brain = (x / 22) ** 2 + (y / 28) ** 2 + (z / 24) ** 2 < 1
    shell = ((x / 28) ** 2 + (y / 34) ** 2 + (z / 32) ** 2 < 1) & ~brain
    vol = np.where(brain, 100.0, np.where(shell, 40.0, 0.0)).astype(np.float32)
    return vol, brain


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Raw scan stored LIA with anisotropic voxels, its brain mask, and a 128^3 RAS 'preprocessed' scan."""
    folder = tmp_path_factory.mktemp("scans")
    raw_affine = make_affine("LIA", ZOOMS, RAW_SHAPE)
    vol, brain = head(world_coords(RAW_SHAPE, raw_affine))
    proc_shape = (128, 128, 128)
    proc_affine = make_affine("RAS", (0.6, 0.6, 0.6), proc_shape)
    proc_vol, proc_brain = head(world_coords(proc_shape, proc_affine))
    return {
        "raw": save(folder / "raw.nii.gz", vol, raw_affine),
        "mask": save(folder / "mask.nii.gz", brain.astype(np.uint8), raw_affine),
        "processed": save(folder / "processed.nii.gz", (proc_vol * proc_brain).astype(np.int16), proc_affine),
        "processed_mask": save(folder / "processed_mask.nii.gz", proc_brain.astype(np.uint8), proc_affine),
        "odd_mask": save(folder / "odd_mask.nii.gz", np.ones((10, 11, 12), np.uint8), np.eye(4)),
    }


def red_pixels(png: Path) -> np.ndarray:
    rgb = mpimg.imread(str(png))[..., :3]
    return (rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)


# --------------------------------------------------------------------------------------------------------------------
# Orientation of the displayed slices
# --------------------------------------------------------------------------------------------------------------------

# Odd sizes put the mid-slice exactly through world 0, so a marker block touching 0 is cut by all three views.
ODD_SHAPE = (41, 49, 37)


def marker_volume(codes: str, octant: str) -> nib.Nifti1Image:
    """A block filling [0, 10] mm (or [-10, 0]) along each world axis, on the side named by ``octant`` (e.g. 'RPS')."""
    affine = make_affine(codes, ZOOMS, ODD_SHAPE)
    xyz = world_coords(ODD_SHAPE, affine)
    inside = np.ones(ODD_SHAPE, dtype=bool)
    for letter in octant:
        axis, sign = _AXIS[letter]
        signed = sign * xyz[axis]
        inside &= (signed > -1e-6) & (signed < 10.0)
    return nib.Nifti1Image(np.where(inside, 200.0, 10.0).astype(np.float32), affine)


def expected_quadrant(view: str, octant: str) -> tuple[str, str]:
    """(vertical, horizontal) side of the picture on which the marker must appear, from EDGE_LABELS."""
    left, right, top, bottom = EDGE_LABELS[view]
    vertical = "top" if top in octant else "bottom" if bottom in octant else None
    horizontal = "left" if left in octant else "right" if right in octant else None
    assert vertical and horizontal
    return vertical, horizontal


def test_edge_labels_are_neurological() -> None:
    # The convention itself: coronal and axial have the subject's left on the viewer's left; S / A up.
    assert EDGE_LABELS["coronal"] == ("L", "R", "S", "I")
    assert EDGE_LABELS["axial"] == ("L", "R", "A", "P")
    assert EDGE_LABELS["sagittal"] == ("P", "A", "S", "I")


@pytest.mark.parametrize("codes", ["LIA", "PSR", "RAS"])
@pytest.mark.parametrize("octant", ["RAS", "LPS", "RPI"])
def test_marker_lands_in_expected_quadrant(codes: str, octant: str) -> None:
    slices = ras_mid_slices(marker_volume(codes, octant))
    assert set(slices) == {"sagittal", "coronal", "axial"}
    for view, image in slices.items():
        rows, cols = np.nonzero(image > 100)
        assert rows.size > 0, f"{view}: mid-slice misses the marker"
        height, width = image.shape
        mid_row, mid_col = height // 2, width // 2  # odd sizes: the centre line is shared by both halves
        vertical, horizontal = expected_quadrant(view, octant)
        if vertical == "top":
            assert rows.max() <= mid_row and rows.min() < mid_row, f"{codes}/{octant}: {view} marker not at top"
        else:
            assert rows.min() >= mid_row and rows.max() > mid_row, f"{codes}/{octant}: {view} marker not at bottom"
        if horizontal == "left":
            assert cols.max() <= mid_col and cols.min() < mid_col, f"{codes}/{octant}: {view} marker not on left"
        else:
            assert cols.min() >= mid_col and cols.max() > mid_col, f"{codes}/{octant}: {view} marker not on right"


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        # LIA: stored axis 0 (1.0 mm) is x, axis 1 (1.5 mm) is z, axis 2 (2.0 mm) is y.
        ("LIA", {"sagittal": (1.5, 2.0), "coronal": (1.5, 1.0), "axial": (2.0, 1.0)}),
        # PSR: axis 0 (1.0 mm) is y, axis 1 (1.5 mm) is z, axis 2 (2.0 mm) is x.
        ("PSR", {"sagittal": (1.5, 1.0), "coronal": (1.5, 2.0), "axial": (1.0, 2.0)}),
    ],
)
def test_pixel_spacing_and_slice_shapes_follow_the_affine(codes: str, expected: dict) -> None:
    img = marker_volume(codes, "RAS")
    spacing = ras_pixel_spacing(img)
    assert set(spacing) == set(expected)
    for view, pixel_mm in expected.items():
        assert spacing[view] == pytest.approx(pixel_mm), view
    # Physical extent of each picture = pixel count x pixel size; the grid spans the same world box in every case.
    extent_mm = {axis: n * z for axis, n, z in zip("xyz", *_ras_shape_and_zooms(codes), strict=True)}
    slices = ras_mid_slices(img)
    for view, (rows_axis, cols_axis) in {"sagittal": "zy", "coronal": "zx", "axial": "yx"}.items():
        height, width = slices[view].shape
        row_mm, col_mm = spacing[view]
        assert height * row_mm == pytest.approx(extent_mm[rows_axis])
        assert width * col_mm == pytest.approx(extent_mm[cols_axis])


def _ras_shape_and_zooms(codes: str) -> tuple[list[int], list[float]]:
    shape, zooms = [0, 0, 0], [0.0, 0.0, 0.0]
    for data_axis, code in enumerate(codes):
        world_axis, _ = _AXIS[code]
        shape[world_axis], zooms[world_axis] = ODD_SHAPE[data_axis], ZOOMS[data_axis]
    return shape, zooms


# --------------------------------------------------------------------------------------------------------------------
# qc_figure
# --------------------------------------------------------------------------------------------------------------------


def test_figure_is_small_valid_png_with_mask_outline_on_raw_row(scans: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "new" / "sub" / "qc.png"  # folders are created
    assert qc_figure(scans["raw"], scans["processed"], scans["mask"], out, title="I123 <AD>") == out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(str(out))
    assert image.shape[:2] == FIG_PIXELS
    assert out.stat().st_size < 200 * 1024
    assert sorted(p.name for p in out.parent.iterdir()) == ["qc.png"]  # no temp file left behind
    red = red_pixels(out)
    assert red.sum() > 50
    half = FIG_PIXELS[0] // 2
    assert red[half:].sum() == 0, "the mask is on the raw grid: outline belongs on the top row only"


def test_figure_without_mask_has_no_red(scans: dict[str, Path], tmp_path: Path) -> None:
    out = qc_figure(scans["raw"], scans["processed"], None, tmp_path / "qc.png")
    assert mpimg.imread(str(out)).shape[:2] == FIG_PIXELS
    assert red_pixels(out).sum() == 0


def test_mask_on_processed_grid_is_drawn_on_bottom_row(scans: dict[str, Path], tmp_path: Path) -> None:
    out = qc_figure(scans["raw"], scans["processed"], scans["processed_mask"], tmp_path / "qc.png")
    red = red_pixels(out)
    half = FIG_PIXELS[0] // 2
    assert red[half:].sum() > 50
    assert red[:half].sum() == 0


def test_mask_matching_no_grid_is_skipped(scans: dict[str, Path], tmp_path: Path) -> None:
    out = qc_figure(scans["raw"], scans["processed"], scans["odd_mask"], tmp_path / "qc.png")
    assert mpimg.imread(str(out)).shape[:2] == FIG_PIXELS
    assert red_pixels(out).sum() == 0


def test_figure_accepts_4d_raw_and_overwrites(scans: dict[str, Path], tmp_path: Path) -> None:
    raw = nib.load(str(scans["raw"]))
    raw4d = save(tmp_path / "raw4d.nii.gz", np.asarray(raw.dataobj)[..., None], raw.affine)
    out = tmp_path / "qc.png"
    out.write_bytes(b"stale")
    qc_figure(raw4d, scans["processed"], scans["mask"], out)
    assert mpimg.imread(str(out)).shape[:2] == FIG_PIXELS
    assert red_pixels(out).sum() > 50


# --------------------------------------------------------------------------------------------------------------------
# qc_page
# --------------------------------------------------------------------------------------------------------------------


class _Refs(HTMLParser):
    """Collects <img src> and <a href> values."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.imgs.append(values.get("src") or "")
        elif tag == "a" and values.get("href"):
            self.links.append(values["href"])


def refs(html_text: str) -> _Refs:
    parser = _Refs()
    parser.feed(html_text)
    return parser


ERROR = '<script>alert("x")</script> & bad'


@pytest.fixture()
def page_entries(tmp_path: Path) -> list[dict]:
    pics = tmp_path / "site" / "qc pics"
    pics.mkdir(parents=True)
    tiny = np.zeros((6, 9, 3), dtype=np.float32)
    paths = []
    for i in range(3):
        tiny[..., 0] = i / 3
        path = pics / f"I{i} #q.png"  # a space and a '#' must survive as a URL
        mpimg.imsave(str(path), tiny)
        paths.append(path)
    return [
        {"image_id": "I0", "subject": "002_S_0001", "group": "CN", "status": "ok", "qc_png": paths[0], "error": None},
        {"image_id": "I1", "subject": "002_S_0002", "group": "AD", "status": "failed", "qc_png": None, "error": ERROR},
        {
            "image_id": "I2",
            "subject": "002_S_0003",
            "group": "AD",
            "status": "ok",
            "qc_png": str(paths[1]),
            "error": None,
        },
        {
            "image_id": "I3",
            "subject": "002_S_0004",
            "group": "CN",
            "status": "failed",
            "qc_png": paths[2],
            "error": "x",
        },
        {
            "image_id": "I4",
            "subject": "002_S_0005",
            "group": "CN",
            "status": "ok",
            "qc_png": pics / "gone.png",
            "error": None,
        },
    ]


def test_page_lists_failed_first_with_escaped_errors(page_entries: list[dict], tmp_path: Path) -> None:
    out = qc_page(page_entries, tmp_path / "site" / "index.html", title="QC <run 1>")
    text = out.read_text(encoding="utf-8")
    assert "<script" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; bad" in text
    assert re.search(r'<p class="error">[^<]*&lt;script&gt;', text)
    assert "QC &lt;run 1&gt;" in text
    order = [text.index(f">{image_id}<") for image_id in ("I1", "I3", "I0", "I2", "I4")]
    assert order == sorted(order), "failed entries first, input order otherwise"
    assert re.search(r"3 ok</span>,\s*<span[^>]*>0 with QC warnings</span>,\s*<span[^>]*>2 failed", text)
    # One <img> per existing picture (I0, I2, I3); the missing one gets a note instead of a broken image.
    assert len(refs(text).imgs) == 3 == text.count("<img")
    assert "QC picture missing" in text


def test_page_orders_qc_failures_then_warnings_then_passes_and_shows_reasons(tmp_path: Path) -> None:
    entries = [
        {"image_id": "Ipass", "status": "ok", "qc_status": "pass", "qc_png": None},
        {"image_id": "Iwarn", "status": "ok", "qc_status": "warn", "qc_reasons": "template Dice 0.91 < 0.93"},
        {"image_id": "Irefused", "status": "qc_failed", "qc_status": "fail", "error": "quality control: 660 ml"},
        {"image_id": "Iodd", "status": "ok", "qc_status": "unheard-of", "qc_png": None},  # unknown counts as failed
    ]
    text = qc_page(entries, tmp_path / "index.html", title="QC").read_text(encoding="utf-8")
    order = [text.index(f">{image_id}<") for image_id in ("Irefused", "Iodd", "Iwarn", "Ipass")]
    assert order == sorted(order)
    assert "template Dice 0.91 &lt; 0.93" in text and "quality control: 660 ml" in text
    assert re.search(r"1 ok</span>,\s*<span[^>]*>1 with QC warnings</span>,\s*<span[^>]*>2 failed", text)


def test_page_relative_paths_survive_moving_the_folder(page_entries: list[dict], tmp_path: Path) -> None:
    qc_page(page_entries, tmp_path / "site" / "index.html", title="QC")
    moved = Path(shutil.move(str(tmp_path / "site"), str(tmp_path / "elsewhere")))  # as if zipped and unpacked
    text = (moved / "index.html").read_text(encoding="utf-8")
    found = refs(text)
    assert found.imgs
    for src in found.imgs + found.links:
        assert not src.startswith(("/", "file:", "data:")), src
        assert (moved / unquote(src)).is_file(), src


def test_page_embed_inlines_pictures(page_entries: list[dict], tmp_path: Path) -> None:
    out = qc_page(page_entries, tmp_path / "single.html", title="QC", embed=True)
    text = out.read_text(encoding="utf-8")
    found = refs(text)
    assert len(found.imgs) == 3
    assert all(src.startswith("data:image/png;base64,") for src in found.imgs)
    assert not found.links
    assert ".png" not in text.replace("gone.png", ""), "no file references apart from the missing-picture note"
    inlined = {base64.b64decode(src.split(",", 1)[1]) for src in found.imgs}
    expected = {Path(e["qc_png"]).read_bytes() for e in page_entries if e["image_id"] in ("I0", "I2", "I3")}
    assert inlined == expected
