"""Discovery on messy, hand-edited inputs: encodings, unreadable fields, mangled subject ids, duplicates, processed
ADNI exports and skip messages that name their fix. Every input row must end up as a Scan or a Skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from preprocessing.adni import (
    ADNI_PROCESSED_PATTERNS,
    DEFAULT_MPRAGE_PATTERNS,
    SERIES_PRESETS,
    discover_adni,
    discover_nifti,
    load_label_table,
    normalize_subject_id,
    parse_acq_date,
    series_patterns,
    write_discovery_report,
)
from preprocessing.convert import output_name
from preprocessing.subject_ids import find_subject_id

REPO = Path(__file__).resolve().parents[1]
HEADER = ["Image Data ID", "Subject", "Group", "Sex", "Age", "Visit", "Modality", "Description", "Type", "Acq Date"]
PROCESSED = "MPR; GradWarp; B1 Correction"


def _row(image_id: str, subject: str, group: str = "CN", description: str = "MPRAGE", **extra: str) -> dict:
    row = {"Image Data ID": image_id, "Subject": subject, "Group": group, "Sex": "M", "Age": "75.5", "Visit": "sc",
           "Modality": "MRI", "Description": description, "Type": "Original", "Acq Date": "3/26/2007"}  # fmt: skip
    row.update(extra)
    return row


def _csv_text(rows: list[dict], header: list[str] | None = None) -> str:
    header = header or list(rows[0])
    lines = [",".join(f'"{h}"' for h in header)]
    lines += [",".join(f'"{r.get(h, "")}"' for h in header) for r in rows]
    return "\n".join(lines) + "\n"


def _write(path: Path, rows: list[dict], header: list[str] | None = None, encoding: str = "utf-8") -> Path:
    header = header or (HEADER if "Image Data ID" in rows[0] else None)
    path.write_bytes(_csv_text(rows, header).encode(encoding))
    return path


def _folder(root: Path, subject: str, description: str, image_id: str) -> Path:
    folder = root / "ADNI" / subject / description.replace("; ", "__").replace(" ", "_") / "2007-03-26_10_00_00.0"
    folder = folder / image_id
    folder.mkdir(parents=True)
    (folder / "a.dcm").write_bytes(b"")
    return folder


def _rows_accounted(found, n_rows: int) -> None:
    """Every CSV row (lines 2..n_rows+1) is a scan or a skipped item naming that line."""
    lines = [s.line for s in found.skipped if s.line is not None] + [None] * len(found.scans)
    assert len(lines) == n_rows


def _processed_export(root: Path) -> tuple[Path, Path]:
    """A genuine-looking IDA export of processed MPRAGE: Group is 'Patient' on every row."""
    rows = [
        _row("I100", "109_S_1192", "Patient", PROCESSED),
        _row("I101", "099_S_0534", "Patient", PROCESSED),
        _row("I102", "099_S_0534", "Patient", "MPR-R; GradWarp", **{"Acq Date": "4/1/2008"}),
    ]
    for row in rows:
        _folder(root, row["Subject"], row["Description"], row["Image Data ID"])
    labels = root / "t.csv"
    labels.write_text("subject,label\n109_S_1192,AD\n099_S_0534,CN\n")
    return _write(root / "collection.csv", rows), labels


# ---------------------------------------------------------------- encodings and fields


def test_latin1_table_is_read_with_a_warning(tmp_path):
    rows = [_row("I1", "002_S_0295", description="MPRAGE répété"), _row("I2", "067_S_0110", "AD")]
    csv_path = _write(tmp_path / "collection.csv", rows, encoding="latin-1")

    found = discover_adni(csv_path, None)

    assert [s.description for s in found.scans] == ["MPRAGE répété", "MPRAGE"]
    (warning,) = found.warnings
    assert (warning.category, warning.line, warning.path) == ("encoding", 2, csv_path)
    assert "collection.csv:2: not UTF-8 (byte 0xe9); read as Windows-1252" in warning.message


def test_bytes_windows_1252_lacks_fall_back_to_latin1_and_utf16_is_read(tmp_path):
    csv_path = tmp_path / "c.csv"
    csv_path.write_bytes(b"Image Data ID,Subject,Group,Description\nI1,002_S_0295,CN,MPRAGE \x81\n")
    found = discover_adni(csv_path, None)
    assert [s.description for s in found.scans] == ["MPRAGE \x81"]
    assert "read as Latin-1" in found.warnings[0].message
    csv_path.write_text("Image Data ID,Subject,Group,Description\nI1,002_S_0295,CN,MPRAGE é\n", encoding="utf-16")
    found = discover_adni(csv_path, None)
    assert [s.description for s in found.scans] == ["MPRAGE é"] and found.warnings == []


def test_utf8_with_bom_needs_no_warning(tmp_path):
    csv_path = _write(tmp_path / "collection.csv", [_row("I1", "002_S_0295", description="MPRAGE répété")], None)
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())
    found = discover_adni(csv_path, None)
    assert [s.description for s in found.scans] == ["MPRAGE répété"] and found.warnings == []


def test_unreadable_fields_are_left_empty_with_file_and_line(tmp_path):
    rows = [
        _row("I1", "002_S_0295", Age="seventy"),
        _row("I2", "002_S_0295", Sex="?", Age="84,5"),
        _row("I3", "002_S_0295", Sex="female", **{"Acq Date": "26/3/2007"}),
    ]
    found = discover_adni(_write(tmp_path / "collection.csv", rows), None)

    assert [(s.image_id, s.age, s.sex, s.acq_date) for s in found.scans] == [
        ("I1", None, "M", "2007-03-26"),
        ("I2", 84.5, None, "2007-03-26"),
        ("I3", 75.5, "F", None),
    ]
    assert [(w.category, w.line, w.image_id) for w in found.warnings] == [
        ("bad_field", 2, "I1"),
        ("bad_field", 3, "I2"),
        ("bad_field", 4, "I3"),
    ]
    messages = [w.message for w in found.warnings]
    assert messages[0] == "collection.csv:2: invalid age 'seventy': not a number; age left empty"
    assert messages[1].startswith("collection.csv:3: invalid sex '?'")
    assert messages[2].startswith("collection.csv:4: invalid date '26/3/2007'")


def test_two_digit_years_use_the_documented_pivot(tmp_path):
    assert parse_acq_date("3/26/07") == "2007-03-26"
    assert parse_acq_date("1/2/69") == "2069-01-02"
    assert parse_acq_date("1/2/70") == "1970-01-02"
    assert parse_acq_date("3/26/2007 0:00") == "2007-03-26"  # a spreadsheet's date-time cell
    found = discover_adni(_write(tmp_path / "c.csv", [_row("I1", "002_S_0295", **{"Acq Date": "3/26/07"})]), None)
    assert [s.acq_date for s in found.scans] == ["2007-03-26"] and found.warnings == []


def test_unquoted_delimiter_inside_a_value_warns(tmp_path):
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("Image Data ID,Subject,Group,Description\nI1,002_S_0295,CN,MPRAGE, repeat\n")
    found = discover_adni(csv_path, None)
    assert [s.description for s in found.scans] == ["MPRAGE"]
    assert [(w.category, w.line) for w in found.warnings] == [("row_shape", 2)]


# ---------------------------------------------------------------- subject ids


def test_normalize_subject_id():
    spellings = ["AD_109_S_1192", "CN64_109_S_1192", " 109_s_1192 ", "109-S-1192", "109 S 1192", "109_S_1192"]
    assert {normalize_subject_id(v) for v in spellings} == {"109_S_1192"}
    assert normalize_subject_id(" sub-01 ") == "sub-01"
    assert normalize_subject_id("1109_S_11920") == "1109_S_11920"  # no 3-digit site: not guessed
    assert find_subject_id("109_S_1192/109_S_1193") is None  # two different ids: not guessed either


def test_mangled_ids_collapse_to_one_subject_and_keep_the_raw_value(tmp_path):
    raw = ["AD_109_S_1192", " 109_s_1192 ", "109-S-1192", "CN64_099_S_0534", "099_S_0534"]
    rows = [_row(f"I{i}", subject, "Patient") for i, subject in enumerate(raw, start=1)]
    csv_path = _write(tmp_path / "collection.csv", rows)
    for row in rows:  # ADNI's folders carry the canonical id
        _folder(tmp_path, normalize_subject_id(row["Subject"]), "MPRAGE", row["Image Data ID"])
    labels = tmp_path / "labels.csv"
    labels.write_text("PTID,DX_bl\n109_S_1192,AD\nCN_099_s_0534,CN\n")  # looked up by normalised id as well

    found = discover_adni(csv_path, tmp_path / "ADNI", label_table=labels)

    assert found.skipped == []
    assert [(s.subject, s.subject_raw, s.group) for s in found.scans] == [
        ("109_S_1192", "AD_109_S_1192", "AD"),
        ("109_S_1192", "109_s_1192", "AD"),
        ("109_S_1192", "109-S-1192", "AD"),
        ("099_S_0534", "CN64_099_S_0534", "CN"),
        ("099_S_0534", "099_S_0534", "CN"),
    ]
    assert found.summary()["subjects"] == 2
    assert found.scans[0].as_record()["subject_raw"] == "AD_109_S_1192"
    rewritten = [(w.path.name, w.line) for w in found.warnings if w.category == "subject_rewritten"]
    assert rewritten == [("labels.csv", 3)] + [("collection.csv", line) for line in (2, 3, 4, 5)]
    assert "collection.csv:2: subject 'AD_109_S_1192' read as 109_S_1192" in found.warnings[1].message
    assert load_label_table(labels).lookup("AD_099_S_0534") == "CN"


def test_subject_that_is_not_an_adni_id_warns(tmp_path):
    rows = [_row("I1", "002_S_0295"), _row("I2", "Smith J"), _row("I3", "P-17")]
    found = discover_adni(_write(tmp_path / "collection.csv", rows), None)
    assert [s.subject for s in found.scans] == ["002_S_0295", "Smith J", "P-17"]
    assert [(w.category, w.line) for w in found.warnings] == [("subject_not_adni", 3), ("subject_not_adni", 4)]
    assert (
        found.warnings[0].message
        == "collection.csv:3: subject 'Smith J' is not an ADNI id (NNN_S_NNNN); kept as written"
    )
    assert found.summary()["warnings"] == {"subject_not_adni": 2}


# ---------------------------------------------------------------- duplicates and unique outputs


def _nifti_csv(root: Path, rows: list[tuple[str, str, str]], files: list[str]) -> Path:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    lines = ["path,subject,label,visit"] + [f"{p},{s},{label},bl" for p, s, label in rows]
    csv_path = root / "scans.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


def test_same_subject_and_visit_in_two_files_get_distinct_outputs(tmp_path):
    files = ["a/T1.nii.gz", "b/T1.nii.gz", "c/other.nii.gz"]
    rows = [(files[0], "002_S_0295", "CN"), (files[1], "002_S_0295", "CN"), (files[2], "002_S_0295", "CN")]
    found = discover_nifti(_nifti_csv(tmp_path, rows, files))

    ids = [s.image_id for s in found.scans]
    assert len(ids) == 3 and found.skipped == []
    assert ids[0].startswith("T1-") and ids[1].startswith("T1-") and ids[0] != ids[1] and ids[2] == "other"
    assert len({output_name(s.subject, s.image_id) for s in found.scans}) == 3
    assert [(w.category, w.line) for w in found.warnings] == [("image_id_renamed", 2), ("image_id_renamed", 3)]
    assert "image id 'T1' is shared by the files of lines 2, 3" in found.warnings[0].message

    # The suffix comes from the path, not the row order: a reordered CSV names every file the same.
    again = discover_nifti(_nifti_csv(tmp_path, rows[::-1], []))
    assert {str(s.nifti_path): s.image_id for s in again.scans} == {str(s.nifti_path): s.image_id for s in found.scans}


def test_two_rows_with_the_same_file_keep_one_scan(tmp_path):
    files = ["x.nii.gz"]
    rows = [("x.nii.gz", "002_S_0295", "CN"), ("./x.nii.gz", "AD_002_S_0295", "CN")]
    found = discover_nifti(_nifti_csv(tmp_path, rows, files))

    assert [s.image_id for s in found.scans] == ["x"]
    (duplicate,) = found.skipped
    assert (duplicate.category, duplicate.line, duplicate.image_id) == ("duplicate_input", 3, "x")
    assert duplicate.reason == "scans.csv:3: same file as line 2 (x.nii.gz); that row is used"
    assert found.summary()["skipped"] == {"duplicate_input": 1}


def test_collection_row_listing_an_image_twice_is_a_duplicate_input(tmp_path):
    rows = [_row("I1", "002_S_0295"), _row("1", "002_S_0295"), _row("I2", "002_S_0295")]
    found = discover_adni(_write(tmp_path / "collection.csv", rows), None)
    assert [s.image_id for s in found.scans] == ["I1", "I2"]
    (duplicate,) = found.skipped
    assert (duplicate.category, duplicate.line) == ("duplicate_input", 3)
    assert "image I1 is already listed on line 2" in duplicate.reason


def test_every_row_ends_up_as_a_scan_or_a_skipped_item(tmp_path):
    rows = [
        _row("I1", "002_S_0295"),
        _row("I1", "002_S_0295"),  # duplicate
        _row("oops", "002_S_0295"),  # bad image id
        _row("I3", ""),  # no subject
        _row("I4", "002_S_0295", description="Localizer"),
        _row("I5", "002_S_0295", "MCI"),
        _row("I6", "002_S_0295", "Patient"),
        _row("I7", "002_S_0295", Modality="PET"),
        _row("I8", "002_S_0295", Age="seventy", Sex="x", **{"Acq Date": "never"}),
    ]
    found = discover_adni(_write(tmp_path / "collection.csv", rows), None)
    assert [s.image_id for s in found.scans] == ["I1", "I8"]
    _rows_accounted(found, len(rows))
    assert sorted(s.category for s in found.skipped) == [
        "bad_row", "bad_row", "duplicate_input", "group_excluded", "no_label", "not_mprage", "not_mri",
    ]  # fmt: skip


# ---------------------------------------------------------------- series presets and skip messages


def test_series_presets_are_the_one_source_of_patterns():
    assert SERIES_PRESETS["mprage"] == DEFAULT_MPRAGE_PATTERNS
    assert series_patterns() == DEFAULT_MPRAGE_PATTERNS
    assert series_patterns(None, ["x"]) == ("x",)  # an include pattern replaces the default series
    assert series_patterns("adni-processed", ["x"]) == (*ADNI_PROCESSED_PATTERNS, "x")  # or adds to a named one
    with pytest.raises(ValueError, match="unknown series preset 'raw'"):
        series_patterns("raw")


@pytest.mark.parametrize(
    "description",
    [PROCESSED, "MPR-R; GradWarp", "MPR; GradWarp; B1 Correction; N3; Scaled", "MT1; N3m", "MT1; GradWarp; N3m"],
)
def test_adni_processed_preset_accepts_the_processed_exports(tmp_path, description):
    csv_path = _write(tmp_path / "c.csv", [_row("I1", "002_S_0295", description=description), _row("I2", "002_S_0295")])
    found = discover_adni(csv_path, None, include_patterns=series_patterns("adni-processed"))
    assert [s.image_id for s in found.scans] == ["I1"]  # raw MPRAGE would count the visit twice
    assert [s.image_id for s in discover_adni(csv_path, None).scans] == ["I2"]


def test_processed_ida_export_skips_name_the_fix(tmp_path):
    csv_path, labels = _processed_export(tmp_path)

    default = discover_adni(csv_path, tmp_path / "ADNI")

    assert default.scans == [] and {s.category for s in default.skipped} == {"not_mprage"}
    for item in default.skipped:
        assert "--series adni-processed accepts it" in item.reason and "--label-table" in item.reason
    (hint,) = default.hints()
    assert f"most frequent: '{PROCESSED}' (2), 'MPR-R; GradWarp' (1)" in hint
    assert "--series adni-processed accepts 3 of them" in hint and "--label-table" in hint
    assert "--include-pattern '^MPR; GradWarp; B1 Correction$'" in hint

    # With the preset only, Group 'Patient' is what stops them, and that message names --label-table.
    unlabelled = discover_adni(csv_path, tmp_path / "ADNI", include_patterns=series_patterns("adni-processed"))
    assert {s.category for s in unlabelled.skipped} == {"no_label"}
    assert all("--label-table" in s.reason for s in unlabelled.skipped)
    assert any("no_label: 3 images" in h and "--label-table" in h for h in unlabelled.hints())

    fixed = discover_adni(
        csv_path, tmp_path / "ADNI", include_patterns=series_patterns("adni-processed"), label_table=labels
    )
    assert [(s.image_id, s.group, s.label_source) for s in fixed.scans] == [
        ("I100", "AD", "label_table"),
        ("I101", "CN", "label_table"),
        ("I102", "CN", "label_table"),
    ]
    assert fixed.skipped == [] and all(s.dicom_dir is not None for s in fixed.scans)


def test_not_mprage_hint_lists_top_five_descriptions_and_an_include_pattern(tmp_path):
    descriptions = ["T2 FLAIR"] * 3 + ["Field Mapping"] * 2 + ["DTI", "SWI", "ASL", "PD", "Localizer"]
    rows = [_row(f"I{i}", "002_S_0295", description=d) for i, d in enumerate(descriptions, start=1)]
    found = discover_adni(_write(tmp_path / "c.csv", rows), None)
    (hint,) = found.hints()
    assert hint.startswith("not_mprage: 10 images skipped for their series description")
    assert "most frequent: 'T2 FLAIR' (3), 'Field Mapping' (2), 'DTI' (1), 'SWI' (1), 'ASL' (1)." in hint
    assert "'PD'" not in hint  # top five only
    assert "To select 'T2 FLAIR': --include-pattern '^T2 FLAIR$'" in hint
    assert "--series" not in hint and "--label-table" not in hint  # no preset fits, and Group is a diagnosis


def test_patient_everywhere_points_at_label_table(tmp_path):
    rows = [_row("I1", "002_S_0295", "Patient"), _row("I2", "067_S_0110", "Patient")]
    found = discover_adni(_write(tmp_path / "c.csv", rows), None)
    assert found.scans == []
    assert all("give diagnoses by subject with --label-table" in s.reason for s in found.skipped)
    assert found.hints() == [
        "no_label: 2 images without a usable diagnosis (Group 'Patient' 2): give diagnoses by subject with "
        "--label-table (ADNIMERGE.csv with PTID and DX_bl, or a subject,label CSV)."
    ]


def test_label_table_disagreeing_with_group_is_reported(tmp_path):
    rows = [_row("I1", "002_S_0295", "AD"), _row("I2", "067_S_0110", "CN"), _row("I3", "011_S_0003", "Patient")]
    labels = tmp_path / "ADNIMERGE.csv"
    labels.write_text("PTID,DX_bl\n002_S_0295,CN\n067_S_0110,CN\n011_S_0003,AD\n")
    found = discover_adni(_write(tmp_path / "c.csv", rows), None, label_table=labels)
    assert [(s.image_id, s.group) for s in found.scans] == [("I1", "CN"), ("I2", "CN"), ("I3", "AD")]
    (warning,) = found.warnings  # 'Patient' is no diagnosis, so I3 does not disagree
    assert (warning.category, warning.line, warning.image_id) == ("label_disagreement", 2, "I1")
    assert warning.message == "c.csv:2: 002_S_0295 has Group 'AD' but ADNIMERGE.csv says CN; the table wins"


# ---------------------------------------------------------------- formats


def test_mgz_is_accepted_and_other_formats_are_skipped_with_the_supported_ones(tmp_path):
    files = ["a.mgz", "b.NII.GZ", "c.img", "unlisted.mgz", "d.nii"]
    rows = [("a.mgz", "S1", "AD"), ("b.NII.GZ", "S2", "CN"), ("c.img", "S3", "CN"), ("d.nii", "S4", "Patient")]
    found = discover_nifti(_nifti_csv(tmp_path, rows, files))
    assert [(s.image_id, s.nifti_path.name) for s in found.scans] == [("a", "a.mgz"), ("b", "b.NII.GZ")]
    assert sorted((s.category, s.path.name) for s in found.skipped) == [
        ("no_csv_row", "unlisted.mgz"),
        ("no_label", "d.nii"),
        ("unsupported_format", "c.img"),
    ]
    assert found.hints() == [
        "no_label: 1 images without a usable diagnosis (label 'Patient' 1): write AD/CN or 1/0 in the label column.",
        "unsupported_format: 1 files; convert them to one of .nii.gz, .nii, .mgz.",
    ]
    unsupported = next(s for s in found.skipped if s.category == "unsupported_format")
    assert unsupported.reason == "scans.csv:4: 'c.img' is not a supported image format (.nii.gz, .nii, .mgz)"


# ---------------------------------------------------------------- report and command line


def test_report_lists_hints_and_warnings(tmp_path):
    csv_path, _ = _processed_export(tmp_path)
    (tmp_path / "collection.csv").write_bytes(csv_path.read_bytes().replace(b"099_S_0534", b"CN_099_S_0534"))
    found = discover_adni(csv_path, None)
    payload = json.loads(write_discovery_report(found, tmp_path / "r.json").read_text())
    assert payload["summary"]["warnings"] == {"subject_rewritten": 2}
    assert len(payload["warnings"]) == 2 and "--series adni-processed" in payload["hints"][0]
    assert payload["skipped"][0]["description"] == PROCESSED and payload["skipped"][0]["group"] == "Patient"
    text = write_discovery_report(found, tmp_path / "r.txt").read_text()
    assert "Hint: not_mprage: 3 images" in text and "[subject_rewritten]" in text


def _discover_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "preprocessing", "discover", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_prints_hints_and_warnings(tmp_path):
    csv_path, labels = _processed_export(tmp_path)
    labels.write_text("subject,label\nAD_109_S_1192,AD\n099_S_0534,CN\n")
    base = ["--adni", str(tmp_path / "ADNI"), "--collection-csv", str(csv_path)]

    default = _discover_cli(*base, "--out", str(tmp_path / "out"))
    assert default.returncode == 0, default.stderr
    assert "Found 0 scans of 0 subjects" in default.stdout
    assert "Skipped 3: not_mprage 3" in default.stdout
    hint = next(line for line in default.stdout.splitlines() if line.startswith("Hint: not_mprage: 3 images"))
    assert "--series adni-processed accepts 3 of them" in hint and "--label-table" in hint

    fixed = _discover_cli(
        *base, "--series", "adni-processed", "--label-table", str(labels), "--out", str(tmp_path / "o")
    )
    assert fixed.returncode == 0, fixed.stderr
    assert "Found 3 scans of 2 subjects" in fixed.stdout
    assert "Warning: 1 subject ids rewritten to ADNI's NNN_S_NNNN: t.csv:2: subject 'AD_109_S_1192'" in fixed.stdout
    scans = json.loads((tmp_path / "o" / "scans.json").read_text())
    assert [s["subject_raw"] for s in scans] == ["109_S_1192", "099_S_0534", "099_S_0534"]

    missing = _discover_cli("--collection-csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 1 and missing.stderr.strip() == f"error: CSV file not found: {tmp_path / 'nope.csv'}"
