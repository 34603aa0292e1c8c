"""Discovery in an ADNI download: the collection CSV's rows (and an optional label table by subject) joined by image
id with the download's folders, every row ending up as a :class:`Scan` or a :class:`Skipped`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from preprocessing.adni.folders import _download_folders
from preprocessing.adni.measures import nearest_measures, read_visit_measures
from preprocessing.adni.records import (
    _LABEL_TABLE_FIX,
    DEFAULT_CLASSES,
    Discovery,
    Scan,
    Skipped,
    _usable_group,
    class_of,
    classes_text,
)
from preprocessing.adni.series import DEFAULT_EXCLUDE_PATTERNS, DEFAULT_MPRAGE_PATTERNS, _series_fix
from preprocessing.subject_ids import normalize_subject_id, subject_key
from preprocessing.tables import (
    COLLECTION_COLUMNS,
    DiscoveryWarning,
    LabelTable,
    canonical_image_id,
    load_label_table,
    normalize_group,
    parse_number,
    read_field,
    read_scan_fields,
    read_table,
    resolve_columns,
    subject_warning,
)


def discover_adni(
    collection_csv: Path | str,
    adni_root: Path | str | None,
    include_patterns: Sequence[str] = DEFAULT_MPRAGE_PATTERNS,
    exclude_patterns: Sequence[str] = DEFAULT_EXCLUDE_PATTERNS,
    label_table: Path | str | LabelTable | None = None,
    label_subject_column: str | None = None,
    label_column: str | None = None,
    require_dicom: bool = True,
    classes: Sequence[str] = DEFAULT_CLASSES,
    window_days: int = 365,
) -> Discovery:
    """The MPRAGE scans of the ``classes`` (default CN and AD) of an ADNI collection CSV, joined by image id with
    the DICOM folders of its download.

    ``include_patterns``/``exclude_patterns`` select series by description (see :func:`select_description` and
    :data:`SERIES_PRESETS`). With ``label_table`` the subject's diagnosis there overrides the CSV's ``Group``
    (subjects absent from the table keep their ``Group``; a table that disagrees with a real ``Group`` is reported
    as a ``label_disagreement`` warning). With ``adni_root`` (the ``ADNI`` folder or its parent), a selected image
    whose folder is missing is skipped when ``require_dicom`` (kept with ``dicom_dir=None`` otherwise), and folders
    that no CSV row describes are reported. Scans come out in CSV order; a row listing an image already listed is
    skipped as ``duplicate_input``. An ``Atrophy`` column (the synthetic cohort's) is read into ``Scan.atrophy``;
    a label table with exam dates and MMSE or global CDR (ADNIMERGE) gives each scan those of the visit nearest its
    acquisition date within ``window_days`` (:mod:`.measures`).
    """
    classes = tuple(classes)
    table = (
        label_table
        if isinstance(label_table, LabelTable) or label_table is None
        else load_label_table(label_table, label_subject_column, label_column)
    )
    measures = read_visit_measures(table.path) if table is not None else {}
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
        classes=classes,
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
        label_result = _resolve_label(subject, csv_group, table, classes)
        if isinstance(label_result, Skipped):
            skip(Skipped(label_result.category, f"{where}: {label_result.reason}", **described))
            continue
        group, label_source = label_result
        if label_source == "label_table" and _usable_group(csv_group) and class_of(csv_group, classes)[0] != group:
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
        atrophy = read_field(parse_number, get(row, "Atrophy"), csv_table, line, "atrophy", discovery.warnings,
                             image_id=image_id, subject=subject)  # fmt: skip
        mmse, cdr = nearest_measures(measures.get(subject_key(subject), []), fields["acq_date"], window_days)
        discovery.scans.append(
            Scan(
                image_id=image_id,
                subject=subject,
                group=group,
                label=classes.index(group),
                **fields,
                visit=get(row, "Visit") or None,
                description=description,
                dicom_dir=dicom_dir,
                source="adni",
                label_source=label_source,
                subject_raw=raw_subject,
                atrophy=atrophy,
                mmse=mmse,
                cdr=cdr,
            )
        )
    return discovery


def _resolve_label(
    subject: str, csv_group: str, table: LabelTable | None, classes: Sequence[str] = DEFAULT_CLASSES
) -> tuple[str, str] | Skipped:
    """``(class, label_source)`` for one of ``classes``, else a Skipped (category and reason; the caller fills in
    the ids)."""
    conflict = table.conflict(subject) if table is not None else None
    if conflict is not None:
        return Skipped("label_conflict", f"conflicting labels {'/'.join(conflict)} for {subject} in {table.path.name}")
    table_label = table.lookup(subject) if table is not None else None
    if table is not None and table_label is not None:
        written_group, source = table_label, "label_table"
        written = f"label {written_group!r} in {table.path.name}"
    else:
        written_group, source = csv_group, "collection_csv"
        written = f"Group {csv_group!r} in the collection CSV" + (
            f" and {subject} not in {table.path.name}" if table is not None else ""
        )
    group, category = class_of(written_group, classes)
    if group is not None:
        return group, source
    if category == "group_excluded":
        reason = f"group {normalize_group(written_group)} ({written}): only {classes_text(classes)} are used"
        return Skipped("group_excluded", reason)
    fix = (
        f"add {subject} to {table.path.name}"
        if table is not None
        else f"give diagnoses by subject with {_LABEL_TABLE_FIX}"
    )
    return Skipped("no_label", f"no usable label: {written}; {fix}")
