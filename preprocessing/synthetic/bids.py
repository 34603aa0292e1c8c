"""The synthetic cohort as a BIDS dataset, named the way Clinica's ``adni-to-bids`` names ADNI: subject
``sub-ADNI002S0295`` (the ADNI id without underscores, so it reads back as ``002_S_0295``), sessions ``ses-M000``,
``ses-M006``... (months from baseline), one ``anat/..._T1w.nii.gz`` per visit, ``participants.tsv`` (sex, baseline
age, ``diagnosis``) and one ``sessions.tsv`` per subject (``acq_time``, age, ``diagnosis``, ``atrophy``: the visit's
AD hippocampal loss from disease, 0 for CN, and the ADNI ``image_id`` the truth files are named by).

The volume is stored on the grid dicom2nifti gives the DICOM series (LAS), so the truth region maps overlay it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib

from preprocessing.synthetic.planning import SubjectPlan, VisitPlan
from preprocessing.synthetic.rendering import RenderedScan


def bids_subject(subject: str) -> str:
    """``002_S_0295`` -> ``ADNI002S0295`` (a BIDS label has letters and digits only)."""
    return "ADNI" + subject.replace("_", "")


def bids_session(visit: VisitPlan) -> str:
    """Months from baseline as Clinica writes them: ``M000``, ``M006``, ``M012``, ``M024``."""
    return f"M{visit.months:03d}"


def bids_t1w(bids_dir: Path, subject: SubjectPlan, visit: VisitPlan) -> Path:
    """Where the visit's T1w image goes."""
    sub, ses = bids_subject(subject.subject), bids_session(visit)
    return bids_dir / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_T1w.nii.gz"


def write_bids_scan(bids_dir: Path, subject: SubjectPlan, visit: VisitPlan, scan: RenderedScan) -> Path:
    """Write the rendered visit as the session's T1w NIfTI (uint16, on the converted DICOM's LAS grid)."""
    _, affine, transform = scan.geometry.nifti()
    volume = nib.orientations.apply_orientation(scan.volume, transform)
    image = nib.Nifti1Image(volume, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    path = bids_t1w(bids_dir, subject, visit)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def write_bids_tables(bids_dir: Path, plans: Sequence[SubjectPlan], records: Sequence[dict[str, Any]]) -> None:
    """``dataset_description.json``, ``participants.tsv`` and each subject's ``sessions.tsv``."""
    bids_dir.mkdir(parents=True, exist_ok=True)
    description = {"Name": "Synthetic ADNI-like cohort with known atrophy (not ADNI data)", "BIDSVersion": "1.8.0",
                   "DatasetType": "raw", "GeneratedBy": [{"Name": "preprocessing.synthetic"}]}  # fmt: skip
    (bids_dir / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")
    scans = {r["image_id"]: r for r in records if r["kind"] == "scan"}
    participants = [["participant_id", "sex", "age", "diagnosis"]]
    for plan in plans:
        sub = f"sub-{bids_subject(plan.subject)}"
        participants.append([sub, plan.sex, f"{plan.visits[0].age:.1f}", plan.group])
        sessions = [["session_id", "acq_time", "age", "diagnosis", "atrophy", "image_id"]]
        for visit in plan.visits:
            if visit.image_id in scans:
                sessions.append([f"ses-{bids_session(visit)}", visit.date, f"{visit.age:.2f}", plan.group,
                                 f"{visit.disease:.6f}", visit.image_id])  # fmt: skip
        _write_tsv(bids_dir / sub / f"{sub}_sessions.tsv", sessions)
    _write_tsv(bids_dir / "participants.tsv", participants)


def _write_tsv(path: Path, rows: Sequence[Sequence[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        csv.writer(handle, delimiter="\t", lineterminator="\n").writerows(rows)
