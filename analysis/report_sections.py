"""The report's rows for k-class metrics, accuracy by disease stage, external validation and the model comparison
(the numbers come from :mod:`analysis.multiclass`, :mod:`analysis.stages`, :mod:`analysis.external` and
:mod:`analysis.compare_models_table`; ``templates/report.html.j2`` lays them out). Each function returns None when
the results have no such section, and the template then leaves it out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from analysis.multiclass import PER_CLASS, SUMMARY
from analysis.point_estimates import format_interval


def _ci(entry: Mapping[str, Any]) -> str:
    return format_interval(entry)


def _count_ci(entry: Mapping[str, Any]) -> str:
    if entry.get("ci_low") is None:
        return str(entry["value"])
    return f"{entry['value']} ({entry['ci_low']:.0f}\u2013{entry['ci_high']:.0f})"


def multiclass_context(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """Summary rows (accuracy, balanced accuracy, macro AUC per scan and per subject), one per-class table per level
    and the k x k confusion counts with intervals per scan."""
    result = results.get("multiclass")
    if result is None:
        return None
    scan, subject = result["scan"], result["subject"]
    summary = [[label, _ci(scan[name]), _ci(subject[name])] for name, label in SUMMARY.items()]
    per_class = {}
    for level in ("scan", "subject"):
        entry = result[level]
        per_class[level] = [
            [c, values["n"], *(_ci(values[m]) for m in PER_CLASS)] for c, values in entry["per_class"].items()
        ]
    confusion = [
        [f"True {c}", *(_count_ci(cell) for cell in row)]
        for c, row in zip(result["classes"], scan["confusion_matrix"]["rows_true_cols_pred"], strict=True)
    ]
    return {
        "classes": result["classes"],
        "settings": result["settings"],
        "summary": summary,
        "per_class_header": ["Class", "n", *PER_CLASS.values()],
        "per_class": per_class,
        "n": {level: result[level]["n"] for level in ("scan", "subject")},
        "confusion_header": ["", *(f"Predicted {c}" for c in result["classes"])],
        "confusion": confusion,
    }


def stages_context(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """One table per stage measure (bins from the least to the most advanced) and the CN reference row."""
    result = results.get("stages")
    if result is None:
        return None
    k = len(result["classes"])
    disease = result["classes"][1:]
    header = ["Bin", "scans", "subjects"] + ([f"{c} scans" for c in disease] if k > 2 else [])
    header += ["Sensitivity for AD (95% CI)"] + (["Correct class (95% CI)"] if k > 2 else [])
    header += [f"ROC-AUC, AD in bin vs all {result['reference_class']} (95% CI)"]
    tables = []
    for entry in result["variables"].values():
        rows = []
        for row in entry["bins"]:
            cells = [row["label"], row["n_scans"], row["n_subjects"]]
            cells += [row["n_per_class"][c] for c in disease] if k > 2 else []
            cells += [_ci(row["sensitivity"])] + ([_ci(row["correct"])] if k > 2 else []) + [_ci(row["auc"])]
            rows.append(cells)
        trend = entry["trend"]
        trend_text = None
        if trend is not None:
            trend_text = (
                f"change in sensitivity per bin, {trend['from']} to {trend['to']} (least-squares slope over the AD "
                f"scans): {_ci(trend)}"
            )
        cuts = ", ".join(f"{c:.3g}" for c in entry["cuts"])
        tables.append(
            {
                "title": entry["title"],
                "rule": f"{entry['rule']} ({cuts})",
                "missing": entry["n_staged_without_value"],
                "rows": rows,
                "trend": trend_text,
            }
        )
    ref = result["reference"]
    reference = (
        f"{ref['n_scans']} {result['reference_class']} scans of {ref['n_subjects']} subjects; specificity "
        f"(not called AD) {_ci(ref['specificity'])}"
    )
    if k > 2:
        reference += f"; predicted {result['reference_class']} {_ci(ref['correct'])}"
    return {"header": header, "tables": tables, "reference": reference, "settings": result["settings"]}


def external_context(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """Internal, external and drop per metric, one table per level."""
    result = results.get("external")
    if result is None:
        return None
    tables = {}
    for level in ("scan", "subject"):
        entry = result[level]
        rows = [
            [result["metrics"][m].split(" (")[0], _ci(row["internal"]), _ci(row["external"]), _ci(row["drop"])]
            for m, row in entry["metrics"].items()
        ]
        header = [
            "Metric",
            f"Internal ({entry['n_internal']} {level}s)",
            f"External ({entry['n_external']} {level}s)",
            "Drop, internal \u2212 external",
        ]
        tables[level] = {"header": header, "rows": rows}
    return {"tables": tables, **result}


def comparison_context(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """The table of ``compare-models`` (as in its comparison.md), its verdict and how it was made."""
    result = results.get("comparison")
    if result is None:
        return None
    from analysis.compare_models_output import notes, table_rows

    header, rows = table_rows(result)
    return {"header": header, "rows": rows, "verdict": result["verdict"]["lines"], "notes": notes(result)}


def figure_captions(results: Mapping[str, Any]) -> dict[str, str]:
    """Captions that depend on the classes (the generic ones are in ``report_html.FIGURE_CAPTIONS``)."""
    captions = {}
    if len(results.get("classes", ())) > 2:
        contrast = results["contrast"]
        captions["roc"] = (
            f"ROC curve of {contrast} (prob_AD) per scan with its pointwise 95% band from the subject bootstrap; "
            "per-subject curve dashed."
        )
        captions["confusion"] = (
            f"{len(results['classes'])}-class confusion matrices (rows true class, columns the class of highest "
            "probability), per scan and per subject (row percentages)."
        )
    return captions
