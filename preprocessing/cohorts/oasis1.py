"""Discovery in OASIS-1 (cross-sectional): the raw MPRAGE repetitions of each session, labels from the CDR.

Layout, as the OASIS-1 discs unpack: ``<root>/[disc1/]OAS1_0001_MR1/RAW/OAS1_0001_MR1_mpr-1_anon.hdr`` with its
``.img`` (Analyze 7.5, 3-4 repetitions ``mpr-1``... of a sagittal MPRAGE per session), and
``oasis_cross-sectional.csv`` (``ID, M/F, Hand, Age, Educ, SES, MMSE, CDR, eTIV, nWBV, ASF, Delay``; one row per
session, ``OAS1_0001_MR1``; the reliability subset has a second session ``MR2`` a few days later). The processed
images (``PROCESSED/``, ``FSL_SEG/``) are not used: the chain starts from raw scans as for every other cohort.
Subjects are ``OAS1_0001``, sessions ``MR1``/``MR2``, image ids ``OAS1_0001_MR1_mpr-1``.

Labels from the global CDR (OASIS-1's clinical rating): CDR 0 is CN, CDR >= ``cdr_ad_threshold`` is AD (0.5 by
default: OASIS-1 calls CDR 0.5 very mild dementia; 1 keeps only mild and moderate dementia), CDR 0.5 under a threshold
of 1 is MCI when MCI is a class and left out otherwise. OASIS-1 rated CDR only for participants aged 60 and over; the
younger ones (18-59) have no CDR and are described as non-demented. They are left out (``no_label``) by default, since
young adults are no age-matched controls for AD; ``young_as_cn`` counts those under 60 as CN. One repetition per
session (``mpr-1``, the lowest present; ``repetitions="first"``) or all of them (``"all"``, each its own scan: the
split keeps a subject's scans together).

Analyze headers hold no reliable orientation; the batch converts each pair to NIfTI with OASIS-1's raw layout
(:mod:`preprocessing.cohorts.analyze`), so the chain sees the head the right way up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from preprocessing.adni.records import DEFAULT_CLASSES, Discovery, Scan, Skipped, class_of, classes_text
from preprocessing.cohorts.common import cdr_stage, cell, find_column, keep_one_class_per_subject, natural_key
from preprocessing.subject_ids import normalize_subject_id
from preprocessing.tables import TableColumnError, parse_age, parse_number, parse_sex, read_field, read_table

CSV_NAME = "oasis_cross-sectional.csv"
#: OASIS-1 rated CDR from this age on; younger participants have none.
CDR_RATED_FROM_AGE = 60
_RAW = re.compile(r"(?P<session>OAS1_\d{4}_MR\d+)_mpr-(?P<rep>\d+)_anon\.hdr", re.IGNORECASE)


def find_oasis1_csv(root: Path) -> Path | None:
    """``oasis_cross-sectional.csv`` in ``root``, its parent, or anywhere under ``root`` (first by path)."""
    for folder in (root, root.parent):
        if (folder / CSV_NAME).is_file():
            return folder / CSV_NAME
    return next(iter(sorted(root.rglob("oasis_cross-sectional*.csv"))), None)


def discover_oasis1(
    root: Path | str,
    csv_path: Path | str | None = None,
    classes: Sequence[str] = DEFAULT_CLASSES,
    cdr_ad_threshold: float = 0.5,
    repetitions: str = "first",
    young_as_cn: bool = False,
) -> Discovery:
    """The raw MPRAGE scans of an OASIS-1 download labelled by the CDR of ``oasis_cross-sectional.csv``; see the
    module docstring. ``csv_path`` defaults to :func:`find_oasis1_csv`."""
    root, classes = Path(root), tuple(classes)
    if not root.is_dir():
        raise FileNotFoundError(f"OASIS-1 folder not found: {root}")
    if repetitions not in ("first", "all"):
        raise ValueError(f"repetitions must be 'first' or 'all', not {repetitions!r}")
    csv_path = Path(csv_path) if csv_path is not None else find_oasis1_csv(root)
    if csv_path is None:
        raise FileNotFoundError(f"no {CSV_NAME} in {root} or its parent: give it with --oasis1-csv")
    table = read_table(csv_path)
    columns = {name: find_column(table, aliases) for name, aliases in
               {"id": ("id",), "sex": ("m/f", "sex", "gender"), "age": ("age",), "mmse": ("mmse",),
                "cdr": ("cdr",)}.items()}  # fmt: skip
    if columns["id"] is None or columns["cdr"] is None:
        raise TableColumnError(f"{table.path}: expected the columns ID and CDR of {CSV_NAME}; found {table.header}")
    discovery = Discovery(source="oasis1", include_patterns=(), exclude_patterns=(), classes=classes,
                          label_table=table.path, settings={"cdr_ad_threshold": cdr_ad_threshold})  # fmt: skip
    discovery.warnings += table.warnings
    rows = {}
    for line, row in table.rows:
        rows.setdefault(cell(row, columns["id"]).upper(), (line, row))

    sessions: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted(root.rglob("*.hdr"), key=lambda p: natural_key(str(p))):
        match = _RAW.fullmatch(path.name)
        if match is None or "PROCESSED" in path.parts:
            continue
        if not path.with_suffix(".img").is_file():
            reason = f"{path.name}: the Analyze image {path.with_suffix('.img').name} is missing next to it"
            image_id = f"{match['session'].upper()}_mpr-{match['rep']}"
            discovery.skipped.append(Skipped("file_missing", reason, image_id, path=path))
            continue
        sessions.setdefault(match["session"].upper(), []).append((int(match["rep"]), path))

    for session_id, found in sorted(sessions.items(), key=lambda kv: natural_key(kv[0])):
        found.sort()
        subject = normalize_subject_id(session_id)
        session = session_id.split("_")[-1]
        for index, (rep, path) in enumerate(found):
            image_id = f"{session_id}_mpr-{rep}"
            ids = {"image_id": image_id, "subject": subject, "path": path, "description": f"MPRAGE mpr-{rep}"}
            if index and repetitions == "first":
                reason = f"{image_id}: another MPRAGE repetition of {session_id}; mpr-{found[0][0]} is used " \
                         "(all: --oasis1-repetitions all)"  # fmt: skip
                discovery.skipped.append(Skipped("extra_run", reason, **ids))
                continue
            if session_id not in rows:
                reason = f"{image_id}: session {session_id} has no row in {table.path.name}"
                discovery.skipped.append(Skipped("no_csv_row", reason, **ids))
                continue
            line, row = rows[session_id]
            warn, where = discovery.warnings, table.where(line)
            age = read_field(parse_age, cell(row, columns["age"]), table, line, "age", warn, subject=subject)
            cdr = read_field(parse_number, cell(row, columns["cdr"]), table, line, "CDR", warn, subject=subject)
            if cdr is not None:
                stage, source, how = cdr_stage(cdr, cdr_ad_threshold), "oasis1_csv", f"CDR {cdr:g}"
            elif young_as_cn and age is not None and age < CDR_RATED_FROM_AGE:
                stage, source, how = "CN", "oasis1_young", f"no CDR at age {age:g}"
            else:
                young = age is not None and age < CDR_RATED_FROM_AGE
                fix = "; --oasis1-young-as-cn counts those under 60 as CN" if young else ""
                said = f"age {age:g}" if age is not None else "age unknown"
                reason = f"{where}: no CDR for {session_id} (OASIS-1 rated CDR from age 60; {said}){fix}"
                discovery.skipped.append(Skipped("no_label", reason, **ids, line=line))
                continue
            group, category = class_of(stage, classes)
            if group is None:
                reason = (f"{where}: {how} is {stage} with AD from CDR {cdr_ad_threshold:g}: only "
                          f"{classes_text(classes)} are used")  # fmt: skip
                discovery.skipped.append(Skipped(category or "group_excluded", reason, **ids, line=line, group=stage))
                continue
            discovery.scans.append(
                Scan(
                    image_id=image_id,
                    subject=subject,
                    group=group,
                    label=classes.index(group),
                    sex=read_field(parse_sex, cell(row, columns["sex"]), table, line, "sex", warn, subject=subject),
                    age=age,
                    visit=session,
                    description=ids["description"],
                    source="oasis1",
                    nifti_path=path,
                    label_source=source,
                    subject_raw=session_id,
                    session=session,
                    cdr=cdr,
                    mmse=read_field(parse_number, cell(row, columns["mmse"]), table, line, "MMSE", warn),
                )
            )
    for session_id, (line, _row) in rows.items():
        if session_id and session_id not in sessions:
            reason = f"{table.where(line)}: no raw MPRAGE of {session_id} under {root} (another disc?)"
            discovery.skipped.append(Skipped("folder_missing", reason, subject=normalize_subject_id(session_id)))
    keep_one_class_per_subject(discovery, lambda s: (natural_key(s.session or ""), natural_key(s.image_id)))
    return discovery
