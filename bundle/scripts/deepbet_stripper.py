"""The deepbet skull-stripping backend (``SkullStripd(method="deepbet")``): optional package, offline, MIT licence.

Used through :mod:`scripts.skull_strip`; a stripper is a callable ``(volume, affine) -> boolean mask`` on the same grid.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


class _DeepBetStripper:
    """deepbet (Fisch et al. 2024, MIT, weights in its wheel), run through its ``BrainExtraction`` class in memory."""

    def __init__(self, device: str | torch.device) -> None:
        try:
            import nibabel as nib
            from deepbet import BrainExtraction
        except ImportError as error:
            raise ImportError(
                "method='deepbet' needs the optional 'deepbet' package: pip install deepbet==1.0.2 "
                "(MIT licence; its weights ship in the wheel, no download at run time)."
            ) from error
        self._nib = nib
        with warnings.catch_warnings():
            # deepbet's models are TorchScript; torch warns that torch.jit.load is deprecated. Nothing to act on here.
            warnings.simplefilter("ignore", FutureWarning)
            # deepbet picks CUDA/MPS by itself unless no_gpu is set.
            self.extractor = BrainExtraction(no_gpu=torch.device(device).type == "cpu")

    def __call__(self, volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
        image = self._nib.Nifti1Image(np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=np.float64))
        with torch.inference_mode():
            # run() reorients to RAS internally and returns the mask in the input's voxel order and affine.
            _, mask_image, _ = self.extractor.run(image)
        return np.asarray(mask_image.dataobj).astype(bool)
