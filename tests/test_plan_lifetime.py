"""Lifetime cost, training + inference (Sardana et al. 2024, "Beyond Chinchilla-Optimal")."""

from __future__ import annotations

import json
import math

import pytest
from scipy.optimize import minimize_scalar
from typer.testing import CliRunner

from budgetlm import laws
from budgetlm.cli import app
from budgetlm.errors import UserError
from budgetlm.plan import Budget, plan
from budgetlm.plan.files import PlanFile
from budgetlm.plan.lifetime import Inference, lifetime_optimal, tokens_for_loss

runner = CliRunner()
CH = laws.CHINCHILLA  # Hoffmann et al. 2022 eq. 10: the law Sardana et al. build on


def sardana_scipy(loss: float, inference_tokens: float) -> tuple[float, float]:
    """Their objective solved independently of budgetlm: min 6·N·D + 2·N·D_inf with
    L(N, D) = loss, D(N) from the law in closed form, scipy's bounded scalar minimizer."""
    def d_of(n: float) -> float:
        rest = loss - CH.E - CH.A / n**CH.alpha
        return (CH.B / rest) ** (1 / CH.beta) if rest > 0 else math.inf

    n_min = (CH.A / (loss - CH.E)) ** (1 / CH.alpha)
    res = minimize_scalar(
        lambda ln: 6 * math.exp(ln) * d_of(math.exp(ln)) + 2 * math.exp(ln) * inference_tokens,
        bounds=(math.log(n_min) + 1e-9, math.log(n_min) + 12), method="bounded",
        options={"xatol": 1e-10})
    n = math.exp(res.x)
    return n, d_of(n)


def _without_elapsed(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "elapsed_s"}


def test_chinchilla_prior_is_hoffmann_eq10() -> None:
    assert (CH.E, CH.A, CH.B, CH.alpha, CH.beta) == (1.69, 406.4, 410.7, 0.34, 0.28)


def test_zero_inference_tokens_leave_the_plan_unchanged() -> None:
    a = plan(Budget(flops=1e21), prior="chinchilla").to_dict()
    b = plan(Budget(flops=1e21), prior="chinchilla", inference=Inference(0)).to_dict()
    assert _without_elapsed(a) == _without_elapsed(b) and "lifetime" not in b
    base = ["plan", "--flops", "1e21", "--prior", "chinchilla", "--json"]
    out = [runner.invoke(app, base + extra) for extra in ([], ["--inference-tokens", "0"])]
    assert all(r.exit_code == 0 for r in out), out[1].output
    assert _without_elapsed(json.loads(out[0].output)) == _without_elapsed(
        json.loads(out[1].output))


def test_tokens_for_loss_inverts_the_law() -> None:
    d = tokens_for_loss(CH, 1e9, 2.4)
    assert d is not None and CH.loss(1e9, d) == pytest.approx(2.4, abs=1e-9)
    assert tokens_for_loss(CH, 1e9, CH.E + CH.A / 1e9**CH.alpha - 1e-3) is None  # unreachable


def test_solver_matches_scipy_and_sardana_figure1() -> None:
    """Their Figure 1: a Chinchilla-optimal 13B model with 2T tokens of inference demand is
    better replaced by a ~7B model trained on more data. budgetlm's solver gives 8.0B (within
    15% of 7B) and agrees with scipy on their objective to 0.1%."""
    n13 = 13e9
    n_c, d_c = CH.optimal(6 * (n13 / CH.G) ** (1 / CH.allocation_exponents[0]))  # eq. 4
    assert n_c == pytest.approx(n13, rel=1e-9)
    loss = CH.loss(n_c, d_c)
    n, d = lifetime_optimal(CH, loss, 2e12)
    n_ref, d_ref = sardana_scipy(loss, 2e12)
    assert n == pytest.approx(n_ref, rel=1e-3) and d == pytest.approx(d_ref, rel=1e-3)
    assert n / 7e9 == pytest.approx(1, abs=0.15)
    assert 6 * n * d + 2 * n * 2e12 < 6 * n_c * d_c + 2 * n_c * 2e12


def test_inference_demand_at_1e21_flops_moves_to_a_smaller_longer_trained_model() -> None:
    """The acceptance example: --flops 1e21, 1e12 inference tokens, Chinchilla's law."""
    p0 = plan(Budget(flops=1e21), prior="chinchilla")
    p1 = plan(Budget(flops=1e21), prior="chinchilla", inference=Inference(1e12))
    t0, t1 = p0.top, p1.top
    assert t1.params < t0.params and t1.tokens / t1.params > 2 * t0.tokens / t0.params
    # the same predicted quality (whole steps round the tokens down a little)
    assert t1.loss == pytest.approx(t0.loss, abs=2e-3)
    # Sardana et al.'s optimum for that quality and demand, solved with scipy
    n_ref, d_ref = sardana_scipy(t0.loss_law, 1e12)
    assert t1.params / n_ref == pytest.approx(1, abs=0.15)
    assert t1.tokens / d_ref == pytest.approx(1, abs=0.15)
    # ... and for the loss of the law's closed-form training-only optimum at 1e21
    n_cf, d_cf = sardana_scipy(CH.loss(*CH.optimal(1e21)), 1e12)
    assert t1.params / n_cf == pytest.approx(1, abs=0.15)
    assert t1.tokens / d_cf == pytest.approx(1, abs=0.15)
    rec = p1.to_dict()["lifetime"]
    assert rec["unit"] == "FLOPs" and rec["chosen"]["name"] == t1.name
    assert rec["training_only"]["name"] == t0.name
    ch, tr = rec["chosen"], rec["training_only"]
    assert ch["lifetime"] == pytest.approx(ch["training_flops"] + ch["inference_flops"])
    assert ch["lifetime"] < tr["lifetime"] and rec["saving"] > 0.2
    assert ch["inference_flops"] == pytest.approx(2 * t1.params * 1e12, rel=0.15)  # 2·N·D_inf
    assert any(n.startswith("lifetime (") and "less over the model's life" in n
               for n in p1.notes)
    PlanFile.model_validate(p1.to_dict())


def test_lifetime_in_money_with_an_inference_gpu_and_price() -> None:
    inf = Inference(2e11, gpu="a100", price=1.0)
    p = plan(Budget(cost=200, price=2.5, gpu="h100-sxm"), inference=inf)
    rec = p.lifetime
    assert rec is not None and rec["unit"] == "cost" and rec["inference_gpu"]
    ch = rec["chosen"]
    assert ch["training_cost"] == pytest.approx(ch["training_gpu_hours"] * 2.5)
    assert ch["inference_cost"] == pytest.approx(ch["inference_gpu_hours"] * 1.0)
    assert ch["lifetime"] <= rec["training_only"]["lifetime"]
    assert rec["training_only"]["training_cost"] == pytest.approx(200, rel=0.05)


def test_bad_inference_input_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--inference-tokens"):
        Inference(-1)
    with pytest.raises(UserError, match="--inference-gpu"):
        Inference(1e9, gpu="no-such-gpu")
    with pytest.raises(UserError, match="--inference-price"):
        Inference(1e9, price=0)
    res = runner.invoke(app, ["plan", "--flops", "1e20", "--inference-gpu", "h100"])
    assert res.exit_code == 2 and "--inference-tokens" in res.output


def test_a_time_budget_with_inference_tokens_is_refused() -> None:
    # a --time budget fixes this machine's training time; the lifetime pick trains longer
    with pytest.raises(UserError, match="--time budget fixes how long"):
        plan(Budget(seconds=1800), timing=False, inference=Inference(1e9))
    res = runner.invoke(app, ["plan", "--time", "30m", "--inference-tokens", "1e9"])
    assert res.exit_code == 2 and "--gpu-hours, --flops or --cost" in res.output
    assert len(res.output.strip().splitlines()) == 1
