"""Analyze 7.5 (``.hdr``/``.img``) images to NIfTI with an explicit orientation, before the chain reads them.

Analyze has no reliable orientation: readers disagree (nibabel assumes a radiological transverse volume and ignores
the header's ``orient`` byte, ITK reads the byte), so the same file would enter the chain differently depending on
the reader, and QC pictures (nibabel) would not show what the chain (MONAI) saw. The batch therefore converts every
Analyze input to ``<out>/nifti/<subject>_<image_id>.nii.gz`` first, with the voxel axes given by:

- the cohort's known layout (:data:`LAYOUTS`): OASIS-1's raw MPRAGE repetitions are sagittal, stored with the first
  axis running posterior to anterior, the second inferior to superior and the third right to left (axis codes
  ``A, S, L``; the sform A. Winkler gives for converting OASIS with FSL, ``0 0 -1.25 0 / 1 0 0 0 / 0 1 0 0``, and the
  vitamin E capsule OASIS placed by the left temple shows the side). Their header's ``orient`` byte does not say so.
- otherwise the header's ``orient`` byte, read as the Analyze 7.5 convention (0 transverse, 1 coronal, 2 sagittal,
  unflipped; see :data:`ORIENT_AXES`); 0 is also what a header without one holds.

A NIfTI pair (``.hdr`` with the NIfTI magic) has a real orientation and keeps it. The origin is the volume's centre.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

ANALYZE_SUFFIXES = (".hdr", ".img")
#: Voxel axis codes (nibabel's: the direction each axis points to) of cohorts whose Analyze layout is known.
LAYOUTS: dict[str, tuple[str, str, str]] = {"oasis1": ("A", "S", "L")}
#: Analyze 7.5 ``orient`` codes: 0 transverse (R->L, P->A, I->S), 1 coronal (R->L, I->S, P->A), 2 sagittal
#: (P->A, I->S, R->L); the "flipped" codes 3-5 only ever served Analyze's own display and are read as 0-2.
ORIENT_AXES: dict[int, tuple[str, str, str]] = {0: ("L", "A", "S"), 1: ("L", "S", "A"), 2: ("A", "S", "L")}


def is_analyze(path: Path | str) -> bool:
    """True for an ``.hdr`` or ``.img`` file name (an Analyze or NIfTI pair)."""
    return Path(path).suffix.lower() in ANALYZE_SUFFIXES


def axes_affine(shape: Sequence[int], zooms: Sequence[float], axcodes: Sequence[str]) -> np.ndarray:
    """The voxel-to-RAS affine of a volume whose voxel axes point to ``axcodes``, with the volume centred on 0."""
    orientation = nib.orientations.axcodes2ornt(tuple(axcodes))
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, (world, sign) in enumerate(orientation):
        affine[int(world), axis] = sign * float(zooms[axis])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape[:3], dtype=float) - 1.0) / 2.0)
    return affine


def header_orient(header: nib.analyze.AnalyzeHeader) -> int:
    """The ``orient`` byte as 0-2 (a binary 0-5 or an ASCII digit; anything else reads as 0, transverse)."""
    raw = bytes(np.asarray(header["orient"]).tobytes())[:1]
    value = int(raw) if raw.isdigit() else (raw[0] if raw else 0)
    return value % 3 if 0 <= value <= 5 else 0


def analyze_axcodes(path: Path | str, layout: str | None = None) -> tuple[str, str, str] | None:
    """The axis codes the conversion gives ``path``: the cohort's layout, else the header's; None for a NIfTI pair."""
    image = nib.load(str(path))
    if isinstance(image, (nib.Nifti1Pair, nib.Nifti2Pair)):
        return None
    return LAYOUTS.get(layout or "") or ORIENT_AXES[header_orient(image.header)]


def analyze_to_nifti(path: Path | str, out: Path | str, layout: str | None = None) -> Path:
    """Write the Analyze (or NIfTI pair) image ``path`` as the NIfTI ``out`` (atomically); returns ``out``.

    ``layout`` names a cohort of :data:`LAYOUTS` (the batch passes the scan's ``source``). An existing ``out`` is
    kept: the conversion is deterministic, so a resumed batch need not repeat it.
    """
    out = Path(out)
    if out.is_file():
        return out
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    axcodes = analyze_axcodes(path, layout)
    affine = image.affine if axcodes is None else axes_affine(data.shape, image.header.get_zooms()[:3], axcodes)
    converted = nib.Nifti1Image(data, affine)
    converted.set_qform(affine, code=1)
    converted.set_sform(affine, code=1)
    converted.header.set_xyzt_units("mm")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".nii.gz", dir=out.parent)
    os.close(fd)
    try:
        nib.save(converted, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out
