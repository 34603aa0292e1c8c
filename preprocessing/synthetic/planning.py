"""The cohort plan: subjects, visits, ADNI identifiers and nominal atrophy, deterministic for a seed (cheap: nothing is
rendered), and the kinds of deliberately broken scans.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

import numpy as np

#: ADNI visit codes used, with their months from baseline.
VISIT_MONTHS: tuple[tuple[str, int], ...] = (("sc", 0), ("m06", 6), ("m12", 12), ("m24", 24))

#: Default AD disease strength: the mean hippocampal volume loss from disease at an AD subject's first visit. With
#: the age-related change on top, AD hippocampi are 17-27 % smaller than the subject's own unatrophied ones at the first
#: visit and up to ~32 % by m24; ventricles 30-65 % larger; CN change a few % (see plan_cohort).
DEFAULT_ATROPHY = 0.18

#: Default lateral ventricular growth of AD per unit of hippocampal loss from disease (0.18 -> about +30 %).
DEFAULT_VENTRICLE_RATIO = 1.7

#: Series description of every good scan (and the folder name ADNI gives it).
MPRAGE = "MPRAGE"
#: Kinds of broken scans written with ``broken=True``, and what the pipeline should say about each.
BROKEN_KINDS: dict[str, str] = {
    "missing_slice": "one slice file of the series is missing: conversion fails (inconsistent slice increment)",
    "localizer": "a 3-plane localizer of the same visit: discovery skips it by its description (not MPRAGE)",
    "non_dicom_file": "a text file inside the series folder: conversion fails (not DICOM)",
    "truncated_file": "one DICOM file cut short: conversion fails (unreadable or short pixel data)",
}


@dataclass(frozen=True)
class VisitPlan:
    """One scan of a subject: ADNI identifiers, date, age and the nominal atrophy (fractions, age and disease).

    ``disease`` is the hippocampal volume fraction lost to disease alone (0 for CN): the scan's AD atrophy strength,
    recorded as its stage (``Atrophy`` in the collection CSV, ``atrophy`` in the BIDS sessions.tsv).
    """

    image_id: str
    visit: str
    months: int
    date: str
    time: str
    age: float
    hippocampus_loss: float
    mtl_loss: float
    ventricle_growth: float
    seed: int
    disease: float = 0.0


@dataclass(frozen=True)
class BrokenPlan:
    """An extra, deliberately broken image of a subject (see :data:`BROKEN_KINDS`), written at ``visit_index``."""

    kind: str
    image_id: str
    description: str
    visit_index: int = 0


@dataclass(frozen=True)
class SubjectPlan:
    """A subject: demographics, scanner voxel sizes, the random stream of its anatomy, and its visits."""

    subject: str
    group: str
    sex: str
    seed: int
    in_plane_mm: float
    slice_mm: float
    field_strength: float
    visits: tuple[VisitPlan, ...]
    broken: tuple[BrokenPlan, ...] = ()


def plan_cohort(
    n_subjects: int = 40,
    ad_fraction: float = 0.5,
    visits: tuple[int, int] = (1, 4),
    atrophy: float = DEFAULT_ATROPHY,
    seed: int = 0,
    broken: bool = False,
    voxel_size: tuple[float, float] = (1.0, 1.25),
    ventricle_ratio: float = DEFAULT_VENTRICLE_RATIO,
) -> list[SubjectPlan]:
    """Subjects, visits and nominal atrophy of a cohort, deterministic for ``seed`` (cheap: nothing is rendered).

    AD subjects lose ``atrophy`` (x U(0.85, 1.15)) of their hippocampal volume from disease by the first visit, and
    ``atrophy`` x U(0.12, 0.2) more of what remains per year; the medial temporal lobe loses 0.45 times as much and
    the lateral ventricles grow by ``ventricle_ratio`` (default 1.7) times the hippocampal loss. Everyone (CN too)
    gets an age-related change on top: per year over 60, 0.25 % hippocampal and 0.15 % MTL loss and 0.5 % ventricular
    growth. ``voxel_size`` is the range of in-plane and slice spacings (drawn per subject; the same scanner at every
    visit).
    """
    if n_subjects < 1:
        raise ValueError("n_subjects must be at least 1")
    if not 0.0 <= ad_fraction <= 1.0:
        raise ValueError("ad_fraction must be within 0..1")
    if not 1 <= visits[0] <= visits[1] <= len(VISIT_MONTHS):
        raise ValueError(f"visits must be a range within 1..{len(VISIT_MONTHS)}, got {visits}")
    if not 0.0 <= atrophy <= 0.4:
        raise ValueError("atrophy (hippocampal volume loss of AD subjects at baseline) must be within 0..0.4")
    if not 0.0 <= ventricle_ratio <= 4.0:
        raise ValueError("ventricle_ratio (ventricular growth per unit of hippocampal loss) must be within 0..4")
    if not 0.5 <= voxel_size[0] <= voxel_size[1] <= 4.0:
        raise ValueError(f"voxel_size must be a range within 0.5..4 mm, got {voxel_size}")

    rng = np.random.default_rng([seed, 0])
    n_ad = int(round(n_subjects * ad_fraction))
    groups = np.array(["AD"] * n_ad + ["CN"] * (n_subjects - n_ad))
    rng.shuffle(groups)
    numbers = rng.choice(np.arange(1000, 10000), size=n_subjects, replace=False)
    sites = rng.choice([2, 5, 6, 11, 13, 16, 18, 22, 23, 27, 31, 35, 41, 52, 67, 94, 100, 116, 130, 941], n_subjects)
    next_image = int(rng.integers(20000, 90000))

    def new_image_id() -> str:
        nonlocal next_image
        next_image += int(rng.integers(1, 400))
        return f"I{next_image}"

    subjects: list[SubjectPlan] = []
    for index in range(n_subjects):
        group = str(groups[index])
        sub_rng = np.random.default_rng([seed, 1, index])
        sex = "F" if sub_rng.random() < 0.5 else "M"
        age = float(np.clip(sub_rng.normal(76.0 if group == "AD" else 74.5, 6.5), 60.0, 88.0))
        n_visits = int(sub_rng.integers(visits[0], visits[1] + 1))
        baseline = dt.date(2005, 9, 1) + dt.timedelta(days=int(sub_rng.integers(0, 4 * 365)))
        severity = float(sub_rng.uniform(0.85, 1.15))
        rate = float(sub_rng.uniform(0.12, 0.2))
        visit_plans = []
        for code, months in VISIT_MONTHS[:n_visits]:
            years = months / 12.0
            jitter = int(sub_rng.integers(-14, 15)) if months else 0
            date = baseline + dt.timedelta(days=int(round(months * 30.44)) + jitter)
            clock = dt.time(int(sub_rng.integers(7, 19)), int(sub_rng.integers(0, 60)), int(sub_rng.integers(0, 60)))
            age_then = age + (date - baseline).days / 365.25
            over_60 = max(age_then - 60.0, 0.0)
            disease = 0.0
            if group == "AD":
                disease = 1.0 - (1.0 - atrophy * severity) * (1.0 - atrophy * rate) ** years
            hippocampus = 1.0 - (1.0 - 0.0025 * over_60) * (1.0 - disease)
            mtl = 1.0 - (1.0 - 0.0015 * over_60) * (1.0 - 0.45 * disease)
            ventricles = (1.0 + 0.005 * over_60) * (1.0 + ventricle_ratio * disease) - 1.0
            visit_plans.append(
                VisitPlan(
                    image_id=new_image_id(),
                    visit=code,
                    months=months,
                    date=date.isoformat(),
                    time=clock.strftime("%H%M%S"),
                    age=round(age_then, 2),
                    hippocampus_loss=round(hippocampus, 6),
                    mtl_loss=round(mtl, 6),
                    ventricle_growth=round(ventricles, 6),
                    seed=int(sub_rng.integers(2**62)),
                    disease=round(disease, 6),
                )
            )
        subjects.append(
            SubjectPlan(
                subject=f"{int(sites[index]):03d}_S_{int(numbers[index]):04d}",
                group=group,
                sex=sex,
                seed=int(sub_rng.integers(2**62)),
                in_plane_mm=round(float(sub_rng.uniform(*voxel_size)), 3),
                slice_mm=round(float(sub_rng.uniform(*voxel_size)), 2),
                field_strength=1.5 if sub_rng.random() < 0.5 else 3.0,
                visits=tuple(visit_plans),
            )
        )
    if broken:
        kinds = ("missing_slice", "localizer", "non_dicom_file", "truncated_file")
        for k, kind in enumerate(kinds):
            index = k % n_subjects
            description = "Localizer" if kind == "localizer" else "MPRAGE Repeat"
            extra = BrokenPlan(kind=kind, image_id=new_image_id(), description=description)
            subjects[index] = replace(subjects[index], broken=subjects[index].broken + (extra,))
    return subjects
