"""Lifetime cost: training plus inference (Sardana, Portes, Doubov and Frankle 2024, "Beyond
Chinchilla-Optimal: Accounting for Inference in Language Model Scaling Laws", ICML; arXiv
2401.00448).

A model that will process D_inf tokens over its life costs 6·N·D_tr FLOPs to train and 2·N·D_inf
to serve. Their question (§2): the quality a model must reach, at the lowest training +
inference cost,

    minimize 6·N·D_tr + 2·N·D_inf   subject to   L(N, D_tr) = loss,

which moves the optimum to smaller models trained on more tokens per parameter. budgetlm asks it
for the quality the training-only plan reaches (its top candidate's predicted loss) and answers
it over its candidates: each is trained on the tokens that bring it to that loss
(`tokens_for_loss`), priced, and the lowest lifetime cost wins. Inference FLOPs per token are
the candidate's forward model FLOPs (`estimate.flops_per_token(...).forward`: 2·N plus
attention). Costs are in FLOPs when the budget names no device (their compute formulation),
else in device-hours (the training run's; inference at the same MFU on the inference GPU, a
stated simplification: their §3 prices decoding at a lower MFU), or money when a price per
hour is known. `lifetime_optimal` is the law's continuous answer, the reference the candidates
are checked against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from budgetlm import hardware, laws
from budgetlm.errors import UserError
from budgetlm.estimate import flops_per_token
from budgetlm.plan.arch import arch_ladder
from budgetlm.plan.pricing import Candidate, PlanContext, finished_copy, rank_key
from budgetlm.units import format_count, require_finite

LIFETIME_SOURCE = ("Sardana et al. 2024, Beyond Chinchilla-Optimal: Accounting for Inference in "
                   "Language Model Scaling Laws")
SEARCH_SPAN = 4.0  # shapes within this factor of the law's lifetime optimum are priced too
MAX_TOKENS = 1e18  # tokens_for_loss looks no further


@dataclass(frozen=True)
class Inference:
    """What the model will serve: tokens over its life, on which GPU, at what price per
    GPU-hour (None: the training GPU, the training price)."""

    tokens: float = 0.0
    gpu: str | None = None
    price: float | None = None

    def __post_init__(self) -> None:
        tokens = require_finite(self.tokens, "--inference-tokens")
        if tokens < 0:
            raise UserError(f"--inference-tokens: must be 0 or more, got {tokens:g}")
        if self.price is not None:
            price = require_finite(self.price, "--inference-price")
            if price <= 0:
                raise UserError(f"--inference-price: must be positive, got {price:g}")
        if self.gpu is not None:
            try:
                hardware.lookup_gpu(self.gpu)
            except UserError as exc:
                raise UserError(str(exc).replace("--gpu", "--inference-gpu", 1)) from None

    @property
    def active(self) -> bool:
        """Whether there is any inference to plan for."""
        return self.tokens > 0


def tokens_for_loss(law: laws.LossLaw, n: float, loss: float,
                    unique: float | None = None) -> float | None:
    """Training tokens at which `law` predicts `loss` for N parameters (repeated data priced
    when `unique` is given); None when no number of tokens reaches it."""
    if law.loss_repeated(n, MAX_TOKENS, unique) > loss:
        return None
    lo, hi = 0.0, math.log(MAX_TOKENS)
    for _ in range(100):
        mid = (lo + hi) / 2
        if law.loss_repeated(n, math.exp(mid), unique) > loss:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


def lifetime_optimal(law: laws.LossLaw, loss: float, inference_tokens: float,
                     unique: float | None = None) -> tuple[float, float]:
    """(N, D_tr) minimizing 6·N·D_tr + 2·N·D_inf at L(N, D_tr) = loss (Sardana et al. §2), by
    `laws.minimize_log` over N (their Newton iteration solves the same conditions)."""
    def total(n: float) -> float:
        d = tokens_for_loss(law, n, loss, unique)
        return math.inf if d is None else 6 * n * d + 2 * n * inference_tokens

    n = laws.minimize_log(total, 1e4, 1e14)
    d = tokens_for_loss(law, n, loss, unique)
    return n, float(d if d is not None else math.inf)


@dataclass(frozen=True)
class Pricing:
    """How lifetime cost is counted: unit "FLOPs", "GPU-hours" or "cost" (money)."""

    unit: str
    train_price: float | None
    inference_price: float | None
    inference_peak: float | None  # FLOP/s of one inference GPU (None: the training device's)
    inference_gpu: str | None


def pricing(ctx: PlanContext, inference: Inference, budget_price: float | None) -> Pricing:
    """The unit and rates of a plan's lifetime cost (see the module docstring)."""
    train_price = budget_price if budget_price is not None else inference.price
    inf_price = inference.price if inference.price is not None else budget_price
    peak, name = None, None
    if inference.gpu is not None:
        spec = hardware.lookup_gpu(inference.gpu)
        peak = spec.peak_flops.get("bf16") or spec.peak_flops.get("fp16") or spec.peak_flops["fp32"]
        name = spec.name
    if ctx.target.profile is None:
        unit = "FLOPs"
    else:
        unit = "cost" if train_price is not None else "GPU-hours"
    return Pricing(unit, train_price, inf_price, peak, name)


def lifetime_row(c: Candidate, inference: Inference, ctx: PlanContext,
                 price: Pricing) -> dict[str, Any]:
    """Candidate `c`'s training and inference FLOPs, device-hours and cost (`LifetimeRow`)."""
    n = ctx.law.n_of(c.active_params, c.active_non_embedding_params)
    inf_flops = flops_per_token(c.model).forward * inference.tokens
    row: dict[str, Any] = {
        "name": c.name, "params": n, "tokens": c.tokens, "tokens_per_param": c.tokens / n,
        "loss": c.loss, "training_flops": c.flops, "inference_flops": inf_flops,
        "training_gpu_hours": None, "inference_gpu_hours": None, "training_cost": None,
        "inference_cost": None,
    }
    if price.unit != "FLOPs" and c.seconds is not None and c.mfu:
        peak = price.inference_peak
        if peak is None and ctx.target.profile is not None:
            peak = ctx.target.profile.peak(c.precision)
        row["training_gpu_hours"] = c.seconds * c.devices / 3600
        row["inference_gpu_hours"] = inf_flops / (float(peak) * c.mfu) / 3600 if peak else None
        if price.unit == "cost" and row["inference_gpu_hours"] is not None:
            row["training_cost"] = row["training_gpu_hours"] * price.train_price
            row["inference_cost"] = row["inference_gpu_hours"] * price.inference_price
    row["lifetime"] = _total(row, price.unit)
    return row


def _total(row: dict[str, Any], unit: str) -> float:
    keys = {"FLOPs": ("training_flops", "inference_flops"),
            "GPU-hours": ("training_gpu_hours", "inference_gpu_hours"),
            "cost": ("training_cost", "inference_cost")}[unit]
    vals = [row[k] for k in keys]
    return math.inf if any(v is None for v in vals) else float(sum(vals))


def at_loss(setup: Candidate, loss: float, ctx: PlanContext) -> Candidate | None:
    """`setup` (as priced) trained on the tokens that bring its predicted loss to `loss` (the
    budget replaced by those tokens' FLOPs); None when no number of tokens does, or it is not
    feasible then."""
    base = finished_copy(setup, ctx)  # its context adjustment
    n = ctx.law.n_of(setup.active_params, setup.active_non_embedding_params)
    d = tokens_for_loss(ctx.law, n, loss - base.context_adjustment, ctx.unique)
    if d is None:
        return None
    target = replace(ctx.target, kind="flops", flops=d * setup.flops_per_token)
    c = finished_copy(setup, replace(ctx, target=target))
    return c if c.feasible else None


def lifetime_plan(
    ranked: list[Candidate], setups: list[Candidate], ctx: PlanContext, inference: Inference,
    budget_price: float | None, price_shapes: Callable[[list[Any]], list[Candidate]],
) -> tuple[list[Candidate], dict[str, Any]]:
    """The candidates re-ranked by lifetime cost at the training-only top's predicted loss (those
    no dearer over their life than the training-only top), and the plan's `lifetime` record
    (`LifetimeRecord`). `price_shapes(shapes)` prices ladder
    shapes near the law's lifetime optimum that the training-only window left out."""
    base = ranked[0]
    price = pricing(ctx, inference, budget_price)
    n_life, d_life = lifetime_optimal(ctx.law, base.loss_law, inference.tokens, ctx.unique)
    n_train = ctx.law.n_of(base.active_params, base.active_non_embedding_params)
    priced = {s.shape for s in setups}
    more = [s for s in arch_ladder(ctx.arch) if s not in priced
            and n_life / SEARCH_SPAN <= s.approx_params <= n_life * SEARCH_SPAN]
    pool = setups + (price_shapes(more) if more else [])
    found = [c for c in (at_loss(s, base.loss, ctx) for s in pool) if c is not None]
    before = lifetime_row(base, inference, ctx, price)
    rows = {id(c): lifetime_row(c, inference, ctx, price) for c in found}
    # a candidate dearer over its life than the training-only top is no answer to the question
    found = [c for c in found if rows[id(c)]["lifetime"] <= before["lifetime"] * (1 + 1e-6)]
    found.sort(key=lambda c: (rows[id(c)]["lifetime"], rank_key(c, ctx.target.device)))
    runnable = next((i for i, c in enumerate(found) if not c.estimate_only), 0)
    found = found[runnable:runnable + 1] + found[:runnable] + found[runnable + 1:]
    if not found:
        return ranked, {}
    chosen = rows[id(found[0])]
    record = {
        "source": LIFETIME_SOURCE, "inference_tokens": inference.tokens,
        "inference_gpu": price.inference_gpu, "training_price": price.train_price,
        "inference_price": price.inference_price, "unit": price.unit,
        "target_loss": base.loss, "chosen": chosen, "training_only": before,
        "saving": 1 - chosen["lifetime"] / before["lifetime"] if before["lifetime"] else 0.0,
        "law_optimum": {"params": n_life, "tokens": d_life, "tokens_per_param": d_life / n_life,
                        "training_only_params": n_train,
                        "training_only_tokens": float(base.tokens)},
    }
    return found, record


def lifetime_notes(rec: dict[str, Any] | None) -> list[str]:
    """The plan's lifetime note (none without inference tokens)."""
    return [lifetime_note(rec)] if rec else []


def lifetime_note(rec: dict[str, Any]) -> str:
    """The lifetime record in one line of words."""
    ch, tr = rec["chosen"], rec["training_only"]
    unit = rec["unit"]

    def money(r: dict[str, Any]) -> str:
        if unit == "FLOPs":
            return (f"{r['training_flops']:.3g} + {r['inference_flops']:.3g} = "
                    f"{r['lifetime']:.3g} FLOPs")
        k = "gpu_hours" if unit == "GPU-hours" else "cost"
        what = "GPU-hours" if unit == "GPU-hours" else "cost"
        return (f"{r['training_' + k]:.4g} + {r['inference_' + k]:.4g} = {r['lifetime']:.4g} "
                f"{what} ({r['training_flops']:.3g} + {r['inference_flops']:.3g} FLOPs)")

    opt = rec["law_optimum"]
    return (
        f"lifetime ({format_count(rec['inference_tokens'])} inference tokens, Sardana et al. "
        f"2024): at the training-only top's predicted loss, {ch['name']} "
        f"(N={format_count(ch['params'])}, {ch['tokens_per_param']:.0f} tokens/param) costs "
        f"training + inference {money(ch)}; the training-only top {tr['name']} "
        f"(N={format_count(tr['params'])}, {tr['tokens_per_param']:.0f} tokens/param) "
        f"{money(tr)}: {rec['saving']:.0%} less over the model's life, "
        f"{ch['params'] / tr['params']:.2f}x the parameters, "
        f"{ch['tokens'] / max(tr['tokens'], 1):.2f}x the training tokens (law's optimum: "
        f"N={format_count(opt['params'])}, {opt['tokens_per_param']:.0f} tokens/param)"
    )
