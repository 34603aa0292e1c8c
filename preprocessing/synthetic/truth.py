"""The truth files: each scan's region map and truth JSON (on the grid dicom2nifti gives the converted NIfTI), and
``truth/cohort.json`` with the parameters, region definitions, per-scan truth and a summary by group and visit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from preprocessing.synthetic.anatomy import (
    _CSF_THRESHOLD,
    _GM_THRESHOLD,
    HIPPOCAMPI,
    MEDIAL_TEMPORAL_LOBES,
    REFERENCE_WM_SPHERES,
    REGION_GROUPS,
    REGION_LABELS,
    VENTRICLE_BOX,
    Ellipsoid,
)
from preprocessing.synthetic.bids import bids_t1w
from preprocessing.synthetic.geometry import subject_transform
from preprocessing.synthetic.planning import MPRAGE, VISIT_MONTHS, SubjectPlan, VisitPlan
from preprocessing.synthetic.rendering import RenderedScan
from preprocessing.synthetic.template import Template


def _write_truth(
    truth_dir: Path, subject: SubjectPlan, visit: VisitPlan, scan: RenderedScan, template: Template
) -> dict[str, Any]:
    """The scan's region map (on the grid dicom2nifti will give it) and its truth JSON; returns the JSON's content."""
    truth_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{subject.subject}_{visit.image_id}"
    shape, affine, transform = scan.geometry.nifti()
    labels = nib.orientations.apply_orientation(scan.labels, transform).astype(np.uint8)
    image = nib.Nifti1Image(labels, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, truth_dir / f"{stem}_regions.nii.gz")

    volumes = _named_volumes(scan.volumes_mm3)
    reference = _named_volumes(scan.reference_volumes_mm3)
    change = {name: round(100.0 * (volumes[name] / reference[name] - 1.0), 3) if reference[name] else None
              for name in volumes}  # fmt: skip
    record = {
        "subject": subject.subject,
        "image_id": visit.image_id,
        # The file stem the BIDS layout gives this scan (the BIDS reader's image id): find_truth matches it.
        "bids_image": bids_t1w(Path(), subject, visit).name.removesuffix(".nii.gz"),
        "group": subject.group,
        "label": 1 if subject.group == "AD" else 0,
        "sex": subject.sex,
        "age": visit.age,
        "visit": visit.visit,
        "months": visit.months,
        "acq_date": visit.date,
        "atrophy": visit.disease,
        "description": MPRAGE,
        "regions_nifti": f"{stem}_regions.nii.gz",
        "labels": {str(k): v for k, v in REGION_LABELS.items()},
        "volumes_mm3": volumes,
        "reference_volumes_mm3": reference,
        "percent_change": change,
        "nominal": {
            "hippocampus_loss": visit.hippocampus_loss,
            "medial_temporal_lobe_loss": visit.mtl_loss,
            "ventricle_growth": visit.ventricle_growth,
            "disease_hippocampus_loss": visit.disease,
        },
        "geometry": {
            "nifti_shape": list(shape),
            "voxel_mm": [round(v, 6) for v in (scan.geometry.spacing[2], *scan.geometry.spacing[:2])],
            "nifti_affine": np.round(affine, 6).tolist(),
            "nifti_orientation": "".join(nib.aff2axcodes(affine)),
            "dicom_shape": list(scan.geometry.shape),
            "dicom_orientation": "".join(nib.aff2axcodes(scan.geometry.affine)),
        },
        "rendering": scan.info,
        "template_volumes_mm3": _named_volumes(template.volumes_mm3),
    }
    note = {
        "about": "Ground truth of a synthetic scan. volumes_mm3: regions of this scan, counted in the regions "
        "NIfTI; reference_volumes_mm3: the same subject, pose and grid without any atrophy (age or disease); "
        "percent_change: 100 * (volume / reference - 1). Labels: MTL excludes the hippocampus; label 6 is a control "
        "region of deep white matter that no deformation touches."
    }
    (truth_dir / f"{stem}_truth.json").write_text(json.dumps({**note, **record}, indent=2) + "\n")
    return record


def find_truth(truth_dir: str | Path, stem: str) -> Path | None:
    """The truth JSON of the model-ready image ``<stem>.nii.gz``, which the chain names ``<subject>_<image id>``:
    the image id is the ADNI one (``I12345``) for the DICOM layout and the BIDS file stem for the BIDS layout, whose
    truth is found through the ``bids_image`` each truth JSON records. None when the folder has no truth for it."""
    truth_dir = Path(truth_dir)
    direct = truth_dir / f"{stem}_truth.json"
    if direct.is_file():
        return direct
    subject, _, image_id = stem.partition("_sub-")
    if not image_id:
        return None
    for path in sorted(truth_dir.glob(f"{subject}_*_truth.json")):
        try:
            if json.loads(path.read_text()).get("bids_image") == f"sub-{image_id}":
                return path
        except (OSError, ValueError):
            continue
    return None


def _named_volumes(volumes: dict[int, float]) -> dict[str, float]:
    """Volumes by region name, plus the left+right sums of :data:`REGION_GROUPS`, rounded to 0.001 mm^3."""
    named = {REGION_LABELS[label]: round(value, 3) for label, value in volumes.items()}
    for name, members in REGION_GROUPS.items():
        named[name] = round(sum(volumes[m] for m in members), 3)
    return named


def _write_cohort_json(
    path: Path,
    plans: Sequence[SubjectPlan],
    records: Sequence[dict[str, Any]],
    template: Template,
    parameters: dict[str, Any],
) -> None:
    """Everything about the cohort in one file: parameters, template, region definitions, per-scan truth, summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scans = [r for r in records if r["kind"] == "scan"]
    subjects = []
    for plan in plans:
        subjects.append(
            {
                "subject": plan.subject,
                "group": plan.group,
                "sex": plan.sex,
                "voxel_mm": [plan.slice_mm, plan.in_plane_mm, plan.in_plane_mm],
                "field_strength": plan.field_strength,
                "transform": subject_transform(plan),
                "scans": [
                    {
                        key: r[key]
                        for key in (
                            "image_id",
                            "visit",
                            "months",
                            "acq_date",
                            "age",
                            "volumes_mm3",
                            "reference_volumes_mm3",
                            "percent_change",
                            "nominal",
                            "regions_nifti",
                        )
                    }
                    for r in scans
                    if r["subject"] == plan.subject
                ],  # fmt: skip
            }
        )
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for group in ("AD", "CN"):
        for code, _ in VISIT_MONTHS:
            members = [r for r in scans if r["group"] == group and r["visit"] == code]
            if members:
                summary.setdefault(group, {})[code] = {
                    "scans": len(members),
                    **{
                        f"mean_percent_change_{name}": round(
                            float(np.mean([r["percent_change"][name] for r in members])), 2
                        )
                        for name in ("hippocampi", "medial_temporal_lobes", "lateral_ventricles")
                    },
                }
    regions = {
        "hippocampi": {side: _ellipsoid_record(e) for side, e in HIPPOCAMPI.items()},
        "medial_temporal_lobes": {side: _ellipsoid_record(e) for side, e in MEDIAL_TEMPORAL_LOBES.items()},
        "hippocampus_rule": f"grey matter probability > {_GM_THRESHOLD} inside the hippocampus ellipsoid",
        "medial_temporal_lobe_rule": f"grey matter probability > {_GM_THRESHOLD} inside the MTL ellipsoid, "
        "not hippocampus",
        "lateral_ventricles_rule": f"brain voxels with template T1 < {_CSF_THRESHOLD} in |x| {VENTRICLE_BOX[0]}, "
        f"y {VENTRICLE_BOX[1]}, z {VENTRICLE_BOX[2]} (MNI mm), largest connected component per hemisphere",
        "reference_white_matter_rule": "white matter probability > 0.95 within spheres (centre, radius mm) "
        f"{[list(s) for s in REFERENCE_WM_SPHERES]}",
    }
    payload = {
        "about": "Synthetic ADNI-like cohort with known atrophy (preprocessing.synthetic). Not ADNI data.",
        "parameters": parameters,
        "template": template.source,
        "labels": {str(k): v for k, v in REGION_LABELS.items()},
        "regions_mni": regions,
        "template_volumes_mm3": _named_volumes(template.volumes_mm3),
        "summary_by_group_and_visit": summary,
        "subjects": subjects,
        "broken": [
            {k: r[k] for k in ("kind", "subject", "image_id", "description", "expected", "dicom_dir")}
            for r in records
            if r["kind"] != "scan"
        ],  # fmt: skip
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _ellipsoid_record(ellipsoid: Ellipsoid) -> dict[str, list[float]]:
    return {
        "centre": list(ellipsoid.centre),
        "long_axis": list(ellipsoid.long_axis),
        "semi_axes_long_lateral_vertical": list(ellipsoid.semi_axes),
    }
