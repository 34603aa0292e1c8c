"""The files of ``python -m analysis compare-models``: comparison.md (a Markdown table ready for a README, with the
verdict and how the numbers were made), comparison.csv (plain numbers, one row per model), comparison.json (every
number) and model_comparison.png (pooled AUC with its interval per model). The numbers come from
:mod:`analysis.compare_models_table`; ``analysis report --comparison-dir`` shows the same table and figure.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from analysis.compare_models_table import TABLE_METRICS, pooled_auc

FIGURE_FILE = "model_comparison.png"


def _mean_sd(stats: Mapping[str, Any], percent: bool) -> str:
    if stats["mean"] is None:
        return "n/a"
    scale, digits = (100, 1) if percent else (1, 3)
    spread = "n/a" if stats["std"] is None else f"{scale * stats['std']:.{digits}f}"
    return f"{scale * stats['mean']:.{digits}f}{'%' if percent else ''} ± {spread}"


def _count(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.2f} M" if n >= 100_000 else f"{n:,}"


def _bench_cells(entry: Mapping[str, Any], size: int) -> tuple[str, str]:
    bench = (entry.get("benchmark") or {}).get(str(size))
    if bench is None:
        return ("\u2013", "\u2013")
    train = bench.get("train", bench)
    if train.get("status") == "oom":
        return ("OOM", "OOM")
    if train.get("status") != "ok":
        return ("failed", "failed")
    return (f"{train['s_per_step']:.3g}", f"{train['peak_mem_mib']:,.0f}")


def table_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of the table (Markdown and the report's HTML)."""
    reference, level = summary["reference"], summary["level"]
    sizes = summary.get("benchmark_sizes") or []
    header = ["Model", "Parameters (trainable)"]
    header += [f"{label} (mean ± SD)" for label in TABLE_METRICS.values()]
    header += [f"Pooled AUC per {level} (95% CI)", f"ΔAUC vs {reference}", "DeLong p (per subject)"]
    for size in sizes:
        header += [f"s/step {size}³", f"peak MiB {size}³"]
    rows = []
    for entry in summary["models"]:
        params = entry.get("parameters") or {}
        row = [entry["model"], f"{_count(params.get('total'))} ({_count(params.get('trainable'))})"]
        row += [_mean_sd(entry["mean_std"][m], percent=m != "roc_auc") for m in TABLE_METRICS]
        auc = entry["pooled"]["roc_auc"]
        text = "n/a" if auc["value"] is None else f"{auc['value']:.3f}"
        if auc.get("ci_low") is not None:
            text += f" ({auc['ci_low']:.3f}\u2013{auc['ci_high']:.3f})"
        row.append(text)
        delong = (entry.get("vs_reference") or {}).get("delong", {})
        difference = entry.get("delta_auc")
        if entry["model"] == reference:
            row += ["reference", ""]
        else:
            row += ["n/a" if difference is None else f"{difference:+.3f}"]
            row += [f"{delong['p_value']:.3g}" if "p_value" in delong else "n/a"]
        for size in sizes:
            row += list(_bench_cells(entry, size))
        rows.append(row)
    return header, rows


def markdown(summary: Mapping[str, Any]) -> str:
    """comparison.md: the table, the verdict and how it was made."""
    header, rows = table_rows(summary)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", *summary["verdict"]["lines"], "", *notes(summary)]
    return "\n".join(lines) + "\n"


def notes(summary: Mapping[str, Any]) -> list[str]:
    """How the table was made: folds, level, intervals, tests, the benchmark's device and the bundle overrides."""
    settings = summary["settings"]
    folds = ", ".join(str(k) for k in summary["folds"])
    lines = [
        f"Folds {folds} ({len(summary['folds'])}); metrics per {summary['level']}; mean ± {settings['std']}; "
        f"accuracy at prob_AD >= {settings['threshold']}. Pooled AUC: every fold's test predictions together (each "
        f"scan tested once), 95% CI by {settings['interval'].split(' (')[0]} ({settings['n_resamples']} resamples, "
        f"seed {settings['seed']}). ΔAUC: pooled AUC minus that of {summary['reference']}. p: {settings['delong']}; "
        f"DeLong assumes independent cases, hence per subject; p < {settings['alpha']} counts as significant."
    ]
    sizes = summary.get("benchmark_sizes") or []
    devices = sorted({d for entry in summary["models"] for s in sizes if (d := _device(entry, s))})
    if summary.get("benchmark_sizes"):
        lines.append(
            "s/step and peak MiB: the bundle's benchmark (run benchmarking: one training step, forward, loss, "
            "backward, optimizer step, on synthetic volumes at the run's batch size and trainable layers; peak memory "
            "is CUDA max allocated on a GPU, the growth of peak RSS on a CPU)"
            + (f" on {'; '.join(devices)}" if devices else "")
            + ". OOM: out of memory; \u2013: not measured (volumetric baselines have no training step)."
        )
    if summary.get("overrides"):
        lines.append(f"Bundle overrides: {' '.join(summary['overrides'])}.")
    return lines


def _device(entry: Mapping[str, Any], size: int) -> str | None:
    bench = (entry.get("benchmark") or {}).get(str(size)) or {}
    if "device_name" not in bench:
        return None
    options = "bf16 autocast" if bench.get("bf16") else "fp32"
    return f"{bench['device_name']} ({options})"


CSV_COLUMNS = [
    "model", "kind", "parameters_total", "parameters_trainable",
    *[f"{m}_{s}" for m in TABLE_METRICS for s in ("mean", "sd")],
    "pooled_auc", "pooled_auc_ci_low", "pooled_auc_ci_high", "delta_auc_vs_reference", "delong_p",
]  # fmt: skip


def csv_text(summary: Mapping[str, Any]) -> str:
    """comparison.csv: one row per model, plain numbers (empty where undefined)."""
    sizes = summary.get("benchmark_sizes") or []
    columns = CSV_COLUMNS + [f"{name}_{s}" for s in sizes for name in ("train_s_per_step", "peak_mib", "status")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for entry in summary["models"]:
        params = entry.get("parameters") or {}
        auc = entry["pooled"]["roc_auc"]
        delong = (entry.get("vs_reference") or {}).get("delong", {})
        row = [entry["model"], entry.get("kind", ""), params.get("total"), params.get("trainable")]
        row += [entry["mean_std"][m][k] for m in TABLE_METRICS for k in ("mean", "std")]
        row += [auc["value"], auc.get("ci_low"), auc.get("ci_high"), entry.get("delta_auc"), delong.get("p_value")]
        for size in sizes:
            bench = (entry.get("benchmark") or {}).get(str(size))
            train = (bench or {}).get("train", bench or {})
            ok = train.get("status") == "ok"
            status = train.get("status", "not measured") if bench else "not measured"
            row += [train.get("s_per_step") if ok else None, train.get("peak_mem_mib") if ok else None, status]
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()


def plot_comparison(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Pooled AUC with its 95% subject-bootstrap CI per model (points and bars), each fold's AUC (small dots), and
    the reference's pooled AUC as a dashed line."""
    from analysis import figures

    plt = figures.plt
    models = summary["models"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(models) + 2), 4.4))
    x = np.arange(len(models))
    for i, entry in enumerate(models):
        value, bars = figures._point_and_bar(entry["pooled"]["roc_auc"])
        colour = figures.AD_COLOUR if entry["model"] == summary["reference"] else figures.MODEL_COLOUR
        ax.errorbar([i], [value], yerr=np.array(bars).reshape(2, 1), fmt="o", color=colour, capsize=5, ms=7)
        folds = [fold["roc_auc"] for fold in entry["folds"] if fold["roc_auc"] is not None]
        ax.plot(np.full(len(folds), i + 0.18), folds, ".", color="grey", ms=5)
    reference = next(e for e in models if e["model"] == summary["reference"])
    if pooled_auc(reference) is not None:
        ax.axhline(
            pooled_auc(reference), color=figures.AD_COLOUR, ls="--", lw=0.8, label=f"{summary['reference']} pooled"
        )
    ax.plot([], [], ".", color="grey", label="single folds")
    ax.axhline(0.5, color="grey", ls=":", lw=0.8, label="chance")
    ax.set_xticks(x, [entry["model"] for entry in models], fontsize=9, rotation=20 if len(models) > 4 else 0)
    # From 0.3 unless a model or fold falls below it (an AUC under 0.5 is worse than chance, still shown).
    values = [e["pooled"]["roc_auc"].get("ci_low") for e in models] + [f["roc_auc"] for e in models for f in e["folds"]]
    bottom = max(0.0, min([0.3] + [v - 0.03 for v in values if v is not None]))
    ax.set(xlim=(-0.5, len(models) - 0.5), ylim=(bottom, 1.02), ylabel=f"ROC-AUC per {summary['level']} (95% CI)")
    ax.set_title("Pooled out-of-fold AUC per model")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="lower left", fontsize=8)
    return figures._save(fig, Path(path))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_comparison(summary: Mapping[str, Any], out: str | Path) -> list[Path]:
    """comparison.json, comparison.csv, comparison.md and the figure in ``out``; returns their paths."""
    out = Path(out)
    paths = [out / "comparison.json", out / "comparison.csv", out / "comparison.md"]
    _atomic_write(paths[0], json.dumps(summary, indent=2) + "\n")
    _atomic_write(paths[1], csv_text(summary))
    _atomic_write(paths[2], markdown(summary))
    paths.append(plot_comparison(summary, out / FIGURE_FILE))
    return paths
