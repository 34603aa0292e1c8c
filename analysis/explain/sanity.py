"""Model-randomisation sanity check of the relevance maps (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018, cascading randomisation).

A map that explains the *model* must change when the model's learned weights are destroyed. Starting from the
head, the layers of a copy of the model are re-initialised one after the other, cumulatively (head, then head and
layer4, ...), and after every step each volume's map is compared with the trained model's map by Spearman rank
correlation. A map that stays similar (e.g. an edge detector that mostly reflects the input) fails.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from .maps import METHODS, MapSettings, compute_maps, prepare_input

RANDOMISATION_ORDER: tuple[str, ...] = ("net.fc", "net.layer4", "net.layer3", "net.layer2", "net.layer1", "net.stem")

MapFunction = Callable[[nn.Module, torch.Tensor], np.ndarray]


def cascading_randomisation(
    model: nn.Module,
    volumes: Sequence[torch.Tensor | np.ndarray],
    methods: Sequence[str] = METHODS,
    settings: MapSettings | None = None,
    order: Sequence[str] = RANDOMISATION_ORDER,
    seed: int = 0,
    threshold: float = 0.5,
) -> dict:
    """Cascading randomisation of ``model`` for every method of :func:`~analysis.explain.maps.compute_maps`.

    Returns ``{"steps": ["net.fc", "net.fc+net.layer4", ...], "threshold", "n_volumes",
    "methods": {method: {"spearman": [mean over volumes per step], "passed": bool, "reason": str}}}``.
    A method passes when its mean Spearman correlation at the last step is below ``threshold`` (the trained map
    correlates 1 with itself, so that is a fall). ``model`` itself is not modified (a deep copy is randomised).

    All methods share one randomised copy per step, so the cost is one :func:`compute_maps` call per volume and
    step rather than one per method.
    """
    settings = settings or MapSettings()
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:  # before the first (expensive) map
        raise ValueError(f"Unknown map method(s) {unknown}; known methods: {', '.join(METHODS)}.")

    def all_maps(net: nn.Module, volume: torch.Tensor) -> dict[str, np.ndarray]:
        return compute_maps(net, volume, methods=methods, settings=settings)

    correlations, constant = _cascade(all_maps, model, volumes, order, seed)
    result = _result_frame(order, threshold, len(volumes))
    for method in methods:
        per_step = [step[method] for step in correlations]
        result["methods"][method] = _verdict(per_step, threshold, method in constant)
    return result


def check_map_function(
    map_fn: MapFunction,
    model: nn.Module,
    volumes: Sequence[torch.Tensor | np.ndarray],
    order: Sequence[str] = RANDOMISATION_ORDER,
    seed: int = 0,
    threshold: float = 0.5,
) -> dict:
    """The cascading-randomisation check for any ``map_fn(model, volume (1,1,D,H,W)) -> map``.

    Returns ``{"steps", "threshold", "n_volumes", "spearman": [...], "passed": bool, "reason": str}``.
    """

    def as_dict(net: nn.Module, volume: torch.Tensor) -> dict[str, np.ndarray]:
        return {"map": np.asarray(map_fn(net, volume))}

    correlations, constant = _cascade(as_dict, model, volumes, order, seed)
    result = _result_frame(order, threshold, len(volumes))
    del result["methods"]
    result.update(_verdict([step["map"] for step in correlations], threshold, "map" in constant))
    return result


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps, flattened; 1.0 when either map is constant.

    scipy returns NaN for a constant map. A constant map carries no information about the model, so it is scored
    as unchanged rather than dropped: dropping it would let a method that outputs nothing pass.
    """
    if _is_constant(a) or _is_constant(b):
        return 1.0
    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


def _is_constant(values: np.ndarray) -> bool:
    return bool(np.ptp(values) == 0)


def _cascade(
    maps_of: Callable[[nn.Module, torch.Tensor], dict[str, np.ndarray]],
    model: nn.Module,
    volumes: Sequence[torch.Tensor | np.ndarray],
    order: Sequence[str],
    seed: int,
) -> tuple[list[dict[str, list[float]]], set[str]]:
    """Per step and key of ``maps_of``, the Spearman correlations (one per volume) with the trained model's maps;
    and the keys whose trained or last-step map was constant for some volume (for the reason text)."""
    if not volumes:
        raise ValueError("cascading randomisation needs at least one volume.")
    if not order:
        raise ValueError("cascading randomisation needs at least one layer in `order`.")
    randomised = copy.deepcopy(model)
    modules = dict(randomised.named_modules())
    missing = [name for name in order if name not in modules]
    if missing:
        raise ValueError(f"The model has no layer(s) {missing} to randomise.")
    inputs = [prepare_input(v) for v in volumes]
    reference = [maps_of(model, x) for x in inputs]
    constant = {key for ref in reference for key, m in ref.items() if _is_constant(m)}
    steps: list[dict[str, list[float]]] = []
    # A private RNG stream: the check is reproducible and leaves the caller's global torch RNG where it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for index, name in enumerate(order):
            _reinitialise(modules[name])
            step: dict[str, list[float]] = {key: [] for key in reference[0]}
            for x, ref in zip(inputs, reference, strict=True):
                for key, new_map in maps_of(randomised, x).items():
                    step[key].append(spearman(ref[key], new_map))
                    if index == len(order) - 1 and _is_constant(new_map):
                        constant.add(key)
            steps.append(step)
    return steps, constant


def _reinitialise(module: nn.Module) -> None:
    """``reset_parameters()`` of every submodule that has one (convolutions, linear, BatchNorm with its stats)."""
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()


def _result_frame(order: Sequence[str], threshold: float, n_volumes: int) -> dict:
    steps = ["+".join(order[: i + 1]) for i in range(len(order))]
    return {"steps": steps, "threshold": float(threshold), "n_volumes": n_volumes, "methods": {}}


def _verdict(per_step: list[list[float]], threshold: float, constant: bool) -> dict:
    """Mean correlation per step and the pass/fail decision with its reason."""
    means = [float(np.mean(values)) for values in per_step]
    first, last = means[0], means[-1]
    why_high = " (the map does not vary for some volume: a constant map counts as Spearman 1)" if constant else ""
    if last >= 1.0 - 1e-6:
        passed, reason = False, f"the map does not change when the model is randomised (Spearman 1){why_high}"
    elif last >= threshold:
        passed = False
        reason = f"the fully randomised model's map still correlates (Spearman {last:.3f} >= {threshold}){why_high}"
    else:
        # The trained model's map correlates 1 with itself, so a last step below the threshold is a fall. Requiring
        # the last step to be lower than the first as well would make a method that decorrelates at once (as
        # integrated gradients does when the head is re-drawn: both near 0) pass or fail by chance.
        passed, reason = (
            True,
            (
                f"Spearman falls from 1 (trained) to {first:.3f} after the first step and {last:.3f} (< {threshold}) "
                "when all listed layers are randomised"
            ),
        )
    return {"spearman": means, "passed": passed, "reason": reason}
