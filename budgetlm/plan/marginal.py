"""The marginal value of compute: the best predicted loss at 0.5x, 1x, 2x and 4x a plan's
compute, and the (parameters, tokens) each would pick.

Priced on the law's compute-optimal frontier (`laws.data_constrained_optimal`: Hoffmann et al.
2022's allocation, with repeated epochs priced by Muennighoff et al. 2023 when the unique data is
known) at `scale` x the top candidate's model FLOPs, not by planning again: a re-plan prices
every candidate four more times and, for --time budgets, times steps again (seconds each), while
the frontier costs microseconds and keeps `budgetlm plan` at about a second. The frontier knows
no memory limit or ladder ends: a scaled budget whose optimum would not fit is still priced as
if it did (the plan's notes say when the top candidate is already memory-limited). The fit of
`--fit` is the plan's law, so its frontier (and interval) is the fit's. The context-length
heuristic of the top candidate is added to every row, so the 1x row compares with the table.

More compute never predicts a worse loss: at each scale the larger budget may also train the
previous scale's model on more tokens, and the better of the two is taken.
"""

from __future__ import annotations

from typing import Any

from budgetlm import laws
from budgetlm.plan.budget import Budget
from budgetlm.units import format_count_fixed

SCALES = (0.5, 1.0, 2.0, 4.0)
MARGINAL_METHOD = ("the law's compute-optimal frontier (data-constrained when the unique tokens "
                   "are known) at scale x the top candidate's model FLOPs")


def scaled_budget(budget: Budget, scale: float) -> float:
    """The budget's own value (GPU-hours, FLOPs, seconds or money) times `scale`."""
    value = {"gpu_hours": budget.gpu_hours, "flops": budget.flops, "time": budget.seconds,
             "cost": budget.cost}[budget.kind]
    return float(value or 0.0) * scale


def marginal(law: laws.LossLaw, flops: float, unique: int | None, adjustment: float,
             budget: Budget) -> list[dict[str, Any]]:
    """One `MarginalRecord` per SCALES entry, at `scale` x `flops`; `adjustment` (the top
    candidate's context heuristic) is added to each loss."""
    rows: list[dict[str, Any]] = []
    prev_n: float | None = None
    for scale in SCALES:
        c = max(scale * flops, 1.0)
        n, d = laws.data_constrained_optimal(law, c, unique)
        loss = law.loss_repeated(n, d, unique)
        if prev_n is not None:
            d_prev = c / (6 * prev_n)  # the previous scale's model, on more tokens
            loss_prev = law.loss_repeated(prev_n, d_prev, unique)
            if loss_prev < loss:
                n, d, loss = prev_n, d_prev, loss_prev
        prev_n = n
        lo = hi = None
        if law.has_interval:
            _, lo, hi = law.interval(n, d, unique)
            lo, hi = lo + adjustment, hi + adjustment
        rows.append({
            "scale": scale, "budget": scaled_budget(budget, scale), "flops": c, "params": n,
            "tokens": d, "epochs": laws.epochs(d, unique), "loss": loss + adjustment,
            "loss_lo": lo, "loss_hi": hi,
        })
    one = next(r["loss"] for r in rows if r["scale"] == 1.0)
    for r in rows:
        r["gain"] = one - r["loss"]
    return rows


def marginal_line(rows: list[dict[str, Any]], relative_to: float | None = None) -> str:
    """The table's footer: the predicted loss at each scale (minus `relative_to`, the top
    candidate's, when the plan shows losses relative to it) with the shape it would pick, and
    what doubling the compute buys."""
    def loss(r: dict[str, Any]) -> str:
        return f"{r['loss']:.3f}" if relative_to is None else f"Δ{r['loss'] - relative_to:+.3f}"

    parts = [f"{r['scale']:g}x {loss(r)} (N={format_count_fixed(r['params'])}, "
             f"D={format_count_fixed(r['tokens'])})" for r in rows]
    two = next((r for r in rows if r["scale"] == 2.0), None)
    gain = f"; 2x lowers the loss by {two['gain']:.3f} nats/token" if two is not None else ""
    return ("more compute (the law's compute-optimal frontier at 0.5-4x the top's FLOPs, not a "
            "re-plan): " + ", ".join(parts) + gain)
