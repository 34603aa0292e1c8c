"""Time the per-volume chain (``bundle/configs/preprocess.json``) step by step.

``--grid 1.0`` (or ``0.4x0.4x1.5``, any voxel size in mm): a batch throughput measurement. Synthetic MNI-derived
heads (``preprocessing.synthetic``: scalp, skull, bias field, noise) are rendered on that grid, written as NIfTI to a
temporary folder and run through the real batch (``preprocessing.pipeline.run_batch``) with deepbet, the default
workers, QC checks and QC pictures; it prints each step's median seconds per scan (from the manifest's ``seconds_*``)
and the batch's scans per minute, worker start-up included.

Without ``--grid``: the chain alone on a 1 mm phantom head in this process. SynthStrip's weights cannot be shipped,
so unless ``--synthstrip-weights`` is given the network is replaced by a stand-in that returns the phantom's exact
signed distance on the conformed grid. Everything around the network (conforming, intensity scaling, resampling
back, mask clean-up) runs for real and is timed; the stand-in's own time is subtracted, and one forward pass of the
real architecture (random weights) is timed separately.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from torch import nn

HEAD_SHAPE = (180, 220, 180)


def head_phantom(
    shape: tuple[int, int, int] = HEAD_SHAPE, spacing: float = 1.0, seed: int = 0, bias_strength: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A T1-like head: white matter core, grey matter shell, CSF, skull and scalp, a smooth multiplicative bias field
    (``bias_strength`` 0 for none) and noise. Returns ``(image, brain_mask, affine)``; the affine is RAS, centred on
    the head."""
    rng = np.random.default_rng(seed)
    axes = [(np.arange(n) - (n - 1) / 2) * spacing for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    semi_axes = np.array([68.0, 85.0, 70.0])  # brain half-widths in mm (left-right, front-back, up-down)
    radius = np.sqrt((x / semi_axes[0]) ** 2 + (y / semi_axes[1]) ** 2 + (z / semi_axes[2]) ** 2)
    brain = radius < 1.0
    image = np.zeros(shape, np.float32)
    image[radius < 1.18] = 0.15  # scalp fat and skin
    image[radius < 1.10] = 0.05  # skull (dark on T1)
    image[radius < 1.05] = 0.20  # CSF
    image[brain] = 0.55  # grey matter
    image[radius < 0.75] = 0.85  # white matter
    folds = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3.0)
    image[brain & (radius > 0.75)] += 2.0 * folds[brain & (radius > 0.75)]
    bias = np.exp(bias_strength * (0.25 * x / semi_axes[0] + 0.2 * y * z / (semi_axes[1] * semi_axes[2])))
    image = image * bias + 0.02 * rng.standard_normal(shape)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * spacing for n in shape]
    return np.clip(image, 0, None).astype(np.float32) * 1000, brain, affine


class PhantomDistance(nn.Module):
    """Stand-in for SynthStripNet: the phantom brain's approximate signed distance (mm) on the conformed grid."""

    def __init__(self, semi_axes=(68.0, 85.0, 70.0)) -> None:
        super().__init__()
        self.semi_axes = np.asarray(semi_axes)
        self.grid_affine: np.ndarray | None = None
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device
        self.seconds: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        shape = x.shape[2:]
        ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
        world = ijk @ self.grid_affine[:3, :3].T.astype(np.float32) + self.grid_affine[:3, 3].astype(np.float32)
        radius = np.sqrt(((world / self.semi_axes.astype(np.float32)) ** 2).sum(-1))
        distance = (radius - 1.0) * float(self.semi_axes.min())
        self.seconds.append(time.perf_counter() - start)
        return torch.from_numpy(distance)[None, None]


def run_benchmark(repeats: int = 1, synthstrip_weights: Path | None = None, time_forward: bool = True) -> dict:
    """Seconds per step (median over ``repeats``) for one phantom scan, and the total with and without the network."""
    from scripts import skull_strip
    from scripts.preprocess import load_chain, run_chain_timed

    torch.set_num_threads(max(1, torch.get_num_threads()))
    image, _, affine = head_phantom()
    workdir = tempfile.TemporaryDirectory(prefix="chain_benchmark_")
    path = Path(workdir.name) / "phantom_head.nii.gz"
    # Store it the way a sagittal acquisition often is (P, S, R axes), so the orientation step has work to do.
    to_psr = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(("P", "S", "R"))
    )
    stored = nib.Nifti1Image(image, affine).as_reoriented(to_psr)
    nib.save(stored, str(path))

    chain = load_chain(synthstrip_weights=str(synthstrip_weights) if synthstrip_weights else None)
    strip = next(t for t in chain.transforms if isinstance(t, skull_strip.SkullStripd))
    stand_in = None
    if synthstrip_weights is None:
        stand_in = PhantomDistance()
        # The stand-in needs the conformed grid, so the function that makes it is wrapped where synthstrip_mask looks
        # it up (its own module).
        mask_module = sys.modules[skull_strip.synthstrip_mask.__module__]
        original_conform = mask_module.conform_grid

        def conform_and_remember(volume, affine_, *args, **kwargs):
            shape, grid_affine = original_conform(volume, affine_, *args, **kwargs)
            stand_in.grid_affine = grid_affine
            return shape, grid_affine

        mask_module.conform_grid = conform_and_remember
        strip._stripper = lambda volume, affine_: skull_strip.synthstrip_mask(stand_in, volume, affine_, strip.border)

    runs = []
    try:
        for _ in range(repeats):
            if stand_in is not None:
                stand_in.seconds.clear()
            _, seconds = run_chain_timed(chain, {"image": str(path)})
            if stand_in is not None:
                seconds["SkullStripd"] -= sum(stand_in.seconds)
            runs.append(seconds)
    finally:
        workdir.cleanup()
        if stand_in is not None:
            mask_module.conform_grid = original_conform
    steps = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    result = {"steps": steps, "total_without_network": sum(steps.values())}
    if time_forward:
        net = skull_strip.SynthStripNet().eval().to(memory_format=torch.channels_last_3d)
        volume = torch.rand(1, 1, 256, 256, 256).contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode():
            start = time.perf_counter()
            net(volume)
            result["synthstrip_forward_256"] = time.perf_counter() - start
    return result


def parse_grid(text: str) -> tuple[float, float, float]:
    """``"1.0"`` or ``"0.4x0.4x1.5"``: voxel sizes in mm along the stored rows, columns and slices of a sagittal scan
    (so the last is the slice spacing)."""
    try:
        sizes = [float(part) for part in str(text).lower().split("x")]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes *= 3
    if len(sizes) != 3 or not all(0.2 <= size <= 8.0 for size in sizes):
        raise argparse.ArgumentTypeError(f"a grid is one voxel size or AxBxC, each 0.2-8 mm; got {text!r}")
    return tuple(sizes)


def render_head(grid: tuple[float, float, float], seed: int = 0) -> nib.Nifti1Image:
    """One synthetic head (``preprocessing.synthetic``) on a sagittal grid with voxels ``grid`` (rows, columns,
    slices), whole-head field of view, as the scanner stored it (not RAS)."""
    import dataclasses

    from preprocessing.synthetic.planning import plan_cohort
    from preprocessing.synthetic.rendering import render_scan

    subject = plan_cohort(n_subjects=1, seed=seed, visits=(1, 1))[0]
    # The renderer takes one in-plane size for rows and columns; a different column size is interpolated after.
    subject = dataclasses.replace(subject, in_plane_mm=grid[0], slice_mm=grid[2])
    scan = render_scan(subject)
    volume, affine = scan.volume.astype(np.float32), scan.geometry.affine.copy()
    if not np.isclose(grid[1], grid[0]):
        zoom = grid[0] / grid[1]
        volume = ndimage.zoom(volume, (1.0, zoom, 1.0), order=1, grid_mode=True, mode="nearest")
        affine[:3, 1] *= grid[1] / grid[0]
    return nib.Nifti1Image(volume, affine)


def run_grid_benchmark(
    grid: tuple[float, float, float],
    scans: int = 6,
    workers: int | None = None,
    overrides: dict | None = None,
    seed: int = 0,
) -> dict:
    """Throughput of the real batch on ``scans`` copies of one synthetic head on ``grid``: median seconds per step
    (manifest ``seconds_*``), the batch's wall time and scans per minute."""
    import os

    from preprocessing.pipeline import STEP_PREFIX, run_batch

    image = render_head(grid, seed)
    workers = workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="grid_benchmark_") as folder:
        records = []
        for n in range(scans):
            path = Path(folder) / "raw" / f"head_{n}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(image, str(path))
            records.append({"image_id": f"I{n}", "subject": f"S{n:03d}", "group": "CN", "nifti_path": str(path)})
        start = time.perf_counter()
        rows = run_batch(records, Path(folder) / "out", workers=workers, chain_overrides=dict(overrides or {}))
        wall = time.perf_counter() - start
    steps = {
        key[len(STEP_PREFIX) :]: statistics.median(float(row[key]) for row in rows if row.get(key) not in (None, ""))
        for key in dict.fromkeys(k for row in rows for k in row if k.startswith(STEP_PREFIX))
    }
    return {
        "shape": image.shape, "steps": steps, "wall": wall, "scans": scans, "workers": min(workers, scans),
        "scans_per_minute": 60.0 * scans / wall, "status": [str(row.get("status")) for row in rows],
        "errors": [row["error"] for row in rows if row.get("error")],
    }  # fmt: skip


def print_grid_benchmark(grid: tuple[float, float, float], result: dict, overrides: dict) -> None:
    """The per-step table and the throughput of :func:`run_grid_benchmark`."""
    import os

    settings = ", ".join(f"{k} {v}" for k, v in overrides.items())
    print(
        f"Batch of {result['scans']} synthetic heads on a {'x'.join(f'{g:g}' for g in grid)} mm grid "
        f"({'x'.join(map(str, result['shape']))} voxels), {settings}, {result['workers']} workers on "
        f"{os.cpu_count()} CPU cores; median seconds per scan and step:"
    )
    for name, seconds in result["steps"].items():
        if name != "total":
            print(f"  {name:<40s}{seconds:7.2f} s")
    print(f"  {'total per scan (one worker)':<40s}{result['steps'].get('total', float('nan')):7.2f} s")
    print(f"  {'batch wall time':<40s}{result['wall']:7.2f} s")
    print(f"  {'throughput':<40s}{result['scans_per_minute']:7.2f} scans/minute")
    for error in result["errors"]:
        print(f"  note: a scan reported: {error}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="runs of the chain; the median is reported")
    parser.add_argument("--synthstrip-weights", type=Path, default=None, help="real synthstrip.1.pt, if you have it")
    parser.add_argument("--no-forward", action="store_true", help="skip timing a SynthStrip forward pass at 256³")
    parser.add_argument(
        "--grid", type=parse_grid, default=None, metavar="MM",
        help="time a batch of synthetic heads with this voxel size (1.0, 0.4x0.4x1.5: rows x columns x slices)",
    )  # fmt: skip
    parser.add_argument("--scans", type=int, default=6, help="heads in the --grid batch (default 6)")
    parser.add_argument("--workers", type=int, default=None, help="--grid batch workers (default: one per core)")
    parser.add_argument("--skull-stripper", default="deepbet", help="--grid batch stripper (default deepbet)")
    parser.add_argument("--spacing", type=float, default=None, help="--grid batch resampling (default: the config's)")
    parser.add_argument("--spatial-size", type=int, default=None, help="--grid batch cube edge (default: config's)")
    args = parser.parse_args(argv)
    if args.grid is not None:
        overrides = {"skull_stripper": args.skull_stripper}
        overrides.update({k: v for k, v in (("spacing", args.spacing), ("spatial_size", args.spatial_size)) if v})
        print_grid_benchmark(args.grid, run_grid_benchmark(args.grid, args.scans, args.workers, overrides), overrides)
        return
    result = run_benchmark(args.repeats, args.synthstrip_weights, not args.no_forward)
    print(f"Per-volume chain on a {'x'.join(map(str, HEAD_SHAPE))} 1 mm head, {torch.get_num_threads()} threads:")
    for name, seconds in result["steps"].items():
        print(f"  {name:<40s}{seconds:7.2f} s")
    print(f"  {'total without the SynthStrip network':<40s}{result['total_without_network']:7.2f} s")
    if "synthstrip_forward_256" in result:
        print(f"  {'one SynthStrip forward pass (256³)':<40s}{result['synthstrip_forward_256']:7.2f} s")


if __name__ == "__main__":
    main()
