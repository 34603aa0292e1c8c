"""Stage measures of ADNI scans (MMSE, global CDR) from a label table with one row per visit, such as ADNIMERGE
(``PTID``, ``EXAMDATE``, ``MMSE``; a global CDR as ``CDGLOBAL`` where the table was merged with ADNI's CDR table),
matched to each scan by the nearest exam date within a window. They let the report stratify accuracy by stage; the
label itself still comes from the table's diagnosis (see :func:`preprocessing.tables.load_label_table`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from preprocessing.subject_ids import subject_key
from preprocessing.tables import _LABEL_SUBJECT_COLUMNS, parse_acq_date, parse_number, read_table

_DATES = ("examdate", "exam date", "visit date", "scan date", "date")
_MEASURES = {"mmse": ("mmse", "mmscore"), "cdr": ("cdglobal", "cdr global", "global cdr", "cdr")}


@dataclass(frozen=True)
class VisitMeasure:
    """One visit's exam date and measures (None where the row has none)."""

    day: dt.date
    mmse: float | None
    cdr: float | None


def read_visit_measures(path: Path | str) -> dict[str, list[VisitMeasure]]:
    """The dated MMSE/CDR rows of a table by subject key; empty when it has no date or no measure column.

    Unreadable cells are left out without a warning: ADNIMERGE has tens of thousands of rows and many of them are
    blank or coded, and a measure is only ever taken from a readable one.
    """
    table = read_table(path)
    subject_col = next((c for c in _LABEL_SUBJECT_COLUMNS if c in table.header), None)
    date_col = next((c for c in _DATES if c in table.header), None)
    columns = {k: next((c for c in names if c in table.header), None) for k, names in _MEASURES.items()}
    if subject_col is None or date_col is None or not any(columns.values()):
        return {}
    found: dict[str, list[VisitMeasure]] = {}
    for _line, row in table.rows:
        try:
            day = parse_acq_date(row.get(date_col, ""))
        except ValueError:
            continue
        values = {k: _number(row.get(c, "")) if c else None for k, c in columns.items()}
        if day and row.get(subject_col) and any(v is not None for v in values.values()):
            visit = VisitMeasure(dt.date.fromisoformat(day), **values)
            found.setdefault(subject_key(row[subject_col]), []).append(visit)
    return found


def _number(text: str) -> float | None:
    try:
        value = parse_number(text)
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None  # ADNI codes missing values as -1, -4


def nearest_measures(
    visits: list[VisitMeasure], acq_date: str | None, window_days: int
) -> tuple[float | None, float | None]:
    """``(mmse, cdr)`` of the visits nearest to ``acq_date`` (each measure its own nearest row) within the window."""
    if not visits or not acq_date:
        return None, None
    scan = dt.date.fromisoformat(acq_date)
    result = []
    for key in ("mmse", "cdr"):
        dated = [(abs((v.day - scan).days), v.day, getattr(v, key)) for v in visits if getattr(v, key) is not None]
        best = min(dated, default=None)
        result.append(best[2] if best is not None and best[0] <= window_days else None)
    return result[0], result[1]
