"""Data preparation for the AD vs CN T1 MRI bundle: discovery, conversion, preprocessing and quality control.

The per-volume chain itself lives in the bundle (``bundle/configs/preprocess.json`` and ``bundle/scripts``) so that
batch preprocessing and bundle inference share one declaration; the bundle folder is made importable here.
"""

import sys
from pathlib import Path

_BUNDLE_ROOT = str(Path(__file__).resolve().parents[1] / "bundle")
if _BUNDLE_ROOT not in sys.path:
    sys.path.insert(0, _BUNDLE_ROOT)
