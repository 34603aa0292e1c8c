"""Datalist handling: reading partitions, refusing subject leakage, class weights for the loss."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from monai.data import load_decathlon_datalist

PARTITIONS = ("training", "validation", "test")
CLASS_NAMES = ("CN", "AD")  # label 0 and label 1


class SubjectLeakageError(ValueError):
    """A subject appears in more than one partition of a datalist."""


def read_datalist(path: str | Path) -> dict[str, list[dict]]:
    """Read a datalist JSON ``{"training": [...], "validation": [...], "test": [...]}`` (paths left as written)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Datalist not found: {path}. Create it with the data-preparation CLI (see README) or pass "
            f"--datalist <path> to the bundle."
        )
    with path.open() as f:
        datalist = json.load(f)
    if not isinstance(datalist, dict) or not any(k in datalist for k in PARTITIONS):
        raise ValueError(f"{path} is not a datalist: expected a JSON object with keys {PARTITIONS}.")
    return datalist


def check_no_subject_leakage(datalist: Mapping[str, Sequence[Mapping]] | str | Path) -> None:
    """Raise :class:`SubjectLeakageError` naming every subject found in more than one partition.

    Scans of one person share anatomy, so a subject in two partitions inflates test accuracy (the dissertation saw
    90% with leakage against 70% without). Refused at the point of use, whatever made the datalist.
    """
    if not isinstance(datalist, Mapping):
        datalist = read_datalist(datalist)
    partitions_of: dict[str, set[str]] = defaultdict(set)
    for partition in PARTITIONS:
        for item in datalist.get(partition, []):
            if "subject" not in item:
                raise ValueError(
                    f"Datalist entry {item} in '{partition}' has no 'subject' id; it is needed to check leakage."
                )
            partitions_of[str(item["subject"])].add(partition)
    leaked = {s: sorted(p) for s, p in partitions_of.items() if len(p) > 1}
    if leaked:
        details = ", ".join(f"{s} ({'/'.join(p)})" for s, p in sorted(leaked.items()))
        raise SubjectLeakageError(f"{len(leaked)} subject(s) appear in more than one partition: {details}")


def load_partition(datalist_path: str | Path, dataset_dir: str | Path, partition: str) -> list[dict]:
    """Entries of one partition with ``image`` made absolute against ``dataset_dir`` (MONAI's datalist reader)."""
    if partition not in PARTITIONS:
        raise ValueError(f"Unknown partition '{partition}', expected one of {PARTITIONS}.")
    items = load_decathlon_datalist(
        str(datalist_path), is_segmentation=False, data_list_key=partition, base_dir=str(dataset_dir)
    )
    missing = [item["image"] for item in items if not Path(item["image"]).exists()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{len(missing)} image(s) of '{partition}' in {datalist_path} do not exist under "
            f"dataset_dir={dataset_dir}: {shown}"
        )
    return items


def class_weights(items: Iterable[Mapping], num_classes: int = 2, device: str | torch.device = "cpu") -> torch.Tensor:
    """Inverse-frequency weights ``N / (num_classes * N_c)`` from the training labels (dissertation 4.6.3).

    A class with no scans gets weight 1.0, as in the dissertation, so the loss stays defined.
    """
    counts = Counter(int(item["label"]) for item in items)
    total = sum(counts.values())
    if total == 0:
        raise ValueError("Cannot compute class weights from an empty training partition.")
    weights = [total / (num_classes * counts[c]) if counts[c] else 1.0 for c in range(num_classes)]
    return torch.tensor(weights, dtype=torch.float32, device=device)
