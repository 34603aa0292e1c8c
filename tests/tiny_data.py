"""Tiny NIfTI datasets written by the tests themselves (the real cohorts cannot be downloaded here)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def write_tiny_dataset(
    root: Path,
    subjects_per_partition: dict[str, int] | None = None,
    scans_per_subject: int = 1,
    size: int = 32,
    seed: int = 0,
    nan_image_ids: tuple[str, ...] = (),
    classes: list[str] | None = None,
) -> Path:
    """Write random volumes and ``datalist.json`` under ``root``; returns the datalist path.

    Subjects alternate CN/AD; AD volumes carry a darker central block so a model has something to learn.
    Images listed in ``nan_image_ids`` are filled with NaN to exercise the non-finite loss guard. With ``classes``
    (e.g. CN, MCI, AD) subjects cycle through the classes, the block darkens with the class index, and the datalist
    records the class list; without it the datalist has no ``classes`` key (the bundle's default CN, AD).
    """
    n_classes = len(classes) if classes else 2
    subjects_per_partition = subjects_per_partition or {"training": 4, "validation": 2, "test": 2}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    datalist: dict[str, list[dict]] = {}
    subject_index = 0
    for partition, n_subjects in subjects_per_partition.items():
        datalist[partition] = []
        for _ in range(n_subjects):
            label = subject_index % n_classes
            subject = f"S{subject_index:03d}"
            subject_index += 1
            for visit in range(scans_per_subject):
                image_id = f"I{subject_index:03d}{visit}"
                volume = rng.normal(1.0, 0.1, size=(size, size, size)).astype(np.float32)
                if label > 0:
                    c = size // 2
                    volume[
                        c - size // 6 : c + size // 6, c - size // 6 : c + size // 6, c - size // 6 : c + size // 6
                    ] *= 0.3 + 0.7 * (n_classes - 1 - label) / (n_classes - 1)
                if image_id in nan_image_ids:
                    volume[:] = np.nan
                path = Path("images") / f"{subject}_{image_id}.nii.gz"
                nib.save(nib.Nifti1Image(volume, np.eye(4)), str(root / path))
                datalist[partition].append(
                    {"image": str(path), "label": label, "subject": subject, "image_id": image_id}
                )
    datalist_path = root / "datalist.json"
    written = {"classes": list(classes), **datalist} if classes else datalist
    datalist_path.write_text(json.dumps(written, indent=2))
    return datalist_path


def write_phantom_scans(
    root: Path, subjects: list[str], shape: tuple[int, int, int], spacing: float
) -> tuple[list[str], list[str]]:
    """Pre-stripped phantom heads (zero background, integer intensities) ``scan<i>.nii.gz`` in ``root``, one per
    subject, alternately CN and AD; returns the ``--nifti-csv`` lines (header first) for the caller to extend."""
    from preprocessing.benchmark import head_phantom

    lines = ["path,subject,label"]
    for i, subject in enumerate(subjects):
        image, brain, affine = head_phantom(shape=shape, spacing=spacing, seed=i)
        volume = np.round(np.where(brain, image, 0)).astype(np.int16)
        nib.save(nib.Nifti1Image(volume, affine), str(root / f"scan{i}.nii.gz"))
        lines.append(f"scan{i}.nii.gz,{subject},{'AD' if i % 2 else 'CN'}")
    return lines
