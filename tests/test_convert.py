"""DICOM to NIfTI conversion of single series: geometry survives, and every broken folder fails with a clear reason."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dicom2nifti.settings
import nibabel as nib
import numpy as np
import pytest
from dicom_factory import ramp_volume, series_affine, write_series

from preprocessing.convert import ConversionResult, convert_scan, convert_series, output_name

SUBJECT = "002_S_0295"
SHAPE = (12, 10, 8)  # columns, rows, slices
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _dicom_index_of_every_voxel(affine: np.ndarray, shape: tuple[int, ...], written_affine: np.ndarray) -> np.ndarray:
    """For each NIfTI voxel (C order), the (i, j, k) index of the written DICOM voxel at the same world position."""
    index = np.indices(shape).reshape(3, -1)
    ras = affine @ np.vstack([index, np.ones(index.shape[1])])
    source = np.linalg.inv(LPS_TO_RAS @ written_affine) @ ras
    rounded = np.rint(source[:3])
    assert np.allclose(source[:3], rounded, atol=1e-3), "NIfTI voxel centres do not fall on the written voxel grid"
    return rounded.astype(int)


def _no_temporary_files(out_dir: Path) -> bool:
    return (
        not [p for p in out_dir.iterdir() if p.name.startswith(".") or ".tmp" in p.name] if out_dir.exists() else True
    )


@pytest.mark.parametrize(
    ("orientation", "spacing", "reverse_slices", "expected_shape", "expected_zooms"),
    [
        ("axial", (0.9, 1.1, 1.3), False, (12, 10, 8), (0.9, 1.1, 1.3)),
        ("sagittal", (1.0, 1.05, 1.2), False, (8, 12, 10), (1.2, 1.0, 1.05)),
        ("sagittal", (1.0, 1.05, 1.2), True, (8, 12, 10), (1.2, 1.0, 1.05)),
        ("coronal", (0.9, 1.1, 1.3), False, (12, 8, 10), (0.9, 1.3, 1.1)),
    ],
)
def test_good_series_keeps_its_geometry(tmp_path, orientation, spacing, reverse_slices, expected_shape, expected_zooms):
    volume = ramp_volume(SHAPE)
    written = series_affine(spacing, orientation, reverse_slices=reverse_slices)
    write_series(tmp_path / "dicom", volume, spacing, orientation, patient_id=SUBJECT, reverse_slices=reverse_slices)

    result = convert_series(tmp_path / "dicom", tmp_path / "out", SUBJECT, "I45108")

    assert result.status == "ok", result.reason
    assert result.reason is None
    assert result.output_path == tmp_path / "out" / f"{SUBJECT}_I45108.nii.gz"
    assert result.n_files == SHAPE[2]
    image = nib.load(result.output_path)
    data = np.asarray(image.dataobj)
    assert data.shape == expected_shape == result.shape
    np.testing.assert_allclose(image.header.get_zooms()[:3], expected_zooms, atol=1e-5)
    assert nib.aff2axcodes(image.affine) == ("L", "A", "S")  # dicom2nifti's reorientation, as in the dissertation

    # Every voxel lands where the DICOM put the same value: catches flipped, swapped or shifted axes.
    source = _dicom_index_of_every_voxel(image.affine, data.shape, written)
    np.testing.assert_array_equal(data.reshape(-1), volume[tuple(source)])

    # And explicitly: the first stored voxel sits at the world position of the DICOM voxel holding its value.
    dicom_index = np.argwhere(volume == data[0, 0, 0])[0]
    expected_corner = LPS_TO_RAS @ written @ np.append(dicom_index, 1.0)
    np.testing.assert_allclose(image.affine @ [0, 0, 0, 1], expected_corner, atol=1e-4)
    assert _no_temporary_files(tmp_path / "out")


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    volume = ramp_volume(SHAPE)
    write_series(tmp_path / "dicom", volume, rescale=(2.0, -5.0))
    result = convert_series(tmp_path / "dicom", tmp_path / "out", SUBJECT, "I1")
    assert result.ok, result.reason
    data = np.asarray(nib.load(result.output_path).dataobj)
    # Axial rows run R->L (already L in LAS) and columns A->P (flipped to P->A): only j is reversed.
    np.testing.assert_array_equal(data, (volume * 2 - 5)[:, ::-1, :])


@pytest.mark.parametrize("manufacturer", ["SIEMENS", "GE MEDICAL SYSTEMS", "Philips Medical Systems"])
def test_missing_middle_slice_fails_with_slice_increment_reason(tmp_path, manufacturer):
    # dicom2nifti takes a different code path per vendor; ADNI has all three.
    write_series(
        tmp_path / "dicom", ramp_volume(SHAPE), orientation="sagittal", drop_slices=(4,), manufacturer=manufacturer
    )
    result = convert_series(tmp_path / "dicom", tmp_path / "out", SUBJECT, "I2")
    assert result.status == "failed"
    assert result.output_path is None
    assert "slice increment" in result.reason and "missing" in result.reason
    assert "SLICE_INCREMENT_INCONSISTENT" in result.reason
    assert "about 1 slice(s) missing among 7 files" in result.reason
    assert not (tmp_path / "out" / output_name(SUBJECT, "I2")).exists()
    assert _no_temporary_files(tmp_path / "out")


def test_tilted_stack_is_refused_not_resampled(tmp_path):
    write_series(tmp_path / "dicom", ramp_volume(SHAPE), slice_shift=(0.0, 0.6, 0.0))
    result = convert_series(tmp_path / "dicom", tmp_path / "out", SUBJECT, "I14")
    assert result.status == "failed"
    assert "gantry tilt" in result.reason and "NON_CUBICAL_IMAGE/GANTRY_TILT" in result.reason


def test_non_dicom_file_is_named(tmp_path):
    write_series(tmp_path / "dicom", ramp_volume(SHAPE))
    (tmp_path / "dicom" / "notes.txt").write_text("downloaded 2024-01-02\n")
    result = convert_series(tmp_path / "dicom", tmp_path / "out", SUBJECT, "I3")
    assert result.status == "failed"
    assert result.reason.startswith("not DICOM:")
    assert "'notes.txt'" in result.reason
    assert "MR_" not in result.reason  # the good files are not blamed


def test_hidden_files_are_ignored(tmp_path):
    write_series(tmp_path / "dicom", ramp_volume(SHAPE))
    (tmp_path / "dicom" / ".DS_Store").write_bytes(b"\x00\x01")
    result = convert_series(tmp_path / "dicom", tmp_path / "out", SUBJECT, "I4")
    assert result.ok, result.reason


def test_two_series_in_one_folder_fail_naming_both(tmp_path):
    volume = ramp_volume(SHAPE)
    write_series(tmp_path / "dicom", volume, series_uid="1.2.826.0.1.3680043.9.1.1")
    write_series(tmp_path / "dicom", volume, series_uid="1.2.826.0.1.3680043.9.1.2", series_description="MPRAGE Repeat")
    result = convert_series(tmp_path / "dicom", tmp_path / "out", SUBJECT, "I5")
    assert result.status == "failed"
    assert "several series" in result.reason
    assert "1.2.826.0.1.3680043.9.1.1" in result.reason and "1.2.826.0.1.3680043.9.1.2" in result.reason
    assert "'MPRAGE Repeat'" in result.reason


def test_single_slice_is_a_localizer(tmp_path):
    write_series(tmp_path / "dicom", ramp_volume(SHAPE)[:, :, :1], series_description="Localizer")
    result = convert_series(tmp_path / "dicom", tmp_path / "out", SUBJECT, "I6")
    assert result.status == "failed"
    assert result.reason.startswith("localizer/2D image")


def test_three_plane_localizer_fails_on_orientation(tmp_path):
    uid = "1.2.826.0.1.3680043.9.2.1"
    for plane in ("axial", "sagittal", "coronal"):
        write_series(tmp_path / "dicom", ramp_volume((12, 10, 2)), orientation=plane, series_uid=uid, file_prefix=plane)
    result = convert_series(tmp_path / "dicom", tmp_path / "out", SUBJECT, "I7")
    assert result.status == "failed"
    assert "inconsistent orientation" in result.reason and "3 different ImageOrientationPatient" in result.reason


def test_too_few_slices_reported_from_dicom2nifti(tmp_path):
    write_series(tmp_path / "dicom", ramp_volume((12, 10, 3)))
    result = convert_series(tmp_path / "dicom", tmp_path / "out", SUBJECT, "I8")
    assert result.status == "failed"
    assert "TOO_FEW_SLICES/LOCALIZER" in result.reason and "localizer or 2D" in result.reason


def test_empty_and_missing_folders_fail_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    empty = convert_series(tmp_path / "empty", tmp_path / "out", SUBJECT, "I9")
    missing = convert_series(tmp_path / "nowhere", tmp_path / "out", SUBJECT, "I10")
    assert empty.status == missing.status == "failed"
    assert empty.reason.startswith("empty folder")
    assert missing.reason.startswith("folder not found")


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    write_series(tmp_path / "dicom", ramp_volume(SHAPE))
    first = convert_series(tmp_path / "dicom", tmp_path / "out", SUBJECT, "I11")
    assert first.ok and not first.existing
    first.output_path.write_bytes(b"sentinel")
    again = convert_series(tmp_path / "dicom", tmp_path / "out", SUBJECT, "I11")
    assert again.ok and again.existing and again.output_path.read_bytes() == b"sentinel"
    redone = convert_series(tmp_path / "dicom", tmp_path / "out", SUBJECT, "I11", overwrite=True)
    assert redone.ok and not redone.existing
    assert nib.load(redone.output_path).shape == SHAPE


@pytest.mark.parametrize(("setting", "value"), [("validate_slice_increment", False), ("resample", True)])
def test_weakened_dicom2nifti_settings_are_refused(tmp_path, monkeypatch, setting, value):
    write_series(tmp_path / "dicom", ramp_volume(SHAPE), drop_slices=(4,))
    monkeypatch.setattr(dicom2nifti.settings, setting, value)
    result = convert_series(tmp_path / "dicom", tmp_path / "out", SUBJECT, "I12")
    assert result.status == "failed"
    assert f"{setting}={value!r}" in result.reason
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_convert_scan_without_folder_fails():
    class _Scan:
        dicom_dir = None
        subject = SUBJECT
        image_id = "I13"

    result = convert_scan(_Scan(), Path("/nonexistent"))
    assert result.status == "failed" and "missing from the download" in result.reason


def test_output_name_cannot_escape_the_folder():
    assert output_name("002_S_0295", "I45108") == "002_S_0295_I45108.nii.gz"
    assert "/" not in output_name("../x", "I1/..")


def test_conversion_runs_in_worker_processes(tmp_path):
    write_series(tmp_path / "a", ramp_volume(SHAPE), orientation="sagittal")
    write_series(tmp_path / "b", ramp_volume(SHAPE), drop_slices=(3,))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = [pool.submit(convert_series, tmp_path / n, tmp_path / "out", SUBJECT, f"I2{n}") for n in "ab"]
        results = [f.result() for f in futures]
    assert [r.status for r in results] == ["ok", "failed"]
    assert isinstance(results[0], ConversionResult) and results[0].seconds > 0
    assert nib.load(results[0].output_path).shape == (8, 12, 10)
    assert pickle.loads(pickle.dumps(results[1])) == results[1]
