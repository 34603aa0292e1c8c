"""Shared test set-up. The project is installed (``pip install -e .``, done by ``make test``); importing
``preprocessing`` loads the bundle's ``scripts`` package from the bundle folder, as MONAI does for a bundle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import preprocessing

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = preprocessing.bundle_root()


def bundle_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>`` from the bundle folder, as a user would (W&B off); with ``check``, a
    non-zero exit fails the test with the end of the output."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"bundle CLI failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


@pytest.fixture(scope="module", autouse=True)
def _module_scratch_is_removed(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """Remove what a test module wrote under pytest's base temp folder once the module is done, unless one of its
    tests failed (the folders are kept to look at). A trained r3d_18 leaves 0.5-1.2 GB of checkpoints; pytest keeps
    module-scoped folders to the end of the session, and the whole suite then needed 14 GB, more than a CI machine
    may have free. Function-level folders of passing tests go at once (``tmp_path_retention_policy`` in
    pyproject.toml)."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failures = request.session.testsfailed
    yield
    if request.session.testsfailed == failures:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)
