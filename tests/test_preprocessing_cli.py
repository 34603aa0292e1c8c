"""``python -m preprocessing`` end to end on a tiny ADNI-like download that the test writes: discovery, conversion,
every chain step, manifest, QC pictures, per-scan failures with reasons, resume, and the balanced split."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO_ROOT
from dicom_factory import write_series

pytestmark = pytest.mark.slow

GOOD_SUBJECTS = [f"{100 + i:03d}_S_{1000 + i:04d}" for i in range(12)]  # 6 AD, 6 CN
SIZE = 20
# The toy brains below are 40 mm balls, which quality control rightly refuses as heads (tests/test_quality*.py test
# that); these tests are about conversion, the chain and the batch, so the size and brain-likeness checks are relaxed.
TOY_QC = [
    arg for pair in ("min_voxels_per_axis=1", "min_fov_mm=1", "brain_volume_ml=[0.01, 5000]", "template_check=false",
                     "min_surface_contrast=-10", "warn_surface_contrast=-10", "min_compactness=0",
                     "min_largest_component_fraction=0") for arg in ("--qc-set", pair)
]  # fmt: skip


def brain_volume(seed: int, atrophy: bool) -> np.ndarray:
    """An already skull-stripped toy brain (zero background) as integers, (columns, rows, slices)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (SIZE, SIZE + 4, SIZE)], indexing="ij"), -1)
    radius = np.sqrt((grid**2).sum(-1) / 0.8)
    volume = np.where(radius < 1.0, 600 + 200 * (radius < 0.6), 0).astype(float)
    if atrophy:
        volume[radius < 0.25] = 100  # enlarged "ventricles"
    volume[radius < 1.0] += rng.normal(0, 20, size=int((radius < 1.0).sum()))
    return np.clip(volume, 0, None).astype(np.int64)


def write_download(root: Path) -> Path:
    """ADNI/<subject>/<description>/<date>/I<id>/*.dcm for 12 good and 4 broken scans, plus the collection CSV."""
    adni = root / "ADNI"
    rows = []

    def add(subject, image_id, group, description="MPRAGE", **series):
        folder = adni / subject / description.replace(" ", "_") / "2010-01-05_10_00_00.0" / f"I{image_id}"
        volume = series.pop("volume", None)
        if volume is not None:
            write_series(folder, volume, spacing=(2.0, 2.0, 2.2), orientation="sagittal", patient_id=subject,
                         series_description=description, **series)  # fmt: skip
        rows.append(
            [f"I{image_id}", subject, group, "F", "74", "sc", "MRI", description, "Original", "1/05/2010", "DCM"]
        )
        return folder

    for i, subject in enumerate(GOOD_SUBJECTS):
        add(subject, 5000 + i, "AD" if i % 2 else "CN", volume=brain_volume(i, atrophy=bool(i % 2)))
    add("200_S_0001", 6001, "AD", volume=brain_volume(20, True), drop_slices=[5])  # missing slice
    notes = add("200_S_0002", 6002, "CN", volume=brain_volume(21, False))
    (notes / "notes.txt").write_text("not an image")  # a non-DICOM file in the series folder
    add("200_S_0003", 6003, "AD", volume=brain_volume(22, True)[:, :, :1])  # a 2D image
    add("200_S_0004", 6004, "CN", volume=np.zeros((SIZE, SIZE + 4, SIZE), np.int64))  # an empty volume
    add("200_S_0005", 6005, "MCI", volume=brain_volume(23, False))  # not AD/CN: skipped
    add("200_S_0006", 6006, "CN", description="Localizer", volume=brain_volume(24, False)[:, :, :3])  # not MPRAGE

    csv_path = root / "collection.csv"
    header = ["Image Data ID", "Subject", "Group", "Sex", "Age", "Visit", "Modality", "Description", "Type",
              "Acq Date", "Format"]  # fmt: skip
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        writer.writerow(header)
        writer.writerows(rows)
    return csv_path


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-m", "preprocessing", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("adni_download")
    csv_path = write_download(root)
    out = root / "prepared"
    args = ["run", "--adni", str(root / "ADNI"), "--collection-csv", str(csv_path), "--out", str(out)]
    args += ["--workers", "2", "--skull-stripper", "none", "--spatial-size", "24", *TOY_QC]
    result = cli(*args)
    return root, out, args, result


def manifest(out: Path) -> dict[str, dict]:
    with (out / "manifest.csv").open() as f:
        return {row["image_id"]: row for row in csv.DictReader(f)}


def test_every_good_scan_is_preprocessed(batch):
    _, out, _, result = batch
    rows = manifest(out)
    good = {f"I{5000 + i}" for i in range(12)}
    assert {k for k, r in rows.items() if r["status"] == "ok"} == good
    for image_id in good:
        row = rows[image_id]
        image = nib.load(row["output"])
        assert image.shape == (24, 24, 24)
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        data = image.get_fdata()
        assert data.min() == 0.0 and data.max() == pytest.approx(1.0)
        assert nib.load(row["mask"]).shape == (24, 24, 24)
        assert row["stripper"] == "none"
        assert sorted(map(float, row["input_voxel_size"].split("x"))) == [2.0, 2.0, 2.2]
        for step in (
            "convert",
            "Orientationd",
            "SkullStripd",
            "N4BiasCorrectiond",
            "ResampleToSpacingd",
            "qc",
            "total",
        ):
            assert float(row[f"seconds_{step}"]) >= 0.0, step
        assert Path(row["qc"]).stat().st_size > 10_000
    assert "Preprocessed 12 of 16 scans" in result.stdout


def test_broken_scans_fail_with_reasons_and_the_rest_completes(batch):
    _, out, _, result = batch
    rows = manifest(out)
    assert rows["I6001"]["status"] == "failed" and "slice" in rows["I6001"]["error"].lower()
    assert rows["I6002"]["status"] == "failed" and "notes.txt" in rows["I6002"]["error"]
    assert rows["I6003"]["status"] == "failed" and "single slice" in rows["I6003"]["error"]
    assert rows["I6004"]["status"] == "failed" and "Empty volume" in rows["I6004"]["error"]
    assert "I6005" not in rows and "I6006" not in rows  # MCI and the localizer are skipped at discovery
    assert "4 failed:" in result.stdout and "I6004 (200_S_0004): ValueError: Empty volume" in result.stdout
    report = (out / "discovery.txt").read_text()
    assert "group_excluded" in report and "not_mprage" in report


def test_qc_page_shows_every_scan(batch):
    _, out, _, result = batch
    page = (out / "qc" / "index.html").read_text()
    assert page.count("<img") == 12
    assert "Empty volume" in page
    assert f"QC page:  {out / 'qc' / 'index.html'}" in result.stdout


def test_interrupted_batch_resumes_without_redoing_finished_scans(batch):
    _, out, args, _ = batch
    rows = manifest(out)
    done = Path(rows["I5003"]["output"])
    kept = Path(rows["I5004"]["output"])
    kept_mtime = kept.stat().st_mtime_ns
    done.unlink()  # as if the batch had been killed before this scan was written
    result = cli(*args)
    assert done.exists()
    assert kept.stat().st_mtime_ns == kept_mtime
    assert "preprocessing: 100%" in result.stderr and "5/5" in result.stderr  # 1 redone + 4 failed retried
    assert manifest(out)["I5004"]["seconds_total"] == rows["I5004"]["seconds_total"]


def test_split_writes_a_balanced_subject_level_datalist_and_folds(batch):
    _, out, _, _ = batch
    result = cli("split", "--out", str(out), "--folds", "3")
    written = json.loads((out / "datalist.json").read_text())
    assert written["classes"] == ["CN", "AD"]  # from the folder's plan.json (run's --classes)
    datalist = {name: written[name] for name in ("training", "validation", "test")}
    counts = {name: len(items) for name, items in datalist.items()}
    assert counts == {"training": 8, "validation": 2, "test": 2}
    for name, items in datalist.items():
        assert sum(item["label"] for item in items) * 2 == len(items), name  # 50/50 in every partition
        assert all((out / item["image"]).exists() and not Path(item["image"]).is_absolute() for item in items)
    subjects = [{item["subject"] for item in items} for items in datalist.values()]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    assert "Condition: AD" in result.stdout and "Target scan counts" in result.stdout
    folds = sorted((out / "folds").glob("fold_*.json"))
    assert len(folds) == 3
    tests = [item["image_id"] for fold in folds for item in json.loads(fold.read_text())["test"]]
    assert sorted(tests) == sorted(f"I{5000 + i}" for i in range(12))  # each scan tested exactly once


@pytest.mark.parametrize("command", [[], ["discover"], ["run"], ["split"], ["benchmark"]])
def test_every_command_answers_help(command):
    result = cli(*command, "-h")
    assert "usage: python -m preprocessing" in result.stdout


def test_benchmark_prints_every_step_of_the_chain():
    # Speed is measured by the benchmark itself (README table), never asserted here.
    result = cli("benchmark", "--no-forward")
    assert "180x220x180 1 mm head" in result.stdout
    for step in ("CheckVolumed", "Orientationd", "SkullStripd", "N4BiasCorrectiond", "ResampleToSpacingd",
                 "CubicResized", "total without the SynthStrip network"):  # fmt: skip
        line = next((x for x in result.stdout.splitlines() if step in x), None)
        assert line is not None, (step, result.stdout)
    total = next(x for x in result.stdout.splitlines() if "total without the SynthStrip network" in x)
    assert float(total.split()[-2]) > 0, total


def test_discover_lists_usable_scans_without_processing(batch, tmp_path):
    root, _, _, _ = batch
    result = cli(
        "discover",
        "--adni",
        str(root / "ADNI"),
        "--collection-csv",
        str(root / "collection.csv"),
        "--out",
        str(tmp_path),
    )
    scans = json.loads((tmp_path / "scans.json").read_text())
    assert len(scans) == 16 and {s["group"] for s in scans} == {"AD", "CN"}
    assert "Found 16 scans of 16 subjects" in result.stdout
    assert not (tmp_path / "images").exists()


def test_nifti_folder_with_csv_is_accepted(tmp_path):
    folder = tmp_path / "converted"
    folder.mkdir()
    rows = ["path,subject,label"]
    for i, label in enumerate(["AD", "CN"]):
        volume = brain_volume(i, atrophy=label == "AD").astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 1.5, 1.0])), str(folder / f"scan{i}.nii.gz"))
        rows.append(f"scan{i}.nii.gz,sub{i},{label}")
    (folder / "scans.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    cli("run", "--nifti-csv", str(folder / "scans.csv"), "--out", str(out), "--skull-stripper", "none",
        "--spatial-size", "16", "--no-qc", "--workers", "1", *TOY_QC)  # fmt: skip
    rows_out = manifest(out)
    assert [r["status"] for r in rows_out.values()] == ["ok", "ok"]
    assert {r["label"] for r in rows_out.values()} == {"0", "1"}
    assert all(nib.load(r["output"]).shape == (16, 16, 16) for r in rows_out.values())
