"""How far a plan from a calibration fit reaches beyond its pilots in model size.

A fit of L(N, D) from pilot runs (`budgetlm calibrate`) is measured over the pilots' sizes, its
`fit_range` [smallest, largest pilot params, ...]. Its exponents come from a few minutes of
small models and can be far from any published law's (a data exponent above 1, a size exponent
at its bound): extrapolated an order of magnitude in N they rank a model the pilots never
approached first. Measured on this CPU (benchmarks/data_limited.py): a 60-minute calibration
whose largest pilot had 459K parameters planned 8.7M (19x) for 0.2 tokens per parameter, and
its held-out loss was worse than the 20-minute plan's. So a plan from a fit prices sizes up to
FIT_SIZE_SPAN times its largest pilot (enough for the ~3x a compute-optimal size grows between
calibrate's top pilot level and the whole budget) and says so when the fit's own optimum lies
beyond; a published prior (fitted on 70M-16B models) is not held.
"""

from __future__ import annotations

from budgetlm import laws
from budgetlm.units import format_count

FIT_SIZE_SPAN = 4.0  # a fit's candidates: at most this times its largest pilot's parameters


def size_cap(law: laws.LossLaw) -> float | None:
    """The most parameters a plan from `law` prices: FIT_SIZE_SPAN x its largest pilot for a
    fit with a range; None (no cap) for a prior or a fit without one."""
    if law.kind != "fit" or not law.fit_range:
        return None
    return FIT_SIZE_SPAN * float(law.fit_range[1])


def size_cap_note(optimal_params: float, cap: float | None) -> str | None:
    """Plain words when the fit's optimum (`optimal_params`) lies beyond the size cap."""
    if cap is None or optimal_params <= cap:
        return None
    return (f"size: the fit's largest pilot has {format_count(cap / FIT_SIZE_SPAN)} params, so "
            f"candidates stay within {FIT_SIZE_SPAN:g}x of it (at most {format_count(cap)}); the "
            f"fit's optimum at this compute ({format_count(optimal_params)}) lies beyond what its "
            "pilots measured (a larger --pilot-fraction or budget calibrates larger models)")
