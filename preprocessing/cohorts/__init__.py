"""Discovery in cohorts other than an ADNI download: BIDS datasets, OASIS-1 and OASIS-3.

Every reader ends where ADNI's does, in a :class:`preprocessing.adni.Discovery` of :class:`~preprocessing.adni.Scan`
records (``source`` ``"bids"``, ``"oasis1"`` or ``"oasis3"``, the image as ``nifti_path``) and
:class:`~preprocessing.adni.Skipped` ones with reasons, so ``discover``, ``run``, the manifest and ``split`` work on
them unchanged. Scans carry their session, and the CDR and MMSE where the cohort's tables have them; labels index the
class list given at discovery (``CN,AD`` by default, ``CN,MCI,AD``). One person keeps one class: a session whose
class differs from the subject's first labelled session is left out as ``label_changed``.

Modules: :mod:`.bids` (a BIDS dataset, diagnosis from its tables or a label table), :mod:`.oasis3` (OASIS-3 MR
sessions matched to clinical assessments by days since entry), :mod:`.oasis1` (OASIS-1's raw Analyze MPRAGE
repetitions with ``oasis_cross-sectional.csv``), :mod:`.analyze` (Analyze to NIfTI with a known orientation, used by
the batch) and :mod:`.common` (CDR stages, label tables by session, one class per subject).
"""

from preprocessing.cohorts.bids import RUN_CHOICES, discover_bids
from preprocessing.cohorts.common import cdr_stage, load_session_labels
from preprocessing.cohorts.oasis1 import discover_oasis1, find_oasis1_csv
from preprocessing.cohorts.oasis3 import DEFAULT_WINDOW_DAYS, discover_oasis3, session_days

__all__ = [
    "DEFAULT_WINDOW_DAYS", "RUN_CHOICES", "cdr_stage", "discover_bids", "discover_oasis1", "discover_oasis3",
    "find_oasis1_csv", "load_session_labels", "session_days",
]  # fmt: skip
