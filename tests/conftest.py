"""Shared test set-up: make the bundle's ``scripts`` package and the repo's ``preprocessing`` package importable."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundle"

for path in (str(BUNDLE_ROOT), str(REPO_ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)
