"""ADNI subject ids (``PTID``): ``<site>_S_<RID>``, e.g. ``109_S_1192``, found inside hand-edited values.

Spreadsheets that went through many hands carry the same participant as ``109_S_1192``, ``AD_109_S_1192``,
``CN64_109_S_1192``, `` 109_s_1192 `` or ``109-S-1192``. If those stayed apart, one person would count as several
subjects and could land in both the training and the test split. :func:`normalize_subject_id` brings every such
spelling to the canonical form; values without an ADNI id (other cohorts' ``sub-01``) are kept as written, stripped.
"""

from __future__ import annotations

import re

# Three-digit site, "S", four- or five-digit RID (ADNI4's RIDs pass 9999), separated by "_", "-", spaces or nothing.
# The digit look-arounds keep "1109_S_11920" from being read as "109_S_1192".
_ADNI_ID = re.compile(r"(?<!\d)(\d{3})[\s_-]*S[\s_-]*(\d{4,5})(?!\d)", re.IGNORECASE)
_CANONICAL = re.compile(r"\d{3}_S_\d{4,5}")


def find_subject_id(value: str) -> str | None:
    """The canonical ADNI id inside ``value`` (``"AD_109_s_1192"`` -> ``"109_S_1192"``), or None.

    None too when the value holds two different ids (``"109_S_1192/109_S_1193"``): picking one would be a guess.
    """
    found = {f"{site}_S_{rid}" for site, rid in _ADNI_ID.findall(str(value))}
    return found.pop() if len(found) == 1 else None


def normalize_subject_id(value: str) -> str:
    """The canonical ``NNN_S_NNNN`` id when ``value`` holds one, otherwise ``value`` stripped of surrounding space."""
    return find_subject_id(value) or str(value).strip()


def is_canonical_subject_id(value: str) -> bool:
    """True for a value that is exactly an ADNI id in canonical form (``"109_S_1192"``)."""
    return _CANONICAL.fullmatch(str(value)) is not None


def subject_key(value: str) -> str:
    """The key under which subjects are compared and counted: normalised, upper case (``"sub-01"`` == ``"SUB-01"``)."""
    return normalize_subject_id(value).upper()
