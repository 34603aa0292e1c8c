"""The input options of ``discover`` and ``run`` (which cohort, where its tables are, which classes) and the discovery
they select, printed the same way for every source.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from preprocessing import adni, cohorts

#: The options that name a source; exactly one of these (``--adni`` goes with ``--collection-csv``) is given.
SOURCES = ("collection_csv", "nifti_csv", "bids", "oasis1", "oasis3")


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every source (ADNI download, NIfTI CSV, BIDS, OASIS-1, OASIS-3) and of the class list."""
    source = parser.add_argument_group(
        "input (one of: an ADNI download, a folder of NIfTI files with a CSV, a BIDS dataset, OASIS-1, OASIS-3)"
    )
    source.add_argument("--adni", type=Path, help="the ADNI folder of the download (ADNI/<subject>/<description>/...)")
    source.add_argument("--collection-csv", type=Path, help="ADNI's image collection CSV that came with the download")
    source.add_argument(
        "--label-table", type=Path,
        help="labels by subject (e.g. ADNIMERGE: PTID, DX_bl), override Group; with --bids, labels by subject and "
        "session (subject, session, label columns) override the BIDS tables",
    )  # fmt: skip
    source.add_argument("--label-subject-column", help="subject column of --label-table (guessed if not given)")
    source.add_argument("--label-column", help="label column of --label-table (guessed if not given)")
    source.add_argument("--label-session-column", help="session column of --label-table with --bids (guessed)")
    source.add_argument(
        "--series", choices=list(adni.SERIES_PRESETS), default=None,
        help="which series descriptions to select: mprage (default: MPRAGE without accelerated variants), "
        "any-mprage (also accelerated MPRAGE), adni-processed (ADNI's pre-processed exports: 'MPR; GradWarp; "
        "B1 Correction', 'MPR-R; GradWarp', 'MPR; GradWarp; B1 Correction; N3; Scaled', 'MT1; N3m', ...)",
    )  # fmt: skip
    source.add_argument(
        "--include-pattern", action="append", help="regex a series description must match (repeatable); "
        "replaces the default series, or adds to an explicit --series",
    )  # fmt: skip
    source.add_argument("--exclude-pattern", action="append", help="regex that rules a description out (repeatable)")
    source.add_argument(
        "--nifti-csv", type=Path,
        help="CSV with path, subject, label[, visit] for .nii, .nii.gz or .mgz input",
    )  # fmt: skip
    source.add_argument(
        "--bids", type=Path, help="a BIDS dataset (sub-*/[ses-*/]anat/*_T1w.nii[.gz], participants.tsv)"
    )
    source.add_argument(
        "--bids-label-column",
        help="diagnosis column of the BIDS sessions.tsv or participants.tsv (guessed: diagnosis, dx, group, label...)",
    )  # fmt: skip
    source.add_argument("--oasis1", type=Path, help="the OASIS-1 cross-sectional folder (OAS1_xxxx_MR1/RAW/*.hdr)")
    source.add_argument("--oasis1-csv", type=Path, help="oasis_cross-sectional.csv (default: found in --oasis1)")
    source.add_argument(
        "--oasis1-young-as-cn", action="store_true",
        help="count OASIS-1 participants under 60 (who have no CDR and are non-demented) as CN",
    )  # fmt: skip
    source.add_argument("--oasis3", type=Path, help="an OASIS-3 MR download (BIDS or OAS3xxxx_MR_dxxxx folders)")
    source.add_argument(
        "--clinical-table", type=Path,
        help="OASIS-3 clinical assessments (CSV/TSV: subject, days since entry or an id ending in _d0000, CDR, MMSE)",
    )  # fmt: skip
    source.add_argument(
        "--clinical-window-days", type=int, default=cohorts.DEFAULT_WINDOW_DAYS,
        help="OASIS-3 (and ADNI with ADNIMERGE as --label-table, for MMSE/CDR): largest distance in days between a "
        "scan and the clinical assessment it is given (default 365)",
    )  # fmt: skip
    source.add_argument(
        "--cdr-ad-threshold", type=float, choices=[0.5, 1.0], default=None,
        help="OASIS: the CDR from which a scan is AD (CDR 0 is CN); default 0.5, or 1 when MCI is a class "
        "(CDR 0.5 is then MCI)",
    )  # fmt: skip
    source.add_argument(
        "--runs", "--oasis1-repetitions", dest="runs", choices=cohorts.RUN_CHOICES, default="first",
        help="BIDS/OASIS: the first run (OASIS-1: MPRAGE repetition mpr-1) of each session, or all (default first)",
    )  # fmt: skip
    parser.add_argument(
        "--classes", default="CN,AD",
        help="classes to keep, in disease-stage order: CN,AD (default) or CN,MCI,AD (EMCI and LMCI count as MCI)",
    )  # fmt: skip


def discover(args: argparse.Namespace) -> adni.Discovery:
    """The discovery the input options select; a usage error (no source, two sources, a bad table) exits with one
    line naming the file or option and the fix."""
    try:
        classes = adni.parse_classes(args.classes)
    except adni.ClassListError as error:
        sys.exit(f"error: --classes {error}")
    given = [name for name in SOURCES if getattr(args, name, None)]
    if len(given) != 1:
        named = ", ".join("--" + name.replace("_", "-") for name in given)
        sys.exit(
            "error: give one input: --collection-csv (with --adni) for an ADNI download, --nifti-csv, --bids, "
            f"--oasis1 or --oasis3{f' (got {named})' if given else ''}"
        )
    threshold = args.cdr_ad_threshold if args.cdr_ad_threshold is not None else (1.0 if "MCI" in classes else 0.5)
    # A table that cannot be used at all (missing, empty, a required column absent) is a usage error: its message
    # names the file and the column, a traceback would only bury it.
    try:
        if args.nifti_csv:
            return adni.discover_nifti(args.nifti_csv, classes=classes)
        if args.bids:
            return cohorts.discover_bids(
                args.bids, classes, label_column=args.bids_label_column, label_table=args.label_table,
                label_subject_column=args.label_subject_column, label_table_column=args.label_column,
                label_session_column=args.label_session_column, runs=args.runs,
            )  # fmt: skip
        if args.oasis1:
            return cohorts.discover_oasis1(
                args.oasis1, args.oasis1_csv, classes, cdr_ad_threshold=threshold, repetitions=args.runs,
                young_as_cn=args.oasis1_young_as_cn,
            )  # fmt: skip
        if args.oasis3:
            if not args.clinical_table:
                sys.exit("error: --oasis3 needs --clinical-table (OASIS-3's clinical data with subject, days, CDR)")
            return cohorts.discover_oasis3(
                args.oasis3, args.clinical_table, classes, window_days=args.clinical_window_days,
                cdr_ad_threshold=threshold, runs=args.runs,
            )  # fmt: skip
        return adni.discover_adni(
            args.collection_csv,
            args.adni,
            include_patterns=adni.series_patterns(args.series, args.include_pattern),
            exclude_patterns=tuple(args.exclude_pattern or adni.DEFAULT_EXCLUDE_PATTERNS),
            label_table=args.label_table,
            label_subject_column=args.label_subject_column,
            label_column=args.label_column,
            classes=classes,
            window_days=args.clinical_window_days,
        )
    except (adni.TableError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")


def print_discovery(discovery: adni.Discovery, report: Path) -> None:
    """Scans and subjects per class (in class order), skips per category, warnings and hints."""
    summary = discovery.summary()
    print(f"Found {summary['scans']} scans of {summary['subjects']} subjects ({', '.join(discovery.classes)}):")
    order = {name: i for i, name in enumerate(discovery.classes)}
    for group, counts in sorted(summary["groups"].items(), key=lambda kv: order.get(kv[0], len(order))):
        print(f"  {group}: {counts['scans']} scans, {counts['subjects']} subjects")
    if summary["skipped_total"]:
        reasons = ", ".join(f"{category} {count}" for category, count in summary["skipped"].items())
        print(f"Skipped {summary['skipped_total']}: {reasons} (details in {report})")
    for line in adni.warning_lines(discovery, examples=3):
        print(f"Warning: {line}")
    for hint in discovery.hints():
        print(f"Hint: {hint}")
