"""Text for the cells and captions of the fit report; '-' wherever a value is missing."""

from __future__ import annotations

from typing import Any

from budgetlm.units import finite_number, format_count


def count_text(n: Any) -> str:
    """A count as '1.23B' (three significant digits), whole below a thousand; '-' if missing."""
    v = finite_number(n)
    if v is None:
        return "-"
    if abs(v) < 1e3:
        return f"{v:.0f}"
    return format_count(v)


def number_text(v: Any, spec: str) -> str:
    """`spec.format(v)` ('{:.4f}'), or '-' when v is not a finite number."""
    f = finite_number(v)
    return "-" if f is None else spec.format(f)


def interval_text(lo: Any, hi: Any, spec: str | None) -> str:
    """'[lo, hi]' with each end as `spec` (or as a count when spec is None); '-' if either end
    is missing."""
    a, b = finite_number(lo), finite_number(hi)
    if a is None or b is None:
        return "-"
    if spec is None:
        return f"[{count_text(a)}, {count_text(b)}]"
    return f"[{spec.format(a)}, {spec.format(b)}]"
