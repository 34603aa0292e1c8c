"""The QC page of a batch: one self-contained HTML page with a thumbnail grid of every scan's QC picture, failures
first. The markup is the jinja2 template ``preprocessing/templates/qc_page.html.j2``; this module decides what each
card shows.
"""

from __future__ import annotations

import base64
import html
import os
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup

from preprocessing.qc.figure import MASK_COLOUR, _atomic_write
from preprocessing.qc.views import DISPLAY_CONVENTION

# Package data beside the modules (found as well in an editable install as in a regular one).
_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
_PAGE_TEMPLATE = "qc_page.html.j2"


def _escape(value: Any) -> Markup:
    """Escape a value the way ``html.escape`` does (``&quot;``, ``&#x27;``), as the page always has; markupsafe, which
    jinja2's autoescape uses, writes the same characters as ``&#34;`` and ``&#39;``."""
    return value if isinstance(value, Markup) else Markup(html.escape(str(value)))


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,  # every template here is HTML
        finalize=_escape,  # applied to each {{ value }} before autoescape, which then leaves it as it is
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def _relative_src(png: Path, folder: Path) -> str:
    """URL of ``png`` relative to the HTML's folder, so the folder can be moved or zipped as a whole."""
    try:
        rel = os.path.relpath(os.path.abspath(png), os.path.abspath(folder))
    except ValueError:  # different drive on Windows: no relative path exists
        return png.resolve().as_uri()
    return quote(PurePath(rel).as_posix(), safe="/")


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _rank(entry: dict) -> int:
    """0: not processed or refused by QC, 1: QC warning, 2: fine. Anything unknown counts as a failure."""
    if entry.get("status") != "ok":
        return 0
    return {"warn": 1, "pass": 2}.get(str(entry.get("qc_status") or "pass"), 0)


def _card(entry: dict, folder: Path, embed: bool) -> dict[str, str | None]:
    """What one card of the page shows, as text (the template escapes it): ``src`` is set when the picture exists,
    ``png`` names the picture that is missing."""
    png = entry.get("qc_png")
    src = None
    if png is not None and Path(png).is_file():
        src = _data_uri(Path(png)) if embed else _relative_src(Path(png), folder)
    error, reasons, qc_status = entry.get("error"), entry.get("qc_reasons"), entry.get("qc_status")
    return {
        "kind": ("failed", "warn", "ok")[_rank(entry)],
        "src": src,
        "png": None if png is None else str(png),
        "image_id": str(entry.get("image_id") or ""),
        "subject": str(entry.get("subject") or ""),
        "group": str(entry.get("group") or ""),
        "status": str(entry.get("status") or ""),
        "qc_status": str(qc_status) if qc_status else "",
        "error": str(error) if error else "",
        "reasons": str(reasons) if reasons else "",
    }


def qc_page(entries: list[dict], out_html: Path, title: str, embed: bool = False) -> Path:
    """Write one self-contained HTML page with a thumbnail grid of all QC pictures.

    Each entry is a dict with ``image_id``, ``subject``, ``group``, ``status`` ("ok"/"failed"/"qc_failed"),
    ``qc_status`` (pass/warn/fail or None), ``qc_reasons``, ``qc_png`` (path or None) and ``error`` (text or None).
    Failed scans come first, with their error in red, then QC warnings; any status other than "ok" counts as failed
    so that a typo never hides a scan among the good ones. Pictures are referenced by paths relative
    to the page's folder (zip the folder to share it) or, with ``embed=True``, inlined as base64 ``data:`` URIs for a
    single-file page. All text is HTML-escaped. The page is written atomically; returns ``out_html``.
    """
    out_html = Path(out_html)
    folder = out_html.parent
    ordered = sorted(entries, key=_rank)  # stable: failed first, then QC warnings, input order kept
    ranks = [_rank(e) for e in entries]
    page = (
        _environment()
        .get_template(_PAGE_TEMPLATE)
        .render(
            title=title,
            n_total=len(entries),
            n_ok=ranks.count(2),
            n_warn=ranks.count(1),
            n_failed=ranks.count(0),
            display_convention=DISPLAY_CONVENTION,
            mask_colour=MASK_COLOUR,
            cards=[_card(entry, folder, embed) for entry in ordered],
        )
    )
    _atomic_write(out_html, page.encode("utf-8"))
    return out_html
