"""The chain benchmark per grid (``python -m preprocessing benchmark --grid``): what it prints, never how fast."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from preprocessing.benchmark import parse_grid, render_head

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_grid_argument_takes_one_size_or_three():
    assert parse_grid("1.0") == (1.0, 1.0, 1.0)
    assert parse_grid("0.4x0.4x1.5") == (0.4, 0.4, 1.5)
    for bad in ("", "1x2", "0.4x0.4x0", "axbxc", "0.4x0.4x1.5x2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_grid(bad)


def test_rendered_head_has_the_grid_it_was_asked_for():
    image = render_head((3.0, 3.5, 3.2))
    np.testing.assert_allclose(image.header.get_zooms()[:3], (3.0, 3.5, 3.2), atol=1e-4)
    assert np.asarray(image.dataobj).max() > 0


def test_grid_benchmark_prints_every_step_and_the_throughput():
    pytest.importorskip("deepbet")
    result = subprocess.run(
        [sys.executable, "-m", "preprocessing", "benchmark", "--grid", "3", "--scans", "2", "--spacing", "3",
         "--spatial-size", "32"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout
    assert "3x3x3 mm grid" in out and "skull_stripper deepbet" in out
    for step in ("LoadVolumed", "Orientationd", "SkullStripd", "N4BiasCorrectiond", "ResampleToSpacingd",
                 "CubicResized", "ScaleInsideMaskd", "quality", "qc", "total per scan", "batch wall time"):  # fmt: skip
        assert re.search(rf"^\s+{step}.*\d+\.\d+ s$", out, flags=re.MULTILINE), (step, out)
    assert re.search(r"^\s+throughput\s+\d+\.\d+ scans/minute$", out, flags=re.MULTILINE), out
