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
from the `N_STARTS` best of them plus a few data-scaled starts (`data_starts`), and the best
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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Unpack

import numpy as np

from budgetlm.errors import UserError
from budgetlm.laws.fitting.fitted import FittedLaw
from budgetlm.laws.fitting.multistart import (
    EXPONENT_BOUNDS,
    Bounds,
    FitOptions,
    Form,
    Runs,
    best_distinct_starts,
    clip_to_bounds,
    fit_runs,
    is_number,
)

PARAM_NAMES: tuple[str, ...] = ("E", "A", "B", "alpha", "beta")
# Hoffmann et al. 2022, App. D.2: the grid of initializations.
GRID_EXPONENTS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_AB: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
# L-BFGS-B runs from this many of the best grid points (plus the data-scaled starts).
N_STARTS = 12
# Internal parameter order: theta = (e, a', b', alpha, beta) with centred log N, log D.
N_THETA = 5


@dataclass
class LawFit(FittedLaw, form="chinchilla"):
    """A Chinchilla-form law fitted to runs: the point fit, its bootstrap and its residuals.

    E, A, B, alpha, beta: the law in raw units (N parameters, D tokens, loss nats/token).
    The other fields are `FittedLaw`'s, with:
    residual_std: sqrt(sum(r^2) / (n - ddof)) with ddof = min(5, n - 1): the residual
      standard error about the law (about zero, not the residuals' mean: a Huber fit need not
      centre them), ddof = the 5 fitted parameters, clipped so it is defined at n = 5. A gross
      outlier inflates it (the Huber fit ignores the outlier, the scatter estimate does not).
    bootstrap: [E, A, B, alpha, beta] of each converged bootstrap refit; intervals empty when
      there are none. n_resamples: len(bootstrap) of them converged.
    e_max: the upper bound E was fitted under (None: only the loose box of `bounds`).
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    e_max: float | None = field(default=None, kw_only=True)

    def loss(self, n: float, d: float) -> float:
        """The fitted law's loss (nats/token) of N parameters after D tokens (inf unless both
        are positive, as `budgetlm.laws.ChinchillaLaw.loss`)."""
        if not (n > 0 and d > 0):
            return math.inf
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def bootstrap_predictions(self, n: float, d: float) -> list[float]:
        if not self.bootstrap:
            return []
        p = np.asarray(self.bootstrap, dtype=float)
        arr = p[:, 0] + p[:, 1] / n ** p[:, 3] + p[:, 2] / d ** p[:, 4]
        return [float(x) for x in arr[np.isfinite(arr) & (arr > 0)]]

    def fit_block(self) -> dict[str, Any]:
        return {**super().fit_block(), "e_max": self.e_max}

    @classmethod
    def fields_from_fit_block(cls, fit: dict[str, Any]) -> dict[str, Any]:
        return {"e_max": None if fit.get("e_max") is None else float(fit["e_max"])}


def fit_law(n: Sequence[float], d: Sequence[float], loss: Sequence[float], *,
            e_max: float | None = None, **options: Unpack[FitOptions]) -> LawFit:
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
    calls: the fit therefore holds it at one thread while it runs (`blas_single_thread`).
    """
    if e_max is not None and not (is_number(e_max) and math.isfinite(e_max) and e_max > 0):
        raise UserError(f"fit: e_max must be a positive number, got {e_max!r}")
    r = fit_runs(FORM, n, d, loss, lambda logl: bounds(logl, e_max), options)
    return LawFit(*r.params, **r.summary,
                  e_max=None if e_max is None else float(e_max))


def bounds(logl: np.ndarray, e_max: float | None = None) -> Bounds:
    """e, a', b' boxed loosely about the data (log of the smallest loss - 30 to log of the
    largest + 5; e also at most log e_max), exponents in EXPONENT_BOUNDS."""
    lo, hi = float(logl.min()) - 30.0, float(logl.max()) + 5.0
    e_hi = hi if e_max is None else min(hi, math.log(e_max))
    return [(lo, e_hi), (lo, hi), (lo, hi), EXPONENT_BOUNDS, EXPONENT_BOUNDS]


def raw_params(theta: np.ndarray, xbar: float, ybar: float) -> list[float]:
    """(e, a', b', alpha, beta) with centred logs -> [E, A, B, alpha, beta] in raw units."""
    e, a, b, alpha, beta = (float(v) for v in theta)
    return [
        math.exp(e),
        math.exp(a + alpha * xbar),
        math.exp(b + beta * ybar),
        alpha,
        beta,
    ]


def log_terms(theta: np.ndarray, xc: np.ndarray, yc: np.ndarray) -> np.ndarray:
    """The three log-terms, shape (3, n) for one theta or (k, 3, n) for thetas of shape (k, 5)."""
    th = np.atleast_2d(theta)
    e, a, b, alpha, beta = (th[:, j : j + 1] for j in range(N_THETA))
    t = np.stack(
        [a - alpha * xc, b - beta * yc, np.broadcast_to(e, (th.shape[0], xc.size))], axis=1
    )
    return t[0] if np.ndim(theta) == 1 else t


def log_model(theta: np.ndarray, xc: np.ndarray, yc: np.ndarray) -> np.ndarray:
    """log L = LSE of the three log-terms, for one theta or for rows of thetas."""
    t = log_terms(theta, xc, yc)
    m = t.max(axis=-2, keepdims=True)
    return (m + np.log(np.exp(t - m).sum(axis=-2, keepdims=True))).squeeze(-2)


def objective(
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


def grid_starts(runs: Runs, delta: float, box: Bounds) -> list[np.ndarray]:
    """Hoffmann et al.'s 4500-point grid, screened by objective: its N_STARTS best points
    (distinct after clipping to the bounds), plus the data-scaled starts."""
    ex = np.maximum(np.array(GRID_EXPONENTS), EXPONENT_BOUNDS[0])
    g = np.array(np.meshgrid(GRID_E, GRID_AB, GRID_AB, ex, ex, indexing="ij")).reshape(5, -1).T
    # raw (e, a, b, alpha, beta) -> centred (e, a', b', alpha, beta)
    g[:, 1] -= g[:, 3] * runs.xbar
    g[:, 2] -= g[:, 4] * runs.ybar
    g = clip_to_bounds(g, box)
    best = best_distinct_starts(g, log_model, runs.xc, runs.yc, runs.logl, delta, N_STARTS)
    return best + data_starts(runs.logl)


def data_starts(logl: np.ndarray) -> list[np.ndarray]:
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


FORM = Form(names=PARAM_NAMES, objective=objective, log_model=log_model, raw=raw_params,
            starts=grid_starts, jitter=(0.3, 0.3, 0.3, 0.05, 0.05))
