"""One self-contained HTML report (and ``report.json`` with every number, and the PNG figures beside it) for an
evaluation (``<output_dir>`` of ``run evaluating``: predictions.csv, training_log.csv if present) or for a
cross-validation (``<out>`` of ``python -m analysis crossval``: crossval.json and the fold folders).

The HTML has no external resources: CSS is inline and every figure is embedded as a base64 ``data:`` URI, so the
file can be mailed or archived alone. Links to the cited papers are ordinary hyperlinks.

The numbers come from ``analysis.report_results``, the HTML from ``analysis.report_html`` (a Jinja2 template); every
name is importable from here as before.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from analysis import bayes, figures
from analysis.metrics import CONFIDENCE, DEFAULT_BINS, DEFAULT_RESAMPLES, DEFAULT_SEED, DEFAULT_THRESHOLD
from analysis.predictions import read_prediction_rows
from analysis.report_html import (  # noqa: F401  (re-exported)
    CSS,
    FIGURE_CAPTIONS,
    SECTION_TITLES,
    SMALL_TEST_SET_SUBJECTS,
    limitations,
    render_html,
)
from analysis.report_results import (  # noqa: F401  (re-exported)
    PARTITIONS,
    _fold_eval_dir,
    analyse,
    crossval_results,
    datalist_summary,
    evaluation_results,
    predictions_summary,
    read_training_log,
)

# ------------------------------------------------------------------------------------------------- figures


def make_figures(results: dict[str, Any], out: Path, prevalences: Sequence[bayes.Prevalence]) -> dict[str, str]:
    """Write the PNG figures into ``out``; return figure name -> file name (only figures that have data)."""
    names = figures.FIGURE_FILES
    made = {}
    roc = results["roc"]
    figures.plot_roc(roc["scan"], out / names["roc"], roc["subject"], roc.get("folds"), contrast=results["contrast"])
    made["roc"] = names["roc"]
    scan, subject = results["metrics"]["scan"], results["metrics"]["subject"]
    # k classes: the k x k matrices of the class predictions; two classes: the AD vs CN matrices, as always.
    levels = results["multiclass"] if "multiclass" in results else results["metrics"]
    figures.plot_confusion_matrices(
        {
            f"Per scan (n={scan['n']})": levels["scan"]["confusion_matrix"],
            f"Per subject (n={subject['n']})": levels["subject"]["confusion_matrix"],
        },
        out / names["confusion"],
    )
    made["confusion"] = names["confusion"]
    figures.plot_reliability(
        {"Per scan": scan["reliability"], "Per subject": subject["reliability"]},
        out / names["reliability"],
        ece={"Per scan": scan["metrics"]["ece"]["value"], "Per subject": subject["metrics"]["ece"]["value"]},
    )
    made["reliability"] = names["reliability"]
    logs = {name: rows for name, rows in results.get("training_logs", {}).items() if rows}
    if logs:
        figures.plot_training_curves(logs, out / names["training"])
        made["training"] = names["training"]
    figures.plot_predictive_values(
        results["predictive_value_curves"],
        out / names["predictive_values"],
        prevalences=[{"label": p.short or p.label, "value": p.value} for p in prevalences],
        references=[r for r in results["clinicians"] if r["key"] == "mta_meta_analysis_2021"],
    )
    made["predictive_values"] = names["predictive_values"]
    if "stages" in results:
        figures.plot_stages(results["stages"], out / names["stages"])
        made["stages"] = names["stages"]
    if "external" in results:
        figures.plot_external(results["external"], out / names["external"])
        made["external"] = names["external"]
    if "comparison" in results:
        from analysis.compare_models_output import FIGURE_FILE, plot_comparison

        plot_comparison(results["comparison"], out / FIGURE_FILE)
        made["comparison"] = FIGURE_FILE
    return made


def write_report(
    out: str | Path,
    eval_dir: str | Path | None = None,
    crossval_dir: str | Path | None = None,
    datalist: str | Path | None = None,
    extra_prevalences: Sequence[float] = (),
    synthetic: bool = False,
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    n_bins: int = DEFAULT_BINS,
    n_draws: int = bayes.DEFAULT_DRAWS,
    bayes_level: str = "subject",
    explain_dir: str | Path | None = None,
    external_eval_dir: str | Path | None = None,
    stage_cuts: dict[str, Sequence[float] | str] | None = None,
    comparison_dir: str | Path | None = None,
) -> Path:
    """Write ``report.html``, ``report.json`` and the PNG figures into ``out``; return the HTML path.

    ``datalist`` (and, for a cross-validation, the fold datalists) also give the stage measures of the test scans
    (their ``clinical`` table; bins from ``stage_cuts``, see :mod:`analysis.stages`); ``external_eval_dir`` is the
    evaluation of the same model on another cohort's test datalist (see :mod:`analysis.external`);
    ``comparison_dir`` is the ``--out`` folder of ``compare-models``: its table and figure are added, and without
    ``eval_dir`` or ``crossval_dir`` the rest of the report is that of its reference model's cross-validation."""
    comparison = None
    if comparison_dir is not None:
        comparison = json.loads((Path(comparison_dir) / "comparison.json").read_text())
        if eval_dir is None and crossval_dir is None:
            crossval_dir = Path(comparison_dir) / comparison["reference"]
    if (eval_dir is None) == (crossval_dir is None):
        raise ValueError("Give exactly one of eval_dir and crossval_dir (or a comparison_dir).")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prevalences = bayes.prevalences_with(extra_prevalences, classes=_classes(eval_dir, crossval_dir))
    options = {
        "threshold": threshold,
        "n_resamples": n_resamples,
        "seed": seed,
        "n_bins": n_bins,
        "n_draws": n_draws,
        "bayes_level": bayes_level,
    }
    sections = {"stage_cuts": stage_cuts, "external_eval_dir": external_eval_dir}
    if eval_dir is not None:
        results = evaluation_results(eval_dir, prevalences, datalist=datalist, sections=sections, **options)
    else:
        results = crossval_results(crossval_dir, prevalences, datalist=datalist, sections=sections, **options)
    if comparison is not None:
        results["comparison"] = comparison
    results["generated"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results["synthetic"] = synthetic
    results["confidence"] = CONFIDENCE
    made = make_figures(results, out, prevalences)
    results["figures"] = made
    results["limitations"] = [html.unescape(_strip_tags(item)) for item in limitations(results, synthetic)]
    _write_text(out / "report.json", json.dumps(results, indent=2) + "\n")
    path = out / "report.html"
    if explain_dir is not None:
        from analysis.explain.summary import read_summary

        results["explanations"] = read_summary(explain_dir)
    explain = Path(explain_dir) if explain_dir is not None else None
    _write_text(path, render_html(results, out, made, prevalences, synthetic, explain))
    return path


def _classes(eval_dir: str | Path | None, crossval_dir: str | Path | None) -> list[str]:
    """The classes of the evaluated predictions (of the first fold for a cross-validation)."""
    if eval_dir is not None:
        return read_prediction_rows(Path(eval_dir) / "predictions.csv")[0]
    summary = json.loads((Path(crossval_dir) / "crossval.json").read_text())
    return read_prediction_rows(_fold_eval_dir(Path(crossval_dir), summary["folds"][0]) / "predictions.csv")[0]


def _strip_tags(text: str) -> str:
    import re

    return re.sub(r"<[^>]+>", "", text)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
