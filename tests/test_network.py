"""The adapted video ResNet: parameter counts, stem equivalence, freezing, weight loading."""

from __future__ import annotations

import copy
from urllib.error import URLError

import pytest
import torch
from torch import nn
from torchvision.models.video import r3d_18

from scripts.data import BundleInputError
from scripts.network import (
    VideoResNetClassifier,
    kinetics_checkpoint_path,
    log_parameter_counts,
    param_groups,
)


@pytest.fixture(scope="module")
def kinetics_like_state_dict() -> dict[str, torch.Tensor]:
    """A 400-class RGB r3d_18 state dict: the format of torchvision's Kinetics-400 checkpoint, random values."""
    torch.manual_seed(1)
    model = r3d_18(weights=None)
    # Random BN statistics so that the equivalence check also covers the normalisation after the stem.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


@pytest.mark.parametrize(
    ("trainable", "expected"),
    [
        ("layer4+fc", {"total": 33_148_482, "trainable": 24_909_826, "frozen": 8_238_656}),
        ("fc", {"total": 33_148_482, "trainable": 1_026, "frozen": 33_147_456}),
        ("all", {"total": 33_148_482, "trainable": 33_148_482, "frozen": 0}),
    ],
)
def test_parameter_counts_match_the_dissertation(trainable, expected, caplog):
    model = VideoResNetClassifier(weights=None, trainable=trainable)
    assert model.parameter_counts() == expected
    with caplog.at_level("INFO", logger="scripts.network"):
        log_parameter_counts(model)
    if trainable == "layer4+fc":
        assert "total parameters: 33,148,482; trainable: 24,909,826 (75.15%); frozen: 8,238,656" in caplog.text


def test_unknown_freezing_preset_is_refused():
    with pytest.raises(BundleInputError, match="trainable must be one of"):
        VideoResNetClassifier(weights=None, trainable="layer3+fc")


def test_grayscale_stem_equals_rgb_replicated_volume(tmp_path, kinetics_like_state_dict):
    path = tmp_path / "video_weights.pth"
    torch.save(kinetics_like_state_dict, path)
    gray = VideoResNetClassifier(weights=str(path)).eval()
    rgb = r3d_18(weights=None)
    rgb.load_state_dict(kinetics_like_state_dict)
    rgb.eval()
    expected_kernel = kinetics_like_state_dict["stem.0.weight"].sum(dim=1, keepdim=True)
    assert gray.net.stem[0].weight.shape == (64, 1, 3, 7, 7)
    assert torch.equal(gray.net.stem[0].weight, expected_kernel)

    # Same features before the new head: compare everything up to the pooled 512-vector.
    gray_trunk, rgb_trunk = copy.deepcopy(gray.net), copy.deepcopy(rgb)
    gray_trunk.fc, rgb_trunk.fc = nn.Identity(), nn.Identity()
    volume = torch.randn(2, 1, 16, 24, 20)
    with torch.no_grad():
        features_gray = gray_trunk(volume)
        features_rgb = rgb_trunk(volume.repeat(1, 3, 1, 1, 1))
    assert features_gray.shape == (2, 512)
    torch.testing.assert_close(features_gray, features_rgb, rtol=1e-4, atol=1e-5)
    assert gray(volume).shape == (2, 2)


def test_kinetics_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch, kinetics_like_state_dict):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = kinetics_checkpoint_path("r3d_18")
    assert cached == tmp_path / "hub" / "checkpoints" / "r3d_18-b3b3357e.pth"
    cached.parent.mkdir(parents=True)
    torch.save(kinetics_like_state_dict, cached)
    model = VideoResNetClassifier(weights="kinetics400")
    assert torch.equal(model.net.layer3[0].conv1[0].weight, kinetics_like_state_dict["layer3.0.conv1.0.weight"])
    assert torch.equal(model.net.stem[0].weight, kinetics_like_state_dict["stem.0.weight"].sum(1, keepdim=True))


def test_offline_without_cached_kinetics_weights_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    with pytest.raises(BundleInputError) as err:
        VideoResNetClassifier(weights="kinetics400")
    message = str(err.value)
    assert message.startswith("error: Kinetics-400 weights for r3d_18")
    assert "r3d_18-b3b3357e.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    # A form the CLI really passes: fire turns "--weights None" into None, which MONAI drops.
    assert message.endswith("or train from random weights with --weights none.")


def test_missing_local_weights_file_is_named(tmp_path):
    with pytest.raises(BundleInputError, match="missing.pt"):
        VideoResNetClassifier(weights=str(tmp_path / "missing.pt"))


def test_classifier_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    original = VideoResNetClassifier(weights=None)
    path = tmp_path / "model.pt"
    torch.save(original.state_dict(), path)
    restored = VideoResNetClassifier(weights=str(path))
    for (name, a), b in zip(original.state_dict().items(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_frozen_batchnorm_stays_in_eval_mode_and_keeps_statistics():
    model = VideoResNetClassifier(weights=None, trainable="layer4+fc").train()
    frozen_bn = model.net.layer3[0].conv1[1]
    trained_bn = model.net.layer4[0].conv1[1]
    assert not model.net.stem[1].training and not frozen_bn.training
    assert trained_bn.training and model.training
    before_frozen = frozen_bn.running_mean.clone()
    before_trained = trained_bn.running_mean.clone()
    model(torch.randn(2, 1, 16, 16, 16) * 3 + 1)
    assert torch.equal(frozen_bn.running_mean, before_frozen)
    assert not torch.equal(trained_bn.running_mean, before_trained)
    assert not any(p.requires_grad for p in model.net.layer3.parameters())
    assert all(p.requires_grad for p in model.net.layer4.parameters())


def test_param_groups_give_the_head_ten_times_the_backbone_rate():
    groups = param_groups(VideoResNetClassifier(weights=None), head_lr=1e-3, backbone_lr=1e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 1e-3), ("backbone", 1e-4)]
    assert sum(p.numel() for p in groups[0]["params"]) == 1_026
    assert sum(p.numel() for p in groups[1]["params"]) == 24_908_800
    fc_only = param_groups(VideoResNetClassifier(weights=None, trainable="fc"), head_lr=1e-3, backbone_lr=1e-4)
    assert [g["name"] for g in fc_only] == ["head"]


@pytest.mark.parametrize("arch", ["mc3_18", "r2plus1d_18"])
def test_alternative_architectures_adapt_the_same_way(arch):
    model = VideoResNetClassifier(arch=arch, weights=None, trainable="layer4+fc").eval()
    assert model.net.stem[0].in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2)


def test_three_channel_inputs_keep_the_rgb_kernels(tmp_path, kinetics_like_state_dict):
    # One channel sums the RGB kernels; three channels (e.g. to compare with torchvision) keep them as they are.
    torch.save(kinetics_like_state_dict, tmp_path / "video_weights.pth")
    model = VideoResNetClassifier(weights=str(tmp_path / "video_weights.pth"), in_channels=3)
    assert torch.equal(model.net.stem[0].weight, kinetics_like_state_dict["stem.0.weight"])


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(BundleInputError, match="Unknown architecture 'r3d_50'.*'mvit_v2_s'.*'2d' or 'slice'"):
        VideoResNetClassifier(arch="r3d_50", weights=None)
