"""Cohort building: balancing AD against CN, subject-level splits and folds, split summaries, datalist writing.

This reproduces the dissertation's data split (report 4.1.3-4.3, notes "splitting the data"): every AD scan is kept
and CN scans are drawn round-robin over CN subjects until the classes are equal; then, per condition, subjects sorted
by ascending scan count are dealt round-robin to test, validation and training until each reaches its target scan
count. Small subjects go first so that the held-out sets, which fill up quickly, end up with many different people
rather than a few people with many visits.

A scan is a mapping with at least ``image``, ``label`` (0 CN, 1 AD), ``subject`` and ``image_id``. Other keys are
carried through unchanged. Every function returns new dicts (shallow copies) so callers can edit the result without
touching their input, and every result depends only on the set of scans and the seed, not on the input order.

Decisions the dissertation leaves open, made here once for all functions:

* Target scan counts use largest-remainder rounding (each partition gets ``floor(fraction * n)`` and the leftover
  scans go to the largest fractional parts, ties to test, then validation, then training). The targets therefore
  always sum to the condition's scan count, 80/10/10 of 650 gives the dissertation's 520/65/65, and a small cohort
  gets a test scan before training gets an extra one.
* A partition keeps receiving subjects while its scan count is below target, so it may overshoot by part of a
  subject (the dissertation's 69 test scans against a target of 65). Since the targets sum to the total, some
  partition is always below target while subjects remain; the "everything full, the rest goes to training" rule is
  kept only as a fallback that this arithmetic never reaches.
* Ties in scan count are ordered by a seeded permutation of the sorted subject ids, seeded per condition so that
  adding a CN subject does not reshuffle the AD split.
* A subject's scans are ordered by ``date`` when present (ISO 8601 text, so it sorts chronologically), then by
  ``image_id`` compared with digit runs as numbers (ADNI's ``I99`` before ``I100``).
* A subject with both AD and CN scans (an ADNI converter) is refused: dealing per condition would place that person
  in two partitions, which is exactly the leakage this module exists to prevent.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .data import CLASS_NAMES, PARTITIONS, check_no_subject_leakage

REQUIRED_KEYS = ("image", "label", "subject", "image_id")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)  # training, validation, test, in the order of PARTITIONS
# Held-out partitions are dealt first so that, with subjects in ascending size, they collect the most people.
DEAL_ORDER = ("test", "validation", "training")
SHORT_NAMES = {"training": "train", "validation": "val", "test": "test"}
SUMMARY_LABEL_ORDER = (1, 0)  # AD before CN, as the dissertation printed it

Scan = dict[str, Any]
Partitions = Mapping[str, Sequence[Mapping[str, Any]]]


class CohortImbalanceWarning(UserWarning):
    """There are fewer CN scans than AD scans, so the balanced cohort is still AD-heavy."""


@dataclass(frozen=True)
class ConditionSplit:
    """Target and actual counts of one condition, keyed by partition name (``training``/``validation``/``test``)."""

    condition: str
    label: int
    targets: dict[str, int]
    scans: dict[str, int]
    subjects: dict[str, int]


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


def _validated(scans: Iterable[Mapping[str, Any]]) -> list[Scan]:
    """Copies of ``scans`` in canonical order, after refusing input that would make a split meaningless.

    Sorting here is what makes every public function independent of the order the scans were listed in.
    """
    copies: list[Scan] = []
    for scan in scans:
        if not isinstance(scan, Mapping):
            raise TypeError(f"A scan must be a mapping, got {type(scan).__name__}: {scan!r}")
        missing = [key for key in REQUIRED_KEYS if key not in scan]
        if missing:
            raise ValueError(f"Scan {dict(scan)} lacks required key(s) {missing}; every scan needs {REQUIRED_KEYS}.")
        if isinstance(scan["label"], str) or scan["label"] not in (0, 1):
            raise ValueError(f"Scan {scan['image_id']} has label {scan['label']!r}; expected 0 (CN) or 1 (AD).")
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
        raise ValueError(
            f"Subject(s) with both AD and CN scans: {', '.join(mixed)}. Assign each subject one diagnosis (or drop "
            f"the subject) first, otherwise the per-condition split would put one person in two partitions."
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


# ---------------------------------------------------------------------------------------------------------------------
# Public API


def balance_cohort(scans: Iterable[Mapping[str, Any]], seed: int = 0) -> list[Scan]:
    """Keep every AD scan and as many CN scans, taken round-robin over CN subjects.

    Each round takes one scan from every CN subject that still has one (its earliest remaining scan), subjects in a
    seeded order, and stops as soon as CN equals AD. This keeps the largest possible number of distinct CN people,
    which is what the dissertation wanted from "as many subjects as possible" and matters more for generalisation
    than extra visits of the same people.

    AD is never dropped: AD was the scarce class the dissertation collected everything of. If CN has fewer scans
    than AD, all CN scans are kept and a :class:`CohortImbalanceWarning` says so; the residual imbalance is left to
    the class-weighted loss rather than thrown away silently. Balancing a cohort without any AD scan would discard
    every CN scan, which is refused as a ValueError since it almost surely means a wrong label column.

    Returns shallow copies of the kept scans in canonical order (label, subject, scan order).
    """
    _check_seed(seed)
    cohort = _validated(scans)
    if not cohort:
        return []
    ad = [scan for scan in cohort if _label(scan) == 1]
    cn_groups = _groups(cohort, 0)
    n_cn = sum(len(group) for group in cn_groups.values())
    if not ad:
        raise ValueError(f"No AD scans among {len(cohort)} scans; balancing would drop every CN scan.")
    if n_cn <= len(ad):
        if n_cn < len(ad):
            warnings.warn(
                f"Only {n_cn} CN scans for {len(ad)} AD scans: keeping all scans of both classes, the cohort stays "
                f"AD-heavy (AD is never dropped).",
                CohortImbalanceWarning,
                stacklevel=2,
            )
        return cohort

    subject_order = _seeded_subject_order(cn_groups, seed, 0)
    picked: list[Scan] = []
    visit = 0
    while len(picked) < len(ad):  # terminates: there are more CN scans than AD scans
        for subject in subject_order:
            if visit < len(cn_groups[subject]):
                picked.append(cn_groups[subject][visit])
                if len(picked) == len(ad):
                    break
        visit += 1
    return sorted(ad + picked, key=_canonical_key)


def split_subjects(
    scans: Iterable[Mapping[str, Any]], fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> dict[str, list[Scan]]:
    """Subject-level train/validation/test split with the dissertation's round-robin (report 4.3.2).

    ``fractions`` are the (training, validation, test) shares of each condition's scans. Per condition, subjects
    sorted by ascending scan count (ties by seed) are dealt to test, validation, training, test, ... skipping a
    partition once its scan count reaches its target; see the module docstring for rounding and overshoot. Every
    scan is placed exactly once and a subject is never split; the leakage check runs anyway so that a future change
    to this code cannot quietly break that promise.

    Returns ``{"training": [...], "validation": [...], "test": [...]}`` of shallow copies in canonical order.
    """
    _check_seed(seed)
    shares = _checked_fractions(fractions)
    cohort = _validated(scans)
    partition_of: dict[str, str] = {}
    for label in sorted({_label(scan) for scan in cohort}):
        groups = _groups(cohort, label)
        sizes = {subject: len(group) for subject, group in groups.items()}
        targets = _split_targets(sum(sizes.values()), shares)
        bins = _deal(
            _ascending_subjects(groups, seed, label),
            sizes,
            [targets[p] for p in DEAL_ORDER],
            fallback=DEAL_ORDER.index("training"),
        )
        partition_of.update({subject: DEAL_ORDER[index] for subject, index in bins.items()})

    partitions: dict[str, list[Scan]] = {partition: [] for partition in PARTITIONS}
    for scan in cohort:
        partitions[partition_of[_subject(scan)]].append(scan)
    check_no_subject_leakage(partitions)
    return partitions


def kfold_datalists(
    scans: Iterable[Mapping[str, Any]], k: int = 3, val_fraction: float = 0.1, seed: int = 0
) -> list[dict[str, list[Scan]]]:
    """``k`` subject-level folds; datalist ``i`` tests on fold ``i`` and trains/validates on the other folds.

    Per condition, subjects sorted by ascending scan count (ties by seed) are dealt round-robin over the folds,
    skipping a fold that reached its target of 1/k of the condition's scans (largest-remainder rounding, ties to the
    lower fold). Within datalist ``i`` the remaining subjects, in the same order, are dealt round-robin to validation
    then training with the same skipping rule. The validation target is ``val_fraction`` of the condition's whole
    cohort (not of the remaining folds), so every fold validates on the same amount of data as the plain split would;
    it is capped at what the remaining folds hold. Each scan is in exactly one test fold.

    A condition with fewer subjects than folds leaves some test folds without that condition; fewer subjects than
    folds overall would leave a test fold empty and is refused.
    """
    _check_seed(seed)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}.")
    if not math.isfinite(val_fraction) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
    cohort = _validated(scans)
    n_subjects = len({_subject(scan) for scan in cohort})
    if n_subjects < k:
        raise ValueError(
            f"Cannot make {k} subject-level folds from {n_subjects} subject(s): a test fold would be empty."
        )

    val_share = Fraction(str(float(val_fraction)))
    partition_of: list[dict[str, str]] = [{} for _ in range(k)]
    for label in sorted({_label(scan) for scan in cohort}):
        groups = _groups(cohort, label)
        sizes = {subject: len(group) for subject, group in groups.items()}
        total = sum(sizes.values())
        order = _ascending_subjects(groups, seed, label)
        fold_of = _deal(order, sizes, _apportion(total, [Fraction(1, k)] * k), fallback=k - 1)
        val_target = _apportion(total, [val_share, 1 - val_share])[0]
        for fold in range(k):
            rest = [subject for subject in order if fold_of[subject] != fold]
            rest_scans = sum(sizes[subject] for subject in rest)
            fold_val = min(val_target, rest_scans)
            val_or_train = _deal(rest, sizes, [fold_val, rest_scans - fold_val], fallback=1)
            for subject in order:
                if fold_of[subject] == fold:
                    partition_of[fold][subject] = "test"
                else:
                    partition_of[fold][subject] = ("validation", "training")[val_or_train[subject]]

    datalists: list[dict[str, list[Scan]]] = []
    for fold in range(k):
        datalist: dict[str, list[Scan]] = {partition: [] for partition in PARTITIONS}
        for scan in cohort:
            # Copies per fold, so editing one fold's entries cannot change another fold.
            datalist[partition_of[fold][_subject(scan)]].append(dict(scan))
        check_no_subject_leakage(datalist)
        datalists.append(datalist)
    return datalists


def summarize_split(partitions: Partitions, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> list[ConditionSplit]:
    """Per-condition target and actual scan/subject counts of a split, AD first as the dissertation listed them.

    The targets are recomputed from each condition's total scans and ``fractions`` with the same rounding as
    :func:`split_subjects`, so they equal the targets the split aimed at when given the same fractions. Conditions
    with no scans in any partition are left out.
    """
    shares = _checked_fractions(fractions)
    lists = _partition_lists(partitions)
    summaries = []
    for label in SUMMARY_LABEL_ORDER:
        scans = {p: [s for s in lists[p] if int(s["label"]) == label] for p in PARTITIONS}
        total = sum(len(items) for items in scans.values())
        if total == 0:
            continue
        summaries.append(
            ConditionSplit(
                condition=CLASS_NAMES[label],
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


def split_summary(partitions: Partitions, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """Text summary of a split in the dissertation's form; see :func:`summarize_split` for the numbers."""
    return format_summary(summarize_split(partitions, fractions))


def write_datalist(partitions: Partitions, path: str | Path, dataset_dir: str | Path | None = None) -> Path:
    """Write a MONAI datalist JSON ``{"training": [...], "validation": [...], "test": [...]}`` and return its path.

    Entries are ``{"image", "label", "subject", "image_id"}`` followed by the scan's other keys; ``label`` is written
    as an int and ids as strings so the file reads back the same whatever types the cohort table used. With
    ``dataset_dir`` the image paths are written relative to it (the bundle joins them back onto its
    ``dataset_dir``), and an image outside it is refused since it could not be found that way.

    The datalist is checked for subject leakage and duplicate scans before anything is written, and written to a
    temporary file renamed over ``path``, so a reader never sees a half-written file and a refused datalist leaves
    any previous file untouched.
    """
    lists = _partition_lists(partitions)
    _validated(item for items in lists.values() for item in items)  # duplicates, labels, missing keys
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
    text = json.dumps(datalist, indent=2) + "\n"  # serialise first: unserialisable extra keys fail before any I/O

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
