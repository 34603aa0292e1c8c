"""Command line of the data preparation: ``python -m preprocessing {discover,run,split,benchmark,synth} -h``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from preprocessing import adni
from preprocessing.cli_inputs import add_input_arguments as _add_input_arguments
from preprocessing.cli_inputs import discover as _discover
from preprocessing.cli_inputs import print_discovery as _print_discovery

if TYPE_CHECKING:
    from preprocessing.pipeline.executors import ScanExecutor


def cmd_discover(args: argparse.Namespace) -> int:
    discovery = _discover(args)
    args.out.mkdir(parents=True, exist_ok=True)
    report = adni.write_discovery_report(discovery, args.out / "discovery.txt")
    (args.out / "scans.json").write_text(json.dumps([s.as_record() for s in discovery.scans], indent=2) + "\n")
    _print_discovery(discovery, report)
    print(f"Scan list: {args.out / 'scans.json'}")
    return 0


def _qc_overrides(pairs: list[str] | None) -> dict:
    """``--qc-set key=value`` pairs as QC threshold overrides (values read as JSON: numbers, lists, true/false)."""
    from scripts.plan import default_qc_thresholds

    known, overrides = default_qc_thresholds(), {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            sys.exit(f"error: --qc-set {pair!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            sys.exit(f"error: --qc-set {pair!r}: the value must be JSON (e.g. 3.5, [700, 2100], false)")
    return overrides


def _executor(args: argparse.Namespace) -> ScanExecutor:
    """The executor for ``--scheduler``, connected (a Dask cluster) or submitted (SLURM jobs) before the long work."""
    from preprocessing.pipeline.executors import SchedulerError, SlurmOptions, make_executor

    slurm = SlurmOptions(jobs=args.jobs, cores=args.cores, memory=args.memory, walltime=args.walltime, queue=args.queue)
    try:
        if min(args.jobs, args.cores) < 1 or (args.workers is not None and args.workers < 1):
            raise SchedulerError("--jobs, --cores and --workers count things. Fix: give each as 1 or more")
        return make_executor(args.scheduler, args.workers, slurm)
    except SchedulerError as error:
        sys.exit(f"error: {error}")


def cmd_run(args: argparse.Namespace) -> int:
    with _executor(args) as executor:
        return _run(args, executor)


def _run(args: argparse.Namespace, executor: ScanExecutor) -> int:
    from tqdm import tqdm

    from preprocessing.pipeline import STATUS_QC_FAILED, qc_overview, run_batch
    from scripts.plan import build_plan, write_plan

    if args.scheduler != "local":
        print(f"Scheduler: {executor.description}")
    discovery = _discover(args)
    args.out.mkdir(parents=True, exist_ok=True)
    report = adni.write_discovery_report(discovery, args.out / "discovery.txt")
    _print_discovery(discovery, report)
    overrides = {"skull_stripper": args.skull_stripper, "spatial_size": args.spatial_size, "spacing": args.spacing}
    if args.synthstrip_weights:
        overrides["synthstrip_weights"] = str(args.synthstrip_weights)
    # Resolves the SynthStrip weights too: fails now, with the fix, rather than once per scan.
    try:
        plan = build_plan(overrides, _qc_overrides(args.qc_set), classes=list(discovery.classes))
    except FileNotFoundError as error:  # no SynthStrip weights: the message says where to put them
        sys.exit(f"error: {error}")
    plan_path = write_plan(plan, args.out)  # refuses a folder that holds volumes made with other settings
    records = [scan.as_record() for scan in discovery.scans]
    rows = run_batch(
        records, args.out, args.workers, overrides, make_qc=not args.no_qc, progress=tqdm, qc_thresholds=plan["qc"],
        executor=executor,
    )  # fmt: skip
    failed = [row for row in rows if row.get("status") not in ("ok", STATUS_QC_FAILED)]
    refused = [row for row in rows if row.get("status") == STATUS_QC_FAILED]
    warned = [row for row in rows if row.get("status") == "ok" and row.get("qc_status") == "warn"]
    usable = len(rows) - len(failed) - len(refused)
    print(f"\nPreprocessed {usable} of {len(rows)} scans into {args.out / 'images'}")
    for title, group, key in (("failed", failed, "error"), ("refused by quality control", refused, "qc_reasons"),
                              ("passed with QC warnings", warned, "qc_reasons")):  # fmt: skip
        if group:
            print(f"{len(group)} {title}:")
            for row in group:
                print(f"  {row['image_id']} ({row['subject']}): {row.get(key)}")
    print(f"Manifest: {args.out / 'manifest.csv'}")
    print(f"Plan:     {plan_path}")
    if not args.no_qc:
        print(f"QC page:  {qc_overview(rows, args.out)}")
    return 0 if usable else 1  # partial failures are reported above, not fatal


def cmd_split(args: argparse.Namespace) -> int:
    from preprocessing.pipeline import read_manifest
    from scripts import cohort
    from scripts.plan import plan_classes, read_plan

    manifest = args.manifest or args.out / "manifest.csv"
    plan = read_plan(args.out)
    classes = plan_classes(plan)  # the classes 'run' was given; CN/AD for older folders
    all_rows = read_manifest(manifest)
    rows = [row for row in all_rows if row.get("status") == "ok"]
    left_out = [row for row in all_rows if row.get("status") != "ok"]
    if left_out:
        print(f"Left out {len(left_out)} scans that failed preprocessing or quality control (see {manifest}):")
        for row in left_out:
            print(f"  {row.get('image_id')} ({row.get('subject')}): {row.get('status')}: {row.get('error')}")
    if not rows:
        sys.exit(f"error: no preprocessed scans with status ok in {manifest}; run 'python -m preprocessing run' first")
    for row in rows:
        label = int(row["label"])
        if not 0 <= label < len(classes) or (row.get("group") and row["group"] != classes[label]):
            sys.exit(
                f"error: {manifest}: {row['image_id']} has label {label} ({row.get('group')}) but "
                + (f"{args.out / 'plan.json'} gives" if plan else f"with no plan.json in {args.out} the default is")
                + f" the classes {','.join(classes)}; run 'python -m preprocessing run' into this folder with the "
                "--classes the manifest was made with"
            )
    scans = [
        {
            "image": row["output"],
            "label": int(row["label"]),
            # Old manifests may hold hand-mangled ids: one person must be one subject before the split.
            "subject": adni.normalize_subject_id(row["subject"]),
            "image_id": row["image_id"],
            **({"date": row["acq_date"]} if row.get("acq_date") else {}),
        }
        for row in rows
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", cohort.CohortImbalanceWarning)
        balanced = cohort.balance_cohort(scans, seed=args.seed, classes=classes)
    for warning in caught:
        print(f"warning: {warning.message}")
    counts = ", ".join(
        f"{sum(s['label'] == i for s in balanced)} {name}" for i, name in reversed(list(enumerate(classes)))
    )
    print(f"Balanced cohort: {len(balanced)} scans ({counts}) of {len(scans)} preprocessed")
    kept = {s["image_id"] for s in balanced}
    clinical = {row["image_id"]: measures for row in rows if row["image_id"] in kept and (measures := _stage(row))}
    partitions = cohort.split_subjects(balanced, fractions=tuple(args.fractions), seed=args.seed, classes=classes)
    extra = {"dataset_dir": args.out, "classes": classes, "clinical": clinical or None}
    datalist = cohort.write_datalist(partitions, args.datalist or args.out / "datalist.json", **extra)
    print(cohort.split_summary(partitions, fractions=tuple(args.fractions), classes=classes))
    if clinical:
        print(f"Stage measures (CDR, MMSE, atrophy) of {len(clinical)} scans recorded in the datalist's 'clinical'")
    print(f"Datalist: {datalist}")
    if args.folds:
        folds = cohort.kfold_datalists(
            balanced, k=args.folds, val_fraction=args.fractions[1], seed=args.seed, classes=classes
        )
        for index, fold in enumerate(folds):
            path = cohort.write_datalist(fold, args.out / "folds" / f"fold_{index}.json", **extra)
            counts = ", ".join(f"{name} {len(items)}" for name, items in fold.items())
            print(f"Fold {index}: {counts} -> {path}")
    return 0


def _stage(row: dict) -> dict[str, float]:
    """The stage measures of a manifest row (``cdr``, ``mmse``, ``atrophy``) that it has, as numbers."""
    measures = {}
    for key in ("cdr", "mmse", "atrophy"):
        try:
            measures[key] = float(row[key])
        except (KeyError, TypeError, ValueError):  # absent (older manifest) or blank
            continue
    return measures


def cmd_benchmark(args: argparse.Namespace) -> int:
    from preprocessing import benchmark

    argv = ["--repeats", str(args.repeats)] + (["--no-forward"] if args.no_forward else [])
    if args.synthstrip_weights:
        argv += ["--synthstrip-weights", str(args.synthstrip_weights)]
    for option in ("grid", "scans", "workers", "skull_stripper", "spacing", "spatial_size"):
        if getattr(args, option) is not None:
            argv += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    benchmark.main(argv)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from preprocessing import synthetic

    if args.min_visits > args.max_visits:
        sys.exit(f"error: --min-visits {args.min_visits} is more than --max-visits {args.max_visits}")
    try:
        info = synthetic.generate_cohort(
            args.out,
            n_subjects=args.subjects,
            ad_fraction=args.ad_fraction,
            visits=(args.min_visits, args.max_visits),
            atrophy=args.atrophy,
            ventricle_ratio=args.ventricle_ratio,
            seed=args.seed,
            broken=args.broken,
            workers=args.workers,
            progress=tqdm,
            voxel_size=tuple(args.voxel_size),
            overwrite=args.overwrite,
            layout=args.layout,
        )
    except (FileExistsError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(f"Synthetic cohort: {info.n_scans} scans of {info.n_subjects} subjects in {info.seconds:.0f} s "
          f"({info.seconds_per_scan:.1f} s per scan)")  # fmt: skip
    for group, counts in info.groups.items():
        print(f"  {group}: {counts['scans']} scans, {counts['subjects']} subjects")
    if info.broken:
        print(f"  plus {len(info.broken)} broken images on purpose:")
        for item in info.broken:
            print(f"    {item['image_id']} ({item['subject']}, {item['kind']}): {item['expected']}")
    if info.layout != "bids":
        print(f"ADNI folder:    {info.adni_dir}")
        print(f"Collection CSV: {info.collection_csv}")
    if info.bids_dir is not None:
        print(f"BIDS dataset:   {info.bids_dir}")
    print(f"Ground truth:   {info.truth_dir} (cohort.json, *_regions.nii.gz, *_truth.json)")
    if info.layout != "bids":
        print(
            f"Next: python -m preprocessing run --adni {info.adni_dir} --collection-csv {info.collection_csv} --out OUT"
        )
    else:
        print(f"Next: python -m preprocessing run --bids {info.bids_dir} --out OUT")
    return 0


def _chain_defaults() -> dict:
    """The chain's defaults, read from bundle/configs/preprocess.json (their one source)."""
    from scripts.plan import default_settings

    return default_settings()


def _add_scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    cluster = parser.add_argument_group("where the scans run (README: 'Preprocessing on a cluster')")
    cluster.add_argument(
        "--scheduler", default="local",
        help="local (a process pool on this machine, default), dask://HOST:PORT (workers of a running 'dask "
        "scheduler') or slurm (Dask workers as SLURM jobs, submitted from this login node)",
    )  # fmt: skip
    cluster.add_argument("--jobs", type=int, default=1, help="slurm: number of jobs (default 1)")
    cluster.add_argument("--cores", type=int, default=4, help="slurm: cores per job, one scan each (default 4)")
    cluster.add_argument("--memory", default="16GB", help="slurm: memory per job (default 16GB)")
    cluster.add_argument("--walltime", default="04:00:00", help="slurm: time limit per job (default 04:00:00)")
    cluster.add_argument("--queue", default=None, help="slurm: partition (default: the cluster's default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m preprocessing", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    discover = commands.add_parser("discover", help="list the usable scans of a download and why others are skipped")
    _add_input_arguments(discover)
    discover.add_argument("--out", type=Path, required=True, help="folder for discovery.txt and scans.json")
    discover.set_defaults(func=cmd_discover)

    run = commands.add_parser("run", help="convert, preprocess and QC every usable scan (resumable, in parallel)")
    _add_input_arguments(run)
    run.add_argument("--out", type=Path, required=True, help="output folder (images/, masks/, qc/, manifest.csv)")
    run.add_argument(
        "--workers", type=int, default=None,
        help="worker processes (default: one per CPU core); with a Dask scheduler, the most scans in flight "
        "(default: the cluster's worker threads)",
    )  # fmt: skip
    _add_scheduler_arguments(run)
    defaults = _chain_defaults()
    run.add_argument(
        "--skull-stripper", choices=["synthstrip", "deepbet", "none"], default=defaults["skull_stripper"],
        help="synthstrip (dissertation; needs synthstrip.1.pt), deepbet (offline), none (input already stripped); "
        f"default {defaults['skull_stripper']}",
    )  # fmt: skip
    run.add_argument("--synthstrip-weights", type=Path, help="synthstrip.1.pt (default: $FREESURFER_HOME/models/)")
    run.add_argument(
        "--spatial-size", type=int, default=defaults["spatial_size"],
        help=f"edge of the output cube in voxels (default {defaults['spatial_size']})",
    )  # fmt: skip
    run.add_argument(
        "--spacing", type=float, default=defaults["spacing"],
        help=f"isotropic resampling before the crop, in mm (default {defaults['spacing']})",
    )  # fmt: skip
    run.add_argument(
        "--qc-set", action="append", metavar="KEY=VALUE",
        help="override one quality-control threshold of configs/preprocess.json 'qc' (repeatable), "
        "e.g. max_slice_spacing_mm=3.5",
    )  # fmt: skip
    run.add_argument("--no-qc", action="store_true", help="skip the QC pictures")
    run.set_defaults(func=cmd_run)

    split = commands.add_parser("split", help="balanced cohort and subject-level datalist(s) from a manifest")
    split.add_argument("--out", type=Path, required=True, help="the folder of 'run' (dataset_dir of the bundle)")
    split.add_argument("--manifest", type=Path, help="default: <out>/manifest.csv")
    split.add_argument("--datalist", type=Path, help="default: <out>/datalist.json")
    split.add_argument("--fractions", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"))
    split.add_argument("--folds", type=int, default=0, help="also write k subject-level folds to <out>/folds/")
    split.add_argument("--seed", type=int, default=0)
    split.set_defaults(func=cmd_split)

    bench = commands.add_parser(
        "benchmark", help="seconds per step of the chain: a batch of synthetic heads (--grid) or a 1 mm phantom head"
    )
    bench.add_argument("--repeats", type=int, default=1)
    bench.add_argument("--synthstrip-weights", type=Path)
    bench.add_argument("--no-forward", action="store_true", help="do not time a SynthStrip forward pass")
    bench.add_argument(
        "--grid", help="voxel size in mm, e.g. 1.0 or 0.4x0.4x1.5 (rows x columns x slices): time a batch of "
        "synthetic heads on that grid through the real batch (deepbet, default workers), per step and scans/minute",
    )  # fmt: skip
    bench.add_argument("--scans", type=int, help="heads in the --grid batch (default 6: mostly warm workers)")
    bench.add_argument("--workers", type=int, help="--grid batch workers (default: one per CPU core)")
    bench.add_argument("--skull-stripper", choices=["synthstrip", "deepbet", "none"], help="default deepbet")
    bench.add_argument("--spacing", type=float, help="--grid resampling in mm (default: preprocess.json's)")
    bench.add_argument("--spatial-size", type=int, help="--grid output cube edge (default: preprocess.json's)")
    bench.set_defaults(func=cmd_benchmark)

    synth = commands.add_parser(
        "synth", help="write a synthetic ADNI-like cohort with known atrophy (DICOM, collection CSV, ground truth)"
    )
    synth.add_argument("--out", type=Path, required=True, help="output folder (ADNI/, collection.csv, truth/)")
    synth.add_argument("--subjects", type=int, default=40, help="number of subjects (default 40)")
    synth.add_argument("--ad-fraction", type=float, default=0.5, help="fraction of AD subjects (default 0.5)")
    synth.add_argument("--min-visits", type=int, default=1, help="fewest visits per subject (default 1)")
    synth.add_argument("--max-visits", type=int, default=4, help="most visits per subject, at most 4 (default 4)")
    synth.add_argument(
        "--atrophy", type=float, default=0.18,
        help="AD hippocampal volume loss from disease at the first visit, 0..0.4 (default 0.18; 0: no AD effect)",
    )  # fmt: skip
    synth.add_argument(
        "--ventricle-ratio", type=float, default=1.7,
        help="AD lateral ventricular growth per unit of hippocampal loss, 0..4 (default 1.7: atrophy 0.18 -> +31 %%)",
    )  # fmt: skip
    synth.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same files")
    synth.add_argument("--broken", action="store_true", help="add broken images (missing slice, localizer, ...)")
    synth.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU core)")
    synth.add_argument(
        "--voxel-size", type=float, nargs=2, default=[1.0, 1.25], metavar=("MIN", "MAX"),
        help="range of voxel sizes in mm, drawn per subject (default 1.0 1.25)",
    )  # fmt: skip
    synth.add_argument("--overwrite", action="store_true", help="replace a cohort already in --out")
    synth.add_argument(
        "--layout", choices=["adni", "bids", "both"], default="adni",
        help="adni: DICOM download and collection CSV (default); bids: NIfTI BIDS dataset in <out>/bids; both",
    )  # fmt: skip
    synth.add_argument("--bids", dest="layout", action="store_const", const="bids", help="the same as --layout bids")
    synth.set_defaults(func=cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        # run_batch has saved the manifest and said what is left; a traceback would bury that.
        print("error: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
