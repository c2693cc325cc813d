"""Fit Kaplan et al.'s loss law to observed runs: the second form behind a calibrated prediction.

Form (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", eq. 1.5):

    L(N, D) = [ (N_c / N)^(alpha_N / alpha_D) + D_c / D ]^alpha_D

No irreducible term: the loss is a power law in whichever of N and D limits it. It is not
separable in N and D the way the Chinchilla form (`budgetlm.laws.fitting.chinchilla`) is: a
bigger model needs more data before its size shows. Small pilots cannot tell the two forms apart
(both fit nine pilots within their run-to-run scatter), yet forty-fold beyond the pilots they
disagree by tens of percent, because the Chinchilla form puts a floor E under the pilots'
flattening curves and this one does not. `budgetlm calibrate` fits both and predicts with the
two together (see `budgetlm.laws.law_from_fit`): how far apart they are is part of the
prediction's interval.

Objective: as `budgetlm.laws.fitting.chinchilla`, Hoffmann et al.'s Huber loss (delta 1e-3) on
the log-space residual, scaled by 1/delta^2; theta = (c, g, alpha_N, alpha_D) with centred logs
(c = log N_c - mean log N, g = log D_c - mean log D), so that

    log L = alpha_D · LSE(p·(c - log N_c'), g - log D_c'),   p = alpha_N / alpha_D,

with the analytic gradient. L-BFGS-B from the best points of a screened grid; exponents in
[0.01, 2.5] (`multistart.EXPONENT_BOUNDS`); bootstrap refits over resampled runs for
intervals (`multistart.fit_form`, shared with the Chinchilla form).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Unpack

import numpy as np

from budgetlm.laws.fitting import multistart
from budgetlm.laws.fitting.fitted import FittedLaw
from budgetlm.laws.fitting.multistart import Bounds, FitOptions

PARAM_NAMES: tuple[str, ...] = ("n_c", "d_c", "alpha_n", "alpha_d")
N_THETA = 4
# c and g (log N_c, log D_c about the data's centre) are boxed within this of the centre.
LOG_BOX = 60.0
EXPONENTS = multistart.EXPONENT_BOUNDS
BOUNDS: Bounds = [(-LOG_BOX, LOG_BOX), (-LOG_BOX, LOG_BOX), EXPONENTS, EXPONENTS]
GRID_EXPONENTS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
GRID_LOG: tuple[float, ...] = (-10.0, -3.0, 0.0, 3.0, 10.0, 25.0)
N_STARTS = 8


@dataclass
class KaplanFit(FittedLaw, form="kaplan"):
    """Kaplan-form law fitted to runs (N parameters, D tokens, loss nats/token).

    n_c, d_c, alpha_n, alpha_d: the law; the other fields are `FittedLaw`'s, residual_std
    with ddof = min(4, n - 1), bootstrap the [n_c, d_c, alpha_n, alpha_d] of each converged
    refit.
    """

    n_c: float
    d_c: float
    alpha_n: float
    alpha_d: float

    def loss(self, n: float, d: float) -> float:
        if not (n > 0 and d > 0):
            return math.inf
        return kaplan_loss(self.n_c, self.d_c, self.alpha_n, self.alpha_d, n, d)

    def bootstrap_predictions(self, n: float, d: float) -> list[float]:
        preds = [kaplan_loss(*row, n, d) for row in self.bootstrap]
        return [p for p in preds if math.isfinite(p) and p > 0]


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


def fit_kaplan(n: Sequence[float], d: Sequence[float], loss: Sequence[float],
               **options: Unpack[FitOptions]) -> KaplanFit:
    """Fit Kaplan et al.'s L(N, D) to runs by the Huber objective in log space, with `bootstrap`
    resampled refits for `level` intervals (see the module docstring)."""
    r = multistart.fit_runs(FORM, n, d, loss, lambda logl: BOUNDS, options)
    return KaplanFit(*r.params, **r.summary)


def raw_params(theta: np.ndarray, xbar: float, ybar: float) -> list[float]:
    """(c, g, alpha_N, alpha_D) with centred logs -> [n_c, d_c, alpha_n, alpha_d]."""
    c, g, an, ad = (float(v) for v in theta)
    return [math.exp(c + xbar), math.exp(g + ybar), an, ad]


def log_model(theta: np.ndarray, xc: np.ndarray, yc: np.ndarray) -> np.ndarray:
    """log L for one theta (shape (n,)) or for thetas of shape (k, 4) (shape (k, n))."""
    th = np.atleast_2d(theta)
    c, g, an, ad = (th[:, j : j + 1] for j in range(N_THETA))
    out = ad * np.logaddexp(an / ad * (c - xc), g - yc)
    return out[0] if np.ndim(theta) == 1 else out


def objective(theta: np.ndarray, xc: np.ndarray, yc: np.ndarray, logl: np.ndarray,
              delta: float, with_grad: bool = True) -> Any:
    """Huber objective / delta^2 and, with_grad, its analytic gradient in theta."""
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


def grid_starts(runs: multistart.Runs, delta: float, box: Bounds) -> list[np.ndarray]:
    """The N_STARTS best distinct points of a grid over (c, g, alpha_N, alpha_D), screened by
    the objective (vectorized)."""
    ex = np.array(GRID_EXPONENTS)
    lg = np.array(GRID_LOG)
    grid = np.array(np.meshgrid(lg, lg, ex, ex, indexing="ij")).reshape(4, -1).T
    return multistart.best_distinct_starts(grid, log_model, runs.xc, runs.yc, runs.logl, delta,
                                           N_STARTS)


FORM = multistart.Form(names=PARAM_NAMES, objective=objective, log_model=log_model,
                       raw=raw_params, starts=grid_starts, jitter=(0.5, 0.5, 0.05, 0.05))
