"""Discovery of the scans to use: an ADNI download plus its collection CSV, or a plain folder of NIfTI files.

The dissertation (4.1) used ADNI's T1-weighted MPRAGE scans of AD and CN subjects only. An ADNI download lays images
out as ``ADNI/<subject>/<description>/<date_time>/I<image id>/*.dcm`` and comes with a collection CSV (``"Image Data
ID","Subject","Group",...``). Discovery joins the two by image id, keeps MPRAGE series of AD and CN subjects, and
records every row it leaves out as a :class:`Skipped` with a reason (not MPRAGE, MCI, no usable label, folder missing
from the download, folder without a CSV row, duplicate, ...), so that the cohort's size can be explained rather than
guessed: every input row ends up as a :class:`Scan` or a :class:`Skipped`.

Real exports vary: quotes may be missing, columns added or reordered, image ids may lack their leading ``I``, tables
may be Latin-1, fields unreadable (see :mod:`preprocessing.tables`), and subject ids hand-mangled (``AD_109_S_1192``,
see :mod:`preprocessing.subject_ids`): such rows are read around, with a :class:`DiscoveryWarning`. Some collections
give ``Group = Patient`` for every row; a label table by subject (ADNIMERGE's ``PTID``/``DX_bl``, or a plain
``subject,label`` CSV) then supplies the diagnosis and overrides ``Group``. Processed IDA exports (``MPR; GradWarp;
B1 Correction``, ``MT1; N3m``, ...) are selected with the ``adni-processed`` entry of :data:`SERIES_PRESETS`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preprocessing.subject_ids import normalize_subject_id, subject_key
from preprocessing.tables import (
    COLLECTION_COLUMNS,
    NIFTI_COLUMNS,
    TWO_DIGIT_YEAR_PIVOT,
    DiscoveryWarning,
    LabelTable,
    Table,
    TableColumnError,
    TableError,
    canonical_image_id,
    json_record,
    load_label_table,
    normalize_group,
    parse_acq_date,
    read_scan_fields,
    read_table,
    resolve_columns,
    subject_warning,
)

__all__ = [
    "ADNI_PROCESSED_PATTERNS", "ANY_MPRAGE_PATTERNS", "DEFAULT_EXCLUDE_PATTERNS", "DEFAULT_MPRAGE_PATTERNS",
    "DEFAULT_SERIES", "EXCLUDED_GROUPS", "LABELS", "NIFTI_SUFFIXES", "SERIES_PRESETS", "TWO_DIGIT_YEAR_PIVOT",
    "Discovery", "DiscoveryWarning", "LabelTable", "Scan", "Skipped", "TableColumnError", "TableError",
    "canonical_image_id", "discover_adni", "discover_nifti", "discovery_hints", "discovery_summary",
    "load_label_table", "normalize_group", "normalize_subject_id", "parse_acq_date", "select_description",
    "series_patterns", "warning_lines", "write_discovery_report",
]  # fmt: skip

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

#: Labels used for training: AD is the positive class.
LABELS: dict[str, int] = {"AD": 1, "CN": 0}
#: Diagnoses that exist in ADNI but are not part of the AD vs CN task.
EXCLUDED_GROUPS: frozenset[str] = frozenset({"MCI", "EMCI", "LMCI", "SMC"})
#: Image formats accepted in a ``--nifti-csv`` list (compared case-insensitively).
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mgz")

_SERIES_FOLDER = re.compile(r"[Ss]\d+")
_IMAGE_ID_IN_FILENAME = re.compile(r"_I(\d+)\.dcm$", re.IGNORECASE)
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
        return discovery_summary(self)

    def hints(self) -> list[str]:
        """One line per skip category that an option would fix, naming the option; see :func:`discovery_hints`."""
        return discovery_hints(self)


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


def _usable_group(value: str | None) -> bool:
    group = normalize_group(value)
    return group in LABELS or group in EXCLUDED_GROUPS


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


def _download_folders(
    adni_root: Path, ordered: Sequence[tuple[str, int, dict[str, str]]], get: Callable, discovery: Discovery
) -> dict[str, _Folder]:
    """The download's image folders by image id; duplicates and folders no row explains are reported."""
    skip = discovery.skipped.append
    folders: dict[str, _Folder] = {}
    unresolved: list[_Folder] = []
    for folder in _scan_download(_resolve_adni_root(adni_root)):
        if folder.image_id is None:
            unresolved.append(folder)
        elif folder.image_id in folders:
            reason = f"image {folder.image_id} downloaded twice; using {folders[folder.image_id].path}"
            skip(
                Skipped("duplicate_folder", reason, folder.image_id, normalize_subject_id(folder.subject), folder.path)
            )
        else:
            folders[folder.image_id] = folder
    for folder in unresolved:
        match = _match_by_visit(folder, ordered, folders, get)
        if match is None:
            reason = (
                f"cannot tell which image folder {folder.path.name} holds (no I<id> in its name or file names, and "
                "no single CSV row with its subject, description and date)"
            )
            skip(Skipped("unmatched_folder", reason, None, normalize_subject_id(folder.subject), folder.path))
        else:
            folders[match] = folder
    return folders


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
        if image_id in taken or subject_key(get(row, "Subject")) != subject_key(folder.subject):
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

    ``include_patterns``/``exclude_patterns`` select series by description (see :func:`select_description` and
    :data:`SERIES_PRESETS`). With ``label_table`` the subject's diagnosis there overrides the CSV's ``Group``
    (subjects absent from the table keep their ``Group``; a table that disagrees with a real ``Group`` is reported
    as a ``label_disagreement`` warning). With ``adni_root`` (the ``ADNI`` folder or its parent), a selected image
    whose folder is missing is skipped when ``require_dicom`` (kept with ``dicom_dir=None`` otherwise), and folders
    that no CSV row describes are reported. Scans come out in CSV order; a row listing an image already listed is
    skipped as ``duplicate_input``.
    """
    table = (
        label_table
        if isinstance(label_table, LabelTable) or label_table is None
        else load_label_table(label_table, label_subject_column, label_column)
    )
    csv_table = read_table(collection_csv)
    required = ["Image Data ID", "Subject", "Description"] + ([] if table is not None else ["Group"])
    columns = resolve_columns(csv_table, COLLECTION_COLUMNS, required)

    def get(row: dict[str, str], name: str) -> str:
        column = columns.get(name)
        return row.get(column, "") if column else ""

    discovery = Discovery(
        include_patterns=tuple(include_patterns),
        exclude_patterns=tuple(exclude_patterns),
        label_table=table.path if table is not None else None,
    )
    discovery.warnings += csv_table.warnings + list(table.warnings if table is not None else ())
    skip, warn = discovery.skipped.append, discovery.warnings.append

    # The CSV rows by canonical image id: the first row of an image is the one used.
    first_line: dict[str, int] = {}
    ordered: list[tuple[str, int, dict[str, str]]] = []
    for line, row in csv_table.rows:
        where, raw_id, raw_subject = csv_table.where(line), get(row, "Image Data ID"), get(row, "Subject")
        subject = normalize_subject_id(raw_subject) or None
        try:
            image_id = canonical_image_id(raw_id)
        except ValueError:
            skip(Skipped("bad_row", f"{where}: bad image id {raw_id!r}", None, subject, line=line))
            continue
        if subject is None:
            skip(Skipped("bad_row", f"{where}: empty subject", image_id, None, line=line))
            continue
        if image_id in first_line:
            reason = f"{where}: image {image_id} is already listed on line {first_line[image_id]}; that row is used"
            skip(Skipped("duplicate_input", reason, image_id, subject, line=line))
            continue
        note = subject_warning(raw_subject, csv_table, line, image_id)
        if note is not None:
            warn(note)
        first_line[image_id] = line
        ordered.append((image_id, line, row))

    folders = _download_folders(Path(adni_root), ordered, get, discovery) if adni_root is not None else {}
    for image_id, folder in folders.items():
        if image_id not in first_line:
            reason = f"folder on disk but no row for {image_id} in {csv_table.path.name}"
            skip(Skipped("no_csv_row", reason, image_id, normalize_subject_id(folder.subject), folder.path))

    include = [re.compile(p, re.IGNORECASE) for p in include_patterns]
    exclude = [re.compile(p, re.IGNORECASE) for p in exclude_patterns]
    for image_id, line, row in ordered:
        raw_subject, description, csv_group = get(row, "Subject"), get(row, "Description"), get(row, "Group")
        subject, where, modality = normalize_subject_id(raw_subject), csv_table.where(line), get(row, "Modality")
        described = {"image_id": image_id, "subject": subject, "line": line, "description": description or None}
        described["group"] = csv_group or None
        if modality and modality.strip().upper() not in {"MR", "MRI"}:
            skip(Skipped("not_mri", f"{where}: modality {modality!r}, not MRI", **described))
            continue
        if not (any(p.search(description) for p in include) and not any(p.search(description) for p in exclude)):
            reason = f"{where}: description {description!r} is not a selected T1w MPRAGE series; "
            fix = _series_fix(description, discovery)
            reason += fix
            if table is None and not _usable_group(csv_group) and "excluded" not in fix:
                reason += f" (its Group {csv_group!r} is no diagnosis: add {_LABEL_TABLE_FIX} too)"
            skip(Skipped("not_mprage", reason, **described))
            continue
        label_result = _resolve_label(subject, csv_group, table)
        if isinstance(label_result, Skipped):
            skip(Skipped(label_result.category, f"{where}: {label_result.reason}", **described))
            continue
        group, label_source = label_result
        if label_source == "label_table" and _usable_group(csv_group) and normalize_group(csv_group) != group:
            message = f"{where}: {subject} has Group {csv_group!r} but {table.path.name} says {group}; the table wins"
            warn(DiscoveryWarning("label_disagreement", message, csv_table.path, line, subject, image_id))

        dicom_dir: Path | None = None
        if adni_root is not None:
            folder = folders.get(image_id)
            if folder is None:
                if require_dicom:
                    reason = f"{where}: selected, but its folder is missing from the download"
                    skip(Skipped("folder_missing", reason, **described))
                    continue
            elif subject_key(folder.subject) != subject_key(subject):
                reason = f"{where}: folder is under subject {folder.subject} but the row says {raw_subject}"
                skip(Skipped("subject_mismatch", reason, image_id, subject, folder.path, line, description))
                continue
            else:
                dicom_dir = folder.path

        cells = {"sex": get(row, "Sex"), "age": get(row, "Age"), "acq_date": get(row, "Acq Date")}
        fields = read_scan_fields(csv_table, line, cells, discovery.warnings, image_id=image_id, subject=subject)
        discovery.scans.append(
            Scan(
                image_id=image_id,
                subject=subject,
                group=group,
                label=LABELS[group],
                **fields,
                visit=get(row, "Visit") or None,
                description=description,
                dicom_dir=dicom_dir,
                source="adni",
                label_source=label_source,
                subject_raw=raw_subject,
            )
        )
    return discovery


def _resolve_label(subject: str, csv_group: str, table: LabelTable | None) -> tuple[str, str] | Skipped:
    """``(group, label_source)`` for AD/CN, else a Skipped (category and reason; ids are filled in by the caller)."""
    conflict = table.conflict(subject) if table is not None else None
    if conflict is not None:
        return Skipped("label_conflict", f"conflicting labels {'/'.join(conflict)} for {subject} in {table.path.name}")
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
    fix = (
        f"add {subject} to {table.path.name}"
        if table is not None
        else f"give diagnoses by subject with {_LABEL_TABLE_FIX}"
    )
    return Skipped("no_label", f"no usable label: {written}; {fix}")


# ---------------------------------------------------------------- NIfTI folder


def _image_suffix(name: str) -> str | None:
    lowered = name.lower()
    return next((suffix for suffix in NIFTI_SUFFIXES if lowered.endswith(suffix)), None)


def _path_digest(path: Path, base: Path) -> str:
    """8 hex digits of the file's path relative to the CSV's folder: stable across reruns and moves of the folder."""
    relative = Path(os.path.relpath(path, base.resolve())).as_posix()
    return hashlib.sha1(relative.encode()).hexdigest()[:8]


def _unique_image_ids(candidates: list[dict[str, Any]], table: Table, base: Path, discovery: Discovery) -> None:
    """Give every listed file its own image id and output name (``convert.output_name``), in place.

    An id that several files would share (``T1`` from ``a/T1.nii.gz`` and ``b/T1.nii.gz``, or the same
    ``image_id`` cell) gets ``-<8 hex of the path>`` on every one of those files. The suffix depends only on the
    file's path, not on row order, so reordering the CSV keeps every output name.
    """
    from preprocessing.convert import output_name  # dicom2nifti and pydicom: only needed here

    keys: list[Callable[[dict[str, Any]], str]] = [
        lambda c: output_name("", c["image_id"]).lower(),  # the pipeline joins on image ids
        lambda c: output_name(c["subject"], c["image_id"]).lower(),  # and writes files named by both
    ]
    for key in keys:
        groups: dict[str, list[dict[str, Any]]] = {}
        for candidate in candidates:
            groups.setdefault(key(candidate), []).append(candidate)
        for members in (m for m in groups.values() if len(m) > 1):
            lines = ", ".join(str(m["line"]) for m in members)
            for member in members:
                digest = _path_digest(member["resolved"], base)
                if member["image_id"].endswith(digest):
                    continue
                old, member["image_id"] = member["image_id"], f"{member['image_id']}-{digest}"
                message = (
                    f"{table.where(member['line'])}: image id {old!r} is shared by the files of lines {lines}; "
                    f"this one is {member['image_id']}"
                )
                discovery.warnings.append(
                    DiscoveryWarning(
                        "image_id_renamed", message, table.path, member["line"], member["subject"], member["image_id"]
                    )
                )


def discover_nifti(csv_path: Path | str, report_unlisted: bool = True) -> Discovery:
    """Scans from a folder of images described by a small CSV: ``path, subject, label[, visit]``.

    ``path`` is relative to the CSV's folder (absolute paths work too) and must end in ``.nii``, ``.nii.gz`` or
    ``.mgz`` (others are skipped as ``unsupported_format``); ``label`` is AD/CN or 1/0 (MCI and the like are
    skipped). Optional columns: ``image_id`` (default: the file name without its suffix; made unique per file, see
    :func:`_unique_image_ids`), ``sex``, ``age``, ``acq_date``. A row listing a file that an earlier row lists is
    skipped as ``duplicate_input``; listed files that do not exist are skipped; with ``report_unlisted``, image files
    under the CSV's folder that no row lists are reported as ``no_csv_row``.
    """
    table = read_table(csv_path)
    base = table.path.parent
    columns = resolve_columns(table, NIFTI_COLUMNS, ["path", "subject", "label"])

    def get(row: dict[str, str], name: str) -> str:
        column = columns.get(name)
        return row.get(column, "") if column else ""

    discovery = Discovery(source="nifti", include_patterns=(), exclude_patterns=())
    discovery.warnings += table.warnings
    outcomes: list[tuple[int, Skipped | dict[str, Any]]] = []  # by row, emitted once image ids are known
    first_line: dict[Path, dict[str, Any]] = {}
    for line, row in table.rows:
        where, raw_subject, raw_path = table.where(line), get(row, "subject"), get(row, "path")
        subject = normalize_subject_id(raw_subject)
        if not raw_path or not subject:
            outcomes.append(
                (line, Skipped("bad_row", f"{where}: empty path or subject", None, subject or None, line=line))
            )
            continue
        path = Path(raw_path) if Path(raw_path).is_absolute() else base / raw_path
        suffix = _image_suffix(path.name)
        if suffix is None:
            reason = f"{where}: {path.name!r} is not a supported image format ({', '.join(NIFTI_SUFFIXES)})"
            outcomes.append((line, Skipped("unsupported_format", reason, None, subject, path, line)))
            continue
        resolved = path.resolve()
        if resolved in first_line:
            outcomes.append(
                (line, {"duplicate_of": first_line[resolved], "line": line, "subject": subject, "path": path})
            )
            continue
        given = get(row, "image_id")
        image_id = _given_image_id(given) if given else path.name[: -len(suffix)]
        candidate = {"line": line, "row": row, "subject": subject, "raw_subject": raw_subject, "path": path,
                     "resolved": resolved, "image_id": image_id}  # fmt: skip
        first_line[resolved] = candidate
        outcomes.append((line, candidate))
        note = subject_warning(raw_subject, table, line)
        if note is not None:
            discovery.warnings.append(note)
    _unique_image_ids([c for _, c in outcomes if isinstance(c, dict) and "row" in c], table, base, discovery)

    skip = discovery.skipped.append
    for line, outcome in outcomes:
        if isinstance(outcome, Skipped):
            skip(outcome)
            continue
        where, subject, path = table.where(line), outcome["subject"], outcome["path"]
        if "duplicate_of" in outcome:
            first = outcome["duplicate_of"]
            reason = f"{where}: same file as line {first['line']} ({first['path'].name}); that row is used"
            skip(Skipped("duplicate_input", reason, first["image_id"], subject, path, line))
            continue
        image_id, row = outcome["image_id"], outcome["row"]
        if not path.is_file():
            skip(Skipped("file_missing", f"{where}: file not found: {path}", image_id, subject, path, line))
            continue
        group = normalize_group(get(row, "label"))
        if group not in LABELS:
            category = "group_excluded" if group in EXCLUDED_GROUPS else "no_label"
            text = "only AD and CN are used" if category == "group_excluded" else "expected AD/CN or 1/0"
            reason = f"{where}: label {get(row, 'label')!r}: {text}"
            skip(Skipped(category, reason, image_id, subject, path, line, group=get(row, "label") or None))
            continue
        cells = {"sex": get(row, "sex"), "age": get(row, "age"), "acq_date": get(row, "acq_date")}
        fields = read_scan_fields(table, line, cells, discovery.warnings, image_id=image_id, subject=subject)
        discovery.scans.append(
            Scan(
                image_id=image_id,
                subject=subject,
                group=group,
                label=LABELS[group],
                **fields,
                visit=get(row, "visit") or None,
                description=None,
                dicom_dir=None,
                source="nifti",
                nifti_path=path,
                label_source="nifti_csv",
                subject_raw=outcome["raw_subject"],
            )
        )
    if report_unlisted:
        for candidate in sorted(p for p in base.rglob("*") if p.is_file() and _image_suffix(p.name)):
            if candidate.resolve() not in first_line:
                skip(Skipped("no_csv_row", f"image file not listed in {table.path.name}", path=candidate))
    return discovery


def _given_image_id(value: str) -> str:
    """The ``image_id`` cell: canonical when it is an ADNI id, else as written."""
    try:
        return canonical_image_id(value)
    except ValueError:
        return value.strip()


# ---------------------------------------------------------------- report

_WARNING_TITLES = {
    "encoding": "tables not in UTF-8 (read as Windows-1252 or Latin-1)",
    "row_shape": "rows with more values than header columns",
    "bad_field": "unreadable fields left empty",
    "subject_rewritten": "subject ids rewritten to ADNI's NNN_S_NNNN",
    "subject_not_adni": "subjects without an ADNI id (NNN_S_NNNN), kept as written",
    "label_disagreement": "rows whose Group the label table overrides with a different diagnosis",
    "image_id_renamed": "image ids shared by several files, made unique with a path hash",
}


def discovery_summary(discovery: Discovery) -> dict[str, Any]:
    """Scans and subjects per group, skipped images per category and warnings per category (most frequent first)."""
    groups: dict[str, dict[str, int]] = {}
    for group in sorted({s.group for s in discovery.scans}):
        members = [s for s in discovery.scans if s.group == group]
        groups[group] = {"scans": len(members), "subjects": len({subject_key(s.subject) for s in members})}
    skipped = Counter(s.category for s in discovery.skipped)
    return {
        "scans": len(discovery.scans),
        "subjects": len({subject_key(s.subject) for s in discovery.scans}),
        "groups": groups,
        "skipped_total": len(discovery.skipped),
        "skipped": dict(skipped.most_common()),
        "warnings": dict(Counter(w.category for w in discovery.warnings).most_common()),
    }


def warning_lines(discovery: Discovery, examples: int = 3) -> list[str]:
    """One line per warning category: count, what it means, and the first ``examples`` messages."""
    lines = []
    for category, count in Counter(w.category for w in discovery.warnings).most_common():
        messages = [w.message for w in discovery.warnings if w.category == category]
        shown = "; ".join(messages[:examples]) + ("; ..." if len(messages) > examples else "")
        lines.append(f"{count} {_WARNING_TITLES.get(category, category)}: {shown}")
    return lines


def discovery_hints(discovery: Discovery) -> list[str]:
    """How to fix the skips an option would fix: the descriptions seen most and the ``--series``/``--include-pattern``
    that selects them, and ``--label-table`` for rows without a diagnosis."""
    hints = []
    not_mprage = [s for s in discovery.skipped if s.category == "not_mprage"]
    if not_mprage:
        counts = Counter(s.description or "" for s in not_mprage)
        top = ", ".join(f"{d!r} ({n})" for d, n in counts.most_common(5))
        hint = f"not_mprage: {len(not_mprage)} images skipped for their series description; most frequent: {top}."
        for name, patterns in SERIES_PRESETS.items():
            accepted = sum(n for d, n in counts.items() if select_description(d, patterns, discovery.exclude_patterns))
            if accepted and tuple(patterns) != discovery.include_patterns:
                hint += f" --series {name} accepts {accepted} of them."
        selectable = [d for d, _ in counts.most_common() if select_description(d, [".*"], discovery.exclude_patterns)]
        exclude = discovery.exclude_patterns
        others = [d for d in selectable if not any(select_description(d, p, exclude) for p in SERIES_PRESETS.values())]
        if others:
            hint += f" To select {others[0]!r}: --include-pattern {_pattern_for(others[0])}."
        elif selectable:
            hint += f" Or, for exactly one description: --include-pattern {_pattern_for(selectable[0])}."
        unlabelled = sum(not _usable_group(s.group) for s in not_mprage)
        if unlabelled and discovery.label_table is None and discovery.source == "adni":
            hint += f" {unlabelled} of them have no diagnosis in Group (e.g. 'Patient'): add {_LABEL_TABLE_FIX} too."
        hints.append(hint)
    no_label = [s for s in discovery.skipped if s.category == "no_label"]
    if no_label:
        column = "label" if discovery.source == "nifti" else "Group"
        written = Counter(s.group or "" for s in no_label).most_common(3)
        groups = f"{column} " + ", ".join(f"{g!r} {n}" for g, n in written)
        if discovery.source == "nifti":
            fix = "write AD/CN or 1/0 in the label column"
        elif discovery.label_table is None:
            fix = f"give diagnoses by subject with {_LABEL_TABLE_FIX}"
        else:
            fix = f"their subjects are not in {discovery.label_table.name}: add them there"
        hints.append(f"no_label: {len(no_label)} images without a usable diagnosis ({groups}): {fix}.")
    unsupported = sum(s.category == "unsupported_format" for s in discovery.skipped)
    if unsupported:
        hints.append(f"unsupported_format: {unsupported} files; convert them to one of {', '.join(NIFTI_SUFFIXES)}.")
    return hints


def write_discovery_report(discovery: Discovery, path: Path | str) -> Path:
    """Write the summary, hints, warnings and every skipped item: JSON for a ``.json`` path, readable text otherwise.

    The report is what explains the cohort size (dissertation 4.1.4) and lists what to fix in a download.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = discovery_summary(discovery)
    if path.suffix.lower() == ".json":
        payload = {
            "summary": summary,
            "hints": discovery_hints(discovery),
            "warnings": [w.as_record() for w in discovery.warnings],
            "skipped": [s.as_record() for s in discovery.skipped],
        }
        path.write_text(json.dumps(payload, indent=2) + "\n")
        return path
    lines = [f"Scans kept: {summary['scans']} from {summary['subjects']} subjects"]
    for group, counts in summary["groups"].items():
        lines.append(f"  {group}: {counts['scans']} scans from {counts['subjects']} subjects")
    lines.append(f"Skipped: {summary['skipped_total']}")
    for category, count in summary["skipped"].items():
        lines.append(f"  {category}: {count}")
    lines += [f"Hint: {hint}" for hint in discovery_hints(discovery)]
    if discovery.warnings:
        lines += ["", f"Warnings: {len(discovery.warnings)}"]
        for category in summary["warnings"]:
            lines.append(f"[{category}] {_WARNING_TITLES.get(category, category)}")
            lines += [f"  {w.message}" for w in discovery.warnings if w.category == category]
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
