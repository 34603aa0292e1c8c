"""What discovery produces: a :class:`Scan` per image to use, a :class:`Skipped` per image, folder or row left out,
and the :class:`Discovery` that holds them with the warnings; the labels of the task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preprocessing.adni.series import DEFAULT_EXCLUDE_PATTERNS, DEFAULT_MPRAGE_PATTERNS
from preprocessing.tables import DiscoveryWarning, json_record, normalize_group

#: Labels of the default task (AD vs CN): AD is the positive class. A class list gives the labels in general.
LABELS: dict[str, int] = {"AD": 1, "CN": 0}
#: Diagnoses that exist in ADNI but are not part of the AD vs CN task.
EXCLUDED_GROUPS: frozenset[str] = frozenset({"MCI", "EMCI", "LMCI", "SMC"})
#: The classes a class list may name, in disease-stage order; a class list keeps this order (its labels index it).
STAGE_ORDER: tuple[str, ...] = ("CN", "MCI", "AD")
#: The default class list: CN = 0, AD = 1, the dissertation's task.
DEFAULT_CLASSES: tuple[str, ...] = ("CN", "AD")
#: Diagnoses that count as MCI when MCI is a class (ADNI splits it into early and late MCI). SMC never is one.
MCI_GROUPS: frozenset[str] = frozenset({"MCI", "EMCI", "LMCI"})
#: Image formats accepted in a ``--nifti-csv`` list (compared case-insensitively). Analyze (``.hdr``/``.img``) is not
#: one: it has no reliable orientation, so it is read only where a cohort's layout is known (OASIS-1, ``--oasis1``).
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mgz")

_LABEL_TABLE_FIX = "--label-table (ADNIMERGE.csv with PTID and DX_bl, or a subject,label CSV)"


@dataclass(frozen=True)
class Scan:
    """One image to use, with its label (its class's index in the class list: AD = 1, CN = 0 by default) and what
    later stages need to find and describe it.

    ``subject`` is normalised (``AD_109_S_1192`` -> ``109_S_1192``), ``subject_raw`` the cell as written (stripped).
    ``dicom_dir`` is the image's DICOM folder (None when discovery ran without a download, or for NIfTI input);
    ``nifti_path`` is set for NIfTI input (an Analyze ``.hdr`` for OASIS-1). ``label_source`` says where the
    diagnosis came from (``"collection_csv"``, ``"label_table"``, ``"nifti_csv"``, ``"sessions_tsv"``,
    ``"participants_tsv"``, ``"clinical_table"``, ``"oasis1_csv"``, ``"oasis1_young"``). ``source`` is ``"adni"``,
    ``"nifti"``, ``"bids"``, ``"oasis1"`` or ``"oasis3"``. ``session`` is the BIDS/OASIS session (``ses-``
    stripped); ``cdr`` (global CDR) and ``mmse`` come from the cohort's tables where they have them; ``atrophy`` is
    the synthetic cohort's AD hippocampal loss from disease (0 for CN), so that metrics can be stratified by stage.
    """

    image_id: str
    subject: str
    group: str
    label: int
    sex: str | None = None
    age: float | None = None
    visit: str | None = None
    acq_date: str | None = None
    description: str | None = None
    dicom_dir: Path | None = None
    source: str = "adni"
    nifti_path: Path | None = None
    label_source: str | None = None
    subject_raw: str | None = None
    session: str | None = None
    cdr: float | None = None
    mmse: float | None = None
    atrophy: float | None = None

    def as_record(self) -> dict[str, Any]:
        """A JSON-serialisable dict (paths as strings)."""
        return json_record(self)


@dataclass(frozen=True)
class Skipped:
    """An image (or folder, or CSV row) left out, with a short ``category`` for counting and a readable ``reason``.

    Categories: ``bad_row``, ``duplicate_input`` (the row lists an image or file another row already lists: one scan
    is kept, the reason names that row), ``duplicate_folder``, ``not_mri``, ``not_mprage``, ``group_excluded``,
    ``no_label``, ``label_conflict``, ``folder_missing``, ``no_csv_row``, ``unmatched_folder``, ``subject_mismatch``,
    ``file_missing``, ``unsupported_format``; the cohort readers add ``not_bids`` (a file name that is not
    ``sub-<label>[_ses-<label>]..._T1w``), ``extra_run`` (another run or MPRAGE repetition of a session, with the
    first one kept), ``no_clinical_match`` (no clinical assessment within the window) and ``label_changed`` (a
    session whose class differs from its subject's first labelled session). ``description`` and ``group`` are the
    row's values as written, kept so that the summary can say which option would have selected it.
    """

    category: str
    reason: str
    image_id: str | None = None
    subject: str | None = None
    path: Path | None = None
    line: int | None = None
    description: str | None = None
    group: str | None = None

    def as_record(self) -> dict[str, Any]:
        """A JSON-serialisable dict (paths as strings)."""
        return json_record(self)


@dataclass
class Discovery:
    """What discovery found: the scans to use, everything left out, and what was read around (``warnings``).

    ``source`` (``"adni"``, ``"nifti"``, ``"bids"``, ``"oasis1"``, ``"oasis3"``), ``include_patterns``/
    ``exclude_patterns``, ``label_table`` and ``classes`` record how it ran, so that :func:`discovery_hints` can name
    the option that would select what was skipped; ``settings`` holds reader options the hints name (e.g. the
    clinical window in days).
    """

    scans: list[Scan] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[DiscoveryWarning] = field(default_factory=list)
    source: str = "adni"
    include_patterns: tuple[str, ...] = DEFAULT_MPRAGE_PATTERNS
    exclude_patterns: tuple[str, ...] = DEFAULT_EXCLUDE_PATTERNS
    label_table: Path | None = None
    classes: tuple[str, ...] = DEFAULT_CLASSES
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts per group (scans, subjects), skipped per category, warnings per category."""
        from preprocessing.adni.report import discovery_summary  # the report builds on these records

        return discovery_summary(self)

    def hints(self) -> list[str]:
        """One line per skip category that an option would fix, naming the option; see :func:`discovery_hints`."""
        from preprocessing.adni.report import discovery_hints

        return discovery_hints(self)


def _usable_group(value: str | None) -> bool:
    group = normalize_group(value)
    return group in STAGE_ORDER or group in EXCLUDED_GROUPS


class ClassListError(ValueError):
    """A class list that cannot be used; the message names the fix."""


def parse_classes(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"CN,MCI,AD"`` (or a sequence of names) as a class list: two or more of CN, MCI, AD in disease-stage order.

    The order is refused rather than fixed, since the labels index the list: ``AD,CN`` would silently swap them.
    """
    if value is None:
        return DEFAULT_CLASSES
    names = [n.strip().upper() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    unknown = [n for n in names if n not in STAGE_ORDER]
    if unknown:
        raise ClassListError(f"unknown class {unknown[0]!r}: choose two or more of {','.join(STAGE_ORDER)}")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ClassListError(f"{','.join(names) or 'nothing'}: give two or more different classes, e.g. CN,AD")
    if names != sorted(names, key=STAGE_ORDER.index):
        raise ClassListError(f"{','.join(names)}: give the classes in disease-stage order, e.g. CN,MCI,AD")
    return tuple(names)


def classes_text(classes: Sequence[str]) -> str:
    """``AD and CN``, ``AD, CN and MCI``: the classes in messages (alphabetical, as the AD/CN messages always were)."""
    names = sorted(classes)
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def class_of(value: str | None, classes: Sequence[str] = DEFAULT_CLASSES) -> tuple[str | None, str | None]:
    """``(class, None)`` for a diagnosis that is one of ``classes``, else ``(None, category)``.

    The category is ``group_excluded`` for a known diagnosis outside the list (MCI in a CN/AD task, SMC always) and
    ``no_label`` for anything else (blank, ``Patient``, ...). EMCI and LMCI count as MCI when MCI is a class.
    """
    group = normalize_group(value)
    if "MCI" in classes and group in MCI_GROUPS:
        group = "MCI"
    if group in classes:
        return group, None
    if group in EXCLUDED_GROUPS or group in STAGE_ORDER:
        return None, "group_excluded"
    return None, "no_label"
