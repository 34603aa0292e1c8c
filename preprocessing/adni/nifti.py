"""Discovery in a plain folder of NIfTI/MGZ files described by a small CSV (``path, subject, label[, visit]``)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from preprocessing.adni.records import DEFAULT_CLASSES, NIFTI_SUFFIXES, Discovery, Scan, Skipped, class_of, classes_text
from preprocessing.subject_ids import normalize_subject_id
from preprocessing.tables import (
    NIFTI_COLUMNS,
    DiscoveryWarning,
    Table,
    canonical_image_id,
    parse_number,
    read_field,
    read_scan_fields,
    read_table,
    resolve_columns,
    subject_warning,
)


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


def discover_nifti(
    csv_path: Path | str, report_unlisted: bool = True, classes: Sequence[str] = DEFAULT_CLASSES
) -> Discovery:
    """Scans from a folder of images described by a small CSV: ``path, subject, label[, visit]``.

    ``path`` is relative to the CSV's folder (absolute paths work too) and must end in ``.nii``, ``.nii.gz`` or
    ``.mgz`` (others are skipped as ``unsupported_format``); ``label`` is one of ``classes`` (AD/CN or 1/0 by
    default; MCI and the like are skipped unless MCI is a class). Optional columns: ``image_id`` (default: the file
    name without its suffix; made unique per file, see :func:`_unique_image_ids`), ``sex``, ``age``, ``acq_date``,
    ``session``, ``cdr``, ``mmse``, ``atrophy``. A row listing a file that an earlier row lists is skipped as
    ``duplicate_input``; listed files that do not exist are skipped; with ``report_unlisted``, image files
    under the CSV's folder that no row lists are reported as ``no_csv_row``.
    """
    table = read_table(csv_path)
    base = table.path.parent
    columns = resolve_columns(table, NIFTI_COLUMNS, ["path", "subject", "label"])

    def get(row: dict[str, str], name: str) -> str:
        column = columns.get(name)
        return row.get(column, "") if column else ""

    classes = tuple(classes)
    discovery = Discovery(source="nifti", include_patterns=(), exclude_patterns=(), classes=classes)
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
        group, category = class_of(get(row, "label"), classes)
        if group is None:
            expected = "AD/CN or 1/0" if classes == DEFAULT_CLASSES else "/".join(classes)
            text = f"only {classes_text(classes)} are used" if category == "group_excluded" else f"expected {expected}"
            reason = f"{where}: label {get(row, 'label')!r}: {text}"
            skip(Skipped(category, reason, image_id, subject, path, line, group=get(row, "label") or None))
            continue
        cells = {"sex": get(row, "sex"), "age": get(row, "age"), "acq_date": get(row, "acq_date")}
        fields = read_scan_fields(table, line, cells, discovery.warnings, image_id=image_id, subject=subject)
        for name in ("cdr", "mmse", "atrophy"):
            fields[name] = read_field(parse_number, get(row, name), table, line, name, discovery.warnings,
                                      image_id=image_id, subject=subject)  # fmt: skip
        discovery.scans.append(
            Scan(
                image_id=image_id,
                subject=subject,
                group=group,
                label=classes.index(group),
                **fields,
                visit=get(row, "visit") or None,
                description=None,
                dicom_dir=None,
                source="nifti",
                nifti_path=path,
                label_source="nifti_csv",
                subject_raw=outcome["raw_subject"],
                session=get(row, "session") or None,
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
