"""OASIS input on trees the tests write: OASIS-3 MR sessions matched to clinical assessments by days since entry
(with sessions that have no match), OASIS-1's Analyze repetitions and CDR labels, and the Analyze conversion."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from preprocessing import adni
from preprocessing.__main__ import main
from preprocessing.cohorts import discover_oasis1, discover_oasis3
from preprocessing.cohorts.analyze import analyze_to_nifti
from preprocessing.cohorts.oasis3 import Assessment, nearest, session_days

# ---------------------------------------------------------------- OASIS-3

ADRC = ["ADRC_ADRCCLINICALDATA ID", "Subject", "mmse", "ageAtEntry", "cdr", "dx1"]


def t1w(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(path))
    return path


def bids_session(root: Path, subject: str, days: int, run: int = 1) -> Path:
    ses = f"d{days:04d}"
    return t1w(root / f"sub-{subject}" / f"ses-{ses}" / "anat" / f"sub-{subject}_ses-{ses}_run-{run:02d}_T1w.nii.gz")


def csv_file(path: Path, rows: list[list[str]], encoding: str = "utf-8", sep: str = ",") -> Path:
    path.write_bytes(("\n".join(sep.join(r) for r in rows) + "\n").encode(encoding))
    return path


@pytest.fixture
def oasis3(tmp_path) -> tuple[Path, Path]:
    """Five subjects: two layouts, a session 10 days from its assessment, one 650 days away, CDR 0 / 0.5 / 1, and a
    subject whose CDR rises from 0 to 1."""
    root = tmp_path / "oasis3"
    bids_session(root, "OAS30001", 0)
    bids_session(root, "OAS30001", 400)
    bids_session(root, "OAS30001", 400, run=2)
    # OASIS's non-BIDS download: one folder per MR session, files deeper, a name without the session.
    t1w(root / "OAS30002_MR_d0129" / "anat1" / "sub-OAS30002_ses-d0129_run-01_T1w.nii.gz")
    t1w(root / "OAS30003_MR_d0050" / "anat2" / "NIFTI" / "sub-OAS30003_T1w.nii.gz")
    bids_session(root, "OAS30004", 0)
    bids_session(root, "OAS30005", 0)
    bids_session(root, "OAS30005", 800)
    table = csv_file(tmp_path / "ADRC Clinical Data.csv", [ADRC,
        ["OAS30001_ClinicalData_d0000", "OAS30001", "30", "70.2", "0", "Cognitively normal"],
        ["OAS30001_ClinicalData_d0390", "OAS30001", "29", "70.2", "0", "Cognitively normal"],
        ["OAS30002_ClinicalData_d0100", " oas30002 ", "22", "75", "1", "AD Dementia"],  # a hand-typed subject
        ["OAS30003_ClinicalData_d0700", "OAS30003", "27", "80", "0", "Cognitively normal"],
        ["OAS30004_ClinicalData_d0020", "OAS30004", "26", "77", "0.5", "uncertain dementia - café"],
        ["OAS30005_ClinicalData_d0000", "OAS30005", "29", "69", "0", "Cognitively normal"],
        ["OAS30005_ClinicalData_d0790", "OAS30005", "21", "69", "1", "AD Dementia"],
        ["OAS30005_ClinicalData_d0795", "OAS30005", "", "69", "", "no CDR: not an assessment"]],
        encoding="latin-1")  # fmt: skip
    return root, table


def test_each_session_gets_the_nearest_assessment_within_the_window(oasis3):
    root, table = oasis3
    found = discover_oasis3(root, table)
    scans = {s.image_id: s for s in found.scans}
    assert sorted(scans) == ["sub-OAS30001_ses-d0000_run-01_T1w", "sub-OAS30001_ses-d0400_run-01_T1w",
                             "sub-OAS30002_ses-d0129_run-01_T1w", "sub-OAS30004_ses-d0000_run-01_T1w",
                             "sub-OAS30005_ses-d0000_run-01_T1w"]  # fmt: skip
    later = scans["sub-OAS30001_ses-d0400_run-01_T1w"]  # d0390 is 10 days away
    assert (later.subject, later.session, later.group, later.label, later.cdr, later.mmse) == (
        "OAS30001", "d0400", "CN", 0, 0.0, 29.0)  # fmt: skip
    assert later.age == pytest.approx(70.2 + 400 / 365.25, abs=0.01) and later.label_source == "clinical_table"
    ad = scans["sub-OAS30002_ses-d0129_run-01_T1w"]
    assert (ad.group, ad.label, ad.cdr, ad.mmse, ad.source) == ("AD", 1, 1.0, 22.0, "oasis3")
    assert scans["sub-OAS30004_ses-d0000_run-01_T1w"].group == "AD"  # CDR 0.5 from a threshold of 0.5
    skipped = {s.image_id: s for s in found.skipped}
    unmatched = skipped["sub-OAS30003_T1w"]  # the days come from its OAS30003_MR_d0050 folder
    assert unmatched.category == "no_clinical_match"
    assert "no clinical assessment within 365 days of d0050 (the nearest is 650 days away)" in unmatched.reason
    assert skipped["sub-OAS30001_ses-d0400_run-02_T1w"].category == "extra_run"
    changed = skipped["sub-OAS30005_ses-d0800_run-01_T1w"]
    assert changed.category == "label_changed" and "AD here but CN" in changed.reason
    assert [w.category for w in found.warnings] == ["encoding"]
    assert any(h.startswith("no_clinical_match: 1 MR sessions") for h in found.hints())
    wider = discover_oasis3(root, table, window_days=700)
    assert "sub-OAS30003_T1w" in {s.image_id for s in wider.scans}


def test_cdr_threshold_and_mci(oasis3):
    root, table = oasis3
    strict = discover_oasis3(root, table, cdr_ad_threshold=1.0)
    skipped = {s.image_id: s for s in strict.skipped}
    assert skipped["sub-OAS30004_ses-d0000_run-01_T1w"].category == "group_excluded"
    assert "CDR 0.5" in skipped["sub-OAS30004_ses-d0000_run-01_T1w"].reason
    assert any("--classes CN,MCI,AD" in h for h in strict.hints())
    three = discover_oasis3(root, table, classes=("CN", "MCI", "AD"), cdr_ad_threshold=1.0)
    groups = {s.subject: (s.group, s.label) for s in three.scans}
    assert groups["OAS30004"] == ("MCI", 1) and groups["OAS30002"] == ("AD", 2) and groups["OAS30001"] == ("CN", 0)


def test_days_and_the_nearest_assessment():
    assert [session_days(v) for v in ("d0129", "OAS30001_MR_d0129", "ses-d0000", "OAS30001_UDSb4_d3000", "M012")] \
        == [129, 129, 0, 3000, None]  # fmt: skip
    before, after = Assessment(90, 2, 0.0, None, None), Assessment(110, 3, 0.5, None, None)
    assert nearest([after, before], 100, 365) == (before, 10)  # a tie goes to the earlier assessment
    assert nearest([before], 500, 365) == (None, 410)
    assert nearest([], 0, 365) == (None, None)


def test_uds_table_with_a_days_column_as_tsv(tmp_path):
    root = tmp_path / "mr"
    bids_session(root, "OAS30010", 35)
    table = csv_file(tmp_path / "uds.tsv", [["OASISID", "days_to_visit", "age at visit", "MMSE", "CDRTOT"],
                                            ["OAS30010", "0", "71.0", "24", "1"]], sep="\t")  # fmt: skip
    (scan,) = discover_oasis3(root, table).scans
    assert (scan.group, scan.cdr, scan.mmse, scan.age) == ("AD", 1.0, 24.0, round(71.0 + 35 / 365.25, 2))
    bad = csv_file(tmp_path / "bad.csv", [["OASISID", "MMSE"], ["OAS30010", "24"]])
    with pytest.raises(adni.TableColumnError, match="no CDR"):
        discover_oasis3(root, bad)


def test_cli_discover_oasis3_prints_the_unmatched_count(oasis3, tmp_path, capsys):
    root, table = oasis3
    argv = ["discover", "--oasis3", str(root), "--clinical-table", str(table), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Found 5 scans of 4 subjects (CN, AD):" in printed
    assert "no_clinical_match 1" in printed and "Hint: no_clinical_match: 1 MR sessions" in printed
    with pytest.raises(SystemExit, match="--oasis3 needs --clinical-table"):
        main(["discover", "--oasis3", str(root), "--out", str(tmp_path / "out")])
    # With MCI a class, the default AD threshold is CDR 1: CDR 0.5 is MCI.
    assert main([*argv, "--classes", "CN,MCI,AD"]) == 0
    assert "  MCI: 1 scans, 1 subjects" in capsys.readouterr().out


# ---------------------------------------------------------------- OASIS-1

OASIS1_HEADER = ["ID", "M/F", "Hand", "Age", "Educ", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF", "Delay"]


def analyze(path: Path, volume: np.ndarray) -> Path:
    """An Analyze 7.5 pair (``.hdr`` + ``.img``) as OASIS-1 ships it: no orientation in the header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.AnalyzeImage(volume, np.diag([1.0, 1.0, 1.25, 1.0])), str(path))
    return path


def oasis1_tree(root: Path, volume: np.ndarray | None = None) -> Path:
    volume = np.zeros((4, 4, 4), np.int16) if volume is None else volume
    sessions = {"OAS1_0001_MR1": 3, "OAS1_0001_MR2": 1, "OAS1_0002_MR1": 2, "OAS1_0003_MR1": 1, "OAS1_0004_MR1": 1,
                "OAS1_0005_MR1": 1}  # fmt: skip
    for session, repetitions in sessions.items():
        for rep in range(1, repetitions + 1):
            analyze(root / "disc1" / session / "RAW" / f"{session}_mpr-{rep}_anon.hdr", volume)
        processed = root / "disc1" / session / "PROCESSED" / "MPRAGE" / "T88_111"
        analyze(processed / f"{session}_mpr_n4_anon_111_t88_masked_gfc.hdr", volume)
    analyze(root / "disc1" / "OAS1_0006_MR1" / "RAW" / "OAS1_0006_MR1_mpr-1_anon.hdr", volume)
    (root / "disc1" / "OAS1_0006_MR1" / "RAW" / "OAS1_0006_MR1_mpr-1_anon.img").unlink()
    csv_file(root / "oasis_cross-sectional.csv", [OASIS1_HEADER,
        ["OAS1_0001_MR1", "F", "R", "74", "2", "3", "29", "0", "1344", "0.743", "1.306", ""],
        ["OAS1_0001_MR2", "F", "R", "74", "2", "3", "29", "0", "1344", "0.743", "1.306", "20"],
        ["OAS1_0002_MR1", "M", "R", "78", "4", "1", "26", "0.5", "1475", "0.71", "1.19", ""],
        ["OAS1_0003_MR1", "F", "R", "80", "", "", "22", "1", "1500", "0.7", "1.17", ""],
        ["OAS1_0004_MR1", "M", "R", "25", "", "", "", "", "1600", "0.82", "1.1", ""],  # young: no CDR
        ["OAS1_0005_MR1", "F", "R", "71", "", "", "", "", "1400", "0.75", "1.2", ""],  # no CDR at 71
        ["OAS1_0006_MR1", "F", "R", "68", "", "", "30", "0", "1400", "0.75", "1.2", ""],
        ["OAS1_0099_MR1", "M", "R", "66", "", "", "30", "0", "1400", "0.75", "1.2", ""]])  # fmt: skip
    return root


def test_oasis1_labels_from_cdr_one_repetition_per_session(tmp_path):
    root = oasis1_tree(tmp_path / "oasis1")
    found = discover_oasis1(root)
    scans = {s.image_id: s for s in found.scans}
    assert sorted(scans) == ["OAS1_0001_MR1_mpr-1", "OAS1_0001_MR2_mpr-1", "OAS1_0002_MR1_mpr-1",
                             "OAS1_0003_MR1_mpr-1"]  # fmt: skip
    first = scans["OAS1_0001_MR1_mpr-1"]
    assert (first.subject, first.session, first.group, first.label, first.cdr, first.mmse, first.age, first.sex) == (
        "OAS1_0001", "MR1", "CN", 0, 0.0, 29.0, 74.0, "F")  # fmt: skip
    assert (first.source, first.nifti_path.suffix, first.label_source) == ("oasis1", ".hdr", "oasis1_csv")
    assert scans["OAS1_0002_MR1_mpr-1"].group == "AD"  # CDR 0.5 with the default threshold 0.5
    assert found.summary()["groups"]["CN"] == {"scans": 2, "subjects": 1}  # MR1 and MR2: one person
    skipped = {s.image_id or s.subject: s for s in found.skipped}
    assert skipped["OAS1_0001_MR1_mpr-2"].category == "extra_run"
    young, old = skipped["OAS1_0004_MR1_mpr-1"], skipped["OAS1_0005_MR1_mpr-1"]
    assert young.category == old.category == "no_label"
    assert "--oasis1-young-as-cn" in young.reason and "--oasis1-young-as-cn" not in old.reason
    assert skipped["OAS1_0006_MR1_mpr-1"].category == "file_missing"
    assert skipped["OAS1_0099"].category == "folder_missing"
    assert any("--oasis1-repetitions all" in h for h in found.hints())


def test_oasis1_thresholds_repetitions_and_young_controls(tmp_path):
    root = oasis1_tree(tmp_path / "oasis1")
    strict = discover_oasis1(root, cdr_ad_threshold=1.0)
    assert {s.subject: s.group for s in strict.scans} == {"OAS1_0001": "CN", "OAS1_0003": "AD"}
    assert next(s for s in strict.skipped if s.subject == "OAS1_0002").category == "group_excluded"
    three = discover_oasis1(root, classes=("CN", "MCI", "AD"), cdr_ad_threshold=1.0)
    assert {s.subject: (s.group, s.label) for s in three.scans}["OAS1_0002"] == ("MCI", 1)
    every = discover_oasis1(root, repetitions="all")
    assert [s.image_id for s in every.scans if s.session == "MR1" and s.subject == "OAS1_0001"] == [
        "OAS1_0001_MR1_mpr-1", "OAS1_0001_MR1_mpr-2", "OAS1_0001_MR1_mpr-3"]  # fmt: skip
    young = discover_oasis1(root, young_as_cn=True)
    added = next(s for s in young.scans if s.subject == "OAS1_0004")
    assert (added.group, added.label_source, added.cdr) == ("CN", "oasis1_young", None)
    assert "OAS1_0005" not in {s.subject for s in young.scans}  # 71 without a CDR is no young control


def test_cli_discover_oasis1_prints_counts(tmp_path, capsys):
    root = oasis1_tree(tmp_path / "oasis1")
    argv = ["discover", "--oasis1", str(root), "--out", str(tmp_path / "out"), "--oasis1-repetitions", "all"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Found 7 scans of 3 subjects (CN, AD):" in printed and "  CN: 4 scans, 1 subjects" in printed
    records = json.loads((tmp_path / "out" / "scans.json").read_text())
    assert {r["source"] for r in records} == {"oasis1"} and all(r["nifti_path"].endswith(".hdr") for r in records)
    with pytest.raises(SystemExit, match="no oasis_cross-sectional.csv"):
        main(["discover", "--oasis1", str(tmp_path / "out"), "--out", str(tmp_path / "out2")])


def test_analyze_conversion_gives_oasis1_its_sagittal_layout(tmp_path):
    # OASIS-1 raw axes: posterior->anterior, inferior->superior, right->left. Mark the top and the left.
    volume = np.zeros((8, 10, 6), np.int16)
    volume[:, -2:, :] = 100  # superior slab
    volume[:, :, -1] += 7  # left-most sagittal slice
    source = analyze(tmp_path / "OAS1_0001_MR1_mpr-1_anon.hdr", volume)
    converted = nib.load(analyze_to_nifti(source.with_suffix(".img"), tmp_path / "out.nii.gz", layout="oasis1"))
    assert nib.aff2axcodes(converted.affine) == ("A", "S", "L")
    assert np.allclose(converted.header.get_zooms(), (1.0, 1.0, 1.25))
    ras = nib.as_closest_canonical(converted).get_fdata()  # axes x (L->R), y (P->A), z (I->S)
    assert ras.shape == (6, 8, 10)
    assert ras[:, :, -2:].min() >= 100 and ras[:, :, :-2].max() < 100  # the top is superior
    assert ras[0, :, 0].max() == 7 and ras[1:, :, :-2].max() == 0  # the left is at low x
    plain = nib.load(analyze_to_nifti(source, tmp_path / "plain.nii.gz"))  # no layout: Analyze's transverse LAS
    assert nib.aff2axcodes(plain.affine) == ("L", "A", "S")


@pytest.mark.slow
def test_oasis1_scan_runs_through_the_chain(tmp_path):
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (24, 24, 20)], indexing="ij"), -1)
    radius = np.sqrt((grid**2).sum(-1))
    ball = np.where(radius < 0.8, 500 + 300 * (radius < 0.4), 0).astype(np.int16)
    root = oasis1_tree(tmp_path / "oasis1", ball)
    out = tmp_path / "out"
    toy_qc = ["min_voxels_per_axis=1", "min_fov_mm=1", "brain_volume_ml=[0.001, 5000]", "template_check=false",
              "min_surface_contrast=-10", "warn_surface_contrast=-10", "min_compactness=0",
              "min_largest_component_fraction=0"]  # fmt: skip
    argv = ["run", "--oasis1", str(root), "--out", str(out), "--skull-stripper", "none", "--spatial-size", "16",
            "--no-qc", "--workers", "1", *[a for pair in toy_qc for a in ("--qc-set", pair)]]  # fmt: skip
    assert main(argv) == 0
    import csv

    rows = {r["image_id"]: r for r in csv.DictReader((out / "manifest.csv").open())}
    row = rows["OAS1_0003_MR1_mpr-1"]
    assert row["status"] == "ok", row
    assert row["input"].endswith("OAS1_0003_OAS1_0003_MR1_mpr-1.nii.gz") and "/nifti/" in row["input"]
    assert (row["session"], row["cdr"], row["mmse"], row["label"]) == ("MR1", "1.0", "22.0", "1")
    assert nib.load(row["output"]).shape == (16, 16, 16)
    assert json.loads((out / "plan.json").read_text())["classes"] == ["CN", "AD"]
