"""The explanation summary as printed text and as a section of the HTML report (``analysis report --explain-dir``)."""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from analysis.explain.maps import METHOD_TITLES
from analysis.explain.regions import REGION_TITLES

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


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(alt)
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'


def summary_html(summary: Mapping[str, Any], explain_dir: str | Path) -> str:
    """An HTML section: verdict, region table, randomisation, correlation, and the class-mean and profile figures."""
    explain_dir = Path(explain_dir)
    group = _group(summary)
    rows = []
    for method in summary["methods"]:
        for entry in _entries(summary, group):
            if entry["method"] == method:
                rows.append(
                    f"<tr><td>{html.escape(METHOD_TITLES[method])} (n = {entry['n_scans']})</td>"
                    f"<td>{html.escape(REGION_TITLES.get(entry['region'], entry['region']))}</td>"
                    f"<td>{_pct(entry, 'fraction')}</td><td>{_ci(entry, 'density_gain')}</td>"
                    f"<td>{_ci(entry, 'pointing_game')}</td></tr>"
                )
    checks = "".join(
        f"<li>{html.escape(METHOD_TITLES[m])}: {html.escape(_randomisation_line(summary, m))}</li>"
        for m in summary["methods"]
    )
    figures = [
        _img(explain_dir / p, f"class mean, {Path(p).stem}")
        for paths in summary.get("class_means", {}).values()
        for p in paths
    ]
    figures += [
        _img(explain_dir / "figures" / f"depth_profile_{m}.png", f"depth profile, {METHOD_TITLES[m]}")
        for m in summary["methods"]
    ]
    figures.append(_img(explain_dir / "figures" / "layer4_channels.png", "layer-4 channels that differ most"))
    return (
        f"<p><b>{html.escape(summary['verdict']['text'])}</b></p>"
        f"<p>{summary['n_scans']} scans; regions from {html.escape(', '.join(summary['settings']['regions']))}. "
        "Share = positive relevance in the region / all positive relevance; density gain = that share relative to "
        f"the region's share of brain volume (1 = the brain's mean density). Mean and 95% subject-bootstrap CI over "
        f"{html.escape(group)} scans; pointing game: the maximum lies in the hippocampi or ventricles (dilated by "
        f"{summary['settings'].get('pointing_margin_voxels', 1)} voxel).</p>"
        "<table><tr><th>method</th><th>region</th><th>share</th><th>density gain</th><th>pointing game</th></tr>"
        + "".join(rows)
        + f"</table><p>Cascading randomisation (Adebayo et al. 2018):</p><ul>{checks}</ul>"
        + "".join(f for f in figures if f)
        + "<p class='small'>Made by <code>python -m analysis explain</code>.</p>"
    )
