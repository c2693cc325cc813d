"""Planning a fine-tune on a budget: full or LoRA, which rank, precision, batch, epochs.

`plan_finetune(budget, PATH, data)` prices fine-tunes of the pretrained model at PATH (a Hugging
Face model directory, or a budgetlm run) on a corpus, in the same steps as the pretraining
planner, with the estimator as the one source of memory, FLOPs and step time:

1. Candidates: full fine-tuning and LoRA (Hu et al. 2021) at ranks `LORA_RANKS` on every Linear
   of the blocks (Biderman et al. 2024 §4.6 and Schulman et al. 2025 both find all layers, the
   MLPs above all, matter most) x precision x sequence length; QLoRA (Dettmers et al. 2023, nf4
   frozen weights) as an estimate only: the trainer does not quantize.
2. Feasibility: the largest power-of-two micro-batch that fits in memory (`memory_breakdown` of
   a RunConfig with its `finetune` section: frozen weights, adapter gradients and optimizer
   state), activation checkpointing only when micro-batch 1 does not fit; throughput from
   `step_time` (the fine-tune's training FLOPs: no weight gradients for frozen matrices); for
   --time budgets on this machine, real steps of the best few timed (`finetune_timing`) and the
   others' estimates rescaled by the measured/estimated ratio.
3. Epochs over the fine-tuning data the budget buys, at most `MAX_EPOCHS` (Muennighoff et al.
   2023: up to ~4 epochs repeated data is worth about as much as new data; beyond, little), with
   rows at 1, 2 and 4 epochs so shorter runs are priced too.
4. Ranking (`rank_key`): there is no scaling law for fine-tuning loss, so no loss is predicted.
   Candidates are ranked by the tokens they can put to use (`useful_tokens`): the effective
   tokens of their epochs (Muennighoff et al. 2023, eq. 5), times the share of the data the
   trained parameters can hold: 2 bits per trained parameter (Allen-Zhu & Li 2024, "Physics of
   Language Models 3.3") against `DATA_BITS_PER_TOKEN` per unique token, the capacity argument of
   Schulman et al. 2025 ("LoRA Without Regret": LoRA tracks full fine-tuning until the data
   exceeds the adapter's capacity, then falls behind). Ties (everything reaches the epoch cap
   with room to hold the data) go to LoRA, at the highest rank (Biderman et al. 2024: LoRA
   forgets less of the base model; higher ranks close more of the gap to full fine-tuning), then
   the device's preferred precision, time and memory. So full fine-tuning ranks first when it
   fits and the data is larger than the adapters can hold, LoRA otherwise.
5. Recipe: AdamW and a WSD schedule to zero as the pretraining recipe (`recipe`); learning
   rates: full fine-tuning at `FULL_LR_FRACTION` of the pretraining peak (Llama 2 7B: pretrained
   at 3e-4, Touvron et al. 2023; fully fine-tuned best at 1e-5 to 2e-5, Biderman et al. 2024's
   sweeps, Alpaca's 2e-5), LoRA at `LORA_LR_MULTIPLIER` times that (Schulman et al. 2025: LoRA's
   optimal lr is ~10x full fine-tuning's, about independent of rank with alpha fixed at 32;
   Biderman et al. 2024, App. B: "LoRA LRs should be an order of magnitude higher"); early
   stopping on validation loss (`PATIENCE` evaluations) for runs of more than one epoch, with
   `EVALS_PER_EPOCH` evaluations per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from budgetlm import laws
from budgetlm.config import FinetuneConfig, LoraConfig, ModelConfig, RunConfig, tokens_per_step
from budgetlm.errors import UserError
from budgetlm.estimate import (
    count_params,
    lora_targets,
    step_time,
    trainable_count,
    training_flops_per_token,
)
from budgetlm.plan.budget import Target
from budgetlm.plan.finetune_base import PretrainedBase
from budgetlm.plan.pareto import non_dominated
from budgetlm.plan.pricing import (
    CPU_MICRO_BATCH_CAP,
    GPU_MICRO_BATCH_CAP,
    MIN_STEPS,
    PRECISION_ORDER,
    AffineMemory,
    affine_memory,
    whole_eval_windows,
)
from budgetlm.plan.pricing import estimator_config as pricing_config

LORA_RANKS = (8, 16, 64, 256)  # ranks priced (those at most half the narrowest adapted Linear)
QLORA_RANK = 64  # QLoRA's own setting (Dettmers et al. 2023: r=64 on every Linear)
LORA_ALPHA = 32.0  # Schulman et al. 2025: alpha 32 makes the best lr about independent of rank
LORA_LR_MULTIPLIER = 10.0  # LoRA's best lr / full fine-tuning's (Schulman et al. 2025)
FULL_LR_FRACTION = 0.05  # full fine-tuning lr / pretraining peak lr (Llama 2 7B: 1.5e-5 / 3e-4)
MAX_EPOCHS = 4.0  # Muennighoff et al. 2023: repeats beyond ~4 epochs are worth little
EPOCH_CHOICES = (1.0, 2.0, 4.0)
# Global batch in sequences, kept small: LoRA falls behind full fine-tuning as the batch grows
# (Schulman et al. 2025); smaller still for short runs (MIN_FT_STEPS).
BATCH_SEQS = 32
MIN_FT_STEPS = 100  # a fine-tune shorter than this many steps gets a smaller batch
EVALS_PER_EPOCH = 4
MIN_EVALS, MAX_EVALS = 8, 40
PATIENCE = 3  # evaluations without a new best before a multi-epoch fine-tune stops
EVAL_TOKENS = 65536  # validation tokens per evaluation (the whole split when it is smaller)
ADAPTER_BITS_PER_PARAM = 2.0  # knowledge a trained parameter holds (Allen-Zhu & Li 2024)
# What a token of fine-tuning data teaches that the base model does not know yet, in bits: an
# assumption, not a measurement (a base model's loss on new text is a few bits per token, and
# only part of it is learnable); it sets where "the data is large for this adapter" begins.
DATA_BITS_PER_TOKEN = 1.0
FINETUNE_SEQ_LEN = {"cpu": 128, "cuda": 2048, "none": 2048}
# Rounds of finding the most epochs a --time budget reaches at the throughput of the batch they
# run at (the batch shrinks for short runs): the batch takes at most one power of two per round.
REACH_ROUNDS = 8


@dataclass(frozen=True)
class Method:
    """What trains: every weight (full) or rank-`rank` adapters, over 4-bit frozen weights when
    `quantize` is nf4 (estimate only)."""

    name: str  # "full" | "lora"
    rank: int = 0
    quantize: str = "none"

    @property
    def label(self) -> str:
        if self.name == "full":
            return "full"
        return f"{'qlora' if self.quantize == 'nf4' else 'lora'}-r{self.rank}"

    @property
    def estimate_only(self) -> bool:
        """The trainer cannot run it (nf4 frozen weights are an estimate only)."""
        return self.quantize != "none"

    def finetune(self) -> FinetuneConfig:
        if self.name == "full":
            return FinetuneConfig()
        return FinetuneConfig(method="lora", quantize=self.quantize,  # type: ignore[arg-type]
                              lora=LoraConfig(rank=self.rank, alpha=LORA_ALPHA))


@dataclass
class FinetuneContext:
    """What pricing a fine-tune needs besides the method: target, base model, data, recipe."""

    target: Target
    base: PretrainedBase
    unique: int  # unique training tokens of the fine-tuning data
    val_tokens: int
    optimizer: str
    lr_full: float
    lr_source: str


@dataclass
class FinetuneCandidate:
    """One fine-tune priced against the budget (the fields `recipe` reads share their names
    with `pricing.Candidate`'s: precision, micro_batch, grad_accum, devices, checkpointing,
    steps, tokens, batch_tokens, lr, eval_tokens)."""

    method: Method
    seq_len: int
    precision: str
    params: int
    trainable_params: int
    flops_per_token: float  # training FLOPs per token (forward + backward, no recompute)
    eval_cost: float  # an evaluated token's FLOPs / a trained token's (forward only)
    micro_batch: int
    checkpointing: bool
    memory_bytes: int | None
    tokens_per_s: float | None
    time_source: str
    devices: int = 1
    grad_accum: int = 1
    mfu: float | None = None
    epochs: float = 0.0
    tokens: int = 0
    steps: int = 0
    batch_tokens: int = 0
    lr: float = 0.0
    seconds: float | None = None
    eval_tokens: int = EVAL_TOKENS
    evals: int = MIN_EVALS
    capped: bool = False  # the budget reaches more than these epochs: a token cap ends the run
    useful_tokens: float = 0.0
    capacity_tokens: float = 0.0
    feasible: bool = True
    reason: str = ""
    memory_model: AffineMemory | None = field(default=None, repr=False)
    estimated_tokens_per_s: float | None = None  # before timing real steps
    estimated_mfu: float | None = None
    # the data-parallel layout `recipe.train_config` exports (pretraining's `Candidate`): a
    # fine-tune plan prices no communication, so the trainer's default
    parallel: str | None = None
    reshard_after_forward: bool | None = None

    @property
    def estimate_only(self) -> bool:
        return self.method.estimate_only

    @property
    def name(self) -> str:
        return f"{self.setup_name}-ep{self.epochs:.3g}"

    @property
    def setup_name(self) -> str:
        """What is fine-tuned how: method, context, precision, checkpointing."""
        ck = "+ckpt" if self.checkpointing else ""
        return f"{self.method.label}-T{self.seq_len}-{self.precision}{ck}"

    @property
    def step_name(self) -> str:
        """What an optimizer step runs (its throughput does not depend on the epochs): the
        setup at its micro-batch x accumulation."""
        return f"{self.setup_name}-mb{self.micro_batch}x{self.grad_accum}"

    @property
    def micro_step_flops(self) -> float:
        """Training FLOPs of one micro-step (a small model's step overhead weighs less the
        more work a micro-step does)."""
        return self.flops_per_token * self.micro_batch * self.seq_len

    @property
    def flops(self) -> float:
        return self.flops_per_token * self.tokens


def methods_for(model: ModelConfig, precisions: list[str]) -> list[tuple[Method, str]]:
    """(method, precision) pairs to price: full and LoRA in each precision, LoRA at the ranks of
    at most half the narrowest adapted Linear (a larger rank trains as many parameters as the
    matrix), QLoRA in bf16 (its compute dtype) when bf16 is priced."""
    narrowest = min(min(t.d_in, t.d_out) for t in lora_targets(model, LoraConfig()))
    ranks = [r for r in LORA_RANKS if 2 * r <= narrowest] or [max(1, narrowest // 2)]
    out = []
    for p in precisions:
        out.append((Method("full"), p))
        out += [(Method("lora", r), p) for r in ranks]
    if "bf16" in precisions and 2 * QLORA_RANK <= narrowest:
        out.append((Method("lora", QLORA_RANK, "nf4"), "bf16"))
    return out


def estimator_config(model: ModelConfig, method: Method, precision: str, micro_batch: int,
                     checkpointing: bool, optimizer: str, device: str) -> RunConfig:
    """The planner's estimator config (`pricing.estimator_config`) with the fine-tune's
    `finetune` section: what the estimator reads for memory and FLOPs."""
    cfg = pricing_config(model, precision, micro_batch, checkpointing, optimizer, device)
    return cfg.model_copy(update={"finetune": method.finetune()})


def price(method: Method, precision: str, seq_len: int, ctx: FinetuneContext
          ) -> FinetuneCandidate | None:
    """Memory fit and throughput of one fine-tune (None: no peak for `precision` here)."""
    tgt = ctx.target
    dev = tgt.device if tgt.device in ("cpu", "cuda") else "cuda"
    model = ctx.base.model_at(seq_len)
    cfg = estimator_config(model, method, precision, 1, False, ctx.optimizer, dev)
    mem, ckpt = affine_memory(cfg, None, None, dev), False
    cap = CPU_MICRO_BATCH_CAP if tgt.device == "cpu" else GPU_MICRO_BATCH_CAP
    mb = min(cap, BATCH_SEQS)
    if tgt.memory_limit is not None:
        if mem(1) > tgt.memory_limit:
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
                update={"activation_checkpointing": True})})
            mem, ckpt = affine_memory(cfg, None, None, dev), True
        mb = mem.largest_pow2(tgt.memory_limit, mb)
    flops = training_flops_per_token(cfg)
    c = FinetuneCandidate(
        method, seq_len, precision, count_params(model).total, trainable_count(cfg).trainable,
        flops.model, flops.forward / max(flops.total, 1.0), mb, ckpt, mem(mb), None, "",
        devices=tgt.devices, memory_model=mem, eval_tokens=eval_tokens(seq_len, ctx.val_tokens),
    )
    if tgt.memory_limit is not None and tgt.memory_strict and mem(1) > tgt.memory_limit:
        c.feasible = False
        c.reason = (f"does not fit: {mem(1) / 2**30:.1f} GiB at micro-batch 1 with "
                    f"checkpointing > {tgt.memory_limit / 2**30:.1f} GiB")
        return c
    if tgt.profile is not None:
        st = step_time(cfg, tgt.profile, micro_batch=1, precision=precision)
        if st is None:
            return None
        # the step's FLOP rate (peak x MFU) spent on what this fine-tune executes per token
        c.tokens_per_s = tgt.devices * st.flops_per_s / flops.total
        c.time_source, c.mfu = f"estimate ({st.source})", st.mfu
        c.estimated_tokens_per_s, c.estimated_mfu = c.tokens_per_s, c.mfu
    return c


def eval_tokens(seq_len: int, val_tokens: int) -> int:
    """Validation tokens an evaluation reads: EVAL_TOKENS, or the whole split when smaller, in
    whole windows."""
    return whole_eval_windows(min(EVAL_TOKENS, val_tokens), seq_len, val_tokens)


def _eval_seconds(c: FinetuneCandidate, evals: int) -> float:
    """Seconds `evals` evaluations take (forward only) at the candidate's throughput."""
    if not c.tokens_per_s:
        return 0.0
    return evals * c.eval_tokens * c.eval_cost / c.tokens_per_s


def evals_for(epochs: float) -> int:
    """Evaluations of a run of `epochs` epochs: EVALS_PER_EPOCH each, within MIN..MAX_EVALS."""
    return int(min(MAX_EVALS, max(MIN_EVALS, math.ceil(EVALS_PER_EPOCH * epochs))))


def reachable_tokens(c: FinetuneCandidate, ctx: FinetuneContext) -> float:
    """Training tokens the budget buys (evaluations at MAX_EPOCHS' cadence taken out of a
    budget of wall time)."""
    tgt = ctx.target
    if tgt.wall_seconds is None or not c.tokens_per_s:
        return float(tgt.flops or 0.0) / c.flops_per_token
    raw = c.tokens_per_s * tgt.wall_seconds
    evals = evals_for(min(MAX_EPOCHS, raw / ctx.unique))
    return c.tokens_per_s * max(0.0, tgt.wall_seconds - _eval_seconds(c, evals))


def epoch_choices(reachable_epochs: float) -> list[float]:
    """The epoch counts priced: 1, 2, 4 below what the budget reaches, and the most it reaches
    (at most MAX_EPOCHS)."""
    most = min(MAX_EPOCHS, reachable_epochs)
    return [e for e in EPOCH_CHOICES if e < most * (1 - 1e-6)] + [most]


Rates = Callable[[FinetuneCandidate], None]  # sets a finished candidate's throughput


def finish(c: FinetuneCandidate, epochs: float, ctx: FinetuneContext,
           capped: bool = True, rates: Rates | None = None) -> FinetuneCandidate:
    """A copy of priced `c` run for `epochs` epochs (`capped`: fewer than the budget reaches):
    batch, steps, lr, seconds, useful tokens; the throughput at its batch from `rates` (timed
    steps), else the priced one."""
    c = replace(c)
    T, K = c.seq_len, c.devices
    c.epochs, c.capped = epochs, capped
    tokens = epochs * ctx.unique
    seqs = min(BATCH_SEQS, max(1, int(tokens // (T * MIN_FT_STEPS))))
    per_device = max(1, math.ceil(seqs / K))
    c.micro_batch = min(c.micro_batch, 2 ** int(math.log2(per_device)))
    c.grad_accum = max(1, round(per_device / c.micro_batch))
    c.batch_tokens = tokens_per_step(c.micro_batch, c.grad_accum * K, T)
    c.steps = int(tokens // c.batch_tokens)
    c.tokens = c.steps * c.batch_tokens if ctx.target.kind != "time" else int(tokens)
    if c.memory_model is not None:
        c.memory_bytes = c.memory_model(c.micro_batch)
    c.lr = ctx.lr_full * (1.0 if c.method.name == "full" else LORA_LR_MULTIPLIER)
    c.evals = evals_for(epochs)
    if rates is not None:
        rates(c)
    if c.tokens_per_s:
        c.seconds = c.tokens / c.tokens_per_s + _eval_seconds(c, c.evals)
    c.capacity_tokens = ADAPTER_BITS_PER_PARAM * c.trainable_params / DATA_BITS_PER_TOKEN
    c.useful_tokens = useful_tokens(tokens, ctx.unique, c.capacity_tokens)  # before rounding
    if c.steps < MIN_STEPS:
        c.feasible = False
        c.reason = (f"budget too small: {c.tokens:,} tokens ({epochs:.2g} epochs) is {c.steps} "
                    f"steps of {c.batch_tokens:,} tokens (needs {MIN_STEPS})")
    return c


def useful_tokens(tokens: float, unique: float, capacity_tokens: float) -> float:
    """Effective tokens (Muennighoff et al. 2023) x the share of the unique data the trained
    parameters can hold (capacity in tokens / unique tokens, at most 1): the ranking score."""
    return laws.effective_data(tokens, unique) * min(1.0, capacity_tokens / unique)


def rank_key(c: FinetuneCandidate, device: str) -> tuple:
    """Runnable first; more useful tokens (3 significant digits); at equal use LoRA before
    full, the device's preferred precision, the higher rank; then time, memory."""
    order = PRECISION_ORDER.get(device, ("bf16",))
    pref = order.index(c.precision) if c.precision in order else len(order)
    return (c.estimate_only, -float(f"{c.useful_tokens:.3g}"), c.method.name == "full", pref,
            -c.method.rank, c.seconds or 0.0, c.memory_bytes or 0)


def front(cands: list[FinetuneCandidate]) -> list[FinetuneCandidate]:
    """Runnable candidates no other beats on useful tokens (more), seconds and memory (less)."""
    run = [c for c in cands if not c.estimate_only]
    pts = [(-c.useful_tokens, math.inf if c.seconds is None else c.seconds,
            float(c.memory_bytes or 0)) for c in run]
    return [run[i] for i in non_dominated(pts)]


def price_setups(ctx: FinetuneContext, pairs: list[tuple[Method, str]], seq_lens: list[int]
                 ) -> tuple[list[FinetuneCandidate], list[FinetuneCandidate]]:
    """(priced candidates that fit, those that do not) of every method x precision x seq_len,
    not yet finished for any number of epochs."""
    fit: list[FinetuneCandidate] = []
    no_fit: list[FinetuneCandidate] = []
    for T in seq_lens:
        for method, precision in pairs:
            c = price(method, precision, T, ctx)
            if c is not None:
                (fit if c.feasible else no_fit).append(c)
    return fit, no_fit


def _most_epochs(c: FinetuneCandidate, ctx: FinetuneContext,
                 rates: Rates | None) -> FinetuneCandidate:
    """Priced `c` finished at the most epochs the budget reaches (at most MAX_EPOCHS), at the
    throughput of the batch those epochs run at (with `rates` it depends on the batch, and the
    batch on the epochs: repeated until they agree)."""
    at = replace(c)
    if rates is not None:
        rates(at)
    for _ in range(REACH_ROUNDS):
        reach = reachable_tokens(at, ctx) / ctx.unique
        most = min(MAX_EPOCHS, reach)
        f = finish(c, most, ctx, capped=most < reach * (1 - 1e-6), rates=rates)
        if f.tokens_per_s == at.tokens_per_s:
            break
        at = replace(at, tokens_per_s=f.tokens_per_s)
    return f


def finish_setup(c: FinetuneCandidate, ctx: FinetuneContext,
                 rates: Rates | None = None) -> list[FinetuneCandidate]:
    """Priced `c` finished at each epoch count of `epoch_choices`: the most the budget reaches,
    and fewer when they end within a --time budget (at a smaller batch a small model can be
    slower)."""
    most = _most_epochs(c, ctx, rates)
    wall = ctx.target.wall_seconds
    out = []
    for e in epoch_choices(most.epochs)[:-1]:
        f = finish(c, e, ctx, capped=True, rates=rates)
        if wall is None or f.seconds is None or f.seconds <= wall * (1 + 1e-9):
            out.append(f)
    return [*out, most]


def finish_all(setups: list[FinetuneCandidate], ctx: FinetuneContext,
               rates: Rates | None = None
               ) -> tuple[list[FinetuneCandidate], list[FinetuneCandidate]]:
    """(feasible candidates ranked, infeasible ones) of priced `setups` at each epoch count."""
    ok: list[FinetuneCandidate] = []
    bad: list[FinetuneCandidate] = []
    for s in setups:
        for f in finish_setup(s, ctx, rates):
            (ok if f.feasible else bad).append(f)
    ok.sort(key=lambda c: rank_key(c, ctx.target.device))
    return ok, bad


def price_all(ctx: FinetuneContext, pairs: list[tuple[Method, str]], seq_lens: list[int]
              ) -> tuple[list[FinetuneCandidate], list[FinetuneCandidate]]:
    """(feasible candidates ranked, infeasible ones) of every method x precision x seq_len x
    epoch count."""
    setups, no_fit = price_setups(ctx, pairs, seq_lens)
    ok, bad = finish_all(setups, ctx)
    return ok, no_fit + bad


def resolve_seq_lens(base: PretrainedBase, tgt: Target, wanted: list[int] | None,
                     unique: int, val_tokens: int) -> list[int]:
    """Sequence lengths to price: those asked for (each within the model's context), else the
    device's default held to the model's context and to what the data can fill."""
    most = base.max_seq_len
    if wanted:
        for t in wanted:
            if t < 8 or t > most:
                raise UserError(f"--seq-len {t}: must be between 8 and the model's context "
                                f"({most})")
        out = list(wanted)
    else:
        out = [min(most, FINETUNE_SEQ_LEN.get(tgt.device, 2048))]
    for t in out:
        if val_tokens <= t or unique < 8 * (t + 1):
            raise UserError(
                f"--data: too little text for contexts of {t} tokens ({unique:,} training and "
                f"{val_tokens:,} validation tokens); pass more text or a shorter --seq-len"
            )
    return out


def describe(c: FinetuneCandidate) -> dict[str, Any]:
    """The numbers of a candidate a run's meta keeps (`meta.finetune_plan`)."""
    return {
        "method": c.method.label, "rank": c.method.rank or None,
        "estimate_only": c.estimate_only, "params": c.params,
        "trainable_params": c.trainable_params, "epochs": c.epochs, "tokens": c.tokens,
        "steps": c.steps, "seconds": c.seconds, "tokens_per_s": c.tokens_per_s,
        "time_source": c.time_source, "memory_bytes": c.memory_bytes,
        "flops_per_token": c.flops_per_token, "useful_tokens": c.useful_tokens,
        "capacity_tokens": c.capacity_tokens,
    }
