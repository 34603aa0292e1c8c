"""The Jinja2 templates of the HTML pages (``analysis/templates/*.html.j2``): the report, the explanation summary and
the one-scan page.

Autoescaping is on: every value a template prints is HTML-escaped unless it is already HTML, marked as such with
:class:`markupsafe.Markup` (pieces built elsewhere, such as the explanation section inside the report). Numbers are
formatted by the ``fmt`` filter, Python's :func:`format` (``{{ value|fmt(".3f") }}``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

TEMPLATE_DIR = Path(__file__).parent / "templates"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The shared environment: templates from :data:`TEMPLATE_DIR`, autoescaped, undefined names an error."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = format
    return env


def render(name: str, **context: Any) -> str:
    """Render the template ``name`` (a file in :data:`TEMPLATE_DIR`) with ``context``."""
    return environment().get_template(name).render(**context)
