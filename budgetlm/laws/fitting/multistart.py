"""What fitting any loss-law form to runs shares: input checks, Hoffmann et al.'s Huber loss,
L-BFGS-B from several starts, bootstrap refits, and the fitted law's predictions and JSON.

A form is described by a `Form`: its objective on centred log N, log D (Huber / delta^2 on the
log-loss, with analytic gradient), its log-loss, the map from its internal parameters to raw
constants, and how it picks its starts. `fit_form` runs the point fit from those starts and the
bootstrap; `FittedLaw` gives the fitted dataclasses (`LawFit`, `KaplanFit`) `predict`,
`to_dict` and `from_dict`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from scipy.optimize import minimize

from budgetlm.errors import UserError

# Exponent bounds of every form: a power term stays a power term (> 0.01) and a term the data
# do not constrain cannot run off to infinity with its coefficient (< 2.5).
EXPONENT_BOUNDS: tuple[float, float] = (0.01, 2.5)
Bounds = list[tuple[float, float]]


# ---------------------------------------------------------------------------------------------
# Input checks


def is_number(v: object) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def check_level(level: float, what: str) -> None:
    """UserError unless 0 < level < 1."""
    if not (is_number(level) and 0 < level < 1):
        raise UserError(f"{what} must be between 0 and 1 (exclusive), got {level!r}")


def check_fit_options(delta: float, bootstrap: int, level: float) -> tuple[float, int, float]:
    """(delta, bootstrap, level) as float, int, float; UserError naming a bad one."""
    if not (is_number(delta) and math.isfinite(delta) and delta > 0):
        raise UserError(f"fit: huber delta must be a positive number, got {delta!r}")
    if not (isinstance(bootstrap, int | np.integer) and not isinstance(bootstrap, bool)) or (
        bootstrap < 0
    ):
        raise UserError(f"fit: bootstrap must be a non-negative integer, got {bootstrap!r}")
    check_level(level, "fit: level")
    return float(delta), int(bootstrap), float(level)


def validate_points(
    n: Sequence[float], d: Sequence[float], loss: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log N, log D, log L as float arrays; UserError naming what is wrong."""
    cols: list[np.ndarray] = []
    for name, seq in (("n", n), ("d", d), ("loss", loss)):
        try:
            arr = np.asarray(seq, dtype=float)
        except (TypeError, ValueError):
            raise UserError(f"fit: {name} must be a sequence of numbers") from None
        if arr.ndim != 1:
            raise UserError(f"fit: {name} must be a flat sequence of numbers")
        cols.append(arr)
    lengths = [c.size for c in cols]
    if len(set(lengths)) != 1:
        raise UserError(
            f"fit: n, d and loss must have equal lengths, got {lengths[0]}, {lengths[1]}, "
            f"{lengths[2]}"
        )
    if lengths[0] < 5:
        raise UserError(
            f"fit: need at least 5 runs to fit the 5 parameters, got {lengths[0]}"
        )
    for name, arr in zip(("n", "d", "loss"), cols, strict=True):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise UserError(f"fit: {name}[{bad[0]}] is not finite ({arr[bad[0]]!r})")
        bad = np.flatnonzero(arr <= 0)
        if bad.size:
            raise UserError(f"fit: {name}[{bad[0]}] must be positive, got {arr[bad[0]]!r}")
    return np.log(cols[0]), np.log(cols[1]), np.log(cols[2])


# ---------------------------------------------------------------------------------------------
# BLAS threads


@functools.cache
def scipy_openblas() -> tuple[Any, Any] | None:
    """(get_num_threads, set_num_threads) of the OpenBLAS bundled with scipy's wheels, or None."""
    try:
        import scipy

        root = Path(scipy.__file__).parent
        candidates = [
            *root.parent.glob("scipy.libs/*openblas*"),
            *root.glob(".dylibs/*openblas*"),
        ]
        for path in candidates:
            lib = ctypes.CDLL(str(path))
            for suffix in ("", "64_"):
                get = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
                put = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                    return get, put
    except (OSError, AttributeError, ImportError):
        pass
    return None


@contextlib.contextmanager
def blas_single_thread() -> Iterator[None]:
    """Hold scipy's OpenBLAS at one thread inside the block (restored afterwards; a no-op where
    that library is not found). Its worker threads spin between L-BFGS-B's tiny calls: that
    doubled the CPU used and, with the cores busy, slowed fits 5-25x."""
    api = scipy_openblas()
    if api is None:
        yield
        return
    get, put = api
    before = int(get())
    put(1)
    try:
        yield
    finally:
        put(before)


# ---------------------------------------------------------------------------------------------
# Objective pieces


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss of residuals r: quadratic within delta, linear beyond."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def clip_to_bounds(theta: np.ndarray, bounds: Bounds) -> np.ndarray:
    """theta (or rows of thetas) clipped into the box `bounds`."""
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    return np.clip(theta, lo, hi)


def best_distinct_starts(grid: np.ndarray, log_model: Callable[..., np.ndarray],
                         xc: np.ndarray, yc: np.ndarray, logl: np.ndarray, delta: float,
                         count: int) -> list[np.ndarray]:
    """The `count` rows of `grid` (thetas) with the lowest Huber objective, evaluated all at
    once, skipping rows (nearly) equal to one already taken."""
    r = log_model(grid, xc, yc) - logl
    obj = huber(r, delta).sum(axis=1)
    starts: list[np.ndarray] = []
    for i in np.argsort(obj, kind="stable"):
        if not any(np.allclose(grid[i], s) for s in starts):
            starts.append(grid[i])
        if len(starts) == count:
            break
    return starts


def minimize_lbfgsb(objective: Callable[..., Any], theta0: np.ndarray, xc: np.ndarray,
                    yc: np.ndarray, logl: np.ndarray, delta: float, bounds: Bounds) -> Any:
    """scipy's L-BFGS-B on objective(theta, xc, yc, logl, delta) -> (f, grad), run to tight
    tolerances."""
    return minimize(
        objective,
        np.asarray(theta0, dtype=float),
        args=(xc, yc, logl, delta),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9},
    )


def converged(res: Any, bounds: Bounds) -> bool:
    """L-BFGS-B converged: it says so, or it stopped on a failed line search (scipy's
    "ABNORMAL" status, which it reports when the objective cannot be lowered further in
    floating point; with the kinks of the Huber loss this happens at the optimum in ~5% of
    runs) at a point whose projected gradient is ~0 (<= 1e-3·max(1, f); gradients at a point
    that is not optimal are O(1e3-1e4) on this scaled objective)."""
    if not (np.all(np.isfinite(res.x)) and np.isfinite(res.fun)):
        return False
    if res.success:
        return True
    if not str(res.message).startswith("ABNORMAL"):
        return False
    x, g = np.asarray(res.x, dtype=float), np.asarray(res.jac, dtype=float)
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    pg = np.where(((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0)), 0.0, g)
    return bool(np.max(np.abs(pg)) <= 1e-3 * max(1.0, float(res.fun)))


# ---------------------------------------------------------------------------------------------
# The multistart fit


@dataclass(frozen=True)
class Runs:
    """Observed runs in log space, log N and log D centred on their means."""

    xc: np.ndarray
    yc: np.ndarray
    logl: np.ndarray
    xbar: float
    ybar: float

    @classmethod
    def centred(cls, x: np.ndarray, y: np.ndarray, logl: np.ndarray) -> Runs:
        """The runs of log N = x, log D = y, log L = logl."""
        xbar, ybar = float(x.mean()), float(y.mean())
        return cls(x - xbar, y - ybar, logl, xbar, ybar)


@dataclass(frozen=True)
class Form:
    """What `fit_form` needs of a law's form.

    names: the raw constants, in the order `raw` returns them.
    objective: (theta, xc, yc, logl, delta, with_grad=True) -> f[, grad], the Huber loss of the
      log-space residuals / delta^2.
    log_model: (theta, xc, yc) -> log L, for one theta or for rows of thetas.
    raw: (theta, xbar, ybar) -> the raw constants.
    starts: (runs, delta, bounds) -> the L-BFGS-B starts of the point fit.
    jitter: std of the random jitter of the second start of each bootstrap refit.
    """

    names: tuple[str, ...]
    objective: Callable[..., Any]
    log_model: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    raw: Callable[[np.ndarray, float, float], list[float]]
    starts: Callable[[Runs, float, Bounds], list[np.ndarray]]
    jitter: tuple[float, ...]


@dataclass
class MultistartResult:
    """The point fit's raw constants and `summary`: the other fields a `FittedLaw` takes
    (objective, n_points, residuals, residual_std, bootstrap rows, intervals, level, delta,
    n_init, n_resamples)."""

    params: list[float]
    summary: dict[str, Any]


class FitOptions(TypedDict, total=False):
    """How a law is fitted (both forms): Huber `delta` (default 1e-3), `bootstrap` resampled
    refits (200), interval `level` (0.9) and the resampling `seed` (0)."""

    delta: float
    bootstrap: int
    level: float
    seed: int


def fit_runs(form: Form, n: Sequence[float], d: Sequence[float], loss: Sequence[float],
             bounds_for: Callable[[np.ndarray], Bounds],
             options: FitOptions) -> MultistartResult:
    """Check the runs and the options, then `fit_form` within `bounds_for(log L)`."""
    unknown = set(options) - set(FitOptions.__annotations__)
    if unknown:
        raise TypeError(f"unknown fit options: {', '.join(sorted(unknown))}")
    x, y, logl = validate_points(n, d, loss)
    delta, bootstrap, level = check_fit_options(options.get("delta", 1e-3),
                                                options.get("bootstrap", 200),
                                                options.get("level", 0.9))
    return fit_form(form, x, y, logl, bounds_for(logl), delta=delta, bootstrap=bootstrap,
                    level=level, seed=options.get("seed", 0))


def fit_form(form: Form, x: np.ndarray, y: np.ndarray, logl: np.ndarray, bounds: Bounds, *,
             delta: float, bootstrap: int, level: float, seed: int) -> MultistartResult:
    """Fit `form` to runs (log N = x, log D = y, log L = logl, checked) within `bounds` by
    `multistart_fit`, with scipy's BLAS held at one thread."""
    runs = Runs.centred(x, y, logl)
    with blas_single_thread():
        starts = form.starts(runs, delta, bounds)
        return multistart_fit(form, runs, starts, bounds, delta, bootstrap, level, seed)


def multistart_fit(form: Form, runs: Runs, starts: list[np.ndarray], bounds: Bounds,
                   delta: float, bootstrap: int, level: float, seed: int) -> MultistartResult:
    """The best L-BFGS-B fit from `starts`; its residuals and their standard error (ddof = the
    form's parameter count, clipped at n - 1); `bootstrap` refits on resampled runs (each from
    the point fit and from a jittered start; refits that did not converge are dropped) and the
    central `level` percentile interval of each raw constant over them."""
    best: Any = None
    for theta0 in starts:
        res = minimize_lbfgsb(form.objective, theta0, runs.xc, runs.yc, runs.logl, delta, bounds)
        if best is None or (np.isfinite(res.fun) and res.fun < best.fun):
            best = res
    theta = np.asarray(best.x, dtype=float)
    objective = float(form.objective(theta, runs.xc, runs.yc, runs.logl, delta,
                                     with_grad=False)) * delta**2
    npts = runs.logl.size
    residuals = runs.logl - form.log_model(theta, runs.xc, runs.yc)
    ddof = min(len(form.names), npts - 1)
    residual_std = float(math.sqrt(float(np.sum(residuals**2)) / (npts - ddof)))
    rows = bootstrap_refits(form, runs, theta, bounds, delta, bootstrap, seed)
    return MultistartResult(form.raw(theta, runs.xbar, runs.ybar), {
        "objective": objective, "n_points": int(npts),
        "residuals": [float(v) for v in residuals], "residual_std": residual_std,
        "bootstrap": rows, "intervals": percentile_intervals(rows, form.names, level),
        "level": level, "delta": delta, "n_init": len(starts), "n_resamples": bootstrap,
    })


def bootstrap_refits(form: Form, runs: Runs, theta: np.ndarray, bounds: Bounds, delta: float,
                     bootstrap: int, seed: int) -> list[list[float]]:
    """Raw constants of `bootstrap` refits on runs resampled with replacement (numpy Generator
    seeded by `seed`), each from theta and from a jittered theta; unconverged refits dropped."""
    rows: list[list[float]] = []
    if not bootstrap:
        return rows
    npts = runs.logl.size
    rng = np.random.default_rng(seed)
    for _ in range(bootstrap):
        idx = rng.integers(0, npts, npts)
        perturbed = clip_to_bounds(theta + rng.normal(0.0, form.jitter), bounds)
        fit_b: Any = None
        for theta0 in (theta, perturbed):
            res = minimize_lbfgsb(form.objective, theta0, runs.xc[idx], runs.yc[idx],
                                  runs.logl[idx], delta, bounds)
            if converged(res, bounds) and (fit_b is None or res.fun < fit_b.fun):
                fit_b = res
        if fit_b is not None:
            rows.append(form.raw(np.asarray(fit_b.x, dtype=float), runs.xbar, runs.ybar))
    return rows


def percentile_intervals(rows: list[list[float]], names: tuple[str, ...],
                         level: float) -> dict[str, tuple[float, float]]:
    """Per name, the central `level` percentile interval of its column of `rows` (none if no
    rows)."""
    intervals: dict[str, tuple[float, float]] = {}
    if rows:
        arr = np.asarray(rows, dtype=float)
        q = 100 * (1 - level) / 2
        for j, name in enumerate(names):
            lo, hi = np.percentile(arr[:, j], [q, 100 - q])
            intervals[name] = (float(lo), float(hi))
    return intervals
