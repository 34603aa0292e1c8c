"""The per-volume chain: geometry of each step, N4 equivalence, and the whole declared chain on a phantom head."""

from __future__ import annotations

import ants
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged, Orientationd

from preprocessing.benchmark import head_phantom
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


def test_fast_n4_gives_the_same_correction_as_ants_defaults():
    # The whole head at 1.5 mm (a 1 mm head takes ANTs' defaults 30 s here).
    image, brain, affine = head_phantom(shape=(120, 147, 120), spacing=1.5, seed=3)
    unbiased, _, _ = head_phantom(shape=(120, 147, 120), spacing=1.5, seed=3, bias_strength=0.0)
    image = np.where(brain, image, 0).astype(np.float32)  # N4 runs after skull stripping in the chain
    default = ants.n4_bias_field_correction(to_ants(image, affine)).numpy()
    masked_default = ants.n4_bias_field_correction(
        to_ants(image, affine), mask=to_ants(brain.astype(np.float32), affine)
    ).numpy()
    data = N4BiasCorrectiond()({"image": meta(image, affine), "brain_mask": meta(brain.astype(np.float32), affine)})
    fast = data["image"][0].numpy()

    def corr(a, b):
        return np.corrcoef(a[brain], b[brain])[0, 1]

    assert corr(fast, masked_default) > 0.999  # the same fit as ANTs' defaults with the mask, stopped earlier
    # Against the truth, it corrects at least as well as ANTs' defaults on the whole image (the dissertation's call).
    assert corr(image, unbiased) < 0.95
    assert corr(fast, unbiased) > 0.97
    assert corr(fast, unbiased) >= corr(default, unbiased) - 0.01
    assert FAST_N4["shrink_factor"] == 4


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
