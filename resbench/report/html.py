"""The HTML page: one self-contained file (inline SVG and CSS, no script, no URL).

A page is a list of `Section`s (figures, tables, notes) with summary cards on top; the
numbers behind it are embedded as JSON in ``<script type="application/json"
id="resbench-data">`` (`load_report_data` reads them back). A Content-Security-Policy meta
tag blocks any network access, so an accidental external reference fails loudly.
"""

from __future__ import annotations

import html as html_lib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from resbench import __version__

SCHEMA = 1
DATA_ID = "resbench-data"
_DATA_RE = re.compile(
    r'<script type="application/json" id="' + DATA_ID + r'">(.*?)</script>', re.S)


@dataclass(slots=True)
class Figure:
    svg: str
    caption: str = ""


@dataclass(slots=True)
class Table:
    title: str
    html: str
    note: str = ""
    collapsed: bool = False


@dataclass(slots=True)
class Section:
    id: str
    title: str
    intro: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    level: int = 2


@dataclass(slots=True)
class Card:
    label: str
    value: str
    note: str = ""


# -- tables --------------------------------------------------------------------------------
_UNITS = (("_bytes_per_s", "GB/s", 1e9, "{:,.1f}"), ("_bytes", "GB", 1e9, "{:,.2f}"),
          ("_s", "s", 1.0, "{:,.3f}"), ("_pct", "%", 1.0, "{:+,.1f}"))


def _header(col: str) -> tuple[str, float, str]:
    """(header, divisor, format) from a column name's unit suffix."""
    name = col.replace("_", " ")
    for suffix, unit, div, fmt in _UNITS:
        if col.endswith(suffix):
            return f"{name[: -len(suffix)]} ({unit})", div, fmt
    if col == "bytes":
        return "GB", 1e9, "{:,.3f}"
    if col == "share" or col.startswith("fraction"):
        return f"{name} (%)", 0.01, "{:,.1f}"
    return name, 1.0, ""


_NUM = ' class="num"'


def _cell(v: Any, div: float, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if fmt:
        return fmt.format(v / div)
    return f"{v:,}" if isinstance(v, (int, np.integer)) else f"{v:,.4g}"


def format_table(frame: pd.DataFrame, *, hide: tuple[str, ...] = (),
                 drop_zero: tuple[str, ...] = ()) -> str:
    """A DataFrame as an HTML table; units from the column names (seconds, GB, GB/s, %),
    numbers right-aligned. Columns in `drop_zero` are left out when all zero."""
    cols = [c for c in frame.columns if c not in hide
            and not (c in drop_zero and not frame[c].fillna(0).astype(bool).any())]
    head, body = [], []
    spec = []
    for col in cols:
        header, div, fmt = _header(str(col))
        values = frame[col]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        spec.append((col, div, fmt, numeric))
        head.append(f"<th{_NUM if numeric else ''}>{html_lib.escape(header)}</th>")
    for row in frame.itertuples(index=False):
        values = dict(zip(frame.columns, row, strict=True))
        cells = []
        for col, div, fmt, numeric in spec:
            v = values[col]
            text = _cell(v, div, fmt) if numeric or isinstance(v, (bool, np.bool_)) else str(v)
            cells.append(f"<td{_NUM if numeric else ''}>{html_lib.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="data"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def kv_table(pairs: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{html_lib.escape(str(k))}</th><td>{html_lib.escape(str(v))}</td></tr>"
                   for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


# -- data ----------------------------------------------------------------------------------
def plain(value: Any) -> Any:
    """JSON-able copy: numpy scalars to Python, NaN/inf to None, frames to records."""
    if isinstance(value, pd.DataFrame):
        return [plain(r) for r in value.to_dict(orient="records")]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def embed_json(data: Any) -> str:
    """JSON safe inside a <script> element: no `<`, `>` or `&` characters survive as such."""
    text = json.dumps(plain(data), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def load_report_data(path: str | Path) -> dict[str, Any]:
    """The data a report embeds (``schema``, ``kind``, ``runs``, ``studies``...)."""
    text = Path(path).read_text(encoding="utf-8")
    match = _DATA_RE.search(text)
    if match is None:
        raise ValueError(f"{path}: no <script id={DATA_ID!r}> in this file; not a resbench report")
    return json.loads(match.group(1))


# -- page ----------------------------------------------------------------------------------
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("resbench.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )


def render_page(*, title: str, subtitle: str, cards: list[Card], sections: list[Section],
                data: dict[str, Any], notes: list[str] | None = None) -> str:
    """The whole page as text. `data` is embedded as JSON with ``schema`` and the version."""
    data = {"schema": SCHEMA, "resbench": __version__, **data}
    toc = [(s.id, s.title) for s in sections if s.level == 2]
    return _env().get_template("report.html").render(
        title=title, subtitle=subtitle, cards=cards, sections=sections, toc=toc,
        notes=notes or [], data_json=embed_json(data), data_id=DATA_ID, version=__version__,
    )


def write_page(text: str, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
