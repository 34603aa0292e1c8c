"""Region maps, relevance per region, pointing game, native-grid mapping and summaries of analysis.explain.regions,
on small hand-made grids (one slow test registers the MNI152 template)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest

from analysis.explain import regions as R
from preprocessing.synthetic import REGION_LABELS

SHAPE = (16, 16, 16)


def _labels_and_mask() -> tuple[np.ndarray, np.ndarray]:
    """A 16^3 head: brain = a 12^3 cube; small blocks of every label, one hippocampal voxel outside the mask."""
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[4:6, 6:8, 5:7] = 1  # left hippocampus, 8 voxels
    labels[10:12, 6:8, 5:7] = 2
    labels[4:6, 9:11, 5:7] = 3
    labels[10:12, 9:11, 5:7] = 4
    labels[7:9, 7:10, 8:11] = 5
    labels[7:9, 3:5, 11:13] = 6  # control region: part of the rest of the brain
    brain = np.zeros(SHAPE, dtype=bool)
    brain[2:14, 2:14, 2:14] = True
    labels[1, 7, 6] = 1  # shaved off by a tight mask, still hippocampus
    return labels, brain


def test_names_follow_the_generator() -> None:
    assert {label for ids in R.LABELS_OF.values() for label in ids} == {1, 2, 3, 4, 5}
    assert REGION_LABELS[R.LABELS_OF["left_hippocampus"][0]] == "left_hippocampus"
    assert set(R.REGION_TITLES) == set(R.REGIONS) | set(R.COMBINED)
    assert all(set(members) <= set(R.REGIONS) for members in R.COMBINED.values())


def test_truth_regions_follow_world_coordinates_onto_a_coarser_flipped_grid(tmp_path) -> None:
    native_affine = np.array([[-1.0, 0, 0, 30], [0, 1.2, 0, -20], [0, 0, 1, -5], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    native = rng.integers(0, 7, size=(24, 24, 20)).astype(np.uint8)
    path = tmp_path / "s_regions.nii.gz"
    nib.save(nib.Nifti1Image(native, native_affine), path)
    # Coarser, y flipped, shifted so that part of the grid lies outside the region map.
    affine = np.array([[2.5, 0, 0, 8.0], [0, -2.0, 0, 12.0], [0, 0, 2.2, 2.0], [0, 0, 0, 1]])
    reference = nib.Nifti1Image(np.zeros((10, 9, 8), np.float32), affine)
    labels = R.truth_regions_on_grid(path, reference)
    assert labels.dtype == np.int16 and labels.shape == (10, 9, 8)
    index = np.indices(labels.shape).reshape(3, -1)
    world = affine[:3, :3] @ index + affine[:3, 3:]
    source = np.linalg.inv(native_affine)[:3, :3] @ world + np.linalg.inv(native_affine)[:3, 3:]
    nearest = np.floor(source + 0.5).astype(int)
    inside = ((nearest >= 0) & (nearest < np.array(native.shape)[:, None])).all(axis=0)
    assert inside.any() and (~inside).any()
    expected = np.zeros(index.shape[1], dtype=np.int16)
    expected[inside] = native[tuple(nearest[:, inside])]
    np.testing.assert_array_equal(labels.reshape(-1), expected)
    # One voxel by hand: reference (2, 3, 1) is world (13, 6, 4.2), native (17, 21.67, 9.2), nearest (17, 22, 9).
    point = affine @ [2, 3, 1, 1]
    assert np.allclose(np.linalg.inv(native_affine) @ point, [17, 21.6667, 9.2, 1], atol=1e-3)
    assert labels[2, 3, 1] == native[17, 22, 9]


def test_partition_covers_every_voxel_once() -> None:
    labels, brain = _labels_and_mask()
    masks = R.partition(labels, brain)
    assert tuple(masks) == R.REGIONS
    assert (np.sum([m.astype(int) for m in masks.values()], axis=0) == 1).all()
    assert masks["left_hippocampus"][1, 7, 6]  # outside the mask, still counted as hippocampus
    assert masks["rest_of_brain"][7, 3, 11] and masks["outside_brain"][0, 0, 0]
    assert masks["medial_temporal_lobe"].sum() == 16


def test_relevance_in_the_left_hippocampus_only() -> None:
    labels, brain = _labels_and_mask()
    relevance = (labels == 1).astype(float)
    relevance[0, 0, 0] = -5.0  # negative relevance is ignored
    result = R.relevance_by_region(relevance, labels, brain)
    assert math.isclose(sum(result[name]["fraction"] for name in R.REGIONS), 1.0)
    assert result["left_hippocampus"]["fraction"] == 1.0 and result["hippocampi"]["fraction"] == 1.0
    assert result["right_hippocampus"]["fraction"] == 0.0 and result["outside_brain"]["fraction"] == 0.0
    n_brain = brain.sum() + 1  # the mask plus the shaved hippocampal voxel
    assert math.isclose(result["left_hippocampus"]["volume_share"], 9 / n_brain)
    assert math.isclose(result["left_hippocampus"]["density_gain"], n_brain / 9)
    assert math.isclose(result["outside_brain"]["volume_share"], (labels.size - n_brain) / labels.size)


def test_uniform_relevance_has_density_gain_one() -> None:
    labels, brain = _labels_and_mask()
    inside = R.relevance_by_region(brain | (labels == 1), labels, brain)
    everywhere = R.relevance_by_region(np.ones(SHAPE), labels, brain)
    for name in R.REGIONS[:-1] + tuple(R.COMBINED):
        assert math.isclose(inside[name]["density_gain"], 1.0)
        assert math.isclose(everywhere[name]["density_gain"], 1.0)  # the leak outside does not dilute the brain
    assert inside["outside_brain"]["density_gain"] == 0.0
    assert math.isclose(everywhere["outside_brain"]["density_gain"], 1.0)
    rng = np.random.default_rng(1)
    noisy = R.relevance_by_region(rng.normal(size=SHAPE), labels, brain)
    assert math.isclose(sum(noisy[name]["fraction"] for name in R.REGIONS), 1.0)


def test_all_zero_relevance_gives_nan_without_error() -> None:
    labels, brain = _labels_and_mask()
    with pytest.warns(UserWarning, match="no positive value"):
        result = R.relevance_by_region(-np.ones(SHAPE), labels, brain)
    assert all(math.isnan(result[name]["fraction"]) and math.isnan(result[name]["density_gain"]) for name in result)
    assert result["hippocampi"]["volume_share"] > 0
    with pytest.raises(ValueError, match="NaN"):
        R.relevance_by_region(np.full(SHAPE, np.nan), labels, brain)


def test_pointing_game_with_and_without_margin() -> None:
    labels, brain = _labels_and_mask()
    relevance = np.zeros((1, *SHAPE))  # channel-first, as the maps come
    relevance[0, 8, 8, 9] = 1.0  # ventricles
    assert R.pointing_game(relevance, labels, brain)
    assert not R.pointing_game(relevance, labels, brain, target=["hippocampi"])
    relevance[0, 8, 8, 9] = 0.0
    relevance[0, 6, 8, 7] = 1.0  # diagonal neighbour of the left hippocampus (5, 7, 6)
    assert not R.pointing_game(relevance, labels, brain, margin_voxels=0)
    assert R.pointing_game(relevance, labels, brain, target=["left_hippocampus"], margin_voxels=1)
    relevance[0, 6, 8, 7] = 0.0
    relevance[0, 7, 8, 8] = 1.0  # in the ventricles, two voxels from the left hippocampus
    assert not R.pointing_game(relevance, labels, brain, target=["hippocampi"], margin_voxels=1)
    assert R.pointing_game(relevance, labels, brain, target=["hippocampi"], margin_voxels=2)
    assert not R.pointing_game(np.ones(SHAPE), labels, brain)  # a flat map points nowhere
    with pytest.raises(ValueError, match="unknown region"):
        R.pointing_game(relevance, labels, brain, target=["amygdala"])


def _crop_and_zoom() -> tuple[np.ndarray, nib.Nifti1Image, np.ndarray]:
    """A native LAS grid (1.5 mm) and a model grid that is its crop [4:28, 2:26, 6:30] zoomed by 1/3 to 8^3, axis 0
    reversed (as the chain reorients to RAS): model voxel m has native index c0 + 3 m + 1 (first axis mirrored)."""
    native_affine = np.array([[-1.5, 0, 0, 40], [0, 1.5, 0, -30], [0, 0, 1.5, -20], [0, 0, 0, 1]])
    native = nib.Nifti1Image(np.zeros((32, 32, 32), np.int16), native_affine)
    to_native = np.array([[-3.0, 0, 0, 4 + 3 * 7 + 1], [0, 3, 0, 2 + 1], [0, 0, 3, 6 + 1], [0, 0, 0, 1]])
    return native_affine, native, native_affine @ to_native


def test_to_native_grid_puts_a_model_voxel_back_where_it_came_from() -> None:
    native_affine, native, model_affine = _crop_and_zoom()
    values = np.zeros((8, 8, 8), np.float32)
    values[2, 5, 1] = 7.0  # native centre: (4 + 3 * (7 - 2) + 1, 2 + 15 + 1, 6 + 3 + 1) = (20, 18, 10)
    back = R.to_native_grid(values, model_affine, native, order=0)
    assert np.allclose(back.affine, native_affine) and back.shape == native.shape
    data = back.get_fdata()
    block = np.zeros(native.shape, dtype=bool)
    block[19:22, 17:20, 9:12] = True  # the 3^3 native voxels inside that model voxel
    assert (data[block] == 7.0).all() and (data[~block] == 0.0).all()
    # A linear function of world coordinates survives linear interpolation; outside the crop it is 0.
    index = np.indices((8, 8, 8)).reshape(3, -1)
    world = model_affine[:3, :3] @ index + model_affine[:3, 3:]
    ramp = (world[0] + 2 * world[1] - world[2]).reshape(8, 8, 8).astype(np.float32)
    native_ramp = R.to_native_grid(ramp, model_affine, native).get_fdata()
    i, j, k = 12, 14, 20
    x, y, z, _ = native_affine @ [i, j, k, 1]
    assert math.isclose(native_ramp[i, j, k], x + 2 * y - z, abs_tol=1e-3)
    assert native_ramp[0, 0, 0] == 0.0 and native_ramp[31, 31, 31] == 0.0
    cubic = R.to_native_grid(np.full((8, 8, 8), 5.0), model_affine, native, order=3).get_fdata()
    assert np.allclose(cubic[4:28, 2:26, 6:30], 5.0) and cubic[:4].max() == 0.0 and cubic[:, 26:].max() == 0.0


def _row(subject: str, group: str, hippocampi: float, hit: bool, method: str = "gradcam") -> dict:
    by_region = {name: {"fraction": 0.1, "volume_share": 0.2, "density_gain": 0.5} for name in R.REGIONS}
    by_region.update({name: {"fraction": hippocampi, "volume_share": 0.01, "density_gain": 3.0} for name in R.COMBINED})
    return R.region_row(subject, f"I{subject}", group, method, by_region, hit)


def test_region_row_layout() -> None:
    row = _row("s1", "AD", 0.3, True)
    assert row["hippocampi_and_ventricles_density_gain"] == 3.0 and row["pointing_game"] is True
    assert len(row) == 5 + len(R.METRICS) * (len(R.REGIONS) + len(R.COMBINED))


def test_summarise_counts_each_subject_once() -> None:
    rows = [_row("a", "AD", 1.0, True)] * 3 + [_row("b", "AD", 0.0, False), _row("c", "CN", 0.5, True)]
    rows.append(_row("c", "CN", math.nan, True))  # an undefined fraction does not count
    summary = R.summarise(rows, resamples=500)
    assert [(s["group"], s["region"]) for s in summary[:1]] == [("AD", "left_hippocampus")]
    assert len(summary) == 3 * (len(R.REGIONS) + len(R.COMBINED))
    everyone = next(s for s in summary if s["group"] == "all" and s["region"] == "hippocampi")
    assert (everyone["n_scans"], everyone["n_subjects"]) == (6, 3)
    assert math.isclose(everyone["fraction_mean"], 0.5)  # subjects 1, 0, 0.5; not the scans' 0.7
    assert everyone["fraction_ci_low"] <= everyone["fraction_mean"] <= everyone["fraction_ci_high"]
    assert everyone["fraction_ci_low"] >= 0.0 and everyone["fraction_ci_high"] <= 1.0
    assert math.isclose(everyone["pointing_game_mean"], 2 / 3)
    assert everyone["pointing_game_ci_low"] <= 2 / 3 <= everyone["pointing_game_ci_high"]
    ad = next(s for s in summary if s["group"] == "AD" and s["region"] == "hippocampi")
    assert math.isclose(ad["fraction_mean"], 0.5) and ad["n_subjects"] == 2
    # Ten copies of subject a's scan change nothing: the bootstrap draws subjects, not scans.
    more = R.summarise([_row("a", "AD", 1.0, True)] * 10 + rows[3:], resamples=500)
    for before, after in zip(summary, more, strict=True):
        assert after["n_scans"] - before["n_scans"] == (7 if before["group"] != "CN" else 0)
        for key in ("fraction_mean", "fraction_ci_low", "fraction_ci_high", "pointing_game_ci_low"):
            assert math.isclose(after[key], before[key], abs_tol=1e-12), (before["group"], before["region"], key)
    assert R.summarise([]) == []


def test_correlation() -> None:
    x = np.arange(6.0)
    perfect = R.correlation(x, 2 * x + 1, ["a", "a", "b", "c", "d", "e"], resamples=300)
    assert math.isclose(perfect["r"], 1.0) and math.isclose(perfect["rho"], 1.0)
    assert math.isclose(perfect["r_ci_low"], 1.0) and math.isclose(perfect["r_ci_high"], 1.0)
    assert (perfect["n"], perfect["n_subjects"], perfect["reason"]) == (6, 5, None)
    noisy = R.correlation(x, [0, 2, 1, 4, 3, 5], list("abcdef"), resamples=300)
    assert noisy["r_ci_low"] <= noisy["r"] <= noisy["r_ci_high"] and noisy["n_resamples_used"] > 0
    few = R.correlation([1.0, 2.0, math.nan], [1.0, 3.0, 4.0], ["a", "b", "c"])
    assert few["r"] is None and few["n"] == 2 and "at least 3" in few["reason"]
    assert R.correlation([1, 1, 1], [1, 2, 3], ["a", "b", "c"])["r"] is None


def test_region_volumes_ml() -> None:
    labels, _ = _labels_and_mask()
    volumes = R.region_volumes_ml(labels, np.diag([2.0, -2.0, 2.0, 1.0]))  # 8 mm^3 voxels
    assert math.isclose(volumes["left_hippocampus"], 9 * 0.008)
    assert math.isclose(volumes["hippocampi"], 17 * 0.008)
    assert math.isclose(volumes["hippocampi_and_ventricles"], (17 + 18) * 0.008)
    assert "rest_of_brain" not in volumes


@pytest.mark.slow
def test_template_labels_on_a_moved_template() -> None:
    """The MNI152 brain on a 4 mm grid, then moved (10 degrees, 12 mm): the registered labels must find the
    template's own hippocampi and ventricles where the array put them (Dice > 0.5), and a rerun must repeat it."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    from preprocessing.synthetic import load_template

    t1, brain = load_mni152_template(resolution=2), load_mni152_brain_mask(resolution=2)
    grid = np.diag([4.0, 4.0, 4.0, 1.0])
    grid[:3, 3] = [-90.0, -126.0, -72.0]
    shape = (46, 54, 46)
    image = R._resample(np.asarray(t1.get_fdata(), np.float32), t1.affine, shape, grid, 1)
    mask = R._resample(np.asarray(brain.dataobj) > 0, brain.affine, shape, grid, 0) > 0
    angle = np.deg2rad(10.0)
    moved = np.eye(4)
    moved[:3, :3] = [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    moved[:3, 3] = [12.0, -6.0, 4.0]
    scan = nib.Nifti1Image(np.where(mask, image, 0).astype(np.float32), moved @ grid)
    # The worker registers while this process checks that the module's labels are the generator's.
    with ThreadPoolExecutor(max_workers=1) as pool:
        registered = pool.submit(R.template_regions_on_grid, scan, mask, seed=3)
        template, (mni_labels, mni_affine) = load_template(), R._mni_labels()
        labels = registered.result()
    np.testing.assert_array_equal(mni_labels, template.labels)
    assert np.allclose(mni_affine[:3, 3], template.origin) and np.allclose(mni_affine[:3, :3], np.eye(3))
    truth = R._resample(template.labels, mni_affine, shape, grid, 0)
    assert labels.dtype == np.int16 and labels.shape == shape
    for region in ((1, 2), (5,)):
        found, expected = np.isin(labels, region), np.isin(truth, region)
        dice = 2 * (found & expected).sum() / (found.sum() + expected.sum())
        assert dice > 0.5, (region, dice)
    np.testing.assert_array_equal(R.template_regions_on_grid(scan, mask, seed=3), labels)
