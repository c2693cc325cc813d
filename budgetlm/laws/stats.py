"""Small numerics the laws share: quantiles and prediction intervals, the geometric mean, a
one-dimensional minimizer on a log scale and piecewise-linear interpolation. Pure Python."""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist


def quantile(xs: list[float], q: float) -> float:
    """The q-quantile of xs, linear between order statistics (numpy's default)."""
    v = sorted(xs)
    if not v:
        raise ValueError("quantile of nothing")
    pos = min(max(q, 0.0), 1.0) * (len(v) - 1)
    i = int(pos)
    j = min(i + 1, len(v) - 1)
    return v[i] + (v[j] - v[i]) * (pos - i)


def interval_about(
    point: float, preds: list[float], residual_std: float, level: float
) -> tuple[float, float, float]:
    """(point, lo, hi): each side combines the bootstrap predictions' percentile distance from
    the point with the single-run scatter (a log-space std at the normal quantile of `level`)."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    tail = (1 - level) / 2
    down = max(0.0, point - quantile(preds, tail)) if preds else 0.0
    up = max(0.0, quantile(preds, 1 - tail) - point) if preds else 0.0
    noise_down = point * (1 - math.exp(-z * residual_std))
    noise_up = point * (math.exp(z * residual_std) - 1)
    return point, point - math.hypot(down, noise_down), point + math.hypot(up, noise_up)


def geometric_mean(xs: list[float]) -> float:
    """exp(mean(log x)); inf when xs is empty or holds a value that is not positive and finite."""
    if not xs or any(not (x > 0) for x in xs):
        return math.inf
    if any(math.isinf(x) for x in xs):
        return math.inf
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def minimize_log(f: Callable[[float], float], lo: float, hi: float, iters: int = 200,
                 grid: int = 240) -> float:
    """Minimize f(x) over [lo, hi]: a log-spaced grid, then golden-section search on log x
    around the best grid point (robust to the flat shoulders of the data-constrained law)."""
    a, b = math.log(max(lo, 1e-300)), math.log(hi)
    if b <= a:
        return lo
    xs = [a + (b - a) * i / grid for i in range(grid + 1)]
    best = min(range(len(xs)), key=lambda i: f(math.exp(xs[i])))
    a, b = xs[max(0, best - 1)], xs[min(grid, best + 1)]
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(math.exp(c)), f(math.exp(d))
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(math.exp(d))
        if b - a < 1e-9:
            break
    return math.exp((a + b) / 2)


def optimal_split(loss: Callable[[float, float], float], flops: float) -> tuple[float, float]:
    """(N, D) minimizing loss(N, D) under 6·N·D = flops, found numerically (`minimize_log`)."""
    n = minimize_log(lambda x: loss(x, flops / (6 * x)), 1.0, flops / 6)
    return n, flops / (6 * n)


def interpolate(x: float, pts: list[tuple[float, float]]) -> float:
    """Piecewise-linear through `pts` (sorted by x), flat beyond the ends."""
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]
