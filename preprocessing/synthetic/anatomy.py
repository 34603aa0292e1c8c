"""What the synthetic scans are made of, in MNI millimetres: the truth regions (labels, ellipsoids, rules) and the
intensity levels of the tissues around the brain. No arrays here: :mod:`.template` turns these into region maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------- what the truth files mean

#: Labels of the truth region maps (``*_regions.nii.gz``). MTL labels exclude the hippocampus; label 6 is deep white
#: matter outside every deformation, a control region (explanations should not focus there; intensities there do not
#: depend on the group).
REGION_LABELS: dict[int, str] = {
    1: "left_hippocampus",
    2: "right_hippocampus",
    3: "left_medial_temporal_lobe",
    4: "right_medial_temporal_lobe",
    5: "lateral_ventricles",
    6: "reference_white_matter",
}
#: Sums of labels that are reported too.
REGION_GROUPS: dict[str, tuple[int, ...]] = {"hippocampi": (1, 2), "medial_temporal_lobes": (3, 4)}


# ---------------------------------------------------------------- anatomy in MNI space (mm)


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in MNI millimetres: centre, direction of its long axis, semi-axes (long, lateral, vertical)."""

    centre: tuple[float, float, float]
    long_axis: tuple[float, float, float]
    semi_axes: tuple[float, float, float]

    def frame(self) -> np.ndarray:
        """Rows: unit long axis, a horizontal axis across it, and their cross product (roughly vertical)."""
        long_axis = np.asarray(self.long_axis, dtype=float)
        long_axis /= np.linalg.norm(long_axis)
        across = np.cross(long_axis, [0.0, 0.0, 1.0])
        across /= np.linalg.norm(across)
        return np.stack([long_axis, across, np.cross(long_axis, across)])

    def radius(self, points: np.ndarray) -> np.ndarray:
        """Normalised radius of ``points`` (..., 3): 1 on the surface, < 1 inside."""
        local = (points - np.asarray(self.centre)) @ self.frame().T / np.asarray(self.semi_axes)
        return np.sqrt(np.sum(local * local, axis=-1))

    def mirrored(self) -> Ellipsoid:
        """The same ellipsoid in the other hemisphere (the 2009a symmetric template is left-right symmetric)."""
        (x, y, z), (ax, ay, az) = self.centre, self.long_axis
        return Ellipsoid((-x, y, z), (-ax, ay, az), self.semi_axes)


# Hippocampus: checked on slices of the template (see save_region_overview): the grey-matter band under the temporal
# horn from the head (y ~ -8, z ~ -22) to the tail (y ~ -38, z ~ -4), running back, up and slightly medially.
_RIGHT_HIPPOCAMPUS = Ellipsoid((28.0, -22.0, -14.0), (-0.15, -0.85, 0.45), (21.0, 7.0, 5.5))
# Medial temporal lobe: a larger ellipsoid around it (amygdala, entorhinal and parahippocampal cortex).
_RIGHT_MTL = Ellipsoid((25.0, -16.0, -20.0), (-0.15, -0.85, 0.45), (30.0, 11.5, 11.5))
HIPPOCAMPI: dict[str, Ellipsoid] = {"left": _RIGHT_HIPPOCAMPUS.mirrored(), "right": _RIGHT_HIPPOCAMPUS}
MEDIAL_TEMPORAL_LOBES: dict[str, Ellipsoid] = {"left": _RIGHT_MTL.mirrored(), "right": _RIGHT_MTL}
#: Lateral ventricles: CSF-dark voxels inside the brain within this box (|x| range, y range, z range), largest
#: connected component per hemisphere (frontal horns, bodies, atria; not the temporal horns).
VENTRICLE_BOX: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] = ((2, 32), (-55, 28), (-2, 32))
_CSF_THRESHOLD = 0.45  # template T1 (0..1): CSF ~0.28, grey matter ~0.65, white matter ~0.87
_GM_THRESHOLD = 0.3
#: Reference white matter: spheres in the centrum semiovale, white-matter probability > 0.95.
REFERENCE_WM_SPHERES: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((-28.0, -12.0, 40.0), 8.0),
    ((28.0, -12.0, 40.0), 8.0),
)

# Profile of the shells around the brain (template T1 units) and of the neck; thicknesses are drawn per subject.
_CSF_LEVEL = 0.22
_BONE_LEVEL = 0.05
_MARROW_LEVEL = 0.35
_FAT_LEVEL = 0.95
_SKIN_LEVEL = 0.6
_MUSCLE_LEVEL = 0.42
_CORD_LEVEL = 0.75
_WHITE_MATTER_LEVEL = 0.87  # template white matter; noise is a fraction of it
