"""The marginal value of compute: best predicted loss at 0.5x-4x a plan's compute."""

from __future__ import annotations

import json

import pytest
from fakes import fake_cpu_profile, use_profile
from typer.testing import CliRunner

from budgetlm import hardware, laws
from budgetlm.cli import app
from budgetlm.plan import Budget, plan
from budgetlm.plan.files import PlanFile
from budgetlm.plan.marginal import SCALES, marginal

runner = CliRunner()


@pytest.fixture
def cpu_machine(monkeypatch: pytest.MonkeyPatch) -> hardware.HardwareProfile:
    """This machine as a fake measured CPU profile (no measuring, no torch)."""
    return use_profile(monkeypatch, fake_cpu_profile())


def _check(rows: list[dict], top_flops: float) -> None:
    assert [r["scale"] for r in rows] == list(SCALES)
    for r in rows:
        assert r["flops"] == pytest.approx(r["scale"] * top_flops)
        assert r["params"] > 0 and r["tokens"] > 0
    losses = [r["loss"] for r in rows]
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False)), losses  # monotone
    assert rows[1]["gain"] == 0.0 and rows[2]["gain"] > 0 > rows[0]["gain"]


@pytest.mark.parametrize("budget", [
    Budget(flops=1e19), Budget(gpu_hours=8, gpu="h100-sxm"),
    Budget(cost=50, price=2.5, gpu="a100-80gb"), Budget(seconds=600),
], ids=["flops", "gpu_hours", "cost", "time"])
def test_marginal_for_every_budget_kind(budget: Budget, cpu_machine: object) -> None:
    p = plan(budget, timing=False)
    d = p.to_dict()
    _check(d["marginal"], p.top.flops)
    value = {"flops": budget.flops, "gpu_hours": budget.gpu_hours, "cost": budget.cost,
             "time": budget.seconds}[budget.kind]
    assert [r["budget"] for r in d["marginal"]] == pytest.approx([s * value for s in SCALES])
    PlanFile.model_validate(d)


def test_marginal_is_the_closed_form_frontier() -> None:
    """Chinchilla's law, unlimited data: each row is Hoffmann et al. eq. 4 at scale x C."""
    p = plan(Budget(flops=1e20), prior="chinchilla")
    c = p.top.flops
    for r in p.marginal:
        n, d = laws.CHINCHILLA.optimal(r["scale"] * c)
        assert r["params"] == pytest.approx(n, rel=1e-6) and r["tokens"] == pytest.approx(d)
        assert r["loss"] == pytest.approx(laws.CHINCHILLA.loss(n, d) + p.top.context_adjustment)


def test_marginal_monotone_when_data_runs_out() -> None:
    rows = marginal(laws.EPOCH, 1e20, int(2e8), 0.0, Budget(flops=1e20))
    _check(rows, 1e20)
    assert rows[-1]["epochs"] > 4  # the larger budgets repeat the data


def test_marginal_from_a_fit_carries_its_interval() -> None:
    fit = {"E": 1.5, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28,
           "residual_std": 0.02, "interval_level": 0.9}
    p = plan(Budget(flops=1e20), fit=fit)
    law = laws.law_from_fit(fit)
    for r in p.marginal:
        n, d = law.optimal(r["scale"] * p.top.flops)
        assert r["loss"] == pytest.approx(law.loss(n, d) + p.top.context_adjustment, rel=1e-6)
        assert r["loss_lo"] < r["loss"] < r["loss_hi"]


def test_marginal_in_json_schema_json_and_table() -> None:
    schema = PlanFile.model_json_schema()
    assert "marginal" in schema["properties"] and "MarginalRecord" in schema["$defs"]
    res = runner.invoke(app, ["plan", "--flops", "1e19", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output)["marginal"]) == 4
    res = runner.invoke(app, ["plan", "--flops", "1e19"])
    assert res.exit_code == 0 and "more compute" in res.output and "2x" in res.output
