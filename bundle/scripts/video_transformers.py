"""What s3d, swin3d_t and mvit_v2_s need beyond a new stem and head to run on the bundle's cubic volumes.

- s3d: torchvision ends with ``AvgPool3d((2, 7, 7), stride=1)``, the size of its 16x224x224 feature map; it is
  replaced by a global average (the same numbers at 16x224x224, and any volume of at least 17³ then runs).
- swin3d_t: torchvision pads volumes to whole patches and windows and its relative-position table belongs to the
  (fixed) window, so nothing depends on the input size; only activation checkpointing is added (:func:`swin_forward`).
- mvit_v2_s: built by torchvision for 16x224x224, whose token grid sizes its relative-position tables
  (``rel_pos_h/w/t`` of every attention block) and fixes the grid its ``forward`` assumes. :func:`adapt_mvit` resizes
  the tables to the grid of the bundle's volumes and :func:`mvit_forward` takes the grid from the input.

Activation checkpointing (``--activation_checkpointing True``) recomputes each transformer block's activations in the
backward pass instead of keeping them (torch.utils.checkpoint): the memory of one block instead of all of them, for
about a third more compute.

Attention: torchvision 0.29 computes both transformers' attention explicitly (matmul, softmax, matmul), not with
``scaled_dot_product_attention``. Both add a relative-position bias to every score (MViT: a full queries x keys
tensor per head; Swin: per window plus the shift mask), which a fused kernel would need materialised as an
attention mask of the size of the score matrix, so the saving is small and torchvision's code is left as it is.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

REL_POS_TABLES = ("rel_pos_h", "rel_pos_w", "rel_pos_t")


def _needs_graph(block: nn.Module, x: torch.Tensor) -> bool:
    """Checkpointing only pays where autograd would keep activations: a trainable block or an input with a graph."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in block.parameters()))


def adapt_s3d(net: nn.Module, size: tuple[int, int, int]) -> None:
    """Global average pooling instead of torchvision's fixed (2, 7, 7) window.

    The classifier is a 1x1x1 convolution followed by a mean over positions, so pooling first to one position gives
    the same logits as torchvision at 16x224x224 (where the window covers the whole 2x7x7 map).
    """
    net.avgpool = nn.AdaptiveAvgPool3d(1)


def swin_forward(net: nn.Module, x: torch.Tensor, checkpointing: bool) -> torch.Tensor:
    """torchvision's SwinTransformer3d.forward, with each block checkpointed when ``checkpointing`` is on."""
    if not checkpointing:
        return net(x)
    x = net.pos_drop(net.patch_embed(x))
    for stage in net.features:
        if isinstance(stage, nn.Sequential):  # a stage of Swin blocks (the others are patch merging layers)
            for block in stage:
                x = checkpoint(block, x, use_reentrant=False) if _needs_graph(block, x) else block(x)
        else:
            x = stage(x)
    x = net.norm(x).permute(0, 4, 1, 2, 3)
    return net.head(torch.flatten(net.avgpool(x), 1))


def mvit_forward(net: nn.Module, x: torch.Tensor, checkpointing: bool) -> torch.Tensor:
    """torchvision's MViT.forward with the token grid read from the input instead of the size it was built for.

    torchvision's forward takes the grid from ``pos_encoding`` (16x224x224 -> 8x56x56 tokens), so any other volume
    fails in the first pooling layer; here it is the shape of the patch embedding. Each block's attention then adds
    relative positions for that grid, interpolating the tables where their length differs (torchvision's
    ``_add_rel_pos``), which never happens at the size :func:`adapt_mvit` built them for.
    """
    x = net.conv_proj(x)
    thw = tuple(x.shape[2:])
    x = net.pos_encoding(x.flatten(2).transpose(1, 2))  # relative positions: this only prepends the class token
    for block in net.blocks:
        if checkpointing and _needs_graph(block, x):
            x, thw = checkpoint(block, x, thw, use_reentrant=False)
        else:
            x, thw = block(x, thw)
    x = net.norm(x)
    return net.head(x[:, 0])  # the class token


def mvit_table_lengths(net: nn.Module, size: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """(h, w, t) lengths of each block's relative-position tables for volumes of ``size``.

    The lengths torchvision's attention uses at run time: ``2 * max(query, key grid) - 1`` along each axis, with the
    query and key grids pooled by the block's strides (ceil division, as a padded 3x3x3 convolution pools).
    """
    stride = net.conv_proj.stride
    grid = [math.ceil(s / st) for s, st in zip(size, stride, strict=True)]
    lengths = []
    for block in net.blocks:
        attn = block.attn
        stride_q = attn.pool_q.pool.stride if attn.pool_q is not None else (1, 1, 1)
        stride_kv = attn.pool_k.pool.stride if attn.pool_k is not None else (1, 1, 1)
        q = [math.ceil(g / s) for g, s in zip(grid, stride_q, strict=True)]
        kv = [math.ceil(g / s) for g, s in zip(grid, stride_kv, strict=True)]
        t, h, w = (2 * max(a, b) - 1 for a, b in zip(q, kv, strict=True))
        lengths.append((h, w, t))
        grid = q
    return lengths


def resize_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """``table`` (positions x channels) linearly interpolated to ``length`` positions along the position axis.

    Exactly what torchvision's ``mvit._interpolate`` does at run time when a table does not fit the grid, so a model
    resized here computes what torchvision computes with the original tables on the same input (tested); storing the
    resized table makes it a parameter of the size that is used, fine-tuned entry by entry and saved in model.pt.
    Linear stretching keeps each bias at the same fraction of the field of view, where cropping or padding would keep
    it at the same token distance: the video tables were learnt on a grid of 8x56x56 tokens, the bundle's 128³
    volumes give 64x32x32, so neither is the pretrained geometry and the stretch is the choice torchvision (and MViT's
    authors, for fine-tuning at other resolutions) made.
    """
    if table.shape[0] == length:
        return table
    return F.interpolate(table.t().unsqueeze(0), size=length, mode="linear").squeeze(0).t()


def adapt_mvit(net: nn.Module, size: tuple[int, int, int]) -> None:
    """Resize every relative-position table to the token grid of ``size`` volumes (see :func:`resize_table`).

    Also records the grid in ``pos_encoding`` (what torchvision's own forward would use); with relative positions
    mvit_v2_s has no absolute positional embedding whose size would depend on the input.
    """
    for block, (h, w, t) in zip(net.blocks, mvit_table_lengths(net, size), strict=True):
        attn = block.attn
        with torch.no_grad():
            for name, length in zip(REL_POS_TABLES, (h, w, t), strict=True):
                setattr(attn, name, nn.Parameter(resize_table(getattr(attn, name).detach(), length).contiguous()))
    grid = [math.ceil(s / st) for s, st in zip(size, net.conv_proj.stride, strict=True)]
    net.pos_encoding.temporal_size, net.pos_encoding.spatial_size = grid[0], (grid[1], grid[2])


def is_size_dependent(key: str) -> bool:
    """Whether a state-dict entry's first dimension depends on the input size (MViT's relative-position tables)."""
    return key.rsplit(".", 1)[-1] in REL_POS_TABLES


def adopt_table_lengths(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: take the relative-position table lengths of the checkpoint being loaded.

    A model trained at 32³ has shorter tables than one built for 128³ (e.g. by a config that does not pass the
    volumes' size); its tables are used as they are, and the attention interpolates them where the grid differs.
    The Parameter objects stay the same (only their data is replaced), so an optimizer holding them is unaffected.
    """
    for name, param in module.named_parameters():
        incoming = state_dict.get(prefix + name)
        if (
            is_size_dependent(name)
            and isinstance(incoming, torch.Tensor)
            and incoming.shape != param.shape
            and incoming.shape[1:] == param.shape[1:]
        ):
            param.data = param.data.new_empty(incoming.shape)
