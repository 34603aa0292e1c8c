"""What each model of ``python -m analysis compare-models`` costs: parameters (total and trainable, counted on the
network as training builds it; for the volumetric baseline its coefficients) and the bundle's benchmark of one
training step (seconds and peak memory) at the run's volume size and at 128³.
"""

from __future__ import annotations

import ast
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from analysis import BUNDLE_ROOT
from analysis.crossval import TRAINING_ONLY_KEYS, Runner

BENCHMARK_CONFIG = "['configs/train.json','configs/benchmark.json']"
BENCHMARK_SIZE = 128
# Benchmark defaults as in README "Training speed" for 128³ on a CPU: one warm-up step, median of 2 x 1 steps.
BENCH_WARMUP, BENCH_STEPS, BENCH_REPEATS = 1, 1, 2


def override_values(overrides: Sequence[str]) -> dict[str, Any]:
    """``--key value`` pairs as the bundle's CLI reads them (fire: Python literals, else the text)."""
    values = {}
    for key, text in zip(overrides[::2], overrides[1::2], strict=True):
        try:
            values[key[2:]] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[key[2:]] = text
    return values


def network_parameters(name: str, fold_json: Path, overrides: Sequence[str] = ()) -> dict[str, int]:
    """Total and trainable parameters of network ``name`` as training builds it: train.json's ``network_def`` with
    the same overrides (``--trainable`` etc.) and random weights, on the meta device (no memory, no weights);
    on the CPU where an architecture cannot be built on the meta device."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.json"))
    settings = {k: v for k, v in override_values(overrides).items() if k not in TRAINING_ONLY_KEYS}
    parser.update({**settings, "bundle_root": str(BUNDLE_ROOT), "datalist": str(fold_json), "arch": name})
    parser.update({"weights": "none"})
    try:
        with torch.device("meta"):
            network = parser.get_parsed_content("network_def", instantiate=True, lazy=False)
    except Exception:  # an operation the meta device lacks (a bad input is a BundleInputError, a SystemExit)
        network = parser.get_parsed_content("network_def", instantiate=True, lazy=False)
    counts = network.parameter_counts()
    return {"total": int(counts["total"]), "trainable": int(counts["trainable"])}


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception (MONAI's config parser wraps a failed instantiation in a RuntimeError)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def volumetric_parameters(model_dir: Path, folds: Sequence[int]) -> dict[str, int] | None:
    """Coefficients of the fitted logistic regression (the same in every fold), read from what the baseline wrote
    beside its predictions: a JSON with ``n_coefficients``/``n_parameters`` or a ``coefficients`` list."""
    for k in folds:
        for path in sorted((model_dir / f"fold_{k}" / "eval").glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            count = _coefficient_count(data)
            if count is not None:
                return {"total": count, "trainable": count}
    return None


def _coefficient_count(data: Any) -> int | None:
    if not isinstance(data, Mapping):
        return None
    for key in ("n_coefficients", "n_parameters"):
        if isinstance(data.get(key), int):
            return data[key]
    coefficients = data.get("coefficients")
    if isinstance(coefficients, Mapping):
        return len(coefficients)
    if isinstance(coefficients, list):
        flat = [c for row in coefficients for c in (row if isinstance(row, list) else [row])]
        return len(flat) + (1 if "intercept" in data else 0)
    for value in data.values():  # e.g. {"model": {"coefficients": ...}}
        count = _coefficient_count(value)
        if count is not None:
            return count
    return None


def run_size(fold_json: Path, dataset_dir: Path) -> int | None:
    """Edge length of the training volumes (the first training image's header); None if it cannot be read."""
    import nibabel as nib

    try:
        item = json.loads(fold_json.read_text())["training"][0]
        path = Path(item["image"])
        shape = nib.load(str(path if path.is_absolute() else dataset_dir / path)).shape
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return int(max(shape[:3]))


def benchmark_command(
    name: str,
    size: int,
    fold_json: Path,
    dataset_dir: Path,
    output_dir: Path,
    overrides: Sequence[str] = (),
    python: str = sys.executable,
    warmup: int = BENCH_WARMUP,
    steps: int = BENCH_STEPS,
    repeats: int = BENCH_REPEATS,
) -> list[str]:
    """The bundle's ``benchmarking`` workflow for network ``name`` at ``size``³ with the run's settings (trainable
    layers, batch size, optimizer, device, threads; bf16 autocast exactly when training uses it, ``$@amp``) and
    random weights."""
    settings = {
        "bench_warmup": str(warmup), "bench_steps": str(steps), "bench_repeats": str(repeats),
        "bench_bf16": "$@amp",
    }  # fmt: skip
    pairs = zip(overrides[::2], overrides[1::2], strict=True)
    settings.update({key[2:]: value for key, value in pairs if key[2:] not in TRAINING_ONLY_KEYS})
    settings.update(
        {
            "arch": name,
            "bench_size": str(size),
            "weights": "none",
            "datalist": str(fold_json),
            "dataset_dir": str(dataset_dir),
            "output_dir": str(output_dir),
        }
    )
    command = [python, "-m", "monai.bundle", "run", "benchmarking", "--config_file", BENCHMARK_CONFIG]
    return command + [item for key, value in settings.items() for item in (f"--{key}", value)]


def run_benchmarks(
    name: str,
    sizes: Sequence[int],
    fold_json: Path,
    dataset_dir: Path,
    model_dir: Path,
    overrides: Sequence[str],
    runner: Runner,
    python: str,
    log: Callable[[str], None],
    bench: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Run (or reuse) the benchmark of ``name`` at each size; returns size -> the benchmark's JSON, or a status
    ``oom``/``failed`` entry naming the log (e.g. a process killed for memory), so one failure does not stop the rest.
    A failure is recorded in ``failed.json`` and reported again on a rerun (delete it to retry), so a resumed
    comparison does not wait for the same out-of-memory kill twice."""
    results: dict[str, Any] = {}
    for size in sizes:
        folder = model_dir / f"benchmark_{size}"
        result_file, failed_file = folder / "benchmark.json", folder / "failed.json"
        if failed_file.is_file() and not result_file.is_file():
            results[str(size)] = json.loads(failed_file.read_text())
            log(f"{name}: benchmark at {size}^3 failed earlier ({failed_file}; delete it to retry)")
            continue
        if not result_file.is_file():
            log(f"{name}: benchmark at {size}^3 (log: {folder / 'benchmark.log'})")
            command = benchmark_command(
                name, size, fold_json, dataset_dir, folder, overrides, python, **dict(bench or {})
            )
            status = runner(command, BUNDLE_ROOT, folder / "benchmark.log")
            if status != 0 or not result_file.is_file():
                # A negative status is a signal: SIGKILL (-9) is how the kernel ends a process out of memory.
                killed = status in (-9, 137)
                results[str(size)] = {
                    "status": "oom" if killed else "failed",
                    "error": f"exit status {status}{' (killed, probably out of memory)' if killed else ''}",
                    "log": str(folder / "benchmark.log"),
                }
                folder.mkdir(parents=True, exist_ok=True)
                failed_file.write_text(json.dumps(results[str(size)], indent=2) + "\n")
                log(f"{name}: benchmark at {size}^3 failed ({results[str(size)]['error']}); see its log")
                continue
        results[str(size)] = json.loads(result_file.read_text())
    return results
