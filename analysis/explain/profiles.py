"""Where along each axis the relevance lies, class-mean maps, and the layer-4 channels that tell AD from CN.

r3d_18 reads a volume ``(C, D, H, W)`` as a video of ``D`` frames: the first spatial axis plays the role of time.
After the chain's ``Orientationd`` (RAS) that axis runs from the subject's left to right, so the dissertation's "in
video it's timeframe but in my case depth" is, for this bundle, the left-right axis. The profiles below sum relevance
per slice along each axis so the "time" axis can be compared with the two others.

Class means are voxel-wise means of the maps in array space: every scan's model grid is its own brain's bounding box
resized to the cube, so voxel ``(i, j, k)`` is roughly the same place in every brain (as good as an affine alignment
to the brain's extent, no better).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch

CLASS_NAMES = ("CN", "AD")
AXIS_WORDS = {"L": "left", "R": "right", "A": "anterior", "P": "posterior", "S": "superior", "I": "inferior"}
OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


def axis_names(affine: np.ndarray) -> list[str]:
    """'left to right' etc. for the three array axes of a grid (from its affine's orientation codes)."""
    return [f"{AXIS_WORDS[OPPOSITE[code]]} to {AXIS_WORDS[code]}" for code in nib.aff2axcodes(np.asarray(affine))]


def depth_profile(relevance: np.ndarray, axis: int) -> np.ndarray:
    """Share of the positive relevance in each slice along ``axis`` (sums to 1; all NaN for an all-zero map)."""
    positive = np.clip(np.asarray(relevance, dtype=np.float64), 0, None)
    other = tuple(a for a in range(positive.ndim) if a != axis)
    per_slice = positive.sum(axis=other)
    total = per_slice.sum()
    return per_slice / total if total > 0 else np.full_like(per_slice, np.nan)


def class_profiles(profiles: Sequence[np.ndarray], labels: Sequence[int]) -> dict[str, dict[str, list[float]]]:
    """Mean and standard deviation of per-scan profiles, per class present."""
    stacked, labels = np.stack(profiles), np.asarray(labels)
    out = {}
    for index, name in enumerate(CLASS_NAMES):
        rows = stacked[labels == index]
        rows = rows[~np.isnan(rows).any(axis=1)]
        if len(rows):
            out[name] = {"mean": rows.mean(0).tolist(), "sd": rows.std(0).tolist(), "n": int(len(rows))}
    return out


def class_mean_maps(maps: Sequence[np.ndarray], labels: Sequence[int]) -> dict[str, np.ndarray]:
    """Voxel-wise mean map of each class, and ``AD_minus_CN`` when both are present."""
    stacked, labels = np.stack([np.asarray(m, dtype=np.float32) for m in maps]), np.asarray(labels)
    out = {name: stacked[labels == index].mean(0) for index, name in enumerate(CLASS_NAMES) if (labels == index).any()}
    if len(out) == 2:
        out["AD_minus_CN"] = out["AD"] - out["CN"]
    return out


def _upsampled(channel_map: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    tensor = torch.as_tensor(np.asarray(channel_map, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(tensor, size=tuple(shape), mode="trilinear", align_corners=False)[
        0, 0
    ].numpy()


def channel_differences(
    activations: Sequence[np.ndarray],
    labels: Sequence[int],
    region_maps: Sequence[np.ndarray],
    label_names: Mapping[int, str],
    top: int = 5,
) -> list[dict[str, Any]]:
    """The ``top`` channels of a layer (e.g. layer4) whose mean activation differs most between AD and CN.

    Args:
        activations: per scan, the layer's output ``(channels, d, h, w)``.
        labels: per scan, 0 = CN, 1 = AD.
        region_maps: per scan, the region label map on the model grid (to say where a channel peaks).
        label_names: region label -> name; 0 and unknown labels count as "other".
        top: how many channels.

    Channels are ranked by the absolute standardised difference (Cohen's d with the pooled SD) of their spatially
    averaged activation. For each: the per-class depth profile along the layer's first (time) axis, and the region
    where the channel's map, upsampled to the input grid, peaks in each AD scan (counts, and the most common one).
    """
    labels = np.asarray(labels)
    if not ((labels == 0).any() and (labels == 1).any()):
        return []
    means = np.stack([a.reshape(a.shape[0], -1).mean(1) for a in activations])  # (scans, channels)
    ad, cn = means[labels == 1], means[labels == 0]
    pooled = np.sqrt((ad.var(0, ddof=1 if len(ad) > 1 else 0) + cn.var(0, ddof=1 if len(cn) > 1 else 0)) / 2)
    effect = (ad.mean(0) - cn.mean(0)) / np.where(pooled > 0, pooled, np.inf)
    ranked = np.argsort(-np.abs(effect))[:top]
    out = []
    for channel in ranked:
        maps = np.stack([a[channel] for a in activations])
        profile = {
            name: (maps[labels == index].sum(axis=(2, 3)).mean(0)).tolist() for index, name in enumerate(CLASS_NAMES)
        }
        peak_regions: dict[str, int] = {}
        # Where the channel fires for AD, in each AD scan's own anatomy (its CN activations are the weak side).
        for activation, regions, label in zip(activations, region_maps, labels, strict=True):
            if label != 1:
                continue
            up = _upsampled(activation[channel], regions.shape)
            peak = np.unravel_index(int(np.argmax(up)), up.shape)
            name = label_names.get(int(regions[peak]), "other")
            peak_regions[name] = peak_regions.get(name, 0) + 1
        out.append(
            {
                "channel": int(channel),
                "mean_AD": float(ad[:, channel].mean()),
                "mean_CN": float(cn[:, channel].mean()),
                "cohens_d": float(effect[channel]),
                "depth_profile": profile,
                "peak_region": max(peak_regions, key=peak_regions.get),
                "peak_regions": peak_regions,
            }
        )
    return out


def profile_figure(profiles: Mapping[str, Mapping[str, Any]], axes: Sequence[str], out_png, title: str = ""):
    """One panel per array axis: the AD and CN mean relevance profiles (band: ± 1 SD over scans).

    ``profiles[axis_index_as_str]`` is :func:`class_profiles`' output for that axis; ``axes`` their names.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, len(axes), figsize=(4.2 * len(axes), 3.2), squeeze=False)
    colours = {"CN": "#1f77b4", "AD": "#d62728"}
    for index, (panel, name) in enumerate(zip(panels[0], axes, strict=True)):
        for group, entry in profiles[str(index)].items():
            mean, sd = np.asarray(entry["mean"]), np.asarray(entry["sd"])
            x = np.linspace(0, 100, len(mean))
            panel.plot(x, mean, color=colours[group], label=f"{group} (n={entry['n']})")
            panel.fill_between(x, mean - sd, mean + sd, color=colours[group], alpha=0.2, linewidth=0)
        time_axis = " — the network's time axis" if index == 0 else ""
        panel.set_title(f"axis {index}: {name}{time_axis}", fontsize=9)
        panel.set_xlabel("position along the axis (% of the model grid)")
        panel.set_ylabel("share of positive relevance per slice")
        panel.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def channel_figure(channels: Sequence[Mapping[str, Any]], out_png, layer: str = "layer4"):
    """Per selected channel, its mean activation per frame of the layer's time axis, AD vs CN."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, max(len(channels), 1), figsize=(3.0 * max(len(channels), 1), 2.8), squeeze=False)
    for panel, entry in zip(panels[0], channels, strict=False):
        for group, colour in (("CN", "#1f77b4"), ("AD", "#d62728")):
            values = entry["depth_profile"].get(group)
            if values is not None:
                panel.plot(range(len(values)), values, marker="o", color=colour, label=group)
        panel.set_title(
            f"{layer} ch {entry['channel']}: d={entry['cohens_d']:+.2f}\npeak: {entry['peak_region']}", fontsize=8
        )
        panel.set_xlabel("frame of the time axis (left → right)", fontsize=8)
        panel.legend(fontsize=7)
    panels[0][0].set_ylabel("summed activation")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
