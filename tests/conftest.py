"""Shared test set-up. The project is installed (``pip install -e .``, done by ``make test``); importing
``preprocessing`` loads the bundle's ``scripts`` package from the bundle folder, as MONAI does for a bundle."""

from __future__ import annotations

from pathlib import Path

import preprocessing

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = preprocessing.bundle_root()
