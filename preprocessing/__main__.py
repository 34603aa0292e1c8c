"""Command line of the data preparation: ``python -m preprocessing {discover,run,split,benchmark,synth} -h``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from preprocessing import adni


def _add_input_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("input (an ADNI download, or a folder of NIfTI files with a CSV)")
    source.add_argument("--adni", type=Path, help="the ADNI folder of the download (ADNI/<subject>/<description>/...)")
    source.add_argument("--collection-csv", type=Path, help="ADNI's image collection CSV that came with the download")
    source.add_argument(
        "--label-table", type=Path, help="labels by subject (e.g. ADNIMERGE: PTID, DX_bl), override Group"
    )
    source.add_argument("--label-subject-column", help="subject column of --label-table (guessed if not given)")
    source.add_argument("--label-column", help="label column of --label-table (guessed if not given)")
    source.add_argument(
        "--include-pattern", action="append", help="regex a series description must match (repeatable); "
        "default: MPRAGE without accelerated variants",
    )  # fmt: skip
    source.add_argument("--exclude-pattern", action="append", help="regex that rules a description out (repeatable)")
    source.add_argument("--nifti-csv", type=Path, help="CSV with path, subject, label[, visit] for NIfTI input")


def _discover(args: argparse.Namespace) -> adni.Discovery:
    if args.nifti_csv:
        return adni.discover_nifti(args.nifti_csv)
    if not args.collection_csv:
        sys.exit("error: give --collection-csv (with --adni) for an ADNI download, or --nifti-csv for NIfTI files")
    return adni.discover_adni(
        args.collection_csv,
        args.adni,
        include_patterns=tuple(args.include_pattern or adni.DEFAULT_MPRAGE_PATTERNS),
        exclude_patterns=tuple(args.exclude_pattern or adni.DEFAULT_EXCLUDE_PATTERNS),
        label_table=args.label_table,
        label_subject_column=args.label_subject_column,
        label_column=args.label_column,
    )


def _print_discovery(discovery: adni.Discovery, report: Path) -> None:
    summary = discovery.summary()
    print(f"Found {summary['scans']} scans of {summary['subjects']} subjects:")
    for group, counts in summary["groups"].items():
        print(f"  {group}: {counts['scans']} scans, {counts['subjects']} subjects")
    if summary["skipped_total"]:
        reasons = ", ".join(f"{category} {count}" for category, count in summary["skipped"].items())
        print(f"Skipped {summary['skipped_total']}: {reasons} (details in {report})")


def cmd_discover(args: argparse.Namespace) -> int:
    discovery = _discover(args)
    args.out.mkdir(parents=True, exist_ok=True)
    report = adni.write_discovery_report(discovery, args.out / "discovery.txt")
    (args.out / "scans.json").write_text(json.dumps([s.as_record() for s in discovery.scans], indent=2) + "\n")
    _print_discovery(discovery, report)
    print(f"Scan list: {args.out / 'scans.json'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from preprocessing.pipeline import qc_overview, run_batch

    discovery = _discover(args)
    args.out.mkdir(parents=True, exist_ok=True)
    report = adni.write_discovery_report(discovery, args.out / "discovery.txt")
    _print_discovery(discovery, report)
    overrides = {"skull_stripper": args.skull_stripper, "spatial_size": args.spatial_size, "spacing": args.spacing}
    if args.synthstrip_weights:
        overrides["synthstrip_weights"] = str(args.synthstrip_weights)
    if args.skull_stripper == "synthstrip":
        from scripts.skull_strip import resolve_synthstrip_weights

        resolve_synthstrip_weights(args.synthstrip_weights)  # fail now, with the fix, rather than once per scan
    records = [scan.as_record() for scan in discovery.scans]
    rows = run_batch(records, args.out, args.workers, overrides, make_qc=not args.no_qc, progress=tqdm)
    failed = [row for row in rows if row.get("status") != "ok"]
    print(f"\nPreprocessed {len(rows) - len(failed)} of {len(rows)} scans into {args.out / 'images'}")
    if failed:
        print(f"{len(failed)} failed:")
        for row in failed:
            print(f"  {row['image_id']} ({row['subject']}): {row['error']}")
    print(f"Manifest: {args.out / 'manifest.csv'}")
    if not args.no_qc:
        print(f"QC page:  {qc_overview(rows, args.out)}")
    return 0 if len(failed) < len(rows) else 1  # partial failures are reported above, not fatal


def cmd_split(args: argparse.Namespace) -> int:
    from preprocessing.pipeline import read_manifest
    from scripts import cohort

    manifest = args.manifest or args.out / "manifest.csv"
    rows = [row for row in read_manifest(manifest) if row.get("status") == "ok"]
    if not rows:
        sys.exit(f"error: no preprocessed scans with status ok in {manifest}; run 'python -m preprocessing run' first")
    scans = [
        {
            "image": row["output"],
            "label": int(row["label"]),
            "subject": row["subject"],
            "image_id": row["image_id"],
            **({"date": row["acq_date"]} if row.get("acq_date") else {}),
        }
        for row in rows
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", cohort.CohortImbalanceWarning)
        balanced = cohort.balance_cohort(scans, seed=args.seed)
    for warning in caught:
        print(f"warning: {warning.message}")
    n_ad = sum(s["label"] == 1 for s in balanced)
    print(f"Balanced cohort: {len(balanced)} scans ({n_ad} AD, {len(balanced) - n_ad} CN) of {len(scans)} preprocessed")
    partitions = cohort.split_subjects(balanced, fractions=tuple(args.fractions), seed=args.seed)
    datalist = cohort.write_datalist(partitions, args.datalist or args.out / "datalist.json", dataset_dir=args.out)
    print(cohort.split_summary(partitions, fractions=tuple(args.fractions)))
    print(f"Datalist: {datalist}")
    if args.folds:
        folds = cohort.kfold_datalists(balanced, k=args.folds, val_fraction=args.fractions[1], seed=args.seed)
        for index, fold in enumerate(folds):
            path = cohort.write_datalist(fold, args.out / "folds" / f"fold_{index}.json", dataset_dir=args.out)
            counts = ", ".join(f"{name} {len(items)}" for name, items in fold.items())
            print(f"Fold {index}: {counts} -> {path}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from preprocessing import benchmark

    argv = ["--repeats", str(args.repeats)] + (["--no-forward"] if args.no_forward else [])
    if args.synthstrip_weights:
        argv += ["--synthstrip-weights", str(args.synthstrip_weights)]
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
    print(f"ADNI folder:    {info.adni_dir}")
    print(f"Collection CSV: {info.collection_csv}")
    print(f"Ground truth:   {info.truth_dir} (cohort.json, *_regions.nii.gz, *_truth.json)")
    print(f"Next: python -m preprocessing run --adni {info.adni_dir} --collection-csv {info.collection_csv} --out OUT")
    return 0


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
    run.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU core)")
    run.add_argument(
        "--skull-stripper", choices=["synthstrip", "deepbet", "none"], default="synthstrip",
        help="synthstrip (dissertation; needs synthstrip.1.pt), deepbet (offline), none (input already stripped)",
    )  # fmt: skip
    run.add_argument("--synthstrip-weights", type=Path, help="synthstrip.1.pt (default: $FREESURFER_HOME/models/)")
    run.add_argument("--spatial-size", type=int, default=128, help="edge of the output cube in voxels (default 128)")
    run.add_argument(
        "--spacing", type=float, default=1.0, help="isotropic resampling before the crop, in mm (default 1.0)"
    )
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

    bench = commands.add_parser("benchmark", help="seconds per step of the per-volume chain on a 1 mm phantom head")
    bench.add_argument("--repeats", type=int, default=1)
    bench.add_argument("--synthstrip-weights", type=Path)
    bench.add_argument("--no-forward", action="store_true", help="do not time a SynthStrip forward pass")
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
    synth.set_defaults(func=cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
