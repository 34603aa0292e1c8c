"""Quality control in a real batch: one ADNI-like download holding a good head and four things that are not usable
T1 brains (a fruit, a noise cube, an 8³ volume, a 2D thick-slice series labelled MPRAGE). The good scan passes,
every other one is refused with its reason, nothing is lost, and ``split`` leaves the refused ones out."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
from bad_inputs import (
    write_fruit_phantom,
    write_noise_cube,
    write_synthetic_head,
    write_thick_slice_series,
    write_tiny_volume,
)
from conftest import REPO_ROOT

from preprocessing.dicom_writer import write_series_from_affine

pytestmark = pytest.mark.slow

GOOD = ["002_S_0001", "002_S_0002"]
BAD = {"003_S_0001": "fruit", "003_S_0002": "noise", "003_S_0003": "thick", "003_S_0004": "8 cubed"}


def _as_dicom(nifti: Path, folder: Path, subject: str) -> None:
    image = nib.load(str(nifti))
    write_series_from_affine(folder, image.get_fdata(), image.affine, patient_id=subject,
                             series_description="MPRAGE", uid_seed=subject,
                             extra_tags={"MRAcquisitionType": "3D"})  # fmt: skip


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "preprocessing", *args], cwd=REPO_ROOT,
                            env={**os.environ}, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0 or not check, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("qc_batch")
    scratch = root / "scratch"
    scratch.mkdir()
    rows, folders = [], {}
    for index, subject in enumerate([*GOOD, *BAD]):
        folders[subject] = root / "ADNI" / subject / "MPRAGE" / "2010-01-05_10_00_00.0" / f"I{7000 + index}"
        group = "AD" if index % 2 else "CN"
        rows.append([f"I{7000 + index}", subject, group, "F", "74", "sc", "MRI", "MPRAGE", "Original", "1/05/2010"])
    for index, subject in enumerate(GOOD):
        _as_dicom(write_synthetic_head(scratch / f"{subject}.nii.gz", subject=index), folders[subject], subject)
    _as_dicom(write_fruit_phantom(scratch / "fruit.nii.gz"), folders["003_S_0001"], "003_S_0001")
    _as_dicom(write_noise_cube(scratch / "noise.nii.gz"), folders["003_S_0002"], "003_S_0002")
    _as_dicom(write_tiny_volume(scratch / "tiny.nii.gz"), folders["003_S_0004"], "003_S_0004")
    write_thick_slice_series(folders["003_S_0003"])  # 2D, 5 mm slices, but described as MPRAGE in the CSV
    with (root / "collection.csv").open("w", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        writer.writerow(["Image Data ID", "Subject", "Group", "Sex", "Age", "Visit", "Modality", "Description",
                         "Type", "Acq Date"])  # fmt: skip
        writer.writerows(rows)
    out = root / "out"
    result = _cli("run", "--adni", str(root / "ADNI"), "--collection-csv", str(root / "collection.csv"),
                  "--out", str(out), "--skull-stripper", "deepbet", "--spacing", "2", "--spatial-size", "32",
                  "--workers", "2")  # fmt: skip
    with (out / "manifest.csv").open() as f:
        manifest = {row["subject"]: row for row in csv.DictReader(f)}
    return out, result, manifest


def test_every_scan_is_reported_and_only_the_heads_pass(batch):
    out, result, manifest = batch
    assert sorted(manifest) == sorted([*GOOD, *BAD])  # nothing lost
    for subject in GOOD:
        assert manifest[subject]["status"] == "ok" and manifest[subject]["qc_status"] == "pass", manifest[subject]
    for subject in BAD:
        row = manifest[subject]
        assert row["status"] in ("qc_failed", "failed") and row["qc_status"] == "fail", row
        assert row["qc_reasons"], row
    assert "2D" in manifest["003_S_0003"]["qc_reasons"] and "slice" in manifest["003_S_0003"]["qc_reasons"]
    assert "refused by quality control" in result.stdout or "failed:" in result.stdout


def test_the_qc_page_lists_the_refused_scans_first(batch):
    out, _, manifest = batch
    page = (out / "qc" / "index.html").read_text()
    positions = {subject: page.index(subject) for subject in manifest}
    assert max(positions[s] for s in BAD) < min(positions[s] for s in GOOD)
    assert "2 ok" in page and "4 failed" in page


def test_split_leaves_the_refused_scans_out_and_lists_them(batch):
    out, _, _ = batch
    # Two good subjects cannot fill three partitions; what matters here is what split reads from the manifest.
    result = _cli("split", "--out", str(out), check=False)
    listed = result.stdout.split("Left out 4 scans that failed preprocessing or quality control")[1]
    assert all(subject in listed for subject in BAD), result.stdout
    assert "Balanced cohort: 2 scans (1 AD, 1 CN) of 2 preprocessed" in result.stdout, result.stdout
