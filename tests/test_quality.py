"""Scan quality control: inputs the model cannot judge are refused with a reason that names the measure, and good
heads pass, both before the chain (headers) and after it (the model-ready volume)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from bad_inputs import (
    write_fruit_phantom,
    write_head_series,
    write_noise_cube,
    write_synthetic_head,
    write_thick_slice_series,
    write_tiny_volume,
)

from preprocessing.benchmark import head_phantom
from preprocessing.convert import convert_series
from scripts import quality
from scripts.preprocess import load_chain, run_chain_timed
from scripts.quality import (
    QCResult,
    assess_input,
    assess_output,
    bimodality,
    brain_volume_ml,
    compactness,
    default_thresholds,
    dicom_acquisition_headers,
    largest_component_fraction,
)

NO_TEMPLATE = {"template_check": False}  # for the unit tests of the other measures: no registration
# Good heads: subjects of the synthetic cohort at both ends of the demo's voxel sizes (2.0-2.5 mm).
HEAD_VOXEL_MM = {"subject0": 2.0, "subject1": 2.5, "subject2": 2.0}


def reasons_about(result: QCResult, word: str) -> list[str]:
    return [reason for reason in result.reasons if word in reason]


# ------------------------------------------------------------------------------------------------ thresholds


def test_thresholds_are_the_config_section_and_overrides_merge(tmp_path):
    config = json.loads(quality.CONFIG_FILE.read_text())
    assert default_thresholds() == config["qc"]
    assert default_thresholds()["max_slice_spacing_mm"] == 3.0 and default_thresholds()["template_check"] is True
    default_thresholds()["min_fov_mm"] = -1  # a copy: changing it changes nothing
    assert default_thresholds()["min_fov_mm"] == config["qc"]["min_fov_mm"]

    tiny = write_tiny_volume(tmp_path / "tiny.nii.gz")
    relaxed = assess_input(tiny, thresholds={"min_fov_mm": 5.0, "min_voxels_per_axis": 8})
    assert relaxed.status == "pass", relaxed.reasons  # only the overridden keys changed; the rest still apply
    with pytest.raises(KeyError, match="max_slice_spacing"):
        assess_input(tiny, thresholds={"max_slice_spacing": 6.0})  # misspelt: would silently keep the default


def test_result_merging_keeps_the_worst_status_every_reason_and_all_measures():
    first = QCResult("warn", ["field of view 512.0 mm > 400.0 mm"], {"fov_max_mm": 512.0, "shared": 1.0})
    second = QCResult("fail", ["brain volume 90 ml outside 800-2000 ml"], {"brain_volume_ml": 90.0, "shared": 2.0})
    merged = first.merged(second)
    assert merged.status == "fail"
    assert merged.reasons == ["field of view 512.0 mm > 400.0 mm", "brain volume 90 ml outside 800-2000 ml"]
    assert merged.measures == {"fov_max_mm": 512.0, "shared": 2.0, "brain_volume_ml": 90.0}
    assert merged.as_row() == {
        "qc_status": "fail",
        "qc_reasons": "field of view 512.0 mm > 400.0 mm; brain volume 90 ml outside 800-2000 ml",
    }
    assert QCResult().merged(QCResult()).as_row() == {"qc_status": "pass", "qc_reasons": ""}
    with pytest.raises(ValueError):
        QCResult("ok")


# ----------------------------------------------------------------------------------------------------- input


@pytest.fixture(scope="module")
def thick_series(tmp_path_factory):
    """The 5 mm 2D sagittal DICOM series, its headers and its dicom2nifti conversion."""
    root = tmp_path_factory.mktemp("thick")
    folder = write_thick_slice_series(root / "dicom")
    converted = convert_series(folder, root / "nifti", "002_S_0001", "I1")
    assert converted.ok, converted.reason
    return folder, dicom_acquisition_headers(folder), converted.output_path


def test_dicom_headers_of_a_series_folder(thick_series, tmp_path):
    folder, headers, _ = thick_series
    assert len(headers) == 36  # 180 mm left-right in 5 mm slices
    assert {h["MRAcquisitionType"] for h in headers} == {"2D"}
    assert {h["SliceThickness"] for h in headers} == {5.0} and {h["SpacingBetweenSlices"] for h in headers} == {5.0}
    assert headers[0]["ImageOrientationPatient"] == [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    positions = sorted(h["ImagePositionPatient"][0] for h in headers)
    np.testing.assert_allclose(np.diff(positions), 5.0)
    (folder / "notes.txt").write_text("not DICOM")  # skipped: conversion reports such files
    assert len(dicom_acquisition_headers(folder)) == 36
    (folder / "notes.txt").unlink()


@pytest.mark.parametrize("with_headers", [True, False])
def test_thick_slice_2d_series_fails_before_the_chain(thick_series, with_headers):
    _, headers, nifti = thick_series
    result = assess_input(nifti, headers if with_headers else None)
    assert result.status == "fail"
    assert "slice spacing 5.0 mm > 3.0 mm (2D thick-slice series?)" in result.reasons
    assert result.measures["slice_spacing_mm"] == 5.0
    if with_headers:  # only the DICOM headers say how it was acquired
        assert reasons_about(result, "MR acquisition type 2D")
        assert reasons_about(result, "slice thickness 5.0 mm > 3.0 mm")
        assert result.measures["dicom_acquisition_type"] == "2D"
        assert result.measures["dicom_slice_step_mm"] == pytest.approx(5.0)


def test_raising_the_slice_spacing_limit_lets_5mm_slices_pass_that_check(thick_series):
    _, headers, nifti = thick_series
    relaxed = assess_input(nifti, headers, thresholds={"max_slice_spacing_mm": 6.0})
    assert not [r for r in relaxed.reasons if "slice" in r and "mm >" in r]
    assert relaxed.reasons == [
        "MR acquisition type 2D (a 2D multi-slice series; the model needs a 3D T1 such as MPRAGE)"
    ]
    assert relaxed.status == "fail" and relaxed.measures["slice_spacing_mm"] == 5.0
    assert assess_input(nifti, thresholds={"max_slice_spacing_mm": 6.0}).status == "pass"


def test_an_8_cubed_volume_is_refused(tmp_path):
    result = assess_input(write_tiny_volume(tmp_path / "tiny.nii.gz"))
    assert result.status == "fail"
    assert result.reasons == [
        "voxels per axis 8 < 32 (too few for a 3D head)",
        "field of view 8.0 mm < 100.0 mm (too small for a head)",
    ]
    assert result.measures["fov_min_mm"] == 8.0 and result.measures["voxels_min_axis"] == 8


def test_several_volumes_in_one_file_are_refused(tmp_path):
    path = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((96, 96, 60, 3), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    result = assess_input(path)
    assert result.status == "fail"
    assert result.reasons == ["3 volumes in one file (shape (96, 96, 60, 3)); expected one 3D T1"]


def _header_only(path, shape, zooms):
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), np.diag([*zooms, 1.0])), str(path))
    return path


@pytest.mark.parametrize(
    "shape, zooms, status",
    [
        ((256, 256, 170), (1.0, 1.0, 1.0), "pass"),  # ADNI MPRAGE
        ((77, 96, 102), (2.5, 2.5, 2.5), "pass"),  # the synthetic demo's coarsest head
        ((96, 120, 128), (2.0, 2.0, 2.0), "pass"),  # a 2 mm 3D T1
        ((256, 256, 200), (2.0, 2.0, 2.5), "warn"),  # a 500 mm whole-body field of view
    ],
)
def test_head_grids_pass_and_a_whole_body_field_of_view_warns(tmp_path, shape, zooms, status):
    result = assess_input(_header_only(tmp_path / "scan.nii.gz", shape, zooms))
    assert result.status == status, result.reasons
    if status == "warn":
        assert result.reasons == ["field of view 512.0 mm > 400.0 mm (more than a head?)"]


def test_a_3d_series_with_1_2mm_slices_passes_with_its_headers(tmp_path):
    folder = write_head_series(tmp_path / "mprage", slice_mm=1.2, in_plane_mm=2.0, acquisition="3D")
    converted = convert_series(folder, tmp_path / "nifti", "002_S_0002", "I2")
    result = assess_input(converted.output_path, dicom_acquisition_headers(folder))
    assert result.status == "pass", result.reasons
    assert result.measures["dicom_acquisition_type"] == "3D"
    assert result.measures["dicom_slice_thickness_mm"] == pytest.approx(1.2)


def test_the_benchmark_1mm_phantom_head_passes_input_checks(tmp_path):
    # The chain benchmark's phantom, written where the benchmark writes it (a temporary folder, not the bundle).
    image, _, affine = head_phantom()
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "phantom_head.nii.gz"))
    result = assess_input(tmp_path / "phantom_head.nii.gz")
    assert result.status == "pass" and result.measures["slice_spacing_mm"] == 1.0


# ------------------------------------------------------------------------------------ measures, hand-made arrays


def _ball(shape=(32, 32, 32), semi_axes=(12.0, 14.0, 11.0)) -> np.ndarray:
    grid = np.indices(shape).astype(float) - (np.array(shape)[:, None, None, None] - 1) / 2
    return (sum((g / a) ** 2 for g, a in zip(grid, semi_axes, strict=True))) < 1.0


def test_volume_in_ml_follows_the_affine():
    mask = np.zeros((10, 10, 10), bool)
    mask[2:7, 2:6, 1:4] = True  # 60 voxels
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.0, 2.5, 3.0])  # 15 mm³ voxels, axes swapped and flipped
    affine[:3, 3] = [-40.0, 12.0, 7.0]
    assert brain_volume_ml(mask, affine) == pytest.approx(60 * 15.0 / 1000)
    assert brain_volume_ml(mask, np.eye(4)) == pytest.approx(0.06)


@pytest.mark.parametrize(
    "name, low, high, connected",
    [("ball", 0.85, 0.95, 1.0), ("ball with a notch", 0.7, 0.85, 1.0), ("scattered", 0.0, 0.3, None)],
)
def test_compactness_of_a_ball_a_notched_ball_and_scattered_voxels(name, low, high, connected):
    ball = _ball()
    if name == "ball with a notch":
        ball[16:, 16:, :] = False  # a quarter cut away along one axis
    elif name == "scattered":
        ball = np.random.default_rng(0).random((32, 32, 32)) < 0.05
    value = compactness(ball)
    assert low <= value <= high, value
    if connected is not None:
        assert largest_component_fraction(ball) == connected
    else:
        assert largest_component_fraction(ball) < 0.2


def test_compactness_ignores_the_cube_resize_and_two_parts_halve_the_largest():
    ball = _ball(shape=(40, 40, 40), semi_axes=(15.0, 15.0, 15.0))
    squashed = ball[:, :, ::2]  # the same ball on a grid of half as many slices: volumes scale alike
    assert compactness(squashed) == pytest.approx(compactness(ball), abs=0.04)
    two = np.zeros((40, 40, 40), bool)
    two[2:12, 2:12, 2:12] = two[25:35, 25:35, 25:35] = True
    assert largest_component_fraction(two) == 0.5


def _two_tissues(rng: np.random.Generator, n: int = 20000) -> np.ndarray:
    return np.concatenate([rng.normal(0.55, 0.05, n // 2), rng.normal(0.85, 0.05, n // 2)])


@pytest.mark.parametrize(
    "name, low, high",
    [
        ("two tissues", 5.5, 7.0),  # grey 0.55 and white 0.85, 0.05 spread: D = 6
        ("one tissue", 1.5, 1.9),  # one Gaussian: the 2-class fit still splits it
        ("uniform", 2.8, 3.3),  # why bimodality is reported but not judged
    ],
)
def test_bimodality_is_ashmans_d_of_a_two_class_fit(name, low, high):
    rng = np.random.default_rng(3)
    values = {
        "two tissues": lambda: _two_tissues(rng),
        "one tissue": lambda: rng.normal(0.7, 0.05, 20000),
        "uniform": lambda: rng.uniform(0.0, 1.0, 20000),
    }[name]()
    separation, minor = bimodality(values)
    assert low <= separation <= high, separation
    if name == "two tissues":
        assert minor == pytest.approx(0.5, abs=0.03)
    assert bimodality(values * 40.0 + 7.0)[0] == pytest.approx(separation, rel=1e-6)  # scale-free
    assert bimodality(np.full(1000, 0.5)) == (0.0, 0.0) and bimodality(np.array([0.1, 0.9])) == (0.0, 0.0)


def _phantom_brain(kind: str, shape=(32, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A ball with a white-matter core under a grey shell, or the same ball homogeneous or filled with noise."""
    rng = np.random.default_rng(1)
    brain = _ball(shape)
    if kind == "two tissues":
        image = np.where(_ball(shape, (9.5, 11.0, 8.5)), 0.85, 0.55) + 0.02 * rng.standard_normal(shape)
    elif kind == "inverted":  # T2-like: bright shell over a dark core
        image = np.where(_ball(shape, (9.5, 11.0, 8.5)), 0.45, 0.85) + 0.02 * rng.standard_normal(shape)
    elif kind == "homogeneous":
        image = 0.7 + 0.02 * rng.standard_normal(shape)
    else:
        image = rng.uniform(0.0, 1.0, shape)
    return np.clip(image, 0.0, None) * brain, brain


@pytest.mark.parametrize(
    "kind, low, high", [("two tissues", 0.25, 0.4), ("homogeneous", -0.02, 0.02), ("uniform noise", -0.05, 0.05),
                        ("inverted", -1.0, -0.3)],
)  # fmt: skip
def test_surface_contrast_sees_a_dark_cortex_over_white_matter(kind, low, high):
    image, brain = _phantom_brain(kind)
    stretched = np.diag([4.5, 5.5, 4.5, 1.0])  # the cube resize's unequal voxels: depth is measured in mm
    assert low <= quality.surface_contrast(image, brain, stretched) <= high


def test_output_checks_on_hand_made_volumes():
    empty = assess_output(np.zeros((32, 32, 32)), np.zeros((32, 32, 32)), np.diag([4.0] * 3 + [1.0]), NO_TEMPLATE)
    assert empty.status == "fail" and empty.reasons == ["brain mask is empty (skull stripping found no brain)"]

    image, brain = _phantom_brain("two tissues")  # 7,768 voxels
    small = assess_output(image, brain, np.diag([4.0, 4.0, 4.0, 1.0]), NO_TEMPLATE)  # 64 mm³ voxels: 497 ml
    assert small.status == "fail" and small.measures["brain_volume_ml"] == pytest.approx(497.2, abs=0.1)
    assert small.reasons == ["brain volume 497 ml outside 800-2000 ml (not an adult brain?)"]
    assert set(small.measures) == {"brain_volume_ml", "largest_component_fraction", "compactness",
                                   "surface_contrast", "bimodality"}  # fmt: skip
    adult = np.diag([5.0, 5.0, 5.0, 1.0])  # 971 ml
    assert assess_output(image, brain, adult, NO_TEMPLATE).status == "pass"

    scattered = np.random.default_rng(0).random(brain.shape) < 0.3
    refused = assess_output(image, scattered, adult, NO_TEMPLATE)
    assert refused.status == "fail" and reasons_about(refused, "mask compactness 0.")
    halves = brain.copy()
    halves[:, 15:17, :] = False  # the brain cut in two: neither half dominates
    split = assess_output(image, halves, adult, NO_TEMPLATE)
    assert split.status == "fail" and reasons_about(split, "largest connected part of the mask 0.5")

    flat = assess_output(*_phantom_brain("homogeneous"), adult, NO_TEMPLATE)
    assert flat.status == "fail" and flat.measures["surface_contrast"] == pytest.approx(0.0, abs=0.01)
    assert flat.reasons[0].endswith("< 0.18 (no darker cortex over brighter white matter: not a T1 brain?)")
    noise = assess_output(*_phantom_brain("uniform noise"), adult, NO_TEMPLATE)
    assert noise.status == "fail" and reasons_about(noise, "surface contrast")


# -------------------------------------------------------------------------------- the real chain, deepbet, 2 mm


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """Run the declared chain (deepbet) on a test input once per module: ``processed(kind, spacing, size)``."""
    pytest.importorskip("deepbet")
    root = tmp_path_factory.mktemp("qc_inputs")
    chains: dict = {}
    done: dict = {}

    def run(kind: str, spacing: float = 2.0, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if (kind, spacing, size) not in done:
            if kind in HEAD_VOXEL_MM:
                path = write_synthetic_head(root / f"{kind}.nii.gz", int(kind[-1]), HEAD_VOXEL_MM[kind])
            else:
                writer = {"fruit": write_fruit_phantom, "noise": write_noise_cube}[kind]
                path = writer(root / f"{kind}.nii.gz")
            if (spacing, size) not in chains:
                chains[spacing, size] = load_chain(skull_stripper="deepbet", spacing=spacing, spatial_size=size)
            out, _ = run_chain_timed(chains[spacing, size], {"image": str(path)})
            done[kind, spacing, size] = (
                out["image"][0].numpy(), out["brain_mask"][0].numpy(), out["image"].affine.numpy()
            )  # fmt: skip
        return done[kind, spacing, size]

    return run


@pytest.mark.parametrize("subject", [0, 1])
def test_synthetic_heads_pass_after_the_chain(processed, subject):
    image, mask, affine = processed(f"subject{subject}")
    result = assess_output(image, mask, affine)
    assert result.status == "pass", result.reasons
    m = result.measures
    assert 1000 < m["brain_volume_ml"] < 1900 and m["largest_component_fraction"] == 1.0
    assert m["compactness"] > 0.75 and m["surface_contrast"] > 0.25 and m["bimodality"] > 1.7
    assert m["template_dice"] > 0.95 and m["template_correlation"] > 0.7


@pytest.mark.slow
def test_a_third_synthetic_head_at_1mm_and_64_cubed_passes(processed):
    image, mask, affine = processed("subject2", spacing=1.0, size=64)
    assert image.shape == (64, 64, 64)
    result = assess_output(image, mask, affine)
    assert result.status == "pass", result.reasons
    assert result.measures["template_dice"] > 0.95


def test_the_template_check_is_repeatable(processed):
    image, mask, affine = processed("subject0")
    first, second = quality.template_agreement(image, mask, affine), quality.template_agreement(image, mask, affine)
    assert first == second  # seeded sampling and the global-correlation metric: the same to the bit


def test_a_fruit_is_refused_as_not_a_brain(processed):
    result = assess_output(*processed("fruit"))
    assert result.status == "fail"
    assert result.measures["template_correlation"] < 0.4
    assert reasons_about(result, "template correlation") and reasons_about(result, "surface contrast")
    assert all("<" in reason or "outside" in reason for reason in result.reasons)  # measure, value, threshold


def test_a_noise_cube_is_refused(processed):
    result = assess_output(*processed("noise"))
    assert result.status == "fail"
    assert result.measures["template_correlation"] < 0.3
    assert reasons_about(result, "template correlation 0.")
    assert reasons_about(result, "template Dice")


def test_without_the_template_check_no_registration_runs(processed, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the template check must not run")

    monkeypatch.setattr(quality, "template_agreement", refuse)
    result = assess_output(*processed("subject1"), thresholds=NO_TEMPLATE)
    assert result.status == "pass" and "template_dice" not in result.measures


def test_a_failing_registration_refuses_the_scan(processed, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Registration failed with error code 1")

    monkeypatch.setattr(quality, "template_agreement", broken)
    result = assess_output(*processed("subject1"))
    assert result.status == "fail"
    assert result.reasons[-1].startswith("template alignment failed (RuntimeError: Registration failed")
