"""What discovery produces: a :class:`Scan` per image to use, a :class:`Skipped` per image, folder or row left out,
and the :class:`Discovery` that holds them with the warnings; the labels of the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preprocessing.adni.series import DEFAULT_EXCLUDE_PATTERNS, DEFAULT_MPRAGE_PATTERNS
from preprocessing.tables import DiscoveryWarning, json_record, normalize_group

#: Labels used for training: AD is the positive class.
LABELS: dict[str, int] = {"AD": 1, "CN": 0}
#: Diagnoses that exist in ADNI but are not part of the AD vs CN task.
EXCLUDED_GROUPS: frozenset[str] = frozenset({"MCI", "EMCI", "LMCI", "SMC"})
#: Image formats accepted in a ``--nifti-csv`` list (compared case-insensitively).
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mgz")

_LABEL_TABLE_FIX = "--label-table (ADNIMERGE.csv with PTID and DX_bl, or a subject,label CSV)"


@dataclass(frozen=True)
class Scan:
    """One image to use, with its label (AD = 1, CN = 0) and what later stages need to find and describe it.

    ``subject`` is normalised (``AD_109_S_1192`` -> ``109_S_1192``), ``subject_raw`` the cell as written (stripped).
    ``dicom_dir`` is the image's DICOM folder (None when discovery ran without a download, or for NIfTI input);
    ``nifti_path`` is set for NIfTI input. ``label_source`` says where the diagnosis came from
    (``"collection_csv"``, ``"label_table"`` or ``"nifti_csv"``).
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

    def as_record(self) -> dict[str, Any]:
        """A JSON-serialisable dict (paths as strings)."""
        return json_record(self)


@dataclass(frozen=True)
class Skipped:
    """An image (or folder, or CSV row) left out, with a short ``category`` for counting and a readable ``reason``.

    Categories: ``bad_row``, ``duplicate_input`` (the row lists an image or file another row already lists: one scan
    is kept, the reason names that row), ``duplicate_folder``, ``not_mri``, ``not_mprage``, ``group_excluded``,
    ``no_label``, ``label_conflict``, ``folder_missing``, ``no_csv_row``, ``unmatched_folder``, ``subject_mismatch``,
    ``file_missing``, ``unsupported_format``. ``description`` and ``group`` are the row's values as written, kept
    so that the summary can say which option would have selected it.
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

    ``source`` (``"adni"``/``"nifti"``), ``include_patterns``/``exclude_patterns`` and ``label_table`` record how it
    ran, so that :func:`discovery_hints` can name the option that would select what was skipped.
    """

    scans: list[Scan] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[DiscoveryWarning] = field(default_factory=list)
    source: str = "adni"
    include_patterns: tuple[str, ...] = DEFAULT_MPRAGE_PATTERNS
    exclude_patterns: tuple[str, ...] = DEFAULT_EXCLUDE_PATTERNS
    label_table: Path | None = None

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
    return group in LABELS or group in EXCLUDED_GROUPS
