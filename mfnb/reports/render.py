"""Markdown for the reports: pipe tables and the few number shapes they show.

``tabulate`` (which pandas' ``to_markdown`` needs) is not a dependency, and a report needs only a plain pipe table
whose cells are already text, so the table is written here.  Numbers go through :mod:`mfnb.core.formatting`, the
rounding the notebooks' tables and sentences use, so a report and its notebook show the same digits.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from mfnb.core.formatting import fmt, fmt_interval


def plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (``fmt`` tells ints from floats by Python type)."""
    return value.item() if hasattr(value, "item") else value


def missing(value: Any) -> bool:
    value = plain(value)
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def number(value: Any, digits: int = 3) -> str:
    """One number; a float that holds a count (``3.0`` read from a CSV) keeps no decimals when ``digits`` is 0."""
    return "" if missing(value) else fmt(plain(value), digits)


def count(value: Any) -> str:
    """A count stored as a float in a CSV (``1024.0``) as an integer (a median such as ``6461.5`` rounded half up)."""
    return "" if missing(value) else fmt(float(plain(value)), 0)


def estimate(value: Any, low: Any, high: Any, digits: int = 3, *, signed: bool = False) -> str:
    """``0.522 [0.464, 0.580]``: a point estimate with its interval (the interval left out when it is missing);
    ``signed`` for a difference (``+0.920 [0.744, 1.096]``)."""
    if missing(value):
        return "n/a"
    point = fmt(plain(value), digits, signed=signed)
    if missing(low) or missing(high):
        return point
    return f"{point} {fmt_interval(plain(low), plain(high), digits)}"


def escape(text: Any) -> str:
    """A cell's text on one line, with the pipe that would end the cell escaped."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown pipe table of text cells (no padding: the rendered table aligns itself)."""
    lines = ["| " + " | ".join(escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)
