"""Pricing one candidate: memory fit, throughput, tokens in the budget, batch, lr and loss.

`price_candidates` fits (shape, sequence length) in memory in each precision and prices its
throughput; `finish_candidate` spends the budget on it: tokens, the global batch and learning
rate from the DeepSeek LLM 2024 priors (under µP the lr of `laws.mup_lr_prior` instead), and the
predicted loss of the plan's law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from budgetlm import laws
from budgetlm.config import ModelConfig, OptimConfig, RunConfig, TrainConfig, tokens_per_step
from budgetlm.errors import UserError
from budgetlm.estimate import (
    count_params,
    memory_breakdown,
    memory_phase_totals,
    model_flops_per_token,
)
from budgetlm.laws.vocabulary import optimal_vocab
from budgetlm.plan.arch import inactive_params, model_config
from budgetlm.plan.budget import Target
from budgetlm.plan.data_limited import capped_tokens
from budgetlm.plan.files import CandidateRecord
from budgetlm.plan.ladder import Shape
from budgetlm.plan.precision import FP8, compute_time, estimate_only, estimator_precision

MIN_STEPS = 10  # fewer optimizer steps than this is not a training run
# Cap the prior batch so that a short run still takes this many optimizer steps: DeepSeek's
# fits come from runs of thousands of steps, nanoGPT's CPU recipe takes 2000; at equal tokens a
# 4x128 character model ends far worse after 384 steps of 4096 tokens than after 2048 of 768.
PRIOR_MIN_STEPS = 2000
MIN_BATCH_SEQS = 8  # ... but the steps floor never shrinks a batch below this many sequences
CPU_MICRO_BATCH_CAP = 64  # larger micro-batches do not raise CPU throughput
GPU_MICRO_BATCH_CAP = 1024
TIME_EVALS = 8  # evaluations in a --time run (time-driven)
TIME_EVAL_SHARE = 0.03  # share of a --time budget spent evaluating
PRECISION_ORDER = {"cuda": ("bf16", "fp16", "fp32"), "cpu": ("fp32", "bf16", "fp16"),
                   "none": ("bf16",)}


@dataclass
class Candidate:
    """One configuration priced against the budget."""

    shape: Shape
    seq_len: int
    precision: str
    vocab_size: int
    params: int
    non_embedding_params: int
    flops_per_token: float  # model FLOPs (forward + backward), no recompute
    micro_batch: int
    grad_accum: int  # micro-steps per device per optimizer step
    devices: int
    checkpointing: bool
    memory_bytes: int | None
    tokens_per_s: float | None  # all devices together
    time_source: str
    tokens: int = 0
    steps: int = 0
    batch_tokens: int = 0
    lr: float = 0.0
    epochs: float = 1.0
    effective_tokens: float = 0.0
    seconds: float | None = None
    mfu: float | None = None
    loss: float = math.inf
    loss_law: float = math.inf
    loss_lo: float | None = None  # interval of a fitted law (its level), context heuristic incl.
    loss_hi: float | None = None
    context_adjustment: float = 0.0
    extrapolated: bool = False
    eval_tokens: int = 65536
    feasible: bool = True
    reason: str = ""
    memory_model: Any = field(default=None, repr=False)
    estimated_tokens_per_s: float | None = None  # before timing real steps
    family: str = "gpt"
    estimated_mfu: float | None = None
    active_params: int = 0  # parameters a token passes through (MoE: top-k experts); 0: params
    active_non_embedding_params: int = 0
    # several GPUs with an interconnect (`plan.parallel`): train.parallel (ddp, fsdp or hsdp)
    # and train.reshard_after_forward; None on one GPU or when no communication is priced
    parallel: str | None = None
    reshard_after_forward: bool | None = None
    step_model: Any = field(default=None, repr=False)  # a step's price at (micro-batch, accum)
    step: Any = field(default=None, repr=False)  # that price at this candidate's batch
    capped: bool = False  # its tokens held at the repetition cap (`plan.data_limited`)
    vocab_chosen: bool = False  # vocab_size from the vocabulary law (the exported BPE's size)
    parametrization: str = "standard"  # or mup: its lr is then `laws.mup_lr_prior`'s

    def __post_init__(self) -> None:
        if not self.active_params:
            self.active_params = self.params
            self.active_non_embedding_params = self.non_embedding_params

    @property
    def estimate_only(self) -> bool:
        """Priced, but the trainer cannot run it (fp8): never the exported candidate."""
        return estimate_only(self.precision)

    @property
    def model(self) -> ModelConfig:
        """The candidate's model config."""
        return model_config(self.shape, self.seq_len, self.vocab_size, self.family)

    @property
    def name(self) -> str:
        return f"{self.shape.name}-T{self.seq_len}-{self.precision}"

    @property
    def flops(self) -> float:
        return self.flops_per_token * self.tokens

    def to_dict(self) -> dict[str, Any]:
        """The candidate as plan.json holds it (`CandidateRecord`)."""
        return CandidateRecord.of(self).model_dump()


@dataclass
class PlanContext:
    """What pricing a candidate needs besides its shape: the target, the law, the data."""

    target: Target
    law: laws.LossLaw
    unique: int | None  # unique training tokens (None: unlimited)
    vocab: int
    val_tokens: int | None
    optimizer: str
    family: str
    ref_seq: int | None  # the sequence length the law's losses are for (context heuristic)
    arch: str = "gpt2"  # the recipe candidates are built with (`plan.arch`)
    max_epochs: float | None = None  # the repetition cap (`plan.data_limited`); None: none
    max_epochs_why: str = ""  # where that cap comes from, in words
    max_params: float | None = None  # a fit's size cap (`plan.extrapolation`); None: none
    choose_vocab: bool = False  # a BPE's size per candidate (`laws.vocabulary`), not `vocab`
    parametrization: str = "standard"  # standard or mup (the lr prior and the exported model)
    # (precision, layout) -> (ladder size, sequence length) of the models whose micro-batch 1
    # did not fit one GPU in that layout (`plan.parallel`): a larger model at a longer
    # sequence does not fit either
    no_fit: dict[tuple[str, Any], list[tuple[int, int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class AffineMemory:
    """memory(mb) = the largest over the phases of a step of at1 + (mb - 1) · per_sequence
    bytes: each phase's memory is affine in the micro-batch, their maximum is not."""

    lines: tuple[tuple[int, int], ...]  # (at1, per_sequence) of each phase

    def __call__(self, mb: int) -> int:
        return max(at1 + (mb - 1) * per_sequence for at1, per_sequence in self.lines)

    def largest_pow2(self, limit: float, cap: int) -> int:
        """The largest power-of-two micro-batch up to `cap` whose memory is within `limit`."""
        mb = 1
        while mb * 2 <= cap and self(mb * 2) <= limit:
            mb *= 2
        return mb


def estimator_config(m: ModelConfig, precision: str, micro_batch: int, checkpointing: bool,
                     optimizer: str, device: str) -> RunConfig:
    """A RunConfig carrying what the estimator reads for memory and step time."""
    train = TrainConfig(
        precision=precision, micro_batch=micro_batch, grad_accum=1,
        activation_checkpointing=checkpointing,
        device=device if device in ("cpu", "cuda") else "auto",
    )
    return RunConfig(model=m, train=train, optim=OptimConfig(name=optimizer))


def price_candidates(shape: Shape, seq_len: int, precisions: list[str],
                     ctx: PlanContext) -> list[Candidate]:
    """Memory fit and throughput of (shape, T) in each precision; tokens etc. come in
    `finish_candidate`.

    Memory is affine in the micro-batch (weights, gradients and optimizer state are fixed;
    activations and logits grow with it), so two estimator calls give the largest micro-batch
    that fits, and the memory of any other.
    """
    return price_each(shape, seq_len, precisions, ctx, _price_in)


def price_each(shape: Shape, seq_len: int, precisions: list[str], ctx: PlanContext,
               price_one: Any) -> list[Candidate]:
    """`price_one(shape, model, precision, ctx)` for each precision of (shape, T); a precision it
    answers None for (no peak for it on this GPU) is left out."""
    if ctx.choose_vocab:
        ctx = replace(ctx, vocab=candidate_vocab(shape, seq_len, ctx))
    m = model_config(shape, seq_len, ctx.vocab, ctx.family)
    out: list[Candidate] = []
    for precision in precisions:
        c = price_one(shape, m, precision, ctx)
        if c is not None:
            c.vocab_chosen = ctx.choose_vocab
            out.append(c)
    return out


def candidate_vocab(shape: Shape, seq_len: int, ctx: PlanContext) -> int:
    """The compute-optimal BPE vocabulary of `shape` (Tao et al. 2024: from its non-vocabulary
    parameters and width; `laws.vocabulary`)."""
    n_nv = count_params(model_config(shape, seq_len, ctx.vocab, ctx.family)).non_embedding
    return optimal_vocab(n_nv, shape.d_model)


def affine_memory(base: RunConfig, precision: str | None, checkpointing: bool | None,
                  device: str) -> AffineMemory:
    """The estimator's memory of `base` as a function of the micro-batch (two calls at 1 and 2);
    precision and checkpointing None take base's own."""
    at1, at2 = (memory_phase_totals(memory_breakdown(base, micro_batch=mb, precision=precision,
                                                     checkpointing=checkpointing, device=device),
                                    device) for mb in (1, 2))
    return AffineMemory(tuple((at1[p], at2[p] - at1[p]) for p in at1))


def model_sizes(m: ModelConfig) -> dict[str, Any]:
    """A candidate's size fields for model `m`: parameters (total, non-embedding, active),
    model FLOPs per token and family."""
    pc = count_params(m)
    inactive = inactive_params(m)
    return {"params": pc.total, "non_embedding_params": pc.non_embedding,
            "flops_per_token": model_flops_per_token(m), "active_params": pc.total - inactive,
            "active_non_embedding_params": pc.non_embedding - inactive, "family": m.family}


def _price_in(shape: Shape, m: ModelConfig, precision: str,
              ctx: PlanContext) -> Candidate | None:
    """The candidate of model `m` in `precision` (None: no peak for it on this device)."""
    tgt = ctx.target
    sizes = model_sizes(m)
    cap = micro_batch_cap(tgt)
    dev = tgt.device if tgt.device in ("cpu", "cuda") else "cuda"
    prec = estimator_precision(precision)
    base = estimator_config(m, prec, 1, False, ctx.optimizer, dev)
    mem, ckpt, mb = affine_memory(base, prec, False, dev), False, cap
    if tgt.memory_limit is not None:
        if mem(1) > tgt.memory_limit:
            mem_ck = affine_memory(base, prec, True, dev)
            if mem_ck(1) <= tgt.memory_limit or not tgt.memory_strict:
                mem, ckpt = mem_ck, True
            else:
                return Candidate(
                    shape, m.seq_len, precision, ctx.vocab, micro_batch=1, grad_accum=1,
                    devices=tgt.devices, checkpointing=True, memory_bytes=mem_ck(1),
                    tokens_per_s=None, time_source="", feasible=False, **sizes,
                    reason=f"does not fit: {mem_ck(1) / 2**30:.1f} GiB at micro-batch 1 "
                           f"with checkpointing > {tgt.memory_limit / 2**30:.1f} GiB",
                )
        mb = mem.largest_pow2(tgt.memory_limit, cap)
    rate, source, mfu = None, "", None
    if tgt.profile is not None:
        cfg = estimator_config(m, prec, mb, ckpt, ctx.optimizer, dev)
        st = compute_time(cfg, tgt.profile, mb, precision)
        if st is None:
            return None  # no peak for this precision on this device
        rate = tokens_per_step(mb, tgt.devices, m.seq_len) / st.seconds  # all devices
        source, mfu = st.source, st.mfu
    cand = Candidate(
        shape, m.seq_len, precision, ctx.vocab, micro_batch=mb, grad_accum=1,
        devices=tgt.devices, checkpointing=ckpt, memory_bytes=mem(mb), tokens_per_s=rate,
        time_source=source, **sizes,
    )
    cand.mfu = cand.estimated_mfu = mfu
    cand.estimated_tokens_per_s = rate
    cand.memory_model = mem
    return cand


def micro_batch_cap(tgt: Target) -> int:
    """The largest micro-batch priced on `tgt`'s device."""
    return CPU_MICRO_BATCH_CAP if tgt.device == "cpu" else GPU_MICRO_BATCH_CAP


def finish_candidate(c: Candidate, ctx: PlanContext) -> Candidate:
    """Tokens in the budget, batch and lr from the priors, predicted loss (in place)."""
    tgt = ctx.target
    if not c.feasible and c.reason.startswith("does not fit"):
        return c
    if c.step_model is not None:
        _settle_step(c, ctx)
    tokens, eval_overhead = _tokens_in_budget(c, ctx)
    held = capped_tokens(tokens, ctx)
    c.capped = held < tokens
    if c.capped:  # the corpus, not the budget, ends the run
        tokens = held
    c.tokens = int(tokens)
    compute = c.flops_per_token * tokens
    _batch_from_prior(c, tokens, compute, tgt)
    c.steps = int(tokens // c.batch_tokens)
    if c.steps < MIN_STEPS:
        c.feasible = False
        c.reason = (f"budget too small: {c.tokens:,} tokens is {c.steps} steps of "
                    f"{c.batch_tokens:,} tokens (needs {MIN_STEPS})")
        return c
    if tgt.kind != "time":
        c.tokens = c.steps * c.batch_tokens  # a token cap: whole steps
    c.parametrization = ctx.parametrization
    c.lr = prior_lr(compute, ctx.parametrization)
    if c.tokens_per_s:
        c.seconds = c.tokens / c.tokens_per_s + eval_overhead
    if c.memory_model is not None:
        c.memory_bytes = c.memory_model(c.micro_batch)
    _predict_loss(c, ctx)
    return c


def prior_lr(compute: float, parametrization: str) -> float:
    """The peak AdamW lr of a run of `compute` FLOPs: DeepSeek LLM 2024's prior under the
    standard parametrization (`laws.lr_prior`), µP's base lr under mup (`laws.mup_lr_prior`:
    the same at every width and compute)."""
    if parametrization == "mup":
        return laws.mup_lr_prior()[0]
    return laws.lr_prior(max(compute, 1.0))


def finished_copy(c: Candidate, ctx: PlanContext) -> Candidate:
    """`finish_candidate` on a copy of `c` (`c` stays as priced, to be finished again)."""
    return finish_candidate(replace(c), ctx)


def _tokens_in_budget(c: Candidate, ctx: PlanContext) -> tuple[float, float]:
    """(training tokens the budget buys, seconds of evaluation inside a --time budget)."""
    tgt = ctx.target
    if tgt.kind == "flops":
        return tgt.flops / c.flops_per_token, 0.0  # type: ignore[operator]
    assert c.tokens_per_s is not None and tgt.wall_seconds is not None
    tokens = c.tokens_per_s * tgt.wall_seconds
    if tgt.kind != "time":
        return tokens, 0.0
    # evaluation (forward only, ~1/3 of a training token) is inside the wall-clock cap
    c.eval_tokens = int(ctx.law.extra.get("eval_tokens") or 0) or time_budget_eval_tokens(
        tokens, c.seq_len, ctx.val_tokens)  # a fit's predictions are on its pilots' windows
    eval_overhead = (TIME_EVALS - 1) * c.eval_tokens / 3 / c.tokens_per_s
    return c.tokens_per_s * max(0.0, tgt.wall_seconds - eval_overhead), eval_overhead


def _settle_step(c: Candidate, ctx: PlanContext) -> None:
    """Several GPUs: the step priced (`c.step_model`) at the batch the budget buys, which
    depends on the tokens, which depend on the step time: a few rounds until the batch holds.
    A timed correction of the rate (tokens_per_s / estimated_tokens_per_s) is kept."""
    cap = c.micro_batch  # the largest that fits, as priced
    ratio = 1.0
    if c.tokens_per_s and c.estimated_tokens_per_s:
        ratio = c.tokens_per_s / c.estimated_tokens_per_s
    split = None
    for _ in range(3):
        tokens, _ = _tokens_in_budget(c, ctx)
        now = batch_split(tokens, c.flops_per_token * tokens, c.seq_len, c.devices, cap,
                          exact_batch(ctx.target))
        if now == split:
            break
        split = now
        if c.step is None or (c.step.micro_batch, c.step.accum) != now:
            c.step = c.step_model.price(*now)
        c.tokens_per_s = c.step.tokens_per_s * ratio


def exact_batch(tgt: Target) -> bool:
    """Whether a batch that fits one micro-batch is taken exactly (else a power of two)."""
    return tgt.device == "cpu" or tgt.kind == "time"


def prior_batch_seqs(tokens: float, compute: float, seq_len: int) -> int:
    """Sequences of the global batch: the DeepSeek prior for `compute`, shrunk (not below
    MIN_BATCH_SEQS) to give `tokens` at least PRIOR_MIN_STEPS steps."""
    seqs = max(1, round(laws.deepseek_batch_tokens(max(compute, 1.0)) / seq_len))
    return min(seqs, max(MIN_BATCH_SEQS, int(tokens // (seq_len * PRIOR_MIN_STEPS))))


def batch_split(tokens: float, compute: float, seq_len: int, devices: int, mb_cap: int,
                exact: bool) -> tuple[int, int]:
    """(micro-batch, accumulation per device) of the prior's batch (`prior_batch_seqs`) over
    `devices`, micro-batches up to `mb_cap`: a power of two, or exactly the per-device batch
    when `exact` and it fits one micro-batch."""
    seqs = prior_batch_seqs(tokens, compute, seq_len)
    per_device = max(1, math.ceil(seqs / devices))
    if per_device <= mb_cap and exact:
        mb = per_device  # exactly the prior's batch in one micro-batch
    else:
        mb = min(mb_cap, 2 ** int(math.log2(per_device)))
    return mb, max(1, round(seqs / (mb * devices)))


def _batch_from_prior(c: Candidate, tokens: float, compute: float, tgt: Target) -> None:
    """Global batch: the DeepSeek prior, shrunk (not below MIN_BATCH_SEQS) to give at least
    PRIOR_MIN_STEPS steps; whole sequences, as micro-batch x accumulation x devices."""
    mb, accum = batch_split(tokens, compute, c.seq_len, c.devices, c.micro_batch,
                            exact_batch(tgt))
    c.micro_batch, c.grad_accum = mb, accum
    c.batch_tokens = tokens_per_step(mb, accum * c.devices, c.seq_len)


def _predict_loss(c: Candidate, ctx: PlanContext) -> None:
    """The law's loss at (N, D) with repeated epochs priced, plus the context heuristic; N of
    an MoE by `arch.MOE_LOSS_RULE` (its active parameters)."""
    law = ctx.law
    n = law.n_of(c.active_params, c.active_non_embedding_params)
    c.epochs = laws.epochs(c.tokens, ctx.unique)
    c.effective_tokens = (
        laws.effective_data(c.tokens, ctx.unique) if ctx.unique else float(c.tokens)
    )
    c.loss_law = law.loss_repeated(n, c.tokens, ctx.unique)
    c.context_adjustment = 0.0
    if ctx.ref_seq:
        c.context_adjustment = (laws.context_excess(c.seq_len)
                                - laws.context_excess(ctx.ref_seq))
    c.loss = c.loss_law + c.context_adjustment
    if law.has_interval:
        _, lo, hi = law.interval(n, c.tokens, ctx.unique)
        c.loss_lo, c.loss_hi = lo + c.context_adjustment, hi + c.context_adjustment
    c.extrapolated = not law.in_range(n, c.tokens)


def time_budget_eval_tokens(tokens: float, seq_len: int, val_tokens: int | None) -> int:
    """Tokens per evaluation of a --time run: about TIME_EVAL_SHARE of the budget in total."""
    e = TIME_EVAL_SHARE * 3 * tokens / (TIME_EVALS - 1)
    return whole_eval_windows(min(max(e, 8 * seq_len), 65536), seq_len, val_tokens)


def whole_eval_windows(tokens: float, seq_len: int, val_tokens: int | None) -> int:
    """`tokens` of validation cut to whole windows of `seq_len` that fit in the validation split
    (`val_tokens`; None: no limit), at least one window."""
    if val_tokens:
        tokens = min(tokens, max(seq_len, val_tokens - 1))
    return max(seq_len, int(tokens // seq_len) * seq_len)


def precisions_for(tgt: Target, wanted: list[str] | None) -> list[str]:
    """The precisions to price on `tgt`: those asked for (with a peak), else those with a peak;
    fp16 only where it is measurably faster than bf16. fp8 only when asked for, and with the
    device's first runnable precision besides when no runnable one is asked for (an fp8
    candidate is an estimate, never the exported one)."""
    order = PRECISION_ORDER[tgt.device]
    if wanted and FP8 in wanted:
        if tgt.profile is None or not tgt.profile.peak(FP8):
            raise UserError(f"--precision fp8: {tgt.name} has no fp8 peak in its datasheet row")
        if all(estimate_only(p) for p in wanted):
            runnable = [p for p in order if tgt.profile.peak(p)][:1]
            wanted = [*runnable, *wanted]
    if tgt.profile is None:
        return list(wanted or order[:1])
    have = [p for p in (wanted or order) if tgt.profile.peak(p)]
    if wanted:
        missing = [p for p in wanted if p not in have]
        if missing and not have:
            raise UserError(f"--precision: no peak FLOP/s for {', '.join(missing)} on {tgt.name}")
        return have
    out = []
    for p in have:
        if p == "fp16" and "bf16" in have:
            # fp16 needs a GradScaler; keep it only where it is measurably faster than bf16
            if (tgt.profile.peak("fp16") or 0) <= 1.05 * (tgt.profile.peak("bf16") or 0):
                continue
        out.append(p)
    return out


def seq_lens_for(tgt: Target, n_params: float, wanted: list[int] | None) -> list[int]:
    """Sequence lengths to price for a model of `n_params` (those asked for, if any)."""
    if wanted:
        return list(wanted)
    if tgt.device == "cpu":
        return [64, 128, 256]
    if n_params < 3e7:
        return [256, 512, 1024]
    return [1024, 2048]


def rough_compute(tgt: Target, precisions: list[str]) -> float:
    """Model FLOPs the budget buys, roughly (to centre the ladder on the optimum)."""
    if tgt.kind == "flops":
        return float(tgt.flops)  # type: ignore[arg-type]
    assert tgt.profile is not None and tgt.wall_seconds is not None
    peak = max((tgt.profile.peak(p) or 0.0) for p in precisions)
    eff = 0.3 if tgt.device == "cpu" else 0.4
    return max(tgt.wall_seconds * tgt.devices * peak * eff, 1.0)


def rank_key(c: Candidate, device: str) -> tuple:
    """Lowest predicted loss first; then the device's preferred precision, time, memory."""
    order = PRECISION_ORDER.get(device, ("bf16",))
    pref = order.index(c.precision) if c.precision in order else len(order)
    return (round(c.loss, 6), pref, c.seconds or 0.0, c.memory_bytes or 0)
