"""Split summaries in the dissertation's form, and writing a split as a MONAI datalist (:mod:`scripts.cohort`).

Used through :mod:`scripts.cohort`, which re-exports every name here.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cohort_rules import (
    DEFAULT_FRACTIONS,
    Partitions,
    _checked_fractions,
    _class_list,
    _partition_lists,
    _split_targets,
    _subject,
    _validated,
)
from .data import PARTITIONS, check_no_subject_leakage

SHORT_NAMES = {"training": "train", "validation": "val", "test": "test"}
SUMMARY_LABEL_ORDER = (1, 0)  # AD before CN, as the dissertation printed it (k classes: the last class first)


@dataclass(frozen=True)
class ConditionSplit:
    """Target and actual counts of one condition, keyed by partition name (``training``/``validation``/``test``)."""

    condition: str
    label: int
    targets: dict[str, int]
    scans: dict[str, int]
    subjects: dict[str, int]


def summarize_split(
    partitions: Partitions, fractions: Sequence[float] = DEFAULT_FRACTIONS, classes: Sequence[str] | None = None
) -> list[ConditionSplit]:
    """Per-condition target and actual scan/subject counts of a split, AD first as the dissertation listed them.

    Conditions are named from ``classes`` (default CN, AD) and listed from the last class (the most advanced stage)
    to the first. The targets are recomputed from each condition's total scans and ``fractions`` with the same
    rounding as :func:`scripts.cohort.split_subjects`, so they equal the targets the split aimed at when given the
    same fractions. Conditions with no scans in any partition are left out.
    """
    shares = _checked_fractions(fractions)
    lists = _partition_lists(partitions)
    classes = _class_list(classes)
    order = SUMMARY_LABEL_ORDER if len(classes) == 2 else tuple(reversed(range(len(classes))))
    summaries = []
    for label in order:
        scans = {p: [s for s in lists[p] if int(s["label"]) == label] for p in PARTITIONS}
        total = sum(len(items) for items in scans.values())
        if total == 0:
            continue
        summaries.append(
            ConditionSplit(
                condition=classes[label],
                label=label,
                targets=_split_targets(total, shares),
                scans={p: len(items) for p, items in scans.items()},
                subjects={p: len({_subject(s) for s in items}) for p, items in scans.items()},
            )
        )
    return summaries


def format_summary(summaries: Sequence[ConditionSplit]) -> str:
    """The dissertation's printout of a split, one block per condition separated by a blank line."""
    blocks = []
    for summary in summaries:
        targets = ", ".join(f"{SHORT_NAMES[p].capitalize()}: {summary.targets[p]}" for p in PARTITIONS)
        lines = [f"Condition: {summary.condition}", f"Target scan counts -> {targets}", "Actual split scan counts:"]
        lines += [f"{SHORT_NAMES[p]}: {summary.scans[p]} scans over {summary.subjects[p]} subjects" for p in PARTITIONS]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def split_summary(
    partitions: Partitions, fractions: Sequence[float] = DEFAULT_FRACTIONS, classes: Sequence[str] | None = None
) -> str:
    """Text summary of a split in the dissertation's form; see :func:`summarize_split` for the numbers."""
    return format_summary(summarize_split(partitions, fractions, classes))


def write_datalist(
    partitions: Partitions,
    path: str | Path,
    dataset_dir: str | Path | None = None,
    classes: Sequence[str] | None = None,
    clinical: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write a MONAI datalist JSON ``{"training": [...], "validation": [...], "test": [...]}`` and return its path.

    Entries are ``{"image", "label", "subject", "image_id"}`` followed by the scan's other keys; ``label`` is written
    as an int and ids as strings so the file reads back the same whatever types the cohort table used. With
    ``dataset_dir`` the image paths are written relative to it (the bundle joins them back onto its
    ``dataset_dir``), and an image outside it is refused since it could not be found that way.

    ``classes`` (the list the labels index, e.g. ``["CN", "MCI", "AD"]``) is written as the top-level ``classes``
    key when given; without it labels must be 0 (CN) or 1 (AD) and no key is written (the bundle's default).
    ``clinical`` maps image ids to stage measures (``{"cdr": 0.5, "mmse": 26, "atrophy": 0.4}``, numbers or their
    text); the non-empty values of the datalist's scans are written under the top-level ``clinical`` key, scans
    without any are left out. Both stay out of the entries, whose keys must be the same in every entry for
    torch's collate.

    The datalist is checked for subject leakage and duplicate scans before anything is written, and written to a
    temporary file renamed over ``path``, so a reader never sees a half-written file and a refused datalist leaves
    any previous file untouched.
    """
    lists = _partition_lists(partitions)
    _validated((item for items in lists.values() for item in items), classes)  # duplicates, labels, missing keys
    base = os.path.abspath(dataset_dir) if dataset_dir is not None else None
    datalist: dict[str, list[dict[str, Any]]] = {}
    for partition, items in lists.items():
        entries = []
        for item in items:
            image = str(item["image"])
            if base is not None:
                try:
                    image = Path(os.path.abspath(image)).relative_to(base).as_posix()
                except ValueError:
                    raise ValueError(f"Image {image} is not under dataset_dir {dataset_dir}.") from None
            entry: dict[str, Any] = {
                "image": image,
                "label": int(item["label"]),
                "subject": str(item["subject"]),
                "image_id": str(item["image_id"]),
            }
            entry.update((key, value) for key, value in item.items() if key not in entry)
            entries.append(entry)
        datalist[partition] = entries
    check_no_subject_leakage(datalist)
    measures = _clinical_measures(clinical or {}, [entry["image_id"] for p in PARTITIONS for entry in datalist[p]])
    written: dict[str, Any] = {"classes": _class_list(classes)} if classes is not None else {}
    written.update(datalist)
    if measures:
        written["clinical"] = measures
    text = json.dumps(written, indent=2) + "\n"  # serialise first: unserialisable extra keys fail before any I/O

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a datalist is shared configuration, not a secret
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _clinical_measures(clinical: Mapping[str, Mapping[str, Any]], image_ids: Sequence[str]) -> dict[str, dict]:
    """``{image_id: {measure: float}}`` for ``image_ids`` in order, without empty, None or NaN values."""
    by_id = {str(key): value for key, value in clinical.items()}
    measures: dict[str, dict[str, float]] = {}
    for image_id in image_ids:
        values = {}
        for name, value in (by_id.get(image_id) or {}).items():
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"Clinical measure {name!r} of scan {image_id} is not a number: {value!r}.") from None
            if math.isfinite(number):
                values[str(name)] = number
        if values:
            measures[image_id] = values
    return measures
