"""Datalist handling: validating and reading partitions, refusing subject leakage, class weights for the loss.

A datalist holds the partitions and, beside them, its ``classes`` (ordered by disease stage; a label is an index
into it; ``["CN", "AD"]`` when absent) and optionally ``clinical`` stage measures per image id. Both stay out of the
partition entries on purpose: entries with and without a key, or with null, break torch's collate.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import load_decathlon_datalist

PARTITIONS = ("training", "validation", "test")
#: The classes of a datalist, plan or model that names none: label 0 is CN, label 1 AD (the dissertation's task).
DEFAULT_CLASSES = ("CN", "AD")
CLASS_NAMES = DEFAULT_CLASSES  # the older name, still imported
# Class lists ordered by disease stage, known by their length: the names of a model that recorded only its head size.
_CLASS_LISTS_BY_SIZE = {2: DEFAULT_CLASSES, 3: ("CN", "MCI", "AD")}


class BundleInputError(SystemExit):
    """A bundle input (datalist, weights, checkpoint, option) is wrong; the message names it and the fix.

    Derived from SystemExit, not ValueError, on purpose: MONAI wraps every ``Exception`` raised while it evaluates a
    ``$`` expression or instantiates a ``_target_`` (monai/bundle/config_item.py, monai/utils/module.py) into a
    ``RuntimeError: Failed to evaluate ...`` traceback that buries the message. A SystemExit passes those
    ``except Exception`` clauses, fire and ignite unchanged, and the interpreter prints only its message (which starts
    with ``error: ``) as the last line and exits with status 1. Python callers catch ``BundleInputError`` (or read
    ``.message``); the pure checks such as :func:`datalist_problems` and :func:`read_datalist` raise nothing or
    ordinary ValueErrors.
    """

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(f"error: {message}")


class SubjectLeakageError(ValueError):
    """A subject appears in more than one partition of a datalist."""


class DatalistError(ValueError):
    """A datalist file cannot be read as a datalist (missing, not JSON, not an object of partitions)."""


def read_datalist(path: str | Path) -> dict[str, list[dict]]:
    """Read a datalist JSON ``{"training": [...], "validation": [...], "test": [...]}`` (paths left as written)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Datalist not found: {path}. Create it with the data-preparation CLI (see README) or pass "
            f"--datalist <path> to the bundle."
        )
    try:
        datalist = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatalistError(
            f"Datalist {path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}."
        ) from None
    except UnicodeDecodeError:
        raise DatalistError(f"Datalist {path} is not a text (JSON) file.") from None
    if not isinstance(datalist, dict) or not any(k in datalist for k in PARTITIONS):
        raise DatalistError(f"{path} is not a datalist: expected a JSON object with keys {PARTITIONS}.")
    return datalist


def default_class_names(num_classes: int) -> list[str]:
    """Names for a ``num_classes``-output model that recorded none: CN/AD, CN/MCI/AD, else ``class0``, ``class1``..."""
    known = _CLASS_LISTS_BY_SIZE.get(int(num_classes))
    return list(known) if known else [f"class{i}" for i in range(int(num_classes))]


def class_list_problem(classes: Any) -> str | None:
    """Why ``classes`` is not a class list (two or more distinct non-empty names), in words; None when it is one."""
    if not isinstance(classes, list | tuple) or len(classes) < 2:
        return f"must list two or more class names ordered by disease stage (e.g. ['CN', 'AD']), not {classes!r}"
    if not all(isinstance(name, str) and name.strip() for name in classes):
        return f"must hold non-empty class names (text), got {list(classes)!r}"
    if len(set(classes)) != len(classes):
        return f"names a class twice: {list(classes)!r}"
    return None


def datalist_classes(datalist: str | Path | Mapping[str, Any]) -> list[str]:
    """The ``classes`` of a datalist (its labels index them); ``["CN", "AD"]`` when it has none (older datalists).

    A file that cannot be read as a datalist also gives the default: the configs ask for the classes before
    :func:`validate_datalist` runs, and that check reports such a file in its own words. A ``classes`` entry that
    is not a list of distinct names is refused with :class:`BundleInputError`.
    """
    if isinstance(datalist, Mapping):
        return _checked_classes(datalist, "the datalist")
    try:
        return _checked_classes(read_datalist(datalist), str(datalist))
    except (FileNotFoundError, DatalistError):
        return list(DEFAULT_CLASSES)


def _checked_classes(datalist: Mapping[str, Any], source: str) -> list[str]:
    classes = datalist.get("classes")
    if classes is None:
        return list(DEFAULT_CLASSES)
    problem = class_list_problem(classes)
    if problem:
        raise BundleInputError(f"the 'classes' of {source} {problem}; fix the file or rerun 'preprocessing split'.")
    return list(classes)


def label_meaning(classes: int | Sequence[str] = DEFAULT_CLASSES) -> str:
    """``0=CN, 1=AD``: the label convention of a class list (or of a class count), as messages spell it."""
    names = default_class_names(classes) if isinstance(classes, int) else list(classes)
    return ", ".join(f"{i}={name}" for i, name in enumerate(names))


def datalist_problems(
    datalist: Mapping[str, Any],
    dataset_dir: str | Path,
    num_classes: int = 2,
    require: Sequence[str] = ("training", "validation"),
    source: str = "the datalist",
) -> list[str]:
    """Every problem of a parsed datalist, one sentence each naming partition, entry index and image; [] if none.

    ``require``: partitions that must exist with entries and whose images must exist under ``dataset_dir``. Other
    partitions present are checked for labels and subjects only (a test set may be empty while training). Labels
    index the datalist's ``classes`` (:func:`datalist_classes`), whose count must equal ``num_classes``.
    """
    try:
        classes = _checked_classes(datalist, source)
    except BundleInputError as err:
        return [err.message]
    if num_classes != len(classes):
        # The head size follows the datalist's classes; an --num_classes override that contradicts them would train
        # or evaluate a head whose outputs mean nothing the labels say.
        listed = "lists" if "classes" in datalist else "has no 'classes' list, so it holds the default"
        return [
            f"{source} {listed} {len(classes)} classes ({label_meaning(classes)}) but num_classes is {num_classes}; "
            f"drop --num_classes (it follows the datalist's 'classes'), or use a datalist made for {num_classes} "
            f"classes ('preprocessing split' writes the class list of its plan)."
        ]
    problems: list[str] = []
    meaning = label_meaning(classes)
    found = [p for p in PARTITIONS if p in datalist]
    for partition in require:
        if partition not in datalist:
            problems.append(
                f"{source} has no '{partition}' partition (it has: {', '.join(found) or 'none'}); "
                f"this workflow needs {', '.join(repr(p) for p in require)}."
            )
        elif not isinstance(datalist[partition], list) or not datalist[partition]:
            problems.append(f"the '{partition}' partition of {source} has no entries.")
    for partition in found:
        entries = datalist[partition]
        if not isinstance(entries, list):
            continue
        for index, entry in enumerate(entries):
            where = f"{partition} entry {index}"
            if not isinstance(entry, Mapping):
                problems.append(f"{where} of {source} is not a JSON object: {entry!r}.")
                continue
            image = entry.get("image")
            if not isinstance(image, str) or not image:
                problems.append(f"{where} of {source} has no 'image' path: {dict(entry)}.")
                continue
            where = f"{where} ({image})"
            if partition in require and not (Path(dataset_dir) / image).exists():
                problems.append(f"{where} of {source}: the image does not exist under dataset_dir={dataset_dir}.")
            label = entry.get("label")
            # bool is an int in Python, and "1"/1.0 would collate to strings/floats the loss cannot use.
            if "label" not in entry:
                problems.append(f"{where} of {source} has no 'label'; labels are {meaning}.")
            elif isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
                problems.append(f"{where} of {source} has label {label!r}; labels are {meaning}.")
            if entry.get("subject") in (None, ""):
                problems.append(f"{where} of {source} has no 'subject' id; it is needed to check subject leakage.")
    training = datalist.get("training")
    if "training" in require and isinstance(training, list) and training and not problems:
        present = {entry["label"] for entry in training}
        if len(present) < num_classes:
            names = ", ".join(f"{classes[c]} (label {c})" for c in sorted(present))
            problems.append(
                f"the 'training' partition of {source} holds only {names} scans; training needs every class "
                f"({meaning})."
            )
    if not problems:
        try:
            check_no_subject_leakage(datalist)
        except SubjectLeakageError as err:
            problems.append(f"{source}: {err}.")
    return problems


def validate_datalist(
    datalist_path: str | Path,
    dataset_dir: str | Path,
    num_classes: int = 2,
    require: Sequence[str] = ("training", "validation"),
) -> dict[str, list[dict]]:
    """Check the datalist before anything is built; raise :class:`BundleInputError` with its first problem.

    The workflows call this first in ``initialize`` so a wrong label or a missing image is reported in one line
    before the network, loss or datasets exist. Returns the parsed datalist.
    """
    try:
        datalist = read_datalist(datalist_path)
    except (FileNotFoundError, DatalistError) as err:
        raise BundleInputError(str(err)) from None
    problems = datalist_problems(datalist, dataset_dir, num_classes, tuple(require), source=str(datalist_path))
    if problems:
        more = f" ({len(problems) - 1} more problem(s) in this datalist.)" if len(problems) > 1 else ""
        raise BundleInputError(problems[0] + more)
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
