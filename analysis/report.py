"""One self-contained HTML report (and ``report.json`` with every number, and the PNG figures beside it) for an
evaluation (``<output_dir>`` of ``run evaluating``: predictions.csv, training_log.csv if present) or for a
cross-validation (``<out>`` of ``python -m analysis crossval``: crossval.json and the fold folders).

The HTML has no external resources: CSS is inline and every figure is embedded as a base64 ``data:`` URI, so the
file can be mailed or archived alone. Links to the cited papers are ordinary hyperlinks.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sklearn import metrics as skm

from analysis import bayes, clinicians, figures
from analysis.metrics import (
    CONFIDENCE,
    DEFAULT_BINS,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    DEFAULT_THRESHOLD,
    METRICS,
    Predictions,
    concat_predictions,
    evaluate_predictions,
    format_interval,
    per_subject,
    read_predictions,
    roc_with_band,
)

SECTION_TITLES = {
    "cohort": "Cohort summary",
    "metrics": "Metrics with 95% confidence intervals",
    "figures": "Figures",
    "bayes": "Bayesian post-test probabilities",
    "clinicians": "Comparison with published visual MRI reads",
    "explanations": "What the network looks at (explanations)",
    "limitations": "Limitations",
}
SMALL_TEST_SET_SUBJECTS = 100
PARTITIONS = ("training", "validation", "test")


# ------------------------------------------------------------------------------------------------- inputs


def read_training_log(path: Path) -> list[dict[str, str]]:
    """Rows of ``training_log.csv`` (``EpochLogWriter``), or [] when the file does not exist."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _counts(items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    ad = [i for i in items if int(i["label"]) == 1]
    cn = [i for i in items if int(i["label"]) == 0]
    return {
        "scans": len(items),
        "subjects": len({str(i["subject"]) for i in items}),
        "AD_scans": len(ad),
        "CN_scans": len(cn),
        "AD_subjects": len({str(i["subject"]) for i in ad}),
        "CN_subjects": len({str(i["subject"]) for i in cn}),
    }


def datalist_summary(path: str | Path) -> dict[str, Any]:
    """Scans, subjects and AD/CN counts per partition of a datalist JSON."""
    datalist = json.loads(Path(path).read_text())
    return {
        "datalist": str(path),
        "partitions": {name: _counts(datalist[name]) for name in PARTITIONS if name in datalist},
    }


def predictions_summary(pred: Predictions) -> dict[str, int]:
    """Counts of the evaluated (test) scans and subjects."""
    items = [{"label": int(y), "subject": s} for y, s in zip(pred.label, pred.subject, strict=True)]
    return _counts(items)


# ------------------------------------------------------------------------------------------------- analysis


def analyse(
    pred: Predictions,
    prevalences: Sequence[bayes.Prevalence],
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    n_bins: int = DEFAULT_BINS,
    n_draws: int = bayes.DEFAULT_DRAWS,
    bayes_level: str = "subject",
) -> dict[str, Any]:
    """Metrics with intervals, ROC band, Bayesian analysis and clinician comparison of one set of predictions."""
    if bayes_level not in ("scan", "subject"):
        raise ValueError(f"bayes_level must be 'scan' or 'subject', got {bayes_level!r}.")
    metrics = evaluate_predictions(pred, threshold, n_resamples, seed, n_bins)
    subject_pred = per_subject(pred)
    confusion = metrics[bayes_level]["confusion_matrix"]
    posterior = bayes.bayesian_analysis(confusion, prevalences, n_draws=n_draws, seed=seed)
    posterior["level"] = bayes_level
    curves = bayes.predictive_value_curves(confusion, n_draws=n_draws, seed=seed)
    comparison = clinicians.clinician_comparison(
        prevalences, posterior["sensitivity"]["median"], posterior["specificity"]["median"]
    )
    return {
        "cohort": {"test": predictions_summary(pred)},
        "metrics": metrics,
        "roc": {
            "scan": roc_with_band(pred, n_resamples, seed),
            "subject": roc_with_band(subject_pred, n_resamples, seed),
        },
        "bayes": posterior,
        "predictive_value_curves": curves,
        "clinicians": comparison,
    }


def evaluation_results(
    eval_dir: str | Path, prevalences: Sequence[bayes.Prevalence], datalist: str | Path | None = None, **options: Any
) -> dict[str, Any]:
    """Analysis of one evaluation folder."""
    eval_dir = Path(eval_dir)
    pred = read_predictions(eval_dir / "predictions.csv")
    results = {"kind": "evaluation", "source": str(eval_dir.resolve()), **analyse(pred, prevalences, **options)}
    if datalist is not None:
        results["cohort"]["datalist"] = datalist_summary(datalist)
    results["training_logs"] = {"training": read_training_log(eval_dir / "training_log.csv")}
    return results


def crossval_results(
    crossval_dir: str | Path, prevalences: Sequence[bayes.Prevalence], **options: Any
) -> dict[str, Any]:
    """Analysis of a cross-validation: the pooled test predictions of all folds (each scan tested once) with
    intervals, plus the per-fold metrics and mean ± standard deviation from ``crossval.json``."""
    crossval_dir = Path(crossval_dir)
    summary = json.loads((crossval_dir / "crossval.json").read_text())
    fold_preds = {}
    for fold in summary["folds"]:
        eval_dir = _fold_eval_dir(crossval_dir, fold)
        fold_preds[f"fold {fold['fold']}"] = read_predictions(eval_dir / "predictions.csv")
    pooled = concat_predictions(fold_preds.values())
    results = {
        "kind": "cross-validation",
        "source": str(crossval_dir.resolve()),
        **analyse(pooled, prevalences, **options),
    }
    results["crossval"] = summary
    results["roc"]["folds"] = {}
    for name, pred in fold_preds.items():
        if len(set(pred.label.tolist())) == 2:
            fpr, tpr, _ = skm.roc_curve(pred.label, pred.prob)
            auc = float(skm.roc_auc_score(pred.label, pred.prob))
            results["roc"]["folds"][name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": auc}
    results["cohort"]["folds"] = {}
    for fold in summary["folds"]:
        if Path(fold["datalist"]).is_file():
            results["cohort"]["folds"][f"fold {fold['fold']}"] = datalist_summary(fold["datalist"])
    results["training_logs"] = {
        f"fold {fold['fold']}": read_training_log(_fold_eval_dir(crossval_dir, fold) / "training_log.csv")
        for fold in summary["folds"]
    }
    return results


def _fold_eval_dir(crossval_dir: Path, fold: Mapping[str, Any]) -> Path:
    # Prefer the fold folder next to crossval.json, so a moved or copied cross-validation folder still reports.
    local = crossval_dir / f"fold_{fold['fold']}" / "eval"
    return local if local.is_dir() else Path(fold["eval_dir"])


# ------------------------------------------------------------------------------------------------- figures


def make_figures(results: dict[str, Any], out: Path, prevalences: Sequence[bayes.Prevalence]) -> dict[str, str]:
    """Write the PNG figures into ``out``; return figure name -> file name (only figures that have data)."""
    names = figures.FIGURE_FILES
    made = {}
    figures.plot_roc(results["roc"]["scan"], out / names["roc"], results["roc"]["subject"], results["roc"].get("folds"))
    made["roc"] = names["roc"]
    scan, subject = results["metrics"]["scan"], results["metrics"]["subject"]
    figures.plot_confusion_matrices(
        {
            f"Per scan (n={scan['n']})": scan["confusion_matrix"],
            f"Per subject (n={subject['n']})": subject["confusion_matrix"],
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
    return made


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
}


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


def _e(value: Any) -> str:
    return html.escape(str(value))


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _summary_interval(entry: Mapping[str, float], percent: bool = True) -> str:
    """``median (low-high)`` of a posterior summary."""
    if percent:
        return f"{_pct(entry['median'])} ({_pct(entry['ci_low'])}\u2013{_pct(entry['ci_high'])})"
    return f"{entry['median']:.2f} ({entry['ci_low']:.2f}\u2013{entry['ci_high']:.2f})"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], text_columns: Sequence[int] = (0,)) -> str:
    """An HTML table; cells are right-aligned numbers except in ``text_columns`` (wrapped text)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            css = "" if index in text_columns or index - len(row) in text_columns else ' class="num"'
            cells.append(f"<td{css}>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _cohort_html(results: Mapping[str, Any]) -> str:
    parts = []
    columns = ["", "scans", "subjects", "AD scans", "CN scans", "AD subjects", "CN subjects"]
    keys = ["scans", "subjects", "AD_scans", "CN_scans", "AD_subjects", "CN_subjects"]
    test = results["cohort"]["test"]
    label = "Pooled test folds" if results["kind"] == "cross-validation" else "Evaluated (test) set"
    parts.append(_table(columns, [[_e(label)] + [test[k] for k in keys]]))
    datalists = []
    if "datalist" in results["cohort"]:
        datalists.append(("Datalist", results["cohort"]["datalist"]))
    datalists += list(results["cohort"].get("folds", {}).items())
    for name, summary in datalists:
        rows = [[_e(p)] + [c[k] for k in keys] for p, c in summary["partitions"].items()]
        parts.append(f"<p><b>{_e(name)}</b> <span class='small'>{_e(summary['datalist'])}</span></p>")
        parts.append(_table(["partition", *columns[1:]], rows))
    if not datalists:
        parts.append("<p class='small'>Partition counts of training and validation appear here when the datalist is "
                     "given (<code>--datalist</code>).</p>")  # fmt: skip
    return "".join(parts)


def _metrics_html(results: Mapping[str, Any]) -> str:
    metrics = results["metrics"]
    settings = metrics["settings"]
    scan, subject = metrics["scan"], metrics["subject"]
    parts = [
        f"<p>Per scan: every test scan counts once ({scan['n']} scans). Per subject: a subject's AD probability is "
        f"the mean over its scans ({subject['n']} subjects). Threshold {settings['threshold']}. Intervals: "
        f"{_e(settings['interval'])}, {settings['n_resamples']} resamples, seed {settings['seed']}; a resample "
        f"where a metric is undefined (e.g. one class only) is skipped, and the number used is shown. Expected "
        f"calibration error with {settings['calibration_bins']} equal-width bins.</p>"
    ]
    rows = []
    for name, label in METRICS.items():
        a, b = scan["metrics"][name], subject["metrics"][name]
        rows.append([_e(label), format_interval(a), a["n_resamples_used"], format_interval(b), b["n_resamples_used"]])
    header = ["Metric", "Per scan (95% CI)", "resamples used", "Per subject (95% CI)", "resamples used"]
    parts.append(_table(header, rows))
    cells = [("tn", "True CN (TN)"), ("fp", "False AD (FP)"), ("fn", "Missed AD (FN)"), ("tp", "True AD (TP)")]
    rows = []
    for key, label in cells:
        row = [_e(label)]
        for level in (scan, subject):
            entry = level["confusion_matrix"][key]
            row.append(f"{entry['value']} ({entry['ci_low']:.0f}\u2013{entry['ci_high']:.0f})")
        rows.append(row)
    parts.append("<p>Confusion matrix counts with 95% bootstrap intervals:</p>")
    parts.append(_table(["Cell", "Per scan", "Per subject"], rows))
    if results["kind"] == "cross-validation":
        parts.append(_crossval_html(results["crossval"]))
    return "".join(parts)


def _crossval_html(summary: Mapping[str, Any]) -> str:
    from analysis.crossval import SUMMARY_METRICS

    header = ["Fold", "scans", "subjects", *[METRICS[m].split(" (")[0] for m in SUMMARY_METRICS]]
    rows = []
    for fold in summary["folds"]:
        values = [_pct(fold["scan"][m], 2) for m in SUMMARY_METRICS]
        rows.append([_e(fold["fold"]), fold["n_scans"], fold["n_subjects"], *values])
    stats = summary["scan_mean_std"]
    rows.append(["<b>mean ± SD</b>", "", ""] + [_mean_sd(stats[m]) for m in SUMMARY_METRICS])
    return (
        f"<p><b>Per fold (per scan)</b>, {summary['k']}-fold cross-validation; mean ± sample standard deviation "
        "(ddof=1) over folds, as the dissertation reports it. The intervals above are for the pooled test "
        "predictions of all folds (each scan is tested once).</p>" + _table(header, rows)
    )


def _mean_sd(stats: Mapping[str, Any]) -> str:
    """``77.26% ± 2.34`` (mean in percent ± sample SD in percentage points)."""
    if stats["mean"] is None:
        return "n/a"
    spread = "n/a" if stats["std"] is None else f"{100 * stats['std']:.2f}"
    return f"{100 * stats['mean']:.2f}% ± {spread}"


def _figures_html(out: Path, made: Mapping[str, str]) -> str:
    parts = []
    for name, filename in made.items():
        data = base64.b64encode((out / filename).read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{_e(filename)}">'
            f"<figcaption>{_e(FIGURE_CAPTIONS[name])} <span class='small'>({_e(filename)})</span></figcaption></figure>"
        )
    if "training" not in made:
        parts.append("<p class='small'>No training_log.csv was found, so there are no training curves.</p>")
    return "".join(parts)


def _bayes_html(results: Mapping[str, Any]) -> str:
    post = results["bayes"]
    cm = post["confusion_matrix"]
    parts = [
        f"<p>Prior: {_e(post['prior']['text'])}. Data: the per-{_e(post['level'])} confusion matrix "
        f"(TP {cm['tp']}, FN {cm['fn']}, TN {cm['tn']}, FP {cm['fp']}), so sensitivity ~ "
        f"Beta({post['sensitivity']['beta_parameters'][0]:g}, {post['sensitivity']['beta_parameters'][1]:g}) and "
        f"specificity ~ Beta({post['specificity']['beta_parameters'][0]:g}, "
        f"{post['specificity']['beta_parameters'][1]:g}), independent. {post['n_draws']} posterior draws (seed "
        f"{post['seed']}); medians with 95% equal-tailed credible intervals. PPV = sens&middot;p / (sens&middot;p + "
        f"(1&minus;spec)(1&minus;p)), NPV = spec&middot;(1&minus;p) / (spec&middot;(1&minus;p) + (1&minus;sens)"
        f"&middot;p), LR+ = sens/(1&minus;spec), LR&minus; = (1&minus;sens)/spec.</p>",
        _table(
            ["Quantity", "Posterior median (95% CrI)"],
            [
                ["Sensitivity", _summary_interval(post["sensitivity"])],
                ["Specificity", _summary_interval(post["specificity"])],
                ["LR+ (positive likelihood ratio)", _summary_interval(post["lr_positive"], percent=False)],
                ["LR&minus; (negative likelihood ratio)", _summary_interval(post["lr_negative"], percent=False)],
            ],
        ),
    ]
    rows = []
    for row in post["by_prevalence"]:
        prevalence = row["prevalence"]
        source = _e(prevalence["source"])
        if prevalence.get("url"):
            source += f' <a href="{_e(prevalence["url"])}">link</a>'
        if prevalence.get("note"):
            source += f"<br><span class='small'>{_e(prevalence['note'])}</span>"
        rows.append(
            [
                _e(prevalence["label"]),
                _pct(prevalence["value"]),
                _summary_interval(row["ppv"]),
                _summary_interval(row["npv"]),
                _summary_interval(row["p_ad_given_negative"]),
                source,
            ]
        )
    header = ["Setting", "Prevalence", "PPV = P(AD | positive)", "NPV = P(CN | negative)", "P(AD | negative)", "Source"]
    parts.append(_table(header, rows, text_columns=(0, -1)))
    return "".join(parts)


def _clinicians_html(results: Mapping[str, Any], prevalences: Sequence[bayes.Prevalence]) -> str:
    header = ["Reader", "Sensitivity", "Specificity", "LR+", "LR\u2212"]
    header += [f"PPV / NPV at {p.short or p.label} ({p.value:.3g})" for p in prevalences]
    numbers, sources = [], []
    for row in results["clinicians"]:
        reader = f"<b>{_e(row['reader'])}</b>" if row["key"] == "model" else _e(row["reader"])
        cells = [
            reader,
            _pct(row["sensitivity"]),
            _pct(row["specificity"]),
            f"{row['lr_positive']:.2f}",
            f"{row['lr_negative']:.2f}",
        ]
        cells += [f"{_pct(v['ppv'])} / {_pct(v['npv'])}" for v in row["by_prevalence"]]
        numbers.append(cells)
        source = _e(row["citation"]) + (f' <a href="{_e(row["url"])}">link</a>' if row["url"] else "")
        if row.get("note"):
            source += f"<br><span class='small'>{_e(row['note'])}</span>"
        sources.append([reader, _e(row["population"]), source])
    return (
        "<p>Published sensitivity and specificity of reading structural MRI by eye for AD against controls, each "
        "evaluated at the same prevalences (point estimates). The model row uses the posterior medians above. The "
        "studies used other people, scanners and diagnostic standards, so this places the model's numbers in "
        "context; it is not a comparison on the same scans.</p>"
        + _table(header, numbers)
        + "<p>Populations and sources:</p>"
        + _table(["Reader", "Population", "Source"], sources, text_columns=(0, 1, 2))
    )


def _explanations_html(explain_dir: Path) -> str:
    from analysis.explain.summary import read_summary, summary_html

    return summary_html(read_summary(explain_dir), explain_dir)


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
    items += [
        "<b>Case-control sampling.</b> AD and CN were sampled 50/50 from research cohorts (clinically diagnosed "
        "AD dementia against cognitively normal volunteers, no MCI or other dementias). Accuracy and precision at "
        "this 50/50 mix do not carry over to a clinic, and sensitivity and specificity measured on clear-cut cases "
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
    title = f"AD vs CN classification: {results['kind']} report"
    banners = [
        '<div class="banner warn"><b>Research use only &mdash; not a medical device.</b> Not for diagnosis or any '
        "decision about a person's care.</div>"
    ]
    if synthetic:
        banners.append(
            '<div class="banner warn"><b>Synthetic data:</b> the numbers below test the software, not the method.</div>'
        )
    sections = [
        ("cohort", _cohort_html(results)),
        ("metrics", _metrics_html(results)),
        ("figures", _figures_html(out, made)),
        ("bayes", _bayes_html(results)),
        ("clinicians", _clinicians_html(results, prevalences)),
        *([("explanations", _explanations_html(explain_dir))] if explain_dir is not None else []),
        ("limitations", "<ul>" + "".join(f"<li>{item}</li>" for item in limitations(results, synthetic)) + "</ul>"),
    ]
    body = "".join(f'<h2 id="{key}">{_e(SECTION_TITLES[key])}</h2>{content}' for key, content in sections)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>"
        f"<p class='small'>Source: {_e(results['source'])}. Written {_e(results['generated'])} by "
        f"<code>python -m analysis report</code>.</p>{''.join(banners)}{body}</body></html>\n"
    )


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
) -> Path:
    """Write ``report.html``, ``report.json`` and the PNG figures into ``out``; return the HTML path."""
    if (eval_dir is None) == (crossval_dir is None):
        raise ValueError("Give exactly one of eval_dir and crossval_dir.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prevalences = bayes.prevalences_with(extra_prevalences)
    options = {
        "threshold": threshold,
        "n_resamples": n_resamples,
        "seed": seed,
        "n_bins": n_bins,
        "n_draws": n_draws,
        "bayes_level": bayes_level,
    }
    if eval_dir is not None:
        results = evaluation_results(eval_dir, prevalences, datalist=datalist, **options)
    else:
        results = crossval_results(crossval_dir, prevalences, **options)
        if datalist is not None:
            results["cohort"]["datalist"] = datalist_summary(datalist)
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


def _strip_tags(text: str) -> str:
    import re

    return re.sub(r"<[^>]+>", "", text)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
