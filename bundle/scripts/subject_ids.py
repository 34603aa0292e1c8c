"""Subject ids: one person, whatever the spelling, is one subject (splits, label tables, external validation).

Spreadsheets that went through many hands carry the same ADNI participant (``PTID``, ``<site>_S_<RID>``) as
``109_S_1192``, ``AD_109_S_1192``, ``CN64_109_S_1192``, `` 109_s_1192 ``, ``109-S-1192`` or, after Clinica's
``adni-to-bids``, ``sub-ADNI109S1192``. If those stayed apart, one person would count as several subjects and could
land in both the training and the test split, or in a model's training data and its "external" test set.

Two functions, on purpose different:

* :func:`normalize_subject_id` is the id that is shown and written (manifest, datalist): the canonical ADNI id
  (``109_S_1192``) or OASIS subject id found inside the value, otherwise the value as written, stripped.
  OASIS ids name the cohort's subject, not the session, in the cohort's own form: OASIS-1/2 ``OAS1_0001`` (from
  ``OAS1_0001_MR1``, ``OAS1_0001_MR2`` or Clinica's BIDS label ``sub-OAS10001``), OASIS-3/4 ``OAS30001`` (from
  ``sub-OAS30001`` or the session ``OAS30001_MR_d0129``), so that a session id typed as subject cannot make the
  rescan of one person a second subject.
* :func:`subject_key` is what subjects are compared and counted by: the normalised id, upper case, without a BIDS
  ``sub-`` prefix, so ``sub-01`` == ``SUB-01`` == ``01``. Other ids are compared exactly as written otherwise
  (``sub-01`` != ``sub-1`` != ``sub-10``): BIDS labels are strings and leading zeros are part of them.

Lives in the bundle (``scripts.subject_ids``) because evaluation compares a test datalist's subjects with the model's
training subjects; ``preprocessing.subject_ids`` re-exports it for the preprocessing code.
"""

from __future__ import annotations

import re

# Three-digit site, "S", four- or five-digit RID (ADNI4's RIDs pass 9999), separated by "_", "-", spaces or nothing.
# The digit look-arounds keep "1109_S_11920" from being read as "109_S_1192".
_ADNI_ID = re.compile(r"(?<!\d)(\d{3})[\s_-]*S[\s_-]*(\d{4,5})(?!\d)", re.IGNORECASE)
_CANONICAL = re.compile(r"\d{3}_S_\d{4,5}")
# "OAS", the cohort's digit (1-4), an optional "_" or "-", the four-digit subject number: OAS1_0001, OAS10001
# (Clinica's BIDS form of OASIS-1), OAS30001. Not preceded by a letter or digit ("sub-OAS..." is fine); the number is
# not followed by a digit, so "OAS300012" is no OASIS id.
_OASIS_ID = re.compile(r"(?<![A-Za-z0-9])OAS([1-4])[_-]?(\d{4})(?!\d)", re.IGNORECASE)
_BIDS_PREFIX = re.compile(r"^sub-(?=.)", re.IGNORECASE)


def find_subject_id(value: str) -> str | None:
    """The canonical ADNI id inside ``value`` (``"AD_109_s_1192"`` -> ``"109_S_1192"``), or None.

    None too when the value holds two different ids (``"109_S_1192/109_S_1193"``): picking one would be a guess.
    """
    found = {f"{site}_S_{rid}" for site, rid in _ADNI_ID.findall(str(value))}
    return found.pop() if len(found) == 1 else None


def find_oasis_subject_id(value: str) -> str | None:
    """The OASIS subject inside ``value`` in its cohort's form, or None (also for two different subjects).

    ``"OAS1_0001_MR1"``, ``"sub-OAS10001"`` -> ``"OAS1_0001"``; ``"sub-OAS30001"``, ``"OAS30001_MR_d0129"`` ->
    ``"OAS30001"``. OASIS-1 and -2 write subjects with an underscore, OASIS-3 and -4 without, as their releases do.
    """
    found = {f"OAS{cohort}_{number}" if cohort in "12" else f"OAS{cohort}{number}"
             for cohort, number in _OASIS_ID.findall(str(value))}  # fmt: skip
    return found.pop() if len(found) == 1 else None


def normalize_subject_id(value: str) -> str:
    """The canonical ADNI (``NNN_S_NNNN``) or OASIS subject id when ``value`` holds one, otherwise ``value`` stripped
    of surrounding space (``" sub-01 "`` -> ``"sub-01"``: the shown id keeps the BIDS prefix)."""
    return find_subject_id(value) or find_oasis_subject_id(value) or str(value).strip()


def is_canonical_subject_id(value: str) -> bool:
    """True for a value that is exactly an ADNI id in canonical form (``"109_S_1192"``)."""
    return _CANONICAL.fullmatch(str(value)) is not None


def subject_key(value: str) -> str:
    """The key under which subjects are compared and counted: normalised, upper case, without a BIDS ``sub-`` prefix
    (``"sub-01"`` == ``"SUB-01"`` == ``"01"``; ``"sub-OAS30001"`` == ``"OAS30001"``; ``"AD_109_S_1192"`` ==
    ``"109_S_1192"``)."""
    return _BIDS_PREFIX.sub("", normalize_subject_id(value)).upper()
