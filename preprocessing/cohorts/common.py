"""What the cohort readers share: CDR to class, numbers and blank cells of their tables, the order of sessions, one
class per subject, and label tables keyed by subject and session.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from preprocessing.adni.records import Discovery, Scan, Skipped
from preprocessing.subject_ids import subject_key
from preprocessing.tables import (
    _LABEL_SUBJECT_COLUMNS,
    _LABEL_VALUE_COLUMNS,
    DiscoveryWarning,
    Table,
    TableColumnError,
    _pick_column,
    normalise_header,
    normalize_group,
    read_table,
)

#: Where BIDS keeps files that are not raw data of its subjects: never searched for scans.
NOT_RAW_FOLDERS = frozenset({"derivatives", "sourcedata", "code", "stimuli", ".git", ".datalad", ".heudiconv"})
#: Columns of a global CDR (not CDR-SB), of an MMSE, of the session of a row, compared after ``normalise_header``.
CDR_COLUMNS = ("cdr", "cdr global", "cdrglob", "cdrtot", "cdr tot", "global cdr")
MMSE_COLUMNS = ("mmse", "mmse score", "mmsetot", "mmse total")
SESSION_COLUMNS = ("session id", "session", "ses", "session label", "visit", "viscode")
_BLANK = frozenset({"", "n/a", "na", "nan", "none", "."})


def cell(row: dict[str, str], column: str | None) -> str:
    """A cell as text, with BIDS's ``n/a`` (and other spellings of nothing) read as blank."""
    value = row.get(column, "").strip() if column else ""
    return "" if value.lower() in _BLANK else value


def find_column(table: Table, candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` (normalised header names) that the table has, or None."""
    return next((c for c in candidates if c in table.header), None)


def session_key(value: str) -> str:
    """Sessions compared without a BIDS ``ses-`` prefix and case, ADNI's visit codes as Clinica names sessions:
    ``ses-M006`` == ``m006`` == ``m06`` (ADNIMERGE's ``VISCODE``), ``bl`` == ``M000``."""
    key = re.sub(r"^ses-", "", str(value).strip(), flags=re.IGNORECASE).upper()
    months = re.fullmatch(r"M(\d{1,3})", key)
    if months:
        return f"M{int(months.group(1)):03d}"
    return "M000" if key == "BL" else key


def natural_key(text: str) -> tuple:
    """``ses-M6`` before ``ses-M12``, ``run-2`` before ``run-10``: numbers inside labels compared as numbers."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(text)))


def cdr_stage(cdr: float, threshold: float) -> str:
    """The stage a global CDR stands for: 0 is CN, ``threshold`` (0.5 or 1) or more is AD, in between (CDR 0.5 with
    threshold 1) is MCI. Whether that stage is used depends on the class list (:func:`class_of`)."""
    if cdr == 0:
        return "CN"
    return "AD" if cdr >= threshold else "MCI"


def keep_one_class_per_subject(discovery: Discovery, order: Callable[[Scan], tuple]) -> None:
    """Leave out (``label_changed``) every scan whose class differs from its subject's first labelled scan.

    ``order`` sorts a subject's scans by time (session days, date, session label). One person must have one class:
    a subject who converts from CN to AD keeps the CN sessions, and the later ones are reported, naming both labels.
    Only scans that have a class count as labelled (an MCI session of a CN/AD task is already left out).
    """
    by_subject: dict[str, list[Scan]] = {}
    for scan in discovery.scans:
        by_subject.setdefault(subject_key(scan.subject), []).append(scan)
    dropped: set[int] = set()
    for scans in by_subject.values():
        ordered = sorted(scans, key=order)
        first = ordered[0]
        for scan in ordered[1:]:
            if scan.group != first.group:
                where = scan.session or scan.visit or scan.image_id
                reason = (
                    f"{scan.subject} session {where}: {scan.group} here but {first.group} at its first labelled "
                    f"session {first.session or first.visit or first.image_id}; one person keeps one class"
                )
                path = scan.nifti_path or scan.dicom_dir
                ids = {"image_id": scan.image_id, "subject": scan.subject, "path": path, "group": scan.group}
                discovery.skipped.append(Skipped("label_changed", reason, description=scan.description, **ids))
                dropped.add(id(scan))
    discovery.scans = [s for s in discovery.scans if id(s) not in dropped]


@dataclass(frozen=True)
class SessionLabels:
    """Diagnoses by subject and session (``--label-table`` with a session column), or by subject alone.

    Keys are :func:`subject_key` and :func:`session_key`; ``None`` as the session is the subject's label for every
    session. Disagreeing rows of one key are kept apart in ``conflicts``.
    """

    path: Path
    labels: dict[tuple[str, str | None], str]
    conflicts: dict[tuple[str, str | None], tuple[str, ...]]
    warnings: tuple[DiscoveryWarning, ...] = ()

    def lookup(self, subject: str, session: str | None) -> tuple[str | None, tuple[str, ...] | None]:
        """``(label, conflict)`` of a subject's session: the session's row first, then a row without session."""
        for key in ((subject_key(subject), session_key(session) if session else None), (subject_key(subject), None)):
            if key in self.conflicts:
                return None, self.conflicts[key]
            if key in self.labels:
                return self.labels[key], None
        return None, None


def load_session_labels(
    path: Path | str,
    subject_column: str | None = None,
    label_column: str | None = None,
    session_column: str | None = None,
) -> SessionLabels:
    """Diagnoses from a table with subject, (optionally) session and label columns; columns guessed when not given
    (subject: ``participant_id``, ``subject``, ``PTID``...; session: ``session_id``, ``session``, ``visit``...;
    label: ``DX``, ``diagnosis``, ``group``, ``label``...). Blank labels are ignored."""
    table = read_table(path)
    subject_col = _pick_column(table, subject_column, _LABEL_SUBJECT_COLUMNS + ("oasisid", "oasis id"), "subject")
    label_col = _pick_column(table, label_column, ("dx",) + _LABEL_VALUE_COLUMNS, "label")
    if session_column is not None:
        session_col: str | None = _pick_column(table, session_column, (), "session")
    else:
        session_col = find_column(table, SESSION_COLUMNS)
    values: dict[tuple[str, str | None], set[str]] = {}
    for _line, row in table.rows:
        subject, label = cell(row, subject_col), normalize_group(cell(row, label_col))
        if not subject or not label:
            continue
        session = cell(row, session_col)
        values.setdefault((subject_key(subject), session_key(session) if session else None), set()).add(label)
    labels = {k: next(iter(v)) for k, v in values.items() if len(v) == 1}
    conflicts = {k: tuple(sorted(v)) for k, v in values.items() if len(v) > 1}
    return SessionLabels(table.path, labels, conflicts, tuple(table.warnings))


def require_column(tables: Sequence[Table], wanted: str, role: str) -> str:
    """``wanted`` as a header name that at least one of ``tables`` has; else a one-line error naming them."""
    key = normalise_header(wanted)
    if tables and not any(key in t.header for t in tables):
        names = ", ".join(sorted({t.path.name for t in tables}))
        columns = sorted({h for t in tables for h in t.header if h})
        raise TableColumnError(f"{names}: no {role} column {wanted!r}; columns found: {', '.join(columns)}")
    return key
