"""Discovery of ADNI downloads and NIfTI folders: which scans are kept, with which labels, and why others are not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preprocessing.adni import (
    ANY_MPRAGE_PATTERNS,
    Scan,
    TableColumnError,
    canonical_image_id,
    discover_adni,
    discover_nifti,
    load_label_table,
    normalize_group,
    parse_acq_date,
    select_description,
    write_discovery_report,
)

HEADER = [
    "Image Data ID",
    "Subject",
    "Group",
    "Sex",
    "Age",
    "Visit",
    "Modality",
    "Description",
    "Type",
    "Acq Date",
    "Format",
    "Downloaded",
]


def _row(image_id, subject, group, description="MPRAGE", date="4/18/2006", sex="M", age="85", visit="sc", **extra):
    row = {
        "Image Data ID": image_id,
        "Subject": subject,
        "Group": group,
        "Sex": sex,
        "Age": age,
        "Visit": visit,
        "Modality": "MRI",
        "Description": description,
        "Type": "Original",
        "Acq Date": date,
        "Format": "DCM",
        "Downloaded": "1/02/2024",
    }
    row.update(extra)
    return row


def _write_csv(path: Path, rows: list[dict], header: list[str] | None = None, quoted: bool = True, sep: str = ","):
    header = header or list(rows[0])

    def cell(value: str) -> str:
        return f'"{value}"' if quoted else value

    lines = [sep.join(cell(h) for h in header)]
    lines += [sep.join(cell(str(r.get(h, ""))) for h in header) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _image_folder(root: Path, subject: str, description: str, date_time: str, leaf: str, files=("a.dcm",)) -> Path:
    folder = root / "ADNI" / subject / description / date_time / leaf
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_bytes(b"")
    return folder


def _by_id(items) -> dict:
    return {item.image_id: item for item in items}


# ---------------------------------------------------------------- small parsers


def test_acq_dates_become_iso():
    assert parse_acq_date("4/18/2006") == "2006-04-18"
    assert parse_acq_date("12/01/2010") == "2010-12-01"
    assert parse_acq_date("2006-04-18") == "2006-04-18"
    assert parse_acq_date("2006-04-18_08_20_30.0") == "2006-04-18"
    assert parse_acq_date("  ") is None
    with pytest.raises(ValueError, match="invalid date"):
        parse_acq_date("18/04/2006")  # day-first: month 18 does not exist, so no silent swap
    with pytest.raises(ValueError, match="unrecognised date"):
        parse_acq_date("April 2006")


def test_image_ids_are_canonical():
    assert canonical_image_id("45108") == "I45108"
    assert canonical_image_id(" i45108 ") == "I45108"
    assert canonical_image_id("45108.0") == "I45108"
    with pytest.raises(ValueError):
        canonical_image_id("S13408")


def test_group_normalisation():
    assert [normalize_group(v) for v in ("ad", "Dementia", "1", "CN", "NL", "0.0", "LMCI", "Patient", None)] == [
        "AD",
        "AD",
        "AD",
        "CN",
        "CN",
        "CN",
        "LMCI",
        "PATIENT",
        "",
    ]


@pytest.mark.parametrize(
    ("description", "default", "opted_in"),
    [
        ("MPRAGE", True, True),
        ("MP-RAGE", True, True),
        ("MP RAGE REPEAT", True, True),
        ("MPRAGE SENSE2", True, True),
        ("Accelerated Sagittal MPRAGE", False, True),
        ("Sagittal 3D Accelerated MPRAGE", False, True),
        ("Localizer", False, False),
        ("MPRAGE localizer", False, False),
        ("Calibration Scan", False, False),
        ("Axial PD/T2 FSE", False, False),
        ("MPR; GradWarp; B1 Correction; N3; Scaled", False, False),
    ],
)
def test_description_patterns(description, default, opted_in):
    assert select_description(description) is default
    assert select_description(description, ANY_MPRAGE_PATTERNS) is opted_in


# ---------------------------------------------------------------- collection CSV and download


@pytest.mark.parametrize(("quoted", "sep"), [(True, ","), (False, ","), (False, ";")])
def test_collection_csv_with_and_without_quotes(tmp_path, quoted, sep):
    rows = [
        _row("I45108", "002_S_0295", "CN", age="84.8"),
        _row("I118671", "002_S_0295", "CN", date="6/1/2007", visit="m12", description="MPRAGE Repeat"),
        _row("I40657", "067_S_0110", "AD", sex="F", date="3/7/2006"),
    ]
    csv_path = _write_csv(tmp_path / "collection.csv", rows, HEADER, quoted=quoted, sep=sep)
    cn = _image_folder(tmp_path, "002_S_0295", "MPRAGE", "2006-04-18_08_20_30.0", "I45108")
    cn2 = _image_folder(tmp_path, "002_S_0295", "MPRAGE_Repeat", "2007-06-01_09_00_00.0", "I118671")
    ad = _image_folder(tmp_path, "067_S_0110", "MPRAGE", "2006-03-07_10_11_12.0", "I40657")

    found = discover_adni(csv_path, tmp_path / "ADNI")

    assert found.skipped == []
    assert [s.image_id for s in found.scans] == ["I45108", "I118671", "I40657"]  # CSV order
    assert found.scans[0] == Scan(
        image_id="I45108",
        subject="002_S_0295",
        group="CN",
        label=0,
        sex="M",
        age=84.8,
        visit="sc",
        acq_date="2006-04-18",
        description="MPRAGE",
        dicom_dir=cn,
        source="adni",
        nifti_path=None,
        label_source="collection_csv",
        subject_raw="002_S_0295",
    )
    scans = _by_id(found.scans)
    assert (scans["I118671"].dicom_dir, scans["I118671"].acq_date, scans["I118671"].visit) == (cn2, "2007-06-01", "m12")
    assert (scans["I40657"].group, scans["I40657"].label, scans["I40657"].sex, scans["I40657"].dicom_dir) == (
        "AD",
        1,
        "F",
        ad,
    )


def test_extra_and_reordered_columns_and_ids_without_i(tmp_path):
    header = ["Notes", "subject", "DESCRIPTION", "image data id", "acq date", "Group", "Site", "Age"]
    rows = [
        {"Notes": "ok, checked", "subject": "002_S_0295", "DESCRIPTION": "MPRAGE", "image data id": "45108",
         "acq date": "4/18/2006", "Group": "CN", "Site": "002", "Age": "85"},
    ]  # fmt: skip
    csv_path = _write_csv(tmp_path / "edited.csv", rows, header, quoted=True)
    folder = _image_folder(tmp_path, "002_S_0295", "MPRAGE", "2006-04-18_08_20_30.0", "I45108")

    found = discover_adni(csv_path, tmp_path)  # the parent of ADNI/ works too

    assert found.skipped == []
    (scan,) = found.scans
    assert (scan.image_id, scan.dicom_dir, scan.age, scan.sex, scan.visit) == ("I45108", folder, 85.0, None, None)


def test_missing_required_column_names_file_and_column(tmp_path):
    header = [h for h in HEADER if h != "Description"]
    csv_path = _write_csv(tmp_path / "no_description.csv", [_row("I1", "002_S_0295", "CN")], header)
    with pytest.raises(TableColumnError, match=r"no_description\.csv: missing required column 'Description'"):
        discover_adni(csv_path, None)


def test_group_column_only_required_without_label_table(tmp_path):
    header = [h for h in HEADER if h != "Group"]
    csv_path = _write_csv(tmp_path / "c.csv", [_row("I1", "002_S_0295", "")], header)
    with pytest.raises(TableColumnError, match="'Group'"):
        discover_adni(csv_path, None)
    labels = _write_csv(tmp_path / "labels.csv", [{"subject": "002_S_0295", "label": "AD"}])
    (scan,) = discover_adni(csv_path, None, label_table=labels).scans
    assert (scan.group, scan.label, scan.label_source) == ("AD", 1, "label_table")


def test_patient_group_with_adnimerge_labels(tmp_path):
    rows = [
        _row("I1", "002_S_0295", "Patient"),
        _row("I2", "067_S_0110", "Patient"),
        _row("I3", "011_S_0003", "Patient"),  # LMCI at baseline
        _row("I4", "099_S_9999", "Patient"),  # not in ADNIMERGE
        _row("I5", "022_S_0004", "Patient"),  # rows disagree
        _row("I6", "033_S_0005", "AD"),  # CSV says AD, ADNIMERGE says CN: the table wins
    ]
    csv_path = _write_csv(tmp_path / "collection.csv", rows, HEADER)
    merge = [
        {"RID": "295", "PTID": "002_S_0295", "VISCODE": "bl", "DX_bl": "CN", "DX": "CN"},
        {"RID": "295", "PTID": "002_S_0295", "VISCODE": "m06", "DX_bl": "", "DX": ""},
        {"RID": "110", "PTID": "067_S_0110", "VISCODE": "bl", "DX_bl": "AD", "DX": "Dementia"},
        {"RID": "3", "PTID": "011_S_0003", "VISCODE": "bl", "DX_bl": "LMCI", "DX": "MCI"},
        {"RID": "4", "PTID": "022_S_0004", "VISCODE": "bl", "DX_bl": "CN", "DX": "CN"},
        {"RID": "4", "PTID": "022_S_0004", "VISCODE": "m06", "DX_bl": "AD", "DX": "Dementia"},
        {"RID": "5", "PTID": "033_S_0005", "VISCODE": "bl", "DX_bl": "CN", "DX": "CN"},
    ]
    merge_path = _write_csv(tmp_path / "ADNIMERGE.csv", merge, quoted=False)

    found = discover_adni(csv_path, None, label_table=merge_path)

    scans = _by_id(found.scans)
    assert {k: (v.group, v.label) for k, v in scans.items()} == {"I1": ("CN", 0), "I2": ("AD", 1), "I6": ("CN", 0)}
    assert all(s.label_source == "label_table" and s.dicom_dir is None for s in found.scans)
    skipped = _by_id(found.skipped)
    assert skipped["I3"].category == "group_excluded" and "LMCI" in skipped["I3"].reason
    assert skipped["I4"].category == "no_label" and "'Patient'" in skipped["I4"].reason
    assert "099_S_9999 not in ADNIMERGE.csv" in skipped["I4"].reason
    assert skipped["I5"].category == "label_conflict" and "AD/CN" in skipped["I5"].reason


def test_three_classes_and_visit_measures_from_adnimerge(tmp_path):
    rows = [
        _row("I1", "002_S_0295", "Patient", date="4/18/2006"),
        _row("I2", "002_S_0295", "Patient", date="10/20/2006"),
        _row("I3", "011_S_0003", "Patient", date="9/1/2005", Atrophy="0.2"),
        _row("I4", "067_S_0110", "Patient", date="1/1/2008"),  # no exam within a year
        _row("I5", "022_S_0004", "Patient"),
    ]
    csv_path = _write_csv(tmp_path / "collection.csv", rows, HEADER + ["Atrophy"])
    merge = [
        {"PTID": "002_S_0295", "EXAMDATE": "2006-04-10", "DX_bl": "CN", "MMSE": "29", "CDGLOBAL": "0"},
        {"PTID": "002_S_0295", "EXAMDATE": "2006-10-30", "DX_bl": "CN", "MMSE": "28", "CDGLOBAL": "-4"},
        {"PTID": "011_S_0003", "EXAMDATE": "2005-09-08", "DX_bl": "LMCI", "MMSE": "25", "CDGLOBAL": "0.5"},
        {"PTID": "067_S_0110", "EXAMDATE": "2005-11-01", "DX_bl": "AD", "MMSE": "22", "CDGLOBAL": "1"},
        {"PTID": "022_S_0004", "EXAMDATE": "2006-04-01", "DX_bl": "SMC", "MMSE": "30", "CDGLOBAL": "0"},
    ]
    merge_path = _write_csv(tmp_path / "ADNIMERGE.csv", merge, quoted=False)
    found = discover_adni(csv_path, None, label_table=merge_path, classes=("CN", "MCI", "AD"))
    scans = _by_id(found.scans)
    assert {k: (v.group, v.label, v.mmse, v.cdr) for k, v in scans.items()} == {
        "I1": ("CN", 0, 29.0, 0.0),
        "I2": ("CN", 0, 28.0, 0.0),  # its own visit has CDR -4 (missing): the nearest real one is taken
        "I3": ("MCI", 1, 25.0, 0.5),
        "I4": ("AD", 2, None, None),
    }
    assert scans["I3"].atrophy == 0.2 and scans["I1"].atrophy is None
    assert _by_id(found.skipped)["I5"].category == "group_excluded"
    binary = discover_adni(csv_path, None, label_table=merge_path)
    assert "only AD and CN are used" in _by_id(binary.skipped)["I3"].reason


def test_simple_label_table_with_named_columns(tmp_path):
    table = _write_csv(tmp_path / "labels.csv", [{"ID": "002_S_0295", "Dx": "1"}, {"ID": "067_S_0110", "Dx": "0"}])
    loaded = load_label_table(table, subject_column="id", label_column="DX")
    assert loaded.labels == {"002_S_0295": "AD", "067_S_0110": "CN"}
    with pytest.raises(TableColumnError, match=r"labels\.csv: missing required column 'diagnosis'"):
        load_label_table(table, subject_column="ID", label_column="diagnosis")


def test_pattern_filtering_mci_and_modality(tmp_path):
    rows = [
        _row("I1", "002_S_0295", "CN", description="MPRAGE"),
        _row("I2", "002_S_0295", "CN", description="Accelerated Sagittal MPRAGE"),
        _row("I3", "002_S_0295", "CN", description="Localizer"),
        _row("I4", "011_S_0003", "MCI", description="MPRAGE"),
        _row("I5", "002_S_0295", "CN", description="MPRAGE", Modality="PET"),
    ]
    csv_path = _write_csv(tmp_path / "collection.csv", rows, HEADER)

    default = discover_adni(csv_path, None)
    opted_in = discover_adni(csv_path, None, include_patterns=ANY_MPRAGE_PATTERNS)

    assert [s.image_id for s in default.scans] == ["I1"]
    assert [s.image_id for s in opted_in.scans] == ["I1", "I2"]
    skipped = _by_id(default.skipped)
    assert {k: v.category for k, v in skipped.items()} == {
        "I2": "not_mprage",
        "I3": "not_mprage",
        "I4": "group_excluded",
        "I5": "not_mri",
    }
    assert "'Accelerated Sagittal MPRAGE'" in skipped["I2"].reason
    assert "group MCI" in skipped["I4"].reason and "only AD and CN" in skipped["I4"].reason
    assert skipped["I4"].line == 5
    assert _by_id(opted_in.skipped)["I3"].category == "not_mprage"


def test_missing_folders_and_folders_without_rows(tmp_path):
    rows = [
        _row("I1", "002_S_0295", "CN"),
        _row("I2", "002_S_0295", "CN", date="6/1/2007"),  # not downloaded
        _row("I3", "011_S_0003", "MCI"),  # not downloaded, but skipped for its group first
        _row("I1", "002_S_0295", "CN"),  # duplicated row
    ]
    csv_path = _write_csv(tmp_path / "collection.csv", rows, HEADER)
    _image_folder(tmp_path, "002_S_0295", "MPRAGE", "2006-04-18_08_20_30.0", "I1")
    stray = _image_folder(tmp_path, "005_S_0602", "MPRAGE", "2006-06-02_10_00_00.0", "I777")

    found = discover_adni(csv_path, tmp_path / "ADNI")

    assert [s.image_id for s in found.scans] == ["I1"]
    categories = sorted((s.category, s.image_id) for s in found.skipped)
    assert categories == [
        ("duplicate_input", "I1"),
        ("folder_missing", "I2"),
        ("group_excluded", "I3"),
        ("no_csv_row", "I777"),
    ]
    no_row = next(s for s in found.skipped if s.category == "no_csv_row")
    assert no_row.path == stray and no_row.subject == "005_S_0602" and "collection.csv" in no_row.reason
    assert "missing from the download" in next(s.reason for s in found.skipped if s.category == "folder_missing")

    kept = discover_adni(csv_path, tmp_path / "ADNI", require_dicom=False)
    assert [(s.image_id, s.dicom_dir is None) for s in kept.scans] == [("I1", False), ("I2", True)]


def test_series_folders_are_matched_by_file_name_or_visit(tmp_path):
    rows = [
        _row("I45108", "002_S_0295", "CN", description="MPRAGE"),
        _row("I118671", "002_S_0295", "CN", description="MP-RAGE REPEAT", date="6/1/2007"),
    ]
    csv_path = _write_csv(tmp_path / "collection.csv", rows, HEADER)
    named = _image_folder(
        tmp_path,
        "002_S_0295",
        "MPRAGE",
        "2006-04-18_08_20_30.0",
        "S13408",
        files=("ADNI_002_S_0295_MR_MPRAGE_br_raw_20060418193713428_1_S13408_I45108.dcm",),
    )
    by_visit = _image_folder(tmp_path, "002_S_0295", "MP-RAGE_REPEAT", "2007-06-01_09_00_00.0", "S30000")
    unknown = _image_folder(tmp_path, "002_S_0295", "B1-Calibration", "2007-06-01_09_00_00.0", "S30001")

    found = discover_adni(csv_path, tmp_path / "ADNI")

    assert {s.image_id: s.dicom_dir for s in found.scans} == {"I45108": named, "I118671": by_visit}
    (unmatched,) = found.skipped
    assert (unmatched.category, unmatched.path) == ("unmatched_folder", unknown)


def test_bad_date_in_csv_is_a_warning_naming_file_and_line(tmp_path):
    # Was an error that aborted discovery; a bad date now leaves acq_date empty and says where (issue: messy tables).
    csv_path = _write_csv(tmp_path / "collection.csv", [_row("I1", "002_S_0295", "CN", date="18/04/2006")], HEADER)
    found = discover_adni(csv_path, None)
    (scan,) = found.scans
    assert scan.acq_date is None
    (warning,) = found.warnings
    assert warning.category == "bad_field" and warning.line == 2
    assert warning.message.startswith("collection.csv:2: invalid date '18/04/2006'")


def test_discovery_report(tmp_path):
    rows = [
        _row("I1", "002_S_0295", "CN"),
        _row("I2", "002_S_0295", "CN", date="6/1/2007"),
        _row("I3", "067_S_0110", "AD"),
        _row("I4", "011_S_0003", "MCI"),
        _row("I5", "011_S_0003", "MCI"),
        _row("I6", "002_S_0295", "CN", description="Localizer"),
    ]
    found = discover_adni(_write_csv(tmp_path / "collection.csv", rows, HEADER), None)

    summary = found.summary()
    assert summary["groups"] == {"AD": {"scans": 1, "subjects": 1}, "CN": {"scans": 2, "subjects": 1}}
    assert (summary["scans"], summary["subjects"], summary["skipped_total"]) == (3, 2, 3)
    assert summary["skipped"] == {"group_excluded": 2, "not_mprage": 1}

    as_json = json.loads(write_discovery_report(found, tmp_path / "report.json").read_text())
    assert as_json["summary"] == summary
    assert sorted(s["image_id"] for s in as_json["skipped"]) == ["I4", "I5", "I6"]
    text = write_discovery_report(found, tmp_path / "report.txt").read_text()
    assert "Scans kept: 3 from 2 subjects" in text
    assert "  CN: 2 scans from 1 subjects" in text
    assert "  group_excluded: 2" in text and "[not_mprage]" in text and "I6 002_S_0295" in text


# ---------------------------------------------------------------- NIfTI folder


def test_nifti_folder_discovery(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("a.nii.gz", "b.nii", "c.nii.gz", "d.nii.gz", "unlisted.nii.gz"):
        (tmp_path / "images" / name).write_bytes(b"")
    rows = [
        {"Path": "images/a.nii.gz", "Subject": "S1", "Label": "AD", "Visit": "bl"},
        {"Path": "images/b.nii", "Subject": "S2", "Label": "0", "Visit": ""},
        {"Path": "images/c.nii.gz", "Subject": "S3", "Label": "MCI", "Visit": "bl"},
        {"Path": "images/d.nii.gz", "Subject": "S4", "Label": "Patient", "Visit": "bl"},
        {"Path": "images/missing.nii.gz", "Subject": "S5", "Label": "CN", "Visit": "bl"},
    ]
    csv_path = _write_csv(tmp_path / "scans.csv", rows, quoted=False)

    found = discover_nifti(csv_path)

    assert [(s.image_id, s.subject, s.group, s.label, s.visit) for s in found.scans] == [
        ("a", "S1", "AD", 1, "bl"),
        ("b", "S2", "CN", 0, None),
    ]
    assert all(s.source == "nifti" and s.dicom_dir is None for s in found.scans)
    assert found.scans[0].nifti_path == tmp_path / "images" / "a.nii.gz"
    assert sorted((s.category, s.path.name) for s in found.skipped) == [
        ("file_missing", "missing.nii.gz"),
        ("group_excluded", "c.nii.gz"),
        ("no_csv_row", "unlisted.nii.gz"),
        ("no_label", "d.nii.gz"),
    ]


def test_nifti_csv_needs_path_subject_label(tmp_path):
    csv_path = _write_csv(tmp_path / "scans.csv", [{"path": "a.nii.gz", "subject": "S1"}])
    with pytest.raises(TableColumnError, match=r"scans\.csv: missing required column 'label'"):
        discover_nifti(csv_path)
