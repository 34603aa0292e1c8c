"""Per-scan features of the volumetric baseline (:mod:`analysis.volumetric`): hippocampal and lateral-ventricle
volumes as fractions of the brain volume, each scan's result cached so that no scan is registered twice.

Everything is measured on the model-ready grid. Its affine gives the voxel volume (the chain's crop and resize to a
cube changes it per axis and per scan), but every feature is a ratio of two volumes counted on the same grid, so the
voxel volume cancels: the features do not depend on the grid size (32³ or 128³) beyond the discretisation.

- brain: the skull stripper's mask on the model grid (``masks/<scan>`` beside ``images/``, or the manifest's
  ``mask`` column); without it the non-zero voxels of the volume with interior holes filled (0.5 % smaller: the
  chain maps the darkest 0.5 % of the brain to 0). Not the intracranial volume: that needs the skull, which the
  model-ready volume no longer has; the mask (brain plus the CSF the stripper keeps) is the head-size normaliser
  that every scan of the chain has.
- ``regions="template"``: the MNI152 regions (:func:`analysis.explain.regions.template_regions_on_grid`, a seeded
  ANTs registration in a worker process). ``hippocampi``: the registered hippocampal labels; with the default
  affine registration they follow the brain's size, not its atrophy (``syn=True`` lets them follow, at about 6
  times the cost). ``lateral_ventricles``: the CSF inside the registered ventricle region grown by
  :data:`VENTRICLE_MARGIN_MM`, CSF being the darkest class of a 3-class Gaussian mixture of the brain's intensities
  (posterior probabilities summed; :func:`csf_probability`); the growth lets enlarged ventricles count beyond the
  template's outline.
- ``regions="truth"``: the synthetic cohort's truth volumes (``<subject>_<image_id>_truth.json``, ``volumes_mm3``),
  an upper bound no real scan has.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from preprocessing.synthetic.truth import find_truth

FEATURES: tuple[str, ...] = ("hippocampi", "lateral_ventricles")
FEATURE_TITLES = {
    "hippocampi": "hippocampal volume / brain volume",
    "lateral_ventricles": "lateral-ventricle volume / brain volume",
}
REGION_SOURCES = ("template", "truth")
# Enlarged ventricles reach past the template's outline. On synthetic cohorts (demo atrophy, 24 scans, at 32³ and
# 128³; generator-default atrophy, 36 scans, at 32³) the AD-CN separation of this feature (Cohen's d) was 6.3, 9.1
# and 1.8 with 6 mm against 3.2, 3.5 and 0.2 without growth and 5.2, 8.9 and 1.8 with 12 mm (more sulcal CSF).
VENTRICLE_MARGIN_MM = 6.0
# Bumped when a feature's definition changes, so that cached records of the old definition are recomputed.
FEATURE_VERSION = 2


@dataclass(frozen=True)
class Scan:
    """One datalist entry: the model-ready volume, its brain mask if one was found, and its identity."""

    image: Path
    mask: Path | None
    subject: str
    image_id: str
    label: int
    partition: str

    @property
    def stem(self) -> str:
        name = self.image.name
        for suffix in (".nii.gz", ".nii", ".mgz", ".mgh"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return self.image.stem


def method_name(regions: str, syn: bool = False, seed: int = 0) -> str:
    """The cache key of a way of measuring: ``truth``, ``template_affine_seed0``, ``template_syn_seed0``."""
    if regions not in REGION_SOURCES:
        raise SystemExit(f"error: --regions must be one of {', '.join(REGION_SOURCES)}, got '{regions}'")
    return "truth" if regions == "truth" else f"template_{'syn' if syn else 'affine'}_seed{int(seed)}"


# ----------------------------------------------------------------------------------------------- measuring


def _load(path: Path, what: str) -> nib.Nifti1Image:
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as error:
        raise SystemExit(f"error: cannot read the {what} {path} ({error}); pass the model-ready volumes") from None
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SystemExit(f"error: the {what} {path} is not a 3D volume (shape {data.shape})")
    return nib.Nifti1Image(np.asarray(data, dtype=np.float32), image.affine)


def voxel_ml(affine: np.ndarray) -> float:
    """Volume of one voxel of the grid, in ml (the affine's determinant: mm³ / 1000)."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0


def brain_of(image: nib.Nifti1Image, mask_path: Path | None) -> tuple[np.ndarray, str]:
    """The brain on the model grid and where it came from: ``mask`` (the stripper's) or ``nonzero``."""
    data = np.asarray(image.dataobj)
    if mask_path is not None:
        mask = np.asarray(_load(mask_path, "brain mask").dataobj) > 0.5
        if mask.shape == data.shape and mask.any():
            return mask, "mask"
    brain = ndimage.binary_fill_holes(data > 0)
    if not brain.any():
        raise SystemExit("error: the volume is empty (all zero); pass the model-ready volumes")
    return brain, "nonzero"


def csf_probability(image: nib.Nifti1Image, brain: np.ndarray, seed: int = 0) -> np.ndarray:
    """Posterior probability of the darkest of 3 Gaussian classes (CSF in a T1; then grey and white matter) fitted to
    the intensities inside ``brain``; 0 outside it.

    The mixture ANTs Atropos fits, without its MRF term, by scikit-learn (k-means start, seeded, at most 200,000
    voxels drawn for the fit). Atropos itself (k-means start, MRF 0.1, 3 iterations) gave the same ventricle feature
    (AUC 1.0 on the synthetic cohort at 32³ and 128³) but took 12 s at 128³ on 2 cores, three times the
    registration, and its posteriors changed by up to 0.1 from one run to the next (ITK's threads); this takes
    0.3-0.5 s (32³) to 1.4 s (128³) and repeats exactly.
    """
    from sklearn.mixture import GaussianMixture

    values = np.asarray(image.dataobj, dtype=np.float64)[brain]
    rng = np.random.default_rng(seed)
    sample = values if values.size <= 200_000 else rng.choice(values, 200_000, replace=False)
    mixture = GaussianMixture(n_components=3, random_state=seed).fit(sample[:, None])
    darkest = int(np.argmin(mixture.means_[:, 0]))
    csf = np.zeros(brain.shape, dtype=np.float64)
    csf[brain] = mixture.predict_proba(values[:, None])[:, darkest]
    return csf


def grown(region: np.ndarray, affine: np.ndarray, margin_mm: float) -> np.ndarray:
    """``region`` and every voxel within ``margin_mm`` of it (Euclidean, in mm on this grid), and at least its face
    neighbours: on a coarse grid (5-7 mm voxels at 32³, sized per brain) a margin in mm alone would take a voxel's
    neighbours along one axis and not another, or in one scan and not the next."""
    if margin_mm <= 0 or not region.any():
        return region
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    return ndimage.distance_transform_edt(~region, sampling=spacing) <= max(margin_mm, float(spacing.max()))


def template_volumes(
    image: nib.Nifti1Image, brain: np.ndarray, syn: bool = False, seed: int = 0
) -> tuple[dict[str, float], np.ndarray, dict[str, float]]:
    """Hippocampal and ventricular volumes (ml) from the MNI152 regions registered onto ``image``, the labels, and the
    seconds that registration (the first call includes the worker's start, ~10 s) and segmentation took."""
    from analysis.explain.regions import LABELS_OF, template_regions_on_grid

    started = time.perf_counter()
    labels = template_regions_on_grid(image, brain, syn=syn, seed=seed)
    registered = time.perf_counter()
    unit = voxel_ml(image.affine)
    hippocampi = np.isin(labels, LABELS_OF["left_hippocampus"] + LABELS_OF["right_hippocampus"])
    ventricles = np.isin(labels, LABELS_OF["lateral_ventricles"])
    csf = csf_probability(image, brain, seed)
    seconds = {"registration": registered - started, "segmentation": time.perf_counter() - registered}
    around = grown(ventricles, image.affine, VENTRICLE_MARGIN_MM)
    volumes = {
        "hippocampi": float(hippocampi.sum()) * unit,
        "lateral_ventricles": float(csf[around].sum()) * unit,
        "lateral_ventricles_region": float(ventricles.sum()) * unit,
    }
    return volumes, labels, seconds


def truth_file(scan: Scan, truth_dir: Path) -> Path:
    """The synthetic truth JSON of ``scan`` (:func:`preprocessing.synthetic.truth.find_truth`, by the image's stem, else
    by ``<subject>_<image_id>``)."""
    for stem in (scan.stem, f"{scan.subject}_{scan.image_id}"):
        path = find_truth(truth_dir, stem)
        if path is not None:
            return path
    raise SystemExit(
        f"error: no truth file {Path(truth_dir) / (scan.stem + '_truth.json')} for {scan.image}; pass --truth-dir "
        "<synthetic cohort>/truth (regions=truth is for the synthetic cohort only)"
    )


def truth_volumes(path: Path) -> dict[str, float]:
    """Hippocampal and ventricular volumes (ml) of a synthetic scan's truth JSON."""
    try:
        volumes = json.loads(Path(path).read_text())["volumes_mm3"]
        return {name: float(volumes[name]) / 1000.0 for name in FEATURES}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"error: {path} is not a truth file of preprocessing synth ({error!r})") from None


def measure(scan: Scan, regions: str, truth_dir: Path | None = None, syn: bool = False, seed: int = 0) -> dict:
    """One scan's record: brain volume, region volumes (ml) and the features (fractions of the brain volume)."""
    image = _load(scan.image, "model-ready volume")
    brain, source = brain_of(image, scan.mask)
    brain_ml = float(brain.sum()) * voxel_ml(image.affine)
    labels, seconds = None, {}
    if regions == "truth":
        if truth_dir is None:
            raise SystemExit("error: --regions truth needs --truth-dir (the synthetic cohort's truth/ folder)")
        volumes = truth_volumes(truth_file(scan, truth_dir))
    else:
        try:
            volumes, labels, seconds = template_volumes(image, brain, syn=syn, seed=seed)
        except RuntimeError as error:  # the worker's traceback: its last line says what failed
            last = str(error).strip().splitlines()[-1]
            raise SystemExit(f"error: template registration of {scan.image} failed: {last}") from None
    record = {
        "image": str(scan.image),
        "sha256": file_hash(scan.image),
        "method": method_name(regions, syn, seed),
        "feature_version": FEATURE_VERSION,
        "brain_source": source,
        "brain_ml": brain_ml,
        "volumes_ml": volumes,
        "features": {name: volumes[name] / brain_ml for name in FEATURES},
        "grid": list(image.shape),
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
    }
    return {**record, "_labels": labels, "_affine": image.affine}


# ----------------------------------------------------------------------------------------------- cache


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir(out_dir: Path) -> Path:
    """``scans/`` in the first folder above ``out_dir`` that is neither ``eval`` nor ``fold_<k>``, so that every fold
    of one run shares it: ``O/fold_0/eval`` -> ``O/scans``; ``O`` (a single datalist) -> ``O/scans``."""
    folder = Path(out_dir)
    while folder.name == "eval" or re.fullmatch(r"fold_\d+", folder.name):
        folder = folder.parent
    return folder / "scans"


def cached_features(
    scan: Scan, cache_dir: Path, regions: str, truth_dir: Path | None = None, syn: bool = False, seed: int = 0
) -> dict:
    """The scan's record from ``cache_dir`` when it was measured the same way from the same bytes; otherwise
    measured now and cached (``<stem>_<method>.json``, with the registered labels as ``..._regions.nii.gz``)."""
    method = method_name(regions, syn, seed)
    path = Path(cache_dir) / f"{scan.stem}_{method}.json"
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except ValueError:  # a torn write: measure again
            record = {}
        same = record.get("feature_version") == FEATURE_VERSION and record.get("method") == method
        if same and record.get("sha256") == file_hash(scan.image):
            return record
    record = measure(scan, regions, truth_dir, syn, seed)
    labels, affine = record.pop("_labels"), record.pop("_affine")
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels is not None:
        nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), str(path.with_name(f"{path.stem}_regions.nii.gz")))
    _atomic_write(path, json.dumps(record, indent=2) + "\n")
    return record


def feature_row(scan: Scan, record: Mapping[str, Any]) -> dict[str, Any]:
    """One row of ``features.csv``: the scan, its partition, brain and region volumes (ml) and the features."""
    row: dict[str, Any] = dict(partition=scan.partition, image_id=scan.image_id, subject=scan.subject, label=scan.label)
    row.update(brain_ml=record["brain_ml"], brain_source=record["brain_source"])
    row.update({f"{name}_ml": value for name, value in record["volumes_ml"].items()})
    row.update({f"{name}_ratio": record["features"][name] for name in FEATURES})
    return row


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
