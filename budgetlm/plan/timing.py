"""Timing real steps of candidates on this machine, and rescaling the others' estimates.

Only --time budgets on this machine, when asked: measuring imports torch (inside the functions
here; importing this module does not).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from budgetlm import laws
from budgetlm.config import OptimConfig, tokens_per_step
from budgetlm.plan.budget import Target
from budgetlm.plan.ladder import Shape
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


def measure_throughput(
    cands: list[Candidate], ctx: PlanContext, steps: int = 3, deadline: float | None = None
) -> dict[str, float]:
    """Tokens/s of each candidate (all its devices) from `steps` timed optimizer steps after a
    warm-up, on this machine, at its micro-batch x accumulation and precision. Candidates left
    when time.perf_counter() passes `deadline` are skipped."""
    import torch

    device = "cuda" if ctx.target.device == "cuda" and torch.cuda.is_available() else "cpu"
    out: dict[str, float] = {}
    for c in cands:
        if deadline is not None and time.perf_counter() > deadline:
            break
        seconds = min(_time_candidate(torch, c, ctx, device, steps))
        out[c.name] = tokens_per_step(c.micro_batch, c.grad_accum * c.devices, c.seq_len) / seconds
    return out


def _time_candidate(torch: Any, c: Candidate, ctx: PlanContext, device: str,
                    steps: int) -> list[float]:
    """Step seconds of candidate `c`: its model, optimizer and random tokens on `device`."""
    import numpy as np

    from budgetlm.data import sample_batch
    from budgetlm.model import build_model
    from budgetlm.optim import build_optimizer

    torch.manual_seed(0)
    model = build_model(model_config(c.shape, c.seq_len, c.vocab_size, ctx.family)).to(device)
    model.activation_checkpointing = c.checkpointing
    model.train()
    opt = build_optimizer(model, OptimConfig(name=ctx.optimizer, lr=1e-4))
    data = np.random.default_rng(0).integers(
        0, c.vocab_size, size=max(100_000, 4 * c.micro_batch * c.seq_len), dtype=np.int64
    ).astype(np.uint16 if c.vocab_size <= 65535 else np.uint32)

    def batch(step: int) -> tuple[Any, Any]:
        x, y = sample_batch(data, c.micro_batch, c.seq_len, 0, step, 0)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(c.precision)
    return time_steps(torch, model, opt, batch, dtype, device, c.grad_accum, steps)


def _probes(ranked: list[Candidate]) -> list[Candidate]:
    """The best-ranked candidate and one per model size at up to TIMING_PROBES sizes spread
    evenly in FLOPs per token."""
    best_per_shape: dict[Shape, Candidate] = {}
    for c in ranked:
        best_per_shape.setdefault(c.shape, c)
    by_size = sorted(best_per_shape.values(), key=lambda c: c.flops_per_token)
    n = min(TIMING_PROBES, len(by_size))
    picks = {by_size[round(i * (len(by_size) - 1) / max(1, n - 1))].name for i in range(n)}
    return [ranked[0]] + [c for c in by_size if c.name in picks and c is not ranked[0]]


def time_and_rescale(
    setups: list[Candidate], ranked: list[Candidate], ctx: PlanContext, k: int
) -> list[str]:
    """Replace estimated throughput by measured throughput (this machine, --time budgets).

    Round 1 times one candidate per model size at up to TIMING_PROBES sizes spread evenly
    (in FLOPs per token) over the candidates, the best-ranked included, and corrects every
    other candidate by the measured/estimated ratio interpolated in log FLOPs per token: small
    models are overhead-bound, so the ratio depends on size. Round 2 re-ranks and times the k
    best that were not timed yet. Returns the names timed exactly.
    """
    deadline = time.perf_counter() + TIMING_SECONDS
    probes = _probes(ranked)
    measured = measure_throughput(probes, ctx, deadline=deadline)
    est = {s.name: s.estimated_tokens_per_s for s in setups}
    points = sorted(
        (math.log(c.flops_per_token), math.log(measured[c.name] / est[c.name]))
        for c in probes if c.name in measured and est.get(c.name)
    )
    apply_measured(setups, measured, points)
    for _ in range(2):  # round 2: the best few, exactly
        ranked2 = sorted((finished_copy(s, ctx) for s in setups),
                         key=lambda c: rank_key(c, ctx.target.device))
        todo = [c for c in ranked2 if c.feasible][:k]
        todo = [c for c in todo if c.name not in measured]
        if not todo:
            break
        more = measure_throughput(todo, ctx, deadline=deadline + TIMING_SECONDS / 2)
        if not more:
            break
        measured.update(more)
        apply_measured(setups, measured, points)
    return sorted(measured)


def apply_measured(setups: list[Candidate], measured: dict[str, float],
                   points: list[tuple[float, float]]) -> None:
    """Set each setup's throughput: measured if timed, else the estimate x the interpolated
    measured/estimated ratio (always from the original estimate, so this can be re-applied)."""
    for s in setups:
        if s.estimated_tokens_per_s is None:
            continue
        if s.name in measured:
            r = measured[s.name] / s.estimated_tokens_per_s
            s.time_source = TIMED
        elif points:
            r = math.exp(laws.interpolate(math.log(s.flops_per_token), points))
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
