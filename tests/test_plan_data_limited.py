"""The data-limited regime: on a ~1M-token corpus, plans for 3, 20 and 60 minutes of a (fake,
measured) CPU never repeat the data past the cap, from the prior or from a fit; a plan that
repeats its data is regularized and stops early; a budget larger than the corpus can use says
so."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import fake_cpu_profile

from budgetlm import laws
from budgetlm.plan import Budget, plan
from budgetlm.plan.data_limited import (
    DROPOUT_MANY_EPOCHS,
    FRESH_EPOCHS,
    PATIENCE_REPEATING,
    REPEAT_CAP_EPOCHS,
    capped_optimal,
    dropout_for,
    fit_pilot_epochs,
    repetition_cap,
)

UNIQUE = 1_000_000
MINUTES = (3, 20, 60)




def _fit(pilot_epochs: float) -> dict[str, Any]:
    """A fit.json of a character corpus whose pilots trained for up to `pilot_epochs`."""
    return {
        "kind": "budgetlm-fit", "law": {"E": 1.1, "A": 60.0, "B": 400.0, "alpha": 0.3,
                                        "beta": 0.32},
        "residual_std": 0.03, "interval_level": 0.9, "seq_len": 128, "precision": "fp32",
        "unique_tokens": UNIQUE,
        "pilots": [{"state": "complete", "epochs": e, "tokens": e * UNIQUE}
                   for e in (0.1 * pilot_epochs, pilot_epochs)]
                  + [{"state": "failed", "epochs": 99.0}],
    }


LAWS = {"prior": None, "fit-fresh": _fit(0.3), "fit-repeated": _fit(40.0)}


@pytest.fixture(scope="module")
def plans() -> dict[tuple[str, int], Any]:
    prof = fake_cpu_profile(bf16=None)
    return {(k, m): plan(Budget(seconds=60 * m), tokens=UNIQUE, fit=fit, profile=prof,
                         timing=False)
            for k, fit in LAWS.items() for m in MINUTES}


def test_repetition_cap_comes_from_the_law_and_the_pilots() -> None:
    assert repetition_cap(laws.prior("epoch"), None)[0] == REPEAT_CAP_EPOCHS
    assert fit_pilot_epochs(_fit(0.3)) == pytest.approx(0.3)  # a failed pilot does not count
    for pilots, cap in ((0.3, FRESH_EPOCHS), (9.0, 9.0), (40.0, REPEAT_CAP_EPOCHS)):
        fit = _fit(pilots)
        assert repetition_cap(laws.law_from_fit(fit), fit)[0] == pytest.approx(cap)


@pytest.mark.parametrize("kind", list(LAWS))
def test_plans_never_exceed_the_repetition_cap(plans: dict, kind: str) -> None:
    fit = LAWS[kind]
    cap = repetition_cap(laws.law_from_fit(fit) if fit else laws.prior("epoch"), fit)[0]
    for m in MINUTES:
        p = plans[(kind, m)]
        assert p.max_epochs == cap and p.to_dict()["max_epochs"] == cap
        for c in p.candidates:
            assert c.tokens <= cap * UNIQUE, (m, c.name)
            assert c.epochs <= cap + 1e-9
        cfg = p.config(0)
        # the run itself cannot pass the cap: a token cap next to the wall-clock one
        if p.top.capped:
            assert cfg.train.max_tokens is not None and cfg.train.max_tokens <= cap * UNIQUE
            assert cfg.train.max_time == 60 * m
        assert p.optimum["data_constrained"]["epochs"] <= cap + 1e-6


def test_a_budget_beyond_the_corpus_says_so(plans: dict) -> None:
    small = plan(Budget(seconds=3600), tokens=100_000, profile=fake_cpu_profile(bf16=None),
                 timing=False)
    for p in (small, plans[("fit-fresh", 20)], plans[("fit-fresh", 60)],
              plans[("fit-repeated", 60)]):
        assert any(c.capped for c in p.candidates)
        note = next(n for n in p.notes if n.startswith("data-limited"))
        assert "more than this corpus can use" in note
        assert p.top.epochs <= p.max_epochs + 1e-9
        assert ("buys nothing" in note) == p.top.capped
        assert ("buys a bigger model" in note) == (not p.top.capped)


def test_more_budget_never_predicts_worse(plans: dict) -> None:
    for kind in LAWS:
        losses = [plans[(kind, m)].top.loss for m in MINUTES]
        assert losses == sorted(losses, reverse=True), (kind, losses)


def test_repeating_plans_regularize_and_stop_early(plans: dict) -> None:
    p = plans[("prior", 60)]
    top = p.top
    assert top.epochs > FRESH_EPOCHS
    cfg = p.config(0)
    assert cfg.model.dropout == DROPOUT_MANY_EPOCHS == dropout_for(top.epochs)
    assert cfg.optim.weight_decay == 0.1
    assert cfg.train.patience == PATIENCE_REPEATING
    # a wsd plan cools down where patience runs out (an annealed best checkpoint)
    assert cfg.schedule.name == "wsd" and cfg.train.on_plateau == "cooldown"
    assert any(n.startswith("repeats:") and "dropout" in n for n in p.notes)
    # unlimited data
    fresh = plan(Budget(seconds=180), profile=fake_cpu_profile(bf16=None), timing=False)
    assert fresh.top.epochs == 1.0
    cfg = fresh.config(0)
    assert cfg.model.dropout == 0.0 and cfg.train.patience is None
    assert cfg.train.on_plateau == "stop"
    assert fresh.max_epochs is None
    assert not any(n.startswith("data-limited") for n in plans[("prior", 3)].notes)


def test_capped_optimum_spends_extra_compute_on_parameters() -> None:
    law = laws.prior("epoch")
    n1, d1 = capped_optimal(law, 1e16, UNIQUE, 16.0)
    n2, d2 = capped_optimal(law, 1e18, UNIQUE, 16.0)
    assert d1 <= 16 * UNIQUE * 1.01 and d2 <= 16 * UNIQUE * 1.01
    free_n, _ = laws.data_constrained_optimal(law, 1e18, UNIQUE)
    assert n2 > n1 and n2 >= free_n
