"""Fit Kaplan et al.'s loss law to observed runs: the second form behind a calibrated prediction.

Form (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", eq. 1.5):

    L(N, D) = [ (N_c / N)^(alpha_N / alpha_D) + D_c / D ]^alpha_D

No irreducible term: the loss is a power law in whichever of N and D limits it. It is not
separable in N and D the way the Chinchilla form (`budgetlm.laws.fitting.chinchilla`) is: a bigger model needs more
data before its size shows. Small pilots cannot tell the two forms apart (both fit nine pilots
within their run-to-run scatter), yet forty-fold beyond the pilots they disagree by tens of
percent, because the Chinchilla form puts a floor E under the pilots' flattening curves and this
one does not. `budgetlm calibrate` fits both and predicts with the two together (see
`budgetlm.laws.law_from_fit`): how far apart they are is part of the prediction's interval.

Objective: as `budgetlm.laws.fitting.chinchilla`, Hoffmann et al.'s Huber loss (delta 1e-3) on the log-space
residual, scaled by 1/delta^2; theta = (c, g, alpha_N, alpha_D) with centred logs
(c = log N_c - mean log N, g = log D_c - mean log D), so that

    log L = alpha_D · LSE(p·(c - log N_c'), g - log D_c'),   p = alpha_N / alpha_D,

with the analytic gradient. L-BFGS-B from the best points of a screened grid; exponents in
[0.01, 2.5] (`lawfit.EXPONENT_BOUNDS`); bootstrap refits over resampled runs for intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from budgetlm.errors import UserError
from budgetlm.laws import interval_about
from budgetlm.laws.fitting.chinchilla import (
    EXPONENT_BOUNDS,
    _blas_single_thread,
    _check_level,
    _Form,
    _huber,
    _validate,
    multistart_fit,
)

PARAM_NAMES: tuple[str, ...] = ("n_c", "d_c", "alpha_n", "alpha_d")
_N_THETA = 4
# c and g (log N_c, log D_c about the data's centre) are boxed within this of the centre.
_LOG_BOX = 60.0
GRID_EXPONENTS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
GRID_LOG: tuple[float, ...] = (-10.0, -3.0, 0.0, 3.0, 10.0, 25.0)
N_STARTS = 8


@dataclass
class KaplanFit:
    """Kaplan-form law fitted to runs (N parameters, D tokens, loss nats/token).

    Fields as `lawfit.LawFit`: residuals are log(observed) - log(fitted) in input order,
    residual_std their standard error with ddof = min(4, n - 1), bootstrap the [n_c, d_c,
    alpha_n, alpha_d] of each converged refit, intervals the central `level` percentile
    interval of each parameter over them.
    """

    n_c: float
    d_c: float
    alpha_n: float
    alpha_d: float
    objective: float
    n_points: int
    residuals: list[float]
    residual_std: float
    bootstrap: list[list[float]]
    intervals: dict[str, tuple[float, float]]
    level: float
    delta: float
    n_init: int
    n_resamples: int = 0

    def loss(self, n: float, d: float) -> float:
        if not (n > 0 and d > 0):
            return math.inf
        return kaplan_loss(self.n_c, self.d_c, self.alpha_n, self.alpha_d, n, d)

    def predict(self, n: float, d: float, level: float | None = None) -> tuple[float, float, float]:
        """(point, lo, hi): bootstrap spread and single-run scatter, as `LawFit.predict`."""
        lvl = self.level if level is None else level
        _check_level(lvl, "predict: level")
        if not (n > 0 and d > 0):
            raise UserError(f"predict: n and d must be positive, got n={n!r}, d={d!r}")
        preds = [kaplan_loss(*row, n, d) for row in self.bootstrap]
        preds = [p for p in preds if math.isfinite(p) and p > 0]
        return interval_about(self.loss(n, d), preds, self.residual_std, lvl)

    def to_dict(self) -> dict[str, Any]:
        return {
            "law": {"form": "kaplan", "n_c": self.n_c, "d_c": self.d_c,
                    "alpha_n": self.alpha_n, "alpha_d": self.alpha_d},
            "intervals": {k: [lo, hi] for k, (lo, hi) in self.intervals.items()},
            "interval_level": self.level,
            "bootstrap": [list(row) for row in self.bootstrap],
            "residuals": list(self.residuals),
            "residual_std": self.residual_std,
            "fit": {"objective": self.objective, "huber_delta": self.delta,
                    "n_init": self.n_init, "n_points": self.n_points,
                    "n_bootstrap": len(self.bootstrap), "n_resamples": self.n_resamples},
        }


def kaplan_loss(n_c: float, d_c: float, alpha_n: float, alpha_d: float,
                n: float, d: float) -> float:
    """Kaplan et al. eq. 1.5 at (n, d), computed in log space (no overflow for any exponents)."""
    if not (n > 0 and d > 0 and n_c > 0 and d_c > 0 and alpha_d > 0):
        return math.inf
    u = alpha_n / alpha_d * (math.log(n_c) - math.log(n))
    v = math.log(d_c) - math.log(d)
    m = max(u, v)
    s = m + math.log(math.exp(u - m) + math.exp(v - m))
    try:
        return math.exp(alpha_d * s)
    except OverflowError:
        return math.inf


def fit_kaplan(
    n: Sequence[float],
    d: Sequence[float],
    loss: Sequence[float],
    *,
    delta: float = 1e-3,
    bootstrap: int = 200,
    level: float = 0.9,
    seed: int = 0,
) -> KaplanFit:
    """Fit Kaplan et al.'s L(N, D) to runs by the Huber objective in log space, with `bootstrap`
    resampled refits for `level` intervals (see the module docstring)."""
    x, y, logl = _validate(n, d, loss)
    _check_level(level, "fit: level")
    with _blas_single_thread():
        return _fit(x, y, logl, float(delta), int(bootstrap), float(level), seed)


def _fit(x: np.ndarray, y: np.ndarray, logl: np.ndarray, delta: float, bootstrap: int,
         level: float, seed: int) -> KaplanFit:
    xbar, ybar = float(x.mean()), float(y.mean())
    xc, yc = x - xbar, y - ybar
    bounds = [(-_LOG_BOX, _LOG_BOX), (-_LOG_BOX, _LOG_BOX), EXPONENT_BOUNDS, EXPONENT_BOUNDS]
    starts = _starts(xc, yc, logl, delta)
    form = _Form(_objective, _log_model, lambda t: _raw(t, xbar, ybar), PARAM_NAMES,
                 (0.5, 0.5, 0.05, 0.05))
    r = multistart_fit(form, starts, bounds, xc, yc, logl, delta, bootstrap, level, seed)
    return KaplanFit(
        n_c=r.params[0], d_c=r.params[1], alpha_n=r.params[2], alpha_d=r.params[3],
        objective=r.objective, n_points=int(logl.size), residuals=r.residuals,
        residual_std=r.residual_std, bootstrap=r.rows, intervals=r.intervals, level=level,
        delta=delta, n_init=len(starts), n_resamples=bootstrap,
    )


def _raw(theta: np.ndarray, xbar: float, ybar: float) -> list[float]:
    c, g, an, ad = (float(v) for v in theta)
    return [math.exp(c + xbar), math.exp(g + ybar), an, ad]


def _log_model(theta: np.ndarray, xc: np.ndarray, yc: np.ndarray) -> np.ndarray:
    """log L for one theta (shape (n,)) or for thetas of shape (k, 4) (shape (k, n))."""
    th = np.atleast_2d(theta)
    c, g, an, ad = (th[:, j : j + 1] for j in range(_N_THETA))
    out = ad * np.logaddexp(an / ad * (c - xc), g - yc)
    return out[0] if np.ndim(theta) == 1 else out


def _objective(theta: np.ndarray, xc: np.ndarray, yc: np.ndarray, logl: np.ndarray,
               delta: float, with_grad: bool = True) -> Any:
    c, g, an, ad = (float(v) for v in theta)
    p = an / ad
    u = p * (c - xc)
    v = g - yc
    s = np.logaddexp(u, v)
    w = np.exp(u - s)  # weight of the N term in the log-sum-exp
    r = ad * s - logl
    psi = np.clip(r, -delta, delta)
    scale = 1.0 / delta**2
    f = float(psi @ (r - 0.5 * psi)) * scale
    if not with_grad:
        return f
    k = psi * scale
    wc = w * (c - xc)
    grad = np.array([
        float(k @ (an * w)),
        float(k @ (ad * (1.0 - w))),
        float(k @ wc),
        float(k @ (s - p * wc)),
    ])
    return f, grad


def _starts(xc: np.ndarray, yc: np.ndarray, logl: np.ndarray, delta: float) -> list[np.ndarray]:
    """The N_STARTS best distinct points of a grid over (c, g, alpha_N, alpha_D), screened by
    the objective (vectorized)."""
    ex = np.array(GRID_EXPONENTS)
    lg = np.array(GRID_LOG)
    grid = np.array(np.meshgrid(lg, lg, ex, ex, indexing="ij")).reshape(4, -1).T
    r = _log_model(grid, xc, yc) - logl
    obj = _huber(r, delta).sum(axis=1)
    starts: list[np.ndarray] = []
    for i in np.argsort(obj, kind="stable"):
        if not any(np.allclose(grid[i], s) for s in starts):
            starts.append(grid[i])
        if len(starts) == N_STARTS:
            break
    return starts
