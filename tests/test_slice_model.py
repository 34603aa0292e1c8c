"""The 2D slice baseline (``--arch resnet18_2d``): which slices, averaging over them, options and weights."""

from __future__ import annotations

import pytest
import torch
from conftest import bundle_cli
from torchvision.models import resnet18

from scripts.data import BundleInputError
from scripts.network import VolumeClassifier, configure
from scripts.slice_model import slice_indices

CORONAL = 3  # dimension of a (B, C, D, H, W) RAS batch that a coronal slice fixes (y: posterior -> anterior)


def slice_model(**options) -> VolumeClassifier:
    torch.manual_seed(0)
    return VolumeClassifier("resnet18_2d", weights=None, trainable="all", **options).eval()


def test_default_slices_are_coronal_through_the_hippocampi():
    chosen = slice_indices(128, "coronal", 8)
    assert len(chosen) == 8 and chosen == sorted(chosen)
    assert all(0.37 * 128 <= i < 0.57 * 128 for i in chosen)  # the A-P fractions holding the hippocampi
    sagittal = slice_indices(128, "sagittal", 8)
    assert sum(i < 64 for i in sagittal) == 4  # half of the slices in each hemisphere
    assert len(slice_indices(16, "coronal", 8)) < 8  # a slice that two positions fall into is used once


def test_prediction_is_invariant_to_the_order_of_its_slices():
    model = slice_model()
    chosen = slice_indices(32, "coronal", 8)
    volumes = torch.randn(2, 1, 32, 32, 32)
    shuffled = volumes.clone()
    shuffled[:, :, :, chosen] = volumes[:, :, :, list(reversed(chosen))]
    with torch.no_grad():
        logits = model(volumes)
        torch.testing.assert_close(model(shuffled), logits, rtol=1e-5, atol=1e-5)
    assert logits.shape == (2, 2)


def test_prediction_depends_only_on_the_chosen_slices():
    model = slice_model()
    chosen = slice_indices(32, "coronal", 8)
    outside = [i for i in range(32) if i not in chosen]
    volumes = torch.randn(2, 1, 32, 32, 32)
    elsewhere, inside = volumes.clone(), volumes.clone()
    elsewhere[:, :, :, outside] = torch.randn(2, 1, 32, len(outside), 32)
    inside[:, :, :, chosen[3]] += 2.0
    with torch.no_grad():
        logits = model(volumes)
        assert torch.equal(model(elsewhere), logits)
        assert not torch.allclose(model(inside), logits)


def test_axis_and_count_are_options_and_travel_with_the_weights(tmp_path):
    model = slice_model(slice_axis="axial", slice_count=4)
    assert (model.slices.slice_axis, model.slices.slice_count) == ("axial", 4)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    restored = slice_model()  # coronal, 8: what a workflow without the options builds
    restored.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert (restored.slices.slice_axis, restored.slices.slice_count) == ("axial", 4)
    volumes = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored(volumes), model(volumes))
    configure(restored, slice_axis="sagittal", slice_count=2)  # train.json's --slice_axis / --slice_count
    assert (restored.slices.slice_axis, restored.slices.slice_count) == ("sagittal", 2)
    with pytest.raises(BundleInputError, match="--slice_axis must be one of"):
        configure(restored, slice_axis="oblique")
    with pytest.raises(BundleInputError, match="--slice_count must be a positive integer"):
        slice_model(slice_count=0)


def test_any_name_with_2d_or_slice_is_the_slice_model():
    model = VolumeClassifier("resnet18_slices", weights=None)
    assert model.spec.name == "resnet18_2d" and model.arch == "resnet18_slices"
    with pytest.raises(BundleInputError, match="Unknown architecture 'resnet50'"):
        VolumeClassifier("resnet50", weights=None)


def test_imagenet_weights_give_a_summed_grayscale_conv1(tmp_path):
    torch.manual_seed(1)
    state = resnet18(weights=None).state_dict()  # the format of torchvision's ImageNet checkpoint
    torch.save(state, tmp_path / "imagenet.pth")
    model = VolumeClassifier("resnet18_2d", weights=str(tmp_path / "imagenet.pth"))
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.net.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert model.net.fc.out_features == 2
    # One grey slice gives the features of that slice copied to RGB in torchvision's own resnet18.
    rgb = resnet18(weights=None)
    rgb.load_state_dict(state)
    rgb.fc = model.net.fc
    image = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.net.eval()(image), rgb.eval()(image.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)


def test_a_slice_model_exports_to_torchscript_by_tracing(tmp_path):
    # The README's export command with --use_trace: ckpt_export builds the architecture model.pt holds.
    model = slice_model(slice_axis="axial", slice_count=4)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    args = ["ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"), "--ckpt_file",
            str(tmp_path / "model.pt"), "--model_file", str(tmp_path / "model.pt"), "--meta_file",
            "configs/metadata.json", "--config_file", "configs/inference.json", "--use_trace", "True",
            "--input_shape", "[1, 1, 32, 32, 32]"]  # fmt: skip
    bundle_cli(*args)
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    volumes = torch.randn(3, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(exported(volumes), model(volumes), atol=1e-5)
