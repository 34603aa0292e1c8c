"""The discovery report: what explains the cohort size (dissertation 4.1.4) and lists what to fix in a download --
counts, hints naming the option that would select what was skipped, warnings, and every skipped item.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from preprocessing.adni.records import (
    _LABEL_TABLE_FIX,
    DEFAULT_CLASSES,
    MCI_GROUPS,
    NIFTI_SUFFIXES,
    Discovery,
    _usable_group,
)
from preprocessing.adni.series import SERIES_PRESETS, _pattern_for, select_description
from preprocessing.subject_ids import subject_key
from preprocessing.tables import normalize_group

_WARNING_TITLES = {
    "encoding": "tables not in UTF-8 (read as Windows-1252 or Latin-1)",
    "row_shape": "rows with more values than header columns",
    "bad_field": "unreadable fields left empty",
    "subject_rewritten": "subject ids rewritten to ADNI's NNN_S_NNNN",
    "subject_not_adni": "subjects without an ADNI id (NNN_S_NNNN), kept as written",
    "label_disagreement": "rows whose Group the label table overrides with a different diagnosis",
    "image_id_renamed": "image ids shared by several files, made unique with a path hash",
}


def discovery_summary(discovery: Discovery) -> dict[str, Any]:
    """Scans and subjects per group, skipped images per category and warnings per category (most frequent first)."""
    groups: dict[str, dict[str, int]] = {}
    for group in sorted({s.group for s in discovery.scans}):
        members = [s for s in discovery.scans if s.group == group]
        groups[group] = {"scans": len(members), "subjects": len({subject_key(s.subject) for s in members})}
    skipped = Counter(s.category for s in discovery.skipped)
    return {
        "scans": len(discovery.scans),
        "subjects": len({subject_key(s.subject) for s in discovery.scans}),
        "groups": groups,
        "skipped_total": len(discovery.skipped),
        "skipped": dict(skipped.most_common()),
        "warnings": dict(Counter(w.category for w in discovery.warnings).most_common()),
    }


def warning_lines(discovery: Discovery, examples: int = 3) -> list[str]:
    """One line per warning category: count, what it means, and the first ``examples`` messages."""
    lines = []
    for category, count in Counter(w.category for w in discovery.warnings).most_common():
        messages = [w.message for w in discovery.warnings if w.category == category]
        shown = "; ".join(messages[:examples]) + ("; ..." if len(messages) > examples else "")
        lines.append(f"{count} {_WARNING_TITLES.get(category, category)}: {shown}")
    return lines


def discovery_hints(discovery: Discovery) -> list[str]:
    """How to fix the skips an option would fix: the descriptions seen most and the ``--series``/``--include-pattern``
    that selects them, and ``--label-table`` for rows without a diagnosis."""
    hints = []
    not_mprage = [s for s in discovery.skipped if s.category == "not_mprage"]
    if not_mprage:
        counts = Counter(s.description or "" for s in not_mprage)
        top = ", ".join(f"{d!r} ({n})" for d, n in counts.most_common(5))
        hint = f"not_mprage: {len(not_mprage)} images skipped for their series description; most frequent: {top}."
        for name, patterns in SERIES_PRESETS.items():
            accepted = sum(n for d, n in counts.items() if select_description(d, patterns, discovery.exclude_patterns))
            if accepted and tuple(patterns) != discovery.include_patterns:
                hint += f" --series {name} accepts {accepted} of them."
        selectable = [d for d, _ in counts.most_common() if select_description(d, [".*"], discovery.exclude_patterns)]
        exclude = discovery.exclude_patterns
        others = [d for d in selectable if not any(select_description(d, p, exclude) for p in SERIES_PRESETS.values())]
        if others:
            hint += f" To select {others[0]!r}: --include-pattern {_pattern_for(others[0])}."
        elif selectable:
            hint += f" Or, for exactly one description: --include-pattern {_pattern_for(selectable[0])}."
        unlabelled = sum(not _usable_group(s.group) for s in not_mprage)
        if unlabelled and discovery.label_table is None and discovery.source == "adni":
            hint += f" {unlabelled} of them have no diagnosis in Group (e.g. 'Patient'): add {_LABEL_TABLE_FIX} too."
        hints.append(hint)
    no_label = [s for s in discovery.skipped if s.category == "no_label"]
    if no_label:
        column = {"nifti": "label", "bids": "diagnosis", "oasis1": "CDR", "oasis3": "CDR"}.get(
            discovery.source, "Group"
        )
        written = Counter(s.group or "" for s in no_label).most_common(3)
        groups = f"{column} " + ", ".join(f"{g!r} {n}" for g, n in written)
        if discovery.source == "nifti":
            fix = f"write {'AD/CN or 1/0' if discovery.classes == DEFAULT_CLASSES else '/'.join(discovery.classes)} "
            fix += "in the label column"
        elif discovery.source == "bids":
            fix = "name the diagnosis column with --bids-label-column, or give --label-table (subject, session, label)"
        elif discovery.source == "oasis1":
            fix = "OASIS-1 rated CDR from age 60 only; --oasis1-young-as-cn counts those under 60 as CN"
        elif discovery.label_table is None:
            fix = f"give diagnoses by subject with {_LABEL_TABLE_FIX}"
        else:
            fix = f"their subjects are not in {discovery.label_table.name}: add them there"
        hints.append(f"no_label: {len(no_label)} images without a usable diagnosis ({groups}): {fix}.")
    hints += _class_hints(discovery)
    unsupported = sum(s.category == "unsupported_format" for s in discovery.skipped)
    if unsupported:
        hints.append(f"unsupported_format: {unsupported} files; convert them to one of {', '.join(NIFTI_SUFFIXES)}.")
    return hints


def _class_hints(discovery: Discovery) -> list[str]:
    """Hints of the cohort readers: MCI left out of a CN/AD task, sessions without a clinical match, other runs."""
    hints = []
    excluded = [s for s in discovery.skipped if s.category == "group_excluded"]
    mci = sum(normalize_group(s.group) in MCI_GROUPS for s in excluded)
    if mci and "MCI" not in discovery.classes:
        hints.append(f"group_excluded: {mci} images are MCI (or EMCI/LMCI, or CDR 0.5 under an AD threshold of 1): "
                     "--classes CN,MCI,AD keeps them as a third class.")  # fmt: skip
    unmatched = [s for s in discovery.skipped if s.category == "no_clinical_match"]
    if unmatched:
        window = discovery.settings.get("window_days")
        hint = (
            f"no_clinical_match: {len(unmatched)} MR sessions have no clinical assessment with a CDR within {window} "
        )
        hints.append(hint + "days; --clinical-window-days widens the window (each reason gives the nearest).")
    runs = sum(s.category == "extra_run" for s in discovery.skipped)
    if runs:
        option = "--oasis1-repetitions all" if discovery.source == "oasis1" else "--runs all"
        hints.append(f"extra_run: {runs} further runs or repetitions of a session left out (the first is used); "
                     f"{option} keeps every one.")  # fmt: skip
    changed = sum(s.category == "label_changed" for s in discovery.skipped)
    if changed:
        hints.append(f"label_changed: {changed} sessions have another class than their subject's first labelled "
                     "session and are left out, so that one person keeps one class.")  # fmt: skip
    return hints


def write_discovery_report(discovery: Discovery, path: Path | str) -> Path:
    """Write the summary, hints, warnings and every skipped item: JSON for a ``.json`` path, readable text otherwise.

    The report is what explains the cohort size (dissertation 4.1.4) and lists what to fix in a download.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = discovery_summary(discovery)
    if path.suffix.lower() == ".json":
        payload = {
            "summary": summary,
            "hints": discovery_hints(discovery),
            "warnings": [w.as_record() for w in discovery.warnings],
            "skipped": [s.as_record() for s in discovery.skipped],
        }
        path.write_text(json.dumps(payload, indent=2) + "\n")
        return path
    lines = [f"Scans kept: {summary['scans']} from {summary['subjects']} subjects"]
    for group, counts in summary["groups"].items():
        lines.append(f"  {group}: {counts['scans']} scans from {counts['subjects']} subjects")
    lines.append(f"Skipped: {summary['skipped_total']}")
    for category, count in summary["skipped"].items():
        lines.append(f"  {category}: {count}")
    lines += [f"Hint: {hint}" for hint in discovery_hints(discovery)]
    if discovery.warnings:
        lines += ["", f"Warnings: {len(discovery.warnings)}"]
        for category in summary["warnings"]:
            lines.append(f"[{category}] {_WARNING_TITLES.get(category, category)}")
            lines += [f"  {w.message}" for w in discovery.warnings if w.category == category]
    for category in summary["skipped"]:
        lines.append("")
        lines.append(f"[{category}]")
        for item in discovery.skipped:
            if item.category == category:
                who = " ".join(str(v) for v in (item.image_id, item.subject) if v)
                where = f" {item.path}" if item.path else ""
                lines.append(f"  {who or '-'}{where}: {item.reason}")
    path.write_text("\n".join(lines) + "\n")
    return path
