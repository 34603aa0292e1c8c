"""Reading the CSV tables of discovery (collection CSVs, NIfTI lists, label tables) and parsing their fields.

Tables come from ADNI's IDA, from ADNIMERGE, or from somebody's spreadsheet, so reading is forgiving where a guess
is safe and loud where it is not:

- Encoding: UTF-8 (with or without BOM; UTF-16 with a BOM), else Windows-1252, else Latin-1, with an ``encoding``
  warning naming the first byte that is not UTF-8. Spreadsheets on Windows save accented site names that way.
- Delimiter: the most frequent of ``,``, ``;`` and tab on the header line; quotes optional; blank lines skipped.
- Fields: an unreadable age, sex or date leaves that field empty with a ``bad_field`` warning naming file:line and
  the reason; it never aborts discovery.
- Dates: ADNI's ``M/D/YYYY`` (``3/26/2007``, optionally followed by a time), ISO ``YYYY-MM-DD``, and ``M/D/YY`` with
  a two-digit year read by the pivot **YY < 70 -> 20YY, otherwise 19YY** (ADNI began in 2004, so no scan predates
  1970 and none is later than 2069). Day-first dates are refused rather than guessed (``4/5/2006`` would silently
  swap months); an impossible one such as ``18/04/2006`` becomes a ``bad_field`` warning.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from preprocessing.subject_ids import find_subject_id, normalize_subject_id, subject_key

#: Two-digit years below this are 20YY, the others 19YY (see the module docstring).
TWO_DIGIT_YEAR_PIVOT = 70

_IMAGE_ID = re.compile(r"[Ii]?(\d+)(?:\.0+)?")
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
_SEX_ALIASES = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}
#: Collection CSV columns: canonical name -> accepted header spellings (compared after :func:`normalise_header`).
COLLECTION_COLUMNS: dict[str, tuple[str, ...]] = {
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
    "Atrophy": ("atrophy",),
}
#: ``--nifti-csv`` columns, the same way.
NIFTI_COLUMNS: dict[str, tuple[str, ...]] = {
    "path": ("path", "image", "file", "filename", "nifti"),
    "subject": ("subject", "subject id", "ptid"),
    "label": ("label", "group", "diagnosis", "dx bl", "dx"),
    "visit": ("visit",),
    "image_id": ("image id", "image data id"),
    "sex": ("sex",),
    "age": ("age",),
    "acq_date": ("acq date", "acquisition date", "scan date", "date"),
    "session": ("session", "session id"),
    "cdr": ("cdr", "cdr global", "cdrglob"),
    "mmse": ("mmse",),
    "atrophy": ("atrophy",),
}
_LABEL_SUBJECT_COLUMNS = ("ptid", "subject", "subject id", "participant id")
_LABEL_VALUE_COLUMNS = ("dx bl", "label", "group", "diagnosis", "dx")

T = TypeVar("T")


class TableError(ValueError):
    """A CSV file cannot be used as a whole (unreadable, empty, or a required column missing); the message says why."""


class TableColumnError(TableError):
    """A required column is missing from a CSV file; the message names the file and the column."""


def json_record(item: Any) -> dict[str, Any]:
    """A dataclass as a JSON-serialisable dict (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(item).items()}


@dataclass(frozen=True)
class DiscoveryWarning:
    """Something discovery read around rather than refused; ``message`` starts with ``file:line`` where known.

    Categories: ``encoding`` (not UTF-8), ``row_shape`` (more values than header columns), ``bad_field`` (age, sex or
    date left empty), ``subject_rewritten`` (a mangled ADNI id brought to ``NNN_S_NNNN``), ``subject_not_adni`` (no
    ADNI id in the subject), ``label_disagreement`` (the label table overrides a different ``Group``),
    ``image_id_renamed`` (a NIfTI image id made unique).
    """

    category: str
    message: str
    path: Path | None = None
    line: int | None = None
    subject: str | None = None
    image_id: str | None = None

    def as_record(self) -> dict[str, Any]:
        """A JSON-serialisable dict (paths as strings)."""
        return json_record(self)


@dataclass(frozen=True)
class Table:
    """A CSV read by :func:`read_table`: normalised header, ``(line, {header: stripped value})`` rows, warnings."""

    path: Path
    header: list[str]
    rows: list[tuple[int, dict[str, str]]]
    warnings: list[DiscoveryWarning] = field(default_factory=list)

    def where(self, line: int) -> str:
        """``name:line``, the prefix of every message about a row."""
        return f"{self.path.name}:{line}"


# ---------------------------------------------------------------- field parsers


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
    """``M/D/YYYY``, ``M/D/YY`` (pivot: YY < 70 is 20YY) or ``YYYY-MM-DD`` (a time may follow) -> ``YYYY-MM-DD``.

    Blank -> None. Any other form is an error rather than a guess: ``4/5/2006`` read day-first would swap months.
    """
    text = str(value).strip()
    if not text:
        return None
    us = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?", text)
    iso = re.match(r"(\d{4})-(\d{1,2})-(\d{1,2})(?:$|[ T_])", text)
    try:
        if us:
            year = int(us.group(3))
            if len(us.group(3)) == 2:
                year += 2000 if year < TWO_DIGIT_YEAR_PIVOT else 1900
            return dt.date(year, int(us.group(1)), int(us.group(2))).isoformat()
        if iso:
            return dt.date(int(iso.group(1)), int(iso.group(2)), int(iso.group(3))).isoformat()
    except ValueError as error:
        raise ValueError(f"invalid date {text!r}: {error}") from error
    raise ValueError(f"unrecognised date {text!r} (expected M/D/YYYY as ADNI exports it, or YYYY-MM-DD)")


def parse_age(value: str) -> float | None:
    """Age in years (``"84.8"``, or ``"84,8"`` from a locale with decimal commas); blank -> None."""
    text = str(value).strip()
    if not text:
        return None
    try:
        age = float(text.replace(",", "."))
    except ValueError as error:
        raise ValueError(f"invalid age {text!r}: not a number") from error
    if not 0 < age < 130:
        raise ValueError(f"invalid age {text!r}: not between 0 and 130 years")
    return age


def parse_sex(value: str) -> str | None:
    """``M``/``F`` from ``M``, ``F``, ``Male``, ``Female`` (any case); blank -> None."""
    text = str(value).strip()
    if not text:
        return None
    try:
        return _SEX_ALIASES[text.upper()]
    except KeyError:
        raise ValueError(f"invalid sex {text!r}: expected M, F, Male or Female") from None


def parse_number(value: str) -> float | None:
    """A number such as a CDR, an MMSE or an atrophy fraction (``"0,5"`` from a decimal-comma locale too); blank or
    ``n/a`` (BIDS) -> None."""
    text = str(value).strip()
    if not text or text.lower() in {"n/a", "na", "nan"}:
        return None
    try:
        return float(text.replace(",", "."))
    except ValueError:
        raise ValueError(f"invalid number {text!r}") from None


def normalize_group(value: str | None) -> str:
    """A diagnosis as written in a CSV -> ``"AD"``, ``"CN"``, or the upper-cased value (``"MCI"``, ``"PATIENT"``, "").

    Accepts the collection CSV's groups, ADNIMERGE's ``DX_bl``/``DX`` (``Dementia``, ``NL``) and 1/0 labels.
    """
    text = str(value or "").strip().upper()
    if re.fullmatch(r"[01]\.0+", text):
        text = text[0]
    return _GROUP_ALIASES.get(text, text)


def read_field(
    parser: Callable[[str], T | None], value: str, table: Table, line: int, name: str, warnings: list, **ids: Any
) -> T | None:
    """``parser(value)``, or None with a ``bad_field`` warning (file:line, reason) when the value is unreadable."""
    try:
        return parser(value)
    except ValueError as error:
        warnings.append(
            DiscoveryWarning("bad_field", f"{table.where(line)}: {error}; {name} left empty", table.path, line, **ids)
        )
        return None


def read_scan_fields(table: Table, line: int, values: dict[str, str], warnings: list, **ids: Any) -> dict[str, Any]:
    """``sex``, ``age`` and ``acq_date`` of a row from their cells; an unreadable one is None, with a warning."""
    parsers = {"sex": (parse_sex, "sex"), "age": (parse_age, "age"), "acq_date": (parse_acq_date, "acquisition date")}
    return {
        key: read_field(parser, values.get(key, ""), table, line, name, warnings, **ids)
        for key, (parser, name) in parsers.items()
    }


def subject_warning(raw: str, table: Table, line: int, image_id: str | None = None) -> DiscoveryWarning | None:
    """A ``subject_rewritten`` or ``subject_not_adni`` warning for a subject cell, or None when it is canonical."""
    normalised = normalize_subject_id(raw)
    where = table.where(line)
    if find_subject_id(raw) is None:
        message = f"{where}: subject {raw!r} is not an ADNI id (NNN_S_NNNN); kept as written"
        return DiscoveryWarning("subject_not_adni", message, table.path, line, normalised, image_id)
    if normalised != raw.strip():
        message = f"{where}: subject {raw!r} read as {normalised}"
        return DiscoveryWarning("subject_rewritten", message, table.path, line, normalised, image_id)
    return None


# ---------------------------------------------------------------- CSV reading


def normalise_header(name: str) -> str:
    """Header names compared case- and spacing-insensitively: ``"Image_Data ID"`` -> ``"image data id"``."""
    return re.sub(r"[\s_]+", " ", name.strip().strip('"').strip().lower())


def _decode(path: Path, data: bytes) -> tuple[str, DiscoveryWarning | None]:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16"), None
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as error:
        bad, line = data[error.start], data[: error.start].count(b"\n") + 1
    body = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    try:
        text, encoding = body.decode("cp1252"), "Windows-1252"
    except UnicodeDecodeError:  # cp1252 leaves five bytes undefined; Latin-1 maps every byte
        text, encoding = body.decode("latin-1"), "Latin-1"
    message = (
        f"{path.name}:{line}: not UTF-8 (byte 0x{bad:02x}); read as {encoding}. Check accented text, "
        "or save the table as UTF-8"
    )
    return text, DiscoveryWarning("encoding", message, path, line)


def read_table(path: Path | str) -> Table:
    """Rows of a CSV as ``(line number, {normalised header: stripped value})``, quoted or not (see module docstring).

    Short rows are padded with empty values; longer rows keep the values under the header and warn (an unquoted
    delimiter inside a value shifts the columns after it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    text, encoding_warning = _decode(path, path.read_bytes())
    warnings = [encoding_warning] if encoding_warning else []
    first_line = text.splitlines()[0] if text.strip() else ""
    delimiter = max((",", ";", "\t"), key=first_line.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, skipinitialspace=True)
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        for values in reader:
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if header is None:
                header = [normalise_header(v) for v in values]
                continue
            if len(values) > len(header) and any(v.strip() for v in values[len(header) :]):
                message = (
                    f"{path.name}:{line}: {len(values)} values but {len(header)} header columns (an unquoted "
                    f"{delimiter!r} inside a value?); the extra values are ignored"
                )
                warnings.append(DiscoveryWarning("row_shape", message, path, line))
            padded = list(values) + [""] * (len(header) - len(values))
            rows.append((line, {h: v.strip() for h, v in zip(header, padded, strict=False) if h}))
    except csv.Error as error:
        raise TableError(f"{path.name}:{reader.line_num}: cannot read the CSV: {error}") from error
    if header is None:
        raise TableColumnError(f"{path}: the file is empty (no header line)")
    return Table(path, header, rows, warnings)


def resolve_columns(table: Table, spec: dict[str, tuple[str, ...]], required: Iterable[str]) -> dict[str, str]:
    """Map canonical column names to the header names present; missing required ones raise, naming file and column."""
    present = set(table.header)
    resolved = {name: next((a for a in aliases if a in present), None) for name, aliases in spec.items()}
    missing = [name for name in required if resolved.get(name) is None]
    if missing:
        raise TableColumnError(
            f"{table.path}: missing required column {missing[0]!r}"
            + (f" (also missing: {', '.join(repr(m) for m in missing[1:])})" if len(missing) > 1 else "")
            + f"; columns found: {', '.join(h for h in table.header if h)}"
        )
    return {name: column for name, column in resolved.items() if column is not None}


def _pick_column(table: Table, wanted: str | None, candidates: Sequence[str], role: str) -> str:
    if wanted is not None:
        key = normalise_header(wanted)
        if key not in table.header:
            raise TableColumnError(
                f"{table.path}: missing required column {wanted!r} ({role}); columns found: {table.header}"
            )
        return key
    for candidate in candidates:
        if candidate in table.header:
            return candidate
    raise TableColumnError(
        f"{table.path}: missing required {role} column (looked for {', '.join(candidates)}); "
        f"columns found: {table.header}"
    )


# ---------------------------------------------------------------- label tables


@dataclass(frozen=True)
class LabelTable:
    """Diagnosis per subject (keyed by normalised id); subjects whose rows disagree are kept apart in ``conflicts``."""

    path: Path
    labels: dict[str, str]
    conflicts: dict[str, tuple[str, ...]]
    warnings: tuple[DiscoveryWarning, ...] = ()

    def lookup(self, subject: str) -> str | None:
        """The subject's normalised label (any spelling of its ADNI id), or None when absent or conflicting."""
        return self.labels.get(subject_key(subject))

    def conflict(self, subject: str) -> tuple[str, ...] | None:
        """The disagreeing labels of a subject, or None."""
        return self.conflicts.get(subject_key(subject))


def load_label_table(
    path: Path | str, subject_column: str | None = None, label_column: str | None = None
) -> LabelTable:
    """Diagnosis per subject from ADNIMERGE (``PTID``, ``DX_bl``) or a ``subject,label`` CSV.

    Column names are matched case-insensitively; when not given they are looked for among ``PTID``/``subject`` and
    ``DX_bl``/``label``/``group``/``diagnosis``/``DX``. Subjects are normalised (``AD_002_S_0295`` is
    ``002_S_0295``). ADNIMERGE repeats each subject once per visit: blank values are ignored and the remaining ones
    must agree (``AD`` and ``Dementia`` do), otherwise the subject is listed in ``conflicts`` and gets no label.
    """
    table = read_table(path)
    subject_col = _pick_column(table, subject_column, _LABEL_SUBJECT_COLUMNS, "subject")
    label_col = _pick_column(table, label_column, _LABEL_VALUE_COLUMNS, "label")
    warnings = list(table.warnings)
    values: dict[str, set[str]] = {}
    for line, row in table.rows:
        subject = row.get(subject_col, "")
        label = normalize_group(row.get(label_col, ""))
        if subject and label:
            note = subject_warning(subject, table, line)
            if note is not None:
                warnings.append(note)
            values.setdefault(subject_key(subject), set()).add(label)
    labels = {s: next(iter(v)) for s, v in values.items() if len(v) == 1}
    conflicts = {s: tuple(sorted(v)) for s, v in values.items() if len(v) > 1}
    return LabelTable(path=table.path, labels=labels, conflicts=conflicts, warnings=tuple(warnings))
