from __future__ import annotations

import math
import sys

import pytest

from budgetlm import laws, units
from budgetlm.errors import UserError


def test_closed_form_optimum_spends_the_budget_and_minimizes_the_loss() -> None:
    law = laws.CHINCHILLA
    c = 1e21
    n, d = law.optimal(c)
    assert 6 * n * d == pytest.approx(c, rel=1e-9)
    best = law.loss(n, d)
    for f in (0.8, 0.9, 1.1, 1.25):
        assert law.loss(n * f, c / (6 * n * f)) > best


def test_G_matches_hoffmann_eq_4() -> None:
    law = laws.CHINCHILLA
    a, b, A, B = law.alpha, law.beta, law.A, law.B
    assert law.G == pytest.approx((a * A / (b * B)) ** (1 / (a + b)))
    n, _ = law.optimal(6e20)
    assert n == pytest.approx(law.G * (1e20) ** (b / (a + b)))


@pytest.mark.parametrize("row", range(3))
def test_epoch_prior_reproduces_chinchilla_table3_in_closed_form(row: int) -> None:
    n_ref, c, d_ref = laws.CHINCHILLA_TABLE3[row]
    n, d = laws.EPOCH.optimal(c)
    expected = [(0.92, 1.09), (0.94, 1.06), (1.01, 0.99)][row]
    assert n / n_ref == pytest.approx(expected[0], abs=0.01)
    assert d / d_ref == pytest.approx(expected[1], abs=0.01)


def test_published_constants() -> None:
    c, e = laws.CHINCHILLA, laws.EPOCH
    assert (c.E, c.A, c.B, c.alpha, c.beta) == (1.69, 406.4, 410.7, 0.34, 0.28)
    assert (e.E, e.A, e.B, e.alpha, e.beta) == (1.8172, 482.01, 2085.43, 0.3478, 0.3658)
    k = laws.KAPLAN
    assert k.params == "non_embedding" and k.form == "kaplan"
    for law in laws.PRIORS.values():
        assert law.kind == "prior" and law.source


def test_kaplan_form_decreases_in_params_and_tokens() -> None:
    k = laws.KAPLAN
    assert k.loss(1e8, 1e10) < k.loss(1e7, 1e10)
    assert k.loss(1e8, 1e10) < k.loss(1e8, 1e9)
    # in the data-rich limit L(N, D) -> (Nc/N)^alpha_N (Kaplan eq. 1.1)
    assert k.loss(1e8, 1e30) == pytest.approx((k.n_c / 1e8) ** k.alpha_n, rel=1e-6)
    n, d = k.optimal(1e20)
    assert 6 * n * d == pytest.approx(1e20, rel=1e-6)


def test_effective_data_follows_muennighoff() -> None:
    u = 1e9
    assert laws.effective_data(0.5 * u, u) == 0.5 * u  # no repetition
    assert laws.effective_data(u, u) == u
    four = laws.effective_data(4 * u, u)  # ~4 epochs are nearly as good as new data
    assert 0.9 * 4 * u < four < 4 * u
    assert four == pytest.approx(u + u * 15.4 * (1 - math.exp(-3 / 15.4)))
    # many epochs saturate at U·(1 + R*)
    assert laws.effective_data(1e4 * u, u) == pytest.approx(u * (1 + laws.R_D_STAR))
    assert laws.epochs(3e9, 1e9) == 3.0 and laws.epochs(1e8, None) == 1.0


def test_repeated_data_costs_loss_and_moves_compute_to_epochs() -> None:
    law = laws.EPOCH
    n, c, unique = 1e8, 1.92e19, 1e8
    d = c / (6 * n)
    assert law.loss_repeated(n, d, unique) > law.loss(n, d)
    assert law.loss_repeated(n, 0.5 * unique, unique) == law.loss(n, 0.5 * unique)
    n0, d0 = law.optimal(c)
    n1, d1 = laws.data_constrained_optimal(law, c, unique)
    # Muennighoff et al.: with scarce data, spend extra compute on epochs more than parameters
    assert d1 / unique > 1 and n1 < n0 and d1 > d0


def test_deepseek_priors() -> None:
    assert laws.deepseek_lr(1e20) == pytest.approx(0.3118 * 1e20**-0.125)
    assert laws.deepseek_lr(1e20) == pytest.approx(9.86e-4, rel=1e-3)
    assert laws.deepseek_batch_tokens(1e20) == pytest.approx(0.2920 * 1e20**0.3271)
    assert laws.deepseek_lr(1e18) > laws.deepseek_lr(1e20)
    assert laws.deepseek_batch_tokens(1e18) < laws.deepseek_batch_tokens(1e20)
    # below the fitted range the lr prior is held at its 1e17 value, not extrapolated
    assert laws.lr_prior(1e12) == laws.lr_prior(1e17) == pytest.approx(2.34e-3, rel=0.01)
    assert laws.lr_prior(1e20) == laws.deepseek_lr(1e20)


def test_law_from_fit_is_a_fit_of_the_same_form() -> None:
    law = laws.law_from_fit({"E": 1.0, "A": 100.0, "B": 200.0, "alpha": 0.3, "beta": 0.3,
                                "sigma": 0.02})
    assert law.kind == "fit" and law.form == "chinchilla" and law.extra == {"sigma": 0.02}
    assert law.loss(1e6, 1e8) == pytest.approx(1 + 100 / 1e6**0.3 + 200 / 1e8**0.3)
    with pytest.raises(UserError, match="missing"):
        laws.law_from_fit({"E": 1.0})
    with pytest.raises(UserError, match="positive"):
        laws.law_from_fit({"E": 1.0, "A": 1, "B": 1, "alpha": -0.3, "beta": 0.3})
    with pytest.raises(UserError, match="unknown prior"):
        laws.prior("gpt5")


def test_context_heuristic_shrinks_with_context() -> None:
    vals = [laws.context_excess(t) for t in (64, 128, 256, 1024, 2048, 8192)]
    assert all(a > b for a, b in zip(vals, vals[1:], strict=False))
    assert vals[3] - vals[4] < 0.02  # a tie-breaker at GPU scale


def test_parse_number() -> None:
    assert units.parse_number("1e19", "--flops") == 1e19
    assert units.parse_number("8B", "--tokens") == 8e9
    assert units.parse_number("400M", "--tokens") == 4e8
    assert units.parse_number("1_000", "--tokens") == 1000
    with pytest.raises(UserError, match="--flops"):
        units.parse_number("lots", "--flops")


def test_kaplan_closed_form_optimum_matches_a_numeric_search() -> None:
    law = laws.KAPLAN
    for c in (1e15, 1e19, 1e23):
        n, d = law.optimal(c)
        assert 6 * n * d == pytest.approx(c)
        num = laws.minimize_log(lambda x, c=c: law.loss(x, c / (6 * x)), 1.0, c / 6)
        assert n == pytest.approx(num, rel=1e-6)
        assert law.params_for_tokens(d) == pytest.approx(n, rel=1e-9)



def test_params_for_tokens_saturates_instead_of_overflowing() -> None:
    """A bootstrap law with alpha_N far below alpha_D sends N_opt(D) past the largest float
    (an OverflowError in `calibrate --time 60m` once): it saturates, and the repeated-data loss
    stays finite. Ordinary laws keep their closed form (both forms, against `optimal`)."""
    steep = laws.KaplanLaw(name="steep", n_c=1.2, d_c=1.0, alpha_n=1e-4, alpha_d=0.05)
    assert steep.params_for_tokens(8.5e5) == pytest.approx(sys.float_info.max, rel=1e-9)
    assert math.isfinite(steep.loss_repeated(1e6, 1e8, 8.5e5))
    for law in (laws.KAPLAN, laws.CHINCHILLA):
        n, d = law.optimal(1e19)
        assert law.params_for_tokens(d) == pytest.approx(n, rel=1e-9)


CHIN = {"E": 1.1, "A": 60.0, "B": 300.0, "alpha": 0.45, "beta": 0.42,
        "bootstrap": [[1.1, 60.0, 300.0, 0.45, 0.42], [1.0, 70.0, 280.0, 0.46, 0.41]],
        "residual_std": 0.02, "interval_level": 0.9, "seq_len": 64}
KAP = {"law": {"form": "kaplan", "n_c": 5.3e5, "d_c": 2.3e7, "alpha_n": 0.22, "alpha_d": 0.2},
       "bootstrap": [[5.3e5, 2.3e7, 0.22, 0.2], [6e5, 2.1e7, 0.21, 0.21]],
       "residual_std": 0.03}


def test_a_fit_with_two_forms_predicts_their_geometric_mean_and_spans_both() -> None:
    law = laws.law_from_fit({**CHIN, "forms": {"kaplan": KAP}})
    assert law.form == "mean" and [m.form for m in law.members] == ["chinchilla", "kaplan"]
    assert law.extra["seq_len"] == 64 and law.has_interval
    chin, kap = law.members
    for n, d in ((2e5, 3e6), (6e5, 1.5e7)):
        assert law.loss(n, d) == pytest.approx(math.sqrt(chin.loss(n, d) * kap.loss(n, d)))
        point, lo, hi = law.interval(n, d, unique=1e7)
        spans = [m.interval(n, d, unique=1e7) for m in law.members]
        assert point == pytest.approx(law.loss_repeated(n, d, 1e7))
        assert lo == min(s[1] for s in spans) and hi == max(s[2] for s in spans)
        assert lo < point < hi
    n, d = law.optimal(1e13)
    assert 6 * n * d == pytest.approx(1e13)
    assert law.loss(n, d) <= min(law.loss(n * f, d / f) for f in (0.8, 1.25))
    assert laws.law_from_fit(CHIN).form == "chinchilla"


@pytest.mark.parametrize("kap", [
    "x", {"law": "x"}, {"law": {"n_c": 1.0}},
    {"law": {"n_c": 1.0, "d_c": 1.0, "alpha_n": -0.1, "alpha_d": 0.2}},
])
def test_a_malformed_second_form_is_a_user_error(kap: object) -> None:
    with pytest.raises(UserError, match="kaplan"):
        laws.law_from_fit({**CHIN, "forms": {"kaplan": kap}})
