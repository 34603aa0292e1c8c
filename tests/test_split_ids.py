"""``split`` treats one person under two spellings as one subject, so no person straddles two partitions."""

from __future__ import annotations

import json

from preprocessing.__main__ import main
from preprocessing.pipeline import write_manifest


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
    for partition, items in datalist.items():
        for item in items:
            where.setdefault(item["subject"], set()).add(partition)
    assert len(where["109_S_1192"]) == 1 and len(where["099_S_0534"]) == 1, where
    assert "AD_109_S_1192" not in where and "300_S_0001" not in where
    scans_of = {s: sum(item["subject"] == s for items in datalist.values() for item in items) for s in where}
    assert scans_of["109_S_1192"] == 3  # AD scans are all kept, and all in one partition
