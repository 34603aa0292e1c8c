"""Subject ids (ADNI ``109_S_1192``, OASIS ``OAS1_0001`` / ``OAS30001``, BIDS ``sub-<label>``) brought to one form.

The implementation lives in the bundle, :mod:`scripts.subject_ids`, because evaluation compares a test datalist's
subjects with a model's training subjects by the same rules; this module re-exports it so that preprocessing and its
tests keep importing ``preprocessing.subject_ids``. (``import preprocessing`` has loaded the bundle's ``scripts``.)
"""

from __future__ import annotations

from scripts.subject_ids import (
    find_oasis_subject_id,
    find_subject_id,
    is_canonical_subject_id,
    normalize_subject_id,
    subject_key,
)

__all__ = ["find_oasis_subject_id", "find_subject_id", "is_canonical_subject_id", "normalize_subject_id", "subject_key"]
