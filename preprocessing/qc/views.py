"""Geometry of the QC pictures: the three RAS mid-slices of a volume in display order (neurological), their pixel
spacing and the edge letters of each view.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np

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
