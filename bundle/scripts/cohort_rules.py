"""The rules shared by cohort building and split summaries (:mod:`scripts.cohort`): input validation and canonical
order, the seeded subject order, largest-remainder targets and the round-robin deal.

The decisions these rules make are listed in the docstring of :mod:`scripts.cohort`, which re-exports every name here.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from .data import DEFAULT_CLASSES, PARTITIONS, class_list_problem

REQUIRED_KEYS = ("image", "label", "subject", "image_id")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)  # training, validation, test, in the order of PARTITIONS
# Held-out partitions are dealt first so that, with subjects in ascending size, they collect the most people.
DEAL_ORDER = ("test", "validation", "training")

Scan = dict[str, Any]
Partitions = Mapping[str, Sequence[Mapping[str, Any]]]


# ---------------------------------------------------------------------------------------------------------------------
# Validation and ordering helpers


def _natural_key(text: str) -> tuple:
    # re.split with a capturing group alternates text and digit runs, so every position holds one type and tuples of
    # different ids stay comparable.
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text)))


def _label(scan: Mapping[str, Any]) -> int:
    return int(scan["label"])


def _subject(scan: Mapping[str, Any]) -> str:
    # Ids may come as numbers from a CSV; comparing as text keeps "0295" and 295 from silently becoming one person.
    return str(scan["subject"])


def _scan_order_key(scan: Mapping[str, Any]) -> tuple:
    date = scan.get("date")
    dated = (0, str(date)) if date not in (None, "") else (1, "")
    image_id = str(scan["image_id"])
    return (dated, _natural_key(image_id), image_id, str(scan["image"]))


def _canonical_key(scan: Mapping[str, Any]) -> tuple:
    subject = _subject(scan)
    return (_label(scan), _natural_key(subject), subject, _scan_order_key(scan))


def _class_list(classes: Sequence[str] | None) -> list[str]:
    """The class list a cohort's labels index (``["CN", "AD"]`` for None); a malformed list is a ValueError."""
    classes = list(DEFAULT_CLASSES if classes is None else classes)
    problem = class_list_problem(classes)
    if problem:
        raise ValueError(f"classes {problem}.")
    return classes


def _label_choices(classes: Sequence[str]) -> str:
    """``0 (CN) or 1 (AD)``; ``0 (CN), 1 (MCI) or 2 (AD)``."""
    named = [f"{index} ({name})" for index, name in enumerate(classes)]
    return f"{', '.join(named[:-1])} or {named[-1]}"


def _validated(scans: Iterable[Mapping[str, Any]], classes: Sequence[str] | None = None) -> list[Scan]:
    """Copies of ``scans`` in canonical order, after refusing input that would make a split meaningless.

    A label must index ``classes`` (default ``["CN", "AD"]``). Sorting here is what makes every public function
    independent of the order the scans were listed in.
    """
    classes = _class_list(classes)
    copies: list[Scan] = []
    for scan in scans:
        if not isinstance(scan, Mapping):
            raise TypeError(f"A scan must be a mapping, got {type(scan).__name__}: {scan!r}")
        missing = [key for key in REQUIRED_KEYS if key not in scan]
        if missing:
            raise ValueError(f"Scan {dict(scan)} lacks required key(s) {missing}; every scan needs {REQUIRED_KEYS}.")
        if isinstance(scan["label"], str) or scan["label"] not in range(len(classes)):
            raise ValueError(
                f"Scan {scan['image_id']} has label {scan['label']!r}; expected {_label_choices(classes)} "
                f"(classes {', '.join(classes)})."
            )
        copies.append(dict(scan))

    seen: dict[str, Scan] = {}
    duplicates: set[str] = set()
    labels_of: dict[str, set[int]] = defaultdict(set)
    for scan in copies:
        image_id = str(scan["image_id"])
        if image_id in seen:
            duplicates.add(image_id)
        seen[image_id] = scan
        labels_of[_subject(scan)].add(_label(scan))
    if duplicates:
        # The same scan twice could land in two partitions, a leak that the subject check cannot see.
        raise ValueError(f"Duplicate image_id(s): {', '.join(sorted(duplicates))}; each scan may appear only once.")
    mixed = sorted(subject for subject, labels in labels_of.items() if len(labels) > 1)
    if mixed:
        if len(classes) == 2:
            which = f"both {classes[1]} and {classes[0]} scans: {', '.join(mixed)}"
        else:
            which = "scans of more than one class: " + ", ".join(
                f"{subject} ({', '.join(classes[label] for label in sorted(labels_of[subject]))})" for subject in mixed
            )
        raise ValueError(
            f"Subject(s) with {which}. Assign each subject one diagnosis (or drop the subject) first, otherwise the "
            f"per-condition split would put one person in two partitions."
        )
    return sorted(copies, key=_canonical_key)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")


def _groups(scans: Sequence[Scan], label: int) -> dict[str, list[Scan]]:
    """Scans of one condition by subject, each subject's scans in their stable (chronological) order."""
    groups: dict[str, list[Scan]] = defaultdict(list)
    for scan in scans:  # already canonical, so each group's scans are in _scan_order_key order
        if _label(scan) == label:
            groups[_subject(scan)].append(scan)
    return dict(groups)


def _seeded_subject_order(subjects: Iterable[str], seed: int, label: int) -> list[str]:
    # Start from sorted ids so the permutation depends on the seed only, never on dict or input order.
    ordered = sorted(subjects, key=lambda s: (_natural_key(s), s))
    rng = np.random.default_rng([seed, label])
    return [ordered[i] for i in rng.permutation(len(ordered))]


def _ascending_subjects(groups: Mapping[str, Sequence[Scan]], seed: int, label: int) -> list[str]:
    # A stable sort after the seeded permutation is what breaks ties in scan count by the seed.
    return sorted(_seeded_subject_order(groups, seed, label), key=lambda s: len(groups[s]))


def _checked_fractions(fractions: Sequence[float]) -> dict[str, Fraction]:
    if len(fractions) != len(PARTITIONS):
        raise ValueError(f"fractions must give {len(PARTITIONS)} shares for {PARTITIONS}, got {fractions!r}.")
    values = [float(f) for f in fractions]
    if any(not math.isfinite(f) or f < 0 for f in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1 (train, val, test), got {fractions!r}.")
    # Through str() so 0.1 means the decimal the caller wrote, not the binary float just above it.
    exact = [Fraction(str(f)) for f in values]
    total = sum(exact)
    return {partition: share / total for partition, share in zip(PARTITIONS, exact, strict=True)}


def _apportion(total: int, shares: Sequence[Fraction]) -> list[int]:
    """Largest-remainder integer targets summing to ``total``; ties go to the earlier share.

    Shares must sum to 1. Callers list shares in dealing order, so a tie favours the partition dealt first.
    """
    quotas = [share * total for share in shares]
    counts = [math.floor(q) for q in quotas]
    leftover = total - sum(counts)
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[:leftover]:
        counts[i] += 1
    return counts


def _split_targets(total: int, fractions: Mapping[str, Fraction]) -> dict[str, int]:
    shares = [fractions[p] for p in DEAL_ORDER]
    counts = _apportion(total, shares)
    # Small cohorts: rounding can leave a partition with a non-zero fraction empty (6 scans at 80/10/10 gives
    # 5/0/1), and training without validation cannot select a model. Give such a partition one scan, taken from
    # the largest, whenever there are enough scans to go round.
    if total >= sum(1 for share in shares if share > 0):
        for i, share in enumerate(shares):
            if share > 0 and counts[i] == 0:
                counts[max(range(len(counts)), key=lambda j: counts[j])] -= 1
                counts[i] = 1
    return dict(zip(DEAL_ORDER, counts, strict=True))


def _deal(order: Sequence[str], sizes: Mapping[str, int], targets: Sequence[int], fallback: int) -> dict[str, int]:
    """Round-robin of subjects (in ``order``) over bins, skipping a bin whose scan count has reached its target.

    Returns the bin index of every subject. ``fallback`` takes a subject when every bin is full, which cannot happen
    when the targets sum to the total scans (some bin is then always short); it keeps the deal total anyway.
    """
    filled = [0] * len(targets)
    assignment: dict[str, int] = {}
    pointer = 0
    for subject in order:
        chosen = fallback
        for step in range(len(targets)):
            candidate = (pointer + step) % len(targets)
            if filled[candidate] < targets[candidate]:
                chosen = candidate
                break
        assignment[subject] = chosen
        filled[chosen] += sizes[subject]
        pointer = (chosen + 1) % len(targets)
    return assignment


def _partition_lists(partitions: Partitions) -> dict[str, list[Mapping[str, Any]]]:
    unknown = sorted(set(partitions) - set(PARTITIONS))
    if unknown:
        raise ValueError(f"Unknown partition name(s) {unknown}; expected only {PARTITIONS}.")
    return {partition: list(partitions.get(partition, [])) for partition in PARTITIONS}
