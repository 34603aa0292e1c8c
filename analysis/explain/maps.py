"""Relevance maps of the trained classifier: Grad-CAM, Grad-CAM++, occlusion sensitivity (MONAI) and integrated
gradients (Captum), all as float32 ``(D, H, W)`` arrays on the model's input grid where larger means more evidence
for the explained class (AD by default).

The saliency methods themselves are MONAI's and Captum's; this module only loads the model, fixes their conventions
(sign, class, activation, post-processing) and makes sure the model comes back exactly as it was given: MONAI's
``ModelWithHooks`` registers forward/backward hooks it never removes and fills parameter gradients, so every method
runs inside :func:`_model_restored`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from captum.attr import IntegratedGradients
from monai.visualize import GradCAM, GradCAMpp, OcclusionSensitivity
from torch import nn

import analysis  # noqa: F401  (loads the bundle's ``scripts`` package)
from scripts.checkpoints import STATE_DICT_KEYS, guess_architecture, load_model_weights
from scripts.network import VideoResNetClassifier

METHODS: tuple[str, ...] = ("gradcam", "gradcampp", "occlusion", "integrated_gradients")
METHOD_TITLES: dict[str, str] = {
    "gradcam": "Grad-CAM",
    "gradcampp": "Grad-CAM++",
    "occlusion": "Occlusion sensitivity",
    "integrated_gradients": "Integrated gradients",
}


@dataclass
class MapSettings:
    """How the maps are computed.

    Attributes:
        target_layer: dotted module name whose activations Grad-CAM / Grad-CAM++ weight (``net.layer3`` of r3d_18
            keeps a 1/8 resolution grid; ``net.layer4`` is 1/16 and too coarse for 64^3 inputs).
        class_index: the explained class (1 = AD, 0 = CN).
        occlusion_mask: edge of MONAI's occluding cube in voxels; None = each input edge // 4 (at least 2).
        occlusion_overlap: MONAI's overlap between neighbouring occlusions (0 <= overlap < 1).
        ig_steps: Captum integrated-gradients steps.
        batch: forward passes batched together (occlusion ``n_batch``, IG ``internal_batch_size``).
    """

    target_layer: str = "net.layer3"
    class_index: int = 1
    occlusion_mask: int | None = None
    occlusion_overlap: float = 0.0  # 0: the cubes tile the grid (4^3 = 64 passes at the default edge), 0.5: 343
    ig_steps: int = 16
    batch: int = 8


def load_trained_model(model_file: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The bundle's trained classifier from ``model_file`` (a model.pt), in eval mode, every parameter trainable.

    The architecture is read from the file's tensor shapes (r3d_18 when they match none) and the class count from
    the head, so any model.pt of the bundle loads without options. A missing, truncated or foreign file raises
    ``scripts.data.BundleInputError`` naming it (from ``scripts.checkpoints.load_model_weights``).
    """
    model_file = Path(model_file)
    # The first read (memory-mapped, so nearly free) is only for the shapes; load_model_weights reads again and gives
    # the named errors, including for files this read cannot open.
    state = _peek_state(model_file)
    arch = (guess_architecture(state) if state else None) or "r3d_18"
    if arch not in ("r3d_18", "mc3_18", "r2plus1d_18"):
        from scripts.data import BundleInputError

        # The maps hook net.layer3 / net.layer4, which only the video ResNets have.
        raise BundleInputError(
            f"{model_file} holds a {arch} model; explain and scan-report support the video ResNets (r3d_18, mc3_18, "
            "r2plus1d_18) only."
        )
    fc_weight = state.get("net.fc.weight") if state else None
    num_classes = int(fc_weight.shape[0]) if isinstance(fc_weight, torch.Tensor) else 2
    if num_classes != 2:
        from scripts.data import BundleInputError

        # The maps and probabilities here are those of output 1 = AD; in a CN/MCI/AD model output 1 is MCI.
        raise BundleInputError(
            f"{model_file} has {num_classes} outputs; explain and scan-report support CN/AD models (2 outputs) only."
        )
    model = VideoResNetClassifier(arch=arch, weights=None, num_classes=num_classes, trainable="all")
    model.load_state_dict(load_model_weights(model_file, model, map_location="cpu"))
    # Gradients must reach the Grad-CAM layer even where training froze it; nothing here ever steps an optimiser.
    for param in model.parameters():
        param.requires_grad_(True)
    return model.to(device).eval()


def _peek_state(model_file: Path) -> dict | None:
    try:
        checkpoint = torch.load(model_file, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # reported properly by load_model_weights
        return None
    if isinstance(checkpoint, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
        return checkpoint
    return None


def prepare_input(volume: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(D,H,W)``, ``(1,D,H,W)`` or ``(1,1,D,H,W)`` -> a float32 ``(1,1,D,H,W)`` plain tensor (not a MetaTensor).

    The volume must already be normalised as the model expects (the bundle's z-normalisation).
    """
    # ascontiguousarray: torch refuses numpy views with negative strides (flipped arrays).
    tensor = volume if isinstance(volume, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(volume))
    # A MetaTensor would carry its metadata through every hook and Captum's batching for nothing.
    tensor = tensor.as_subclass(torch.Tensor) if type(tensor) is not torch.Tensor else tensor
    tensor = tensor.detach().to(torch.float32)
    while tensor.ndim < 5 and tensor.ndim >= 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 5 or tensor.shape[0] != 1 or tensor.shape[1] != 1:
        raise ValueError(
            f"Expected one single-channel volume (D,H,W), (1,D,H,W) or (1,1,D,H,W); got shape {tuple(volume.shape)}."
        )
    return tensor


def predict_probability(model: nn.Module, volume: torch.Tensor | np.ndarray, class_index: int = 1) -> float:
    """The softmax probability of ``class_index`` for ``volume`` (eval mode; the model's mode is restored)."""
    x = _on_model_device(model, prepare_input(volume))
    with _model_restored(model), torch.no_grad():
        model.eval()
        return float(torch.softmax(model(x), dim=1)[0, class_index])


def compute_maps(
    model: nn.Module,
    volume: torch.Tensor | np.ndarray,
    methods: Sequence[str] = METHODS,
    settings: MapSettings | None = None,
) -> dict[str, np.ndarray]:
    """Relevance maps of ``volume`` for ``settings.class_index``: ``{method: float32 (D,H,W)}``.

    - ``gradcam`` / ``gradcampp``: MONAI's GradCAM / GradCAMpp at ``settings.target_layer`` on the class logit,
      trilinearly upsampled to the input by MONAI, non-negative. MONAI's default post-processing (a min-max scaling
      that also flips the map) is replaced by the identity, so values are raw and comparable between scans.
    - ``occlusion``: MONAI's OcclusionSensitivity (Gaussian occlusion: the centre of the cube is multiplied towards
      0, i.e. towards the mean intensity of the z-normalised volume). MONAI returns, per voxel, the class
      probability with the regions around it occluded (low = important); this is converted to
      ``p(unoccluded) - p(occluded)``, positive where hiding the region lowers the class probability. Softmax is
      passed explicitly: MONAI's ``activate=True`` picks sigmoid or softmax from the *input's* channel count, which
      would apply a sigmoid to each logit of this 1-channel-input model.
    - ``integrated_gradients``: Captum's IntegratedGradients of the class **logit** (not the probability, which
      saturates and would hide evidence in confidently classified scans), baseline = all zeros (the mean intensity
      after z-normalisation, i.e. a featureless volume), ``settings.ig_steps`` steps. Signed; the attributions sum
      to about logit(volume) - logit(baseline).

    Raises ValueError for an unknown method or target layer. The model comes back unchanged: same train/eval mode
    of every module, no hooks left, same ``requires_grad`` flags and gradients.
    """
    settings = settings or MapSettings()
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown map method(s) {unknown}; known methods: {', '.join(METHODS)}.")
    x = _on_model_device(model, prepare_input(volume))
    maps: dict[str, np.ndarray] = {}
    for method in methods:
        with _model_restored(model):
            model.eval()
            maps[method] = _COMPUTE[method](model, x, settings)
    return maps


def layer_activations(model: nn.Module, volume: torch.Tensor | np.ndarray, layer: str = "net.layer4") -> np.ndarray:
    """The output of ``layer`` for ``volume`` as a float32 ``(channels, d, h, w)`` array (eval mode)."""
    return predict_with_activations(model, volume, layer)[1]


def predict_with_activations(
    model: nn.Module, volume: torch.Tensor | np.ndarray, layer: str = "net.layer4", class_index: int = 1
) -> tuple[float, np.ndarray]:
    """The class probability and the output of ``layer`` from one forward pass (eval mode)."""
    module = _get_module(model, layer)
    x = _on_model_device(model, prepare_input(volume))
    captured: list[torch.Tensor] = []
    with _model_restored(model), torch.no_grad():
        model.eval()
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
        try:
            logits = model(x)
        finally:
            handle.remove()
    probability = float(torch.softmax(logits.float(), dim=1)[0, class_index])
    return probability, captured[0][0].cpu().numpy().astype(np.float32)


def occlusion_mask_size(spatial_shape: Sequence[int], settings: MapSettings | None = None) -> tuple[int, ...]:
    """The occluding cube's edge per axis: ``settings.occlusion_mask`` or each edge // 4 (at least 2)."""
    settings = settings or MapSettings()
    if settings.occlusion_mask is not None:
        return tuple(min(int(settings.occlusion_mask), int(s)) for s in spatial_shape)
    return tuple(max(2, int(s) // 4) for s in spatial_shape)


def occlusion_forward_passes(spatial_shape: Sequence[int], settings: MapSettings | None = None) -> int:
    """How many occluded volumes MONAI's sliding window runs through the model (plus 1 unoccluded pass here).

    Mirrors ``monai.inferers.utils._get_scan_interval`` and ``monai.data.utils.dense_patch_slices`` so a caller can
    choose a mask and overlap before paying for them; the tests check it against a counted run.
    """
    settings = settings or MapSettings()
    total = 1
    for size, mask in zip(spatial_shape, occlusion_mask_size(spatial_shape, settings), strict=True):
        interval = mask if mask == size else max(1, int(mask * (1 - settings.occlusion_overlap)))
        starts = math.ceil(size / interval)
        total *= next((d + 1 for d in range(starts) if d * interval + mask >= size), 1)
    return total


def _gradcam(model: nn.Module, x: torch.Tensor, settings: MapSettings, cam_class: type = GradCAM) -> np.ndarray:
    _get_module(model, settings.target_layer)  # a named error instead of MONAI's warning and KeyError
    cam = cam_class(nn_module=model, target_layers=settings.target_layer, postprocessing=_identity)
    # The gradient reaches the target layer through the input, which requires grad, so frozen layers (a model not
    # loaded through load_trained_model) work too. Parameter gradients are not needed: switching them off here
    # (restored by _model_restored) spares the backward pass the weight gradients of all 33 M parameters.
    for param in model.parameters():
        param.requires_grad_(False)
    result = cam(x=x.clone().requires_grad_(True), class_idx=settings.class_index)
    return _as_map(result)


def _gradcampp(model: nn.Module, x: torch.Tensor, settings: MapSettings) -> np.ndarray:
    return _gradcam(model, x, settings, cam_class=GradCAMpp)


def _occlusion(model: nn.Module, x: torch.Tensor, settings: MapSettings) -> np.ndarray:
    occluder = OcclusionSensitivity(
        nn_module=model,
        mask_size=occlusion_mask_size(x.shape[2:], settings),
        n_batch=settings.batch,
        verbose=False,
        overlap=settings.occlusion_overlap,
        activate=_softmax,
    )
    with torch.no_grad():
        unoccluded = float(_softmax(model(x))[0, settings.class_index])
        # MONAI 1.6 returns (occlusion map, most probable class); the map is (B, classes, *spatial) although its
        # docstring says BCHW(D)N. Its Gaussian kernel indexes with a list, which torch warns about on every call.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
            occluded, _ = occluder(x)
    occluded = torch.as_tensor(occluded).as_subclass(torch.Tensor)
    if occluded.ndim != x.ndim or occluded.shape[2:] != x.shape[2:]:
        raise RuntimeError(f"Unexpected MONAI occlusion map shape {tuple(occluded.shape)} for input {tuple(x.shape)}.")
    return (unoccluded - occluded[0, settings.class_index]).cpu().numpy().astype(np.float32)


def _integrated_gradients(model: nn.Module, x: torch.Tensor, settings: MapSettings) -> np.ndarray:
    attribution = IntegratedGradients(model).attribute(
        x,
        baselines=torch.zeros_like(x),
        target=settings.class_index,
        n_steps=settings.ig_steps,
        internal_batch_size=settings.batch,
    )
    return _as_map(attribution)


_COMPUTE = {
    "gradcam": _gradcam,
    "gradcampp": _gradcampp,
    "occlusion": _occlusion,
    "integrated_gradients": _integrated_gradients,
}


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=1)


def _as_map(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach()[0, 0].cpu().numpy().astype(np.float32)


def _on_model_device(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    param = next(model.parameters(), None)
    return x.to(param.device) if param is not None else x


def _get_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        tops = [n for n in modules if n and n.count(".") <= 1][:12]
        raise ValueError(f"The model has no layer '{name}'; layers include {tops}.")
    return modules[name]


@contextmanager
def _model_restored(model: nn.Module) -> Iterator[None]:
    """Undo what explaining does to a model: modes, hooks, inplace flags, ``requires_grad`` and gradients.

    MONAI's ModelWithHooks registers hooks without keeping their handles, switches ``inplace`` off on its target
    layer and leaves the backward pass's gradients in the parameters; a per-module snapshot undoes all of it, and
    keeps the eval mode of frozen BatchNorm layers inside a model in train mode.
    """
    modules = list(model.modules())
    snapshot = []
    for module in modules:
        hook_keys = {
            attr: set(value) for attr, value in vars(module).items() if "hook" in attr and isinstance(value, dict)
        }
        inplace = module.__dict__.get("inplace")
        snapshot.append((module.training, hook_keys, module.__dict__.get("_is_full_backward_hook"), inplace))
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for module, (training, hook_keys, full_backward, inplace) in zip(modules, snapshot, strict=True):
            module.training = training
            for attr, keys in hook_keys.items():
                hooks = getattr(module, attr)
                for key in set(hooks) - keys:
                    del hooks[key]
            module.__dict__["_is_full_backward_hook"] = full_backward
            if inplace is not None:
                module.__dict__["inplace"] = inplace
        for param, requires_grad, grad in params:
            param.requires_grad_(requires_grad)
            param.grad = grad
