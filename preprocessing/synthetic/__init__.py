"""A synthetic ADNI-like cohort with known atrophy, written as an ADNI download (DICOM series + collection CSV).

Why: ADNI data cannot be shipped, yet the pipeline (discovery, conversion, skull stripping, resampling, training) and
later the explanations need scans whose disease signal is known exactly. Here every scan is made from a real template
with a recorded, purely anatomical AD effect:

* Anatomy: the MNI152 2009a symmetric T1 template that nilearn bundles (1 mm, skull-stripped, with grey and white
  matter maps). Each subject is the template under a random smooth deformation (a few mm, 20 mm correlation) and a
  random affine (head size, small rotations, translation); both are the subject's own and identical at every visit,
  which only adds a small scan-to-scan repositioning.
* Disease: a smooth backward displacement field shrinks both hippocampi and the medial temporal lobes (a weighted
  scaling about each region's centre, 1 inside the region and smoothly 0 a few mm outside) and enlarges the lateral
  ventricles (a push along the gradient of their smoothed mask). The same field warps intensities and region masks,
  so the recorded volume change is measured from the warped masks rather than taken from the nominal parameter. AD
  subjects get disease on top of the mild age-related change that CN subjects also get; it progresses across their
  visits. No intensity differs by group: gain, bias field and noise come from the same distributions for everyone.
* Scanner: a CSF, skull (with marrow) and scalp shell around the brain and a neck below it (skull stripping has work
  to do), a smooth multiplicative bias field, Rician noise, and a sagittal acquisition stored as DICOM rows A->P,
  columns S->I, slices L->R (not RAS), with voxel sizes of 1.0-1.25 mm and a whole-head field of view.
* Truth per scan, on the grid and with the affine that dicom2nifti gives the converted NIfTI (LAS):
  ``truth/<subject>_<image_id>_regions.nii.gz`` (labels in :data:`REGION_LABELS`) and ``..._truth.json`` (region
  volumes of this scan, of the same subject without any atrophy on the same grid, their percentage change, group,
  visit, age), plus ``truth/cohort.json``.

Everything is deterministic for a seed (file bytes included: DICOM UIDs are derived from the seed) and does not
depend on the number of worker processes. ``python -m preprocessing synth`` is the command line.

The package's modules follow these parts: :mod:`.anatomy` (truth regions and tissue levels), :mod:`.template` (the
MNI template and its region map), :mod:`.planning` (subjects, visits, nominal atrophy), :mod:`.geometry` (head pose
and acquisition grid), :mod:`.rendering` (one scan), :mod:`.dicom` (the DICOM series of a download), :mod:`.truth`
(the truth files) and :mod:`.cohort` (a whole cohort in worker processes).
"""

from preprocessing.synthetic.anatomy import (
    HIPPOCAMPI,
    MEDIAL_TEMPORAL_LOBES,
    REFERENCE_WM_SPHERES,
    REGION_GROUPS,
    REGION_LABELS,
    VENTRICLE_BOX,
    Ellipsoid,
)
from preprocessing.synthetic.cohort import CohortInfo, generate_cohort
from preprocessing.synthetic.geometry import (
    FIELD_OF_VIEW_MM,
    ScanGeometry,
    acquisition_geometry,
    head_pose,
    subject_transform,
)
from preprocessing.synthetic.planning import (
    BROKEN_KINDS,
    DEFAULT_ATROPHY,
    DEFAULT_VENTRICLE_RATIO,
    MPRAGE,
    VISIT_MONTHS,
    BrokenPlan,
    SubjectPlan,
    VisitPlan,
    plan_cohort,
)
from preprocessing.synthetic.rendering import RenderedScan, render_scan
from preprocessing.synthetic.template import (
    Template,
    _region_labels,  # noqa: F401  (analysis.explain.regions labels MNI with it)
    load_template,
    save_region_overview,
)

__all__ = [
    "BROKEN_KINDS", "DEFAULT_ATROPHY", "DEFAULT_VENTRICLE_RATIO", "FIELD_OF_VIEW_MM", "HIPPOCAMPI",
    "MEDIAL_TEMPORAL_LOBES", "MPRAGE", "REFERENCE_WM_SPHERES", "REGION_GROUPS", "REGION_LABELS", "VENTRICLE_BOX",
    "VISIT_MONTHS", "BrokenPlan", "CohortInfo", "Ellipsoid", "RenderedScan", "ScanGeometry", "SubjectPlan", "Template",
    "VisitPlan", "acquisition_geometry", "generate_cohort", "head_pose", "load_template",
    "plan_cohort", "render_scan", "save_region_overview", "subject_transform",
]  # fmt: skip
