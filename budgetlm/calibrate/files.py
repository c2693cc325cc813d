"""fit.json as `budgetlm calibrate` writes it, as pydantic models.

`FitFile` is the file (`budgetlm schema fit` prints its JSON schema); calibrate writes fit.json
through it. The Chinchilla-form fit's own block (law, intervals, bootstrap, residuals, fit) comes
first, then the Kaplan-form fit, the pilots, the budget and the plan of the rest.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from budgetlm.plan.files import BudgetRecord, Number, Record


class FitData(Record):
    """The corpus the law was fitted on."""

    source: str = Field(description="--data source")
    tokenizer: str = Field(description="byte, char or bpe")
    vocab_size: int = Field(description="vocabulary size")
    sha256: str | None = Field(description="hash of the corpus's bytes (as the token cache has it)")


class PilotRow(Record):
    """One pilot run: its design, what it reached, and the fitted laws' residuals."""

    omitted_when_none = frozenset(
        {"fitted_loss", "residual", "fitted_loss_kaplan", "residual_kaplan"}
    )

    key: str = Field(description="the pilot's key in pilots.jsonl")
    name: str = Field(description="the model shape, L<layers>-d<width>")
    level: int = Field(description="compute level (0 = smallest)")
    level_flops: float = Field(description="model FLOPs of every pilot of this level")
    n_layer: int
    d_model: int
    n_head: int
    params: int = Field(description="total parameters")
    tokens: Number = Field(description="training tokens (planned ones when it did not finish)")
    effective_tokens: Number | None = Field(description="tokens as worth fresh data (Muennighoff)")
    epochs: float | None = Field(description="passes over the unique data")
    flops: Number | None = Field(description="model FLOPs the run took")
    val_loss: float | None = Field(description="final validation loss (nats/token)")
    val_bpb: Number | None = Field(description="final validation bits per byte")
    wall_seconds: Number | None = Field(description="wall seconds of the run")
    predicted_seconds: float | None = Field(description="wall seconds the design predicted")
    state: str = Field(description="complete, or why not (a failure kind, or missing)")
    reason: str | None = Field(description="why it did not complete")
    fitted_loss: float | None = Field(None, description="the Chinchilla-form fit's loss here")
    residual: float | None = Field(None, description="its residual in log-loss")
    fitted_loss_kaplan: float | None = Field(None, description="the Kaplan-form fit's loss here")
    residual_kaplan: float | None = Field(None, description="its residual in log-loss")


class PlanSummary(Record):
    """The top candidate of the plan of the rest of the budget."""

    omitted_when_none = frozenset({"bpb", "bpb_lo", "bpb_hi"})

    name: str = Field(description="the candidate's name")
    params: int
    tokens: int
    flops: float
    loss: float = Field(description="predicted loss (nats/token)")
    loss_lo: float | None
    loss_hi: float | None
    seconds: float | None = Field(description="predicted wall seconds")
    budget: BudgetRecord = Field(description="the budget the pilots left")
    path: str = Field(description="the runnable plan (YAML)")
    bpb: float | None = Field(None, description="predicted bits per byte")
    bpb_lo: float | None = None
    bpb_hi: float | None = None


class FitFile(Record):
    """fit.json: a scaling law fitted on this corpus from pilot runs, and the plan of the rest."""

    omitted_when_none = frozenset({"plan_seconds", "plan", "parametrization"})

    kind: str = Field(description='always "budgetlm-fit"')
    version: int = Field(description="file format version")
    created: str = Field(description="UTC time the fit was made")
    law: dict[str, Any] = Field(description="the Chinchilla-form law: form, E, A, B, alpha, beta")
    intervals: dict[str, list[float]] = Field(description="interval of each constant")
    interval_level: float = Field(description="level of the intervals")
    bootstrap: list[list[float]] = Field(description="constants of the bootstrap refits")
    residuals: list[float] = Field(description="log-loss residual of each finished pilot")
    residual_std: float = Field(description="scatter of single runs (log-loss)")
    fit: dict[str, Any] = Field(
        description="how the fit was made: objective, huber_delta, n_init, n_points, "
        "n_bootstrap, n_resamples, e_max"
    )
    forms: dict[str, dict[str, Any]] = Field(
        description="other forms fitted to the same pilots (kaplan), each as the law's block"
    )
    prediction: str = Field(description="how the forms combine into one prediction")
    e_ceiling: dict[str, Any] | None = Field(
        description="the compression bound E is held under (None: no bound)"
    )
    fit_range: list[Number] = Field(description="[min params, max params, min D', max D']")
    seq_len: int = Field(description="the pilots' sequence length")
    precision: str = Field(description="the pilots' precision")
    optimizer: str = Field(description="the pilots' optimizer")
    parametrization: str | None = Field(
        None, description="mup: the pilots were µP at the µP lr prior (plans from this fit are "
        "µP unless told otherwise); left out: standard")
    eval_tokens: int = Field(description="validation tokens of every pilot (same windows)")
    unique_tokens: int = Field(description="unique training tokens of the corpus")
    bpb_per_nat: float | None = Field(description="bits per byte per nat per token")
    data: FitData
    levels: list[float] = Field(description="model FLOPs of each compute level")
    pilots: list[PilotRow]
    budget: BudgetRecord = Field(description="the whole budget (pilots and the rest)")
    pilot_fraction: float = Field(description="share of the budget for the pilots")
    pilot_budget_seconds: float | None = Field(description="wall seconds for the pilots")
    pilot_budget_flops: float | None = Field(description="model FLOPs for the pilots")
    design_seconds: float = Field(description="seconds designing the pilots took")
    pilot_seconds: float = Field(description="seconds of design, pilots and fit")
    notes: list[str]
    plan_seconds: float | None = Field(None, description="seconds planning the rest took")
    plan: PlanSummary | None = Field(None, description="the plan of the rest of the budget")
    calibrate_seconds: float = Field(description="seconds of this invocation")
    reused_seconds: float = Field(
        0.0, description="seconds of earlier invocations' design and pilots that this one "
        "reused (part of pilot_seconds)"
    )
