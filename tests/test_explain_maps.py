"""Relevance maps (analysis.explain.maps) and the cascading-randomisation sanity check (analysis.explain.sanity).

Everything runs on 16^3-24^3 volumes: r3d_18 with random weights for the plumbing, and a hand-set toy model whose
decision depends only on a known box, so that where the maps put their relevance can be checked.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import analysis  # noqa: F401  (loads the bundle's scripts package)
from analysis.explain.maps import (
    METHOD_TITLES,
    METHODS,
    MapSettings,
    compute_maps,
    layer_activations,
    load_trained_model,
    occlusion_forward_passes,
    predict_probability,
    prepare_input,
)
from analysis.explain.sanity import RANDOMISATION_ORDER, cascading_randomisation, check_map_function
from scripts.data import BundleInputError
from scripts.network import VideoResNetClassifier

# Small occlusion and IG settings: r3d_18 on CPU costs ~0.1-1 s per forward pass here.
FAST = MapSettings(occlusion_mask=8, occlusion_overlap=0.0, ig_steps=4, batch=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These tensors are too small to gain from intra-op threads, and on a shared 2-core machine two threads fighting
    # another job made each r3d_18 pass ~5x slower; the setting is restored for the rest of the session.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def r3d() -> VideoResNetClassifier:
    torch.manual_seed(123)
    return VideoResNetClassifier(arch="r3d_18", weights=None, trainable="all").eval()


@pytest.fixture(scope="module")
def model_file(r3d, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(r3d.state_dict(), path)
    return path


def _noise_volumes(n: int, size: int = 16, seed: int = 5) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, size, size, generator=generator) for _ in range(n)]


def _model_state(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
    }


def _assert_untouched(model: nn.Module, before: dict) -> None:
    after = _model_state(model)
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, tensor in before["tensors"].items():
        assert torch.equal(after["tensors"][key], tensor), key
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert all(p.grad is None for p in model.parameters())
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks, name


# --- 1. loading r3d_18 and every method's output ---------------------------------------------------------------


def test_load_trained_model_round_trip_and_all_methods(r3d, model_file):
    loaded = load_trained_model(model_file)
    assert isinstance(loaded, VideoResNetClassifier) and loaded.arch == "r3d_18"
    assert not loaded.training and all(p.requires_grad for p in loaded.parameters())

    volume = _noise_volumes(1, size=16)[0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(prepare_input(volume)), r3d(prepare_input(volume)))
    probability = predict_probability(loaded, volume)
    assert 0.0 < probability < 1.0

    before = _model_state(loaded)
    maps = compute_maps(loaded, volume.numpy(), settings=FAST)  # numpy input on purpose
    assert tuple(maps) == METHODS and set(METHOD_TITLES) == set(METHODS)
    for method, relevance in maps.items():
        assert relevance.dtype == np.float32 and relevance.shape == (16, 16, 16), method
        assert np.isfinite(relevance).all(), method
    assert (maps["gradcam"] >= 0).all() and (maps["gradcampp"] >= 0).all()  # raw CAMs, not MONAI's flipped scaling
    _assert_untouched(loaded, before)


def test_compute_maps_restores_train_mode_and_frozen_layers():
    # A model in train mode with frozen layers (as after training) must come back exactly so, and Grad-CAM must
    # still reach the frozen layer3: the same weights with every layer trainable give the same maps.
    torch.manual_seed(7)
    frozen = VideoResNetClassifier(arch="r3d_18", weights=None, trainable="layer4+fc").train()
    trainable = copy.deepcopy(frozen).eval()
    for param in trainable.parameters():
        param.requires_grad_(True)
    volume, methods = _noise_volumes(1)[0], ("gradcam", "integrated_gradients")
    before = _model_state(frozen)
    maps = compute_maps(frozen, volume, methods=methods, settings=FAST)
    _assert_untouched(frozen, before)
    reference = compute_maps(trainable, volume, methods=methods, settings=FAST)
    for method in methods:
        assert maps[method].any(), method
        np.testing.assert_allclose(maps[method], reference[method], rtol=1e-4, atol=1e-7)


def test_truncated_model_file_names_the_file(model_file, tmp_path):
    truncated = tmp_path / "model.pt"
    data = model_file.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleInputError) as info:
        load_trained_model(truncated)
    assert isinstance(info.value, SystemExit)
    assert str(truncated) in str(info.value) and "truncated" in str(info.value)


def test_prepare_input_shapes():
    for shape in ((6, 7, 8), (1, 6, 7, 8), (1, 1, 6, 7, 8)):
        x = prepare_input(np.zeros(shape, dtype=np.float64))
        assert x.shape == (1, 1, 6, 7, 8) and x.dtype == torch.float32
    with pytest.raises(ValueError):
        prepare_input(np.zeros((2, 6, 7, 8)))


# --- 2. a toy model that only looks at a known box ---------------------------------------------------------------

SIZE = 24
BOX = (slice(3, 11), slice(12, 20), slice(5, 11))  # 384 voxels = 2.8 % of 24^3, off-centre and not a cube
DISTRACTOR = (slice(15, 22), slice(2, 9), slice(14, 21))  # brighter than the box, ignored by the model


class BoxMask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class BoxModel(nn.Module):
    """Class 1's logit grows with the (positive) intensity inside BOX; nothing outside BOX reaches the output."""

    def __init__(self) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, SIZE, SIZE, SIZE)
        mask[(0, 0, *BOX)] = 1.0
        self.conv = nn.Conv3d(1, 2, kernel_size=3, padding=1)
        # Grad-CAM looks at the masked features: it averages gradients over space, so at the conv itself it would
        # (correctly, for Grad-CAM) light up every bright voxel, the distractor included.
        self.features = nn.Sequential(nn.ReLU(), BoxMask(mask))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0, 1, 1, 1] = torch.tensor([1.0, 0.5])  # centre taps only: no bleeding out of BOX
            self.conv.bias.zero_()
            self.head.weight.copy_(torch.tensor([[-20.0, -20.0], [20.0, 20.0]]))
            self.head.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(self.conv(x))).flatten(1))


def _box_volume(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    volume = 0.3 * torch.randn(SIZE, SIZE, SIZE, generator=generator)
    volume[BOX] += 2.0
    volume[DISTRACTOR] += 3.0
    return volume


def _share_inside_box(relevance: np.ndarray) -> float:
    positive = np.clip(relevance, 0, None)
    inside = np.zeros(relevance.shape, dtype=bool)
    inside[BOX] = True
    return float(positive[inside].sum() / positive.sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_every_method_finds_the_box(seed):
    model = BoxModel().eval()
    volume = _box_volume(seed)
    assert 0.6 < predict_probability(model, volume) < 0.99  # not saturated, so occlusion can show something
    settings = MapSettings(target_layer="features", occlusion_mask=4, batch=16)
    maps = compute_maps(model, volume, settings=settings)
    shares = {method: _share_inside_box(relevance) for method, relevance in maps.items()}
    assert all(share > 0.5 for share in shares.values()), shares
    # Gradient methods have no spatial blur here: all of their relevance must be inside the box.
    for method in ("gradcam", "gradcampp", "integrated_gradients"):
        assert shares[method] > 0.99, shares
    # CN (class 0) relevance of the gradient methods is the mirror image: none of it is positive in the box.
    cn = compute_maps(model, volume, methods=("integrated_gradients",), settings=MapSettings(class_index=0))
    assert cn["integrated_gradients"][BOX].max() <= 0


def test_integrated_gradients_explain_the_logit():
    # The toy model is linear along the straight path from the zero baseline, so IG's completeness is exact:
    # the attributions sum to logit(x) - logit(0) (they would sum to a probability difference for a probability).
    model = BoxModel().eval()
    x = prepare_input(_box_volume(0))
    relevance = compute_maps(model, x, methods=("integrated_gradients",))["integrated_gradients"]
    with torch.no_grad():
        expected = float(model(x)[0, 1] - model(torch.zeros_like(x))[0, 1])
    assert relevance.sum() == pytest.approx(expected, rel=1e-3)


def test_occlusion_sign_and_forward_pass_count():
    model = BoxModel().eval()
    volume = _box_volume(0)
    settings = MapSettings(occlusion_mask=6, occlusion_overlap=0.5, batch=32)
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    try:
        occlusion = compute_maps(model, volume, methods=("occlusion",), settings=settings)["occlusion"]
    finally:
        handle.remove()
    assert sum(calls) == occlusion_forward_passes((SIZE,) * 3, settings) + 1 == 7**3 + 1
    # Hiding the box lowers p(AD): positive relevance there; far from the box nothing changes.
    assert occlusion[BOX].min() > 0
    assert np.abs(occlusion[DISTRACTOR]).max() < 1e-6


# --- 3. cascading randomisation -----------------------------------------------------------------------------------


def test_map_ignoring_the_model_fails(r3d):
    volumes = _noise_volumes(2)
    result = check_map_function(lambda _model, x: x[0, 0].numpy(), r3d, volumes)
    assert not result["passed"] and "does not change" in result["reason"]
    assert result["spearman"] == pytest.approx([1.0] * len(RANDOMISATION_ORDER))
    constant = check_map_function(lambda _model, x: np.zeros(x.shape[2:]), r3d, volumes)
    assert not constant["passed"] and "does not vary" in constant["reason"]


def test_integrated_gradients_under_cascading_randomisation(r3d):
    before = _model_state(r3d)
    rng_state = torch.get_rng_state()
    settings = MapSettings(ig_steps=2, batch=2)
    result = cascading_randomisation(r3d, _noise_volumes(2), methods=("integrated_gradients",), settings=settings)
    assert result["steps"][0] == "net.fc" and result["steps"][-1] == "+".join(RANDOMISATION_ORDER)
    assert result["n_volumes"] == 2 and result["threshold"] == 0.5
    verdict = result["methods"]["integrated_gradients"]
    rho = verdict["spearman"]
    assert len(rho) == len(RANDOMISATION_ORDER)
    # IG of the class logit follows the head: with fc re-drawn the map is already unrelated to the reference
    # (|rho| ~ 0.01) and stays so, far below the threshold, unlike the model-blind maps above (rho = 1).
    assert max(abs(r) for r in rho) < 0.2
    assert rho[-1] < result["threshold"]
    # The trained map correlates 1 with itself: falling below the threshold is the pass, however flat the cascade.
    assert verdict["passed"] and "falls from 1" in verdict["reason"]
    _assert_untouched(r3d, before)  # the cascade randomised a copy
    assert torch.equal(torch.get_rng_state(), rng_state)


# --- 4. layer activations, 5. unknown names -----------------------------------------------------------------------


def test_layer_activations_shape_and_no_hooks(r3d):
    activations = layer_activations(r3d, _noise_volumes(1)[0], layer="net.layer4")
    # r3d_18 halves depth in layer2-4 (the stem keeps it) and height/width in the stem and layer2-4.
    assert activations.shape == (512, 2, 1, 1) and activations.dtype == np.float32
    assert all(not module._forward_hooks for module in r3d.modules())


def test_unknown_method_or_layer_raises(r3d):
    volume = _noise_volumes(1)[0]
    with pytest.raises(ValueError, match="gradcam, gradcampp, occlusion, integrated_gradients"):
        compute_maps(r3d, volume, methods=("lime",))
    with pytest.raises(ValueError, match="lime"):
        cascading_randomisation(r3d, [volume], methods=("lime",))
    with pytest.raises(ValueError, match="net.layer9"):
        compute_maps(r3d, volume, methods=("gradcam",), settings=MapSettings(target_layer="net.layer9"))
