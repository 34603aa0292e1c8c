"""Discovery of the scans to use: an ADNI download plus its collection CSV, or a plain folder of NIfTI files.

The dissertation (4.1) used ADNI's T1-weighted MPRAGE scans of AD and CN subjects only. An ADNI download lays images
out as ``ADNI/<subject>/<description>/<date_time>/I<image id>/*.dcm`` and comes with a collection CSV (``"Image Data
ID","Subject","Group",...``). Discovery joins the two by image id, keeps MPRAGE series of AD and CN subjects, and
records every image it leaves out with a reason (not MPRAGE, MCI, no usable label, folder missing from the download,
folder without a CSV row, ...) so that the cohort's size can be explained rather than guessed.

Real exports vary: quotes may be missing, columns may be added or reordered, image ids may lack their leading ``I``,
and some collections give ``Group = Patient`` for every row. For those, a label table by subject (ADNIMERGE's
``PTID``/``DX_bl``, or a plain ``subject,label`` CSV) supplies the diagnosis and overrides ``Group``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Description patterns (case-insensitive ``re.search``) for the T1w MPRAGE series the dissertation used:
#: MPRAGE / MP-RAGE / MP RAGE, including repeats, but not the accelerated (parallel-imaging) variants of ADNI-2+.
DEFAULT_MPRAGE_PATTERNS: tuple[str, ...] = (r"^(?!.*accelerat).*mp[\s_-]*rage",)
#: Opt-in patterns that also accept accelerated MPRAGE (e.g. "Accelerated Sagittal MPRAGE").
ANY_MPRAGE_PATTERNS: tuple[str, ...] = (r"mp[\s_-]*rage",)
#: Descriptions rejected even when an include pattern matches: planning and calibration scans.
DEFAULT_EXCLUDE_PATTERNS: tuple[str, ...] = (r"locali[sz]er", r"calibration", r"scout", r"survey", r"3[\s_-]*plane")

#: Labels used for training: AD is the positive class.
LABELS: dict[str, int] = {"AD": 1, "CN": 0}
#: Diagnoses that exist in ADNI but are not part of the AD vs CN task.
EXCLUDED_GROUPS: frozenset[str] = frozenset({"MCI", "EMCI", "LMCI", "SMC"})
_GROUP_ALIASES: dict[str, str] = {
    "AD": "AD",
    "DEMENTIA": "AD",
    "1": "AD",
    "CN": "CN",
    "NL": "CN",
    "NORMAL": "CN",
    "CONTROL": "CN",
    "0": "CN",
}

# Collection CSV columns: canonical name -> accepted header spellings (compared after _normalise_header).
_COLLECTION_COLUMNS: dict[str, tuple[str, ...]] = {
    "Image Data ID": ("image data id", "image id", "imageid", "image uid"),
    "Subject": ("subject", "subject id", "ptid"),
    "Group": ("group", "research group"),
    "Sex": ("sex",),
    "Age": ("age",),
    "Visit": ("visit",),
    "Modality": ("modality",),
    "Description": ("description", "series description"),
    "Type": ("type",),
    "Acq Date": ("acq date", "acquisition date", "scan date"),
    "Format": ("format",),
    "Downloaded": ("downloaded",),
}
_NIFTI_COLUMNS: dict[str, tuple[str, ...]] = {
    "path": ("path", "image", "file", "filename", "nifti"),
    "subject": ("subject", "subject id", "ptid"),
    "label": ("label", "group", "diagnosis", "dx bl", "dx"),
    "visit": ("visit",),
    "image_id": ("image id", "image data id"),
    "sex": ("sex",),
    "age": ("age",),
    "acq_date": ("acq date", "acquisition date", "scan date", "date"),
}
_LABEL_SUBJECT_COLUMNS = ("ptid", "subject", "subject id", "participant id")
_LABEL_VALUE_COLUMNS = ("dx bl", "label", "group", "diagnosis", "dx")

_IMAGE_ID = re.compile(r"[Ii]?(\d+)(?:\.0+)?")
_SERIES_FOLDER = re.compile(r"[Ss]\d+")
_IMAGE_ID_IN_FILENAME = re.compile(r"_I(\d+)\.dcm$", re.IGNORECASE)
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Scan:
    """One image to use, with its label (AD = 1, CN = 0) and what later stages need to find and describe it.

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

    def as_record(self) -> dict[str, Any]:
        """A JSON-serialisable dict (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Skipped:
    """An image (or folder, or CSV row) left out, with a short ``category`` for counting and a readable ``reason``.

    Categories: ``bad_row``, ``duplicate_row``, ``duplicate_folder``, ``not_mri``, ``not_mprage``, ``group_excluded``,
    ``no_label``, ``label_conflict``, ``folder_missing``, ``no_csv_row``, ``unmatched_folder``, ``subject_mismatch``,
    ``file_missing``.
    """

    category: str
    reason: str
    image_id: str | None = None
    subject: str | None = None
    path: Path | None = None
    line: int | None = None

    def as_record(self) -> dict[str, Any]:
        """A JSON-serialisable dict (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class Discovery:
    """What discovery found: the scans to use and everything left out."""

    scans: list[Scan] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts per group (scans, subjects) and skipped per category; see :func:`discovery_summary`."""
        return discovery_summary(self)


@dataclass(frozen=True)
class LabelTable:
    """Diagnosis per subject from a label table; subjects whose rows disagree are kept apart in ``conflicts``."""

    path: Path
    labels: dict[str, str]
    conflicts: dict[str, tuple[str, ...]]

    def lookup(self, subject: str) -> str | None:
        """The subject's normalised label, or None when absent or conflicting."""
        return self.labels.get(_subject_key(subject))


class TableColumnError(ValueError):
    """A required column is missing from a CSV file; the message names the file and the column."""


# ---------------------------------------------------------------- small parsers


def canonical_image_id(value: str) -> str:
    """``"45108"``, ``"I45108"``, ``" i45108 "`` or ``"45108.0"`` (a spreadsheet round trip) -> ``"I45108"``.

    ADNI folders are named ``I<digits>`` while exported CSVs sometimes drop the ``I``; one canonical form lets
    the two be joined.
    """
    match = _IMAGE_ID.fullmatch(str(value).strip())
    if not match:
        raise ValueError(f"not an ADNI image id: {value!r}")
    return f"I{int(match.group(1))}"


def parse_acq_date(value: str) -> str | None:
    """ADNI's ``M/D/YYYY`` (or an ISO ``YYYY-MM-DD``, possibly followed by a time) -> ``YYYY-MM-DD``; blank -> None.

    Any other form is an error rather than a guess: ``4/5/2006`` read day-first would silently swap months.
    """
    text = str(value).strip()
    if not text:
        return None
    us = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", text)
    iso = re.match(r"(\d{4})-(\d{1,2})-(\d{1,2})(?:$|[ T_])", text)
    try:
        if us:
            return dt.date(int(us.group(3)), int(us.group(1)), int(us.group(2))).isoformat()
        if iso:
            return dt.date(int(iso.group(1)), int(iso.group(2)), int(iso.group(3))).isoformat()
    except ValueError as error:
        raise ValueError(f"invalid date {text!r}: {error}") from error
    raise ValueError(f"unrecognised date {text!r} (expected M/D/YYYY as ADNI exports it, or YYYY-MM-DD)")


def normalize_group(value: str | None) -> str:
    """A diagnosis as written in a CSV -> ``"AD"``, ``"CN"``, or the upper-cased value (``"MCI"``, ``"PATIENT"``, "").

    Accepts the collection CSV's groups, ADNIMERGE's ``DX_bl``/``DX`` (``Dementia``, ``NL``) and 1/0 labels.
    """
    text = str(value or "").strip().upper()
    if re.fullmatch(r"[01]\.0+", text):
        text = text[0]
    return _GROUP_ALIASES.get(text, text)


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


# ---------------------------------------------------------------- CSV reading


def _normalise_header(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().strip('"').strip().lower())


def _subject_key(subject: str) -> str:
    return subject.strip().upper()


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Rows of a CSV as ``(line number, {normalised header: stripped value})``, quoted or not.

    The delimiter is the most frequent of ``,``, ``;`` and tab on the header line (spreadsheets in some locales
    save with ``;``). Blank lines are skipped; short rows are padded with empty values.
    """
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        text = handle.read()
    first_line = text.splitlines()[0] if text.strip() else ""
    delimiter = max((",", ";", "\t"), key=first_line.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, skipinitialspace=True)
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    for values in reader:
        line_number = reader.line_num
        if not any(v.strip() for v in values):
            continue
        if header is None:
            header = [_normalise_header(v) for v in values]
            continue
        padded = list(values) + [""] * (len(header) - len(values))
        rows.append((line_number, {h: v.strip() for h, v in zip(header, padded, strict=False) if h}))
    if header is None:
        raise TableColumnError(f"{path}: the file is empty (no header line)")
    return header, rows


def _resolve_columns(
    path: Path, header: Sequence[str], spec: dict[str, tuple[str, ...]], required: Iterable[str]
) -> dict[str, str]:
    """Map canonical column names to the header names present; missing required ones raise, naming file and column."""
    present = set(header)
    resolved = {name: next((a for a in aliases if a in present), None) for name, aliases in spec.items()}
    missing = [name for name in required if resolved.get(name) is None]
    if missing:
        raise TableColumnError(
            f"{path}: missing required column {missing[0]!r}"
            + (f" (also missing: {', '.join(repr(m) for m in missing[1:])})" if len(missing) > 1 else "")
            + f"; columns found: {', '.join(h for h in header if h)}"
        )
    return {name: column for name, column in resolved.items() if column is not None}


def load_label_table(
    path: Path | str, subject_column: str | None = None, label_column: str | None = None
) -> LabelTable:
    """Diagnosis per subject from ADNIMERGE (``PTID``, ``DX_bl``) or a ``subject,label`` CSV.

    Column names are matched case-insensitively; when not given they are looked for among ``PTID``/``subject`` and
    ``DX_bl``/``label``/``group``/``diagnosis``/``DX``. ADNIMERGE repeats each subject once per visit: blank values
    are ignored and the remaining ones must agree (``AD`` and ``Dementia`` do), otherwise the subject is listed in
    ``conflicts`` and gets no label.
    """
    path = Path(path)
    header, rows = _read_table(path)
    subject_col = _pick_column(path, header, subject_column, _LABEL_SUBJECT_COLUMNS, "subject")
    label_col = _pick_column(path, header, label_column, _LABEL_VALUE_COLUMNS, "label")
    values: dict[str, set[str]] = {}
    for _, row in rows:
        subject = row.get(subject_col, "")
        label = normalize_group(row.get(label_col, ""))
        if subject and label:
            values.setdefault(_subject_key(subject), set()).add(label)
    labels = {s: next(iter(v)) for s, v in values.items() if len(v) == 1}
    conflicts = {s: tuple(sorted(v)) for s, v in values.items() if len(v) > 1}
    return LabelTable(path=path, labels=labels, conflicts=conflicts)


def _pick_column(path: Path, header: Sequence[str], wanted: str | None, candidates: Sequence[str], role: str) -> str:
    if wanted is not None:
        key = _normalise_header(wanted)
        if key not in header:
            raise TableColumnError(f"{path}: missing required column {wanted!r} ({role}); columns found: {header}")
        return key
    for candidate in candidates:
        if candidate in header:
            return candidate
    raise TableColumnError(
        f"{path}: missing required {role} column (looked for {', '.join(candidates)}); columns found: {header}"
    )


# ---------------------------------------------------------------- ADNI download


@dataclass(frozen=True)
class _Folder:
    path: Path
    subject: str
    description: str
    date: str | None
    image_id: str | None


def _resolve_adni_root(root: Path) -> Path:
    """Accept either the ``ADNI`` folder itself or the folder that contains it."""
    if not root.is_dir():
        raise FileNotFoundError(f"ADNI download folder not found: {root}")
    nested = root / "ADNI"
    return nested if nested.is_dir() else root


def _scan_download(root: Path) -> list[_Folder]:
    """Image folders at ``<subject>/<description>/<date_time>/<I...|S...>`` under the download root."""
    folders = []
    for leaf in sorted(p for p in root.glob("*/*/*/*") if p.is_dir()):
        date_folder = leaf.parent.name
        try:
            date = parse_acq_date(date_folder[:10])
        except ValueError:
            date = None
        folders.append(
            _Folder(
                path=leaf,
                subject=leaf.parents[2].name,
                description=leaf.parents[1].name,
                date=date,
                image_id=_folder_image_id(leaf),
            )
        )
    return folders


def _folder_image_id(leaf: Path) -> str | None:
    """``I45108`` from the folder name, or for an ``S<series>`` folder from ADNI's file names (``..._I45108.dcm``)."""
    if re.fullmatch(r"[Ii]\d+", leaf.name):
        return canonical_image_id(leaf.name)
    if _SERIES_FOLDER.fullmatch(leaf.name):
        for child in sorted(leaf.iterdir()):
            match = _IMAGE_ID_IN_FILENAME.search(child.name)
            if match:
                return f"I{int(match.group(1))}"
    return None


def _description_key(description: str) -> str:
    """ADNI folder names replace spaces and punctuation with ``_``: compare descriptions on letters and digits."""
    return re.sub(r"[^a-z0-9]+", "", description.lower())


def discover_adni(
    collection_csv: Path | str,
    adni_root: Path | str | None,
    include_patterns: Sequence[str] = DEFAULT_MPRAGE_PATTERNS,
    exclude_patterns: Sequence[str] = DEFAULT_EXCLUDE_PATTERNS,
    label_table: Path | str | LabelTable | None = None,
    label_subject_column: str | None = None,
    label_column: str | None = None,
    require_dicom: bool = True,
) -> Discovery:
    """The AD/CN MPRAGE scans of an ADNI collection CSV, joined by image id with the DICOM folders of its download.

    ``include_patterns``/``exclude_patterns`` select series by description (see :func:`select_description`); pass
    :data:`ANY_MPRAGE_PATTERNS` to include accelerated MPRAGE. With ``label_table`` the subject's diagnosis there
    overrides the CSV's ``Group`` (subjects absent from the table keep their ``Group``). With ``adni_root`` (the
    ``ADNI`` folder or its parent), a selected image whose folder is missing is skipped when ``require_dicom``
    (kept with ``dicom_dir=None`` otherwise), and folders that no CSV row describes are reported. Scans come out
    in CSV order.
    """
    collection_csv = Path(collection_csv)
    table = (
        label_table
        if isinstance(label_table, LabelTable) or label_table is None
        else load_label_table(label_table, label_subject_column, label_column)
    )
    header, rows = _read_table(collection_csv)
    required = ["Image Data ID", "Subject", "Description"] + ([] if table is not None else ["Group"])
    columns = _resolve_columns(collection_csv, header, _COLLECTION_COLUMNS, required)
    include = [re.compile(p, re.IGNORECASE) for p in include_patterns]
    exclude = [re.compile(p, re.IGNORECASE) for p in exclude_patterns]

    def get(row: dict[str, str], name: str) -> str:
        column = columns.get(name)
        return row.get(column, "") if column else ""

    discovery = Discovery()
    skip = discovery.skipped.append

    # The CSV rows by canonical image id (first row wins; later duplicates are reported).
    by_id: dict[str, tuple[int, dict[str, str]]] = {}
    ordered: list[tuple[str, int, dict[str, str]]] = []
    for line, row in rows:
        raw_id, subject = get(row, "Image Data ID"), get(row, "Subject")
        try:
            image_id = canonical_image_id(raw_id)
        except ValueError:
            skip(
                Skipped(
                    "bad_row", f"{collection_csv.name} line {line}: bad image id {raw_id!r}", None, subject, line=line
                )
            )
            continue
        if image_id in by_id:
            skip(
                Skipped(
                    "duplicate_row",
                    f"{collection_csv.name} line {line}: image {image_id} already listed on line {by_id[image_id][0]}",
                    image_id,
                    subject,
                    line=line,
                )
            )
            continue
        by_id[image_id] = (line, row)
        ordered.append((image_id, line, row))

    # The download's folders by image id.
    folders: dict[str, _Folder] = {}
    if adni_root is not None:
        root = _resolve_adni_root(Path(adni_root))
        unresolved: list[_Folder] = []
        for folder in _scan_download(root):
            if folder.image_id is None:
                unresolved.append(folder)
            elif folder.image_id in folders:
                skip(
                    Skipped(
                        "duplicate_folder",
                        f"image {folder.image_id} downloaded twice; using {folders[folder.image_id].path}",
                        folder.image_id,
                        folder.subject,
                        folder.path,
                    )
                )
            else:
                folders[folder.image_id] = folder
        for folder in unresolved:
            match = _match_by_visit(folder, ordered, folders, get)
            if match is None:
                skip(
                    Skipped(
                        "unmatched_folder",
                        f"cannot tell which image folder {folder.path.name} holds (no I<id> in its name or file "
                        "names, and no single CSV row with its subject, description and date)",
                        None,
                        folder.subject,
                        folder.path,
                    )
                )
            else:
                folders[match] = folder
        for image_id, folder in folders.items():
            if image_id not in by_id:
                skip(
                    Skipped(
                        "no_csv_row",
                        f"folder on disk but no row for {image_id} in {collection_csv.name}",
                        image_id,
                        folder.subject,
                        folder.path,
                    )
                )

    for image_id, line, row in ordered:
        subject = get(row, "Subject")
        description = get(row, "Description")
        where = f"{collection_csv.name} line {line}"
        modality = get(row, "Modality")
        if modality and modality.strip().upper() not in {"MR", "MRI"}:
            skip(Skipped("not_mri", f"modality {modality!r}, not MRI ({where})", image_id, subject, line=line))
            continue
        if not (any(p.search(description) for p in include) and not any(p.search(description) for p in exclude)):
            skip(
                Skipped(
                    "not_mprage",
                    f"description {description!r} is not a selected T1w MPRAGE series ({where})",
                    image_id,
                    subject,
                    line=line,
                )
            )
            continue
        label_result = _resolve_label(subject, get(row, "Group"), table)
        if isinstance(label_result, Skipped):
            skip(Skipped(label_result.category, f"{label_result.reason} ({where})", image_id, subject, line=line))
            continue
        group, label_source = label_result

        dicom_dir: Path | None = None
        if adni_root is not None:
            folder = folders.get(image_id)
            if folder is None:
                if require_dicom:
                    skip(
                        Skipped(
                            "folder_missing",
                            f"selected in {collection_csv.name} (line {line}) but its folder is missing from the "
                            "download",
                            image_id,
                            subject,
                            line=line,
                        )
                    )
                    continue
            elif _subject_key(folder.subject) != _subject_key(subject):
                skip(
                    Skipped(
                        "subject_mismatch",
                        f"folder is under subject {folder.subject} but {where} says {subject}",
                        image_id,
                        subject,
                        folder.path,
                        line,
                    )
                )
                continue
            else:
                dicom_dir = folder.path

        try:
            acq_date = parse_acq_date(get(row, "Acq Date"))
            age = _parse_age(get(row, "Age"))
        except ValueError as error:
            raise ValueError(f"{collection_csv}: line {line}: {error}") from error
        discovery.scans.append(
            Scan(
                image_id=image_id,
                subject=subject,
                group=group,
                label=LABELS[group],
                sex=get(row, "Sex") or None,
                age=age,
                visit=get(row, "Visit") or None,
                acq_date=acq_date,
                description=description,
                dicom_dir=dicom_dir,
                source="adni",
                label_source=label_source,
            )
        )
    return discovery


def _match_by_visit(
    folder: _Folder,
    ordered: Sequence[tuple[str, int, dict[str, str]]],
    taken: dict[str, _Folder],
    get: Callable[[dict[str, str], str], str],
) -> str | None:
    """The image id of the one CSV row with this folder's subject, description and date, not already on disk."""
    if folder.date is None:
        return None
    candidates = []
    for image_id, _, row in ordered:
        if image_id in taken or _subject_key(get(row, "Subject")) != _subject_key(folder.subject):
            continue
        if _description_key(get(row, "Description")) != _description_key(folder.description):
            continue
        try:
            if parse_acq_date(get(row, "Acq Date")) != folder.date:
                continue
        except ValueError:
            continue
        candidates.append(image_id)
    return candidates[0] if len(candidates) == 1 else None


def _resolve_label(subject: str, csv_group: str, table: LabelTable | None) -> tuple[str, str] | Skipped:
    """``(group, label_source)`` for AD/CN, else a Skipped (category and reason; ids are filled in by the caller)."""
    if table is not None and _subject_key(subject) in table.conflicts:
        values = "/".join(table.conflicts[_subject_key(subject)])
        return Skipped("label_conflict", f"conflicting labels {values} for {subject} in {table.path.name}")
    table_label = table.lookup(subject) if table is not None else None
    if table is not None and table_label is not None:
        group, source = table_label, "label_table"
        written = f"label {group!r} in {table.path.name}"
    else:
        group, source = normalize_group(csv_group), "collection_csv"
        written = f"Group {csv_group!r} in the collection CSV" + (
            f" and {subject} not in {table.path.name}" if table is not None else ""
        )
    if group in LABELS:
        return group, source
    if group in EXCLUDED_GROUPS:
        return Skipped("group_excluded", f"group {group} ({written}): only AD and CN are used")
    return Skipped("no_label", f"no usable label: {written}")


def _parse_age(value: str) -> float | None:
    text = value.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError as error:
        raise ValueError(f"invalid age {text!r}") from error


# ---------------------------------------------------------------- NIfTI folder


def discover_nifti(csv_path: Path | str, report_unlisted: bool = True) -> Discovery:
    """Scans from a folder of NIfTI files described by a small CSV: ``path, subject, label[, visit]``.

    ``path`` is relative to the CSV's folder (absolute paths work too); ``label`` is AD/CN or 1/0 (MCI and the like
    are skipped). Optional columns: ``image_id`` (default: the file name without ``.nii``/``.nii.gz``), ``sex``,
    ``age``, ``acq_date``. Listed files that do not exist are skipped; with ``report_unlisted``, NIfTI files under the
    CSV's folder that no row lists are reported as ``no_csv_row``.
    """
    csv_path = Path(csv_path)
    base = csv_path.parent
    header, rows = _read_table(csv_path)
    columns = _resolve_columns(csv_path, header, _NIFTI_COLUMNS, ["path", "subject", "label"])

    def get(row: dict[str, str], name: str) -> str:
        column = columns.get(name)
        return row.get(column, "") if column else ""

    discovery = Discovery()
    skip = discovery.skipped.append
    listed: set[Path] = set()
    seen_ids: dict[str, int] = {}
    for line, row in rows:
        where = f"{csv_path.name} line {line}"
        subject, raw_path = get(row, "subject"), get(row, "path")
        if not raw_path or not subject:
            skip(Skipped("bad_row", f"{where}: empty path or subject", None, subject or None, line=line))
            continue
        path = Path(raw_path) if Path(raw_path).is_absolute() else base / raw_path
        listed.add(path.resolve())
        image_id = _nifti_image_id(get(row, "image_id"), path)
        if image_id in seen_ids:
            skip(
                Skipped(
                    "duplicate_row",
                    f"{where}: image {image_id} already listed on line {seen_ids[image_id]}",
                    image_id,
                    subject,
                    path,
                    line,
                )
            )
            continue
        seen_ids[image_id] = line
        if not path.is_file():
            skip(Skipped("file_missing", f"{where}: file not found: {path}", image_id, subject, path, line))
            continue
        group = normalize_group(get(row, "label"))
        if group not in LABELS:
            category = "group_excluded" if group in EXCLUDED_GROUPS else "no_label"
            text = "only AD and CN are used" if category == "group_excluded" else "expected AD/CN or 1/0"
            skip(Skipped(category, f"{where}: label {get(row, 'label')!r}: {text}", image_id, subject, path, line))
            continue
        try:
            acq_date = parse_acq_date(get(row, "acq_date"))
            age = _parse_age(get(row, "age"))
        except ValueError as error:
            raise ValueError(f"{csv_path}: line {line}: {error}") from error
        discovery.scans.append(
            Scan(
                image_id=image_id,
                subject=subject,
                group=group,
                label=LABELS[group],
                sex=get(row, "sex") or None,
                age=age,
                visit=get(row, "visit") or None,
                acq_date=acq_date,
                description=None,
                dicom_dir=None,
                source="nifti",
                nifti_path=path,
                label_source="nifti_csv",
            )
        )
    if report_unlisted:
        for candidate in sorted(p for p in base.rglob("*") if p.is_file() and p.name.endswith(_NIFTI_SUFFIXES)):
            if candidate.resolve() not in listed:
                skip(Skipped("no_csv_row", f"NIfTI file not listed in {csv_path.name}", path=candidate))
    return discovery


def _nifti_image_id(value: str, path: Path) -> str:
    """The ``image_id`` column (canonical when it is an ADNI id), else the file name without its NIfTI suffix."""
    text = value.strip()
    if text:
        try:
            return canonical_image_id(text)
        except ValueError:
            return text
    name = path.name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------- report


def discovery_summary(discovery: Discovery) -> dict[str, Any]:
    """Scans and subjects per group, and skipped images per category (most frequent first)."""
    groups: dict[str, dict[str, int]] = {}
    for group in sorted({s.group for s in discovery.scans}):
        members = [s for s in discovery.scans if s.group == group]
        groups[group] = {"scans": len(members), "subjects": len({_subject_key(s.subject) for s in members})}
    skipped = Counter(s.category for s in discovery.skipped)
    return {
        "scans": len(discovery.scans),
        "subjects": len({_subject_key(s.subject) for s in discovery.scans}),
        "groups": groups,
        "skipped_total": len(discovery.skipped),
        "skipped": dict(skipped.most_common()),
    }


def write_discovery_report(discovery: Discovery, path: Path | str) -> Path:
    """Write the summary and every skipped item: JSON for a ``.json`` path, readable text otherwise.

    The report is what explains the cohort size (dissertation 4.1.4) and lists what to fix in a download.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = discovery_summary(discovery)
    if path.suffix.lower() == ".json":
        payload = {"summary": summary, "skipped": [s.as_record() for s in discovery.skipped]}
        path.write_text(json.dumps(payload, indent=2) + "\n")
        return path
    lines = [f"Scans kept: {summary['scans']} from {summary['subjects']} subjects"]
    for group, counts in summary["groups"].items():
        lines.append(f"  {group}: {counts['scans']} scans from {counts['subjects']} subjects")
    lines.append(f"Skipped: {summary['skipped_total']}")
    for category, count in summary["skipped"].items():
        lines.append(f"  {category}: {count}")
    for category in summary["skipped"]:
        lines.append("")
        lines.append(f"[{category}]")
        for item in discovery.skipped:
            if item.category == category:
                who = " ".join(str(v) for v in (item.image_id, item.subject) if v)
                where = f" {item.path}" if item.path else ""
                lines.append(f"  {who or '-'}{where}: {item.reason}")
    path.write_text("\n".join(lines) + "\n")
    return path
