"""Discovery in a BIDS dataset: T1-weighted images with diagnoses from its tables, or from a label table.

Layout (BIDS 1.x): ``<root>/sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_acq-<x>][_run-<n>]_T1w.nii[.gz]``
with ``<root>/participants.tsv`` (``participant_id`` plus e.g. ``age``, ``sex``, a diagnosis) and, optionally, one
``sub-<label>/sub-<label>_sessions.tsv`` per subject (``session_id`` plus per-session columns such as ``acq_time``,
``age``, a diagnosis, ``MMSE``, ``cdr``). Clinica's ``adni-to-bids`` writes ADNI that way (participants'
``diagnosis_sc``, sessions' ``diagnosis``); OASIS-3's BIDS download writes the images that way without any table
(see :mod:`preprocessing.cohorts.oasis3`). ``derivatives/``, ``sourcedata/`` and ``code/`` are not searched.

The diagnosis of a session comes, first found, from:

1. ``label_table`` (``--label-table``): a table keyed by subject and, when it has a session column, session (rows
   without a session give the subject's label for every session);
2. the session's row in the subject's ``sessions.tsv``;
3. the subject's row in ``participants.tsv``.

The diagnosis column of the BIDS tables is ``label_column`` (``--bids-label-column``) or else the first of
:data:`LABEL_COLUMNS` that a table has. Labels are read as everywhere (AD/Dementia, CN/NL/Normal/Control; EMCI and
LMCI count as MCI when MCI is a class). Age and sex come from ``sessions.tsv`` then ``participants.tsv``; MMSE, global
CDR and the synthetic cohort's ``atrophy`` likewise. Several runs of one session (``run-1``, ``run-2``) give one scan
(the lowest run, ``runs="first"``) or all of them (``runs="all"``); a subject keeps the class of its first labelled
session (later sessions with another class are left out as ``label_changed``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preprocessing.adni.records import DEFAULT_CLASSES, Discovery, Scan, Skipped, class_of, classes_text
from preprocessing.cohorts.common import (
    CDR_COLUMNS,
    MMSE_COLUMNS,
    NOT_RAW_FOLDERS,
    SESSION_COLUMNS,
    SessionLabels,
    cell,
    find_column,
    keep_one_class_per_subject,
    load_session_labels,
    natural_key,
    require_column,
    session_key,
)
from preprocessing.subject_ids import normalize_subject_id, subject_key
from preprocessing.tables import (
    Table,
    parse_acq_date,
    parse_age,
    parse_number,
    parse_sex,
    read_field,
    read_table,
)

#: Diagnosis columns looked for (normalised header names) when ``--bids-label-column`` is not given.
LABEL_COLUMNS = ("diagnosis", "dx", "group", "label", "diagnosis sc", "diagnosis bl", "dx bl", "research group",
                 "clinical diagnosis")  # fmt: skip
_T1W = re.compile(
    r"sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?(?P<rest>(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*)_T1w\.nii(\.gz)?"
)
ACQ_DATE_COLUMNS = ("acq time", "acq date", "scan date", "examdate")
_RUN = re.compile(r"_run-(\d+)")
_OASIS_MR_FOLDER = re.compile(r"OAS\d+_MR_(d\d+)", re.IGNORECASE)
RUN_CHOICES = ("first", "all")


@dataclass(frozen=True)
class BidsFile:
    """A T1-weighted image of a BIDS tree: its subject and session labels (without ``sub-``/``ses-``) and run."""

    path: Path
    subject: str
    session: str | None
    run: int | None
    stem: str
    entities: str  # the entities between session and suffix, e.g. "_acq-mprage_run-2"


def is_t1w_name(name: str) -> bool:
    """A NIfTI whose name ends in ``T1w`` (BIDS or not: the others are reported as ``not_bids``)."""
    return name.lower().endswith(("t1w.nii", "t1w.nii.gz"))


def find_t1w_files(root: Path, discovery: Discovery) -> list[BidsFile]:
    """Every ``*_T1w.nii[.gz]`` under ``root`` outside :data:`NOT_RAW_FOLDERS`, parsed; others are ``not_bids``.

    A file name without ``_ses-`` takes its session from a ``ses-<label>`` folder above it, or from an OASIS-3 MR
    session folder (``OAS30001_MR_d0129`` -> ``d0129``), the layout of OASIS's non-BIDS download script.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"BIDS folder not found: {root}")
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).parts
        if any(part in NOT_RAW_FOLDERS for part in relative[:-1]) or not is_t1w_name(path.name) or not path.is_file():
            continue
        match = _T1W.fullmatch(path.name)
        if match is None:
            reason = f"{path.name}: not a BIDS name sub-<label>[_ses-<label>][_<key>-<value>...]_T1w.nii[.gz]"
            discovery.skipped.append(Skipped("not_bids", reason, path=path))
            continue
        folders = [p for p in relative[:-1] if p.lower().startswith("sub-")]
        if folders and folders[-1][4:] != match["sub"]:
            reason = f"{path.name} is in the folder of {folders[-1]}, not sub-{match['sub']}"
            discovery.skipped.append(Skipped("subject_mismatch", reason, path=path, subject=f"sub-{match['sub']}"))
            continue
        session = match["ses"] or _session_from_folders(relative[:-1])
        run = _RUN.search(match["rest"])
        stem = re.sub(r"\.nii(\.gz)?$", "", path.name)
        found.append(BidsFile(path, match["sub"], session, int(run.group(1)) if run else None, stem, match["rest"]))
    return found


def _session_from_folders(folders: Sequence[str]) -> str | None:
    for folder in reversed(folders):
        if folder.lower().startswith("ses-") and len(folder) > 4:
            return folder[4:]
        oasis = _OASIS_MR_FOLDER.fullmatch(folder)
        if oasis:
            return oasis.group(1)
    return None


def select_runs(files: list[BidsFile], runs: str, discovery: Discovery, what: str = "run") -> list[BidsFile]:
    """One file per image id (the first path of a stem) and, with ``runs="first"``, per session the lowest run.

    Left out: a second file of the same stem (``duplicate_input``) and the other runs (``extra_run``, naming the kept
    one and the option that keeps them all).
    """
    if runs not in RUN_CHOICES:
        raise ValueError(f"runs must be one of {RUN_CHOICES}, not {runs!r}")
    by_stem: dict[str, BidsFile] = {}
    for item in files:
        first = by_stem.setdefault(item.stem.lower(), item)
        if first is not item:
            reason = f"{item.path.name}: same image as {first.path}; that file is used"
            discovery.skipped.append(
                Skipped("duplicate_input", reason, first.stem, subject=item.subject, path=item.path)
            )
    sessions: dict[tuple[str, str], list[BidsFile]] = {}
    for item in by_stem.values():
        sessions.setdefault((subject_key(item.subject), session_key(item.session or "")), []).append(item)
    kept = []
    for members in sessions.values():
        members.sort(key=lambda f: (f.run or 0, natural_key(f.stem)))
        kept.append(members[0])
        for other in members[1:]:
            if runs == "all":
                kept.append(other)
                continue
            reason = f"{other.stem}: another {what} of the session; {members[0].stem} is used (all: --runs all)"
            discovery.skipped.append(Skipped("extra_run", reason, other.stem, subject=other.subject, path=other.path))
    return sorted(kept, key=lambda f: (natural_key(f.subject), natural_key(f.session or ""), f.run or 0))


class _Rows:
    """The rows of one subject's tables (its session's row of ``sessions.tsv``, its row of ``participants.tsv``),
    read by column in that order, with unreadable values left empty and a warning naming file and line."""

    def __init__(self, found: Sequence[tuple[Table, int, dict[str, str]]], warnings: list, **ids: Any) -> None:
        self.found, self.warnings, self.ids = found, warnings, ids

    def text(self, columns: Sequence[str]) -> tuple[str, Table | None, str | None]:
        for table, _line, row in self.found:
            column = find_column(table, columns)
            if cell(row, column):
                return cell(row, column), table, column
        return "", None, None

    def value(self, parser: Callable[[str], Any], columns: Sequence[str], name: str) -> Any:
        for table, line, row in self.found:
            column = find_column(table, columns)
            if cell(row, column):
                return read_field(parser, cell(row, column), table, line, name, self.warnings, **self.ids)
        return None


def discover_bids(
    root: Path | str,
    classes: Sequence[str] = DEFAULT_CLASSES,
    label_column: str | None = None,
    label_table: Path | str | None = None,
    label_subject_column: str | None = None,
    label_table_column: str | None = None,
    label_session_column: str | None = None,
    runs: str = "first",
) -> Discovery:
    """The T1w scans of a BIDS dataset whose diagnosis is one of ``classes``; see the module docstring."""
    root, classes = Path(root), tuple(classes)
    labels = None
    if label_table is not None:
        labels = load_session_labels(label_table, label_subject_column, label_table_column, label_session_column)
    discovery = Discovery(
        source="bids",
        include_patterns=(),
        exclude_patterns=(),
        classes=classes,
        label_table=labels.path if labels else None,
        settings={"label_column": label_column},
    )
    discovery.warnings += list(labels.warnings) if labels else []
    files = select_runs(find_t1w_files(root, discovery), runs, discovery)
    participants = _read_optional(root / "participants.tsv", discovery)
    sessions = {s: _read_optional(root / f"sub-{s}" / f"sub-{s}_sessions.tsv", discovery)
                for s in sorted({f.subject for f in files})}  # fmt: skip
    tables = [t for t in [participants, *sessions.values()] if t is not None]
    wanted = (require_column(tables, label_column, "diagnosis"),) if label_column else LABEL_COLUMNS
    participant_rows = _rows_by(participants, ("participant id", "subject", "subject id"), subject_key)
    session_rows = {s: _rows_by(t, SESSION_COLUMNS, session_key) for s, t in sessions.items()}
    for item in files:
        subject_raw = f"sub-{item.subject}"
        subject = normalize_subject_id(subject_raw)
        found = []
        if item.session and session_key(item.session) in session_rows[item.subject]:
            found.append((sessions[item.subject], *session_rows[item.subject][session_key(item.session)]))
        if subject_key(subject_raw) in participant_rows:
            found.append((participants, *participant_rows[subject_key(subject_raw)]))
        rows = _Rows(found, discovery.warnings, image_id=item.stem, subject=subject)
        ids = {"image_id": item.stem, "subject": subject, "path": item.path, "description": f"T1w{item.entities}"}
        written, source, where = _written_label(item, subject_raw, labels, rows, wanted)
        if isinstance(written, Skipped):
            discovery.skipped.append(Skipped(written.category, written.reason, **ids))
            continue
        group, category = class_of(written, classes)
        if group is None:
            if category == "group_excluded":
                reason = f"{item.stem}: diagnosis {written!r} ({where}): only {classes_text(classes)} are used"
            elif written:
                reason = f"{item.stem}: diagnosis {written!r} ({where}) is none of {', '.join(classes)}"
            else:
                reason = f"{item.stem}: no diagnosis ({where}); name the column with --bids-label-column or give "
                reason += "--label-table"
            discovery.skipped.append(Skipped(category, reason, **ids, group=written or None))
            continue
        discovery.scans.append(
            Scan(
                image_id=item.stem,
                subject=subject,
                group=group,
                label=classes.index(group),
                sex=rows.value(parse_sex, ("sex", "gender"), "sex"),
                age=rows.value(parse_age, ("age",), "age"),
                visit=item.session,
                acq_date=rows.value(parse_acq_date, ACQ_DATE_COLUMNS, "acquisition date"),
                description=ids["description"],
                source="bids",
                nifti_path=item.path,
                label_source=source,
                subject_raw=subject_raw,
                session=item.session,
                cdr=rows.value(parse_number, CDR_COLUMNS, "CDR"),
                mmse=rows.value(parse_number, MMSE_COLUMNS, "MMSE"),
                atrophy=rows.value(parse_number, ("atrophy",), "atrophy"),
            )
        )
    keep_one_class_per_subject(discovery, session_order)
    return discovery


def session_order(scan: Scan) -> tuple:
    """A subject's scans by acquisition date where known, then session label (``M006`` before ``M012``), then id."""
    return (scan.acq_date is None, scan.acq_date or "", natural_key(scan.session or ""), natural_key(scan.image_id))


def _written_label(
    item: BidsFile, subject_raw: str, labels: SessionLabels | None, rows: _Rows, wanted: Sequence[str]
) -> tuple[Any, str | None, str]:
    """``(label as written, label_source, where it was read)``, or a Skipped for a conflicting label table."""
    if labels is not None:
        label, conflict = labels.lookup(subject_raw, item.session)
        if conflict:
            reason = f"{item.stem}: conflicting labels {'/'.join(conflict)} in {labels.path.name}"
            return Skipped("label_conflict", reason), None, labels.path.name
        if label:
            return label, "label_table", labels.path.name
    text, table, column = rows.text(wanted)
    if table is None:
        looked = " or ".join(sorted({t.path.name for t, _, _ in rows.found})) or "no row in sessions/participants.tsv"
        return "", None, f"looked in {looked} for {', '.join(wanted[:4])}{'...' if len(wanted) > 4 else ''}"
    source = "participants_tsv" if table.path.name == "participants.tsv" else "sessions_tsv"
    return text, source, f"{table.path.name} column {column!r}"


def _read_optional(path: Path, discovery: Discovery) -> Table | None:
    if not path.is_file():
        return None
    table = read_table(path)
    discovery.warnings += table.warnings
    return table


def _rows_by(
    table: Table | None, columns: Sequence[str], key: Callable[[str], str]
) -> dict[str, tuple[int, dict[str, str]]]:
    """The first row of each key in ``table`` (``line``, row), keyed by ``key`` of the first of ``columns`` present."""
    if table is None:
        return {}
    column = find_column(table, columns) or (table.header[0] if table.header else None)
    rows: dict[str, tuple[int, dict[str, str]]] = {}
    for line, row in table.rows:
        if cell(row, column):
            rows.setdefault(key(cell(row, column)), (line, row))
    return rows
