"""Tiny synthetic DICOM series written with pydicom, so conversion tests know the exact geometry they put in.

Volume convention: ``volume[i, j, k]`` where ``i`` runs along the image rows' direction (the column index of a slice,
DICOM's first ImageOrientationPatient vector), ``j`` along the columns' direction (the row index, the second vector)
and ``k`` is the slice index. So a slice stores ``volume[:, :, k].T`` as its pixel data (Rows x Columns), and
``spacing = (di, dj, dk)`` is (column spacing, row spacing, slice spacing) in mm.

:func:`series_affine` gives the 4x4 matrix from ``(i, j, k)`` to patient coordinates (LPS, millimetres) that the
written headers imply; tests compare converted NIfTI files against it (NIfTI world space is RAS: negate x and y).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

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
) -> list[Path]:
    """Write ``volume`` (shape ``(columns, rows, slices)``, integer values) as one single-frame MR series.

    Every file shares the series, study and frame-of-reference UIDs (generated when not given) and has its own
    SOPInstanceUID; geometry tags (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness,
    SpacingBetweenSlices) follow :func:`series_affine` (``origin``, ``reverse_slices`` and ``slice_shift`` are
    passed on to it). Slices listed in ``drop_slices`` are not written, leaving a
    gap (their InstanceNumbers are skipped too), which is how a download with a missing file looks. ``rescale`` sets
    RescaleSlope/RescaleIntercept. Files are named ``<prefix>_<slice:04d>.dcm``; the default prefix comes from the
    series UID so that two series written into one folder do not collide. Returns the written paths in slice order.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D (columns, rows, slices), got shape {volume.shape}")
    if not np.issubdtype(volume.dtype, np.integer):
        raise ValueError("volume must hold integers (stored as 16-bit pixels)")
    signed = bool(volume.min() < 0)
    limits = (-(2**15), 2**15 - 1) if signed else (0, 2**16 - 1)
    if volume.min() < limits[0] or volume.max() > limits[1]:
        raise ValueError("volume values do not fit 16-bit pixels")
    pixels = volume.astype(np.int16 if signed else np.uint16)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
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
        sop_uid = generate_uid()

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
        ds.InstanceNumber = k + 1
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
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()

        path = folder / f"{prefix}_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ramp_volume(shape: tuple[int, int, int] = (12, 10, 8)) -> np.ndarray:
    """A volume whose every voxel holds a distinct value (its flat index + 1), so any flip or swap is visible."""
    return (np.arange(int(np.prod(shape)), dtype=np.int64) + 1).reshape(shape)
