"""Matplotlib figures as SVG text to inline in one HTML page, byte-for-byte reproducible.

* Agg backend, a fixed ``svg.hashsalt`` and no date: the same figure gives the same bytes.
* Every ``id`` (and each ``#ref`` / ``url(#ref)`` to it) gets a per-figure prefix, since
  matplotlib reuses ids such as ``axes_1`` and glyph ids in every figure.
* The XML prolog, DOCTYPE, comments and RDF metadata are dropped (not needed in HTML5).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

HASH_SALT = "resbench"
STYLE = {
    "svg.hashsalt": HASH_SALT,
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "legend.frameon": False,
    "legend.fontsize": 8,
    "figure.dpi": 100,
}

_ID = re.compile(r'\bid="([^"]+)"')
_HREF = re.compile(r'(xlink:href|href)="#([^"]+)"')
_URL = re.compile(r"url\(#([^)]+)\)")


@contextmanager
def style() -> Iterator[None]:
    """resbench's plotting style; also isolates third-party plots that change rcParams
    (optuna's call `plt.style.use("ggplot")`)."""
    with matplotlib.rc_context(cast(Any, STYLE)):
        yield


def figure_svg(fig: Figure, fig_id: str) -> str:
    """The figure as inline SVG with ids prefixed by `fig_id` (and the root's id = `fig_id`);
    closes the figure."""
    buf = io.StringIO()
    try:
        with matplotlib.rc_context({"svg.hashsalt": HASH_SALT, "svg.fonttype": "path"}):
            fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    finally:
        plt.close(fig)
    return inline_svg(buf.getvalue(), fig_id)


def inline_svg(text: str, fig_id: str) -> str:
    start = text.find("<svg")
    text = text[start:] if start >= 0 else text
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF licence block
    text = _ID.sub(lambda m: f'id="{fig_id}-{m.group(1)}"', text)
    text = _HREF.sub(lambda m: f'{m.group(1)}="#{fig_id}-{m.group(2)}"', text)
    text = _URL.sub(lambda m: f"url(#{fig_id}-{m.group(1)})", text)
    # the root element: our id, and a size that follows the page
    text = re.sub(r"<svg\b", f'<svg id="{fig_id}" class="figure" role="img"', text, count=1)
    return text.strip()
