"""Writing a whole cohort: every subject rendered and written in worker processes (the files do not depend on how
many), then the collection CSV (or the BIDS tables) and ``truth/cohort.json``. ``python -m preprocessing synth``
calls :func:`generate_cohort`.
"""

from __future__ import annotations

import csv
import datetime as dt
import inspect
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preprocessing.dicom_writer import write_series_from_affine
from preprocessing.synthetic.bids import write_bids_scan, write_bids_tables
from preprocessing.synthetic.dicom import _dicom_tags, _session_folder, _write_broken
from preprocessing.synthetic.planning import MPRAGE, SubjectPlan, plan_cohort
from preprocessing.synthetic.rendering import render_scan
from preprocessing.synthetic.template import load_template
from preprocessing.synthetic.truth import _write_cohort_json, _write_truth


@dataclass
class CohortInfo:
    """Where a generated cohort is and what it holds."""

    out: Path
    adni_dir: Path
    collection_csv: Path
    truth_dir: Path
    n_subjects: int
    n_scans: int
    groups: dict[str, dict[str, int]]
    broken: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    layout: str = "adni"
    bids_dir: Path | None = None

    @property
    def seconds_per_scan(self) -> float:
        """Wall-clock seconds per good scan (all workers together)."""
        return self.seconds / max(self.n_scans, 1)


#: How a cohort is written: an ADNI download (DICOM and collection CSV), a BIDS dataset (NIfTI), or both.
LAYOUTS = ("adni", "bids", "both")


def generate_cohort(
    out: Path | str,
    workers: int | None = None,
    progress: Callable[..., Iterable] | None = None,
    overwrite: bool = False,
    layout: str = "adni",
    **plan_options: Any,
) -> CohortInfo:
    """Write a synthetic ADNI-like cohort under ``out``: ``ADNI/`` (DICOM), ``collection.csv`` and ``truth/``; with
    ``layout="bids"`` ``bids/`` (see :mod:`.bids`) instead of the first two, with ``"both"`` all of them.

    ``plan_options`` are the arguments of :func:`plan_cohort` (subjects, visits, atrophy, ventricle ratio, seed,
    broken scans, voxel sizes), which says what each does; they are recorded in ``truth/cohort.json``. Subjects are
    rendered in ``workers`` processes (default: one per CPU core); the files do not depend on it. ``progress`` wraps
    an iterable like ``tqdm`` does. An existing cohort in ``out`` is replaced only with ``overwrite``. The broken
    extras are DICOM faults: they need the ADNI layout.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if layout == "bids" and plan_options.get("broken"):
        raise ValueError("broken scans are DICOM faults: write them with the adni (or both) layout")
    # One list of cohort settings (plan_cohort's signature): bound here to record them with their defaults.
    arguments = inspect.signature(plan_cohort).bind(**plan_options)
    arguments.apply_defaults()
    start = time.perf_counter()
    out = Path(out)
    adni_dir, truth_dir, collection_csv = out / "ADNI", out / "truth", out / "collection.csv"
    bids_dir = out / "bids"
    existing = [p for p in (adni_dir, truth_dir, collection_csv, bids_dir) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds a cohort ({existing[0].name}); pass overwrite=True to replace it")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    plans = plan_cohort(**arguments.arguments)
    template = load_template()  # loaded before the workers start, so forked workers share it
    workers = max(1, min(workers or os.cpu_count() or 1, len(plans)))
    progress = progress or (lambda iterable, **_: iterable)
    results: dict[str, list[dict[str, Any]]] = {}
    if workers == 1:
        for plan in progress(plans, total=len(plans), desc="synthesising", unit="subject"):
            results[plan.subject] = _write_subject(out, plan, layout)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_write_subject, out, plan, layout): plan.subject for plan in plans}
            for future in progress(as_completed(futures), total=len(futures), desc="synthesising", unit="subject"):
                results[futures[future]] = future.result()

    records = [record for plan in plans for record in results[plan.subject]]
    scans = [r for r in records if r["kind"] == "scan"]
    broken_records = [r for r in records if r["kind"] != "scan"]
    if layout != "bids":
        _write_collection_csv(collection_csv, plans, records)
    if layout != "adni":
        write_bids_tables(bids_dir, plans, records)
    _write_cohort_json(truth_dir / "cohort.json", plans, records, template, dict(arguments.arguments))
    groups: dict[str, dict[str, int]] = {}
    for group in ("AD", "CN"):
        members = [r for r in scans if r["group"] == group]
        groups[group] = {"subjects": len({r["subject"] for r in members}), "scans": len(members)}
    return CohortInfo(
        out=out,
        adni_dir=adni_dir,
        collection_csv=collection_csv,
        truth_dir=truth_dir,
        n_subjects=len(plans),
        n_scans=len(scans),
        groups=groups,
        broken=[
            {k: str(r[k]) for k in ("kind", "subject", "image_id", "description", "expected")} for r in broken_records
        ],
        seconds=time.perf_counter() - start,
        layout=layout,
        bids_dir=bids_dir if layout != "adni" else None,
    )


def _write_subject(out: Path, subject: SubjectPlan, layout: str = "adni") -> list[dict[str, Any]]:
    """Render and write every visit of one subject (and its broken extras); one record per image written."""
    template = load_template()
    records = []
    for visit_index, visit in enumerate(subject.visits):
        started = time.perf_counter()
        scan = render_scan(subject, visit_index, template)
        record = _write_truth(out / "truth", subject, visit, scan, template)
        if layout != "adni":
            record["bids_path"] = str(write_bids_scan(out / "bids", subject, visit, scan).relative_to(out))
        if layout == "bids":
            record.update(kind="scan", seconds=time.perf_counter() - started)
            records.append(record)
            continue
        folder = out / "ADNI" / subject.subject / MPRAGE / _session_folder(visit.date, visit.time) / visit.image_id
        write_series_from_affine(
            folder,
            scan.volume,
            scan.geometry.affine,
            patient_id=subject.subject,
            series_description=MPRAGE,
            series_number=2,
            file_prefix=f"ADNI_{subject.subject}_MR_{MPRAGE}_{visit.image_id}",
            uid_seed=f"{subject.subject}/{visit.image_id}/{visit.seed}",
            extra_tags=_dicom_tags(subject, visit),
        )
        record.update(kind="scan", dicom_dir=str(folder.relative_to(out)), seconds=time.perf_counter() - started)
        records.append(record)
        for extra in subject.broken:
            if extra.visit_index == visit_index:
                records.append(_write_broken(out, subject, visit, scan, extra))
    return records


def _write_collection_csv(path: Path, plans: Sequence[SubjectPlan], records: Sequence[dict[str, Any]]) -> None:
    """ADNI's image collection CSV: one quoted row per image, dates as M/D/YYYY, ages in whole years, and (not in
    ADNI's) the scan's ``Atrophy``: its AD hippocampal loss from disease, 0 for CN."""
    path.parent.mkdir(parents=True, exist_ok=True)
    last = max(dt.date.fromisoformat(r["acq_date"]) for r in records)
    downloaded = last + dt.timedelta(days=30)
    header = ["Image Data ID", "Subject", "Group", "Sex", "Age", "Visit", "Modality", "Description", "Type",
              "Acq Date", "Format", "Downloaded", "Atrophy"]  # fmt: skip
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(header)
        for r in records:
            date = dt.date.fromisoformat(r["acq_date"])
            writer.writerow(
                [r["image_id"], r["subject"], r["group"], r["sex"], str(int(r["age"])), r["visit"], "MRI",
                 r["description"], "Original", f"{date.month}/{date.day}/{date.year}", "DCM",
                 f"{downloaded.month}/{downloaded.day}/{downloaded.year}", f"{r['atrophy']:.6f}"]
            )  # fmt: skip
