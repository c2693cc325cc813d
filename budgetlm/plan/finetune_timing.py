"""Timing real steps of fine-tunes on this machine, and rescaling the others' estimates.

For --time budgets on this machine (as the pretraining planner, `plan.timing`): the best few
fine-tunes run real optimizer steps as the trainer runs them (the model of the candidate's
RunConfig with random weights, no weights read; `train.prepare_model`: LoRA's frozen weights and
adapters through peft; the trainer's optimizer, precision, micro-batch x accumulation and
activation checkpointing), timed by `timing.time_steps` in the rounds of `timing.timed_rounds`.
A step's throughput does not depend on the epochs, so measurements are filed by step
(`FinetuneCandidate.step_name`: setup and micro-batch x accumulation); every other step's
estimate is scaled by the measured/estimated ratio interpolated in log FLOPs per micro-step
(a small model is overhead-bound: its ratio grows with the work of a micro-step, so with the
micro-batch as much as with the method). The epochs each candidate reaches within the budget
and the ranking are then recomputed (`finetune.finish_all`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from budgetlm.config import RunConfig
from budgetlm.plan.finetune import FinetuneCandidate, FinetuneContext, finish_all
from budgetlm.plan.timing import (
    TimingRounds,
    apply_measured,
    autocast_dtype,
    measure_each,
    random_batches,
    time_steps,
    timed_rounds,
)

TIMED_STEPS = 3  # timed optimizer steps of a candidate, after a warm-up step (as pretraining's)


@dataclass
class StepRates:
    """Throughput of a finished fine-tune from timed steps: measured for a step that was timed
    (tokens/s by `step_name`), else its estimate x the measured/estimated ratio interpolated at
    its log FLOPs per micro-step (`points`)."""

    measured: dict[str, float] = field(default_factory=dict)
    points: list[tuple[float, float]] = field(default_factory=list)

    def __call__(self, c: FinetuneCandidate) -> None:
        apply_measured([c], self.measured, self.points, key=lambda s: s.step_name,
                       size=lambda s: s.micro_step_flops)


def _time_finetune(torch: Any, c: FinetuneCandidate, cfg: RunConfig, device: str,
                   steps: int) -> list[float]:
    """Step seconds of fine-tune `c` as the trainer runs `cfg` on one device: the model with
    random weights, prepared by `cfg.finetune`, its optimizer, random tokens."""
    from budgetlm.model import build_model
    from budgetlm.optim import build_optimizer
    from budgetlm.train import prepare_model

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    model.activation_checkpointing = cfg.train.activation_checkpointing
    model = prepare_model(model, cfg)  # full: as it is; lora: frozen weights, adapters
    model.train()
    opt = build_optimizer(model, cfg.optim, fused=True if device == "cuda" else None)
    batch = random_batches(cfg.model.vocab_size, c.micro_batch, c.seq_len, device)
    dtype = autocast_dtype(torch, cfg.train.precision)
    return time_steps(torch, model, opt, batch, dtype, device, c.grad_accum, steps)


def time_finetunes(setups: list[FinetuneCandidate], ranked: list[FinetuneCandidate],
                   ctx: FinetuneContext, k: int,
                   config_of: Callable[[FinetuneCandidate], RunConfig]
                   ) -> tuple[list[str], StepRates]:
    """Time the steps of the best fine-tunes (`ranked`, from priced `setups`) and of a spread of
    others, the k best exactly (`timing.timed_rounds`); `config_of` gives a candidate's
    RunConfig. Returns (the steps timed, the rates to finish candidates with)."""
    methods = {"full", "lora"}
    if any(c.method.name == "lora" for c in ranked):
        from budgetlm.errors import UserError
        from budgetlm.train.finetune import import_peft

        try:
            import_peft()  # loading peft (and transformers) is not a step: not on the clock
        except UserError:  # without peft only full fine-tunes run; LoRA rows are rescaled
            methods = {"full"}

    def timeable(cands: list[FinetuneCandidate]) -> list[FinetuneCandidate]:
        return [c for c in cands if not c.estimate_only and c.method.name in methods]

    rates = StepRates()
    if not timeable(ranked):
        return [], rates

    def measure(cands: list[FinetuneCandidate], deadline: float) -> dict[str, float]:
        return measure_each(
            cands, ctx.target,
            lambda torch, c, device: _time_finetune(torch, c, config_of(c), device, TIMED_STEPS),
            deadline, key=lambda c: c.step_name,
        )

    def apply(measured: dict[str, float], points: list[tuple[float, float]]) -> None:
        rates.measured, rates.points = dict(measured), list(points)

    def rerank() -> list[FinetuneCandidate]:
        ok, _ = finish_all(setups, ctx, rates)
        return timeable(ok)

    timed = timed_rounds(TimingRounds(
        measure=measure, apply=apply, rerank=rerank,
        key=lambda c: c.step_name, group=lambda c: c.step_name,
        size=lambda c: c.micro_step_flops, estimate=lambda c: c.estimated_tokens_per_s,
    ), timeable(ranked), k)
    return timed, rates
