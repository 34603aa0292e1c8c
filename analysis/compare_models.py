"""Several models trained and evaluated on the same k-fold datalists, then compared in one table
(``python -m analysis compare-models``).

Networks (any ``--arch`` of the bundle) go through :func:`analysis.crossval.run_crossval` with ``--arch <name>`` and
the user's bundle overrides; the volumetric baseline (``volumetric``: template regions, ``volumetric_truth``: the
synthetic cohort's truth volumes) through :func:`analysis.volumetric.run_volumetric_fold`. Layout of ``<out>``:

    <out>/<model>/fold_<k>/eval/    predictions.csv, metrics.json of fold k's test partition (every model)
    <out>/<model>/crossval.json     the model's cross-validation summary (crossval.csv beside it)
    <out>/<model>/benchmark_<S>/    benchmark.json of the bundle's ``benchmarking`` workflow at S³ (networks)
    <out>/comparison.json, .csv, .md, model_comparison.png

Resuming: a model/fold whose ``eval/metrics.json`` exists is not trained or fitted again (networks also resume an
interrupted training, as ``crossval`` does), and a benchmark whose ``benchmark.json`` exists is not run again.
The table is recomputed from the predictions every time (:mod:`analysis.compare_models_table`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from analysis.compare_models_measure import (
    BENCH_REPEATS,
    BENCH_STEPS,
    BENCH_WARMUP,
    BENCHMARK_SIZE,
    network_parameters,
    override_values,
    root_cause,
    run_benchmarks,
    run_size,
    volumetric_parameters,
)
from analysis.compare_models_output import write_comparison
from analysis.compare_models_table import summarize_comparison
from analysis.crossval import (
    CrossvalError,
    Runner,
    find_folds,
    run_crossval,
    run_logged,
    select_folds,
    summarize_folds,
    write_summary,
)
from analysis.metrics import DEFAULT_RESAMPLES, DEFAULT_SEED, DEFAULT_THRESHOLD

DEFAULT_MODELS = ("r3d_18", "mc3_18", "r2plus1d_18", "resnet18_2d", "volumetric")
REFERENCE = "r3d_18"
# Volumetric baselines by model name -> the ``regions`` of run_volumetric_fold.
VOLUMETRIC = {"volumetric": "template", "volumetric_truth": "truth"}
# Overrides the comparison sets itself for each model; the user may not give them.
RESERVED_KEYS = {"arch", "datalist", "dataset_dir", "ckpt_dir", "output_dir"}

VolumetricFold = Callable[..., Path]


class ComparisonError(RuntimeError):
    """Bad input or a failed model; the message is one line naming what and how to fix it."""


def parse_models(text: str) -> list[str]:
    """``"r3d_18, mc3_18"`` -> ``["r3d_18", "mc3_18"]``, refusing empty names and repeats."""
    names = [name.strip() for name in text.split(",")]
    if not names or any(not name for name in names):
        raise ComparisonError(f"--models must be a comma-separated list of model names, got '{text}'.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ComparisonError(f"--models names {', '.join(repeated)} more than once; give each model once.")
    return names


def parse_folds(text: str) -> list[int]:
    """``"0,2"`` -> ``[0, 2]``."""
    try:
        return sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise ComparisonError(f"--folds must be comma-separated fold numbers (e.g. 0,1,2), got '{text}'.") from None


def is_volumetric(name: str) -> bool:
    return name in VOLUMETRIC


def check_overrides(overrides: Sequence[str]) -> None:
    reserved = sorted(RESERVED_KEYS & set(override_values(overrides)))
    if reserved:
        raise ComparisonError(
            f"--{reserved[0]} is set per model and fold by compare-models (--models, --folds-dir, --dataset-dir, "
            "--out); leave it out of the bundle overrides."
        )


def _volumetric_fold() -> VolumetricFold:
    try:
        from analysis.volumetric import run_volumetric_fold
    except ImportError as error:
        raise ComparisonError(
            f"the volumetric baseline cannot be loaded ({error}); leave it out of --models."
        ) from None
    return run_volumetric_fold


def run_volumetric(
    name: str,
    folds: Sequence[tuple[int, Path]],
    dataset_dir: Path,
    model_dir: Path,
    fit: VolumetricFold,
    truth_dir: Path | None,
    seed: int,
    threshold: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Fit the volumetric baseline on every fold that has no ``metrics.json`` yet; write its crossval summary."""
    for k, fold_json in folds:
        eval_dir = model_dir / f"fold_{k}" / "eval"
        if (eval_dir / "metrics.json").is_file():
            log(f"{name} fold {k}: finished earlier ({eval_dir / 'metrics.json'}), skipped")
            continue
        log(f"{name} fold {k}: fitting ({VOLUMETRIC[name]} regions)")
        fit(fold_json, dataset_dir, eval_dir, regions=VOLUMETRIC[name], truth_dir=truth_dir, seed=seed)
        if not (eval_dir / "metrics.json").is_file():
            raise ComparisonError(f"{name} fold {k}: the volumetric baseline wrote no {eval_dir / 'metrics.json'}.")
    summary = summarize_folds(model_dir, folds, threshold)
    write_summary(summary, model_dir)
    return summary


def run_comparison(
    folds_dir: str | Path,
    dataset_dir: str | Path,
    out: str | Path,
    models: Sequence[str] = DEFAULT_MODELS,
    overrides: Sequence[str] = (),
    reference: str = REFERENCE,
    folds: Sequence[int] | None = None,
    runner: Runner = run_logged,
    python: str = sys.executable,
    benchmark: bool = True,
    benchmark_128: bool = True,
    bench: Mapping[str, int] | None = None,
    truth_dir: str | Path | None = None,
    level: str = "scan",
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    log: Callable[[str], None] = print,
    volumetric_fold: VolumetricFold | None = None,
) -> dict[str, Any]:
    """Train/fit and evaluate every model on every selected fold (resumably), benchmark the networks, then write
    ``comparison.json``, ``comparison.csv``, ``comparison.md`` and ``model_comparison.png`` into ``out`` and return
    the summary."""
    models = list(models)
    if reference not in models:
        raise ComparisonError(f"--reference {reference} is not among --models {','.join(models)}; add it or pick one.")
    check_overrides(overrides)
    if "volumetric_truth" in models and truth_dir is None:
        raise ComparisonError("volumetric_truth needs --truth-dir (the synthetic cohort's truth/ folder).")
    out, dataset_dir = Path(out).resolve(), Path(dataset_dir).resolve()
    selected = select_folds(find_folds(folds_dir), folds)
    first_fold = selected[0][1]
    # Count parameters first: it builds every network, so an unknown architecture stops the run before any training.
    parameters = {}
    for name in models:
        if not is_volumetric(name):
            try:
                parameters[name] = network_parameters(name, first_fold, overrides)
            except (Exception, SystemExit) as error:  # BundleInputError (a SystemExit: unknown arch, bad preset)
                cause = root_cause(error)
                message = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
                message = message.removeprefix("error: ")
                raise ComparisonError(f"model {name} (--models) cannot be built: {message}") from None
    size = run_size(first_fold, dataset_dir)
    sizes = [s for s in dict.fromkeys([size, BENCHMARK_SIZE if benchmark_128 else None]) if s is not None]
    seed_override = override_values(overrides).get("seed", 0)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, Any]] = {}
    for name in models:
        model_dir = out / name
        entry: dict[str, Any] = {"kind": "volumetric" if is_volumetric(name) else "network", "dir": str(model_dir)}
        if is_volumetric(name):
            fit = volumetric_fold or _volumetric_fold()
            tdir = Path(truth_dir).resolve() if truth_dir is not None else None
            run_volumetric(name, selected, dataset_dir, model_dir, fit, tdir, int(seed_override), threshold, log)
            entry["parameters"] = volumetric_parameters(model_dir, [k for k, _ in selected])
            entry["regions"] = VOLUMETRIC[name]
        else:
            log(f"{name}: cross-validation in {model_dir}")
            run_crossval(
                folds_dir, dataset_dir, model_dir, ["--arch", name, *overrides], runner=runner, python=python,
                threshold=threshold, log=log, folds=[k for k, _ in selected],
            )  # fmt: skip
            entry["parameters"] = parameters[name]
            if benchmark:
                entry["benchmark"] = run_benchmarks(
                    name, sizes, first_fold, dataset_dir, model_dir, overrides, runner, python, log, bench
                )
        runs[name] = entry
    summary = summarize_comparison(
        runs, [k for k, _ in selected], reference, level=level, threshold=threshold, n_resamples=n_resamples, seed=seed
    )
    summary.update(
        folds_dir=str(Path(folds_dir).resolve()), dataset_dir=str(dataset_dir), overrides=list(overrides),
        run_size=size, benchmark_sizes=sizes if benchmark else [],
    )  # fmt: skip
    paths = write_comparison(summary, out)
    for line in summary["verdict"]["lines"]:
        log(line)
    log("Written " + ", ".join(str(p) for p in paths))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m analysis compare-models`` (other ``--key value`` pairs go to the bundle)."""
    parser.add_argument("--folds-dir", type=Path, required=True, help="folder with fold_<k>.json datalists")
    parser.add_argument("--dataset-dir", type=Path, required=True, help="dataset_dir of the bundle (images' root)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (<model>/, comparison.*)")
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated --arch names, volumetric, volumetric_truth (default {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument("--reference", default=REFERENCE, help=f"model the others are tested against ({REFERENCE})")
    parser.add_argument("--folds", help="comma-separated fold numbers (default: every fold_<k>.json)")
    parser.add_argument("--epochs", type=int, help="maximum epochs of every network (--train#trainer#max_epochs)")
    parser.add_argument("--level", choices=("scan", "subject"), default="scan", help="metrics per scan or subject")
    parser.add_argument("--truth-dir", type=Path, help="truth volumes of the synthetic cohort (volumetric_truth)")
    parser.add_argument("--no-benchmark", action="store_true", help="skip the speed and memory benchmark")
    parser.add_argument(
        "--benchmark-128",
        type=lambda text: _boolean(text, "--benchmark-128"),
        default=True,
        help=f"also benchmark at {BENCHMARK_SIZE}^3 (true/false, default true)",
    )
    parser.add_argument("--bench-warmup", type=int, default=BENCH_WARMUP, help="benchmark warm-up steps")
    parser.add_argument("--bench-steps", type=int, default=BENCH_STEPS, help="benchmark steps per repeat")
    parser.add_argument("--bench-repeats", type=int, default=BENCH_REPEATS, help="benchmark repeats (median)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="AD probability threshold")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples (subjects)")
    # Not --seed: that is the bundle's training seed, passed on like any other override.
    parser.add_argument("--bootstrap-seed", type=int, default=DEFAULT_SEED, help="seed of the bootstrap")


def _boolean(text: str, option: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{option} takes true or false, got '{text}'")


def main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run the comparison from parsed arguments; bad input ends with one ``error: ...`` line."""
    from analysis.crossval import bundle_overrides

    try:
        overrides = bundle_overrides(args.epochs, extra)
        run_comparison(
            args.folds_dir, args.dataset_dir, args.out, parse_models(args.models), overrides,
            reference=args.reference, folds=parse_folds(args.folds) if args.folds else None,
            benchmark=not args.no_benchmark, benchmark_128=args.benchmark_128,
            bench={"warmup": args.bench_warmup, "steps": args.bench_steps, "repeats": args.bench_repeats},
            truth_dir=args.truth_dir, level=args.level, threshold=args.threshold, n_resamples=args.resamples,
            seed=args.bootstrap_seed,
        )  # fmt: skip
    except (ValueError, ComparisonError, CrossvalError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    return 0


__all__ = ["ComparisonError", "add_arguments", "main", "run_comparison"]
