"""DICOM to NIfTI conversion of one ADNI image (one series) per call, with dicom2nifti (dissertation 4.2.1).

The dissertation ran ``dicom2nifti.convert_directory(root, out, compression=True, reorient=True)`` over the whole
download. That call logs and skips any series it cannot convert, so a missing slice or a stray localizer silently
shrinks the cohort, and its output names come from series descriptions rather than image ids. Here each image folder
is converted on its own: the files are read with pydicom and checked first (not DICOM, several series, a single-slice
or multi-plane localizer, empty folder), then handed to ``dicom2nifti.convert_dicom.dicom_array_to_nifti`` with
``reorient_nifti=True`` (the dissertation's ``reorient=True``: data stored LAS, compressed ``.nii.gz``). dicom2nifti's
own validations (slice count, orientation, orthogonality, slice increment) stay on, and its gantry-tilt resampling
stays off, so a gap in the slices or a tilted stack is reported rather than turned into a silently distorted volume.

Every failure becomes a :class:`ConversionResult` with a readable reason instead of an exception, and outputs are
written in a hidden temporary folder and renamed into place, so :func:`convert_series` can run in worker processes and a
run can be interrupted and resumed without leaving half-written files that look finished.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dicom2nifti.settings
import nibabel as nib
import numpy as np
import pydicom
import pydicom.misc
from dicom2nifti.convert_dicom import dicom_array_to_nifti
from dicom2nifti.exceptions import ConversionError, ConversionValidationError

#: dicom2nifti settings whose non-default values would let a broken or distorted geometry through.
SAFE_DICOM2NIFTI_SETTINGS: dict[str, bool] = {
    "validate_slicecount": True,
    "validate_orientation": True,
    "validate_orthogonal": True,
    "validate_slice_increment": True,
    "validate_multiframe_implicit": True,
    "resample": False,
}

#: What dicom2nifti's error codes mean for an ADNI T1 series.
DICOM2NIFTI_REASONS: dict[str, str] = {
    "SLICE_INCREMENT_INCONSISTENT": "inconsistent slice increment: missing slice(s) or uneven slice spacing",
    "TOO_FEW_SLICES/LOCALIZER": "too few slices: a localizer or 2D image, not a 3D volume",
    "IMAGE_ORIENTATION_INCONSISTENT": "inconsistent slice orientation: a localizer or mixed series",
    "NON_CUBICAL_IMAGE/GANTRY_TILT": "slices not stacked perpendicular to their plane (gantry tilt), not resampled",
    "INSTANCE_NUMBER_INCONSISTENT": "inconsistent instance numbers: missing slice(s)",
    "MISSING_DICOM_FILES": "missing DICOM files: stacks of different sizes",
    "NOT_A_VOLUME": "all slices at the same position: not a volume",
    "NON_IMAGING_DICOM_FILES": "DICOM files without image geometry",
    "NO_DICOM_FILES_FOUND": "no DICOM files",
    "UNSUPPORTED_DATA": "data type not supported by dicom2nifti",
}

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class ConversionResult:
    """The outcome of converting one image; picklable, so worker processes can return it.

    ``status`` is ``"ok"`` or ``"failed"``; ``reason`` says why it failed (None when ok). ``existing`` is True when
    the output was already there and was kept without converting again. ``shape``/``voxel_size`` describe the
    written volume (after dicom2nifti's reorientation to LAS).
    """

    image_id: str
    subject: str
    status: str
    output_path: Path | None
    reason: str | None
    seconds: float
    dicom_dir: Path | None = None
    n_files: int = 0
    shape: tuple[int, ...] | None = None
    voxel_size: tuple[float, ...] | None = None
    existing: bool = False

    @property
    def ok(self) -> bool:
        """True when a NIfTI file for this image exists at ``output_path``."""
        return self.status == "ok"


class SeriesCheckError(Exception):
    """A problem found in the folder before dicom2nifti is called; its message is the reported reason."""


def output_name(subject: str, image_id: str) -> str:
    """``<subject>_<image_id>.nii.gz``, the name later stages (manifests, splits) join on.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` are replaced so that an id can never escape
    the output folder.
    """
    return f"{_NAME_UNSAFE.sub('_', subject)}_{_NAME_UNSAFE.sub('_', image_id)}.nii.gz"


def unsafe_dicom2nifti_settings() -> list[str]:
    """The dicom2nifti settings changed from the safe defaults, e.g. ``["validate_slice_increment=False"]``.

    dicom2nifti keeps them as module globals, so any code in the process (a notebook, another library) can switch a
    validation off; conversion refuses to run then instead of writing volumes with a wrong geometry.
    """
    return [
        f"{name}={getattr(dicom2nifti.settings, name, None)!r}"
        for name, expected in SAFE_DICOM2NIFTI_SETTINGS.items()
        if getattr(dicom2nifti.settings, name, None) != expected
    ]


def read_series(dicom_dir: Path | str) -> list[pydicom.Dataset]:
    """Read and check the files of one image folder; return them (with pixel data) as a single series.

    Raises :class:`SeriesCheckError` naming what is wrong: the folder is missing or empty, a file is not DICOM
    (named), a DICOM file carries no image or geometry, the folder holds several SeriesInstanceUIDs (all named),
    or the series is a single slice or has slices in several orientations (a localizer, not a 3D volume). Hidden
    files (``.DS_Store`` and the like) are ignored; sub-folders are read too.
    """
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise SeriesCheckError(f"folder not found: {dicom_dir}")
    files = sorted(
        p
        for p in dicom_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(dicom_dir).parts)
    )
    if not files:
        raise SeriesCheckError(f"empty folder: no files in {dicom_dir}")

    not_dicom = [p for p in files if not pydicom.misc.is_dicom(p)]
    if not_dicom:
        raise SeriesCheckError(f"not DICOM: {_name_list(not_dicom, dicom_dir)} in {dicom_dir}")

    datasets: list[pydicom.Dataset] = []
    without_image: list[Path] = []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except Exception as error:  # any reader failure is reported for this one file
            raise SeriesCheckError(f"unreadable DICOM file {path.relative_to(dicom_dir)}: {error}") from error
        if "PixelData" not in ds or "SeriesInstanceUID" not in ds:
            without_image.append(path)
        datasets.append(ds)
    if without_image:
        raise SeriesCheckError(
            f"DICOM file(s) without image data: {_name_list(without_image, dicom_dir)} in {dicom_dir}"
        )

    by_series: dict[str, list[pydicom.Dataset]] = {}
    for ds in datasets:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    if len(by_series) > 1:
        listed = "; ".join(
            f"{uid} ({_description(group[0])!r}, {len(group)} file{'s' if len(group) != 1 else ''})"
            for uid, group in sorted(by_series.items())
        )
        raise SeriesCheckError(f"several series in one folder ({len(by_series)}): {listed}")

    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) <= 1:
        raise SeriesCheckError(f"localizer/2D image: a single slice ({files[0].name}), not a 3D volume")

    missing_geometry = [
        p
        for p, ds in zip(files, datasets, strict=True)
        if "PerFrameFunctionalGroupsSequence" not in ds
        and not all(tag in ds for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"))
    ]
    if missing_geometry:
        raise SeriesCheckError(
            "missing geometry (ImagePositionPatient/ImageOrientationPatient/PixelSpacing) in "
            f"{_name_list(missing_geometry, dicom_dir)}"
        )

    orientations = _distinct_orientations(datasets)
    if len(orientations) > 1:
        raise SeriesCheckError(
            f"localizer/inconsistent orientation: {len(orientations)} different ImageOrientationPatient values "
            f"among {len(datasets)} slices, not a 3D volume"
        )
    return datasets


def convert_series(
    dicom_dir: Path | str,
    out_dir: Path | str,
    subject: str,
    image_id: str,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert the single series in ``dicom_dir`` to ``<out_dir>/<subject>_<image_id>.nii.gz``.

    Never raises for a problem with the data: the result says ``failed`` with the reason (see module docstring and
    :data:`DICOM2NIFTI_REASONS`), so a batch over a thousand images keeps going and reports every bad one. An existing
    output is kept (``existing=True``) unless ``overwrite``; since outputs only appear by an atomic rename, an existing
    file is a complete one.
    """
    start = time.perf_counter()
    dicom_dir = Path(dicom_dir)
    out_dir = Path(out_dir)
    final_path = out_dir / output_name(subject, image_id)

    def result(status: str, reason: str | None = None, **extra: Any) -> ConversionResult:
        return ConversionResult(
            image_id=image_id,
            subject=subject,
            status=status,
            output_path=final_path if status == "ok" else None,
            reason=reason,
            seconds=time.perf_counter() - start,
            dicom_dir=dicom_dir,
            **extra,
        )

    if final_path.exists() and not overwrite:
        return result("ok", existing=True)

    unsafe = unsafe_dicom2nifti_settings()
    if unsafe:
        return result("failed", f"dicom2nifti validation settings changed from the safe defaults: {', '.join(unsafe)}")

    try:
        datasets = read_series(dicom_dir)
    except SeriesCheckError as error:
        return result("failed", str(error))
    except Exception as error:  # e.g. a permission error: reported for this image, the batch goes on
        return result("failed", f"cannot read {dicom_dir}: {type(error).__name__}: {error}")

    n_files = len(datasets)
    partial_dir: Path | None = None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # A private hidden folder on the same file system: the rename into place is atomic, and a process killed
        # mid-write leaves only a ``.partial-*`` folder, never a truncated ``*.nii.gz`` next to the finished ones.
        partial_dir = Path(tempfile.mkdtemp(prefix=".partial-", dir=out_dir))
        partial_path = partial_dir / final_path.name
        converted = dicom_array_to_nifti(datasets, str(partial_path), reorient_nifti=True)
        image = converted["NII"]
        shape = tuple(int(n) for n in image.shape)
        if len(shape) != 3:
            reason = (
                f"not a single 3D volume: dicom2nifti produced shape {shape} (repeated acquisitions in one series?)"
            )
            return result("failed", reason, n_files=n_files)
        zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
        if not np.all(np.isfinite(image.affine)) or min(zooms) <= 0:
            return result("failed", f"invalid geometry: affine {image.affine.tolist()}", n_files=n_files)
        # What dicom2nifti left on disk is what later stages will read: check it loads with the same shape.
        on_disk = nib.load(str(partial_path))
        if tuple(on_disk.shape) != shape:
            return result("failed", f"written file has shape {on_disk.shape}, expected {shape}", n_files=n_files)
        os.replace(partial_path, final_path)
        return result("ok", n_files=n_files, shape=shape, voxel_size=zooms)
    except (ConversionValidationError, ConversionError) as error:
        return result("failed", _dicom2nifti_reason(error, datasets), n_files=n_files)
    except Exception as error:  # one bad image must not stop a batch; the reason says what happened
        return result("failed", f"unexpected error: {type(error).__name__}: {error}", n_files=n_files)
    finally:
        if partial_dir is not None:
            shutil.rmtree(partial_dir, ignore_errors=True)


def convert_scan(scan: Any, out_dir: Path | str, overwrite: bool = False) -> ConversionResult:
    """Convert a discovered scan (anything with ``dicom_dir``, ``subject`` and ``image_id``, e.g. ``adni.Scan``)."""
    if scan.dicom_dir is None:
        return ConversionResult(
            image_id=scan.image_id,
            subject=scan.subject,
            status="failed",
            output_path=None,
            reason="no DICOM folder for this scan (missing from the download)",
            seconds=0.0,
        )
    return convert_series(scan.dicom_dir, out_dir, scan.subject, scan.image_id, overwrite=overwrite)


def _dicom2nifti_reason(error: Exception, datasets: Sequence[pydicom.Dataset]) -> str:
    """dicom2nifti's error code, explained, with the slice gap when slices are missing."""
    code = str(error.args[0]) if error.args else type(error).__name__
    explanation = DICOM2NIFTI_REASONS.get(code, "dicom2nifti rejected the series")
    reason = f"{explanation} (dicom2nifti {type(error).__name__}: {code})"
    if code == "SLICE_INCREMENT_INCONSISTENT":
        gap = _slice_gap_summary(datasets)
        if gap:
            reason = f"{reason}; {gap}"
    return reason


def _slice_gap_summary(datasets: Sequence[pydicom.Dataset]) -> str | None:
    """E.g. ``"largest gap 2.40 mm vs usual 1.20 mm: about 1 slice(s) missing among 7 files"``."""
    try:
        iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        positions = np.sort(
            [float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))) for ds in datasets]
        )
    except (AttributeError, KeyError, ValueError, TypeError):
        return None
    gaps = np.diff(positions)
    if gaps.size < 2:
        return None
    usual = float(np.median(gaps))
    largest = float(gaps.max())
    if usual <= 0:
        return f"several slices share a position (largest gap {largest:.2f} mm)"
    missing = int(round(largest / usual)) - 1
    summary = f"largest gap {largest:.2f} mm vs usual {usual:.2f} mm"
    if missing >= 1:
        summary += f": about {missing} slice(s) missing among {len(datasets)} files"
    return summary


def _description(ds: pydicom.Dataset) -> str:
    """SeriesDescription, or a placeholder so that reasons never show an empty name."""
    return str(ds.get("SeriesDescription", "") or "").strip() or "no description"


def _distinct_orientations(datasets: Sequence[pydicom.Dataset]) -> list[np.ndarray]:
    """The different ImageOrientationPatient values (to 1e-3, as dicom2nifti compares them)."""
    distinct: list[np.ndarray] = []
    for ds in datasets:
        if "ImageOrientationPatient" not in ds:
            continue
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        if not any(np.allclose(iop, seen, atol=1e-3, rtol=0) for seen in distinct):
            distinct.append(iop)
    return distinct


def _name_list(paths: Sequence[Path], root: Path, limit: int = 5) -> str:
    """``'a.txt', 'b.txt' (and 3 more)`` relative to ``root``."""
    names = ", ".join(repr(str(p.relative_to(root))) for p in paths[:limit])
    if len(paths) > limit:
        names += f" (and {len(paths) - limit} more)"
    return names
