"""Discovery in OASIS-3: MR sessions matched to the nearest clinical assessment, labels from its CDR.

OASIS-3 has no dates: every session is named by the days since the subject's entry into the study, ``d0129`` in the
MR session ``OAS30001_MR_d0129`` and ``d0000`` in the clinical assessment ``OAS30001_ClinicalData_d0000``. Accepted
image layouts, as OASIS's download scripts (github.com/NrgXnat/oasis-scripts) write them:

- BIDS (``download_oasis_scans_bids.sh``): ``sub-OAS30001/ses-d0129/anat/sub-OAS30001_ses-d0129_run-01_T1w.nii.gz``;
- per MR session (``download_oasis_scans.sh``): ``OAS30001_MR_d0129/anat1/sub-OAS30001_ses-d0129_run-01_T1w.nii.gz``
  (files may sit deeper, e.g. in ``NIFTI/``; a file name without ``_ses-`` takes the days from the folder).

Subject and session come from the file name (:func:`preprocessing.cohorts.bids.find_t1w_files`); several T1w runs of
one session give one scan (the lowest run) unless ``runs="all"``.

The clinical table is a CSV (or TSV) with one row per assessment: the subject (``OASISID``, ``Subject``,
``participant_id``...), the days since entry (a ``days_to_visit`` column, or read from an id such as
``OAS30001_ClinicalData_d0000`` or ``OAS30001_UDSb4_d0000`` in any column), the global CDR (``cdr``, ``CDRTOT``,
``CDRGLOB``...) and optionally the MMSE (``mmse``, ``MMSE``) and age (``Age``/``age at visit``, or ``ageAtEntry``):
ADRC Clinical Data as NITRC-IR exports it, or the UDS b4 (CDR) table of the OASIS-3 data files. Each MR session gets
the assessment with a CDR nearest in days, within ``window_days`` before or after (365 by default, the window OASIS
suggests; ties go to the earlier assessment); a session with none is left out as ``no_clinical_match`` and counted.
Label: CDR 0 is CN, CDR >= ``cdr_ad_threshold`` is AD, CDR 0.5 below a threshold of 1 is MCI when MCI is a class
(left out otherwise). The diagnosis text (``dx1``) is not used: CDR is the one staged measure all sessions have.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from preprocessing.adni.records import DEFAULT_CLASSES, Discovery, Scan, Skipped, class_of, classes_text
from preprocessing.cohorts.bids import find_t1w_files, select_runs
from preprocessing.cohorts.common import (
    CDR_COLUMNS,
    MMSE_COLUMNS,
    cdr_stage,
    cell,
    find_column,
    keep_one_class_per_subject,
    natural_key,
)
from preprocessing.subject_ids import normalize_subject_id, subject_key
from preprocessing.tables import (
    _LABEL_SUBJECT_COLUMNS,
    TableColumnError,
    parse_age,
    parse_number,
    read_field,
    read_table,
)

DEFAULT_WINDOW_DAYS = 365
_DAYS = re.compile(r"(?:^|[_-])d(\d{1,5})$", re.IGNORECASE)
_SUBJECTS = ("oasisid", "oasis id", "subject") + _LABEL_SUBJECT_COLUMNS
_DAY_COLUMNS = ("days to visit", "days from entry", "days since entry", "day", "days")
_AGE_AT_VISIT = ("age at visit", "ageatvisit", "age")
_AGE_AT_ENTRY = ("ageatentry", "age at entry")


def session_days(label: str | None) -> int | None:
    """Days since entry in an OASIS session or assessment label: ``d0129``, ``OAS30001_MR_d0129`` -> 129."""
    match = _DAYS.search(str(label or "").strip())
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Assessment:
    """One clinical assessment with a CDR: its day, line in the table, CDR, MMSE and age at that day."""

    day: int
    line: int
    cdr: float
    mmse: float | None
    age: float | None


def read_clinical_table(path: Path | str, discovery: Discovery) -> dict[str, list[Assessment]]:
    """The assessments with a CDR by subject key, in day order; rows without a CDR or a day are not assessments."""
    table = read_table(path)
    discovery.warnings += table.warnings
    subject_col, cdr_col = find_column(table, _SUBJECTS), find_column(table, CDR_COLUMNS)
    day_col = find_column(table, _DAY_COLUMNS)
    label_cols = [h for h in table.header if h and h not in (subject_col, cdr_col, day_col)]
    if day_col is None:  # the day is in an id such as OAS30001_ClinicalData_d0000: the first column holding one
        label_cols = [c for c in label_cols if any(session_days(cell(r, c)) is not None for _, r in table.rows[:20])]
    missing = [n for n, c in (("subject", subject_col), ("CDR", cdr_col)) if c is None]
    if day_col is None and not label_cols:
        missing.append("days since entry (days_to_visit, or an id ending in _d0000)")
    if missing:
        raise TableColumnError(f"{table.path}: no {' and no '.join(missing)} column; columns found: {table.header}")
    mmse_col = find_column(table, MMSE_COLUMNS)
    age_col, entry_col = find_column(table, _AGE_AT_VISIT), find_column(table, _AGE_AT_ENTRY)
    found: dict[str, list[Assessment]] = {}
    warn = discovery.warnings
    for line, row in table.rows:
        subject = normalize_subject_id(cell(row, subject_col))
        day = _row_day(row, day_col, label_cols)
        cdr = read_field(parse_number, cell(row, cdr_col), table, line, "CDR", warn, subject=subject)
        if not subject or day is None or cdr is None:
            continue
        mmse = read_field(parse_number, cell(row, mmse_col), table, line, "MMSE", warn, subject=subject)
        age = read_field(parse_age, cell(row, age_col), table, line, "age", warn, subject=subject)
        if age is None and entry_col is not None:
            entry = read_field(parse_age, cell(row, entry_col), table, line, "age at entry", warn, subject=subject)
            age = entry + day / 365.25 if entry is not None else None
        found.setdefault(subject_key(subject), []).append(Assessment(day, line, cdr, mmse, age))
    for assessments in found.values():
        assessments.sort(key=lambda a: a.day)
    return found


def _row_day(row: dict[str, str], day_col: str | None, label_cols: Sequence[str]) -> int | None:
    if day_col is not None:
        try:
            return int(float(cell(row, day_col)))
        except ValueError:
            return None
    return next((session_days(cell(row, c)) for c in label_cols if session_days(cell(row, c)) is not None), None)


def nearest(assessments: Sequence[Assessment], day: int, window_days: int) -> tuple[Assessment | None, int | None]:
    """The assessment nearest to ``day`` within ``window_days`` (ties: the earlier), and the distance to the nearest
    one at all (None when the subject has none)."""
    if not assessments:
        return None, None
    best = min(assessments, key=lambda a: (abs(a.day - day), a.day))
    distance = abs(best.day - day)
    return (best if distance <= window_days else None), distance


def discover_oasis3(
    root: Path | str,
    clinical_table: Path | str,
    classes: Sequence[str] = DEFAULT_CLASSES,
    window_days: int = DEFAULT_WINDOW_DAYS,
    cdr_ad_threshold: float = 0.5,
    runs: str = "first",
) -> Discovery:
    """The T1w scans of an OASIS-3 download labelled by the CDR of the nearest clinical assessment; see the module
    docstring."""
    root, classes = Path(root), tuple(classes)
    if window_days < 0:
        raise ValueError(f"the clinical window must be 0 or more days, not {window_days}")
    discovery = Discovery(source="oasis3", include_patterns=(), exclude_patterns=(), classes=classes,
                          label_table=Path(clinical_table),
                          settings={"window_days": window_days, "cdr_ad_threshold": cdr_ad_threshold})  # fmt: skip
    clinical = read_clinical_table(clinical_table, discovery)
    name = Path(clinical_table).name
    for item in select_runs(find_t1w_files(root, discovery), runs, discovery):
        subject_raw = f"sub-{item.subject}"
        subject = normalize_subject_id(subject_raw)
        ids = {"image_id": item.stem, "subject": subject, "path": item.path, "description": f"T1w{item.entities}"}
        day = session_days(item.session)
        if day is None:
            reason = f"{item.stem}: session {item.session!r} has no days since entry (ses-d0129), nothing to match"
            discovery.skipped.append(Skipped("no_clinical_match", reason, **ids))
            continue
        match, distance = nearest(clinical.get(subject_key(subject), []), day, window_days)
        if match is None:
            why = f"{subject} has no assessment with a CDR in {name}" if distance is None else (
                f"the nearest is {distance} days away")  # fmt: skip
            reason = f"{item.stem}: no clinical assessment within {window_days} days of d{day:04d} ({why})"
            discovery.skipped.append(Skipped("no_clinical_match", reason, **ids))
            continue
        stage = cdr_stage(match.cdr, cdr_ad_threshold)
        group, category = class_of(stage, classes)
        if group is None:
            reason = (
                f"{item.stem}: CDR {match.cdr:g} ({name}:{match.line}, d{match.day:04d}) is {stage} with AD from CDR "
                f"{cdr_ad_threshold:g}: only {classes_text(classes)} are used"
            )
            discovery.skipped.append(Skipped(category or "group_excluded", reason, **ids, group=stage))
            continue
        age = match.age + (day - match.day) / 365.25 if match.age is not None else None
        discovery.scans.append(
            Scan(
                image_id=item.stem,
                subject=subject,
                group=group,
                label=classes.index(group),
                age=round(age, 2) if age is not None else None,
                visit=item.session,
                description=ids["description"],
                source="oasis3",
                nifti_path=item.path,
                label_source="clinical_table",
                subject_raw=subject_raw,
                session=item.session,
                cdr=match.cdr,
                mmse=match.mmse,
            )
        )
    keep_one_class_per_subject(discovery, lambda s: (session_days(s.session) or 0, natural_key(s.image_id)))
    return discovery
