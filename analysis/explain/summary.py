"""The explanation summary: its verdict (is the relevance on the planted atrophy?), and the summary as printed text
and as a section of the HTML report (``analysis report --explain-dir``)."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis.explain import regions
from analysis.explain.maps import METHOD_TITLES
from analysis.explain.regions import REGION_TITLES
from analysis.templating import render

TARGET = "hippocampi_and_ventricles"
GAIN_EXPECTED = 3.0  # relevance density gain on hippocampi + ventricles that would show the planted atrophy is used
SHOWN_REGIONS = (
    "hippocampi_and_ventricles",
    "hippocampi",
    "left_hippocampus",
    "right_hippocampus",
    "lateral_ventricles",
    "medial_temporal_lobe",
    "rest_of_brain",
    "outside_brain",
)


def _find(entries: Sequence[Mapping[str, Any]], **where: Any) -> Mapping[str, Any] | None:
    return next((e for e in entries if all(e.get(k) == v for k, v in where.items())), None)


def verdict(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Is the relevance on the planted atrophy? Per method: AD scans' density gain on hippocampi + ventricles
    (≥ 3 expected), pointing game, and whether the maps pass the randomisation check."""
    per_method, on_target = {}, []
    randomisation = (summary.get("randomisation") or {}).get("methods", {})
    for method in summary["methods"]:
        entry = _find(summary["regions"], group="AD", method=method, region=TARGET) or _find(
            summary["regions"], group="all", method=method, region=TARGET
        )
        gain = entry["density_gain_mean"] if entry else None
        passed = randomisation.get(method, {}).get("passed")
        ok = gain is not None and np.isfinite(gain) and gain >= GAIN_EXPECTED and passed is True
        per_method[method] = {"density_gain": gain, "randomisation_passed": passed, "on_atrophy": ok}
        if ok:
            on_target.append(method)
    if on_target:
        text = (
            f"Relevance is on the planted atrophy (hippocampi + lateral ventricles, density gain ≥ {GAIN_EXPECTED:g} "
            f"on AD scans, randomisation check passed) for: {', '.join(METHOD_TITLES[m] for m in on_target)}."
        )
    else:
        text = (
            f"No method puts relevance on the planted atrophy at a density gain of {GAIN_EXPECTED:g} with a passed "
            f"randomisation check. Instead: {'; '.join(_where_instead(summary))}."
        )
    return {"methods": per_method, "on_atrophy": on_target, "text": text}


def _where_instead(summary: Mapping[str, Any]) -> list[str]:
    """Per method, the single region with the densest relevance and the one holding most of it (AD scans)."""
    group = "AD" if any(e["group"] == "AD" for e in summary["regions"]) else "all"
    parts = []
    for method in summary["methods"]:
        own = [e for e in summary["regions"] if e["group"] == group and e["method"] == method]
        own = [e for e in own if e["region"] in regions.REGIONS and np.isfinite(e.get("density_gain_mean") or np.nan)]
        if not own:
            continue
        densest = max(own, key=lambda e: e["density_gain_mean"])
        largest = max(own, key=lambda e: e["fraction_mean"])
        parts.append(
            f"{METHOD_TITLES[method]} is densest in {densest['title'].lower()} "
            f"(gain {densest['density_gain_mean']:.2f}), its largest share is {largest['title'].lower()} "
            f"({100 * largest['fraction_mean']:.0f}%)"
        )
    return parts


def read_summary(explain_dir: str | Path) -> dict[str, Any]:
    path = Path(explain_dir) / "summary.json"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: run `python -m analysis explain --out {explain_dir}` first.")
    return json.loads(path.read_text())


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _ci(entry: Mapping[str, Any] | None, metric: str, digits: int = 2) -> str:
    """'mean (low-high)' of one metric of a regions.summarise row."""
    mean = (entry or {}).get(f"{metric}_mean")
    if not _finite(mean):
        return "n/a"
    low, high = entry.get(f"{metric}_ci_low"), entry.get(f"{metric}_ci_high")
    interval = f" ({low:.{digits}f}-{high:.{digits}f})" if _finite(low) and _finite(high) else ""
    return f"{mean:.{digits}f}{interval}"


def _pct(entry: Mapping[str, Any] | None, metric: str) -> str:
    """A share as 'mean% (low-high%)': the hippocampi hold well under 1% of a 32^3 grid."""
    scaled = {k: 100 * v if _finite(v) else v for k, v in (entry or {}).items() if k.startswith(metric)}
    text = _ci(scaled, metric, digits=1)
    return text if text == "n/a" else text.replace(" (", "% (").replace(")", "%)") if "(" in text else text + "%"


def _entries(summary: Mapping[str, Any], group: str):
    for entry in summary["regions"]:
        if entry.get("group") == group and entry.get("region") in SHOWN_REGIONS:
            yield entry


def _group(summary: Mapping[str, Any]) -> str:
    return "AD" if any(e.get("group") == "AD" for e in summary["regions"]) else "all"


def _randomisation_line(summary: Mapping[str, Any], method: str) -> str:
    check = (summary.get("randomisation") or {}).get("methods", {}).get(method)
    if not check:
        return "not run"
    last = check["spearman"][-1] if check.get("spearman") else float("nan")
    return (
        f"{'passed' if check['passed'] else 'FAILED'} (Spearman at the last step {last:.2f}; {check.get('reason', '')})"
    )


def summary_text(summary: Mapping[str, Any]) -> str:
    """The summary printed at the end of ``python -m analysis explain`` (and of ``make demo``)."""
    group = _group(summary)
    lines = [
        f"Explanations of {summary['n_scans']} scans ({', '.join(summary['settings']['regions'])} regions). "
        f"Density gain = relevance share / volume share (1 = as dense as the brain's mean); mean (95% CI over "
        f"subjects) on {group} scans:"
    ]
    header = f"  {'method':24s} {'region':42s} {'share of relevance':22s} {'density gain':20s}"
    lines.append(header)
    for method in summary["methods"]:
        own = [e for e in _entries(summary, group) if e["method"] == method]
        if own:
            lines.append(
                f"  {METHOD_TITLES[method]} on {own[0]['n_scans']} {group} scans of {own[0]['n_subjects']} subjects:"
            )
        for entry in own:
            lines.append(
                f"  {METHOD_TITLES[method]:24s} {REGION_TITLES.get(entry['region'], entry['region']):42s} "
                f"{_pct(entry, 'fraction'):22s} {_ci(entry, 'density_gain'):20s}"
            )
        pointing = next((e for e in _entries(summary, group) if e["method"] == method), None)
        if pointing:
            lines.append(f"  {'':24s} pointing game (max in hippocampi + ventricles): {_ci(pointing, 'pointing_game')}")
        lines.append(f"  {'':24s} randomisation check: {_randomisation_line(summary, method)}")
    corr = summary.get("correlation", {})
    for method, entry in corr.get("methods", {}).items():
        r = entry.get("r")
        text = f"r = {r:+.2f}" if r is not None else f"not computed ({entry.get('reason', '')})"
        lines.append(f"  hippocampal relevance density vs {corr['against']}, {METHOD_TITLES[method]}: {text}")
    channels = summary.get("channels") or []
    if channels:
        listed = ", ".join(f"{c['channel']} (d = {c['cohens_d']:+.2f}, peak: {c['peak_region']})" for c in channels)
        lines.append(f"  layer-4 channels whose mean activation differs most between AD and CN: {listed}")
    lines.append(summary["verdict"]["text"])
    return "\n".join(lines)


def _figure(path: Path, alt: str) -> dict[str, str] | None:
    """A PNG to embed (base64) with its alt text and caption; None when the file does not exist."""
    if not path.exists():
        return None
    return {"alt": alt, "data": base64.b64encode(path.read_bytes()).decode("ascii")}


def summary_html(summary: Mapping[str, Any], explain_dir: str | Path) -> str:
    """An HTML section: verdict, region table, randomisation, correlation, and the class-mean and profile figures."""
    explain_dir = Path(explain_dir)
    group = _group(summary)
    rows = []
    for method in summary["methods"]:
        for entry in _entries(summary, group):
            if entry["method"] == method:
                rows.append(
                    {
                        "method": METHOD_TITLES[method],
                        "n_scans": entry["n_scans"],
                        "region": REGION_TITLES.get(entry["region"], entry["region"]),
                        "share": _pct(entry, "fraction"),
                        "density_gain": _ci(entry, "density_gain"),
                        "pointing_game": _ci(entry, "pointing_game"),
                    }
                )
    checks = [(METHOD_TITLES[m], _randomisation_line(summary, m)) for m in summary["methods"]]
    figures = [
        _figure(explain_dir / p, f"class mean, {Path(p).stem}")
        for paths in summary.get("class_means", {}).values()
        for p in paths
    ]
    figures += [
        _figure(explain_dir / "figures" / f"depth_profile_{m}.png", f"depth profile, {METHOD_TITLES[m]}")
        for m in summary["methods"]
    ]
    figures.append(_figure(explain_dir / "figures" / "layer4_channels.png", "layer-4 channels that differ most"))
    return render(
        "explain_summary.html.j2",
        verdict=summary["verdict"]["text"],
        n_scans=summary["n_scans"],
        regions=summary["settings"]["regions"],
        group=group,
        margin=summary["settings"].get("pointing_margin_voxels", 1),
        rows=rows,
        checks=checks,
        figures=[f for f in figures if f],
    )
