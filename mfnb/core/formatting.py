"""How numbers are shown to a reader: one rounding rule for tables and for the sentences beside them.

``f"{x:.3f}"`` rounds the binary float (0.6775 is stored as 0.67749999... and prints 0.677) while pandas'
``round(3)`` rounds half to even on a scaled value (0.678): a table and its verdict then disagree.  Here a
number is rounded half away from zero on its shortest decimal representation (``repr``), as a person would
round the digits they see.
"""
from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from numbers import Real
from typing import Any

DIGITS = 3


def round_half_up(x: float, digits: int = DIGITS) -> float:
    """``x`` rounded to ``digits`` decimals, half away from zero on its decimal representation."""
    if x is None or not isinstance(x, Real) or isinstance(x, bool) or not math.isfinite(x):
        return x
    quantum = Decimal(1).scaleb(-digits)
    return float(Decimal(repr(float(x))).quantize(quantum, rounding=ROUND_HALF_UP))


def fmt(x: Any, digits: int = DIGITS, *, signed: bool = False, percent: bool = False) -> str:
    """One number as text for a sentence: the same digits ``round_table`` puts in a table."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, Real):
        return str(x)
    if isinstance(x, int) and not percent:
        return f"{x:+d}" if signed else str(x)
    value = round_half_up(float(x) * (100 if percent else 1), digits)
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text + ("%" if percent else "")


def fmt_interval(low: float, high: float, digits: int = DIGITS) -> str:
    return f"[{fmt(low, digits)}, {fmt(high, digits)}]"


def round_table(frame, digits: int = DIGITS):
    """A copy of a DataFrame whose float columns are rounded by the same rule as ``fmt``."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype.kind == "f":
            out[column] = out[column].map(lambda v: round_half_up(v, digits))
    return out
