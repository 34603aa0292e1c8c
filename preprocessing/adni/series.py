"""Which series discovery selects: description patterns (case-insensitive ``re.search``), the ``--series`` presets,
and how to say which option would select a description that was rejected.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from preprocessing.adni.records import Discovery

#: Description patterns (case-insensitive ``re.search``) for the T1w MPRAGE series the dissertation used:
#: MPRAGE / MP-RAGE / MP RAGE, including repeats, but not the accelerated (parallel-imaging) variants of ADNI-2+.
DEFAULT_MPRAGE_PATTERNS: tuple[str, ...] = (r"^(?!.*accelerat).*mp[\s_-]*rage",)
#: Opt-in patterns that also accept accelerated MPRAGE (e.g. "Accelerated Sagittal MPRAGE").
ANY_MPRAGE_PATTERNS: tuple[str, ...] = (r"mp[\s_-]*rage",)
#: ADNI's pre-processed MPRAGE exports: ``MPR; GradWarp; B1 Correction``, ``MPR-R; GradWarp`` (repeat),
#: ``MPR; GradWarp; B1 Correction; N3; Scaled``, ``MT1; N3m``, ``MT1; GradWarp; N3m``. Only those: raw ``MPRAGE``
#: of the same visit would count the acquisition twice.
ADNI_PROCESSED_PATTERNS: tuple[str, ...] = (r"^\s*MPR(?:-R)?\s*;", r"^\s*MT1\s*;")
#: ``--series`` presets by name: the one source of the include patterns the command line offers.
SERIES_PRESETS: dict[str, tuple[str, ...]] = {
    "mprage": DEFAULT_MPRAGE_PATTERNS,
    "any-mprage": ANY_MPRAGE_PATTERNS,
    "adni-processed": ADNI_PROCESSED_PATTERNS,
}
DEFAULT_SERIES = "mprage"
#: Descriptions rejected even when an include pattern matches: planning and calibration scans.
DEFAULT_EXCLUDE_PATTERNS: tuple[str, ...] = (r"locali[sz]er", r"calibration", r"scout", r"survey", r"3[\s_-]*plane")


def series_patterns(series: str | None = None, include_patterns: Sequence[str] | None = None) -> tuple[str, ...]:
    """The include patterns of ``--series`` and ``--include-pattern``.

    Include patterns replace the default series, or add to one named explicitly: ``series_patterns(None, [p])`` is
    ``(p,)``, ``series_patterns("adni-processed", [p])`` is the preset plus ``p``.
    """
    if series is not None and series not in SERIES_PRESETS:
        raise ValueError(f"unknown series preset {series!r}; choose one of {', '.join(SERIES_PRESETS)}")
    extra = tuple(include_patterns or ())
    if series is None:
        return extra or SERIES_PRESETS[DEFAULT_SERIES]
    return SERIES_PRESETS[series] + extra


def select_description(
    description: str,
    include_patterns: Sequence[str] = DEFAULT_MPRAGE_PATTERNS,
    exclude_patterns: Sequence[str] = DEFAULT_EXCLUDE_PATTERNS,
) -> bool:
    """True when ``description`` matches an include pattern and no exclude pattern (case-insensitive search)."""
    text = description or ""
    return any(re.search(p, text, re.IGNORECASE) for p in include_patterns) and not any(
        re.search(p, text, re.IGNORECASE) for p in exclude_patterns
    )


def _pattern_for(description: str) -> str:
    """An ``--include-pattern`` that selects exactly this description, readable on a shell line."""
    return shlex.quote("^" + re.escape(description).replace("\\ ", " ") + "$")


def _series_fix(description: str, discovery: Discovery) -> str:
    """How to select a rejected description: the presets that accept it, else an include pattern."""
    presets = [
        name
        for name, patterns in SERIES_PRESETS.items()
        if tuple(patterns) != discovery.include_patterns
        and select_description(description, patterns, discovery.exclude_patterns)
    ]
    if presets:
        return " or ".join(f"--series {name}" for name in presets) + " accepts it"
    if any(re.search(p, description or "", re.IGNORECASE) for p in discovery.exclude_patterns):
        return "it is a planning or calibration series (excluded)"
    return f"--include-pattern {_pattern_for(description)} would accept it"
