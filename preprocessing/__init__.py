"""Data preparation for the AD vs CN T1 MRI bundle: discovery, conversion, preprocessing and quality control.

The per-volume chain itself lives in the bundle (``bundle/configs/preprocess.json`` and ``bundle/scripts``) so that
batch preprocessing and bundle inference share one declaration; importing this package loads the bundle's
``scripts`` package from the bundle folder (``preprocessing.bundle_scripts``).
"""

from preprocessing.bundle_scripts import bundle_root, load_bundle_scripts

load_bundle_scripts()

__all__ = ["bundle_root", "load_bundle_scripts"]
