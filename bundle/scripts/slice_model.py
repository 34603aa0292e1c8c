"""The 2D baseline: torchvision's ImageNet resnet18 applied to K slices of each volume, logits averaged.

The slices of one volume go through the same network (shared weights) as a batch of 2D images; the mean of their
logits is the volume's prediction, so training, evaluation and the metrics see one prediction per volume like for
the 3D models, and the splits stay subject-level (same datalists, same transforms).

Where the slices are. The bundle's model-ready volumes are RAS (array axes x: left->right, y: posterior->anterior,
z: inferior->superior), cropped to the brain mask plus a 3 mm margin and resized to a cube; so a position along an
axis is a fraction of the brain's extent, not a millimetre. The default slices are coronal (fixed y), spread evenly
over the fractions of the A-P extent that hold the hippocampi, where radiologists rate medial temporal atrophy on
coronal slices (Scheltens' MTA score). The fractions were measured on the MNI152 2009a template (nilearn's, with the
brain mask cropped as the chain crops it) with the hippocampus regions of preprocessing/synthetic/anatomy.py, which
follow the template's hippocampi (head at y ~ -8 mm, tail at y ~ -38 mm): y in [0.37, 0.57] of the cropped extent;
axial (z) [0.32, 0.45]; sagittal (x) [0.27, 0.36] and [0.64, 0.73] (left and right hippocampus, half of the slices
each). Brains differ in shape and position after cropping, so the slab is a few slices wider than the hippocampus of
a single brain would need; K slices evenly spaced over it (default 8) sample it every ~3 voxels at 128³.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .data import BundleInputError

logger = logging.getLogger(__name__)

# Dimension of a (B, C, D, H, W) batch of RAS volumes that each plane fixes.
SLICE_AXES = {"sagittal": 2, "coronal": 3, "axial": 4}
# Fractions of the cropped brain extent through the hippocampi, per plane (measured on the MNI template, see above).
HIPPOCAMPAL_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "coronal": ((0.37, 0.57),),
    "axial": ((0.32, 0.45),),
    "sagittal": ((0.27, 0.36), (0.64, 0.73)),
}
DEFAULT_SLICE_COUNT = 8
DEFAULT_SLICE_AXIS = "coronal"


def check_slice_settings(slice_axis: str, slice_count: int) -> None:
    if slice_axis not in SLICE_AXES:
        raise BundleInputError(f"--slice_axis must be one of {sorted(SLICE_AXES)}, got '{slice_axis}'.")
    if isinstance(slice_count, bool) or not isinstance(slice_count, int) or slice_count < 1:
        raise BundleInputError(f"--slice_count must be a positive integer, got {slice_count!r}.")


def slice_indices(length: int, slice_axis: str, slice_count: int) -> list[int]:
    """The indices (sorted, distinct) of the slices a volume with ``length`` voxels along ``slice_axis`` gives.

    ``slice_count`` positions evenly spaced over the hippocampal fractions of the axis (centred in equal parts of the
    ranges laid end to end); at small sizes two positions can fall into one voxel, which is then used once.
    """
    ranges = HIPPOCAMPAL_RANGES[slice_axis]
    total = sum(hi - lo for lo, hi in ranges)
    indices = set()
    for k in range(slice_count):
        offset = (k + 0.5) / slice_count * total
        for lo, hi in ranges:
            if offset <= hi - lo:
                indices.add(min(length - 1, int((lo + offset) * length)))
                break
            offset -= hi - lo
    return sorted(indices)


class SliceSettings(nn.Module):
    """The plane and number of slices, as buffers: saved in model.pt so that a trained model keeps using its slices.

    A workflow built with other ``--slice_axis``/``--slice_count`` (e.g. inference.json, which has no such options)
    loads the trained values with the weights.
    """

    def __init__(self, slice_axis: str, slice_count: int) -> None:
        super().__init__()
        self.register_buffer("axis", torch.tensor(0))
        self.register_buffer("count", torch.tensor(1))
        self.set(slice_axis, slice_count)

    def set(self, slice_axis: str, slice_count: int) -> None:
        check_slice_settings(slice_axis, slice_count)
        self.axis.fill_(list(SLICE_AXES).index(slice_axis))
        self.count.fill_(slice_count)

    @property
    def slice_axis(self) -> str:
        return list(SLICE_AXES)[int(self.axis)]

    @property
    def slice_count(self) -> int:
        return int(self.count)


def slice_forward(net: nn.Module, x: torch.Tensor, settings: SliceSettings) -> torch.Tensor:
    """Logits of ``(B, C, D, H, W)`` volumes: ``net`` on each volume's slices, averaged over the slices."""
    dim = SLICE_AXES[settings.slice_axis]
    chosen = slice_indices(x.shape[dim], settings.slice_axis, settings.slice_count)
    slices = x.index_select(dim, torch.as_tensor(chosen, device=x.device))
    # (B, C, ..., K, ...) -> (B, K, C, a, b) -> (B*K, C, a, b): one 2D image per slice, volumes kept together.
    slices = slices.movedim(dim, 1)
    batch, count = slices.shape[:2]
    logits = net(slices.reshape(batch * count, *slices.shape[2:]))
    return logits.view(batch, count, -1).mean(dim=1)
