"""``split`` treats one person under two spellings as one subject, so no person straddles two partitions."""

from __future__ import annotations

import json

import pytest

from preprocessing import subject_ids
from preprocessing.__main__ import main
from preprocessing.pipeline import write_manifest
from preprocessing.subject_ids import normalize_subject_id, subject_key


def test_mangled_ids_of_one_person_stay_in_one_partition(tmp_path, capsys):
    rows = []
    spellings = {1: ["AD_109_S_1192", "109_S_1192", "109-s-1192"], 0: ["CN64_099_S_0534", "099_S_0534"]}
    people = [(label, spelling) for label, names in spellings.items() for spelling in names]
    people += [(i % 2, f"{200 + i:03d}_S_{3000 + i}") for i in range(16)]
    for index, (label, subject) in enumerate(people):
        image = tmp_path / "images" / f"scan{index}.nii.gz"
        image.parent.mkdir(exist_ok=True)
        image.write_bytes(b"")
        rows.append({"image_id": f"I{index}", "subject": subject, "label": label, "status": "ok",
                     "output": str(image), "qc_status": "pass"})  # fmt: skip
    rows.append({"image_id": "I99", "subject": "300_S_0001", "label": 1, "status": "qc_failed", "output": "",
                 "error": "quality control: brain volume 660 ml outside 800-2000 ml"})  # fmt: skip
    write_manifest(rows, tmp_path / "manifest.csv")
    assert main(["split", "--out", str(tmp_path), "--fractions", "0.5", "0.25", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert "Left out 1 scans" in printed and "300_S_0001" in printed and "brain volume 660 ml" in printed
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    where: dict[str, set[str]] = {}
    partitions = {name: datalist[name] for name in ("training", "validation", "test")}  # not "classes" etc.
    for partition, items in partitions.items():
        for item in items:
            where.setdefault(item["subject"], set()).add(partition)
    assert len(where["109_S_1192"]) == 1 and len(where["099_S_0534"]) == 1, where
    assert "AD_109_S_1192" not in where and "300_S_0001" not in where
    scans_of = {s: sum(item["subject"] == s for items in partitions.values() for item in items) for s in where}
    assert scans_of["109_S_1192"] == 3  # AD scans are all kept, and all in one partition


@pytest.mark.parametrize(
    ("spellings", "shown", "key"),
    [
        (["109_S_1192", "AD_109_S_1192", "sub-ADNI109S1192", " 109-s-1192 "], "109_S_1192", "109_S_1192"),
        (["OAS1_0001_MR1", "OAS1_0001_MR2", "OAS1_0001", "sub-OAS10001", "oas1_0001"], "OAS1_0001", "OAS1_0001"),
        (["OAS30001", "sub-OAS30001", "OAS30001_MR_d0129", "sub-OAS30001_ses-d0129"], "OAS30001", "OAS30001"),
    ],
)
def test_one_person_under_every_spelling_has_one_key(spellings, shown, key):
    assert {normalize_subject_id(s) for s in spellings} == {shown}
    assert {subject_key(s) for s in spellings} == {key}


def test_bids_labels_compare_without_their_prefix_and_stay_apart():
    assert subject_key("sub-01") == subject_key("SUB-01") == subject_key("01") == "01"
    assert normalize_subject_id(" sub-01 ") == "sub-01"  # the shown id keeps what the dataset wrote
    keys = {subject_key(s) for s in ["sub-01", "sub-1", "sub-10", "sub-010"]}
    assert len(keys) == 4  # labels are strings: leading zeros count
    assert subject_key("OAS10001") != subject_key("OAS30001")  # OASIS-1 subject 1 is not OASIS-3 subject 1
    assert subject_key("OAS300012") == "OAS300012"  # not an OASIS id: kept as written


def test_the_bundle_holds_the_one_implementation():
    from scripts import subject_ids as bundle_ids

    assert subject_ids.subject_key is bundle_ids.subject_key
    assert subject_ids.normalize_subject_id is bundle_ids.normalize_subject_id
