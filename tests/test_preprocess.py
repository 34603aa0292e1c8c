"""The per-volume chain: geometry of each step, N4 equivalence, and the whole declared chain on a phantom head."""

from __future__ import annotations

import ants
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import CropForegroundd, LoadImaged, Orientationd

from preprocessing.benchmark import head_phantom
from scripts import bias_field
from scripts.plan import default_settings
from scripts.preprocess import (
    FAST_N4,
    CubicResized,
    N4BiasCorrectiond,
    ResampleToSpacingd,
    load_chain,
    ras_affine,
    run_chain_timed,
    to_ants,
)
from scripts.skull_strip import SkullStripd

# A sagittal-style, anisotropic, non-RAS affine (axes P, S, R) with an offset.
PSR_AFFINE = np.array([[0.0, 0.0, 1.2, -50.0], [-1.0, 0.0, 0.0, 60.0], [0.0, 1.1, 0.0, -40.0], [0.0, 0.0, 0.0, 1.0]])


def meta(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    return MetaTensor(torch.as_tensor(array, dtype=torch.float32)[None], affine=torch.as_tensor(affine))


def world_centroid(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(array > 0.5 * array.max()).mean(axis=0)
    return np.asarray(affine)[:3, :3] @ ijk + np.asarray(affine)[:3, 3]


def test_ants_conversion_keeps_the_geometry():
    data = np.random.default_rng(0).random((10, 12, 14)).astype(np.float32)
    image = to_ants(data, PSR_AFFINE)
    np.testing.assert_allclose(ras_affine(image), PSR_AFFINE, atol=1e-6)
    np.testing.assert_array_equal(image.numpy(), data)
    np.testing.assert_allclose(image.spacing, (1.0, 1.1, 1.2), atol=1e-6)


def test_resampling_to_1mm_keeps_world_position_and_range():
    volume = np.zeros((30, 40, 36), np.float32)
    volume[5:9, 20:26, 10:14] = 100.0
    out = ResampleToSpacingd(keys=["image"], nearest_keys=())({"image": meta(volume, PSR_AFFINE)})["image"]
    np.testing.assert_allclose(np.linalg.norm(out.affine[:3, :3].numpy(), axis=0), [1.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(out.shape[1:], np.round(np.array(volume.shape) * [1.0, 1.1, 1.2]), atol=1)
    np.testing.assert_allclose(
        world_centroid(out[0].numpy(), out.affine.numpy()), world_centroid(volume, PSR_AFFINE), atol=0.6
    )
    assert float(out.min()) >= 0.0 and float(out.max()) <= 100.0  # B-spline overshoot clipped


def test_cubic_resize_keeps_the_world_extent():
    volume = np.zeros((40, 50, 30), np.float32)
    volume[10:20, 30:40, 5:12] = 1.0
    out = CubicResized(keys=["image"], spatial_size=24, nearest_keys=())({"image": meta(volume, PSR_AFFINE)})["image"]
    assert out.shape == (1, 24, 24, 24)
    # The outer corner of the first voxel stays in place: the same field of view at a coarser voxel size.
    corner_in = PSR_AFFINE @ np.array([-0.5, -0.5, -0.5, 1.0])
    corner_out = out.affine.numpy() @ np.array([-0.5, -0.5, -0.5, 1.0])
    np.testing.assert_allclose(corner_out, corner_in, atol=1e-6)
    np.testing.assert_allclose(
        world_centroid(out[0].numpy(), out.affine.numpy()), world_centroid(volume, PSR_AFFINE), atol=1.0
    )
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_orientation_step_matches_nibabel_canonical(tmp_path):
    data = np.random.default_rng(1).random((8, 9, 10)).astype(np.float32)
    path = tmp_path / "psr.nii.gz"
    nib.save(nib.Nifti1Image(data, PSR_AFFINE), str(path))
    loaded = LoadImaged("image", ensure_channel_first=True, image_only=True)({"image": str(path)})
    oriented = Orientationd("image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(loaded)["image"]
    canonical = nib.as_closest_canonical(nib.load(str(path)))
    np.testing.assert_array_equal(oriented[0].numpy(), canonical.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(oriented.affine.numpy(), canonical.affine, atol=1e-6)


def n4_inputs(image: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> dict:
    return {"image": meta(image, affine), "brain_mask": meta(brain.astype(np.float32), affine)}


def corr_inside(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


def test_fast_n4_gives_the_same_correction_as_ants_defaults():
    # The whole head at 1.5 mm (a 1 mm head takes ANTs' defaults 30 s here).
    image, brain, affine = head_phantom(shape=(120, 147, 120), spacing=1.5, seed=3)
    unbiased, _, _ = head_phantom(shape=(120, 147, 120), spacing=1.5, seed=3, bias_strength=0.0)
    image = np.where(brain, image, 0).astype(np.float32)  # N4 runs after skull stripping in the chain
    default = ants.n4_bias_field_correction(to_ants(image, affine)).numpy()
    masked_default = ants.n4_bias_field_correction(
        to_ants(image, affine), mask=to_ants(brain.astype(np.float32), affine)
    ).numpy()
    fast = N4BiasCorrectiond()(n4_inputs(image, brain, affine))["image"][0].numpy()

    assert corr_inside(fast, masked_default, brain) > 0.99  # ANTs' defaults with the mask, on 4 mm blocks
    # Against the truth, it corrects at least as well as ANTs' defaults on the whole image (the dissertation's call).
    assert corr_inside(image, unbiased, brain) < 0.95
    assert corr_inside(fast, unbiased, brain) > 0.97
    assert corr_inside(fast, unbiased, brain) >= corr_inside(default, unbiased, brain) - 0.01
    assert FAST_N4["spacing_mm"] == default_settings()["n4_spacing_mm"]


@pytest.fixture(scope="module")
def mni_brain():
    """nilearn's MNI152 T1 brain (1 mm) and its mask, the anatomy the synthetic cohort is made from."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    t1, mask = load_mni152_template(resolution=1), load_mni152_brain_mask(resolution=1)
    return t1.get_fdata(dtype=np.float32), np.asarray(mask.dataobj) > 0, t1.affine


def mni_head(mni_brain, spacing: tuple[float, float, float], fov_mm: tuple[float, float, float], seed: int = 0):
    """A skull-stripped T1 brain on a grid of ``spacing`` mm covering ``fov_mm`` around the brain's centre, with a
    smooth multiplicative bias field (about +-15 %) and noise: what N4 sees in the chain. Cropped to ``fov_mm`` so the
    native-grid N4 it is compared with runs in seconds."""
    from scipy import ndimage

    t1, brain, mni_affine = mni_brain
    spacing, fov = np.asarray(spacing, float), np.asarray(fov_mm, float)
    shape = tuple(int(n) for n in np.round(fov / spacing))
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.array([0.0, -18.0, 8.0]) - spacing * (np.array(shape) - 1) / 2  # MNI centre of the brain
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    source = np.linalg.solve(mni_affine[:3, :3], world - mni_affine[:3, 3:4])
    image = ndimage.map_coordinates(t1, source, order=1).reshape(shape)
    mask = ndimage.map_coordinates(brain.astype(np.float32), source, order=0).reshape(shape) > 0.5
    rng = np.random.default_rng(seed)
    x, y, z = (world / 100.0).reshape(3, *shape)
    bias = np.exp(0.14 * np.sin(1.3 * x + 0.4) + 0.1 * np.cos(1.1 * y - 0.7 * z) + 0.05 * x * z)
    image = (image * bias + 0.02 * rng.standard_normal(shape)).astype(np.float32) * 1000
    return np.where(mask, image, 0).astype(np.float32), mask, affine


@pytest.mark.parametrize(
    "spacing,fov_mm",
    [((1.0, 1.0, 1.0), (140, 150, 120)), ((1.5, 0.4, 0.4), (150, 120, 120))],
    ids=["1mm", "0.4x0.4x1.5"],
)
def test_n4_on_a_coarse_grid_matches_n4_on_the_native_grid(mni_brain, spacing, fov_mm):
    # Today's correction before this grid: ANTs N4 at shrink 4 on the native grid (1.6x1.6x6 mm for 0.4x0.4x1.5
    # voxels), inside the mask, same convergence. The fit now runs on 4 mm blocks whatever the voxel size.
    image, mask, affine = mni_head(mni_brain, spacing, fov_mm)
    convergence = FAST_N4["convergence"]
    native = ants.n4_bias_field_correction(
        to_ants(image, affine), mask=to_ants(mask.astype(np.float32), affine), shrink_factor=4, convergence=convergence
    ).numpy()
    coarse = N4BiasCorrectiond(convergence=convergence)(n4_inputs(image, mask, affine))["image"][0].numpy()

    assert coarse.shape == image.shape
    assert corr_inside(coarse, native, mask) >= 0.99
    assert corr_inside(image, native, mask) < corr_inside(coarse, native, mask)  # it corrected something
    np.testing.assert_array_equal(coarse[~mask], image[~mask])  # outside the brain: untouched


def test_n4_fitting_blocks_follow_the_physical_voxel_size():
    anisotropic = np.diag([1.5, 0.4, 0.4, 1.0])
    assert bias_field.block_factors(anisotropic, 4.0) == (3, 10, 10)
    assert bias_field.block_factors(np.diag([1.0, 1.0, 1.0, 1.0]), 4.0) == (4, 4, 4)
    assert bias_field.block_factors(np.diag([5.0, 2.0, 2.0, 1.0]), 4.0) == (1, 2, 2)  # never below one voxel
    assert bias_field.block_factors(np.diag([3.0, 1.2, 0.41, 1.0]), 4.0) == (2, 4, 10)  # at least 4 mm
    with pytest.raises(ValueError, match="positive"):
        N4BiasCorrectiond(spacing_mm=0)


def test_log_field_upsampling_reproduces_a_smooth_field():
    factors, shape = (3, 10, 10), (30, 200, 180)
    centres = [np.arange(n) * f + f // 2 for n, f in zip(np.array(shape) // factors, factors, strict=True)]

    def smooth(i, j, k):
        return 0.2 * np.sin(i / 25.0) + 0.1 * np.cos(j / 60.0) * np.sin(k / 70.0)

    coarse = smooth(*np.meshgrid(*centres, indexing="ij"))
    box = (slice(4, 26), slice(10, 190), slice(5, 176))  # between the first and last block centres
    fine = bias_field.upsample_log_field(coarse, factors, box)
    expected = smooth(*np.meshgrid(*[np.arange(b.start, b.stop) for b in box], indexing="ij"))
    assert fine.shape == (22, 180, 171)
    np.testing.assert_allclose(fine, expected, atol=2e-3)


def test_n4_keeps_negative_offsets_and_the_background():
    image, brain, affine = head_phantom(shape=(60, 74, 60), spacing=3.0, seed=2)
    image = np.where(brain, image, 0).astype(np.float32)
    shifted = image - 500.0  # a scan stored with a negative offset
    out = N4BiasCorrectiond()(n4_inputs(shifted, brain, affine))["image"][0].numpy()
    reference = N4BiasCorrectiond()(n4_inputs(image, brain, affine))["image"][0].numpy()
    np.testing.assert_array_equal(out[~brain], shifted[~brain])
    np.testing.assert_allclose(out[brain] + 500.0, reference[brain], rtol=1e-4)


def test_resampling_only_the_brain_box_gives_the_cropped_whole_resampling():
    image, brain, affine = head_phantom(shape=(70, 86, 70), spacing=2.5, seed=4)
    image = np.where(brain, image, 0).astype(np.float32)
    affine = PSR_AFFINE @ np.diag([2.5 / 1.2, 2.5, 2.5 / 1.1, 1.0])  # oblique to nothing, anisotropic, non-RAS
    crop = CropForegroundd(keys=["image", "brain_mask"], source_key="brain_mask", margin=3, allow_smaller=True)
    whole = crop(ResampleToSpacingd(spacing=1.5)(n4_inputs(image, brain, affine)))
    boxed = ResampleToSpacingd(spacing=1.5, box_key="brain_mask", box_margin=3)(n4_inputs(image, brain, affine))
    assert tuple(boxed["image"].shape) == tuple(whole["image"].shape)
    boxed = crop(boxed)  # the chain's crop then keeps all of it
    np.testing.assert_allclose(boxed["image"].affine.numpy(), whole["image"].affine.numpy(), atol=1e-9)
    np.testing.assert_array_equal(boxed["brain_mask"].numpy(), whole["brain_mask"].numpy())
    # The same up to rounding: ANTs' ResampleImage and its ApplyTransforms reach the same B-spline by different float
    # paths (4e-6 of the range on this permuted grid, 1e-13 on RAS heads).
    np.testing.assert_allclose(boxed["image"].numpy(), whole["image"].numpy(), atol=1e-5 * float(image.max()))


def test_resampling_a_scan_already_on_the_output_spacing_keeps_its_values():
    image, brain, affine = head_phantom(shape=(60, 74, 60), spacing=2.5, seed=5)
    crop = CropForegroundd(keys=["image", "brain_mask"], source_key="brain_mask", margin=3, allow_smaller=True)
    whole = crop(ResampleToSpacingd(spacing=2.5)(n4_inputs(image, brain, affine)))
    boxed = crop(ResampleToSpacingd(spacing=2.5, box_key="brain_mask", box_margin=3)(n4_inputs(image, brain, affine)))
    np.testing.assert_allclose(boxed["image"].affine.numpy(), whole["image"].affine.numpy(), atol=1e-9)
    np.testing.assert_array_equal(boxed["brain_mask"].numpy(), whole["brain_mask"].numpy())
    np.testing.assert_allclose(boxed["image"].numpy(), whole["image"].numpy(), atol=1e-4 * float(image.max()))


def analytic_stripper(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The phantom's brain (an ellipsoid centred at world 0) on any grid: stands in for SynthStrip's network."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), -1)
    world = ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return (((world / np.array([68.0, 85.0, 70.0])) ** 2).sum(-1)) < 1.0


def test_declared_chain_turns_a_raw_head_into_a_model_ready_volume(tmp_path):
    image, _, affine = head_phantom(shape=(72, 88, 72), spacing=2.5, seed=1)
    to_psr = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(("P", "S", "R"))
    )
    path = tmp_path / "raw.nii.gz"
    nib.save(nib.Nifti1Image(image, affine).as_reoriented(to_psr), str(path))

    chain = load_chain(spatial_size=32, skull_stripper="synthstrip")
    strip = next(t for t in chain.transforms if isinstance(t, SkullStripd))
    strip._stripper = analytic_stripper  # no SynthStrip weights here; the network's job is done analytically
    out, seconds = run_chain_timed(chain, {"image": str(path)})

    result, mask = out["image"], out["brain_mask"]
    assert result.shape == (1, 32, 32, 32) and mask.shape == (1, 32, 32, 32)
    assert nib.aff2axcodes(result.affine.numpy()) == ("R", "A", "S")
    assert float(result.min()) == 0.0 and float(result.max()) == pytest.approx(1.0)
    assert float(result[mask == 0].abs().max()) == 0.0  # skull and scalp removed
    # Cropped to the brain plus 3 (1 mm) voxels before the resize: the brain spans the volume, with a thin margin.
    extent_mm = np.linalg.norm(result.affine[:3, :3].numpy(), axis=0) * 32
    np.testing.assert_allclose(extent_mm, 2 * np.array([68.0, 85.0, 70.0]) + 6 + 1, atol=3.5)
    np.testing.assert_allclose(world_centroid(mask[0].numpy(), result.affine.numpy()), [0, 0, 0], atol=2.0)
    assert out["skull_stripper"] == "synthstrip"
    assert set(seconds) >= {"Orientationd", "SkullStripd", "N4BiasCorrectiond", "ResampleToSpacingd", "CubicResized"}


def test_deepbet_mask_is_the_one_its_own_run_returns():
    # The stripper takes BrainExtraction.run's steps without its copies and masked image: the same mask.
    pytest.importorskip("deepbet")
    from preprocessing.benchmark import render_head
    from scripts.deepbet_stripper import _DeepBetStripper

    stored = render_head((3.0, 3.0, 3.0))  # a sagittal grid, not RAS: the orientation round trip is exercised
    volume, affine = stored.get_fdata(dtype=np.float32), stored.affine
    stripper = _DeepBetStripper("cpu")
    mask = stripper(volume, affine)
    _, reference, _ = stripper.extractor.run(nib.Nifti1Image(volume, affine))
    assert mask.shape == volume.shape and mask.dtype == bool and mask.any()
    np.testing.assert_array_equal(mask, np.asarray(reference.dataobj).astype(bool))
