"""External validation without leakage: a model is never tested on a person or an image it was trained on.

Training writes ``<ckpt_dir>/training_data.json`` (:func:`write_training_record`): the subject keys
(:func:`scripts.subject_ids.subject_key`) and the content hashes (:func:`volume_hash`) of every training and
validation scan. Evaluation (:func:`check_test_not_in_training`, the last ``initialize`` step of configs/evaluate.json)
refuses a test datalist with a scan whose subject key or volume hash is in the record beside the model file. The same
check passes for a model's own internal test partition, whose subjects the subject-level split kept apart.

Both comparisons are needed: ids alone miss the same scan shipped by two cohorts or re-exported under a new id
(ADNI data also sits in other collections), and a hash alone misses a second scan of a training subject.
:func:`check_no_training_overlap` is the standalone form (entries in memory against a model's folder), and
:func:`check_disjoint` compares test entries with training entries before any model exists (``analysis crossval``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .data import PARTITIONS, BundleInputError, load_partition, read_datalist
from .subject_ids import subject_key

logger = logging.getLogger(__name__)

RECORD_NAME = "training_data.json"
RECORD_FORMAT = 1
PROGRESS_FROM = 50  # log progress when hashing more volumes than this (1,000 128³ volumes take about a minute)
SHOWN = 5  # scans named in a refusal; the rest are counted


def volume_hash(path: str | Path) -> str:
    """sha256 hex digest of a volume's shape and its voxel values as little-endian float32 in C order.

    Only the values count: the same volume saved as ``.nii`` or ``.nii.gz``, under another name or with another
    header description hashes the same; one changed voxel changes the hash. Scaled integer files count by their
    scaled values. ``-0.0`` counts as ``0.0`` and every NaN as one NaN, so that re-saving cannot change the hash.
    One volume is in memory at a time (a 128³ volume is 8 MiB).
    """
    image = nib.load(str(path))
    data = np.ascontiguousarray(np.asarray(image.dataobj, dtype=np.float32), dtype="<f4")
    data += np.float32(0.0)  # -0.0 + 0.0 == +0.0: one byte pattern for zero
    data[np.isnan(data)] = np.nan
    digest = hashlib.sha256(f"shape={'x'.join(str(n) for n in data.shape)};float32le;".encode())
    digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


def _hash_all(paths: Sequence[str | Path], what: str) -> list[str]:
    """Hashes of ``paths`` in order, with a log line every tenth of the way for long lists."""
    hashes, step = [], max(1, len(paths) // 10)
    if len(paths) > PROGRESS_FROM:
        logger.info(f"Hashing {len(paths)} volumes of {what} (content check against training data) ...")
    for done, path in enumerate(paths, start=1):
        hashes.append(volume_hash(path))
        if len(paths) > PROGRESS_FROM and (done % step == 0 or done == len(paths)):
            logger.info(f"Hashed {done}/{len(paths)} volumes of {what}")
    return hashes


def _image_id(entry: Mapping[str, Any]) -> str:
    return str(entry.get("image_id") or Path(str(entry["image"])).name)


def build_training_record(datalist: str | Path | None, entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The record of training+validation ``entries`` (``image`` paths readable from here, ``subject``, ``image_id``).

    ``subjects`` and ``images`` are the agreed format (version 1); ``subject_scans`` (subject key -> image ids) lets a
    refusal name the training scans of a matched subject.
    """
    hashes = _hash_all([str(e["image"]) for e in entries], "the training and validation data")
    images: dict[str, str] = {}
    subject_scans: dict[str, list[str]] = {}
    for entry, digest in zip(entries, hashes, strict=True):
        images.setdefault(digest, _image_id(entry))
        if entry.get("subject") is not None:
            subject_scans.setdefault(subject_key(str(entry["subject"])), []).append(_image_id(entry))
    return {
        "format": RECORD_FORMAT,
        "datalist": None if datalist is None else str(Path(datalist).resolve()),
        "subjects": sorted(subject_scans),
        "images": images,
        "subject_scans": {key: sorted(set(ids)) for key, ids in sorted(subject_scans.items())},
    }


def _merge(earlier: Mapping[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """``record`` plus what only ``earlier`` holds (a resumed model has seen both)."""
    merged = dict(record)
    merged["images"] = {**earlier.get("images", {}), **record["images"]}
    scans: dict[str, set[str]] = {}
    for source in (earlier.get("subject_scans", {}), record["subject_scans"]):
        for key, ids in source.items():
            scans.setdefault(key, set()).update(ids)
    merged["subject_scans"] = {key: sorted(ids) for key, ids in sorted(scans.items())}
    merged["subjects"] = sorted(set(earlier.get("subjects", [])) | set(record["subjects"]) | set(scans))
    earlier_lists = [*earlier.get("earlier_datalists", []), earlier.get("datalist")]
    merged["earlier_datalists"] = sorted({d for d in earlier_lists if d and d != record["datalist"]})
    return merged


def _write_atomically(path: Path, record: Mapping[str, Any]) -> None:
    """Write to a temporary file beside ``path``, then rename: a crash never leaves half a record."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the record is read by whoever evaluates the model
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_training_record(
    ckpt_dir: str | Path, datalist: str | Path, entries: Sequence[Mapping[str, Any]], resume: bool = True
) -> Path:
    """Write ``<ckpt_dir>/training_data.json`` for training+validation ``entries`` (main process only).

    Rewritten at every start. If the data differ from an earlier run's record in the same ``ckpt_dir`` while that
    folder still holds checkpoints (``*.pt``) and ``resume`` is on, the weights may have seen both, so the record
    keeps both, with a warning; otherwise the new record replaces the old one (also with a warning).
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / RECORD_NAME
    record = build_training_record(datalist, entries)
    try:
        earlier = _read_json(path)
    except BundleInputError as unreadable:
        logger.warning(f"{unreadable.message}; replaced by this run's record (earlier runs' data cannot be kept).")
        earlier = None
    if earlier is not None and (
        set(earlier.get("images", {})) != set(record["images"]) or earlier.get("subjects") != record["subjects"]
    ):
        added = len(set(record["images"]) - set(earlier.get("images", {})))
        removed = len(set(earlier.get("images", {})) - set(record["images"]))
        change = f"the training data changed since the earlier run in {ckpt_dir} ({added} scan(s) new, {removed} gone)"
        if resume and any(ckpt_dir.glob("*.pt")):
            record = _merge(earlier, record)
            logger.warning(
                f"{change}; {path.name} keeps both, since the checkpoints there were trained on the earlier data, so "
                f"external tests refuse scans of either. Use a new --ckpt_dir to train on this datalist alone."
            )
        else:
            logger.warning(f"{change}; {path.name} now records this run's data only.")
    _write_atomically(path, record)
    logger.info(
        f"Recorded {len(record['subjects'])} subject(s) and {len(record['images'])} volume hash(es) of the training "
        f"data in {path}"
    )
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise BundleInputError(
            f"{path} is not a training-data record of this bundle (format {RECORD_FORMAT}). Fix: restore it from the "
            f"training run, or retrain (training writes it)"
        )
    return record


def read_training_record(model_dir_or_record: str | Path) -> dict[str, Any] | None:
    """The record in a folder (a model's ``ckpt_dir``) or at a path; None when there is none."""
    path = Path(model_dir_or_record)
    return _read_json(path / RECORD_NAME if path.is_dir() else path)


@dataclass(frozen=True)
class Overlap:
    """A test scan found in the training data: ``why`` names the training subject or scan it matches."""

    image_id: str
    subject: str | None
    why: str


def training_overlap(test_entries: Iterable[Mapping[str, Any]], record: Mapping[str, Any]) -> list[Overlap]:
    """Test entries whose subject key or volume hash is in ``record``, in datalist order (pure: raises nothing)."""
    entries = list(test_entries)
    hashes = _hash_all([str(e["image"]) for e in entries], "the test data") if entries else []
    subjects, images = set(record.get("subjects", [])), record.get("images", {})
    scans = record.get("subject_scans", {})
    found = []
    for entry, digest in zip(entries, hashes, strict=True):
        subject = None if entry.get("subject") is None else str(entry["subject"])
        reasons = []
        if subject is not None and subject_key(subject) in subjects:
            key = subject_key(subject)
            training = ", ".join(scans.get(key, [])[:3]) or "recorded"
            reasons.append(f"subject {subject} = training subject {key} (scans {training})")
        if digest in images:
            reasons.append(f"same image as training scan {images[digest]}")
        if reasons:
            found.append(Overlap(_image_id(entry), subject, "; ".join(reasons)))
    return found


def overlap_message(found: Sequence[Overlap], what: str, source: str | Path) -> str:
    """One line naming up to :data:`SHOWN` overlapping scans, their count, and the fix."""
    shown = "; ".join(f"{o.image_id} ({o.why})" for o in found[:SHOWN])
    more = f"; and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    return (
        f"{len(found)} test scan(s) in {what} are in the model's training or validation data ({source}): "
        f"{shown}{more}. Testing a model on the people or images it learned from inflates its results. Fix: remove "
        f"these scans from the external test datalist, or evaluate a model trained without them"
    )


def _warn_no_record(where: str | Path, what: str) -> None:
    logger.warning(
        f"No {RECORD_NAME} in {where} (a model trained before this check existed, or the record was not copied "
        f"with it): cannot check that {what} shares no subject or image with the model's training data."
    )


def check_no_training_overlap(
    test_entries: Iterable[Mapping[str, Any]], model_dir_or_record: str | Path, what: str = "the test data"
) -> None:
    """Raise :class:`BundleInputError` when a test entry (``image`` readable from here, ``subject``) overlaps the
    training record (a model's folder or the record file); only a warning when there is no record."""
    record = read_training_record(model_dir_or_record)
    if record is None:
        _warn_no_record(model_dir_or_record, what)
        return
    found = training_overlap(test_entries, record)
    path = Path(model_dir_or_record)
    if found:
        raise BundleInputError(overlap_message(found, what, path / RECORD_NAME if path.is_dir() else path))
    logger.info(f"{what}: no subject or image of the model's training data ({RECORD_NAME} checked)")


def check_disjoint(
    training_entries: Sequence[Mapping[str, Any]],
    test_entries: Iterable[Mapping[str, Any]],
    what: str = "the test data",
) -> None:
    """The same refusal before any model exists: ``test_entries`` against the training+validation entries that a model
    will be trained on (e.g. every fold of a cross-validation, before hours of training are spent)."""
    record = build_training_record(None, training_entries)
    found = training_overlap(test_entries, record)
    if found:
        raise BundleInputError(overlap_message(found, what, "the training datalist"))


def check_test_not_in_training(
    datalist: str | Path, dataset_dir: str | Path, model_file: str | Path, partition: str = "test"
) -> None:
    """The evaluation step: the ``partition`` of ``datalist`` against the record beside ``model_file``."""
    if partition not in PARTITIONS or partition not in read_datalist(datalist):
        return  # validate_datalist, which runs first, reports a missing partition
    record_path, what = Path(model_file).parent / RECORD_NAME, f"'{partition}' of {datalist}"
    if not record_path.is_file():
        _warn_no_record(record_path.parent, what)  # before loading and hashing anything
        return
    check_no_training_overlap(load_partition(datalist, dataset_dir, partition), record_path, what)
