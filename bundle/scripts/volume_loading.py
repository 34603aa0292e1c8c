"""Reading and admitting input volumes, the first steps of the chain (``configs/preprocess.json``).

- ``LoadVolumed``: MONAI's loader that also reads FreeSurfer ``.mgz``/``.mgh`` and names the file when it cannot read.
- ``CheckVolumed``: refuses 2D images, several volumes in one file, non-finite and constant volumes.
- ``ZeroBackgroundd``: brings a scan stored with a negative intensity offset back to a zero background.

Used through :mod:`scripts.preprocess`, which re-exports every name here (the configs name them
``scripts.preprocess.*``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import NibabelReader
from monai.data.utils import is_supported_format
from monai.transforms import LoadImage, LoadImaged, MapTransform

# Suffixes read with nibabel. MONAI's NibabelReader claims only .nii/.nii.gz and sends everything else to ITK, whose
# pip wheels have no FreeSurfer MGH reader ("Could not create IO object" for .mgz); nibabel reads MGH natively and
# NibabelReader already handles its header ("dims"), so only the suffix check is widened.
NIBABEL_SUFFIXES = ("nii", "nii.gz", "mgz", "mgh")
SUPPORTED_FORMATS = (
    "NIfTI (.nii, .nii.gz), FreeSurfer (.mgz, .mgh), and what ITK reads (e.g. .nrrd, .mha, .mhd) "
    "(DICOM series: convert first with python -m preprocessing run)"
)


class ImageReadError(RuntimeError):
    """An input image that no reader could load; the message names the file and the supported formats."""


class NibabelVolumeReader(NibabelReader):
    """MONAI's NibabelReader for NIfTI and FreeSurfer MGH (``.mgz``/``.mgh``) files."""

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        return is_supported_format(filename, NIBABEL_SUFFIXES)


class LoadVolume(LoadImage):
    """``LoadImage`` with :class:`NibabelVolumeReader` preferred for its suffixes and ITK for the rest, failing with
    :class:`ImageReadError` that names the file, the reader's reason and the supported formats.

    The reader is registered after the defaults rather than passed as ``reader=``: a given reader turns off MONAI's
    choice by suffix, and then every reader is tried in turn on a broken file and the error is a pile of tracebacks.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(None, *args, **kwargs)
        self.register(NibabelVolumeReader())  # the last registered is asked first

    def __call__(self, filename: Any, reader: Any = None) -> Any:
        try:
            return super().__call__(filename, reader)
        except Exception as error:
            names = [str(f) for f in (filename if isinstance(filename, (list, tuple)) else [filename])]
            raise ImageReadError(
                f"Cannot read {', '.join(names)}: {_first_line(error)}. Supported formats: {SUPPORTED_FORMATS}."
            ) from error


def _first_line(error: BaseException, limit: int = 300) -> str:
    """A one-line reason: ITK and MONAI put several paragraphs into their messages."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if isinstance(error, FileNotFoundError):
        text = "no such file"
    text = text.rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class LoadVolumed(LoadImaged):
    """``LoadImaged`` through :class:`LoadVolume`: NIfTI and FreeSurfer MGH with nibabel, other formats with ITK, and
    a clear :class:`ImageReadError` for a file nothing can read.

    Args:
        keys: keys holding file names.
        dtype: array type after loading.
        image_only: return MetaTensors only (no separate meta dict).
        ensure_channel_first: add or move the channel to the first axis.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        dtype: Any = np.float32,
        image_only: bool = True,
        ensure_channel_first: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys,
            dtype=dtype,
            image_only=image_only,
            ensure_channel_first=ensure_channel_first,
            allow_missing_keys=allow_missing_keys,
        )
        self._loader = LoadVolume(image_only=image_only, dtype=dtype, ensure_channel_first=ensure_channel_first)


class CheckVolumed(MapTransform):
    """Refuse what the chain cannot turn into a brain volume, with a reason a user can act on: 2D images
    (localizers), several volumes in one file, NaN/inf voxels, constant (empty) volumes.

    Args:
        keys: image key(s) to check.
        min_size: smallest accepted size of each spatial axis, in voxels.
    """

    def __init__(self, keys: KeysCollection = "image", min_size: int = 8, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.min_size = min_size

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            shape = tuple(image.shape)
            if len(shape) != 4 or min(shape[1:]) < self.min_size:
                raise ValueError(
                    f"Not a 3D volume: spatial shape {shape[1:]} (a 2D image or localizer?); "
                    f"each axis needs at least {self.min_size} voxels."
                )
            if shape[0] != 1:
                raise ValueError(f"{shape[0]} volumes in one file; expected a single 3D T1 volume.")
            if not bool(torch.isfinite(torch.as_tensor(image)).all()):
                raise ValueError("The volume contains NaN or infinite voxels.")
            if float(image.max()) == float(image.min()):
                raise ValueError(f"Empty volume: every voxel equals {float(image.max())}.")
        return d


class ZeroBackgroundd(MapTransform):
    """Shift a scan stored with a negative intensity offset so that its background is 0.

    MR magnitude images are non-negative with air (or the fill of a pre-stripped scan) at 0, and two steps rely on
    it: N4 models a multiplicative field on the intensities, and the ``none`` stripper takes the non-zero voxels as
    the brain. A scan written with an offset (e.g. a background of -1000) would make the whole box "brain" and give N4
    shifted values. The background level is the median of the volume's six faces (air in a raw scan, the fill in a
    pre-stripped one, even where the head touches a face); when it is negative it is subtracted. Scans whose background
    is not negative are returned unchanged, so small negative values inside a pre-stripped brain (spline ringing)
    leave its zero background alone.

    Args:
        keys: image key(s); the offset is measured and removed per key.
    """

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            level = border_level(torch.as_tensor(image)[0].detach().cpu().numpy())
            if level < 0:
                d[key] = image - torch.as_tensor(level, dtype=image.dtype)
        return d


def border_level(volume: np.ndarray) -> float:
    """Median intensity of the six faces of a 3D volume."""
    faces = [np.take(volume, index, axis=axis).ravel() for axis in range(3) for index in (0, -1)]
    return float(np.median(np.concatenate(faces)))
