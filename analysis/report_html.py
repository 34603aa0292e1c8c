"""The report's HTML, rendered from ``templates/report.html.j2``: cohort, metrics with intervals, figures (embedded as
base64 ``data:`` URIs), Bayesian post-test probabilities, the clinician comparison, the explanations (when given) and
the limitations. The template lays the page out; this module gathers and formats its numbers.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from analysis import bayes
from analysis.metrics import METRICS, format_interval
from analysis.report_sections import (
    comparison_context,
    external_context,
    figure_captions,
    multiclass_context,
    stages_context,
)
from analysis.templating import render

SECTION_TITLES = {
    "cohort": "Cohort summary",
    "metrics": "Metrics with 95% confidence intervals",
    "stages": "Accuracy by disease stage",
    "external": "External validation",
    "comparison": "Model comparison",
    "figures": "Figures",
    "bayes": "Bayesian post-test probabilities",
    "clinicians": "Comparison with published visual MRI reads",
    "explanations": "What the network looks at (explanations)",
    "limitations": "Limitations",
}
SMALL_TEST_SET_SUBJECTS = 100

FIGURE_CAPTIONS = {
    "roc": "ROC curve per scan with its pointwise 95% band from the subject bootstrap (true-positive rate at fixed "
    "false-positive rates); per-subject curve dashed.",
    "confusion": "Confusion matrices at the 0.5 threshold, per scan and per subject (row percentages).",
    "reliability": "Reliability diagram: observed fraction of AD against mean predicted probability in equal-width "
    "bins (the bins of the expected calibration error), with the number of predictions per bin below.",
    "training": "Training curves from training_log.csv: loss and accuracy per epoch, training (solid) and validation "
    "(dashed).",
    "predictive_values": "Post-test probabilities against prevalence: posterior median PPV and NPV with 95% credible "
    "bands; dotted lines mark the prevalences of the table; dashed lines are the pooled visual MTA rating "
    "(meta-analysis point estimates).",
    "stages": "Sensitivity for AD by stage bin (least to most advanced, number of AD scans under each bin) with 95% "
    "subject-bootstrap intervals.",
    "external": "Internal against external test set: each metric with its 95% subject-bootstrap interval.",
    "comparison": "Pooled out-of-fold ROC-AUC of each model with its 95% subject-bootstrap interval (reference in red, "
    "its pooled AUC dashed); grey dots: the single folds.",
}
# Figures shown in their own section rather than among the others.
SECTION_FIGURES = ("stages", "external", "comparison")


# ------------------------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #1f4e79;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.35em .6em;
text-align:left;vertical-align:top}th{background:#eef3f8}td.num{text-align:right;white-space:nowrap}
.banner{padding:.7em 1em;border-radius:4px;margin:.6em 0}.warn{background:#fdecea;border:1px solid #c0392b}
.info{background:#eef3f8;border:1px solid #1f4e79}figure{margin:1.2em 0}figure img{max-width:100%;
border:1px solid #ddd}figcaption{font-size:.9em;color:#555}.small{font-size:.85em;color:#555}
"""


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _summary_interval(entry: Mapping[str, float], percent: bool = True) -> str:
    """``median (low-high)`` of a posterior summary."""
    if percent:
        return f"{_pct(entry['median'])} ({_pct(entry['ci_low'])}\u2013{_pct(entry['ci_high'])})"
    return f"{entry['median']:.2f} ({entry['ci_low']:.2f}\u2013{entry['ci_high']:.2f})"


def _mean_sd(stats: Mapping[str, Any]) -> str:
    """``77.26% ± 2.34`` (mean in percent ± sample SD in percentage points)."""
    if stats["mean"] is None:
        return "n/a"
    spread = "n/a" if stats["std"] is None else f"{100 * stats['std']:.2f}"
    return f"{100 * stats['mean']:.2f}% ± {spread}"


def _cohort(results: Mapping[str, Any]) -> dict[str, Any]:
    """The cohort table of the evaluated set and one table of partitions per datalist (columns: scans, subjects,
    then scans and subjects per class, AD first)."""
    test = results["cohort"]["test"]
    keys = list(test)
    columns = ["", *(key.replace("_", " ") for key in keys)]
    label = "Pooled test folds" if results["kind"] == "cross-validation" else "Evaluated (test) set"
    datalists = []
    if "datalist" in results["cohort"]:
        datalists.append(("Datalist", results["cohort"]["datalist"]))
    datalists += list(results["cohort"].get("folds", {}).items())
    tables = [
        {
            "name": name,
            "path": summary["datalist"],
            "columns": ["partition", *(key.replace("_", " ") for key in _keys(summary))],
            "rows": [[p] + [c[k] for k in _keys(summary)] for p, c in summary["partitions"].items()],
        }
        for name, summary in datalists
    ]
    return {"columns": columns, "test_row": [label] + [test[k] for k in keys], "datalists": tables}


def _keys(summary: Mapping[str, Any]) -> list[str]:
    partitions = list(summary["partitions"].values())
    return list(partitions[0]) if partitions else []


def _metric_rows(metrics: Mapping[str, Any], negative: str = "CN") -> tuple[list[list[Any]], list[list[Any]]]:
    """Rows of the metrics table and of the confusion-matrix table (per scan and per subject); ``negative`` names the
    classes that are not AD (e.g. ``CN+MCI``)."""
    scan, subject = metrics["scan"], metrics["subject"]
    rows = []
    for name, label in METRICS.items():
        a, b = scan["metrics"][name], subject["metrics"][name]
        rows.append([label, format_interval(a), a["n_resamples_used"], format_interval(b), b["n_resamples_used"]])
    cells = [("tn", f"True {negative} (TN)"), ("fp", "False AD (FP)"), ("fn", "Missed AD (FN)"), ("tp", "True AD (TP)")]
    confusion = []
    for key, label in cells:
        row = [label]
        for level in (scan, subject):
            entry = level["confusion_matrix"][key]
            row.append(f"{entry['value']} ({entry['ci_low']:.0f}\u2013{entry['ci_high']:.0f})")
        confusion.append(row)
    return rows, confusion


def _crossval(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The per-fold table of a cross-validation and its mean ± SD row."""
    from analysis.crossval import SUMMARY_METRICS

    header = ["Fold", "scans", "subjects", *[METRICS[m].split(" (")[0] for m in SUMMARY_METRICS]]
    rows = []
    for fold in summary["folds"]:
        values = [_pct(fold["scan"][m], 2) for m in SUMMARY_METRICS]
        rows.append([fold["fold"], fold["n_scans"], fold["n_subjects"], *values])
    stats = summary["scan_mean_std"]
    return {"k": summary["k"], "header": header, "rows": rows, "mean_sd": [_mean_sd(stats[m]) for m in SUMMARY_METRICS]}


def _figures(out: Path, made: Mapping[str, str], captions: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Each figure's PNG as base64, its file name and caption, by figure name."""
    figures = {}
    for name, filename in made.items():
        data = base64.b64encode((out / filename).read_bytes()).decode("ascii")
        figures[name] = {"data": data, "file": filename, "caption": captions.get(name, FIGURE_CAPTIONS[name])}
    return figures


def _explanations_html(explain_dir: Path) -> Markup:
    from analysis.explain.summary import read_summary, summary_html

    return Markup(summary_html(read_summary(explain_dir), explain_dir))


def limitations(results: Mapping[str, Any], synthetic: bool = False) -> list[str]:
    """The limitations paragraph items, including data-dependent ones (synthetic data, small test set)."""
    items = []
    if synthetic:
        items.append(
            "<b>Synthetic data.</b> These results come from synthetic volumes made to exercise the software; they "
            "say nothing about how well the method detects Alzheimer's disease."
        )
    n_subjects = results["metrics"]["subject"]["n"]
    if n_subjects < SMALL_TEST_SET_SUBJECTS:
        items.append(
            f"<b>Small test set.</b> {n_subjects} subjects ({results['metrics']['scan']['n']} scans): intervals are "
            "wide, and a few subjects can move every metric."
        )
    classes = list(results.get("classes", ["CN", "AD"]))
    sampled = (
        "AD and CN were sampled 50/50 from research cohorts (clinically diagnosed AD dementia against cognitively "
        "normal volunteers, no MCI or other dementias). Accuracy and precision at this 50/50 mix"
    )
    if len(classes) > 2:
        sampled = (
            f"The classes {', '.join(classes)} were sampled in about equal numbers from research cohorts (no other "
            f"dementias); the AD-vs-rest metrics, the Bayesian analysis and the clinician comparison use the contrast "
            f"{results['contrast']}. Accuracy and precision at this mix"
        )
    items += [
        f"<b>Case-control sampling.</b> {sampled}"
        " do not carry over to a clinic, and sensitivity and specificity measured on clear-cut cases "
        "usually overestimate those on the patients who are actually referred (spectrum bias). The post-test "
        "probabilities assume that sensitivity and specificity transfer unchanged to each setting.",
        "<b>Dependence between scans.</b> Several scans of one subject are not independent: the bootstrap resamples "
        "subjects, and the Bayesian model uses the per-subject confusion matrix by default.",
        "<b>Clinician comparison.</b> Published readers were evaluated on other people, scanners and reference "
        "standards; only a reader study on the same scans can show that the model is better or worse.",
        "<b>Fixed threshold.</b> Predictions use an AD probability of 0.5, not tuned for any setting.",
        "<b>Research use only.</b> This software is not a medical device. It is not validated for, and must not "
        "be used for, the diagnosis of any person or any decision about their care.",
    ]
    if "stages" in results:
        items.append(
            "<b>Accuracy by stage.</b> Per scan and exploratory: the bins are small, several were not planned in "
            "advance, and stage measures are recorded differently between cohorts (e.g. OASIS labels AD from CDR)."
        )
    if "external" in results:
        items.append(
            "<b>External validation.</b> The drop mixes every difference between the cohorts (people, scanners, "
            "protocols, diagnostic criteria); it shows how far the internal numbers transfer, not why."
        )
    if results["kind"] == "cross-validation":
        items.append(
            "<b>Cross-validation.</b> The folds share most of their training data, so the standard deviation over "
            f"{results['crossval']['k']} folds understates the variation expected between independent studies."
        )
    return items


def render_html(
    results: Mapping[str, Any],
    out: Path,
    made: Mapping[str, str],
    prevalences: Sequence[bayes.Prevalence],
    synthetic: bool = False,
    explain_dir: Path | None = None,
) -> str:
    """The report as one HTML string (figures read from ``out`` and embedded)."""
    negative = results.get("contrast", "AD vs CN").split(" vs ", 1)[1]
    metric_rows, confusion_rows = _metric_rows(results["metrics"], negative)
    clinician_header = ["Reader", "Sensitivity", "Specificity", "LR+", "LR\u2212"]
    clinician_header += [f"PPV / NPV at {p.short or p.label} ({p.value:.3g})" for p in prevalences]
    classes = list(results.get("classes", ["CN", "AD"]))
    figures = _figures(out, made, figure_captions(results))
    page = render(
        "report.html.j2",
        results=results,
        css=Markup(CSS),
        synthetic=synthetic,
        section_titles=SECTION_TITLES,
        cohort=_cohort(results),
        metric_rows=metric_rows,
        confusion_rows=confusion_rows,
        crossval=_crossval(results["crossval"]) if results["kind"] == "cross-validation" else None,
        title=f"{'/'.join(classes) if len(classes) > 2 else 'AD vs CN'} classification: {results['kind']} report",
        contrast=results.get("contrast", "AD vs CN"),
        multiclass=multiclass_context(results),
        stages=stages_context(results),
        external=external_context(results),
        comparison=comparison_context(results),
        figures=[figure for name, figure in figures.items() if name not in SECTION_FIGURES],
        section_figures={name: figures[name] for name in SECTION_FIGURES if name in figures},
        has_training_curves="training" in made,
        clinician_header=clinician_header,
        explanations=_explanations_html(explain_dir) if explain_dir is not None else None,
        limitations=[Markup(item) for item in limitations(results, synthetic)],
        pct=_pct,
        interval=_summary_interval,
    )
    return page + "\n"  # the file ends with a newline, as before
