"""Timing real steps of candidates on this machine, and rescaling the others' estimates.

Only --time budgets on this machine, when asked: measuring imports torch (inside the functions
here; importing this module does not). The rounds (`timed_rounds`), the measurement loop
(`measure_each`), how a step is timed (`time_steps`) and the rescaling (`apply_measured`) serve
both the pretraining planner (`time_and_rescale`) and the fine-tune planner
(`plan.finetune_timing`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from budgetlm import laws
from budgetlm.config import OptimConfig, tokens_per_step
from budgetlm.plan.budget import Target
from budgetlm.plan.pricing import (
    Candidate,
    PlanContext,
    finished_copy,
    model_config,
    rank_key,
)

TIMING_PROBES = 6  # model sizes timed to correct the estimator on this machine
TIMING_SECONDS = 20.0  # wall-time cap of round 1 of the timing (round 2: half as much)
TIMED = "timed"  # the time source of a candidate whose steps were timed
SHORT_BUDGET = (f"the budget is shorter than timing steps on this machine takes, up to "
                f"{TIMING_SECONDS:.0f} s; --timing times them anyway")


def timing_default(timing: bool | None, tgt: Target, profile: Any) -> tuple[bool, bool]:
    """(whether to time steps, whether they go untimed because the budget is short): timing is
    on by default for --time budgets on this machine (no `profile` given) unless the budget is
    shorter than the timing (TIMING_SECONDS): timing steps is not worth more than the run."""
    short = (timing is None and tgt.kind == "time" and profile is None
             and float(tgt.wall_seconds or 0.0) < TIMING_SECONDS)
    if timing is None:
        timing = tgt.kind == "time" and profile is None and not short
    return timing, short


def time_steps(torch: Any, model: Any, opt: Any, batch: Any, dtype: Any, device: str,
               accum: int, steps: int) -> list[float]:
    """Seconds of `steps` optimizer steps after a warm-up step. A step is what the trainer does:
    `accum` micro-steps (drawing a batch, forward, backward; one micro-step is timed and
    multiplied by accum), the update, and reading the loss."""

    def micro(step: int) -> Any:
        x, y = batch(step)
        if dtype is None:
            _, loss = model(x, y)
        else:
            with torch.autocast(device_type=device, dtype=dtype):
                _, loss = model(x, y)
        loss.backward()
        return loss

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    micro(0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        loss = micro(i + 1)
        sync()
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())
        times.append(accum * (t1 - t0) + (time.perf_counter() - t1))
    return times


def autocast_dtype(torch: Any, precision: str) -> Any:
    """The autocast dtype of `precision` (None: fp32, no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def random_batches(vocab_size: int, micro_batch: int, seq_len: int,
                   device: str) -> Callable[[int], tuple[Any, Any]]:
    """Batches of random tokens drawn as the trainer draws them (`data.sample_batch`), on
    `device`: step -> (x, y)."""
    import numpy as np

    from budgetlm.data import sample_batch

    data = np.random.default_rng(0).integers(
        0, vocab_size, size=max(100_000, 4 * micro_batch * seq_len), dtype=np.int64
    ).astype(np.uint16 if vocab_size <= 65535 else np.uint32)

    def batch(step: int) -> tuple[Any, Any]:
        x, y = sample_batch(data, micro_batch, seq_len, 0, step, 0)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return batch


def measure_each(cands: list[Any], tgt: Target,
                 time_one: Callable[[Any, Any, str], list[float]],
                 deadline: float | None = None,
                 key: Callable[[Any], str] = lambda c: c.name) -> dict[str, float]:
    """Tokens/s (all devices) of each candidate by `key`: the fastest of the step seconds
    `time_one(torch, candidate, device)` returns, at its micro-batch x accumulation x devices.
    Candidates left when time.perf_counter() passes `deadline` are skipped."""
    import torch

    device = "cuda" if tgt.device == "cuda" and torch.cuda.is_available() else "cpu"
    out: dict[str, float] = {}
    for c in cands:
        if deadline is not None and time.perf_counter() > deadline:
            break
        seconds = min(time_one(torch, c, device))
        out[key(c)] = tokens_per_step(c.micro_batch, c.grad_accum * c.devices, c.seq_len) / seconds
    return out


def measure_throughput(
    cands: list[Candidate], ctx: PlanContext, steps: int = 3, deadline: float | None = None
) -> dict[str, float]:
    """Tokens/s of each candidate (all its devices) from `steps` timed optimizer steps after a
    warm-up, on this machine, at its micro-batch x accumulation and precision. Candidates left
    when time.perf_counter() passes `deadline` are skipped."""
    return measure_each(
        cands, ctx.target, lambda torch, c, device: _time_candidate(torch, c, ctx, device, steps),
        deadline,
    )


def _time_candidate(torch: Any, c: Candidate, ctx: PlanContext, device: str,
                    steps: int) -> list[float]:
    """Step seconds of candidate `c`: its model, optimizer and random tokens on `device`."""
    from budgetlm.model import build_model
    from budgetlm.optim import build_optimizer

    torch.manual_seed(0)
    model = build_model(model_config(c.shape, c.seq_len, c.vocab_size, ctx.family)).to(device)
    model.activation_checkpointing = c.checkpointing
    model.train()
    opt = build_optimizer(model, OptimConfig(name=ctx.optimizer, lr=1e-4))
    batch = random_batches(c.vocab_size, c.micro_batch, c.seq_len, device)
    dtype = autocast_dtype(torch, c.precision)
    return time_steps(torch, model, opt, batch, dtype, device, c.grad_accum, steps)


def spread_probes(ranked: list[Any], group: Callable[[Any], Any],
                  size: Callable[[Any], float]) -> list[Any]:
    """The best-ranked candidate and the best of each `group` at up to TIMING_PROBES groups
    spread evenly (by rank in `size`) over the groups."""
    best_per_group: dict[Any, Any] = {}
    for c in ranked:
        best_per_group.setdefault(group(c), c)
    by_size = sorted(best_per_group.values(), key=size)
    n = min(TIMING_PROBES, len(by_size))
    picks = {id(by_size[round(i * (len(by_size) - 1) / max(1, n - 1))]) for i in range(n)}
    return [ranked[0]] + [c for c in by_size if id(c) in picks and c is not ranked[0]]


@dataclass
class TimingRounds:
    """What the timing rounds need of one kind of plan.

    measure(candidates, deadline): tokens/s by key of those timed before the deadline;
    apply(measured, points): set every candidate's throughput (`apply_measured`);
    rerank(): the candidates ranked best first at the throughput applied last;
    key: what a measurement is filed under; group: candidates round 1 picks one of;
    size: the axis the measured/estimated ratio is interpolated along (log);
    estimate: a candidate's estimated tokens/s before timing."""

    measure: Callable[[list[Any], float], dict[str, float]]
    apply: Callable[[dict[str, float], list[tuple[float, float]]], None]
    rerank: Callable[[], list[Any]]
    key: Callable[[Any], str]
    group: Callable[[Any], Any]
    size: Callable[[Any], float]
    estimate: Callable[[Any], float | None]


def timed_rounds(r: TimingRounds, ranked: list[Any], k: int) -> list[str]:
    """Round 1 times one candidate per group at up to TIMING_PROBES groups spread evenly in
    size, the best-ranked included, and corrects every other candidate by the
    measured/estimated ratio interpolated in log size. Round 2 re-ranks and times the k best
    not timed yet (twice at most). Round 1 stops starting candidates after TIMING_SECONDS,
    round 2 half as much later. Returns the keys timed exactly."""
    deadline = time.perf_counter() + TIMING_SECONDS
    probes = spread_probes(ranked, r.group, r.size)
    measured = r.measure(probes, deadline)
    points = ratio_points(probes, measured, r.key, r.size, r.estimate)
    r.apply(measured, points)
    for _ in range(2):  # round 2: the best few, exactly
        todo: dict[str, Any] = {}
        for c in r.rerank():
            if c.feasible and len(todo) < k:
                todo.setdefault(r.key(c), c)
        todo = {name: c for name, c in todo.items() if name not in measured}
        if not todo:
            break
        more = r.measure(list(todo.values()), deadline + TIMING_SECONDS / 2)
        if not more:
            break
        measured.update(more)
        r.apply(measured, points)
    return sorted(measured)


def ratio_points(timed: list[Any], measured: dict[str, float], key: Callable[[Any], str],
                 size: Callable[[Any], float],
                 estimate: Callable[[Any], float | None]) -> list[tuple[float, float]]:
    """(log size, log measured/estimated) of each measured candidate, sorted: what
    `apply_measured` interpolates."""
    return sorted(
        (math.log(size(c)), math.log(measured[key(c)] / est))
        for c in timed if key(c) in measured and (est := estimate(c))
    )


def time_and_rescale(
    setups: list[Candidate], ranked: list[Candidate], ctx: PlanContext, k: int
) -> list[str]:
    """Replace estimated throughput by measured throughput (this machine, --time budgets).

    `timed_rounds` over model sizes: round 1 times one candidate per model size at up to
    TIMING_PROBES sizes spread evenly (in FLOPs per token) over the candidates, the best-ranked
    included, and corrects every other candidate by the measured/estimated ratio interpolated
    in log FLOPs per token: small models are overhead-bound, so the ratio depends on size.
    Round 2 re-ranks and times the k best that were not timed yet. Returns the names timed
    exactly.
    """

    def rerank() -> list[Candidate]:
        return sorted((finished_copy(s, ctx) for s in setups),
                      key=lambda c: rank_key(c, ctx.target.device))

    return timed_rounds(TimingRounds(
        measure=lambda cands, deadline: measure_throughput(cands, ctx, deadline=deadline),
        apply=lambda measured, points: apply_measured(setups, measured, points),
        rerank=rerank,
        key=lambda c: c.name,
        group=lambda c: c.shape,
        size=lambda c: c.flops_per_token,
        estimate=lambda c: c.estimated_tokens_per_s,
    ), ranked, k)


def apply_measured(setups: list[Any], measured: dict[str, float],
                   points: list[tuple[float, float]],
                   key: Callable[[Any], str] = lambda s: s.name,
                   size: Callable[[Any], float] = lambda s: s.flops_per_token) -> None:
    """Set each setup's throughput: measured if timed (by `key`), else the estimate x the
    measured/estimated ratio interpolated at its log `size` (always from the original estimate,
    so this can be re-applied)."""
    for s in setups:
        if s.estimated_tokens_per_s is None:
            continue
        if key(s) in measured:
            r = measured[key(s)] / s.estimated_tokens_per_s
            s.time_source = TIMED
        elif points:
            r = math.exp(laws.interpolate(math.log(size(s)), points))
            s.time_source = f"estimate x {r:.2f} (timed steps)"
        else:
            continue
        s.tokens_per_s = s.estimated_tokens_per_s * r
        if s.estimated_mfu is not None:
            s.mfu = s.estimated_mfu * r


def busy_note(tgt: Target) -> str | None:
    """A warning when other processes were competing for this machine's CPU while timing."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = os.cpu_count() or 1
    if tgt.device != "cpu" or load < cores - 0.5:
        return None
    threads = os.environ.get("OMP_NUM_THREADS")
    return (
        f"this machine was busy while timing (load average {load:.1f} on {cores} cores): "
        "the timed step times reflect that, and multi-threaded torch slows down sharply "
        "under contention" + ("" if threads else "; OMP_NUM_THREADS=1 makes timings steadier")
    )
