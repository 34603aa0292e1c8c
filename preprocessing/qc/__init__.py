"""Quality-control pictures for T1 MRI preprocessing.

A failed skull strip, a left-right flip or a scan stored in an unexpected orientation is easy to see and easy to miss
in numbers, so every scan gets one small PNG: the raw scan (as converted) on top, the preprocessed scan (128^3, RAS)
below, each as three orthogonal mid-slices with the brain-mask outline in red. ``qc_page`` collects the PNGs of a whole
run into one HTML page, failures first.

Display convention: **neurological** -- the subject's left is on the viewer's left in the coronal and axial views
(radiological would mirror that). Sagittal views have anterior on the right; superior is up in sagittal and coronal,
anterior is up in axial. Every panel carries its L/R, A/P, S/I edge letters, so the picture does not depend on the
reader knowing the convention.

Both volumes are reoriented to RAS with ``nibabel.as_closest_canonical`` before slicing. That uses the affine (not the
array order), so a scan whose header says it is stored as, say, LIA is displayed right; a scan whose *header* is wrong
(e.g. a flip lost in conversion) is displayed wrong -- which is exactly what the picture is for.

Modules: :mod:`.views` (RAS mid-slices in display order), :mod:`.figure` (the PNG of one scan) and :mod:`.page` (the
HTML page, from the template ``preprocessing/templates/qc_page.html.j2``).
"""

from preprocessing.qc.figure import (
    EXPECTED_PROCESSED_CODES,
    FIG_DPI,
    FIG_PIXELS,
    FIG_SIZE_IN,
    MASK_COLOUR,
    WINDOW_PERCENTILES,
    qc_figure,
)
from preprocessing.qc.page import qc_page
from preprocessing.qc.views import DISPLAY_CONVENTION, EDGE_LABELS, VIEWS, ras_mid_slices, ras_pixel_spacing

__all__ = [
    "DISPLAY_CONVENTION", "EDGE_LABELS", "EXPECTED_PROCESSED_CODES", "FIG_DPI", "FIG_PIXELS", "FIG_SIZE_IN",
    "MASK_COLOUR", "VIEWS", "WINDOW_PERCENTILES", "qc_figure", "qc_page", "ras_mid_slices", "ras_pixel_spacing",
]  # fmt: skip
