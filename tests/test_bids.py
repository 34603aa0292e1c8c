"""BIDS input: T1w images of a BIDS tree the tests write, diagnoses from participants.tsv, sessions.tsv or a label
table, runs, 3 classes, one class per subject, and ``synth --bids`` read back by ``discover --bids``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from preprocessing import adni
from preprocessing.__main__ import main
from preprocessing.cohorts import discover_bids
from preprocessing.synthetic.truth import find_truth


def t1w(root: Path, subject: str, session: str | None = None, run: int | None = None, folder: str = "anat") -> Path:
    """A tiny T1w image at its BIDS place (discovery reads names and tables, never the voxels)."""
    name = f"sub-{subject}" + (f"_ses-{session}" if session else "") + (f"_run-{run}" if run else "") + "_T1w.nii.gz"
    path = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(path))
    return path


def tsv(path: Path, rows: list[list[str]], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join("\t".join(r) for r in rows) + "\n").encode(encoding))
    return path


def by_id(discovery: adni.Discovery) -> dict[str, adni.Scan]:
    return {s.image_id: s for s in discovery.scans}


def skipped(discovery: adni.Discovery) -> dict[str, adni.Skipped]:
    return {s.image_id: s for s in discovery.skipped}


def test_bids_without_sessions_takes_the_diagnosis_age_and_sex_from_participants(tmp_path):
    for subject in ("01", "02", "03", "04"):
        t1w(tmp_path, subject)
    tsv(tmp_path / "participants.tsv", [["participant_id", "age", "sex", "group"],
        ["sub-01", "71.5", "F", "AD"], ["sub-02", "68", "male", "CN"], ["sub-03", "n/a", "n/a", "SMC"],
        ["sub-04", "80", "M", "n/a"]])  # fmt: skip
    (tmp_path / "derivatives" / "sub-01" / "anat").mkdir(parents=True)
    (tmp_path / "derivatives" / "sub-01" / "anat" / "sub-01_desc-preproc_T1w.nii.gz").write_bytes(b"")
    found = discover_bids(tmp_path)
    scans = by_id(found)
    assert sorted(scans) == ["sub-01_T1w", "sub-02_T1w"]
    one = scans["sub-01_T1w"]
    assert (one.subject, one.group, one.label, one.age, one.sex, one.session) == ("sub-01", "AD", 1, 71.5, "F", None)
    assert (one.source, one.label_source, one.nifti_path.name) == ("bids", "participants_tsv", "sub-01_T1w.nii.gz")
    assert (scans["sub-02_T1w"].label, scans["sub-02_T1w"].sex) == (0, "M")
    left = skipped(found)
    assert left["sub-03_T1w"].category == "group_excluded" and "only AD and CN are used" in left["sub-03_T1w"].reason
    assert left["sub-04_T1w"].category == "no_label" and "--bids-label-column" in left["sub-04_T1w"].reason
    assert len(found.skipped) == 2  # derivatives are never read as scans
    assert any("--bids-label-column" in hint for hint in found.hints())


def test_sessions_tsv_labels_each_session_and_wins_over_participants(tmp_path):
    for session in ("M000", "M012"):
        t1w(tmp_path, "ADNI002S0295", session)
    t1w(tmp_path, "ADNI067S0110", "M000")
    tsv(tmp_path / "participants.tsv", [["participant_id", "sex", "diagnosis_sc"],
        ["sub-ADNI002S0295", "F", "CN"], ["sub-ADNI067S0110", "M", "AD"]])  # fmt: skip
    tsv(tmp_path / "sub-ADNI002S0295" / "sub-ADNI002S0295_sessions.tsv", [
        ["session_id", "acq_time", "age", "diagnosis", "MMSE", "cdr"],
        ["ses-M000", "2006-04-18T08:20:30", "84.8", "CN", "29", "0"],
        ["ses-M012", "2007-04-20", "85.8", "n/a", "28", "0"]])  # fmt: skip
    found = discover_bids(tmp_path)
    scans = by_id(found)
    first = scans["sub-ADNI002S0295_ses-M000_T1w"]
    # Clinica's BIDS label reads back as the ADNI id, so that one person is one subject across cohorts.
    assert (first.subject, first.subject_raw, first.session, first.visit) == ("002_S_0295", "sub-ADNI002S0295",
                                                                              "M000", "M000")  # fmt: skip
    assert (first.label_source, first.acq_date, first.age, first.mmse, first.cdr, first.sex) == (
        "sessions_tsv", "2006-04-18", 84.8, 29.0, 0.0, "F")  # fmt: skip
    later = scans["sub-ADNI002S0295_ses-M012_T1w"]  # blank in sessions.tsv: the participant's diagnosis
    assert (later.group, later.label_source, later.mmse) == ("CN", "participants_tsv", 28.0)
    assert scans["sub-ADNI067S0110_ses-M000_T1w"].group == "AD"


def test_three_classes_read_emci_and_lmci_as_mci(tmp_path):
    rows = [["participant_id", "dx"]]
    for index, dx in enumerate(["CN", "EMCI", "LMCI", "MCI", "Dementia", "SMC"]):
        t1w(tmp_path, f"{index:02d}")
        rows.append([f"sub-{index:02d}", dx])
    tsv(tmp_path / "participants.tsv", rows)
    three = discover_bids(tmp_path, classes=("CN", "MCI", "AD"))
    assert [(s.subject, s.group, s.label) for s in three.scans] == [
        ("sub-00", "CN", 0),
        ("sub-01", "MCI", 1),
        ("sub-02", "MCI", 1),
        ("sub-03", "MCI", 1),
        ("sub-04", "AD", 2),
    ]
    assert [s.category for s in three.skipped] == ["group_excluded"]  # SMC is never a class
    binary = discover_bids(tmp_path)
    assert [(s.group, s.label) for s in binary.scans] == [("CN", 0), ("AD", 1)]
    hint = next(h for h in binary.hints() if h.startswith("group_excluded"))
    assert "3 images are MCI" in hint and "--classes CN,MCI,AD" in hint
    with pytest.raises(adni.ClassListError, match="disease-stage order"):
        adni.parse_classes("AD,CN")


def test_a_session_whose_diagnosis_changed_is_left_out(tmp_path):
    for session in ("M000", "M012", "M024"):
        t1w(tmp_path, "01", session)
    tsv(tmp_path / "participants.tsv", [["participant_id"], ["sub-01"]])
    tsv(tmp_path / "sub-01" / "sub-01_sessions.tsv", [["session_id", "diagnosis"],
        ["ses-M024", "AD"], ["ses-M000", "CN"], ["ses-M012", "MCI"]])  # fmt: skip
    found = discover_bids(tmp_path, classes=("CN", "MCI", "AD"))
    assert [s.session for s in found.scans] == ["M000"]
    reasons = {s.image_id: s.reason for s in found.skipped if s.category == "label_changed"}
    assert sorted(reasons) == ["sub-01_ses-M012_T1w", "sub-01_ses-M024_T1w"]
    assert "AD here but CN at its first labelled session M000" in reasons["sub-01_ses-M024_T1w"]
    assert any(h.startswith("label_changed: 2 sessions") for h in found.hints())


def test_runs_first_or_all_and_names_that_are_not_bids(tmp_path):
    for run in (2, 1, 10):
        t1w(tmp_path, "01", "1", run=run)
    t1w(tmp_path, "02", "1")
    (tmp_path / "sub-02" / "ses-1" / "anat" / "T1w.nii.gz").write_bytes(b"")  # not a BIDS name
    tsv(tmp_path / "participants.tsv", [["participant_id", "diagnosis"], ["sub-01", "CN"], ["sub-02", "AD"]])
    first = discover_bids(tmp_path)
    assert [s.image_id for s in first.scans] == ["sub-01_ses-1_run-1_T1w", "sub-02_ses-1_T1w"]
    extra = sorted(s.image_id for s in first.skipped if s.category == "extra_run")
    assert extra == ["sub-01_ses-1_run-10_T1w", "sub-01_ses-1_run-2_T1w"]
    assert [s.category for s in first.skipped if s.path.name == "T1w.nii.gz"] == ["not_bids"]
    every = discover_bids(tmp_path, runs="all")
    assert [s.image_id for s in every.scans if s.subject == "sub-01"] == [
        "sub-01_ses-1_run-1_T1w", "sub-01_ses-1_run-2_T1w", "sub-01_ses-1_run-10_T1w"]  # fmt: skip


def test_named_label_column_and_label_table_by_subject_and_session(tmp_path):
    for session in ("M000", "M012"):  # Clinica's sessions; the table below has ADNIMERGE's VISCODE bl, m12
        t1w(tmp_path, "ADNI109S1192", session)
    t1w(tmp_path, "ADNI099S0534", "M000")
    tsv(tmp_path / "participants.tsv", [["participant_id", "cohort_dx"],
        ["sub-ADNI109S1192", "CN"], ["sub-ADNI099S0534", "CN"]])  # fmt: skip
    named = discover_bids(tmp_path, label_column="cohort_dx")
    assert {s.group for s in named.scans} == {"CN"} and len(named.scans) == 3
    with pytest.raises(adni.TableColumnError, match="no diagnosis column 'dx_custom'"):
        discover_bids(tmp_path, label_column="dx_custom")
    # Hand-mangled subjects in the table are the BIDS subjects all the same; a row without session covers them all.
    table = tmp_path / "labels.csv"
    table.write_text("PTID,VISCODE,DX\nAD_109_S_1192,bl,AD\n109-s-1192,m12,AD\nCN64_099_S_0534,,AD\n")
    found = discover_bids(tmp_path, label_table=table)
    assert [(s.subject, s.session, s.group, s.label_source) for s in found.scans] == [
        ("099_S_0534", "M000", "AD", "label_table"), ("109_S_1192", "M000", "AD", "label_table"),
        ("109_S_1192", "M012", "AD", "label_table")]  # fmt: skip
    table.write_text("PTID,VISCODE,DX\n109_S_1192,bl,AD\n109_S_1192,m12,CN\n")  # the table decides per session
    changed = discover_bids(tmp_path, label_table=table)
    assert [(s.session, s.group) for s in changed.scans] == [("M000", "AD")]
    moved = [s for s in changed.skipped if s.subject == "109_S_1192"]
    assert [(s.category, s.image_id) for s in moved] == [("label_changed", "sub-ADNI109S1192_ses-M012_T1w")]


def test_latin1_participants_table_is_read_with_a_warning(tmp_path):
    t1w(tmp_path, "01")
    tsv(tmp_path / "participants.tsv", [["participant_id", "site", "diagnosis"], ["sub-01", "Montréal", "AD"]],
        encoding="latin-1")  # fmt: skip
    found = discover_bids(tmp_path)
    assert [s.group for s in found.scans] == ["AD"]
    assert [w.category for w in found.warnings] == ["encoding"]


def test_cli_discover_bids_prints_counts(tmp_path, capsys):
    for subject in ("01", "02", "03"):
        t1w(tmp_path / "ds", subject)
    tsv(tmp_path / "ds" / "participants.tsv", [["participant_id", "dx"], ["sub-01", "AD"], ["sub-02", "CN"],
                                                ["sub-03", "LMCI"]])  # fmt: skip
    out = tmp_path / "out"
    assert main(["discover", "--bids", str(tmp_path / "ds"), "--classes", "CN,MCI,AD", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Found 3 scans of 3 subjects (CN, MCI, AD):" in printed
    assert printed.index("  CN: 1 scans") < printed.index("  MCI: 1 scans") < printed.index("  AD: 1 scans")
    records = json.loads((out / "scans.json").read_text())
    assert {r["image_id"]: r["label"] for r in records} == {"sub-01_T1w": 2, "sub-02_T1w": 0, "sub-03_T1w": 1}
    with pytest.raises(SystemExit, match="give one input"):
        main(["discover", "--bids", str(tmp_path / "ds"), "--oasis1", str(tmp_path), "--out", str(out)])
    with pytest.raises(SystemExit, match="--classes unknown class 'PD'"):
        main(["discover", "--bids", str(tmp_path / "ds"), "--classes", "CN,PD", "--out", str(out)])


def test_synth_bids_is_read_back_with_every_scan_and_label(tmp_path, capsys):
    out = tmp_path / "synth"
    argv = ["synth", "--bids", "--out", str(out), "--subjects", "2", "--ad-fraction", "0.5", "--min-visits", "2",
            "--max-visits", "2", "--voxel-size", "2.0", "2.4", "--workers", "1", "--seed", "3"]  # fmt: skip
    assert main(argv) == 0
    assert f"Next: python -m preprocessing run --bids {out / 'bids'}" in capsys.readouterr().out
    assert not (out / "ADNI").exists() and not (out / "collection.csv").exists()
    truth = json.loads((out / "truth" / "cohort.json").read_text())
    expected = {(s["subject"], scan["visit"], s["group"], scan["nominal"]["disease_hippocampus_loss"])
                for s in truth["subjects"] for scan in s["scans"]}  # fmt: skip
    found = discover_bids(out / "bids")
    assert found.skipped == []
    months = {"sc": "M000", "m06": "M006"}
    assert {(s.subject, s.session, s.group, s.atrophy) for s in found.scans} == {
        (subject, months[visit], group, loss) for subject, visit, group, loss in expected
    }
    assert {s.group: s.atrophy > 0 for s in found.scans} == {"AD": True, "CN": False}
    # The stored volume is the converted DICOM's grid: the truth regions overlay it.
    scan = next(s for s in found.scans if s.session == "M000")
    first = next(v for s in truth["subjects"] if s["subject"] == scan.subject for v in s["scans"] if v["visit"] == "sc")
    regions = nib.load(out / "truth" / first["regions_nifti"])
    image = nib.load(scan.nifti_path)
    assert image.shape == regions.shape and np.allclose(image.affine, regions.affine)
    # The chain names model-ready images <subject>_<image id>, here the BIDS stem; each finds its own truth file.
    for found_scan in found.scans:
        path = find_truth(out / "truth", f"{found_scan.subject}_{found_scan.image_id}")
        record = json.loads(path.read_text())
        assert (record["subject"], months[record["visit"]]) == (found_scan.subject, found_scan.session)
    assert find_truth(out / "truth", f"{scan.subject}_sub-ADNI000S0000_ses-M000_T1w") is None


def test_split_writes_the_plan_classes_and_the_stage_measures(tmp_path, capsys):
    from preprocessing.pipeline import write_manifest

    rows = []
    for index in range(18):
        label = index % 3
        image = tmp_path / "images" / f"scan{index}.nii.gz"
        image.parent.mkdir(exist_ok=True)
        image.write_bytes(b"")
        row = {"image_id": f"I{index}", "subject": f"sub-{index:02d}", "group": ["CN", "MCI", "AD"][label],
               "label": label, "status": "ok", "output": str(image), "session": "M000", "source": "bids"}  # fmt: skip
        if index < 6:
            row.update(cdr=[0, 0.5, 1][label], mmse=30 - 3 * label)
        if index == 7:
            row.update(atrophy=0.21)
        rows.append(row)
    write_manifest(rows, tmp_path / "manifest.csv")
    with pytest.raises(SystemExit, match=r"I1 has label 1 \(MCI\) but with no plan.json in .* the classes CN,AD"):
        main(["split", "--out", str(tmp_path)])  # no plan: the default classes cannot hold label 2
    (tmp_path / "plan.json").write_text(json.dumps({"format": 1, "settings": {}, "classes": ["CN", "MCI", "AD"]}))
    assert main(["split", "--out", str(tmp_path), "--fractions", "0.5", "0.25", "0.25", "--folds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Balanced cohort: 18 scans (6 AD, 6 MCI, 6 CN) of 18 preprocessed" in printed
    assert "Condition: MCI" in printed and "Stage measures (CDR, MMSE, atrophy) of 7 scans" in printed
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    assert datalist["classes"] == ["CN", "MCI", "AD"]
    assert datalist["clinical"]["I1"] == {"cdr": 0.5, "mmse": 27.0} and datalist["clinical"]["I7"] == {"atrophy": 0.21}
    assert set(datalist["clinical"]) == {"I0", "I1", "I2", "I3", "I4", "I5", "I7"}
    entries = [e for name in ("training", "validation", "test") for e in datalist[name]]
    assert len(entries) == 18 and all("cdr" not in e and "atrophy" not in e for e in entries)
    fold = json.loads((tmp_path / "folds" / "fold_0.json").read_text())
    assert fold["classes"] == ["CN", "MCI", "AD"] and fold["clinical"] == datalist["clinical"]
