"""DICOM writing of the ADNI-like download: ADNI's folder names and header tags of a visit's series, and the broken
extras (a localizer, a series with a missing slice, a stray text file, a truncated file).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.dicom_writer import write_series_from_affine
from preprocessing.synthetic.planning import BROKEN_KINDS, BrokenPlan, SubjectPlan, VisitPlan
from preprocessing.synthetic.rendering import RenderedScan


def _session_folder(date: str, clock: str, minutes: int = 0) -> str:
    """ADNI's acquisition folder name, ``YYYY-MM-DD_HH_MM_SS.0``, ``minutes`` after the visit's start."""
    moment = dt.datetime.fromisoformat(f"{date}T{clock[:2]}:{clock[2:4]}:{clock[4:6]}") + dt.timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%d_%H_%M_%S.0")


def _dicom_tags(subject: SubjectPlan, visit: VisitPlan, minutes: int = 0) -> dict[str, Any]:
    """Header tags of one series that are not geometry: dates and times, patient sex and age, field strength."""
    moment = dt.datetime.fromisoformat(f"{visit.date}T{visit.time[:2]}:{visit.time[2:4]}:{visit.time[4:6]}")
    moment += dt.timedelta(minutes=minutes)
    date, clock = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")
    return {
        "StudyDate": visit.date.replace("-", ""),
        "StudyTime": visit.time,
        "SeriesDate": date,
        "SeriesTime": clock,
        "AcquisitionDate": date,
        "AcquisitionTime": clock,
        "ContentDate": date,
        "ContentTime": clock,
        "PatientSex": subject.sex,
        "PatientAge": f"{int(visit.age):03d}Y",
        "MagneticFieldStrength": subject.field_strength,
        "MRAcquisitionType": "3D",
        "StudyDescription": "ADNI-like synthetic cohort",
        "InstitutionName": "Synthetic (not ADNI data)",
        "BodyPartExamined": "BRAIN",
    }


def _write_broken(
    out: Path, subject: SubjectPlan, visit: VisitPlan, scan: RenderedScan, extra: BrokenPlan
) -> dict[str, Any]:
    """Write one broken image (a repeat of the visit's scan, or a localizer) as :data:`BROKEN_KINDS` describes."""
    # Minutes after the visit's MPRAGE: the localizer comes first, repeats after it.
    minutes = {"localizer": -2, "missing_slice": 12, "non_dicom_file": 14, "truncated_file": 16}[extra.kind]
    folder_name = extra.description.replace(" ", "_")
    folder = out / "ADNI" / subject.subject / folder_name / _session_folder(visit.date, visit.time, minutes)
    folder = folder / extra.image_id
    common = {
        "patient_id": subject.subject,
        "series_description": extra.description,
        "uid_seed": f"{subject.subject}/{extra.image_id}/{visit.seed}/{extra.kind}",
        "extra_tags": _dicom_tags(subject, visit, minutes),
    }
    if extra.kind == "localizer":
        _write_localizer(folder, scan, common)
    else:
        drop = (scan.volume.shape[2] // 2,) if extra.kind == "missing_slice" else ()
        paths = write_series_from_affine(
            folder, scan.volume, scan.geometry.affine, series_number=3, drop_slices=drop,
            file_prefix=f"ADNI_{subject.subject}_MR_{folder_name}_{extra.image_id}", **common,
        )  # fmt: skip
        if extra.kind == "non_dicom_file":
            (folder / "notes.txt").write_text("scan notes: patient moved, repeated\n")
        elif extra.kind == "truncated_file":
            victim = paths[len(paths) // 2]
            data = victim.read_bytes()
            victim.write_bytes(data[: len(data) // 2])
    return {
        "kind": extra.kind,
        "subject": subject.subject,
        "group": subject.group,
        "sex": subject.sex,
        "age": visit.age,
        "visit": visit.visit,
        "acq_date": visit.date,
        "atrophy": visit.disease,
        "image_id": extra.image_id,
        "description": extra.description,
        "expected": BROKEN_KINDS[extra.kind],
        "dicom_dir": str(folder.relative_to(out)),
    }


def _write_localizer(folder: Path, scan: RenderedScan, common: dict[str, Any]) -> None:
    """Three single-slice series files through the middle of the scan, sagittal, coronal and axial, sharing one
    series UID: the planning scan that comes before an MPRAGE.
    """
    volume, affine = scan.volume, scan.geometry.affine
    ni, nj, nk = volume.shape
    # The stored grid's axes run A->P (i), S->I (j), L->R (k); each plane keeps two of them.
    planes = {
        "sagittal": (volume[:, :, nk // 2][:, :, None], affine @ _axes_affine((0, 1, 2), (0, 0, nk // 2))),
        "coronal": (volume[ni // 2, :, :].T[:, :, None], affine @ _axes_affine((2, 1, 0), (ni // 2, 0, 0))),
        "axial": (volume[:, nj // 2, :].T[:, :, None], affine @ _axes_affine((2, 0, 1), (0, nj // 2, 0))),
    }
    series_uid = None
    for offset, (plane, (pixels, plane_affine)) in enumerate(planes.items()):
        written = write_series_from_affine(
            folder, pixels, plane_affine, series_number=1, series_uid=series_uid, instance_offset=offset,
            file_prefix=f"localizer_{plane}", **common,
        )  # fmt: skip
        if series_uid is None:
            import pydicom

            series_uid = str(pydicom.dcmread(written[0], stop_before_pixels=True).SeriesInstanceUID)


def _axes_affine(order: tuple[int, int, int], start: tuple[int, int, int]) -> np.ndarray:
    """Voxel map from a plane's (i, j, k) to the stored grid: plane axis n runs along stored axis ``order[n]``."""
    matrix = np.zeros((4, 4))
    for plane_axis, stored_axis in enumerate(order):
        matrix[stored_axis, plane_axis] = 1.0
    matrix[:3, 3] = start
    matrix[3, 3] = 1.0
    return matrix
