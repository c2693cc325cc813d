"""The Pareto front: of a plan's candidates (`pareto`), of any points (`non_dominated`). A study's
front is Optuna's `best_trials`."""

from __future__ import annotations

import math
from collections.abc import Sequence

from budgetlm.plan.pricing import Candidate


def _values(c: Candidate, axes: tuple[str, ...]) -> tuple[float, ...]:
    out = []
    for a in axes:
        v = getattr(c, a)
        out.append(math.inf if v is None else float(v))
    return tuple(out)


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices (in input order) of the points no other point beats: another point dominates one
    when it is no worse on every axis (within 1e-9, relative) and better on one (by more than
    1e-6, relative); lower is better on each axis."""
    pts = [tuple(p) for p in points]
    return [
        i for i, v in enumerate(pts)
        if not any(
            all(o <= x * (1 + 1e-9) for o, x in zip(w, v, strict=True)) and w != v
            and any(o < x * (1 - 1e-6) for o, x in zip(w, v, strict=True))
            for w in pts
        )
    ]


def pareto(cands: list[Candidate], axes: tuple[str, ...]) -> list[Candidate]:
    """Candidates no other candidate beats on every axis (lower is better on each), by loss."""
    front = [cands[i] for i in non_dominated([_values(c, axes) for c in cands])]
    front.sort(key=lambda c: c.loss)
    return front
