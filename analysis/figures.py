"""PNG figures of the report: ROC curve with its bootstrap band, confusion matrices (2 x 2 or k x k), reliability
diagram, training curves, PPV/NPV against prevalence with credible bands, sensitivity by disease stage and internal
against external validation. Each function writes one file and returns its path.

matplotlib runs on the Agg backend (files only, no display), so the figures render on servers and in CI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 120
AD_COLOUR = "#c0392b"
CN_COLOUR = "#2471a3"
MODEL_COLOUR = "#1f4e79"

FIGURE_FILES = {
    "roc": "roc_curve.png",
    "confusion": "confusion_matrix.png",
    "reliability": "reliability_diagram.png",
    "training": "training_curves.png",
    "predictive_values": "predictive_values.png",
    "stages": "accuracy_by_stage.png",
    "external": "external_validation.png",
}


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_roc(
    scan_roc: Mapping[str, Any],
    path: str | Path,
    subject_roc: Mapping[str, Any] | None = None,
    fold_rocs: Mapping[str, Mapping[str, Any]] | None = None,
    contrast: str = "AD vs CN",
) -> Path:
    """Per-scan ROC with its 95% subject-bootstrap band; per-subject ROC dashed; cross-validation folds thin."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.fill_between(
        scan_roc["grid"], scan_roc["tpr_low"], scan_roc["tpr_high"], color=MODEL_COLOUR, alpha=0.2, lw=0,
        label=f"95% band ({scan_roc['n_resamples_used']} subject resamples)",
    )  # fmt: skip
    ax.plot(scan_roc["fpr"], scan_roc["tpr"], color=MODEL_COLOUR, lw=2, label=f"Per scan (AUC {_auc(scan_roc)})")
    if subject_roc is not None:
        ax.plot(
            subject_roc["fpr"], subject_roc["tpr"], color="#e67e22", lw=1.5, ls="--",
            label=f"Per subject (AUC {_auc(subject_roc)})",
        )  # fmt: skip
    for name, roc in (fold_rocs or {}).items():
        ax.plot(roc["fpr"], roc["tpr"], lw=0.8, alpha=0.6, label=f"{name} (AUC {_auc(roc)})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="Chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False-positive rate (1 - specificity)")
    ax.set_ylabel("True-positive rate (sensitivity)")
    ax.set_title(f"ROC curve, {contrast}")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_aspect("equal")
    return _save(fig, Path(path))


def _auc(roc: Mapping[str, Any]) -> str:
    return "n/a" if roc.get("auc") is None else f"{roc['auc']:.3f}"


def _matrix(cells: Mapping[str, Any]) -> tuple[np.ndarray, list[str]]:
    """Counts (rows true, columns predicted) and class names of a binary ``{tn, fp, fn, tp}`` mapping or a k-class
    ``{"labels", "rows_true_cols_pred"}`` one (cells plain counts or ``{"value": n}`` entries)."""
    if "rows_true_cols_pred" in cells:
        rows = [[c["value"] if isinstance(c, Mapping) else c for c in row] for row in cells["rows_true_cols_pred"]]
        return np.array(rows, dtype=float), list(cells["labels"])
    value = {k: (v["value"] if isinstance(v, Mapping) else v) for k, v in cells.items()}
    return np.array([[value["tn"], value["fp"]], [value["fn"], value["tp"]]], dtype=float), ["CN", "AD"]


def plot_confusion_matrices(matrices: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """One panel per level (e.g. per scan, per subject): counts with row percentages; rows true, columns predicted.
    Each matrix is binary (``tn``, ``fp``, ``fn``, ``tp``) or k x k (``labels``, ``rows_true_cols_pred``)."""
    k = max(len(_matrix(cells)[1]) for cells in matrices.values())
    size = 4.6 + 0.9 * (k - 2)
    fig, axes = plt.subplots(1, len(matrices), figsize=(size * len(matrices), size - 0.4), squeeze=False)
    for ax, (title, cells) in zip(axes[0], matrices.items(), strict=True):
        counts, labels = _matrix(cells)
        rows = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                colour = "white" if share[i, j] > 0.6 else "black"
                ax.text(j, i, f"{int(counts[i, j])}\n({share[i, j]:.0%})", ha="center", va="center", color=colour)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set(xlabel="Predicted", ylabel="True", title=title)
    return _save(fig, Path(path))


def plot_reliability(
    tables: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, ece: Mapping[str, float | None] | None = None
) -> Path:
    """Reliability diagram (observed fraction AD against mean predicted probability per equal-width bin) above a
    histogram of the predictions in the same bins."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6.5), height_ratios=[3, 1.2], sharex=True)
    ece = ece or {}
    top.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="Perfect calibration")
    colours = [MODEL_COLOUR, "#e67e22", "#27ae60"]
    for index, (name, table) in enumerate(tables.items()):
        used = [row for row in table if row["count"]]
        x = [row["mean_predicted"] for row in used]
        y = [row["fraction_AD"] for row in used]
        suffix = f", ECE {ece[name]:.3f}" if name in ece and ece[name] is not None else ""
        top.plot(x, y, marker="o", color=colours[index % 3], label=f"{name}{suffix}")
        centres = np.array([(row["lower"] + row["upper"]) / 2 for row in table])
        width = (table[0]["upper"] - table[0]["lower"]) / (len(tables) + 0.5)
        offset = (index - (len(tables) - 1) / 2) * width
        bottom.bar(centres + offset, [row["count"] for row in table], width=width, color=colours[index % 3])
    n_bins = len(next(iter(tables.values())))
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="Observed fraction AD")
    top.set_title(f"Reliability diagram ({n_bins} equal-width bins)")
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="Predicted probability of AD", ylabel="Count")
    return _save(fig, Path(path))


def plot_training_curves(logs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """Loss and accuracy per epoch (training and validation) from ``training_log.csv`` files, one line style per
    run (e.g. per cross-validation fold)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, (name, rows) in enumerate(logs.items()):
        colour = plt.cm.tab10(index % 10)
        epochs = [int(r["epoch"]) for r in rows]
        for ax, key, style, label in (
            (left, "train_loss", "-", "train"),
            (left, "val_loss", "--", "validation"),
            (right, "train_accuracy", "-", "train"),
            (right, "val_accuracy", "--", "validation"),
        ):
            values = [_number(r.get(key)) for r in rows]
            if any(v is not None for v in values):
                y = [np.nan if v is None else v for v in values]
                prefix = f"{name} " if len(logs) > 1 else ""
                ax.plot(epochs, y, ls=style, marker=".", color=colour, label=f"{prefix}{label}")
    left.set(xlabel="Epoch", ylabel="Loss (class-weighted cross-entropy)", title="Loss")
    right.set(xlabel="Epoch", ylabel="Accuracy", title="Accuracy", ylim=(0, 1.02))
    last = max((int(r["epoch"]) for rows in logs.values() for r in rows), default=1)
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, last + 0.5)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def plot_predictive_values(
    curves: Mapping[str, Sequence[float]],
    path: str | Path,
    prevalences: Sequence[Mapping[str, Any]] = (),
    references: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Posterior median PPV and NPV against prevalence with 95% credible bands; the chosen prevalences as vertical
    lines; published visual reads (point estimates) as thin dashed lines."""
    fig, ax = plt.subplots(figsize=(7.5, 6))
    x = curves["prevalence"]
    ax.fill_between(x, curves["ppv_low"], curves["ppv_high"], color=AD_COLOUR, alpha=0.2, lw=0)
    ax.plot(x, curves["ppv_median"], color=AD_COLOUR, lw=2, label="Model PPV = P(AD | positive)")
    ax.fill_between(x, curves["npv_low"], curves["npv_high"], color=CN_COLOUR, alpha=0.2, lw=0)
    ax.plot(x, curves["npv_median"], color=CN_COLOUR, lw=2, label="Model NPV = P(CN | negative)")
    grid = np.asarray(x)
    for reference in references:
        s, t = reference["sensitivity"], reference["specificity"]
        ppv = s * grid / (s * grid + (1 - t) * (1 - grid))
        npv = t * (1 - grid) / (t * (1 - grid) + (1 - s) * grid)
        ax.plot(grid, ppv, color=AD_COLOUR, lw=0.9, ls="--", alpha=0.7)
        ax.plot(grid, npv, color=CN_COLOUR, lw=0.9, ls="--", alpha=0.7, label=f"{reference['reader']}: PPV, NPV")
    for prevalence in prevalences:
        ax.axvline(prevalence["value"], color="grey", lw=0.8, ls=":")
        ax.text(
            prevalence["value"], 0.03, f"{prevalence['label']} ({prevalence['value']:.3g}) ", rotation=90,
            fontsize=7.5, va="bottom", ha="right", color="dimgrey", transform=ax.get_xaxis_transform(),
        )  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Prevalence of AD", ylabel="Post-test probability")
    ax.set_title("PPV and NPV against prevalence\n(posterior medians, 95% credible bands)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def _point_and_bar(entry: Mapping[str, Any]) -> tuple[float, list[float]]:
    """Value and [below, above] error-bar lengths of an interval entry (NaN where undefined)."""
    value = entry.get("value")
    if value is None:
        return np.nan, [0.0, 0.0]
    low, high = entry.get("ci_low"), entry.get("ci_high")
    return value, [value - low if low is not None else 0.0, high - value if high is not None else 0.0]


def plot_stages(stages: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per stage measure: sensitivity for AD per bin (least to most advanced) with 95% intervals, the
    number of AD scans under each bin; for k classes also the share predicted their own class."""
    variables = stages["variables"]
    fig, axes = plt.subplots(1, len(variables), figsize=(4.8 * len(variables), 4.4), squeeze=False)
    k = len(stages["classes"])
    for ax, entry in zip(axes[0], variables.values(), strict=True):
        x = np.arange(len(entry["bins"]))
        series = [("sensitivity", "Sensitivity for AD", AD_COLOUR, -0.08)]
        if k > 2:
            series.append(("correct", "Correct class", MODEL_COLOUR, 0.08))
        for key, label, colour, shift in series:
            points = [_point_and_bar(row[key]) for row in entry["bins"]]
            y = [p[0] for p in points]
            bars = np.array([p[1] for p in points]).T
            ax.errorbar(x + shift, y, yerr=bars, fmt="o-", color=colour, capsize=4, label=label)
        ad = stages["classes"][-1] if "AD" not in stages["classes"] else "AD"
        ticks = [f"{row['label']}\n({row['n_per_class'].get(ad, 0)} {ad})" for row in entry["bins"]]
        ax.set_xticks(x, ticks, fontsize=8)
        ax.set(ylim=(-0.02, 1.05), xlim=(-0.5, len(x) - 0.5), title=entry["title"], ylabel="Share of scans")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, Path(path))


def plot_external(comparison: Mapping[str, Any], path: str | Path) -> Path:
    """Internal against external validation per scan and per subject: each metric with its 95% interval."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    names = list(comparison["metrics"])
    for ax, level in zip(axes, ("scan", "subject"), strict=True):
        entry = comparison[level]
        for name, colour, shift in (("internal", MODEL_COLOUR, -0.1), ("external", "#e67e22", 0.1)):
            points = [_point_and_bar(entry["metrics"][m][name]) for m in names]
            bars = np.array([p[1] for p in points]).T
            count = entry[f"n_{name}"]
            ax.errorbar(
                np.arange(len(names)) + shift,
                [p[0] for p in points],
                yerr=bars,
                fmt="o",
                color=colour,
                capsize=4,
                label=f"{name.capitalize()} ({count} {level}s)",
            )
        labels = [
            comparison["metrics"][m].split(" (")[0].replace("Balanced accuracy", "Balanced\naccuracy") for m in names
        ]
        ax.set_xticks(range(len(names)), labels, fontsize=8)
        ax.set(ylim=(0, 1.02), xlim=(-0.5, len(names) - 0.5), title=f"Per {level}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    axes[0].set_ylabel(f"{comparison['contrast']} (95% CI)")
    return _save(fig, Path(path))
