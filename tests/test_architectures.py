"""The architectures of issue 11 (s3d, swin3d_t, mvit_v2_s, the 2D slice resnet18): building, the summed stem,
MViT's resized relative-position tables, freezing presets, input sizes, weights and checkpoints."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from urllib.error import URLError

import pytest
import torch
from conftest import BUNDLE_ROOT
from tiny_data import write_tiny_dataset
from torch import nn
from torchvision.models import video as tv_video

from scripts.checkpoints import guess_architecture, head_size, load_model_weights, model_architecture
from scripts.data import BundleInputError
from scripts.network import VolumeClassifier, configure, kinetics_checkpoint_path, log_parameter_counts, param_groups
from scripts.video_transformers import resize_table

NEW = ["s3d", "swin3d_t", "mvit_v2_s", "resnet18_2d"]
VIDEO = ["s3d", "swin3d_t", "mvit_v2_s"]
# The blocks each preset trains, written out from torchvision's module names (architectures.py documents them).
PRESET_BLOCKS = {
    "s3d": {"fc": ["classifier"], "layer4+fc": ["features.14", "features.15", "classifier"]},
    "swin3d_t": {"fc": ["head"], "layer4+fc": ["features.6", "norm", "head"]},
    "mvit_v2_s": {"fc": ["head"], "layer4+fc": ["blocks.14", "blocks.15", "norm", "head"]},
    "resnet18_2d": {"fc": ["fc"], "layer4+fc": ["layer4", "fc"]},
}
# (total, layer4+fc trainable) at the bundle's 128³; mvit_v2_s's total depends on the size (its position tables).
COUNTS_128 = {
    "s3d": (7_905_826, 3_177_826),
    "swin3d_t": (27_845_864, 14_300_498),
    "mvit_v2_s": (34_328_258, 13_634_306),
    "resnet18_2d": (11_171_266, 8_394_754),
}


def torchvision_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the format of torchvision's Kinetics-400 checkpoint (3 channels, 400 classes)."""
    torch.manual_seed(seed)
    model = getattr(tv_video, arch)(weights=None)
    for module in model.modules():  # random BN statistics: the stem check then covers the normalisation after it
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


def torchvision_model(arch: str, state: dict, grid: tuple[int, int, int] | None = None) -> nn.Module:
    model = getattr(tv_video, arch)(weights=None)
    model.load_state_dict(state)
    if grid is not None:  # torchvision's MViT runs on the token grid its positional encoding records
        model.pos_encoding.temporal_size, model.pos_encoding.spatial_size = grid[0], grid[1:]
    return model.eval()


def backbone(model: nn.Module, arch: str) -> nn.Module:
    """``model`` (torchvision's, or an adapted ``.net``) without its output layer: the features the head reads."""
    trunk = copy.deepcopy(model)
    if arch == "s3d":
        trunk.avgpool, trunk.classifier = nn.Identity(), nn.Identity()  # compare the feature map itself
        trunk.forward = lambda x: trunk.features(x)
    elif arch == "mvit_v2_s":
        trunk.head[1] = nn.Identity()
    else:
        trunk.head = nn.Identity()
    return trunk


@pytest.mark.parametrize("arch", NEW)
def test_each_architecture_takes_one_channel_and_trains_at_32(arch):
    torch.manual_seed(0)
    model = VolumeClassifier(arch, weights=None, trainable="all", input_size=32).train()
    stem = dict(model.net.named_modules())[model.spec.stem]
    assert stem.in_channels == 1
    logits = model(torch.randn(2, 1, 32, 32, 32))
    assert logits.shape == (2, 2)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["s3d", "resnet18_2d"])
def test_small_models_give_two_logits_at_128(arch):
    model = VolumeClassifier(arch, weights=None).eval()  # forward only: a CPU backward at 128³ takes seconds
    with torch.no_grad():
        assert model(torch.randn(1, 1, 128, 128, 128)).shape == (1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["r3d_18", "mc3_18", "r2plus1d_18", "swin3d_t", "mvit_v2_s"])
def test_large_models_give_two_logits_at_128(arch):
    # 5-20 s each on 2 idle cores (r3d_18 at 128³ is also checked by test_bundle_verify's verify_net_in_out).
    model = VolumeClassifier(arch, weights=None).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 128, 128, 128)).shape == (1, 2)


@pytest.mark.parametrize("arch", VIDEO)
def test_summed_stem_gives_the_features_of_the_volume_copied_to_rgb(tmp_path, arch):
    state = torchvision_state_dict(arch)
    torch.save(state, tmp_path / "video.pth")
    gray = VolumeClassifier(arch, weights=str(tmp_path / "video.pth"), input_size=32).eval()
    stem = dict(gray.net.named_modules())[gray.spec.stem]
    assert torch.equal(stem.weight, state[f"{gray.spec.stem}.weight"].sum(dim=1, keepdim=True))
    # MViT: torchvision's model, told the 32³ token grid, interpolates its 224² tables at run time; the adapted one
    # holds tables resized once to that grid. The same numbers show that the resizing is torchvision's own.
    rgb = torchvision_model(arch, state, grid=(16, 8, 8) if arch == "mvit_v2_s" else None)
    volume = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        expected = backbone(rgb, arch)(volume.repeat(1, 3, 1, 1, 1))
        actual = backbone(gray.net, arch)(volume) if arch == "s3d" else _adapted_features(gray, volume)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def _adapted_features(model: VolumeClassifier, volume: torch.Tensor) -> torch.Tensor:
    """The adapted classifier's own forward (not torchvision's) up to the head."""
    trunk = copy.deepcopy(model)
    if model.spec.name == "mvit_v2_s":
        trunk.net.head[1] = nn.Identity()
    else:
        trunk.net.head = nn.Identity()
    return trunk(volume)


def test_s3d_global_pooling_equals_torchvisions_window_at_its_own_size():
    # torchvision pools s3d's 2x7x7 map (16x224x224 input) with a (2,7,7) window; the bundle's global mean is the same.
    torch.manual_seed(0)
    original = tv_video.s3d(weights=None).eval()
    adapted = VolumeClassifier("s3d", weights=None, in_channels=3, num_classes=400).eval().net
    adapted.classifier = original.classifier
    features = torch.randn(2, 1024, 2, 7, 7)
    with torch.no_grad():
        expected = original.classifier(original.avgpool(features)).mean(dim=(2, 3, 4))
        actual = adapted.classifier(adapted.avgpool(features)).mean(dim=(2, 3, 4))
    torch.testing.assert_close(actual, expected)


@pytest.mark.slow
def test_mvit_reproduces_torchvision_at_16x224x224_with_unmodified_weights(tmp_path):
    state = torchvision_state_dict("mvit_v2_s")
    torch.save(state, tmp_path / "mvit.pth")
    weights = str(tmp_path / "mvit.pth")
    adapted = VolumeClassifier("mvit_v2_s", weights=weights, in_channels=3, input_size=(16, 224, 224))
    assert torch.equal(adapted.net.conv_proj.weight, state["conv_proj.weight"])  # 3 channels: RGB kernels kept
    for key in ("blocks.0.attn.rel_pos_h", "blocks.14.attn.rel_pos_w", "blocks.3.attn.rel_pos_t"):
        assert torch.equal(adapted.state_dict()[f"net.{key}"], state[key])  # tables of the native size unchanged
    volume = torch.randn(1, 3, 16, 224, 224)
    with torch.no_grad():
        expected = backbone(torchvision_model("mvit_v2_s", state), "mvit_v2_s")(volume)
        actual = _adapted_features(adapted.eval(), volume)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_mvit_tables_are_resized_to_the_token_grid():
    model = VolumeClassifier("mvit_v2_s", weights=None)  # 128³: 64x32x32 tokens after the (2,4,4) patches
    lengths = [(b.attn.rel_pos_h.shape[0], b.attn.rel_pos_t.shape[0]) for b in model.net.blocks]
    # Spatial: 2 * max(query, key grid) - 1 (block 0: queries 32, keys 32/8; block 1 pools queries to 16 ...).
    assert lengths[0] == (63, 127) and lengths[1] == (31, 127) and lengths[3] == (15, 127) and lengths[15] == (7, 127)
    table = torch.arange(15.0).unsqueeze(1).repeat(1, 2)
    resized = resize_table(table, 29)
    assert resized.shape == (29, 2) and resized[0, 0] == 0 and resized[-1, 0] == 14  # linear stretch, ends kept
    assert torch.all(resized[1:, 0] >= resized[:-1, 0])


@pytest.mark.parametrize("arch", NEW)
@pytest.mark.parametrize("preset", ["fc", "layer4+fc", "all"])
def test_presets_train_exactly_their_blocks(arch, preset, caplog):
    model = VolumeClassifier(arch, weights=None, trainable=preset)
    modules = dict(model.net.named_modules())
    blocks = PRESET_BLOCKS[arch].get(preset)
    expected = {
        f"{block}.{name}" for block in blocks for name, _ in modules[block].named_parameters()
    } if blocks else {name for name, _ in model.net.named_parameters()}  # fmt: skip
    assert {name for name, p in model.net.named_parameters() if p.requires_grad} == expected
    counts = model.parameter_counts()
    assert counts["trainable"] == sum(dict(model.net.named_parameters())[name].numel() for name in expected)
    total, last_stage = COUNTS_128[arch]
    assert counts["total"] == total
    if preset == "layer4+fc":
        assert counts["trainable"] == last_stage
        with caplog.at_level("INFO", logger="scripts.network"):
            log_parameter_counts(model)
        assert f"total parameters: {total:,}; trainable: {last_stage:,}" in caplog.text
    head = sum(p.numel() for p in modules[PRESET_BLOCKS[arch]["fc"][0]].parameters())
    groups = param_groups(model, head_lr=1e-3, backbone_lr=1e-4)
    assert sum(p.numel() for p in groups[0]["params"]) == head
    assert sum(p.numel() for g in groups for p in g["params"]) == counts["trainable"]


def test_frozen_batchnorm_of_s3d_stays_in_eval_mode():
    model = VolumeClassifier("s3d", weights=None, trainable="layer4+fc").train()
    frozen, trained = model.net.features[12].branch0[1], model.net.features[15].branch0[1]
    assert not frozen.training and trained.training
    before = frozen.running_mean.clone()
    model(torch.randn(2, 1, 32, 32, 32))
    assert torch.equal(frozen.running_mean, before)


@pytest.mark.parametrize(("arch", "size", "words"), [("mvit_v2_s", 100, "multiples of 32"), ("s3d", 16, "at least 17")])
def test_unsupported_sizes_are_refused_in_one_line(arch, size, words):
    with pytest.raises(BundleInputError) as err:
        VolumeClassifier(arch, weights=None, input_size=size)
    assert words in str(err.value) and len(str(err.value).splitlines()) == 1
    model = VolumeClassifier(arch, weights=None, input_size=128)
    with pytest.raises(BundleInputError, match=f"cannot take {size}³ volumes"):
        model(torch.randn(1, 1, size, size, size))


@pytest.mark.parametrize("arch", ["swin3d_t", "mvit_v2_s"])
def test_activation_checkpointing_gives_the_same_gradients(arch):
    torch.manual_seed(0)
    # eval: no stochastic depth; layer4+fc: the frozen stages run without a graph, the last stage is checkpointed.
    model = VolumeClassifier(arch, weights=None, input_size=32).eval()
    volume = torch.randn(1, 1, 32, 32, 32)
    grads = []
    for enabled in (False, True):
        configure(model, activation_checkpointing=enabled)
        model.zero_grad()
        model(volume).sum().backward()
        grads.append({name: p.grad.clone() for name, p in model.net.named_parameters() if p.requires_grad})
    assert model.activation_checkpointing and len(grads[1]) > 4
    torch.testing.assert_close(grads[0], grads[1])


def test_pretrained_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = kinetics_checkpoint_path("swin3d_t")
    assert cached == tmp_path / "hub" / "checkpoints" / "swin3d_t-7615ae03.pth"
    cached.parent.mkdir(parents=True)
    state = torchvision_state_dict("swin3d_t")
    torch.save(state, cached)
    model = VolumeClassifier("swin3d_t", weights="kinetics400")
    key = "features.6.0.attn.qkv.weight"
    assert torch.equal(model.net.get_parameter(key), state[key])


def test_offline_without_cached_imagenet_weights_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    with pytest.raises(BundleInputError) as err:
        VolumeClassifier("resnet18_2d", weights="kinetics400")  # the config default means "its pretrained weights"
    message = str(err.value)
    assert message.startswith("error: ImageNet-1k weights for resnet18_2d are not in the torch hub cache")
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    with pytest.raises(BundleInputError, match="--weights imagenet is for the 2D model"):
        VolumeClassifier("s3d", weights="imagenet")


@pytest.mark.parametrize("arch", NEW)
def test_checkpoints_name_their_architecture(tmp_path, arch):
    state = VolumeClassifier(arch, weights=None, input_size=32).state_dict()
    assert guess_architecture(state) == arch
    if arch in VIDEO:
        assert guess_architecture(torchvision_state_dict(arch)) == arch
    torch.save(state, tmp_path / "model.pt")
    assert model_architecture(tmp_path / "model.pt") == arch and head_size(tmp_path / "model.pt") == 2
    assert model_architecture(tmp_path / "missing.pt") == "r3d_18"
    other = "r3d_18" if arch != "r3d_18" else "s3d"
    with pytest.raises(BundleInputError, match=f"Use it with --arch {arch}"):
        load_model_weights(tmp_path / "model.pt", VolumeClassifier(other, weights=None))


def test_an_mvit_trained_at_32_loads_into_one_built_for_128(tmp_path):
    torch.manual_seed(0)
    small = VolumeClassifier("mvit_v2_s", weights=None, input_size=32).eval()
    torch.save(small.state_dict(), tmp_path / "model.pt")
    large = VolumeClassifier("mvit_v2_s", weights=None, input_size=128)  # e.g. inference.json, which has no size
    table = large.net.blocks[0].attn.rel_pos_h
    large.load_state_dict(load_model_weights(tmp_path / "model.pt", large))
    assert large.net.blocks[0].attn.rel_pos_h is table and table.shape == (15, 96)  # same Parameter, new length
    volume = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(large.eval()(volume), small(volume))


@pytest.mark.slow
def test_bundle_trains_swin3d_t_from_the_command_line(tmp_path):
    write_tiny_dataset(tmp_path / "data", {"training": 4, "validation": 2, "test": 2}, size=32)
    args = [
        "run", "training", "--config_file", "configs/train.json", "--arch", "swin3d_t", "--weights", "none",
        "--dataset_dir", str(tmp_path / "data"), "--ckpt_dir", str(tmp_path / "models"), "--output_dir",
        str(tmp_path / "eval"), "--use_wandb", "False", "--num_workers", "0", "--train#trainer#max_epochs", "1",
        "--activation_checkpointing", "True", "--cpu_threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "swin3d_t (trainable='layer4+fc'): total parameters: 27,845,864; trainable: 14,300,498" in log
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert guess_architecture(state) == "swin3d_t" and state["net.head.weight"].shape == (2, 768)
    # Evaluation builds the network the model file holds, without being told --arch.
    evaluate = ["run", "evaluating", "--config_file", "['configs/train.json','configs/evaluate.json']",
                *args[args.index("--dataset_dir"):]]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *evaluate], cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    predictions = (tmp_path / "eval" / "predictions.csv").read_text().splitlines()
    assert len(predictions) == 1 + 2
