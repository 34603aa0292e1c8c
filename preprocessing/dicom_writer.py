"""Single-frame MR DICOM series written with pydicom, with exactly known geometry.

Used by the synthetic cohort generator (:mod:`preprocessing.synthetic`) and by the conversion tests, which both need
series whose voxel-to-world map is known in advance so that what dicom2nifti makes of them can be checked.

Volume convention: ``volume[i, j, k]`` where ``i`` runs along the image rows' direction (the column index of a slice,
DICOM's first ImageOrientationPatient vector), ``j`` along the columns' direction (the row index, the second vector)
and ``k`` is the slice index. So a slice stores ``volume[:, :, k].T`` as its pixel data (Rows x Columns), and
``spacing = (di, dj, dk)`` is (column spacing, row spacing, slice spacing) in mm.

:func:`series_affine` gives the 4x4 matrix from ``(i, j, k)`` to patient coordinates (LPS, millimetres) that the
written headers imply (NIfTI world space is RAS: negate x and y, see :data:`LPS_TO_RAS`).
:func:`write_series_from_affine` writes a volume given with a NIfTI-style RAS affine instead, and stores float data
as 16-bit integers with a rescale slope so the intensities survive integer storage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

#: Direction cosines (row direction, column direction) in LPS for the usual acquisition planes.
ORIENTATIONS: dict[str, tuple[float, float, float, float, float, float]] = {
    # rows run R->L, columns A->P: slice normal points to the head (+S)
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    # rows run A->P, columns S->I: slice normal points to the right (-L), the typical ADNI sagittal MPRAGE
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
    # rows run R->L, columns S->I: slice normal points to the back (+P)
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
}

#: DICOM patient coordinates (LPS) to NIfTI world coordinates (RAS); the matrix is its own inverse.
LPS_TO_RAS: np.ndarray = np.diag([-1.0, -1.0, 1.0, 1.0])

# Largest value a 16-bit unsigned pixel can hold; float data is scaled to use most of it.
_UINT16_MAX = 2**16 - 1


def orientation_cosines(orientation: str | Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row direction, column direction and slice normal (their cross product) for a plane name or 6 cosines."""
    cosines = ORIENTATIONS[orientation] if isinstance(orientation, str) else tuple(float(v) for v in orientation)
    if len(cosines) != 6:
        raise ValueError(f"orientation needs 6 direction cosines, got {len(cosines)}")
    row_dir = np.asarray(cosines[:3], dtype=float)
    col_dir = np.asarray(cosines[3:], dtype=float)
    return row_dir, col_dir, np.cross(row_dir, col_dir)


def series_affine(
    spacing: Sequence[float] = (1.0, 1.0, 1.2),
    orientation: str | Sequence[float] = "axial",
    origin: Sequence[float] = (-10.0, -20.0, -30.0),
    reverse_slices: bool = False,
    slice_shift: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """The 4x4 map from voxel index ``(i, j, k)`` of the written volume to LPS millimetres.

    Slice ``k`` lies at ``origin + k * (spacing[2] * normal + slice_shift)`` (``-normal`` when ``reverse_slices``),
    with the normal ``row x column`` as DICOM defines it; a non-zero ``slice_shift`` (LPS mm per slice) shears the
    stack the way a gantry tilt does.
    """
    row_dir, col_dir, normal = orientation_cosines(orientation)
    step = -normal if reverse_slices else normal
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[0]
    affine[:3, 1] = col_dir * spacing[1]
    affine[:3, 2] = step * spacing[2] + np.asarray(slice_shift, dtype=float)
    affine[:3, 3] = np.asarray(origin, dtype=float)
    return affine


def write_series(
    folder: Path | str,
    volume: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.2),
    orientation: str | Sequence[float] = "axial",
    patient_id: str = "002_S_0295",
    series_description: str = "MPRAGE",
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    drop_slices: Iterable[int] = (),
    origin: Sequence[float] = (-10.0, -20.0, -30.0),
    reverse_slices: bool = False,
    slice_shift: Sequence[float] = (0.0, 0.0, 0.0),
    manufacturer: str = "SIEMENS",
    series_number: int = 2,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    rescale: tuple[float, float] | None = None,
    file_prefix: str | None = None,
    uid_seed: str | None = None,
    instance_offset: int = 0,
    extra_tags: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``volume`` (shape ``(columns, rows, slices)``, integer values) as one single-frame MR series.

    Every file shares the series, study and frame-of-reference UIDs (generated when not given) and has its own
    SOPInstanceUID; geometry tags (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness,
    SpacingBetweenSlices) follow :func:`series_affine` (``origin``, ``reverse_slices`` and ``slice_shift`` are
    passed on to it). Slices listed in ``drop_slices`` are not written, leaving a
    gap (their InstanceNumbers are skipped too), which is how a download with a missing file looks. ``rescale`` sets
    RescaleSlope/RescaleIntercept. Files are named ``<prefix>_<slice:04d>.dcm``; the default prefix comes from the
    series UID so that two series written into one folder do not collide. Returns the written paths in slice order.

    With ``uid_seed`` every UID that is not given is derived from it (pydicom hashes the seed), so the same call
    writes byte-identical files; without it UIDs are random. InstanceNumbers start at ``instance_offset + 1``
    (several single-slice series of a localizer share one numbering). ``extra_tags`` (keyword -> value) are set last,
    so they can add tags (PatientSex, AcquisitionDate, ...) or override the fixed defaults (StudyDate, ...).
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D (columns, rows, slices), got shape {volume.shape}")
    if not np.issubdtype(volume.dtype, np.integer):
        raise ValueError("volume must hold integers (stored as 16-bit pixels); see write_series_from_affine for floats")
    signed = bool(volume.min() < 0)
    limits = (-(2**15), 2**15 - 1) if signed else (0, _UINT16_MAX)
    if volume.min() < limits[0] or volume.max() > limits[1]:
        raise ValueError("volume values do not fit 16-bit pixels")
    pixels = volume.astype(np.int16 if signed else np.uint16)

    def new_uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=[uid_seed, *map(str, parts)]) if uid_seed is not None else generate_uid()

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or new_uid("series")
    study_uid = study_uid or new_uid("study")
    frame_of_reference_uid = frame_of_reference_uid or new_uid("frame_of_reference")
    prefix = file_prefix or f"MR_{series_uid.replace('.', '')[-8:]}"
    cosines = ORIENTATIONS[orientation] if isinstance(orientation, str) else tuple(float(v) for v in orientation)
    affine = series_affine(spacing, orientation, origin, reverse_slices, slice_shift)
    dropped = set(drop_slices)
    n_columns, n_rows, n_slices = pixels.shape

    paths: list[Path] = []
    for k in range(n_slices):
        if k in dropped:
            continue
        position = affine @ np.array([0.0, 0.0, float(k), 1.0])
        sop_uid = new_uid(series_uid, "sop", k)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.Modality = "MR"
        ds.Manufacturer = manufacturer
        ds.ImageType = list(image_type)
        ds.PatientID = patient_id
        ds.PatientName = patient_id
        ds.StudyDate = "20060418"
        ds.SeriesDate = "20060418"
        ds.SeriesDescription = series_description
        ds.ProtocolName = series_description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = instance_offset + k + 1
        ds.ImagePositionPatient = [round(float(v), 6) for v in position[:3]]
        ds.ImageOrientationPatient = list(cosines)
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # [between rows, between columns]
        ds.SliceThickness = float(spacing[2])
        ds.SpacingBetweenSlices = float(spacing[2])
        ds.RepetitionTime = 2300.0
        ds.EchoTime = 2.98
        ds.Rows = n_rows
        ds.Columns = n_columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        if rescale is not None:
            ds.RescaleSlope = float(rescale[0])
            ds.RescaleIntercept = float(rescale[1])
            ds.RescaleType = "US"
        for keyword, value in (extra_tags or {}).items():
            setattr(ds, keyword, value)
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()

        path = folder / f"{prefix}_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def series_geometry_from_affine(
    affine: np.ndarray, atol: float = 1e-4
) -> tuple[tuple[float, float, float], tuple[float, ...], tuple[float, float, float], bool]:
    """``(spacing, orientation cosines, LPS origin, reverse_slices)`` for :func:`write_series` from a RAS affine.

    ``affine`` maps voxel ``(i, j, k)`` to NIfTI world (RAS) millimetres, as nibabel writes it. Its columns must be
    orthogonal (no shear: a stack whose slices do not sit perpendicular to their plane would be a gantry tilt,
    which dicom2nifti rightly refuses to convert without resampling).
    """
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    lps = LPS_TO_RAS @ affine
    columns = lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("affine has a zero-length axis")
    directions = columns / spacing
    if not np.allclose(directions.T @ directions, np.eye(3), atol=atol):
        raise ValueError("affine axes are not orthogonal (sheared stack): cannot be written as a DICOM series")
    row_dir, col_dir = directions[:, 0], directions[:, 1]
    reverse = bool(np.dot(np.cross(row_dir, col_dir), directions[:, 2]) < 0)
    cosines = tuple(round(float(v), 8) + 0.0 for v in (*row_dir, *col_dir))  # + 0.0 turns -0.0 into 0.0
    # Rounded so that they print as short DICOM decimal strings (a norm of 1.09 can come out as 1.0900000000000001).
    spacing_t = (round(float(spacing[0]), 6), round(float(spacing[1]), 6), round(float(spacing[2]), 6))
    origin = (round(float(lps[0, 3]), 6), round(float(lps[1, 3]), 6), round(float(lps[2, 3]), 6))
    return spacing_t, cosines, origin, reverse


def quantize(volume: np.ndarray) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Integer pixels (uint16) and ``(slope, intercept)`` such that ``pixels * slope + intercept`` ~= ``volume``.

    Integer input that already fits 16 bits is returned unchanged with no rescale (None). Float input is mapped
    onto ``0..65535`` with a slope that fits a 16-character DICOM decimal string, so the stored value differs from
    the original by at most half a slope.
    """
    volume = np.asarray(volume)
    if np.issubdtype(volume.dtype, np.integer) and volume.min() >= -(2**15) and volume.max() <= _UINT16_MAX:
        return volume, None
    if not np.all(np.isfinite(volume)):
        raise ValueError("volume holds NaN or infinite values")
    low, high = float(volume.min()), float(volume.max())
    intercept = _decimal_string_value(min(low, 0.0))
    slope = _decimal_string_value(max(high - intercept, 1e-12) / _UINT16_MAX)
    while (high - intercept) / slope > _UINT16_MAX:  # rounding the slope down could overflow the top value
        slope = _decimal_string_value(slope * (1 + 1e-7))
    pixels = np.clip(np.rint((volume - intercept) / slope), 0, _UINT16_MAX).astype(np.uint16)
    return pixels, (slope, intercept)


def write_series_from_affine(
    folder: Path | str,
    volume: np.ndarray,
    affine: np.ndarray,
    orientation_atol: float = 1e-4,
    **kwargs: Any,
) -> list[Path]:
    """Write ``volume`` whose voxel-to-RAS map is ``affine`` (NIfTI convention) as a single-frame MR series.

    ``volume[i, j, k]`` follows the module's convention (``i`` along the rows' direction, ``k`` the slice index), and
    ``affine`` says where each voxel is; the geometry tags are derived from it (see
    :func:`series_geometry_from_affine`). Float data is stored as uint16 with RescaleSlope/RescaleIntercept (see
    :func:`quantize`). Other keyword arguments go to :func:`write_series` (patient_id, series_description,
    uid_seed, extra_tags, drop_slices, ...).
    """
    spacing, cosines, origin, reverse = series_geometry_from_affine(affine, atol=orientation_atol)
    pixels, rescale = quantize(volume)
    if rescale is not None and "rescale" in kwargs:
        raise ValueError("rescale is computed for float volumes; pass integer data to choose it yourself")
    if rescale is not None:
        kwargs["rescale"] = rescale
    return write_series(
        folder, pixels, spacing=spacing, orientation=cosines, origin=origin, reverse_slices=reverse, **kwargs
    )


def _decimal_string_value(value: float) -> float:
    """``value`` rounded so that it prints in at most 16 characters, the limit of a DICOM DS element."""
    return float(f"{value:.8g}")
