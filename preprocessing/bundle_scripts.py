"""Find the MONAI bundle folder and load its ``scripts`` package, the way MONAI bundles load their own code.

The per-volume chain and the bundle's components live in ``bundle/`` (``configs/*.json`` and ``scripts/``), so that
batch preprocessing, analysis and bundle inference share one declaration. A bundle is a folder, not an installed
package: MONAI puts ``bundle_root`` on ``sys.path`` when it runs a config. This project's packages do the same
without touching ``sys.path``: they load ``<bundle_root>/scripts`` under its bundle name ``scripts`` with importlib,
so ``from scripts.plan import ...`` works in the packages and in the tests.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

DISTRIBUTION = "ad-t1-mri-r3d18"
ENV_VAR = "AD_BUNDLE_ROOT"


class BundleNotFoundError(RuntimeError):
    """The bundle folder (``configs/`` and ``scripts/``) could not be found."""


def _is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file() and (folder / "scripts" / "__init__.py").is_file()


def bundle_root() -> Path:
    """The bundle folder: ``$AD_BUNDLE_ROOT``, else the source checkout's ``bundle/`` (editable install or a clone),
    else the copy a regular ``pip install .`` puts under ``<prefix>/share/ad-t1-mri-r3d18/bundle``."""
    if os.environ.get(ENV_VAR):
        chosen = Path(os.environ[ENV_VAR]).expanduser()
        if not _is_bundle(chosen):
            raise BundleNotFoundError(
                f"{ENV_VAR}={chosen} is not a MONAI bundle folder (it needs configs/metadata.json and "
                f"scripts/__init__.py). Fix: point it at this project's 'bundle' folder, or unset it."
            )
        return chosen.resolve()
    candidates = [Path(__file__).resolve().parents[1] / "bundle", Path(sys.prefix) / "share" / DISTRIBUTION / "bundle"]
    for folder in candidates:
        if _is_bundle(folder):
            return folder.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise BundleNotFoundError(
        f"no MONAI bundle folder (configs/metadata.json and scripts/) found; tried {tried}. "
        f"Fix: set {ENV_VAR} to the bundle folder of this project (the 'bundle' folder of a clone)."
    )


def load_bundle_scripts() -> ModuleType:
    """Import ``<bundle_root>/scripts`` as the top-level package ``scripts`` (once) and return it.

    Refuses a different ``scripts`` package that is already imported (e.g. another bundle's), since mixing two
    bundles' components in one process would silently use the wrong code.
    """
    root = bundle_root()
    package_dir = root / "scripts"
    loaded = sys.modules.get("scripts")
    if loaded is not None:
        locations = [Path(p).resolve() for p in getattr(loaded, "__path__", [])]
        if package_dir.resolve() in locations:
            return loaded
        raise BundleNotFoundError(
            f"another 'scripts' package is already imported from {locations or loaded!r}, not this bundle's "
            f"{package_dir}. Fix: run from outside other bundles' folders, or set {ENV_VAR}."
        )
    spec = importlib.util.spec_from_file_location(
        "scripts", package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    if spec is None or spec.loader is None:  # pragma: no cover - only with a broken file system
        raise BundleNotFoundError(f"cannot import {package_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["scripts"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["scripts"]
        raise
    return module
