"""Automatic scan quality control: refuse what the model cannot judge, with a reason a person can act on.

The chain turns almost anything into a 128³ volume in [0, 1] (a fruit, a 2D thick-slice series, noise), so nothing
downstream notices when the input was never a 3D T1 brain. Two checks, each a :class:`QCResult` (pass/warn/fail, the
reasons, every measured number for the manifest):

- :func:`assess_input`, before the chain, from the NIfTI header (and the DICOM headers when there are any):
  3D acquisition, slice spacing and thickness, field of view of a head, voxels per axis.
- :func:`assess_output`, on the chain's model-ready volume (cropped to the mask and resized to a cube; the affine
  keeps the world extent, so volumes are in ml): brain-mask volume, connectedness and compactness, the T1 contrast
  of darker cortex over brighter white matter, and agreement with the MNI152 brain after a fast affine alignment.

Thresholds live in the ``"qc"`` section of ``configs/preprocess.json``; callers override single keys. The measures
of the output check are in :mod:`scripts.quality_measures`; every name there is importable from here too.

Thresholds were set from measurements (deepbet, 2 mm, 32³ unless noted) with margin on both sides: 9 synthetic heads
(6 of the demo cohort, 2.0-2.5 mm; 64³ and 128³ too) gave 1150-1750 ml, compactness 0.81-0.87, surface contrast
0.28-0.33, template Dice 0.96-0.97 and correlation 0.74-0.85. A fruit phantom gave surface contrast 0.10-0.12, Dice
0.91, correlation 0.24-0.27; a noise cube 660 ml, 0.09, 0.85, 0.08; masks dilated by 8 mm Dice 0.86, a whole-head
mask 2900 ml and Dice 0.77, a mask missing the top third Dice 0.92 and correlation 0.51 (warn).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom

# assess_output calls the measures through this module's names, so replacing one here (e.g. template_agreement in
# a test) changes what it calls; the other names are re-exported (``as``) so they stay importable from here.
from .quality_measures import _DEPTH_PERCENTILES as _DEPTH_PERCENTILES
from .quality_measures import _FIT_BINS as _FIT_BINS
from .quality_measures import _MIN_FIT_VALUES as _MIN_FIT_VALUES
from .quality_measures import REGISTRATION_SEED as REGISTRATION_SEED
from .quality_measures import _largest_component as _largest_component
from .quality_measures import _template as _template
from .quality_measures import (
    bimodality,
    brain_volume_ml,
    compactness,
    largest_component_fraction,
    surface_contrast,
    template_agreement,
)

QC_STATUSES = ("pass", "warn", "fail")
CONFIG_FILE = Path(__file__).resolve().parents[1] / "configs" / "preprocess.json"


@dataclass
class QCResult:
    """The verdict on one scan: ``status`` is the worst finding, each reason names a measure, its value and the
    threshold it missed, and ``measures`` holds every measured number (for the manifest)."""

    status: str = "pass"
    reasons: list[str] = field(default_factory=list)
    measures: dict[str, float | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in QC_STATUSES:
            raise ValueError(f"QC status must be one of {QC_STATUSES}, got {self.status!r}")

    def merged(self, other: QCResult) -> QCResult:
        """Both verdicts in one: the worse status, the reasons of both, all measures (``other``'s win on a clash)."""
        worst = max(self.status, other.status, key=QC_STATUSES.index)
        return QCResult(worst, [*self.reasons, *other.reasons], {**self.measures, **other.measures})

    def as_row(self) -> dict[str, str]:
        """The manifest columns of this verdict."""
        return {"qc_status": self.status, "qc_reasons": "; ".join(self.reasons)}

    def _flag(self, status: str, reason: str) -> None:
        self.reasons.append(reason)
        self.status = max(self.status, status, key=QC_STATUSES.index)


@lru_cache(maxsize=1)
def _config_thresholds() -> dict[str, Any]:
    return json.loads(CONFIG_FILE.read_text())["qc"]


def default_thresholds() -> dict[str, Any]:
    """The ``"qc"`` section of ``configs/preprocess.json`` (a copy: callers may change it)."""
    return copy.deepcopy(_config_thresholds())


def _thresholds(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = default_thresholds()
    unknown = set(overrides or {}) - set(merged)
    if unknown:  # a misspelt key would silently keep the default
        raise KeyError(f"unknown QC threshold(s) {sorted(unknown)}; known: {sorted(merged)}")
    merged.update(overrides or {})
    return merged


def _mm(value: float) -> str:
    """Millimetres with one to two decimals: "5.0 mm", "2.43 mm" (3.04 must not print as 3.0)."""
    text = f"{float(value):.2f}".rstrip("0")
    return f"{text}0 mm" if text.endswith(".") else f"{text} mm"


# ---------------------------------------------------------------------------------------------------------- input


def _floats(value: Any) -> list[float]:
    return [float(v) for v in value]


# How each acquisition tag is read: MRAcquisitionType says 2D or 3D, the others give the slice geometry.
_DICOM_TAGS = {
    "MRAcquisitionType": lambda value: str(value).strip().upper(), "SliceThickness": float,
    "SpacingBetweenSlices": float, "ImagePositionPatient": _floats, "ImageOrientationPatient": _floats,
}  # fmt: skip


def dicom_acquisition_headers(dicom_dir: str | Path) -> list[dict[str, Any]]:
    """MRAcquisitionType, SliceThickness, SpacingBetweenSlices, ImagePositionPatient and ImageOrientationPatient of
    every DICOM file of a series folder (pixel data not read); tags a file lacks are left out, files that are not
    DICOM are skipped (conversion reports them)."""
    headers = []
    for path in sorted(p for p in Path(dicom_dir).iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_DICOM_TAGS))
        except Exception:  # noqa: BLE001 - not DICOM, unreadable: the converter gives the reason
            continue
        values = {keyword: getattr(ds, keyword, None) for keyword in _DICOM_TAGS}
        headers.append({k: _DICOM_TAGS[k](v) for k, v in values.items() if v is not None and v != ""})
    return headers


def _slice_step_from_positions(headers: Sequence[Mapping[str, Any]]) -> float | None:
    """Median distance (mm) between neighbouring slices along the slice normal, from ImagePositionPatient."""
    located = [h for h in headers if "ImagePositionPatient" in h and "ImageOrientationPatient" in h]
    if len(located) < 2:
        return None
    cosines = np.asarray(located[0]["ImageOrientationPatient"], dtype=float)
    normal = np.cross(cosines[:3], cosines[3:])
    along = np.sort([float(np.dot(normal, h["ImagePositionPatient"])) for h in located])
    steps = np.diff(along)
    steps = steps[steps > 1e-3]  # repeated positions (several echoes or series) are not a slice step
    return float(np.median(steps)) if steps.size else None


def _check_dicom(result: QCResult, headers: Sequence[Mapping[str, Any]], limits: Mapping[str, Any]) -> None:
    max_spacing = float(limits["max_slice_spacing_mm"])
    kinds = sorted({str(h["MRAcquisitionType"]) for h in headers if "MRAcquisitionType" in h})
    if kinds:
        result.measures["dicom_acquisition_type"] = "/".join(kinds)
    if "2D" in kinds:
        result._flag("fail", "MR acquisition type 2D (a 2D multi-slice series; the model needs a 3D T1 such as MPRAGE)")
    for keyword, measure, label in (
        ("SliceThickness", "dicom_slice_thickness_mm", "slice thickness"),
        ("SpacingBetweenSlices", "dicom_spacing_between_slices_mm", "spacing between slices"),
    ):
        values = [float(h[keyword]) for h in headers if keyword in h]
        if values:
            result.measures[measure] = round(max(values), 4)
            if max(values) > max_spacing:
                result._flag("fail", f"{label} {_mm(max(values))} > {_mm(max_spacing)} (DICOM {keyword}; 2D series?)")
    step = _slice_step_from_positions(headers)
    if step is not None:
        result.measures["dicom_slice_step_mm"] = round(step, 4)
        if step > max_spacing and "dicom_spacing_between_slices_mm" not in result.measures:  # said once
            result._flag("fail", f"slice step {_mm(step)} > {_mm(max_spacing)} (from ImagePositionPatient; 2D series?)")


def assess_input(
    path: str | Path,
    dicom_headers: Sequence[Mapping[str, Any]] | None = None,
    thresholds: Mapping[str, Any] | None = None,
) -> QCResult:
    """Check a scan before the chain: its grid from the NIfTI header of ``path`` and, when given, the acquisition
    tags of the DICOM files it was converted from (:func:`dicom_acquisition_headers`)."""
    limits = _thresholds(thresholds)
    result = QCResult()
    image = nib.load(str(path))
    shape, zooms = tuple(int(n) for n in image.shape), tuple(float(z) for z in image.header.get_zooms())
    if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
        result._flag("fail", f"{int(np.prod(shape[3:]))} volumes in one file (shape {shape}); expected one 3D T1")
    shape, zooms = (shape + (1, 1, 1))[:3], (zooms + (1.0, 1.0, 1.0))[:3]

    fov = [n * z for n, z in zip(shape, zooms, strict=True)]
    result.measures.update(
        input_shape="x".join(str(n) for n in shape),
        input_voxel_size_mm="x".join(f"{z:.4g}" for z in zooms),
        slice_spacing_mm=round(max(zooms), 4),
        fov_min_mm=round(min(fov), 2),
        fov_max_mm=round(max(fov), 2),
        voxels_min_axis=min(shape),
    )
    max_spacing = float(limits["max_slice_spacing_mm"])
    if max(zooms) > max_spacing:
        result._flag("fail", f"slice spacing {_mm(max(zooms))} > {_mm(max_spacing)} (2D thick-slice series?)")
    if min(shape) < int(limits["min_voxels_per_axis"]):
        result._flag("fail", f"voxels per axis {min(shape)} < {limits['min_voxels_per_axis']} (too few for a 3D head)")
    if min(fov) < float(limits["min_fov_mm"]):
        result._flag("fail", f"field of view {_mm(min(fov))} < {_mm(limits['min_fov_mm'])} (too small for a head)")
    if max(fov) > float(limits["max_fov_mm"]):
        result._flag("warn", f"field of view {_mm(max(fov))} > {_mm(limits['max_fov_mm'])} (more than a head?)")
    if dicom_headers:
        _check_dicom(result, dicom_headers, limits)
    return result


# --------------------------------------------------------------------------------------------------------- output


def _as_volume(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[0] == 1:  # channel-first chain output
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3D array, got shape {array.shape}")
    return array


def _threshold_check(result: QCResult, value: float, fail_below: float, warn_below: float, reason: str) -> None:
    """Fail below one limit, warn below the next: ``reason`` is formatted with the value and the limit it missed."""
    if value < float(fail_below):
        result._flag("fail", reason.format(value=value, limit=fail_below))
    elif value < float(warn_below):
        result._flag("warn", reason.format(value=value, limit=warn_below))


def assess_output(
    image: np.ndarray, mask: np.ndarray, affine: np.ndarray, thresholds: Mapping[str, Any] | None = None
) -> QCResult:
    """Check the chain's model-ready volume: ``image`` (scaled to [0, 1]) and its binary brain ``mask`` on one grid,
    ``affine`` the grid's voxel-to-world map (mm)."""
    limits = _thresholds(thresholds)
    image, mask = _as_volume(image, "image").astype(np.float32), _as_volume(mask, "mask") > 0.5
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} are not on one grid")
    result = QCResult()
    volume = brain_volume_ml(mask, affine)
    result.measures["brain_volume_ml"] = round(volume, 1)
    if not mask.any():
        result._flag("fail", "brain mask is empty (skull stripping found no brain)")
        return result
    if not np.isfinite(image[mask]).all():
        result._flag("fail", "non-finite intensities inside the brain mask (cannot judge the scan)")
        return result
    low, high = (float(v) for v in limits["brain_volume_ml"])
    if not low <= volume <= high:
        result._flag("fail", f"brain volume {volume:.0f} ml outside {low:.0f}-{high:.0f} ml (not an adult brain?)")

    connected = largest_component_fraction(mask)
    solid = compactness(mask)
    result.measures.update(largest_component_fraction=round(connected, 4), compactness=round(solid, 4))
    for value, key, text in (
        (connected, "min_largest_component_fraction", "largest connected part of the mask {value:.2f} < {limit}"),
        (solid, "min_compactness", "mask compactness {value:.2f} < {limit} (a brain fills its convex hull)"),
    ):
        _threshold_check(result, value, limits[key], limits[key], text)  # no warning band: either is clear-cut

    contrast = surface_contrast(image, mask, affine)
    result.measures.update(surface_contrast=round(contrast, 4), bimodality=round(bimodality(image[mask])[0], 4))
    _threshold_check(
        result, contrast, limits["min_surface_contrast"], limits["warn_surface_contrast"],
        "surface contrast {value:.2f} < {limit} (no darker cortex over brighter white matter: not a T1 brain?)",
    )  # fmt: skip

    if limits["template_check"]:
        try:
            dice, correlation = template_agreement(image, mask, affine, float(limits["template_resolution_mm"]))
        except Exception as error:  # noqa: BLE001 - a scan the alignment cannot handle is one QC cannot pass
            result._flag("fail", f"template alignment failed ({type(error).__name__}: {error}; cannot judge the scan)")
            return result
        result.measures.update(template_dice=round(dice, 4), template_correlation=round(correlation, 4))
        _threshold_check(
            result, dice, limits["min_template_dice"], limits["warn_template_dice"],
            "template Dice {value:.2f} < {limit} (not a brain, or badly stripped)",
        )  # fmt: skip
        _threshold_check(
            result, correlation, limits["min_template_correlation"], limits["warn_template_correlation"],
            "template correlation {value:.2f} < {limit} (intensities unlike a T1 brain's)",
        )  # fmt: skip
    return result
