"""Command-line options of ``python -m analysis explain`` (the command itself is :func:`analysis.explain.run.main`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.explain.maps import METHODS, MapSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m analysis explain``."""
    parser.add_argument("--model-dir", type=Path, required=True, help="folder with model.pt (and its plan.json)")
    parser.add_argument("--datalist", type=Path, help="datalist.json written by `preprocessing split`")
    parser.add_argument("--partition", default="test", help="datalist partition to explain (default: test)")
    parser.add_argument("--images", type=Path, help="or: a folder of model-ready volumes (no labels)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--truth-dir", type=Path, help="synthetic cohort's truth/ folder: regions and true atrophy")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="saliency methods")
    parser.add_argument("--target-layer", default=MapSettings.target_layer, help="Grad-CAM layer (default net.layer3)")
    parser.add_argument("--occlusion-mask", type=int, help="occluding cube edge in voxels (default: input edge / 4)")
    parser.add_argument("--occlusion-overlap", type=float, default=MapSettings.occlusion_overlap)
    parser.add_argument("--ig-steps", type=int, default=MapSettings.ig_steps, help="integrated-gradients steps")
    parser.add_argument("--figure-scans", type=int, default=2, help="scans per class that get overlay pictures")
    parser.add_argument("--randomisation-scans", type=int, default=4, help="scans in the randomisation check (0: skip)")
    parser.add_argument(
        "--randomisation-methods", nargs="+", choices=METHODS, help="methods put through it (default: --methods)"
    )
    parser.add_argument("--occlusion-scans", type=int, help="occlusion on this many scans only (default: all)")
    parser.add_argument("--no-native", action="store_true", help="do not map the maps back onto the native scans")
    parser.add_argument("--syn", action="store_true", help="real scans: SyN after the affine template registration")
    parser.add_argument("--margin", type=int, default=1, help="pointing-game dilation of the target regions (voxels)")
    parser.add_argument("--resamples", type=int, default=2000, help="subject-bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
