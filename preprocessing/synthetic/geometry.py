"""Where a scan sits: the subject's own affine and smooth deformation, the visit's repositioning, and the sagittal
acquisition grid (as stored in DICOM, and as dicom2nifti will convert it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from preprocessing.synthetic.planning import SubjectPlan

# Field of view of the sagittal acquisition (L-R, A-P, S-I) in mm, centred on this point of the head (MNI mm).
FIELD_OF_VIEW_MM: tuple[float, float, float] = (192.0, 240.0, 256.0)
_HEAD_CENTRE_MNI = (0.0, -17.0, -22.0)


@dataclass(frozen=True)
class ScanGeometry:
    """The stored (DICOM) grid of a scan: ``volume[i, j, k]`` with i along rows (A->P), j down (S->I), k to the right.

    ``affine`` maps (i, j, k) to scanner RAS mm; :meth:`nifti` gives the grid dicom2nifti makes of it.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k (mm)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def nifti(self) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
        """``(shape, affine, orientation transform)`` of the converted NIfTI: dicom2nifti reorients to LAS."""
        current = nib.orientations.io_orientation(self.affine)
        transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(("L", "A", "S")))
        affine = self.affine @ nib.orientations.inv_ornt_aff(transform, self.shape)
        shape = tuple(int(self.shape[int(axis)]) for axis in np.argsort(transform[:, 0]))
        return shape, affine, transform


def acquisition_geometry(subject: SubjectPlan, visit_index: int = 0) -> ScanGeometry:
    """Sagittal whole-head acquisition for one visit: the field of view of :data:`FIELD_OF_VIEW_MM`, centred on the
    subject's head as positioned at that visit (give or take 3 mm), with the subject's voxel sizes.
    """
    spacing = np.array([subject.in_plane_mm, subject.in_plane_mm, subject.slice_mm])
    fov_lr, fov_ap, fov_si = FIELD_OF_VIEW_MM
    shape = (int(round(fov_ap / spacing[0])), int(round(fov_si / spacing[1])), int(round(fov_lr / spacing[2])))
    pose = head_pose(subject, visit_index)
    rng = np.random.default_rng([subject.seed, 20, visit_index])
    centre = (pose @ np.append(_HEAD_CENTRE_MNI, 1.0))[:3] + rng.uniform(-3.0, 3.0, 3)
    # Rows run A->P (RAS -y), columns S->I (-z), slices L->R (+x): the writer's "sagittal" orientation.
    directions = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing
    extent = (np.array(shape) - 1) * spacing
    corner_offset = directions @ (extent / 2.0)
    affine[:3, 3] = np.round(centre - corner_offset, 3)
    return ScanGeometry(shape=shape, affine=affine)


def _rotation(degrees: Sequence[float]) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    rx, ry, rz = np.deg2rad(np.asarray(degrees, dtype=float))
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return z @ y @ x


def subject_transform(subject: SubjectPlan) -> dict[str, list[float]]:
    """The subject's own affine: per-axis scale (head size), rotation (degrees) and translation (mm)."""
    rng = np.random.default_rng([subject.seed, 1])
    # Centred below 1: the MNI152 brain is larger than most individual brains.
    scale = rng.uniform(0.86, 0.98) * rng.uniform(0.97, 1.03, 3)
    return {
        "scale": [round(float(v), 5) for v in scale],
        "rotation_deg": [round(float(v), 4) for v in rng.uniform(-6.0, 6.0, 3)],
        "translation_mm": [round(float(v), 3) for v in rng.uniform(-4.0, 4.0, 3)],
    }


def head_pose(subject: SubjectPlan, visit_index: int = 0) -> np.ndarray:
    """4x4 map from MNI mm to scanner RAS mm: the subject's affine (about the head centre) and the visit's
    repositioning (rotations of about 1 degree, shifts of about 1.5 mm).
    """
    params = subject_transform(subject)
    rng = np.random.default_rng([subject.seed, 10, visit_index])
    centre = np.asarray(_HEAD_CENTRE_MNI)
    linear = _rotation(params["rotation_deg"]) @ np.diag(params["scale"])
    subject_affine = np.eye(4)
    subject_affine[:3, :3] = linear
    subject_affine[:3, 3] = np.asarray(params["translation_mm"]) - linear @ centre
    visit = np.eye(4)
    visit[:3, :3] = _rotation(rng.normal(0.0, 1.0, 3))
    visit[:3, 3] = rng.normal(0.0, 1.5, 3)
    return visit @ subject_affine


def _subject_deformation(subject: SubjectPlan) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The subject's smooth random backward displacement (3, x, y, z) on a 10 mm MNI grid, its origin and step, and
    its RMS amplitude (1.5-3 mm; correlation length about 20 mm, so it changes shapes without folding them).
    """
    rng = np.random.default_rng([subject.seed, 2])
    step = 10.0
    lo = np.array([-140.0, -180.0, -230.0])
    shape = (29, 34, 40)
    noise = rng.standard_normal((3, *shape)).astype(np.float32)
    field_ = np.stack([ndi.gaussian_filter(c, 2.0, mode="nearest") for c in noise])
    amplitude = float(rng.uniform(1.5, 3.0))
    field_ *= amplitude / float(np.sqrt(np.mean(field_**2)))
    return field_, lo, step, amplitude
