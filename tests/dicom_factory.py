"""Synthetic DICOM series for the conversion tests: the writer lives in :mod:`preprocessing.dicom_writer`.

This module re-exports it under the names the tests have always used and adds :func:`ramp_volume`, a test pattern.
"""

from __future__ import annotations

import numpy as np

from preprocessing.dicom_writer import (  # noqa: F401  (re-exported for the tests)
    LPS_TO_RAS,
    ORIENTATIONS,
    orientation_cosines,
    quantize,
    series_affine,
    series_geometry_from_affine,
    write_series,
    write_series_from_affine,
)


def ramp_volume(shape: tuple[int, int, int] = (12, 10, 8)) -> np.ndarray:
    """A volume whose every voxel holds a distinct value (its flat index + 1), so any flip or swap is visible."""
    return (np.arange(int(np.prod(shape)), dtype=np.int64) + 1).reshape(shape)
