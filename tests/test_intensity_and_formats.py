"""Model-ready intensities: scaled inside the brain mask, zero outside, the same whatever the scanner's offset and
gain; and the input formats the chain reads (NIfTI, FreeSurfer MGH) with a clear error for the rest."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from preprocessing.benchmark import head_phantom
from scripts.preprocess import (
    ImageReadError,
    LoadVolumed,
    ScaleInsideMaskd,
    ZeroBackgroundd,
    load_chain,
)

# A sagittal-style, anisotropic, non-RAS affine (axes P, S, R) with an offset.
PSR_AFFINE = np.array([[0.0, 0.0, 1.2, -50.0], [-1.0, 0.0, 0.0, 60.0], [0.0, 1.1, 0.0, -40.0], [0.0, 0.0, 0.0, 1.0]])


def meta(array: np.ndarray, affine: np.ndarray = np.eye(4)) -> MetaTensor:
    return MetaTensor(torch.as_tensor(array, dtype=torch.float32)[None], affine=torch.as_tensor(affine))


@pytest.fixture(scope="module")
def prestripped_head() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A skull-stripped phantom head at 3 mm with integer intensities (as scanners store them), zero background."""
    image, brain, affine = head_phantom(shape=(52, 64, 52), spacing=3.0, seed=2)
    return np.round(np.where(brain, image, 0)).astype(np.float32), brain, affine


def scale_inside(volume: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    out = ScaleInsideMaskd()({"image": meta(volume), "brain_mask": meta(mask.astype(np.float32))})
    return out["image"]


def test_scaling_inside_the_mask_ignores_offset_and_gain():
    rng = np.random.default_rng(0)
    volume = rng.gamma(4.0, 100.0, size=(20, 24, 22)).astype(np.float32)
    mask = np.zeros(volume.shape, bool)
    mask[3:17, 4:20, 2:19] = True
    volume[~mask] = rng.normal(5.0, 2.0, size=int((~mask).sum()))  # a noisy background the scaling must ignore
    reference = scale_inside(volume, mask)
    for variant in (volume - 1000.0, volume * 3.7, (volume - 1000.0) * 0.25):
        np.testing.assert_allclose(scale_inside(variant.astype(np.float32), mask), reference, atol=1e-5)
    assert float(reference[0][~mask].abs().max()) == 0.0  # outside the brain: exactly 0
    inside = reference[0][mask]
    assert float(inside.min()) == 0.0 and float(inside.max()) == 1.0
    # The 0.5th..99.5th percentiles of the brain span 0..1: 1 % of the brain voxels are clipped, half at each end.
    assert np.mean(inside.numpy() == 0.0) == pytest.approx(0.005, abs=0.002)
    assert np.mean(inside.numpy() == 1.0) == pytest.approx(0.005, abs=0.002)
    assert isinstance(reference, MetaTensor) and reference.dtype == torch.float32


def test_scaling_refuses_an_empty_mask_or_a_constant_brain():
    volume = np.ones((8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="empty"):
        scale_inside(volume, np.zeros(volume.shape, bool))
    with pytest.raises(ValueError, match="Constant"):
        scale_inside(volume, np.ones(volume.shape, bool))


def test_negative_background_is_shifted_to_zero_and_a_zero_background_left_alone(prestripped_head):
    volume, brain, _ = prestripped_head
    shifted = ZeroBackgroundd()({"image": meta(volume - 1000.0)})["image"][0].numpy()
    np.testing.assert_array_equal(shifted, volume)  # integers: the offset comes off exactly
    ringing = volume.copy()
    ringing[brain & (volume < 200)] = -15.0  # spline undershoot inside a pre-stripped brain: not an offset
    kept = ZeroBackgroundd()({"image": meta(ringing)})["image"][0].numpy()
    np.testing.assert_array_equal(kept, ringing)


def test_whole_chain_gives_the_same_model_ready_volume_for_any_offset_and_gain(tmp_path, prestripped_head):
    volume, _, affine = prestripped_head
    chain = load_chain(skull_stripper="none", spatial_size=32, spacing=2.0)
    outputs = {}
    for name, variant in (("original", volume), ("offset", volume - 1000.0), ("gain", volume * 3.7)):
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(variant.astype(np.float32), affine), str(path))
        outputs[name] = chain({"image": str(path)})
    image, mask = outputs["original"]["image"], outputs["original"]["brain_mask"]
    assert image.shape == (1, 32, 32, 32)
    assert float(image[mask == 0].abs().max()) == 0.0 and float(image.max()) == 1.0
    for name in ("offset", "gain"):
        # The offset comes off exactly (background -1000 -> 0, so the 'none' stripper finds the same brain).
        np.testing.assert_array_equal(outputs[name]["brain_mask"], mask)
        assert float(outputs[name]["image"][mask == 0].abs().max()) == 0.0
    np.testing.assert_array_equal(outputs["offset"]["image"], image)
    # A gain is not exact in float32, and ITK's N4 turns input rounding (1e-7 relative) into ~1e-4 differences of its
    # field (measured 3e-5 here): equal up to that, far below the noise of any scan.
    np.testing.assert_allclose(outputs["gain"]["image"], image, atol=1e-3)


def test_freesurfer_mgz_loads_like_nifti(tmp_path, prestripped_head):
    volume, _, _ = prestripped_head
    nii, mgz = tmp_path / "head.nii.gz", tmp_path / "head.mgz"
    nib.save(nib.Nifti1Image(volume, PSR_AFFINE), str(nii))
    nib.save(nib.MGHImage(volume, PSR_AFFINE), str(mgz))
    load = LoadVolumed(keys="image")
    from_nii, from_mgz = load({"image": str(nii)})["image"], load({"image": str(mgz)})["image"]
    assert from_mgz.shape == from_nii.shape == (1, *volume.shape)
    np.testing.assert_array_equal(from_mgz.numpy(), from_nii.numpy())
    np.testing.assert_allclose(from_mgz.affine.numpy(), from_nii.affine.numpy(), atol=1e-5)
    np.testing.assert_allclose(from_mgz.affine.numpy(), PSR_AFFINE, atol=1e-5)
    assert from_mgz.meta["filename_or_obj"] == str(mgz)


@pytest.mark.parametrize("name", ["notes.txt", "random.nii.gz", "random.mgz"])
def test_unreadable_file_fails_naming_it_and_the_supported_formats(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ImageReadError) as caught:
        LoadVolumed(keys="image")({"image": str(path)})
    message = str(caught.value)
    assert message.startswith(f"Cannot read {path}: ")
    assert "Supported formats: NIfTI (.nii, .nii.gz), FreeSurfer (.mgz, .mgh)" in message
    assert "python -m preprocessing run" in message
    assert "\n" not in message  # one line, not the readers' tracebacks


def test_missing_file_is_named():
    with pytest.raises(ImageReadError, match=r"Cannot read /no/such/head\.nii\.gz: no such file"):
        LoadVolumed(keys="image")({"image": "/no/such/head.nii.gz"})
