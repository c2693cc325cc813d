"""The data-limited regime: a cap on repetitions, regularization and early stopping when a plan
repeats its data, and what a budget larger than the corpus can use buys.

Muennighoff et al. 2023 ("Scaling Data-Constrained Language Models") find repeated data nearly as
good as new for up to ~4 epochs, worth rapidly less after that (their fitted decay constant
R_D* = 15.4 repetitions: `laws.effective_data`), and about worthless, later harmful, beyond ~16
epochs. A plan never repeats its data more than REPEAT_CAP_EPOCHS times. A fitted law (from
`budgetlm calibrate`) is a statement about its pilots: on fresh data its loss transfers to the
~4 epochs where repeats are as good as new (FRESH_EPOCHS); further only as far as its pilots
themselves repeated the data, so a plan from a fit never extrapolates repetition past them.

A plan that repeats its data is regularized: dropout (Xue et al. 2023, "To Repeat or Not To
Repeat: Insights from Scaling LLM under Token-Crisis", find dropout the most effective remedy for
multi-epoch degradation; nanoGPT's 1 MB shakespeare_char recipe uses 0.2), AdamW's decoupled
weight decay 0.1 kept, and early stopping on the validation loss (train.patience) with the best
checkpoint kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from budgetlm import laws
from budgetlm.laws.stats import optimal_split
from budgetlm.units import format_count

if TYPE_CHECKING:
    from budgetlm.plan.pricing import Candidate, PlanContext

REPEAT_CAP_EPOCHS = 16.0  # Muennighoff et al. 2023: repeats beyond ~16 epochs worth ~nothing
FRESH_EPOCHS = 4.0  # ... and up to ~4 epochs nearly as good as new data
DROPOUT_REPEATING = 0.1  # 1-4 epochs
DROPOUT_MANY_EPOCHS = 0.2  # beyond FRESH_EPOCHS (nanoGPT shakespeare_char)
PATIENCE_REPEATING = 3  # evaluations without improvement before a repeating run stops
REPEATING = 1.0 + 1e-9  # epochs beyond which a plan repeats its data


def fit_pilot_epochs(fit: dict[str, Any] | None) -> float | None:
    """The most epochs any finished pilot of a fit.json trained for (None: no pilot records)."""
    if not fit:
        return None
    eps = [float(p["epochs"]) for p in fit.get("pilots") or []
           if isinstance(p, dict) and p.get("state", "complete") == "complete"
           and isinstance(p.get("epochs"), int | float)]
    return max(eps) if eps else None


def repetition_cap(law: laws.LossLaw, fit: dict[str, Any] | None) -> tuple[float, str]:
    """(the most epochs a plan may train for, why): REPEAT_CAP_EPOCHS from Muennighoff et al.;
    a fitted law's, no further than FRESH_EPOCHS or its pilots' own epochs."""
    cited = (f"Muennighoff et al. 2023: repeated data is worth little beyond "
             f"~{REPEAT_CAP_EPOCHS:.0f} epochs")
    if law.kind != "fit":
        return REPEAT_CAP_EPOCHS, cited
    covered = fit_pilot_epochs(fit) or 0.0
    cap = min(REPEAT_CAP_EPOCHS, max(FRESH_EPOCHS, covered))
    if cap >= REPEAT_CAP_EPOCHS:
        return cap, cited + f" (the fit's pilots covered {covered:.1f} epochs)"
    return cap, (f"the fit's pilots covered {covered:.2g} epochs; repeated data is as good as "
                 f"new up to ~{FRESH_EPOCHS:.0f} (Muennighoff et al. 2023): the fit is not "
                 "extrapolated past that")


def capped_tokens(tokens: float, ctx: PlanContext) -> float:
    """`tokens` held within the repetition cap of `ctx` (unchanged when data is unlimited)."""
    if ctx.unique is None or ctx.max_epochs is None:
        return tokens
    return min(tokens, ctx.max_epochs * ctx.unique)


def capped_optimal(law: laws.LossLaw, flops: float, unique: float | None,
                   max_epochs: float | None) -> tuple[float, float]:
    """(N, D) minimizing the data-constrained loss under 6·N·D = flops with D held within
    `max_epochs` epochs of `unique` tokens: past the cap the compute goes to parameters."""
    if unique is None:
        return law.optimal(flops)
    if max_epochs is None:
        return laws.data_constrained_optimal(law, flops, unique)
    cap = max_epochs * unique
    n, d = optimal_split(lambda n, d: law.loss_repeated(n, min(d, cap), unique), flops)
    if d > cap:  # the loss is flat in D past the cap: spend the rest on parameters
        return flops / (6 * cap), cap
    return n, d


def dropout_for(epochs: float) -> float:
    """Dropout of a plan that trains for `epochs` passes over its data (0 without repeats)."""
    if epochs <= REPEATING:
        return 0.0
    return DROPOUT_MANY_EPOCHS if epochs > FRESH_EPOCHS else DROPOUT_REPEATING


def patience_for(epochs: float) -> int | None:
    """train.patience of a plan that trains for `epochs` passes (None: no early stopping)."""
    return PATIENCE_REPEATING if epochs > REPEATING else None


def regularization_note(top: Candidate) -> str | None:
    """What the exported config does against overfitting when the top candidate repeats data."""
    if top.epochs <= REPEATING:
        return None
    return (f"repeats: {top.epochs:.1f} epochs, so the exported config regularizes: dropout "
            f"{dropout_for(top.epochs):g}, weight decay 0.1, and stops early after "
            f"{PATIENCE_REPEATING} evaluations without a better validation loss (train.patience; "
            "a wsd schedule starts its cooldown there, train.on_plateau; the best checkpoint is "
            "kept) (Xue et al. 2023; Muennighoff et al. 2023)")


def data_limit_note(top: Candidate, ctx: PlanContext, why: str) -> str | None:
    """Plain words when the corpus, not compute, limits the plan (the top candidate stops at the
    cap, or the law's data-constrained optimum at its compute would repeat the data past it):
    what the extra compute buys (a bigger model, or nothing) instead of more repetitions."""
    if ctx.unique is None or ctx.max_epochs is None:
        return None
    if not top.capped:
        _, d = laws.data_constrained_optimal(ctx.law, max(top.flops, 1.0), ctx.unique)
        if d <= ctx.max_epochs * ctx.unique:
            return None
    most = format_count(ctx.max_epochs * ctx.unique)
    head = (f"data-limited: this budget is more than this corpus can use: "
            f"{format_count(ctx.unique)} unique tokens x at most {ctx.max_epochs:g} epochs = "
            f"{most} tokens ({why})")
    if top.capped:
        spent = ""
        if top.seconds is not None and ctx.target.wall_seconds:
            spent = (f"; the top candidate trains {top.seconds / 60:.1f} of "
                     f"{ctx.target.wall_seconds / 60:.1f} minutes")
        return (head + f"; the extra compute buys nothing: a larger model is predicted no "
                "better (parameters beyond the corpus's compute-optimal size are worth little, "
                f"Muennighoff et al. eq. 5){spent}")
    return (head + f"; the extra compute buys a bigger model ({format_count(top.params)} "
            f"params, {top.epochs:.1f} epochs) instead of more repetitions")


def pilots_epochs_note(pilot_epochs: list[float]) -> str:
    """What a calibration's pilots say about repeated data, and so how far a plan from their fit
    may repeat it (`repetition_cap`)."""
    covered = max(pilot_epochs, default=0.0)
    cap = min(REPEAT_CAP_EPOCHS, max(FRESH_EPOCHS, covered))
    return (f"pilots repeat the data at most {covered:.2g} epochs: a plan from this fit repeats "
            f"it at most {cap:g} epochs (no extrapolation of the fit past its pilots beyond the "
            f"~{FRESH_EPOCHS:.0f} epochs where repeats are as good as new data, Muennighoff et "
            "al. 2023)")


def law_optimum(law: laws.LossLaw, top: Candidate, unique: int | None,
                max_epochs: float | None = None) -> dict[str, Any]:
    """The law's compute-optimal allocations at the top candidate's compute."""
    n_top, d_top = law.optimal(max(top.flops, 1.0))
    optimum: dict[str, Any] = {
        "flops": top.flops,
        "closed_form": {"params": n_top, "tokens": d_top,
                        "method": "Hoffmann et al. eq. 4" if law.form == "chinchilla"
                        else "numeric minimum of L(N, C/6N)"},
        "top_candidate": {"params": law.n_of(top.active_params, top.active_non_embedding_params),
                          "tokens": top.tokens},
    }
    if unique is not None:
        n_dc, d_dc = capped_optimal(law, max(top.flops, 1.0), unique, max_epochs)
        optimum["data_constrained"] = {"params": n_dc, "tokens": d_dc,
                                       "epochs": laws.epochs(d_dc, unique)}
    return optimum


def optimal_params(optimum: dict[str, Any]) -> float:
    """The compute-optimal size of `law_optimum` (the data-constrained one when data is
    limited)."""
    return float((optimum.get("data_constrained") or optimum["closed_form"])["params"])
