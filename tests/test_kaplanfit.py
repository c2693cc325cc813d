"""Fitting Kaplan et al.'s L(N, D) (budgetlm.laws.fitting.kaplan): recovery, gradient, intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from budgetlm import laws
from budgetlm.errors import UserError
from budgetlm.laws.fitting.kaplan import KaplanFit, fit_kaplan, kaplan_loss, objective

# (n_c, d_c, alpha_n, alpha_d): Kaplan et al.'s Table 2 values, and a pilot-sized law of the
# kind budgetlm calibrate fits on a byte-level corpus (N 20K-300K, D 0.2M-6M).
KAPLAN_2020 = (6.4e13, 1.8e13, 0.076, 0.103)
SMALL = (5.3e5, 2.3e7, 0.22, 0.20)


def design(truth: tuple[float, ...], lo: float, hi: float) -> tuple[np.ndarray, ...]:
    """IsoFLOP profiles: 5 levels over [lo, hi] FLOPs, 5 sizes a factor 2 apart around the law's
    optimum at each level, D = C / (6N)."""
    law = laws.KaplanLaw("truth", n_c=truth[0], d_c=truth[1], alpha_n=truth[2],
                            alpha_d=truth[3])
    n, d = [], []
    for c in np.logspace(math.log10(lo), math.log10(hi), 5):
        n_opt, _ = law.optimal(float(c))
        for m in (0.25, 0.5, 1.0, 2.0, 4.0):
            n.append(n_opt * m)
            d.append(c / (6 * n_opt * m))
    nn, dd = np.array(n), np.array(d)
    return nn, dd, np.array([law.loss(a, b) for a, b in zip(nn, dd, strict=True)])


def rel(fit: KaplanFit, truth: tuple[float, ...]) -> list[float]:
    got = (fit.n_c, fit.d_c, fit.alpha_n, fit.alpha_d)
    return [g / t - 1 for g, t in zip(got, truth, strict=True)]


@pytest.mark.parametrize(("truth", "lo", "hi"), [(KAPLAN_2020, 1e18, 1e21),
                                                 (SMALL, 1e11, 1e14)], ids=["kaplan", "small"])
def test_noise_free_runs_give_the_law_back(truth: tuple[float, ...], lo: float,
                                           hi: float) -> None:
    n, d, loss = design(truth, lo, hi)
    fit = fit_kaplan(n, d, loss, bootstrap=0)
    assert max(abs(e) for e in rel(fit, truth)) < 1e-4, rel(fit, truth)
    assert fit.residual_std < 1e-6


def test_recovers_the_exponents_from_noisy_runs() -> None:
    n, d, loss = design(SMALL, 1e11, 1e14)
    rng = np.random.default_rng(3)
    fit = fit_kaplan(n, d, loss * np.exp(rng.normal(0, 0.005, loss.size)), bootstrap=50, seed=1)
    _, _, ea, eb = rel(fit, SMALL)
    assert abs(ea) < 0.1 and abs(eb) < 0.1
    for k, t in zip(("alpha_n", "alpha_d"), SMALL[2:], strict=True):
        lo, hi = fit.intervals[k]
        assert lo <= t <= hi or abs(t / getattr(fit, k) - 1) < 0.02
    point, plo, phi = fit.predict(3e5, 3e7)
    assert plo < point < phi
    assert point == pytest.approx(fit.loss(3e5, 3e7))


def test_analytic_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    xc, yc = rng.normal(0, 1, 9), rng.normal(0, 1, 9)
    logl = rng.normal(0.5, 0.05, 9)
    theta = np.array([0.3, -0.2, 0.25, 0.2])
    delta = 0.05  # wide enough that every residual is inside the quadratic part
    _, g = objective(theta, xc, yc, logl, delta)
    h = 1e-6
    for j in range(4):
        e = np.zeros(4)
        e[j] = h
        num = (objective(theta + e, xc, yc, logl, delta, with_grad=False)
               - objective(theta - e, xc, yc, logl, delta, with_grad=False)) / (2 * h)
        assert g[j] == pytest.approx(num, rel=1e-5, abs=1e-6)


def test_loss_matches_the_scaling_law_and_never_overflows() -> None:
    law = laws.KaplanLaw("k", n_c=SMALL[0], d_c=SMALL[1], alpha_n=SMALL[2],
                            alpha_d=SMALL[3])
    for n, d in ((1e4, 1e5), (3e5, 3e7), (1e9, 1e12)):
        assert kaplan_loss(*SMALL, n, d) == pytest.approx(law.loss(n, d), rel=1e-12)
    assert kaplan_loss(1e300, 1.0, 2.5, 0.01, 1.0, 1.0) == math.inf  # e^1725: no OverflowError
    assert kaplan_loss(*SMALL, 0.0, 1e6) == math.inf


def test_to_dict_is_what_law_from_fit_reads() -> None:
    n, d, loss = design(SMALL, 1e11, 1e14)
    fit = fit_kaplan(n, d, loss, bootstrap=5)
    blob = fit.to_dict()
    assert blob["law"]["form"] == "kaplan" and len(blob["bootstrap"]) == len(fit.bootstrap)
    chin = {"E": 1.0, "A": 30.0, "B": 300.0, "alpha": 0.3, "beta": 0.3}
    law = laws.law_from_fit({**chin, "forms": {"kaplan": blob}})
    assert law.form == "mean"
    assert law.members[1].loss(3e5, 3e7) == pytest.approx(fit.loss(3e5, 3e7))


def test_bad_input_is_a_user_error() -> None:
    with pytest.raises(UserError, match="at least 5"):
        fit_kaplan([1e5, 2e5], [1e6, 2e6], [2.0, 1.9])
    with pytest.raises(UserError, match="positive"):
        fit_kaplan([1e5, 2e5, 3e5, 4e5, -1], [1e6] * 5, [2.0] * 5)
