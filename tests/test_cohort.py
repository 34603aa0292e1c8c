"""Tests of cohort balancing, subject-level splits/folds, split summaries and datalist writing (scripts.cohort)."""

from __future__ import annotations

import json
import random
import re
import warnings
from collections import Counter, defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts.cohort import (
    CohortImbalanceWarning,
    balance_cohort,
    format_summary,
    kfold_datalists,
    split_subjects,
    split_summary,
    summarize_split,
    write_datalist,
)
from scripts.data import PARTITIONS, SubjectLeakageError, check_no_subject_leakage, read_datalist

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_subject(subject: str, label: int, image_ids: list[str], **extra) -> list[dict]:
    return [
        {
            "image": f"/data/{subject}/{image_id}.nii.gz",
            "label": label,
            "subject": subject,
            "image_id": image_id,
            **extra,
        }
        for image_id in image_ids
    ]


def make_cohort(sizes: dict[str, tuple[int, int]]) -> list[dict]:
    """Scans from ``{subject: (label, number of scans)}`` with image ids ``<subject>-<visit>``."""
    scans = []
    for subject, (label, count) in sizes.items():
        scans += make_subject(subject, label, [f"{subject}-{visit}" for visit in range(count)])
    return scans


def ids(scans: list[dict]) -> list[str]:
    return sorted(scan["image_id"] for scan in scans)


def subjects(scans: list[dict]) -> set[str]:
    return {scan["subject"] for scan in scans}


# ---------------------------------------------------------------------------------------------------------------------
# balance_cohort, hand-made cases


@pytest.mark.parametrize("seed", range(5))
def test_balance_takes_one_scan_per_cn_subject_first(seed: int) -> None:
    ad = make_subject("a1", 1, ["I1", "I3"]) + make_subject("a2", 1, ["I4"])
    # I2 < I10 < I30 only when digit runs compare as numbers, so the earliest id is I2 whatever the text order says.
    cn = make_subject("c1", 0, ["I30", "I10", "I2"]) + make_subject("c2", 0, ["I40"]) + make_subject("c3", 0, ["I50"])
    balanced = balance_cohort(ad + cn, seed=seed)
    assert ids([s for s in balanced if s["label"] == 1]) == ["I1", "I3", "I4"]
    assert ids([s for s in balanced if s["label"] == 0]) == ["I2", "I40", "I50"]


@pytest.mark.parametrize("seed", range(5))
def test_balance_second_round_takes_second_scans_before_any_third(seed: int) -> None:
    ad = make_cohort({"a1": (1, 5)})
    cn = make_cohort({"c1": (0, 3), "c2": (0, 1), "c3": (0, 2)})
    balanced = balance_cohort(ad + cn, seed=seed)
    assert ids([s for s in balanced if s["label"] == 0]) == ["c1-0", "c1-1", "c2-0", "c3-0", "c3-1"]


def test_balance_partial_round_keeps_distinct_subjects_chosen_by_seed() -> None:
    ad = make_cohort({"a1": (1, 2)})
    cn = make_cohort({f"c{i}": (0, 2) for i in range(6)})
    picks = set()
    for seed in range(20):
        chosen = [s for s in balance_cohort(ad + cn, seed=seed) if s["label"] == 0]
        assert len(chosen) == 2
        assert len(subjects(chosen)) == 2  # two people, never two visits of one
        assert all(s["image_id"].endswith("-0") for s in chosen)  # each person's first visit
        assert balance_cohort(ad + cn, seed=seed) == balance_cohort(list(reversed(ad + cn)), seed=seed)
        picks.add(tuple(ids(chosen)))
    assert len(picks) > 1  # the seed really chooses


def test_balance_orders_a_subjects_scans_by_date_before_image_id() -> None:
    ad = make_subject("a1", 1, ["I1"])
    cn = [
        {"image": "x/late.nii", "label": 0, "subject": "c1", "image_id": "I5", "date": "2010-06-01"},
        {"image": "x/early.nii", "label": 0, "subject": "c1", "image_id": "I9", "date": "2008-01-15"},
    ]
    balanced = balance_cohort(ad + cn)
    assert [s["image_id"] for s in balanced if s["label"] == 0] == ["I9"]


def test_balance_with_too_few_cn_keeps_everything_and_warns() -> None:
    scans = make_cohort({"a1": (1, 4), "a2": (1, 3), "c1": (0, 2), "c2": (0, 1)})
    with pytest.warns(CohortImbalanceWarning, match="Only 3 CN scans for 7 AD scans"):
        balanced = balance_cohort(scans)
    assert ids(balanced) == ids(scans)


def test_balance_with_equal_classes_keeps_everything_silently() -> None:
    scans = make_cohort({"a1": (1, 2), "c1": (0, 1), "c2": (0, 1)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ids(balance_cohort(scans)) == ids(scans)


def test_balance_edge_cases() -> None:
    assert balance_cohort([]) == []
    with pytest.raises(ValueError, match="No AD scans"):
        balance_cohort(make_cohort({"c1": (0, 2)}))


def test_balance_returns_copies_with_extra_keys() -> None:
    scans = make_subject("a1", 1, ["I1"], site="002", field_strength=3.0) + make_subject("c1", 0, ["I2"], site="005")
    balanced = balance_cohort(scans)
    assert balanced == sorted(scans, key=lambda s: s["label"])
    balanced[0]["site"] = "changed"
    assert scans[1]["site"] == "005" and scans[0]["site"] == "002"


# ---------------------------------------------------------------------------------------------------------------------
# split_subjects, hand-made cases


def test_split_deals_ascending_subjects_test_val_train_and_skips_full_partitions() -> None:
    # AD: 45 scans, 80/10/10 -> quotas 36, 4.5, 4.5; the tie of remainders goes to test: targets 36 / 4 / 5.
    # Names are not in size order, so only sorting by scan count explains the outcome.
    ad_sizes = {"s1": 1, "s2": 2, "s3": 3, "s4": 4, "s5": 5, "s6": 6, "s7": 7, "s8": 8, "s9": 9}
    names = dict(zip(ad_sizes, ["q", "c", "x", "a", "m", "b", "z", "k", "e"], strict=True))
    # CN: 6 scans -> quotas 4.8, 0.6, 0.6 -> floors 4/0/0, two leftovers to train (.8) then test (tie with val);
    # validation would be empty, so it gets one scan from training: 4/1/1.
    cn_sizes = {"c1": 1, "c2": 2, "c3": 3}
    cohort = make_cohort({names[s]: (1, n) for s, n in ad_sizes.items()})
    cohort += make_cohort({f"cn_{s}": (0, n) for s, n in cn_sizes.items()})

    split = split_subjects(cohort)
    # s1->test(1) s2->val(2) s3->train(3) s4->test(5, full) s5->val(7, full) s6->train; s7..s9 -> train.
    assert subjects(split["test"]) == {names["s1"], names["s4"], "cn_c1"}
    assert subjects(split["validation"]) == {names["s2"], names["s5"], "cn_c2"}
    assert subjects(split["training"]) == {names[s] for s in ("s3", "s6", "s7", "s8", "s9")} | {"cn_c3"}

    summary = {c.condition: c for c in summarize_split(split)}
    assert summary["AD"].targets == {"training": 36, "validation": 4, "test": 5}
    assert summary["AD"].scans == {"training": 33, "validation": 7, "test": 5}
    assert summary["AD"].subjects == {"training": 5, "validation": 2, "test": 2}
    assert summary["CN"].targets == {"training": 4, "validation": 1, "test": 1}
    assert summary["CN"].scans == {"training": 3, "validation": 2, "test": 1}


def test_split_with_custom_fractions() -> None:
    # 21 scans, 60/20/20 -> quotas 12.6, 4.2, 4.2 -> targets train 13, val 4, test 4.
    cohort = make_cohort({f"s{n}": (1, n) for n in range(1, 7)})
    split = split_subjects(cohort, fractions=(0.6, 0.2, 0.2))
    # s1->test(1) s2->val(2) s3->train(3) s4->test(5, full) s5->val(7, full) s6->train(9).
    assert {p: sorted(subjects(items)) for p, items in split.items()} == {
        "training": ["s3", "s6"],
        "validation": ["s2", "s5"],
        "test": ["s1", "s4"],
    }
    assert summarize_split(split, fractions=(0.6, 0.2, 0.2))[0].targets == {"training": 13, "validation": 4, "test": 4}


def test_split_ties_in_scan_count_are_broken_by_seed() -> None:
    cohort = make_cohort({f"s{i}": (1, 1) for i in range(10)})  # targets test 1, val 1, train 8
    outcomes = set()
    for seed in range(20):
        split = split_subjects(cohort, seed=seed)
        assert [len(split[p]) for p in PARTITIONS] == [8, 1, 1]
        assert split == split_subjects(list(reversed(cohort)), seed=seed)
        outcomes.add((split["test"][0]["subject"], split["validation"][0]["subject"]))
    assert len(outcomes) > 1


def test_split_targets_of_the_dissertation_cohort() -> None:
    # 650 scans per condition (report 4.1.4) -> "Target scan counts -> Train: 520, Val: 65, Test: 65".
    cohort = make_cohort({f"ad{i}": (1, 5) for i in range(130)})
    cohort += make_cohort({f"cn{i}": (0, 2 + i % 3) for i in range(217)})[:650]
    assert Counter(s["label"] for s in cohort) == {1: 650, 0: 650}
    split = split_subjects(cohort)
    for condition in summarize_split(split):
        assert condition.targets == {"training": 520, "validation": 65, "test": 65}
        assert condition.scans["test"] >= 65 and condition.scans["validation"] >= 65
    assert "Target scan counts -> Train: 520, Val: 65, Test: 65" in split_summary(split)


def test_summary_text_has_the_dissertation_layout() -> None:
    partitions = {
        "training": make_cohort({"a1": (1, 3), "a2": (1, 2), "c1": (0, 4)}),
        "validation": make_cohort({"a3": (1, 1)}),
        "test": make_cohort({"a4": (1, 1), "c2": (0, 1)}),
    }
    assert split_summary(partitions) == (
        "Condition: AD\n"
        "Target scan counts -> Train: 5, Val: 1, Test: 1\n"
        "Actual split scan counts:\n"
        "train: 5 scans over 2 subjects\n"
        "val: 1 scans over 1 subjects\n"
        "test: 1 scans over 1 subjects\n"
        "\n"
        "Condition: CN\n"
        "Target scan counts -> Train: 3, Val: 1, Test: 1\n"
        "Actual split scan counts:\n"
        "train: 4 scans over 1 subjects\n"
        "val: 0 scans over 0 subjects\n"
        "test: 1 scans over 1 subjects"
    )
    assert format_summary([]) == ""


# ---------------------------------------------------------------------------------------------------------------------
# kfold_datalists, hand-made case


def test_kfold_hand_computed() -> None:
    # 21 scans over subjects of 1..6 scans, k=3: fold targets 7/7/7.
    # s1->f0(1) s2->f1(2) s3->f2(3) s4->f0(5) s5->f1(7, full) s6->f2(9).
    # Validation target: 10% of 21 = 2.1 -> 2 scans, dealt validation/training over the other folds' subjects.
    cohort = make_cohort({f"s{n}": (1, n) for n in range(1, 7)})
    folds = kfold_datalists(cohort, k=3, val_fraction=0.1)
    got = [{p: sorted(subjects(fold[p])) for p in PARTITIONS} for fold in folds]
    assert got == [
        {"test": ["s1", "s4"], "validation": ["s2"], "training": ["s3", "s5", "s6"]},
        {"test": ["s2", "s5"], "validation": ["s1", "s4"], "training": ["s3", "s6"]},
        {"test": ["s3", "s6"], "validation": ["s1", "s4"], "training": ["s2", "s5"]},
    ]


def test_kfold_without_validation() -> None:
    cohort = make_cohort({f"s{n}": (n % 2, n) for n in range(1, 9)})
    for fold in kfold_datalists(cohort, k=2, val_fraction=0.0):
        assert fold["validation"] == []
        assert ids(fold["training"] + fold["test"]) == ids(cohort)


# ---------------------------------------------------------------------------------------------------------------------
# Refused input


@pytest.mark.parametrize(
    ("scans", "message"),
    [
        ([{"image": "a", "label": 1, "subject": "s"}], "lacks required key"),
        (make_subject("s", 2, ["I1"]), "expected 0 \\(CN\\) or 1 \\(AD\\)"),
        (make_subject("s", "1", ["I1"]), "expected 0 \\(CN\\) or 1 \\(AD\\)"),
        (make_subject("s", 1, ["I1"]) + make_subject("t", 1, ["I1"]), "Duplicate image_id"),
        (make_subject("s", 1, ["I1"]) + make_subject("s", 0, ["I2"]), "both AD and CN"),
    ],
)
def test_invalid_scans_are_refused_everywhere(scans: list[dict], message: str) -> None:
    for function in (balance_cohort, split_subjects):
        with pytest.raises(ValueError, match=message):
            function(scans)
    with pytest.raises(ValueError, match=message):
        kfold_datalists(scans, k=2)


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.1, 0.2), (1.1, -0.05, -0.05), (float("nan"), 0.5, 0.5)])
def test_bad_fractions_are_refused(fractions: tuple) -> None:
    with pytest.raises(ValueError, match="fractions"):
        split_subjects(make_cohort({"s": (1, 1)}), fractions=fractions)
    with pytest.raises(ValueError, match="fractions"):
        summarize_split({"training": []}, fractions=fractions)


def test_bad_seed_k_and_val_fraction_are_refused() -> None:
    cohort = make_cohort({"a": (1, 1), "b": (0, 1), "c": (1, 2)})
    with pytest.raises(ValueError, match="seed"):
        split_subjects(cohort, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        balance_cohort(cohort, seed=1.5)
    with pytest.raises(ValueError, match="k must be"):
        kfold_datalists(cohort, k=1)
    with pytest.raises(ValueError, match="val_fraction"):
        kfold_datalists(cohort, val_fraction=1.0)
    with pytest.raises(ValueError, match="from 3 subject"):
        kfold_datalists(cohort, k=4)


# ---------------------------------------------------------------------------------------------------------------------
# write_datalist


def test_write_datalist_relative_paths_and_kept_keys(tmp_path) -> None:
    dataset = tmp_path / "dataset"
    scans = [
        {"image": str(dataset / "AD" / "x.nii.gz"), "label": 1, "subject": 941, "image_id": 7, "site": "002"},
        {"image": str(dataset / "CN" / "y.nii.gz"), "label": 0, "subject": "s2", "image_id": "I8"},
    ]
    path = write_datalist({"training": scans[:1], "test": scans[1:]}, tmp_path / "out" / "datalist.json", dataset)
    assert path == tmp_path / "out" / "datalist.json"
    written = json.loads(path.read_text())
    assert written == {
        "training": [{"image": "AD/x.nii.gz", "label": 1, "subject": "941", "image_id": "7", "site": "002"}],
        "validation": [],
        "test": [{"image": "CN/y.nii.gz", "label": 0, "subject": "s2", "image_id": "I8"}],
    }
    assert read_datalist(path) == written
    assert sorted(p.name for p in path.parent.iterdir()) == ["datalist.json"]  # no temporary file left behind


def test_write_datalist_without_dataset_dir_keeps_paths(tmp_path) -> None:
    split = split_subjects(make_cohort({"a": (1, 2), "b": (0, 2)}))
    path = write_datalist(split, tmp_path / "d.json")
    written = read_datalist(path)
    assert {e["image"] for p in PARTITIONS for e in written[p]} == {s["image"] for s in make_cohort({"a": (1, 2)})} | {
        s["image"] for s in make_cohort({"b": (0, 2)})
    }
    check_no_subject_leakage(path)


def test_write_datalist_refuses_leakage_and_keeps_previous_file(tmp_path) -> None:
    path = tmp_path / "datalist.json"
    path.write_text("previous")
    leaky = {"training": make_subject("s1", 1, ["I1"]), "test": make_subject("s1", 1, ["I2"])}
    with pytest.raises(SubjectLeakageError, match="s1"):
        write_datalist(leaky, path)
    assert path.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datalist.json"]


@pytest.mark.parametrize(
    ("partitions", "message"),
    [
        ({"train": make_subject("s1", 1, ["I1"])}, "Unknown partition"),
        ({"training": make_subject("s1", 1, ["I1"]), "test": make_subject("s2", 1, ["I1"])}, "Duplicate image_id"),
        ({"training": make_subject("s1", 1, ["I1"])}, "not under dataset_dir"),
    ],
)
def test_write_datalist_refuses_bad_partitions(tmp_path, partitions: dict, message: str) -> None:
    path = tmp_path / "datalist.json"
    with pytest.raises(ValueError, match=message):
        write_datalist(partitions, path, dataset_dir=tmp_path / "elsewhere")
    assert not path.exists()


def test_write_datalist_unserialisable_key_writes_nothing(tmp_path) -> None:
    path = tmp_path / "datalist.json"
    with pytest.raises(TypeError):
        write_datalist({"training": make_subject("s1", 1, ["I1"], header=object())}, path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------------
# Property-based tests over random cohorts


@st.composite
def cohorts(draw, min_subjects: int = 1) -> list[dict]:
    """1-40 subjects per class with 1-6 scans each; ids are unique and not in size order; some scans dated."""
    scans = []
    image_number = draw(st.integers(0, 1000))
    for label, prefix in ((1, "AD"), (0, "CN")):
        sizes = draw(st.lists(st.integers(1, 6), min_size=min_subjects, max_size=40))
        for i, size in enumerate(sizes):
            dated = draw(st.booleans())
            for visit in range(size):
                image_number += 1
                scan = {
                    "image": f"/data/{prefix}/{image_number}.nii.gz",
                    "label": label,
                    "subject": f"{prefix}_{i:02d}",
                    "image_id": f"I{image_number}",
                }
                if dated:
                    scan["date"] = f"20{10 + visit:02d}-01-01"
                scans.append(scan)
    return scans


def shuffled(scans: list[dict], rnd: random.Random) -> list[dict]:
    copy = [dict(scan) for scan in scans]
    rnd.shuffle(copy)
    return copy


def partition_of_subjects(partitions: dict[str, list[dict]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for partition, items in partitions.items():
        for scan in items:
            found[scan["subject"]].add(partition)
    return found


@PROPERTY_SETTINGS
@given(scans=cohorts(), seed=st.integers(0, 2**16), rnd=st.randoms(use_true_random=False))
def test_property_balance(scans: list[dict], seed: int, rnd: random.Random) -> None:
    n_ad = sum(s["label"] == 1 for s in scans)
    cn_by_subject: dict[str, list[dict]] = defaultdict(list)
    for scan in scans:
        if scan["label"] == 0:
            cn_by_subject[scan["subject"]].append(scan)
    n_cn = sum(len(v) for v in cn_by_subject.values())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        balanced = balance_cohort(scans, seed=seed)
    imbalance_warnings = [w for w in caught if issubclass(w.category, CohortImbalanceWarning)]
    assert len(imbalance_warnings) == (n_cn < n_ad)

    kept = Counter(s["image_id"] for s in balanced)
    assert max(kept.values()) == 1  # each scan at most once
    assert set(kept) <= {s["image_id"] for s in scans}
    assert ids([s for s in balanced if s["label"] == 1]) == ids([s for s in scans if s["label"] == 1])
    kept_cn = [s for s in balanced if s["label"] == 0]
    assert len(kept_cn) == min(n_cn, n_ad)
    assert len(subjects(kept_cn)) == min(len(cn_by_subject), n_ad)

    # Round-robin: each subject keeps a prefix of its scans in (date, image id) order, and no subject that still had
    # scans to give is more than one round behind another.
    kept_per_subject = Counter(s["subject"] for s in kept_cn)
    for subject, its_scans in cn_by_subject.items():
        ordered = sorted(its_scans, key=lambda s: (s.get("date", ""), int(s["image_id"][1:])))
        assert ids([s for s in kept_cn if s["subject"] == subject]) == ids(ordered[: kept_per_subject[subject]])
        if kept_per_subject[subject] < len(its_scans):
            assert all(kept_per_subject[other] <= kept_per_subject[subject] + 1 for other in cn_by_subject)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CohortImbalanceWarning)
        assert balance_cohort(shuffled(scans, rnd), seed=seed) == balanced


@PROPERTY_SETTINGS
@given(scans=cohorts(), seed=st.integers(0, 2**16), rnd=st.randoms(use_true_random=False))
def test_property_split(scans: list[dict], seed: int, rnd: random.Random) -> None:
    split = split_subjects(scans, seed=seed)
    assert set(split) == set(PARTITIONS)
    assert ids([s for items in split.values() for s in items]) == ids(scans)  # every scan exactly once
    assert all(len(places) == 1 for places in partition_of_subjects(split).values())  # no subject split
    check_no_subject_leakage(split)
    assert split_subjects(shuffled(scans, rnd), seed=seed) == split

    summaries = {c.label: c for c in summarize_split(split)}
    for label in (0, 1):
        condition = summaries[label]
        sizes = Counter(s["subject"] for s in scans if s["label"] == label)
        assert sum(condition.targets.values()) == sum(sizes.values())
        for partition in PARTITIONS:
            items = [s for s in split[partition] if s["label"] == label]
            assert condition.scans[partition] == len(items)
            assert condition.subjects[partition] == len(subjects(items))
            if items:  # a subject was dealt only while the partition was short of its target
                assert len(items) - max(sizes[s] for s in subjects(items)) < condition.targets[partition]
        # The smallest subject always opens the deal, so test is never empty when it has a target.
        if condition.targets["test"] > 0:
            assert condition.scans["test"] > 0

    text = split_summary(split)
    for condition in summaries.values():
        block = text.split(f"Condition: {condition.condition}\n", 1)[1]
        for partition, short in (("training", "train"), ("validation", "val"), ("test", "test")):
            match = re.search(rf"^{short}: (\d+) scans over (\d+) subjects$", block, re.MULTILINE)
            assert match is not None
            assert (int(match[1]), int(match[2])) == (condition.scans[partition], condition.subjects[partition])


@PROPERTY_SETTINGS
@given(
    scans=cohorts(min_subjects=2),
    k=st.integers(2, 4),
    val_fraction=st.sampled_from([0.0, 0.1, 0.2]),
    seed=st.integers(0, 2**16),
    rnd=st.randoms(use_true_random=False),
)
def test_property_kfold(scans: list[dict], k: int, val_fraction: float, seed: int, rnd: random.Random) -> None:
    folds = kfold_datalists(scans, k=k, val_fraction=val_fraction, seed=seed)
    assert len(folds) == k
    tested = Counter(s["image_id"] for fold in folds for s in fold["test"])
    assert tested == Counter(s["image_id"] for s in scans)  # every scan in exactly one test fold
    test_subjects = [subjects(fold["test"]) for fold in folds]
    assert sum(len(t) for t in test_subjects) == len(set().union(*test_subjects))  # test folds share nobody
    for fold in folds:
        assert ids([s for p in PARTITIONS for s in fold[p]]) == ids(scans)
        assert all(len(places) == 1 for places in partition_of_subjects(fold).values())
        check_no_subject_leakage(fold)
        if val_fraction == 0:
            assert fold["validation"] == []
    assert kfold_datalists(shuffled(scans, rnd), k=k, val_fraction=val_fraction, seed=seed) == folds


@PROPERTY_SETTINGS
@given(scans=cohorts(), seed=st.integers(0, 2**16))
def test_property_balanced_split_is_deterministic_and_balanced(scans: list[dict], seed: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CohortImbalanceWarning)
        balanced = balance_cohort(scans, seed=seed)
    split = split_subjects(balanced, seed=seed)
    assert split_subjects(balanced, seed=seed) == split
    counts = {c.label: sum(c.scans.values()) for c in summarize_split(split)}
    n_ad = sum(s["label"] == 1 for s in scans)
    assert counts[1] == n_ad
    if sum(s["label"] == 0 for s in scans) >= n_ad:
        assert counts[0] == n_ad
