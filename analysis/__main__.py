"""Command line of the analysis: ``python -m analysis <command> -h`` for metrics, compare, bayes, stages, crossval,
compare-models, report, explain, scan-report and volumetric."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis import metrics as m

DESCRIPTION = "Results and analysis of the AD vs CN bundle (research use only; not a medical device)."


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a prevalence must be strictly between 0 and 1, got {text}")
    return value


def _add_bootstrap_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threshold", type=float, default=m.DEFAULT_THRESHOLD, help="AD probability threshold")
    parser.add_argument("--resamples", type=int, default=m.DEFAULT_RESAMPLES, help="bootstrap resamples (subjects)")
    parser.add_argument("--seed", type=int, default=m.DEFAULT_SEED, help="random seed of bootstrap and posterior")


def _add_stage_options(parser: argparse.ArgumentParser) -> None:
    from analysis import stages

    def cuts(text: str, tertiles: bool = False) -> tuple[float, ...] | str:
        try:
            return stages.parse_cuts(text, tertiles)
        except stages.StageError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parser.add_argument(
        "--cdr-bins",
        type=cuts,
        default=stages.DEFAULT_CDR_CUTS,
        help="CDR cut points (default 0.5,1,2: bins 0 / 0.5 / 1 / >=2)",
    )
    parser.add_argument(
        "--mmse-bins",
        type=cuts,
        default=stages.DEFAULT_MMSE_CUTS,
        help="MMSE cut points, descending (default 27,21,10: bins 30-27 / 26-21 / 20-10 / <10)",
    )
    parser.add_argument(
        "--atrophy-bins",
        type=lambda text: cuts(text, True),
        default=stages.TERTILES,
        help="synthetic atrophy cut points, or 'tertiles' of the staged test scans (default)",
    )


def _stage_cuts(args: argparse.Namespace) -> dict:
    return {"cdr": args.cdr_bins, "mmse": args.mmse_bins, "atrophy": args.atrophy_bins}


def cmd_metrics(args: argparse.Namespace) -> int:
    from analysis import multiclass

    pred = m.read_predictions(args.predictions)
    result = m.evaluate_predictions(pred, args.threshold, args.resamples, args.seed, args.bins)
    if len(pred.classes) > 2:
        class_pred = multiclass.read_class_predictions(args.predictions)
        result["multiclass"] = multiclass.evaluate_multiclass(class_pred, args.threshold, args.resamples, args.seed)
        print("\n".join(multiclass.format_multiclass(result["multiclass"], m.format_interval)))
        result["contrast"] = pred.contrast
        print(f"{pred.contrast} (AD against all other classes; AD when prob_AD >= {args.threshold}):")
    for level in ("scan", "subject"):
        entry = result[level]
        what = f"{entry['n']} scans of {entry['n_subjects']} subjects" if level == "scan" else f"{entry['n']} subjects"
        print(f"Per {level} ({what}; 95% CI, percentile bootstrap over subjects):")
        for name, label in m.METRICS.items():
            metric = entry["metrics"][name]
            print(f"  {label}: {m.format_interval(metric)}  [{metric['n_resamples_used']} resamples used]")
        cells = entry["confusion_matrix"]
        print("  confusion matrix: " + ", ".join(f"{k.upper()} {cells[k]['value']}" for k in m.CONFUSION_CELLS))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"Written to {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    a, b = m.read_predictions(args.a), m.read_predictions(args.b)
    result = m.compare_models(a, b, args.threshold, args.resamples, args.seed)
    print(f"A = {args.a}\nB = {args.b}")
    for level in ("scan", "subject"):
        entry = result[level]
        print(f"Per {level} (n = {entry['n']}):")
        delong = entry["delong"]
        if "error" in delong:
            print(f"  DeLong: not computed ({delong['error']})")
        else:
            print(
                f"  AUC A {delong['auc_a']:.4f}, B {delong['auc_b']:.4f}; difference {delong['difference']:+.4f} "
                f"(95% CI {delong['ci_low']:+.4f} to {delong['ci_high']:+.4f}), DeLong z = {delong['z']:.3f}, "
                f"p = {delong['p_value']:.4g}"
            )
        boot = entry["bootstrap"]
        print(
            f"  Paired subject bootstrap: difference {boot['difference']:+.4f} (95% CI {boot['ci_low']:+.4f} to "
            f"{boot['ci_high']:+.4f}, {boot['n_resamples_used']} resamples), p = {boot['p_value']:.4g}"
        )
        mc = entry["mcnemar"]
        print(
            f"  Accuracy A {mc['accuracy_a']:.4f}, B {mc['accuracy_b']:.4f}; discordant: A right/B wrong "
            f"{mc['a_right_b_wrong']}, A wrong/B right {mc['a_wrong_b_right']}; exact McNemar p = {mc['p_value']:.4g}"
        )
    print("Per scan, DeLong treats scans as independent; with several scans per subject prefer the subject bootstrap.")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"Written to {args.out}")
    return 0


def cmd_bayes(args: argparse.Namespace) -> int:
    from analysis import bayes

    if args.predictions:
        pred = m.read_predictions(args.predictions)
        pred = m.per_subject(pred) if args.level == "subject" else pred
        cells = m.point_metrics(pred.label, pred.prob, args.threshold)["confusion_matrix"]
        print(f"Contrast: {pred.contrast} (per {args.level})")
    elif args.counts:
        cells = dict(zip(("tp", "fn", "tn", "fp"), args.counts, strict=True))
    else:
        raise SystemExit("error: give --predictions or --counts TP FN TN FP")
    classes = pred.classes if args.predictions else ()
    prevalences = bayes.prevalences_with(args.prevalence, classes=classes)
    result = bayes.bayesian_analysis(cells, prevalences, n_draws=args.draws, seed=args.seed)
    print(f"Prior: {result['prior']['text']}; counts {result['confusion_matrix']}")
    for name in ("sensitivity", "specificity", "lr_positive", "lr_negative"):
        s = result[name]
        print(f"  {name}: median {s['median']:.4f} (95% CrI {s['ci_low']:.4f}-{s['ci_high']:.4f})")
    for row in result["by_prevalence"]:
        p, ppv, npv = row["prevalence"], row["ppv"], row["npv"]
        print(
            f"  {p['label']} (p = {p['value']:g}): PPV {ppv['median']:.3f} ({ppv['ci_low']:.3f}-{ppv['ci_high']:.3f}),"
            f" NPV {npv['median']:.3f} ({npv['ci_low']:.3f}-{npv['ci_high']:.3f})\n      source: {p['source']}"
        )
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    from analysis import multiclass, stages

    try:
        clinical = stages.read_clinical([args.datalist])
        pred = multiclass.read_class_predictions(args.predictions)
        result = stages.stage_analysis(pred, clinical, _stage_cuts(args), args.threshold, args.resamples, args.seed)
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    if not clinical:
        print(f"{args.datalist} has no 'clinical' table; write the datalist with 'python -m preprocessing split'.")
    print("\n".join(stages.format_stages(result, m.format_interval)))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"Written to {args.out}")
    return 0


def cmd_crossval(args: argparse.Namespace, extra: list[str]) -> int:
    from analysis import crossval

    try:
        overrides = crossval.bundle_overrides(args.epochs, extra)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    try:
        crossval.run_crossval(
            args.folds_dir,
            args.dataset_dir,
            args.out,
            overrides,
            threshold=args.threshold,
            external_datalist=args.external_datalist,
            external_dataset_dir=args.external_dataset_dir,
        )
    except crossval.CrossvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Written {args.out / 'crossval.json'} and {args.out / 'crossval.csv'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from analysis import report

    if args.eval_dir is None and args.crossval_dir is None and args.comparison_dir is None:
        raise SystemExit("error: give --eval-dir, --crossval-dir or --comparison-dir (the report's source)")
    if args.comparison_dir is not None and not (args.comparison_dir / "comparison.json").is_file():
        raise SystemExit(f"error: no {args.comparison_dir / 'comparison.json'}; run 'compare-models --out' there first")
    path = report.write_report(
        args.out,
        eval_dir=args.eval_dir,
        crossval_dir=args.crossval_dir,
        datalist=args.datalist,
        extra_prevalences=args.prevalence,
        synthetic=args.synthetic,
        threshold=args.threshold,
        n_resamples=args.resamples,
        seed=args.seed,
        n_bins=args.bins,
        n_draws=args.draws,
        bayes_level=args.bayes_level,
        explain_dir=args.explain_dir,
        external_eval_dir=args.external_eval_dir,
        stage_cuts=_stage_cuts(args),
        comparison_dir=args.comparison_dir,
    )
    print(f"Report: {path} (figures and report.json beside it)")
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    # No abbreviations: crossval passes unknown '--key value' pairs to the bundle, and '--ep 3' must not be taken
    # for '--epochs 3'.
    parser = argparse.ArgumentParser(prog="python -m analysis", description=DESCRIPTION, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "metrics", allow_abbrev=False, help="metrics with 95%% CIs (subject bootstrap) from a predictions CSV"
    )
    p.add_argument("predictions", type=Path, help="predictions.csv of an evaluation")
    _add_bootstrap_options(p)
    p.add_argument("--bins", type=int, default=m.DEFAULT_BINS, help="equal-width bins of the calibration error")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")

    p = commands.add_parser(
        "compare", allow_abbrev=False, help="paired comparison of two models on the same test scans"
    )
    p.add_argument("--a", type=Path, required=True, help="predictions.csv of model A")
    p.add_argument("--b", type=Path, required=True, help="predictions.csv of model B (same scans)")
    _add_bootstrap_options(p)
    p.add_argument("--out", type=Path, help="also write the results as JSON here")

    p = commands.add_parser(
        "bayes", allow_abbrev=False, help="posterior PPV/NPV and likelihood ratios at chosen prevalences"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", type=Path, help="predictions.csv (confusion matrix at --threshold)")
    source.add_argument("--counts", type=int, nargs=4, metavar=("TP", "FN", "TN", "FP"), help="confusion counts")
    p.add_argument("--level", choices=("subject", "scan"), default="subject", help="confusion matrix per subject/scan")
    p.add_argument("--prevalence", type=_probability, action="append", default=[], help="extra prevalence (repeat)")
    p.add_argument("--threshold", type=float, default=m.DEFAULT_THRESHOLD)
    p.add_argument("--draws", type=int, default=20000, help="posterior draws")
    p.add_argument("--seed", type=int, default=m.DEFAULT_SEED)

    p = commands.add_parser(
        "stages", allow_abbrev=False, help="accuracy by disease stage (CDR, MMSE, synthetic atrophy) with 95%% CIs"
    )
    p.add_argument("--predictions", type=Path, required=True, help="predictions.csv of an evaluation")
    p.add_argument("--datalist", type=Path, required=True, help="datalist JSON with the 'clinical' table")
    _add_stage_options(p)
    _add_bootstrap_options(p)
    p.add_argument("--out", type=Path, help="also write the results as JSON here")

    p = commands.add_parser(
        "crossval",
        allow_abbrev=False,
        help="train and evaluate every fold through the bundle (resumable), then mean ± SD",
        description="Train and evaluate every fold_<k>.json through the bundle; finished folds are skipped. Other "
        "'--key value' pairs are passed to the bundle unchanged, e.g. --weights none --use_wandb False "
        "--num_workers 0 (--weights is passed to training only).",
    )
    p.add_argument("--folds-dir", type=Path, required=True, help="folder with fold_<k>.json datalists")
    p.add_argument("--dataset-dir", type=Path, required=True, help="dataset_dir of the bundle (image paths' root)")
    p.add_argument("--out", type=Path, required=True, help="output folder (fold_<k>/, crossval.json, crossval.csv)")
    p.add_argument("--epochs", type=int, help="maximum epochs (--train#trainer#max_epochs)")
    p.add_argument("--threshold", type=float, default=m.DEFAULT_THRESHOLD)
    p.add_argument("--external-datalist", type=Path, help="also evaluate every fold's model on this external test set")
    p.add_argument("--external-dataset-dir", type=Path, help="dataset_dir of the external datalist (images' root)")

    p = commands.add_parser(
        "report", allow_abbrev=False, help="self-contained HTML report (figures embedded) with report.json"
    )
    # Not required: --comparison-dir alone reports its reference model's cross-validation.
    source = p.add_mutually_exclusive_group()
    source.add_argument("--eval-dir", type=Path, help="output_dir of an evaluation (predictions.csv)")
    source.add_argument("--crossval-dir", type=Path, help="--out folder of 'crossval'")
    p.add_argument("--comparison-dir", type=Path, help="--out folder of 'compare-models': adds its table and figure")
    p.add_argument("--out", type=Path, required=True, help="folder for report.html, report.json and PNG figures")
    p.add_argument("--datalist", type=Path, help="datalist JSON, for the cohort summary per partition")
    p.add_argument("--prevalence", type=_probability, action="append", default=[], help="extra prevalence (repeat)")
    p.add_argument("--synthetic", action="store_true", help="mark the data as synthetic in the report")
    _add_bootstrap_options(p)
    p.add_argument("--bins", type=int, default=m.DEFAULT_BINS, help="equal-width bins of the calibration error")
    p.add_argument("--draws", type=int, default=20000, help="posterior draws")
    p.add_argument("--bayes-level", choices=("subject", "scan"), default="subject", help="confusion matrix level")
    p.add_argument("--explain-dir", type=Path, help="--out folder of 'explain': adds its summary to the report")
    p.add_argument("--external-eval-dir", type=Path, help="evaluation of the same model on another cohort's test set")
    _add_stage_options(p)

    p = commands.add_parser(
        "compare-models",
        allow_abbrev=False,
        help="train and evaluate several models on the same folds (resumable) and compare them in one table",
        description="Every model of --models on every fold_<k>.json (networks through the bundle with --arch, the "
        "volumetric baseline by logistic regression), then comparison.json/.csv/.md and a figure. Other '--key value' "
        "pairs are passed to the bundle, e.g. --weights none --use_wandb False --num_workers 0.",
    )
    from analysis import compare_models

    compare_models.add_arguments(p)

    # Imported lazily: explain and scan-report need torch, MONAI and Captum, the other commands do not.
    p = commands.add_parser(
        "explain",
        allow_abbrev=False,
        help="relevance maps (Grad-CAM, Grad-CAM++, occlusion, integrated gradients) "
        "of a trained model on a test set, measured against known regions",
    )
    _lazy(p, "analysis.explain.run", "explain", argv)
    p = commands.add_parser(
        "scan-report",
        allow_abbrev=False,
        help="one self-contained HTML page for one raw T1 scan (QC, probability, "
        "post-test probability, relevance on the scan)",
    )
    _lazy(p, "analysis.explain.scan_page", "scan-report", argv)
    p = commands.add_parser(
        "volumetric",
        allow_abbrev=False,
        help="volumetric baseline: hippocampal and ventricular volumes / brain volume, logistic regression per fold",
    )
    _lazy(p, "analysis.volumetric", "volumetric", argv)
    return parser


def _lazy(parser: argparse.ArgumentParser, module: str, name: str, argv: list[str] | None) -> None:
    """Give ``parser`` the options of ``module`` only when ``name`` is the command being run."""
    import importlib

    if name not in (sys.argv[1:] if argv is None else argv):
        return
    loaded = importlib.import_module(module)
    loaded.add_arguments(parser)
    parser.set_defaults(handler=loaded.main)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if args.command == "crossval":
        return cmd_crossval(args, extra)
    if args.command == "compare-models":
        from analysis import compare_models

        return compare_models.main(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "handler", None) is not None:
        return args.handler(args)
    handlers = {"metrics": cmd_metrics, "compare": cmd_compare, "bayes": cmd_bayes, "stages": cmd_stages}
    return {**handlers, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
