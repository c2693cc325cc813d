"""Fit the Chinchilla-form loss law to observed runs, with bootstrap uncertainty.

Form (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", eq. 2):

    L(N, D) = E + A / N^alpha + B / D^beta      N: parameters, D: (effective) training tokens,
                                                L: loss in nats/token

Objective (Hoffmann et al. §3.3 and Appendix D.2, their "approach 3"): with a = log A,
b = log B, e = log E, minimize over (a, b, e, alpha, beta)

    sum_i Huber_delta( LSE(a - alpha·log N_i, b - beta·log D_i, e) - log L_i ),

the log-space residual of the law at each run, under a Huber loss (quadratic within delta,
linear beyond, delta = 1e-3 as in the paper) so one bad run cannot drag the fit. LSE is
log-sum-exp: LSE(...) = log(A/N^alpha + B/D^beta + E), so the law is fitted in log space, i.e.
to relative errors.

Optimizer. L-BFGS-B (scipy.optimize.minimize) with the analytic gradient (Hoffmann et al. used
L-BFGS). Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt", Epoch AI) found
that the published approach-3 constants do not fit the paper's own data because "the optimizer
... stopped before convergence due to a poor choice of loss scale" (their refit moved E, B and
beta a lot: see `budgetlm.laws.EPOCH`), and that the reported confidence intervals were so
narrow they would need over 600,000 runs rather than the ~400 made. Both lessons are applied
here: the objective is scaled by 1/delta^2 (O(1) rather than O(1e-6), so L-BFGS-B's relative
stopping test does not fire at once) and run to tight tolerances, and the uncertainty comes
from a bootstrap over runs.

Initializations. Hoffmann et al. started L-BFGS from every point of a grid alpha, beta in
{0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25} (4500 starts) and kept the
best. Here the same grid (alpha, beta = 0 replaced by the lower bound 0.01) is *screened*: the
objective is evaluated at all 4500 points at once (vectorized, ~10 ms), and L-BFGS-B is run
from the `N_STARTS` best of them plus a few data-scaled starts (`_data_starts`), and the best
result is kept (`n_init` = 16 starts). Running L-BFGS-B from all 4500 takes ~1 minute per fit
here. On four checks (the 25-run IsoFLOP designs of the tests at 0.5% and 2% noise, 10 runs on
two compute levels, 12 runs of 4e3-5e5-parameter models) the screened starts reached the same
optimum as all 4500 starts, of which only 38-65% reached it themselves: the objective has local
minima, and the multi-start matters.

Conditioning. log N and log D are centred on their means before fitting (a' = a - alpha·mean
log N, likewise b'), which decorrelates the coefficient from its exponent; the reported A, B are
converted back to the raw units (N in parameters, D in tokens).

Bounds. alpha, beta in [0.01, 2.5]. The lower bound keeps each power term a power term: as
alpha -> 0, A/N^alpha ~ A - A·alpha·log N becomes a constant that trades off exactly against E
(unidentifiable), and the compute-optimal split a = beta/(alpha+beta) needs both positive. The
upper bound sits a little above the top of Hoffmann et al.'s grid (2) and far above any
published LM exponent (0.05-0.7): when the data do not constrain a term (e.g. runs spanning a
narrow range of D), the optimizer can otherwise run an exponent and its coefficient off to
infinity together. An exponent at a bound means the data do not identify it. e, a', b' are
boxed loosely (log of the smallest loss - 30 to log of the largest + 5) for the same reason.

Uncertainty. `bootstrap` times, the runs are resampled with replacement (numpy Generator seeded
by `seed`) and the law refitted, starting from the point fit and from one perturbed start;
refits whose optimizer did not report convergence are dropped. `intervals` are the central
`level` percentile intervals of each parameter over the refits: the spread of the fit that
comes from which runs happened to be made, not a Bayesian posterior, and not covering a wrong
functional form. `LawFit.predict` adds the scatter of single runs around the law (the residual
standard deviation in log space) to the bootstrap spread of the prediction, in quadrature:
the interval is for the loss of *one new run* at (N, D), not for the mean law.

Cost: `fit_law` with 200 resamples takes ~2 s on 25 runs and ~3 s on 9-10 runs, on one core
of the (slow, shared) development machine; the point fit alone ~0.15-0.3 s. See `fit_law`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

from budgetlm.errors import UserError
from budgetlm.laws import interval_about

PARAM_NAMES: tuple[str, ...] = ("E", "A", "B", "alpha", "beta")
EXPONENT_BOUNDS: tuple[float, float] = (0.01, 2.5)
# Hoffmann et al. 2022, App. D.2: the grid of initializations.
GRID_EXPONENTS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_AB: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
# L-BFGS-B runs from this many of the best grid points (plus the data-scaled starts).
N_STARTS = 12
# Internal parameter order: theta = (e, a', b', alpha, beta) with centred log N, log D.
_N_THETA = 5


@dataclass
class LawFit:
    """A Chinchilla-form law fitted to runs: the point fit, its bootstrap and its residuals.

    E, A, B, alpha, beta: the law in raw units (N parameters, D tokens, loss nats/token).
    objective: final Huber objective of the point fit (sum over runs, log space, unscaled).
    residuals: log(observed) - log(fitted) per input run, in input order.
    residual_std: sqrt(sum(r^2) / (n - ddof)) with ddof = min(5, n - 1): the residual
      standard error about the law (about zero, not the residuals' mean: a Huber fit need not
      centre them), ddof = the 5 fitted parameters, clipped so it is defined at n = 5. A gross
      outlier inflates it (the Huber fit ignores the outlier, the scatter estimate does not).
    bootstrap: [E, A, B, alpha, beta] of each converged bootstrap refit.
    intervals: per parameter name, (lo, hi) central percentile interval at `level` over the
      bootstrap refits; empty when there are none.
    delta: Huber delta. n_init: L-BFGS-B starts of the point fit.
    n_resamples: bootstrap resamples drawn (len(bootstrap) of them converged).
    e_max: the upper bound E was fitted under (None: only the loose box of `_bounds`).
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int
    residuals: list[float]
    residual_std: float
    bootstrap: list[list[float]]
    intervals: dict[str, tuple[float, float]]
    level: float
    delta: float
    n_init: int
    n_resamples: int = field(default=0)
    e_max: float | None = None

    def loss(self, n: float, d: float) -> float:
        """The fitted law's loss (nats/token) of N parameters after D tokens (inf unless both
        are positive, as `scaling.LossLaw.loss`)."""
        if not (n > 0 and d > 0):
            return math.inf
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def predict(self, n: float, d: float, level: float | None = None) -> tuple[float, float, float]:
        """(point, lo, hi) in the loss unit: point from the fit; interval combines parameter
        uncertainty (percentiles of the bootstrap predictions) with the scatter of single runs
        (residual_std in log space at the normal quantile of `level`), in quadrature on each side.

        The combination is `budgetlm.laws.interval_about`, the one the planner uses for
        every candidate of a plan made from a fit. `level` defaults to the fit's level. Without
        bootstrap refits the interval is the single-run scatter alone.
        """
        lvl = self.level if level is None else level
        _check_level(lvl, "predict: level")
        if not (n > 0 and d > 0):
            raise UserError(f"predict: n and d must be positive, got n={n!r}, d={d!r}")
        point = self.loss(n, d)
        preds: list[float] = []
        if self.bootstrap:
            p = np.asarray(self.bootstrap, dtype=float)
            arr = p[:, 0] + p[:, 1] / n ** p[:, 3] + p[:, 2] / d ** p[:, 4]
            preds = [float(x) for x in arr[np.isfinite(arr) & (arr > 0)]]
        return interval_about(point, preds, self.residual_std, lvl)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the "law" block can be passed to `scaling.law_from_fit`)."""
        return {
            "law": {
                "form": "chinchilla",
                "E": self.E,
                "A": self.A,
                "B": self.B,
                "alpha": self.alpha,
                "beta": self.beta,
            },
            "intervals": {k: [lo, hi] for k, (lo, hi) in self.intervals.items()},
            "interval_level": self.level,
            "bootstrap": [list(row) for row in self.bootstrap],
            "residuals": list(self.residuals),
            "residual_std": self.residual_std,
            "fit": {
                "objective": self.objective,
                "huber_delta": self.delta,
                "n_init": self.n_init,
                "n_points": self.n_points,
                "n_bootstrap": len(self.bootstrap),
                "n_resamples": self.n_resamples,
                "e_max": self.e_max,
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LawFit:
        """Inverse of `to_dict` (exact round trip); UserError naming the first missing key."""
        try:
            law, fit = d["law"], d["fit"]
            if law.get("form", "chinchilla") != "chinchilla":
                raise UserError(f"fit: law form {law['form']!r} is not 'chinchilla'")
            bootstrap = [[float(v) for v in row] for row in d["bootstrap"]]
            return cls(
                E=float(law["E"]),
                A=float(law["A"]),
                B=float(law["B"]),
                alpha=float(law["alpha"]),
                beta=float(law["beta"]),
                objective=float(fit["objective"]),
                n_points=int(fit["n_points"]),
                residuals=[float(v) for v in d["residuals"]],
                residual_std=float(d["residual_std"]),
                bootstrap=bootstrap,
                intervals={
                    str(k): (float(v[0]), float(v[1])) for k, v in d["intervals"].items()
                },
                level=float(d["interval_level"]),
                delta=float(fit["huber_delta"]),
                n_init=int(fit["n_init"]),
                n_resamples=int(fit.get("n_resamples", len(bootstrap))),
                e_max=None if fit.get("e_max") is None else float(fit["e_max"]),
            )
        except KeyError as exc:
            raise UserError(f"fit: missing key {exc.args[0]!r} in the fitted law") from None
        except (TypeError, ValueError, IndexError, AttributeError):
            raise UserError("fit: malformed fitted law (not LawFit.to_dict's layout)") from None


# ---------------------------------------------------------------------------------------------
# Fitting


def fit_law(
    n: Sequence[float],
    d: Sequence[float],
    loss: Sequence[float],
    *,
    delta: float = 1e-3,
    bootstrap: int = 200,
    level: float = 0.9,
    seed: int = 0,
    e_max: float | None = None,
) -> LawFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to runs (N parameters, D effective tokens, loss
    in nats/token) by Hoffmann et al.'s Huber objective in log space, with `bootstrap` resampled
    refits for `level` intervals (see the module docstring). `e_max`: an upper bound on E (the
    loss no size or data can go below), e.g. a measured compression rate of the same text.

    Cost, measured with time.perf_counter (wall = CPU time, one core of the shared 2-core
    development machine, Python 3.11, numpy 2.4, scipy 1.17) around fit_law on the IsoFLOP
    design of tests/test_lawfit.py (0.5% noise): 25 runs 0.15 s with bootstrap=0 and 1.9 s
    with bootstrap=200; 9 runs (3 per level) 0.16 s / 2.9 s; 10 runs on two compute levels
    0.3 s / 3.4 s. Small resamples, with many duplicated runs, take longer to converge.

    scipy's L-BFGS-B calls its bundled OpenBLAS, whose worker threads spin between the tiny
    calls: that doubled the CPU used and, with the cores busy, slowed fits 5-25x. The fit
    therefore holds scipy's OpenBLAS at one thread while it runs (restored afterwards; a no-op
    where that library is not found).
    """
    with _blas_single_thread():
        return _fit_law(n, d, loss, delta=delta, bootstrap=bootstrap, level=level, seed=seed,
                        e_max=e_max)


def _fit_law(
    n: Sequence[float],
    d: Sequence[float],
    loss: Sequence[float],
    *,
    delta: float = 1e-3,
    bootstrap: int = 200,
    level: float = 0.9,
    seed: int = 0,
    e_max: float | None = None,
) -> LawFit:
    x, y, logl = _validate(n, d, loss)
    if e_max is not None and not (_is_number(e_max) and math.isfinite(e_max) and e_max > 0):
        raise UserError(f"fit: e_max must be a positive number, got {e_max!r}")
    if not (_is_number(delta) and math.isfinite(delta) and delta > 0):
        raise UserError(f"fit: huber delta must be a positive number, got {delta!r}")
    if not (isinstance(bootstrap, int | np.integer) and not isinstance(bootstrap, bool)) or (
        bootstrap < 0
    ):
        raise UserError(f"fit: bootstrap must be a non-negative integer, got {bootstrap!r}")
    _check_level(level, "fit: level")
    delta, bootstrap, level = float(delta), int(bootstrap), float(level)

    xbar, ybar = float(x.mean()), float(y.mean())
    xc, yc = x - xbar, y - ybar
    bounds = _bounds(logl)
    if e_max is not None:
        bounds[0] = (bounds[0][0], min(bounds[0][1], math.log(e_max)))

    starts = _grid_starts(xc, yc, logl, delta, xbar, ybar, bounds)
    form = _Form(_objective, _log_model, lambda t: _raw_params(t, xbar, ybar), PARAM_NAMES,
                 (0.3, 0.3, 0.3, 0.05, 0.05))
    r = multistart_fit(form, starts, bounds, xc, yc, logl, delta, bootstrap, level, seed)
    return LawFit(
        E=r.params[0],
        A=r.params[1],
        B=r.params[2],
        alpha=r.params[3],
        beta=r.params[4],
        objective=r.objective,
        n_points=int(logl.size),
        residuals=r.residuals,
        residual_std=r.residual_std,
        bootstrap=r.rows,
        intervals=r.intervals,
        level=level,
        delta=delta,
        n_init=len(starts),
        n_resamples=bootstrap,
        e_max=None if e_max is None else float(e_max),
    )


@dataclass(frozen=True)
class _Form:
    """What `multistart_fit` needs of a law's form: its objective (theta, xc, yc, logl, delta,
    with_grad) -> f[, grad] (Huber / delta^2 on log-loss), its log-loss (theta, xc, yc) ->
    log L, theta -> raw parameters, their names, and the std of the random jitter of the second
    start of each bootstrap refit."""

    objective: Callable[..., Any]
    log_model: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    raw: Callable[[np.ndarray], list[float]]
    names: tuple[str, ...]
    jitter: tuple[float, ...]


@dataclass
class _Result:
    params: list[float]
    objective: float
    residuals: list[float]
    residual_std: float
    rows: list[list[float]]
    intervals: dict[str, tuple[float, float]]


def multistart_fit(form: _Form, starts: list[np.ndarray], bounds: list[tuple[float, float]],
                   xc: np.ndarray, yc: np.ndarray, logl: np.ndarray, delta: float,
                   bootstrap: int, level: float, seed: int) -> _Result:
    """The best L-BFGS-B fit from `starts`; its residuals and their standard error (ddof = the
    form's parameter count, clipped at n - 1); `bootstrap` refits on resampled runs (each from
    the point fit and from a jittered start; refits that did not converge are dropped) and the
    central `level` percentile interval of each raw parameter over them."""
    best: Any = None
    for theta0 in starts:
        res = _minimize(form.objective, theta0, xc, yc, logl, delta, bounds)
        if best is None or (np.isfinite(res.fun) and res.fun < best.fun):
            best = res
    theta = np.asarray(best.x, dtype=float)
    objective = float(form.objective(theta, xc, yc, logl, delta, with_grad=False)) * delta**2
    npts = logl.size
    residuals = logl - form.log_model(theta, xc, yc)
    ddof = min(len(form.names), npts - 1)
    residual_std = float(math.sqrt(float(np.sum(residuals**2)) / (npts - ddof)))

    rows: list[list[float]] = []
    if bootstrap:
        rng = np.random.default_rng(seed)
        for _ in range(bootstrap):
            idx = rng.integers(0, npts, npts)
            perturbed = _clip(theta + rng.normal(0.0, form.jitter), bounds)
            fit_b: Any = None
            for theta0 in (theta, perturbed):
                res = _minimize(form.objective, theta0, xc[idx], yc[idx], logl[idx], delta,
                                bounds)
                if _converged(res, bounds) and (fit_b is None or res.fun < fit_b.fun):
                    fit_b = res
            if fit_b is not None:
                rows.append(form.raw(np.asarray(fit_b.x, dtype=float)))
    intervals: dict[str, tuple[float, float]] = {}
    if rows:
        arr = np.asarray(rows, dtype=float)
        q = 100 * (1 - level) / 2
        for j, name in enumerate(form.names):
            lo, hi = np.percentile(arr[:, j], [q, 100 - q])
            intervals[name] = (float(lo), float(hi))
    return _Result(form.raw(theta), objective, [float(v) for v in residuals], residual_std,
                   rows, intervals)


@functools.cache
def _scipy_openblas() -> tuple[Any, Any] | None:
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
def _blas_single_thread() -> Iterator[None]:
    api = _scipy_openblas()
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


def _is_number(v: object) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _check_level(level: float, what: str) -> None:
    if not (_is_number(level) and 0 < level < 1):
        raise UserError(f"{what} must be between 0 and 1 (exclusive), got {level!r}")


def _validate(
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


def _bounds(logl: np.ndarray) -> list[tuple[float, float]]:
    lo, hi = float(logl.min()) - 30.0, float(logl.max()) + 5.0
    return [(lo, hi), (lo, hi), (lo, hi), EXPONENT_BOUNDS, EXPONENT_BOUNDS]


def _clip(theta: np.ndarray, bounds: list[tuple[float, float]]) -> np.ndarray:
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    return np.clip(theta, lo, hi)


def _raw_params(theta: np.ndarray, xbar: float, ybar: float) -> list[float]:
    """(e, a', b', alpha, beta) with centred logs -> [E, A, B, alpha, beta] in raw units."""
    e, a, b, alpha, beta = (float(v) for v in theta)
    return [
        math.exp(e),
        math.exp(a + alpha * xbar),
        math.exp(b + beta * ybar),
        alpha,
        beta,
    ]


def _terms(theta: np.ndarray, xc: np.ndarray, yc: np.ndarray) -> np.ndarray:
    """The three log-terms, shape (3, n) for one theta or (k, 3, n) for thetas of shape (k, 5)."""
    th = np.atleast_2d(theta)
    e, a, b, alpha, beta = (th[:, j : j + 1] for j in range(_N_THETA))
    t = np.stack(
        [a - alpha * xc, b - beta * yc, np.broadcast_to(e, (th.shape[0], xc.size))], axis=1
    )
    return t[0] if np.ndim(theta) == 1 else t


def _log_model(theta: np.ndarray, xc: np.ndarray, yc: np.ndarray) -> np.ndarray:
    t = _terms(theta, xc, yc)
    m = t.max(axis=-2, keepdims=True)
    return (m + np.log(np.exp(t - m).sum(axis=-2, keepdims=True))).squeeze(-2)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _objective(
    theta: np.ndarray,
    xc: np.ndarray,
    yc: np.ndarray,
    logl: np.ndarray,
    delta: float,
    with_grad: bool = True,
) -> Any:
    """Huber objective / delta^2 (O(1) for good fits) and, with_grad, its analytic gradient.

    Evaluated in linear space (the bounds keep every term within exp(+-45) of the data, so
    nothing over- or underflows); this is the inner loop, so it is kept to a few array ops.
    """
    e, a, b, alpha, beta = theta
    w0 = np.exp(a - alpha * xc)
    w1 = np.exp(b - beta * yc)
    w2 = math.exp(e)
    s = w0 + w1 + w2
    r = np.log(s) - logl
    psi = np.clip(r, -delta, delta)  # Huber'(r)
    scale = 1.0 / delta**2
    f = float(psi @ (r - 0.5 * psi)) * scale  # = sum Huber_delta(r)
    if not with_grad:
        return f
    g = psi * scale / s  # Huber'(r) · d LSE / d term_k = psi · w_k / s
    ga, gb = g * w0, g * w1
    grad = np.array(
        [float(g.sum()) * w2, float(ga.sum()), float(gb.sum()), -float(ga @ xc), -float(gb @ yc)]
    )
    return f, grad


def _minimize(
    objective: Callable[..., Any],
    theta0: np.ndarray,
    xc: np.ndarray,
    yc: np.ndarray,
    logl: np.ndarray,
    delta: float,
    bounds: list[tuple[float, float]],
) -> Any:
    return minimize(
        objective,
        np.asarray(theta0, dtype=float),
        args=(xc, yc, logl, delta),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9},
    )


def _converged(res: Any, bounds: list[tuple[float, float]]) -> bool:
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


def _grid_starts(
    xc: np.ndarray,
    yc: np.ndarray,
    logl: np.ndarray,
    delta: float,
    xbar: float,
    ybar: float,
    bounds: list[tuple[float, float]],
) -> list[np.ndarray]:
    """Hoffmann et al.'s 4500-point grid, screened by objective: its N_STARTS best points
    (distinct after clipping to the bounds), plus the data-scaled starts."""
    ex = np.maximum(np.array(GRID_EXPONENTS), EXPONENT_BOUNDS[0])
    g = np.array(np.meshgrid(GRID_E, GRID_AB, GRID_AB, ex, ex, indexing="ij")).reshape(5, -1).T
    # raw (e, a, b, alpha, beta) -> centred (e, a', b', alpha, beta)
    g[:, 1] -= g[:, 3] * xbar
    g[:, 2] -= g[:, 4] * ybar
    g = _clip(g, bounds)
    r = _log_model(g, xc, yc) - logl
    obj = _huber(r, delta).sum(axis=1)
    order = np.argsort(obj, kind="stable")
    starts: list[np.ndarray] = []
    for i in order:
        if not any(np.allclose(g[i], s) for s in starts):
            starts.append(g[i])
        if len(starts) == N_STARTS:
            break
    return starts + _data_starts(logl)


def _data_starts(logl: np.ndarray) -> list[np.ndarray]:
    """Starts scaled to the data (the grid above assumes Chinchilla-sized N and D): at the
    centre of the design, E, A' and B' split the typical loss as (1/2, 1/4, 1/4) or
    (1/4, 3/8, 3/8), with exponents 0.3 or 0.6."""
    lc = float(np.mean(logl))
    out = []
    for fe, fa in ((0.5, 0.25), (0.25, 0.375)):
        for ex in (0.3, 0.6):
            out.append(
                np.array([lc + math.log(fe), lc + math.log(fa), lc + math.log(fa), ex, ex])
            )
    return out
