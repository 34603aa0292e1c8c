"""Cohort building: balancing AD against CN, subject-level splits and folds, split summaries, datalist writing.

This reproduces the dissertation's data split (report 4.1.3-4.3, notes "splitting the data"): every AD scan is kept
and CN scans are drawn round-robin over CN subjects until the classes are equal (with a class list such as CN, MCI,
AD: every scan of the last class, each other class drawn the same way); then, per condition, subjects sorted
by ascending scan count are dealt round-robin to test, validation and training until each reaches its target scan
count. Small subjects go first so that the held-out sets, which fill up quickly, end up with many different people
rather than a few people with many visits.

A scan is a mapping with at least ``image``, ``label`` (its class's index in the class list: 0 CN, 1 AD by default),
``subject`` and ``image_id``. Other keys are carried through unchanged. Every function returns new dicts (shallow
copies) so callers can edit the result without touching their input, and every result depends only on the set of
scans and the seed, not on the input order.

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
* A subject with scans of two classes (an ADNI converter) is refused: dealing per condition would place that person
  in two partitions, which is exactly the leakage this module exists to prevent.

The rules above are implemented in :mod:`scripts.cohort_rules`, the summaries and the datalist writer in
:mod:`scripts.cohort_summary`; every name of both is importable from here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

# ``as`` marks a re-export: names this module does not use itself but that stay importable from it.
from .cohort_rules import (
    DEAL_ORDER,
    DEFAULT_FRACTIONS,
    Scan,
    _apportion,
    _ascending_subjects,
    _canonical_key,
    _check_seed,
    _checked_fractions,
    _class_list,
    _deal,
    _groups,
    _label,
    _seeded_subject_order,
    _split_targets,
    _subject,
    _validated,
)
from .cohort_rules import REQUIRED_KEYS as REQUIRED_KEYS
from .cohort_rules import Partitions as Partitions
from .cohort_rules import _natural_key as _natural_key
from .cohort_rules import _partition_lists as _partition_lists
from .cohort_rules import _scan_order_key as _scan_order_key
from .cohort_summary import SHORT_NAMES as SHORT_NAMES
from .cohort_summary import SUMMARY_LABEL_ORDER as SUMMARY_LABEL_ORDER
from .cohort_summary import ConditionSplit as ConditionSplit
from .cohort_summary import format_summary as format_summary
from .cohort_summary import split_summary as split_summary
from .cohort_summary import summarize_split as summarize_split
from .cohort_summary import write_datalist as write_datalist
from .data import CLASS_NAMES as CLASS_NAMES
from .data import PARTITIONS, check_no_subject_leakage


class CohortImbalanceWarning(UserWarning):
    """A class has fewer scans than the reference class (AD), so the balanced cohort is still AD-heavy."""


# ---------------------------------------------------------------------------------------------------------------------
# Public API


def balance_cohort(
    scans: Iterable[Mapping[str, Any]], seed: int = 0, classes: Sequence[str] | None = None
) -> list[Scan]:
    """Keep every scan of the reference class (the last of ``classes``: AD) and as many of each other class, taken
    round-robin over that class's subjects.

    ``classes`` is the class list the labels index (default ``["CN", "AD"]``; ``["CN", "MCI", "AD"]`` for three
    classes). For each other class, each round takes one scan from every subject of the class that still has one (its
    earliest remaining scan), subjects in a seeded order, and stops as soon as the class has as many scans as the
    reference. This keeps the largest possible number of distinct people, which is what the dissertation wanted from
    "as many subjects as possible" and matters more for generalisation than extra visits of the same people.

    The reference class is never dropped: AD was the scarce class the dissertation collected everything of. If a
    class has fewer scans than the reference, all its scans are kept and a :class:`CohortImbalanceWarning` says so;
    the residual imbalance is left to the class-weighted loss rather than thrown away silently. Balancing a cohort
    without any reference scan would discard every other scan, which is refused as a ValueError since it almost
    surely means a wrong label column.

    Returns shallow copies of the kept scans in canonical order (label, subject, scan order).
    """
    _check_seed(seed)
    classes = _class_list(classes)
    cohort = _validated(scans, classes)
    if not cohort:
        return []
    reference = len(classes) - 1
    kept = [scan for scan in cohort if _label(scan) == reference]
    if not kept:
        others = "CN scan" if len(classes) == 2 else f"scan of {', '.join(classes[:-1])}"
        raise ValueError(
            f"No {classes[reference]} scans among {len(cohort)} scans; balancing would drop every {others}."
        )
    target = len(kept)
    for label in range(reference):
        groups = _groups(cohort, label)
        available = sum(len(group) for group in groups.values())
        if available <= target:
            if available < target:
                both = "both classes" if len(classes) == 2 else f"{classes[label]}"
                warnings.warn(
                    f"Only {available} {classes[label]} scans for {target} {classes[reference]} scans: keeping all "
                    f"scans of {both}, the cohort stays {classes[reference]}-heavy ({classes[reference]} is never "
                    f"dropped).",
                    CohortImbalanceWarning,
                    stacklevel=2,
                )
            kept += [scan for group in groups.values() for scan in group]
            continue
        subject_order = _seeded_subject_order(groups, seed, label)
        picked: list[Scan] = []
        visit = 0
        while len(picked) < target:  # terminates: the class has more scans than the target
            for subject in subject_order:
                if visit < len(groups[subject]):
                    picked.append(groups[subject][visit])
                    if len(picked) == target:
                        break
            visit += 1
        kept += picked
    return sorted(kept, key=_canonical_key)


def split_subjects(
    scans: Iterable[Mapping[str, Any]],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> dict[str, list[Scan]]:
    """Subject-level train/validation/test split with the dissertation's round-robin (report 4.3.2).

    ``fractions`` are the (training, validation, test) shares of each condition's scans. Per condition, subjects
    sorted by ascending scan count (ties by seed) are dealt to test, validation, training, test, ... skipping a
    partition once its scan count reaches its target; see the module docstring for rounding and overshoot. Every
    scan is placed exactly once and a subject is never split; the leakage check runs anyway so that a future change
    to this code cannot quietly break that promise. Labels must index ``classes`` (default ``["CN", "AD"]``).

    Returns ``{"training": [...], "validation": [...], "test": [...]}`` of shallow copies in canonical order.
    """
    _check_seed(seed)
    shares = _checked_fractions(fractions)
    cohort = _validated(scans, classes)
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
    scans: Iterable[Mapping[str, Any]],
    k: int = 3,
    val_fraction: float = 0.1,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> list[dict[str, list[Scan]]]:
    """``k`` subject-level folds; datalist ``i`` tests on fold ``i`` and trains/validates on the other folds.

    Per condition, subjects sorted by ascending scan count (ties by seed) are dealt round-robin over the folds,
    skipping a fold that reached its target of 1/k of the condition's scans (largest-remainder rounding, ties to the
    lower fold). Within datalist ``i`` the remaining subjects, in the same order, are dealt round-robin to validation
    then training with the same skipping rule. The validation target is ``val_fraction`` of the condition's whole
    cohort (not of the remaining folds), so every fold validates on the same amount of data as the plain split would;
    it is capped at what the remaining folds hold. Each scan is in exactly one test fold.

    A condition with fewer subjects than folds leaves some test folds without that condition; fewer subjects than
    folds overall would leave a test fold empty and is refused. Labels must index ``classes`` (default CN, AD).
    """
    _check_seed(seed)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}.")
    if not math.isfinite(val_fraction) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
    cohort = _validated(scans, classes)
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
