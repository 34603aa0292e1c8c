"""The project installs as a package: ``pip install -e .`` (and a regular ``pip install .``) in a fresh virtual
environment gives console scripts that run from any folder, and the packages find the bundle without ``sys.path``
edits; nothing large or generated is committed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import BUNDLE_ROOT, REPO_ROOT

from preprocessing import bundle_scripts

CONSOLE_SCRIPTS = {"ad-preprocess": "python -m preprocessing", "ad-analysis": "python -m analysis"}


def _fresh_venv(path: Path) -> Path:
    """A new venv that sees this environment's packages (torch, MONAI...) through a .pth file, so the test checks
    the project's own build and entry points without downloading gigabytes; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "outer_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _pip_install(python: Path, *args: str) -> None:
    # This environment's pip installs into the new one (--python, pip >= 22.3); build isolation fetches setuptools.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", *args],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def _run_scripts(venv: Path, cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", bundle_scripts.ENV_VAR)}
    outputs = {}
    for name in CONSOLE_SCRIPTS:
        result = subprocess.run([str(venv / "bin" / name), "-h"], cwd=cwd, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        outputs[name] = result.stdout
    return outputs


@pytest.mark.slow
def test_editable_install_in_a_fresh_venv_gives_working_console_scripts(tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, "-e", str(REPO_ROOT))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outputs = _run_scripts(tmp_path / "venv", elsewhere)
    assert "{discover,run,split,benchmark,synth}" in outputs["ad-preprocess"]
    assert "explain" in outputs["ad-analysis"] and "crossval" in outputs["ad-analysis"]
    probe = subprocess.run(
        [str(python), "-c", "import analysis, scripts, sys; print(scripts.__path__[0]); print(analysis.BUNDLE_ROOT);"
         f"print({str(BUNDLE_ROOT)!r} in sys.path)"],
        cwd=elsewhere, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert Path(probe[0]) == BUNDLE_ROOT / "scripts" and Path(probe[1]) == BUNDLE_ROOT
    assert probe[2] == "False"  # the bundle was loaded without putting it on sys.path


@pytest.mark.slow
def test_regular_install_carries_the_bundle_folder(tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    # A regular build writes build/ into the source folder, so it runs on a copy of the project.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns(".*", "demo", "build", "*.egg-info", "__pycache__", "wandb", "eval", "*.pt", "*.ts")
    shutil.copytree(REPO_ROOT, source, ignore=ignore)
    _pip_install(python, str(source))
    installed = subprocess.run(
        [str(python), "-c", "import preprocessing; print(preprocessing.bundle_root())"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    root = Path(installed)
    assert root.parts[-3:] == ("share", "ad-t1-mri-r3d18", "bundle")
    assert root != BUNDLE_ROOT and (tmp_path / "venv") in root.parents
    for relative in ("configs/metadata.json", "configs/inference.json", "configs/preprocess.json", "scripts/plan.py"):
        assert (root / relative).is_file(), relative
    _run_scripts(tmp_path / "venv", tmp_path)


def test_bundle_root_refuses_a_wrong_env_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(bundle_scripts.ENV_VAR, str(tmp_path))
    with pytest.raises(bundle_scripts.BundleNotFoundError, match="not a MONAI bundle folder"):
        bundle_scripts.bundle_root()
    monkeypatch.setenv(bundle_scripts.ENV_VAR, str(BUNDLE_ROOT))
    assert bundle_scripts.bundle_root() == BUNDLE_ROOT


def test_another_bundles_scripts_package_is_refused(tmp_path, monkeypatch):
    other = tmp_path / "other_bundle" / "scripts"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    fake = type(sys)("scripts")
    fake.__path__ = [str(other)]
    monkeypatch.setitem(sys.modules, "scripts", fake)
    with pytest.raises(bundle_scripts.BundleNotFoundError, match="another 'scripts' package"):
        bundle_scripts.load_bundle_scripts()


def test_no_committed_file_is_large_or_generated():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    paths = [REPO_ROOT / p for p in files.decode().split("\0") if p]
    assert paths, "git ls-files listed nothing"
    too_big = [str(p.relative_to(REPO_ROOT)) for p in paths if p.is_file() and p.stat().st_size > 1_000_000]
    assert too_big == []
    generated = [str(p) for p in paths if p.suffix in (".pt", ".ts", ".nii", ".gz", ".mgz", ".dcm")]
    assert generated == []


def test_every_module_of_the_packages_and_the_bundle_stays_short():
    # Split a module named after its parts before it grows past ~400 lines (DEVELOPERS.md).
    folders = [REPO_ROOT / "preprocessing", REPO_ROOT / "analysis", BUNDLE_ROOT / "scripts"]
    modules = [path for folder in folders for path in folder.rglob("*.py")]
    assert len(modules) > 40
    long = {str(p.relative_to(REPO_ROOT)): n for p in modules if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
