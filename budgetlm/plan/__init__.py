"""Budget -> candidates -> feasibility -> ranking -> Plan (runnable configs).

`plan(Budget(...))` answers: with this budget, which GPT shape, sequence length, precision,
micro-batch x accumulation, learning rate and schedule give the lowest predicted loss, and will it
fit and finish. The steps:

1. Interpret the budget (DESIGN §3). `--time` is wall time on this machine, priced with its
   measured profile; `--gpu-hours` / `--cost` are device-hours of a GPU (this machine's if it has
   one, else the named or a reference H100 SXM from the datasheet table, "unmeasured");
   `--flops` is model FLOPs (6·N·D plus attention) with no device unless `--gpu` names one.
2. Candidates: shapes from a size ladder (`ladder()`: geometric in non-embedding parameters,
   width/depth growing from ~32 for tiny models to ~128 for large ones, heads of 32 below
   width 256 and 64 above) x sequence length x precision (only those with a peak on the device;
   never assumed faster: each is priced with `profile.peak(precision)`).
3. Feasibility: the largest power-of-two micro-batch that fits in memory (estimator, with a
   margin), activation checkpointing only when even micro-batch 1 does not fit; step time from
   the estimator (measured peak on this machine, datasheet peak x default MFU elsewhere;
   optionally calibrated by timing real steps); tokens reachable in the budget.
4. Batch and learning rate from the DeepSeek LLM 2024 priors for the run's compute (below their
   fitted range the lr is held at its 1e17-FLOP value and the batch is capped so a short run
   still takes PRIOR_MIN_STEPS steps); AdamW (0.9, 0.95 — 0.99 for small batches, as nanoGPT);
   a WSD schedule (Hägele et al. 2024) to zero, driven by the binding cap so the run ends
   annealed.
5. Prediction: L(N, D) of the chosen prior (`budgetlm.laws`), with repeated epochs priced by
   Muennighoff et al. 2023, plus a small labelled context-length heuristic; ranked lowest first.

Nothing here imports torch except `calibrate_candidates` (only for `--time` budgets on this
machine, when asked) and measuring a missing profile for `--time`.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm import laws as scaling
from budgetlm.config import (
    PRECISIONS,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    dump_config,
)
from budgetlm.errors import UserError
from budgetlm.units import parse_duration  # noqa: F401  (re-exported)

REFERENCE_GPU = "h100-sxm"
DEFAULT_GPU_VOCAB = 32768  # a 32k BPE when no data is given (Chinchilla used a 32k vocabulary)
MIN_STEPS = 10  # fewer optimizer steps than this is not a training run
# Cap the prior batch so that a short run still takes this many optimizer steps: DeepSeek's
# fits come from runs of thousands of steps, nanoGPT's CPU recipe takes 2000; at equal tokens a
# 4x128 character model ends far worse after 384 steps of 4096 tokens than after 2048 of 768.
PRIOR_MIN_STEPS = 2000
MIN_BATCH_SEQS = 8  # ... but the steps floor never shrinks a batch below this many sequences
SMALL_BATCH_TOKENS = 16384  # below this many tokens per step, AdamW beta2 = 0.99
GPU_MEMORY_MARGIN = 0.90  # plan to use at most this share of device memory
CPU_MEMORY_MARGIN = 0.50  # of host RAM: leave room for the OS, data and other processes
CPU_MICRO_BATCH_CAP = 64  # larger micro-batches do not raise CPU throughput
GPU_MICRO_BATCH_CAP = 1024
CALIBRATION_PROBES = 6  # model sizes timed to correct the estimator on this machine
CALIBRATION_SECONDS = 20.0  # wall-time cap of round 1 of calibration (round 2: half as much)
TIME_EVALS = 8  # evaluations in a --time run (time-driven)
TIME_EVAL_SHARE = 0.03  # share of a --time budget spent evaluating
LADDER_RATIO = 1.25  # consecutive rungs differ by about this factor in non-embedding parameters
LADDER_SPAN = 16.0  # price rungs within this factor of the rough compute-optimal size

_WIDTHS = (
    32, 48, 64, 80, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 576, 640, 768, 896, 1024, 1152,
    1280, 1536, 1792, 2048, 2304, 2560, 3072, 3584, 4096, 4608, 5120, 6144, 7168, 8192, 9216,
    10240, 12288, 14336, 16384, 18432, 20480,
)


# ---------------------------------------------------------------------------------------------
# Budgets


def _positive(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{what}: must be positive, got {value:g}")
    return float(value)


@dataclass
class Budget:
    """Exactly one of gpu_hours, flops, seconds (`--time`) or cost (with price per GPU-hour).

    gpu: a GPU name from the datasheet table, "auto" or None (this machine's GPU, else the
    reference H100 SXM); gpus: how many of them (data parallel).
    """

    gpu_hours: float | None = None
    flops: float | None = None
    seconds: float | None = None
    cost: float | None = None
    price: float | None = None
    gpu: str | None = None
    gpus: int = 1

    def __post_init__(self) -> None:
        given = [
            name for name, v in (("--gpu-hours", self.gpu_hours), ("--flops", self.flops),
                                 ("--time", self.seconds), ("--cost", self.cost))
            if v is not None
        ]
        if not given:
            raise UserError(
                "plan: no budget given; pass one of --gpu-hours H, --flops C, --time 10m or "
                "--cost AMOUNT --price PER_GPU_HOUR"
            )
        if len(given) > 1:
            raise UserError(f"plan: give one budget, not {' and '.join(given)}")
        self.gpu_hours = _positive(self.gpu_hours, "--gpu-hours")
        self.flops = _positive(self.flops, "--flops")
        self.seconds = _positive(self.seconds, "--time")
        self.cost = _positive(self.cost, "--cost")
        if self.cost is not None and self.price is None:
            raise UserError("--cost: needs --price (currency per GPU-hour)")
        if self.price is not None:
            if self.cost is None:
                raise UserError("--price: applies to a --cost budget only")
            self.price = _positive(self.price, "--price")
        if self.gpus is None or self.gpus < 1:
            raise UserError(f"--gpus: must be at least 1, got {self.gpus}")
        if self.seconds is not None and self.gpu not in (None, "auto"):
            raise UserError(
                "--gpu: a --time budget is wall time on this machine; use --gpu-hours to plan "
                "for another GPU"
            )

    @property
    def kind(self) -> str:
        if self.gpu_hours is not None:
            return "gpu_hours"
        if self.flops is not None:
            return "flops"
        if self.seconds is not None:
            return "time"
        return "cost"

    @property
    def device_hours(self) -> float | None:
        if self.gpu_hours is not None:
            return self.gpu_hours
        if self.cost is not None and self.price:
            return self.cost / self.price
        return None

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": self.kind}
        for k in ("gpu_hours", "flops", "seconds", "cost", "price", "gpu"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        out["gpus"] = self.gpus
        return out


# ---------------------------------------------------------------------------------------------
# The device a budget is spent on


class _PlanProfile:
    """A hardware profile as the planner prices it: fp32 on CUDA runs with TF32 matmuls (the
    trainer enables TF32), so its peak is the TF32 one; everything else is the profile's."""

    def __init__(self, base: Any):
        self.base = base
        self.device = base.device
        self.measured = bool(base.measured)

    def peak(self, precision: str) -> float | None:
        if precision == "fp32" and self.device == "cuda":
            return self.base.peak("tf32") or self.base.peak("fp32")
        return self.base.peak(precision)


@dataclass
class Target:
    """Where and how long: the budget interpreted."""

    kind: str  # "time" (this machine) | "gpu" (device-hours) | "flops"
    device: str  # "cpu" | "cuda" | "none"
    profile: _PlanProfile | None
    devices: int = 1
    wall_seconds: float | None = None
    flops: float | None = None
    memory_bytes: int | None = None  # per device
    memory_limit: float | None = None  # per device, after the margin
    memory_strict: bool = True  # False: the limit only picks the micro-batch (--flops, no --gpu)
    source: str = "none"  # "measured" | "datasheet" | "none"
    name: str = ""
    first_line: str = ""
    notes: list[str] = field(default_factory=list)


def _fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    if s < 2 * 86400:
        return f"{s / 3600:.3g} h"
    return f"{s / 86400:.3g} days"


def _fmt_count(n: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def _fmt_flops(f: float) -> str:
    for div, unit in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if f >= div:
            return f"{f / div:.3g} {unit}FLOP/s"
    return f"{f:.3g} FLOP/s"


def _gpu_name(profile: Any) -> str:
    if getattr(profile, "gpus", None):
        return profile.gpus[0].name
    return "GPU"


def resolve_target(budget: Budget, profile: Any = None) -> Target:
    """Interpret `budget`: the device, its profile and source, seconds or FLOPs available.

    `profile` (a HardwareProfile) replaces this machine's for --time budgets and the detected
    or named GPU for --gpu-hours / --cost (tests pass fake profiles here).
    """
    from budgetlm import hardware

    if budget.kind == "time":
        seconds = float(budget.seconds)  # type: ignore[arg-type]
        measured_now = False
        if profile is None:
            profile = hardware.cached_profile()
        if profile is None:
            profile = hardware.load_profile()  # measures once (~10 s, imports torch) and caches
            measured_now = True
        prof = _PlanProfile(profile)
        devices = profile.devices if profile.device == "cuda" else 1
        if budget.gpus > devices:
            raise UserError(
                f"--gpus {budget.gpus}: this machine has {devices} "
                f"{'GPU' if profile.device == 'cuda' else 'CPU device'}(s)"
            )
        devices = budget.gpus if profile.device == "cuda" else 1
        margin = GPU_MEMORY_MARGIN if profile.device == "cuda" else CPU_MEMORY_MARGIN
        what = (f"{devices} x {_gpu_name(profile)}" if profile.device == "cuda"
                else f"{profile.cpu_model} ({profile.cpu_cores} cores)")
        src = "measured" if profile.measured else "datasheet"
        best = max((p for p in ("fp32", "bf16", "fp16") if prof.peak(p)),
                   key=lambda p: prof.peak(p) or 0.0, default="fp32")
        peak = prof.peak(best) or 0.0
        first = (
            f"budget: {_fmt_seconds(seconds)} of wall time on this machine, {what}; "
            f"{src} matmul peak {_fmt_flops(peak)} {best}"
            f"{' (measured just now)' if measured_now else ''}; step times are estimates"
        )
        return Target(
            kind="time", device=profile.device, profile=prof, devices=devices,
            wall_seconds=seconds, memory_bytes=profile.device_memory_bytes,
            memory_limit=margin * profile.device_memory_bytes, source=src, name=what,
            first_line=first,
        )

    if budget.kind == "flops":
        flops = float(budget.flops)  # type: ignore[arg-type]
        if budget.gpu in (None, "auto"):
            ref = hardware.lookup_gpu(REFERENCE_GPU)
            return Target(
                kind="flops", device="none", profile=None, flops=flops, source="none",
                memory_bytes=ref.memory_bytes, memory_limit=GPU_MEMORY_MARGIN * ref.memory_bytes,
                memory_strict=False, name="no device",
                first_line=(
                    f"budget: {flops:.3g} FLOPs of training compute (model FLOPs: 6·N·D plus "
                    "attention); no device named (--gpu): no time estimate, and memory only "
                    f"picks the micro-batch (as on one {ref.name}), it rules nothing out"
                ),
            )
        prof_base = profile if profile is not None else hardware.reference_profile(
            budget.gpu, budget.gpus
        )
        prof = _PlanProfile(prof_base)
        return Target(
            kind="flops", device="cuda", profile=prof, devices=budget.gpus, flops=flops,
            memory_bytes=prof_base.device_memory_bytes,
            memory_limit=GPU_MEMORY_MARGIN * prof_base.device_memory_bytes,
            source="measured" if prof_base.measured else "datasheet",
            name=f"{budget.gpus} x {_gpu_name(prof_base)}",
            first_line=(
                f"budget: {flops:.3g} FLOPs of training compute (model FLOPs: 6·N·D plus "
                f"attention) on {budget.gpus} x {_gpu_name(prof_base)}; time from the "
                f"{'measured' if prof_base.measured else 'datasheet'} peak x default MFU"
            ),
        )

    # GPU-hours (or a cost converted to GPU-hours)
    hours = float(budget.device_hours)  # type: ignore[arg-type]
    notes: list[str] = []
    reference_reason = ""
    if profile is None:
        here = hardware.cached_profile()
        if budget.gpu in (None, "auto"):
            detected = [] if here is not None else hardware.detect_gpus()
            if here is not None and here.device == "cuda":
                profile = here
            elif detected and detected[0].spec_key:
                profile = hardware.reference_profile(detected[0].spec_key, budget.gpus)
                notes.append("this machine's GPU is not profiled yet: datasheet figures "
                             "(run budgetlm profile to measure it)")
            else:
                profile = hardware.reference_profile(REFERENCE_GPU, budget.gpus)
                reference_reason = "no GPU on this machine" if not detected else (
                    f"this machine's {detected[0].name} has no datasheet row"
                )
        else:
            spec = hardware.lookup_gpu(budget.gpu)  # UserError with close matches
            if here is not None and here.device == "cuda" and here.spec_key == spec.key:
                profile = here
            else:
                profile = hardware.reference_profile(spec.key, budget.gpus)
    if budget.gpus > 1 and profile.measured and budget.gpus > profile.gpu_count:
        notes.append(
            f"--gpus {budget.gpus}: this machine has {profile.gpu_count}; the plan prices "
            f"{budget.gpus} of its GPUs"
        )
    prof = _PlanProfile(profile)
    devices = budget.gpus
    wall = hours * 3600.0 / devices
    src = "measured" if profile.measured else "datasheet"
    name = _gpu_name(profile)
    peak = prof.peak("bf16") or prof.peak("fp16") or prof.peak("fp32") or 0.0
    how = (
        f"{src} peak {_fmt_flops(peak)} x default MFU by model size"
        + ("" if profile.measured else " (unmeasured)")
    )
    if budget.kind == "cost":
        lead = (f"budget: {budget.cost:g} at {budget.price:g}/GPU-hour = {hours:.3g} GPU-hours")
    else:
        lead = f"budget: {hours:.3g} GPU-hours"
    if reference_reason:
        where = f" of a reference {name} ({reference_reason}; --gpu NAME plans for another)"
    else:
        where = f" of {name}" + (" (this machine)" if profile.measured else "")
    first = (
        f"{lead}{where}, {devices} x {_fmt_seconds(wall)} wall; {how}"
    )
    return Target(
        kind="gpu", device="cuda", profile=prof, devices=devices, wall_seconds=wall,
        memory_bytes=profile.device_memory_bytes,
        memory_limit=GPU_MEMORY_MARGIN * profile.device_memory_bytes, source=src,
        name=f"{devices} x {name}", first_line=first, notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# The size ladder


@dataclass(frozen=True)
class Shape:
    n_layer: int
    d_model: int
    n_head: int

    @property
    def name(self) -> str:
        return f"L{self.n_layer}-d{self.d_model}"

    @property
    def approx_params(self) -> int:
        """12·L·d²: attention 4d² + MLP 8d² per block (non-embedding, no norms or biases)."""
        return 12 * self.n_layer * self.d_model**2


def head_dim_for(d_model: int) -> int:
    """64 for widths of 256 and up (GPT-2/3, Llama); 32 for small models (nanoGPT's CPU recipe:
    128 wide, 4 heads); 16 below width 64."""
    if d_model >= 256 and d_model % 64 == 0:
        return 64
    return 32 if d_model >= 64 and d_model % 32 == 0 else 16


def target_aspect(n_params: float) -> float:
    """Preferred width/depth ratio: 32 up to ~1M parameters (nanoGPT CPU 128/4), 64 at 100M
    (GPT-2/3 small 768/12), 128 at 10B and above (GPT-3 6.7B-175B, 4096/32 ... 12288/96)."""
    x = max(n_params, 1e6)
    return min(128.0, 32.0 * (x / 1e6) ** (math.log(2) / math.log(100)))


@functools.lru_cache(maxsize=8)
def ladder(
    min_params: float = 1e4, max_params: float = 2e12, ratio: float = LADDER_RATIO
) -> tuple[Shape, ...]:
    """Shapes spaced by ~`ratio` in non-embedding parameters, each with a sensible aspect ratio.

    For each rung, of the (width, depth) pairs within half a rung of the target size, the one
    closest to the target size and to `target_aspect` (log distance, size weighted twice), with
    width/depth within a factor 2.5 of the target aspect;
    widths from a fixed list of multiples of 16 (tiny) to multiples of 1024 (large).
    """
    pairs = sorted(
        (12 * n * d * d, d, n) for d in _WIDTHS for n in range(1, 161)
        if 12 * n * d * d <= 3 * max_params
    )
    sizes = [p[0] for p in pairs]
    out: list[Shape] = []
    seen: set[tuple[int, int]] = set()
    target = min_params
    half = math.sqrt(ratio)
    while target <= max_params:
        lo, hi = bisect.bisect_left(sizes, target / half), bisect.bisect_left(sizes, target * half)
        best, best_score = None, math.inf
        for p, d, n in pairs[lo:hi]:
            off_aspect = abs(math.log((d / n) / target_aspect(p)))
            if off_aspect > math.log(2.5):
                continue
            score = off_aspect + 2 * abs(math.log(p / target))
            if score < best_score:
                best, best_score = (d, n), score
        if best is not None and best not in seen:
            seen.add(best)
            d, n = best
            out.append(Shape(n_layer=n, d_model=d, n_head=max(1, d // head_dim_for(d))))
        target *= ratio
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Candidates


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
    estimated_tokens_per_s: float | None = None  # before calibration
    estimated_mfu: float | None = None

    @property
    def name(self) -> str:
        return f"{self.shape.name}-T{self.seq_len}-{self.precision}"

    @property
    def flops(self) -> float:
        return self.flops_per_token * self.tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_layer": self.shape.n_layer,
            "d_model": self.shape.d_model,
            "n_head": self.shape.n_head,
            "seq_len": self.seq_len,
            "vocab_size": self.vocab_size,
            "params": self.params,
            "non_embedding_params": self.non_embedding_params,
            "precision": self.precision,
            "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum,
            "devices": self.devices,
            "global_batch_tokens": self.batch_tokens,
            "checkpointing": self.checkpointing,
            "lr": self.lr,
            "tokens": self.tokens,
            "steps": self.steps,
            "epochs": self.epochs,
            "effective_tokens": self.effective_tokens,
            "flops": self.flops,
            "flops_per_token": self.flops_per_token,
            "tokens_per_s": self.tokens_per_s,
            "seconds": self.seconds,
            "mfu": self.mfu,
            "time_source": self.time_source,
            "memory_bytes": self.memory_bytes,
            "loss": self.loss,
            "loss_lo": self.loss_lo,
            "loss_hi": self.loss_hi,
            "loss_law": self.loss_law,
            "context_adjustment": self.context_adjustment,
            "extrapolated": self.extrapolated,
            "feasible": self.feasible,
            "reason": self.reason,
        }


@dataclass
class _Ctx:
    target: Target
    law: scaling.LossLaw
    unique: int | None
    vocab: int
    val_tokens: int | None
    optimizer: str
    family: str
    ref_seq: int | None


def _model(shape: Shape, seq_len: int, vocab: int, family: str) -> ModelConfig:
    return ModelConfig(
        family=family, n_layer=shape.n_layer, n_head=shape.n_head, d_model=shape.d_model,
        vocab_size=vocab, seq_len=seq_len, bias=False, dropout=0.0, tie_embeddings=True,
    )


def _run_config(m: ModelConfig, precision: str, mb: int, accum: int, ckpt: bool,
                optimizer: str, device: str) -> RunConfig:
    train = TrainConfig(
        precision=precision, micro_batch=mb, grad_accum=accum, activation_checkpointing=ckpt,
        device=device if device in ("cpu", "cuda") else "auto",
    )
    return RunConfig(model=m, train=train, optim=OptimConfig(name=optimizer))


def _setup(shape: Shape, seq_len: int, precisions: list[str], ctx: _Ctx) -> list[Candidate]:
    """Memory fit and throughput of (shape, T) in each precision; tokens etc. come in `_finish`.

    Memory is affine in the micro-batch (weights, gradients and optimizer state are fixed;
    activations and logits grow with it), so two estimator calls give the largest micro-batch
    that fits, and the memory of any other.
    """
    from budgetlm.estimate import count_params, flops_per_token, memory_breakdown, step_time

    tgt = ctx.target
    m = _model(shape, seq_len, ctx.vocab, ctx.family)
    pc = count_params(m)
    fl = flops_per_token(m, checkpointing=False)
    cap = CPU_MICRO_BATCH_CAP if tgt.device == "cpu" else GPU_MICRO_BATCH_CAP
    dev = tgt.device if tgt.device in ("cpu", "cuda") else "cuda"
    out: list[Candidate] = []
    for precision in precisions:
        base = _run_config(m, precision, 1, 1, False, ctx.optimizer, dev)

        def affine(ckpt: bool, base: RunConfig = base, precision: str = precision) -> _Affine:
            m1 = memory_breakdown(base, micro_batch=1, precision=precision, checkpointing=ckpt,
                                  device=dev).total
            m2 = memory_breakdown(base, micro_batch=2, precision=precision, checkpointing=ckpt,
                                  device=dev).total
            return _Affine(m1, m2 - m1)

        mem, ckpt, mb = affine(False), False, cap
        if tgt.memory_limit is not None:
            if mem(1) > tgt.memory_limit:
                mem_ck = affine(True)
                if mem_ck(1) <= tgt.memory_limit or not tgt.memory_strict:
                    mem, ckpt = mem_ck, True
                else:
                    out.append(Candidate(
                        shape, seq_len, precision, ctx.vocab, pc.total, pc.non_embedding,
                        fl.forward + fl.backward, 1, 1, tgt.devices, True, mem_ck(1), None, "",
                        feasible=False,
                        reason=f"does not fit: {mem_ck(1) / 2**30:.1f} GiB at micro-batch 1 "
                               f"with checkpointing > {tgt.memory_limit / 2**30:.1f} GiB",
                    ))
                    continue
            mb = mem.largest_pow2(tgt.memory_limit, cap)
        rate, source, mfu = None, "", None
        if tgt.profile is not None:
            cfg = _run_config(m, precision, mb, 1, ckpt, ctx.optimizer, dev)
            st = step_time(cfg, tgt.profile, micro_batch=mb, precision=precision)
            if st is None:
                continue  # no peak for this precision on this device
            rate = tgt.devices * mb * seq_len / st.seconds
            source, mfu = st.source, st.mfu
        cand = Candidate(
            shape, seq_len, precision, ctx.vocab, pc.total, pc.non_embedding,
            fl.forward + fl.backward, mb, 1, tgt.devices, ckpt, mem(mb), rate, source,
        )
        cand.mfu = cand.estimated_mfu = mfu
        cand.estimated_tokens_per_s = rate
        cand.memory_model = mem
        out.append(cand)
    return out


@dataclass(frozen=True)
class _Affine:
    """memory(mb) = at1 + (mb - 1) · per_sequence bytes."""

    at1: int
    per_sequence: int

    def __call__(self, mb: int) -> int:
        return self.at1 + (mb - 1) * self.per_sequence

    def largest_pow2(self, limit: float, cap: int) -> int:
        mb = 1
        while mb * 2 <= cap and self(mb * 2) <= limit:
            mb *= 2
        return mb


def _finish(c: Candidate, ctx: _Ctx) -> Candidate:
    """Tokens in the budget, batch and lr from the priors, predicted loss."""
    tgt = ctx.target
    if not c.feasible and c.reason.startswith("does not fit"):
        return c
    T, K = c.seq_len, c.devices
    eval_overhead = 0.0
    if tgt.kind == "flops":
        tokens = tgt.flops / c.flops_per_token  # type: ignore[operator]
    else:
        assert c.tokens_per_s is not None and tgt.wall_seconds is not None
        tokens = c.tokens_per_s * tgt.wall_seconds
        if tgt.kind == "time":
            # evaluation (forward only, ~1/3 of a training token) is inside the wall-clock cap
            c.eval_tokens = int(ctx.law.extra.get("eval_tokens") or 0) or _eval_tokens(
                tokens, T, ctx.val_tokens)  # a fit's predictions are on its pilots' windows
            eval_overhead = (TIME_EVALS - 1) * c.eval_tokens / 3 / c.tokens_per_s
            tokens = c.tokens_per_s * max(0.0, tgt.wall_seconds - eval_overhead)
    c.tokens = int(tokens)
    compute = c.flops_per_token * tokens
    # global batch: the DeepSeek prior, shrunk (not below MIN_BATCH_SEQS) to give at least
    # PRIOR_MIN_STEPS steps; whole sequences
    seqs = max(1, round(scaling.deepseek_batch_tokens(max(compute, 1.0)) / T))
    seqs = min(seqs, max(MIN_BATCH_SEQS, int(tokens // (T * PRIOR_MIN_STEPS))))
    per_device = max(1, math.ceil(seqs / K))
    if per_device <= c.micro_batch and (tgt.device == "cpu" or tgt.kind == "time"):
        mb = per_device  # exactly the prior's batch in one micro-batch
    else:
        mb = min(c.micro_batch, 2 ** int(math.log2(per_device)))
    accum = max(1, round(seqs / (mb * K)))
    c.micro_batch, c.grad_accum = mb, accum
    c.batch_tokens = mb * accum * K * T
    c.steps = int(tokens // c.batch_tokens)
    if c.steps < MIN_STEPS:
        c.feasible = False
        c.reason = (f"budget too small: {c.tokens:,} tokens is {c.steps} steps of "
                    f"{c.batch_tokens:,} tokens (needs {MIN_STEPS})")
        return c
    if tgt.kind != "time":
        c.tokens = c.steps * c.batch_tokens  # a token cap: whole steps
    c.lr = scaling.lr_prior(max(compute, 1.0))
    if c.tokens_per_s:
        c.seconds = c.tokens / c.tokens_per_s + eval_overhead
    if c.memory_model is not None:
        c.memory_bytes = c.memory_model(mb)
    law = ctx.law
    n = law.n_of(c.params, c.non_embedding_params)
    c.epochs = scaling.epochs(c.tokens, ctx.unique)
    c.effective_tokens = (
        scaling.effective_data(c.tokens, ctx.unique) if ctx.unique else float(c.tokens)
    )
    c.loss_law = law.loss_repeated(n, c.tokens, ctx.unique)
    c.context_adjustment = 0.0
    if ctx.ref_seq:
        c.context_adjustment = scaling.context_excess(T) - scaling.context_excess(ctx.ref_seq)
    c.loss = c.loss_law + c.context_adjustment
    if law.has_interval:
        _, lo, hi = law.interval(n, c.tokens, ctx.unique)
        c.loss_lo, c.loss_hi = lo + c.context_adjustment, hi + c.context_adjustment
    c.extrapolated = not law.in_range(n, c.tokens)
    return c


def _eval_tokens(tokens: float, seq_len: int, val_tokens: int | None) -> int:
    """Tokens per evaluation of a --time run: about TIME_EVAL_SHARE of the budget in total."""
    e = TIME_EVAL_SHARE * 3 * tokens / (TIME_EVALS - 1)
    e = min(max(e, 8 * seq_len), 65536)
    if val_tokens:
        e = min(e, max(seq_len, val_tokens - 1))
    return max(seq_len, int(e // seq_len) * seq_len)


_PREC_ORDER = {"cuda": ("bf16", "fp16", "fp32"), "cpu": ("fp32", "bf16", "fp16"),
               "none": ("bf16",)}


def _precisions(tgt: Target, wanted: list[str] | None) -> list[str]:
    order = _PREC_ORDER[tgt.device]
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


def _seq_lens(tgt: Target, n_params: float, wanted: list[int] | None) -> list[int]:
    if wanted:
        return list(wanted)
    if tgt.device == "cpu":
        return [64, 128, 256]
    if n_params < 3e7:
        return [256, 512, 1024]
    return [1024, 2048]


def _rough_compute(tgt: Target, precisions: list[str]) -> float:
    if tgt.kind == "flops":
        return float(tgt.flops)  # type: ignore[arg-type]
    assert tgt.profile is not None and tgt.wall_seconds is not None
    peak = max((tgt.profile.peak(p) or 0.0) for p in precisions)
    eff = 0.3 if tgt.device == "cpu" else 0.4
    return max(tgt.wall_seconds * tgt.devices * peak * eff, 1.0)


def _rank_key(c: Candidate, device: str) -> tuple:
    order = _PREC_ORDER.get(device, ("bf16",))
    pref = order.index(c.precision) if c.precision in order else len(order)
    return (round(c.loss, 6), pref, c.seconds or 0.0, c.memory_bytes or 0)


def pareto(cands: list[Candidate], axes: tuple[str, ...]) -> list[Candidate]:
    """Candidates no other candidate beats on every axis (lower is better on each)."""

    def vals(c: Candidate) -> tuple[float, ...]:
        out = []
        for a in axes:
            v = getattr(c, a)
            out.append(math.inf if v is None else float(v))
        return tuple(out)

    pts = [(vals(c), c) for c in cands]
    front = []
    for v, c in pts:
        dominated = any(
            all(o <= x * (1 + 1e-9) for o, x in zip(w, v, strict=True)) and w != v
            and any(o < x * (1 - 1e-6) for o, x in zip(w, v, strict=True))
            for w, _ in pts
        )
        if not dominated:
            front.append(c)
    front.sort(key=lambda c: c.loss)
    return front


# ---------------------------------------------------------------------------------------------
# Calibration (imports torch; --time budgets on this machine only)


def _time_steps(torch: Any, model: Any, opt: Any, batch: Any, dtype: Any, device: str,
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
    cands: list[Candidate], ctx: _Ctx, steps: int = 3, deadline: float | None = None
) -> dict[str, float]:
    """Tokens/s of each candidate (all its devices) from `steps` timed optimizer steps after a
    warm-up, on this machine, at its micro-batch x accumulation and precision. Candidates left
    when time.perf_counter() passes `deadline` are skipped."""
    import numpy as np
    import torch

    from budgetlm.data import sample_batch
    from budgetlm.model import build_model
    from budgetlm.optim import build_optimizer

    device = "cuda" if ctx.target.device == "cuda" and torch.cuda.is_available() else "cpu"
    out: dict[str, float] = {}
    for c in cands:
        if deadline is not None and time.perf_counter() > deadline:
            break
        m = _model(c.shape, c.seq_len, c.vocab_size, ctx.family)
        torch.manual_seed(0)
        model = build_model(m).to(device)
        model.activation_checkpointing = c.checkpointing
        model.train()
        opt = build_optimizer(model, OptimConfig(name=ctx.optimizer, lr=1e-4))
        data = np.random.default_rng(0).integers(
            0, c.vocab_size, size=max(100_000, 4 * c.micro_batch * c.seq_len), dtype=np.int64
        ).astype(np.uint16 if c.vocab_size <= 65535 else np.uint32)

        def batch(step: int, c: Candidate = c, data: Any = data) -> tuple[Any, Any]:
            x, y = sample_batch(data, c.micro_batch, c.seq_len, 0, step, 0)
            return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(c.precision)
        times = _time_steps(torch, model, opt, batch, dtype, device, c.grad_accum, steps)
        out[c.name] = c.devices * c.micro_batch * c.grad_accum * c.seq_len / min(times)
        del model, opt
    return out



# ---------------------------------------------------------------------------------------------
# The plan


@dataclass
class Plan:
    budget: Budget
    target: Target
    law: scaling.LossLaw
    data: DataConfig
    data_given: bool
    unique_tokens: int | None
    vocab_size: int
    candidates: list[Candidate]  # feasible, best first
    infeasible: list[Candidate]
    front: list[Candidate]
    pareto_axes: tuple[str, ...]
    optimum: dict[str, Any]
    notes: list[str]
    calibrated: list[str]
    optimizer: str
    schedule: str
    family: str
    seed: int = 0
    elapsed_s: float = 0.0

    @property
    def top(self) -> Candidate:
        return self.candidates[0]

    @property
    def first_line(self) -> str:
        return self.target.first_line

    def config(self, index: int = 0) -> RunConfig:
        """Candidate `index` as a runnable RunConfig (caps, schedule, eval, meta.predicted)."""
        c = self.candidates[index]
        tgt = self.target
        m = _model(c.shape, c.seq_len, c.vocab_size, self.family)
        warmup = min(0.05, 2000 / max(c.steps, 1))
        sched = ScheduleConfig(
            name=self.schedule, warmup_fraction=round(max(warmup, 0.002), 4),
            min_lr_ratio=0.0 if self.schedule == "wsd" else 0.1, decay_fraction=0.2,
            driver="auto",
        )
        # AdamW as in DeepSeek LLM (0.9, 0.95, wd 0.1); beta2 0.99 for small batches, as nanoGPT
        # does "because the number of tokens per iter is small" (config/train_shakespeare_char)
        beta2 = 0.99 if c.batch_tokens < SMALL_BATCH_TOKENS else 0.95
        optim = OptimConfig(name=self.optimizer, lr=float(f"{c.lr:.3g}"), beta1=0.9,
                            beta2=beta2, weight_decay=0.1, grad_clip=1.0)
        train: dict[str, Any] = {
            "precision": c.precision,
            "micro_batch": c.micro_batch,
            "grad_accum": c.grad_accum * c.devices,  # the trainer splits micro-steps over ranks
            "activation_checkpointing": c.checkpointing,
            "device": tgt.device if tgt.kind == "time" else "auto",
            "log_interval": max(1, min(10, c.steps // 50)),
        }
        if tgt.kind == "time":
            train["max_time"] = float(tgt.wall_seconds)  # type: ignore[arg-type]
            train["eval_time_interval"] = float(tgt.wall_seconds) / TIME_EVALS  # type: ignore
            train["eval_interval"] = max(1, c.steps)
            train["eval_tokens"] = c.eval_tokens
        else:
            train["max_tokens"] = int(c.tokens)
            train["eval_interval"] = max(1, c.steps // 20)
            if c.steps >= 2000:
                train["checkpoint_interval"] = max(1, c.steps // 10)
        meta = {
            "planned_by": "budgetlm plan",
            "budget": self.budget.to_dict(),
            "interpretation": self.first_line,
            "predicted": self.predicted(index),
        }
        return RunConfig(
            name=f"plan-{c.shape.name}", seed=self.seed, model=m, optim=optim, schedule=sched,
            data=self.data, train=TrainConfig(**train), meta=meta,
        )

    def predicted(self, index: int = 0) -> dict[str, Any]:
        c = self.candidates[index]
        fitted = self.law.kind == "fit"
        out: dict[str, Any] = {
            "loss": c.loss,
            "loss_kind": self.law.kind,
            "loss_unit": "nats/token (this corpus and tokenizer; fitted law)" if fitted else
                         f"nats/token ({self.law.name} {self.law.kind}; its own data and "
                         "tokenizer)",
            "law": self.law.name,
            "loss_law": c.loss_law,
            "context_adjustment": c.context_adjustment,
            "extrapolated": c.extrapolated,
            "params": c.params,
            "tokens": c.tokens,
            "epochs": c.epochs,
            "unique_tokens": self.unique_tokens,
            "flops": c.flops,
            "step_seconds": (c.batch_tokens / c.tokens_per_s) if c.tokens_per_s else None,
            "seconds": c.seconds,
            "tokens_per_s": c.tokens_per_s,
            "time_source": c.time_source,
            "memory_bytes": c.memory_bytes,
            "budget_source": self.target.source,
        }
        if c.loss_lo is not None:
            out["loss_lo"], out["loss_hi"] = c.loss_lo, c.loss_hi
            out["interval_level"] = float(self.law.extra.get("interval_level", 0.9))
        bpn = self.law.extra.get("bpb_per_nat") if fitted else None
        if bpn:
            out["bpb_per_nat"] = bpn
            for k in ("", "_lo", "_hi"):
                v = out.get(f"loss{k}")
                if v is not None:
                    out[f"bpb{k}"] = v * bpn
        return out

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        cands = self.candidates if limit is None else self.candidates[:limit]
        return {
            "interpretation": self.first_line,
            "budget": self.budget.to_dict(),
            "device": {
                "kind": self.target.device, "name": self.target.name,
                "devices": self.target.devices, "source": self.target.source,
                "memory_bytes": self.target.memory_bytes,
                "memory_limit": self.target.memory_limit,
                "wall_seconds": self.target.wall_seconds, "flops": self.target.flops,
            },
            "law": self.law.to_dict(),
            "loss_kind": self.law.kind,
            "data": {
                "source": self.data.source if self.data_given else None,
                "tokenizer": self.data.tokenizer,
                "unique_tokens": self.unique_tokens,
                "vocab_size": self.vocab_size,
            },
            "optimum": self.optimum,
            "top": self.top.to_dict(),
            "candidates": [c.to_dict() for c in cands],
            "n_candidates": len(self.candidates),
            "n_infeasible": len(self.infeasible),
            "pareto_axes": list(self.pareto_axes),
            "pareto": [c.to_dict() for c in self.front],
            "calibrated": self.calibrated,
            "notes": self.notes,
            "elapsed_s": self.elapsed_s,
        }

    def write(self, path: str | Path) -> tuple[Path, Path]:
        """The top candidate as a runnable YAML at `path`, and every candidate in a sibling
        `<stem>.json`."""
        p = Path(path)
        if p.suffix not in (".yaml", ".yml"):
            raise UserError(f"-o {p}: expected a .yaml file name")
        if p.exists() and p.is_dir():
            raise UserError(f"-o {p}: is a directory")
        try:
            dump_config(self.config(0), p)
            j = p.with_suffix(".json")
            j.write_text(json.dumps(self.to_dict(), indent=1, default=str) + "\n")
        except OSError as exc:
            raise UserError(f"-o {p}: cannot write ({exc.strerror or exc})") from None
        return p, j


def _data_info(
    data: DataConfig | None, tokens: int | None, tgt: Target
) -> tuple[DataConfig, bool, int | None, int, int | None, str]:
    """(data config, given?, unique tokens, vocab size, validation tokens, description)."""
    if data is not None and tokens is not None:
        raise UserError("--tokens: give --data (its tokens are counted) or --tokens, not both")
    if tokens is not None and tokens < 1:
        raise UserError(f"--tokens: must be positive, got {tokens}")
    if data is not None:
        from budgetlm.data import load_corpus

        corpus = load_corpus(data)
        unique, val = int(len(corpus.train)), int(len(corpus.val))
        vocab = int(corpus.tokenizer.vocab_size)
        cached = "cached" if corpus.info.get("cached") else "tokenized now, cached"
        desc = (f"data: {data.source} ({data.tokenizer}, vocab {vocab}): {unique:,} training "
                f"tokens ({cached})")
        return data, True, unique, vocab, val, desc
    if tgt.device == "cpu":
        default = DataConfig()
        vocab = 256
    else:
        default = DataConfig(tokenizer="bpe", bpe_vocab_size=DEFAULT_GPU_VOCAB)
        vocab = DEFAULT_GPU_VOCAB
    if tokens is not None:
        desc = f"data: {tokens:,} unique tokens (--tokens); vocabulary assumed {vocab}"
        return default, False, int(tokens), vocab, None, desc
    desc = (f"data: not given: unlimited unique tokens assumed, vocabulary {vocab}; the exported "
            f"config trains on {default.source} (pass --data)")
    return default, False, None, vocab, None, desc


def plan(
    budget: Budget,
    data: DataConfig | None = None,
    tokens: int | None = None,
    prior: str = "epoch",
    fit: dict[str, Any] | None = None,
    profile: Any = None,
    calibrate: bool | None = None,
    seq_lens: list[int] | None = None,
    precisions: list[str] | None = None,
    optimizer: str = "adamw",
    schedule: str = "wsd",
    family: str = "gpt",
    seed: int = 0,
    calibrate_top: int = 3,
    spend_planning: bool = False,
) -> Plan:
    """Rank candidate configurations for `budget`; see the module docstring.

    data / tokens: the corpus (counted through the token cache) or a count of unique tokens;
    neither means unlimited data. prior: "epoch" (default), "chinchilla" or "kaplan"; fit: a
    Chinchilla-form law fitted on this corpus ({E, A, B, alpha, beta}), which replaces the prior.
    profile: a HardwareProfile to plan on instead of this machine's / the named GPU's.
    calibrate: time real steps of the best few candidates (--time budgets only; default on for
    those when this machine's profile is used).
    spend_planning: a --time budget that counts from now: the time this planning takes (the
    timing of steps above all) comes out of the run's wall time.
    """
    t0 = time.perf_counter()
    if family != "gpt":
        raise UserError(f"--family: the planner plans gpt models only, got {family!r}")
    if schedule not in ("wsd", "cosine"):
        raise UserError(f"--schedule: expected wsd or cosine, got {schedule!r}")
    for t in seq_lens or []:
        if t < 8:
            raise UserError(f"--seq-len: must be at least 8, got {t}")
    for p in precisions or []:
        if p not in PRECISIONS:
            raise UserError(f"--precision: unknown precision {p!r}; one of {', '.join(PRECISIONS)}")
    law = scaling.law_from_fit(fit) if fit is not None else scaling.prior(prior)
    if law.kind == "fit":
        # a fitted law is a statement about the pilots' sequence length and precision
        if seq_lens is None and law.extra.get("seq_len"):
            seq_lens = [int(law.extra["seq_len"])]
        if precisions is None and law.extra.get("precision"):
            precisions = [str(law.extra["precision"])]
    explicit_profile = profile is not None
    tgt = resolve_target(budget, profile)
    data_cfg, data_given, unique, vocab, val_tokens, data_desc = _data_info(data, tokens, tgt)
    notes = list(tgt.notes)
    ref_seq = {"chinchilla": 2048, "epoch": 2048, "kaplan": 1024}.get(law.name)
    if law.kind == "fit":
        ref_seq = law.extra.get("seq_len")
    ctx = _Ctx(tgt, law, unique, vocab, val_tokens, optimizer, family, ref_seq)

    precs = _precisions(tgt, precisions)
    if not precs:
        raise UserError(f"plan: no precision has a peak FLOP/s on {tgt.name}")
    rough = _rough_compute(tgt, precs)
    n_opt, _ = scaling.data_constrained_optimal(law, rough, unique)
    shapes = [
        s for s in ladder()
        if n_opt / LADDER_SPAN <= s.approx_params <= n_opt * LADDER_SPAN
    ] or list(ladder()[:3])
    smallest = ladder()[0]
    if smallest not in shapes:
        shapes.insert(0, smallest)  # always priced, so "too small" names the smallest model

    setups: list[Candidate] = []
    infeasible: list[Candidate] = []
    for s in shapes:
        for T in _seq_lens(tgt, s.approx_params, seq_lens):
            for c in _setup(s, T, precs, ctx):
                (setups if c.feasible else infeasible).append(c)

    def finish_all() -> tuple[list[Candidate], list[Candidate]]:
        ok, bad = [], []
        for c in setups:
            c2 = _finish(_copy(c), ctx)
            (ok if c2.feasible else bad).append(c2)
        ok.sort(key=lambda c: _rank_key(c, tgt.device))
        return ok, bad

    t_finish = time.perf_counter()
    ranked, too_small = finish_all()
    t_finish = time.perf_counter() - t_finish
    calibrated: list[str] = []
    if calibrate is None:
        calibrate = tgt.kind == "time" and not explicit_profile
    busy = None
    if calibrate and tgt.kind == "time" and ranked:
        calibrated = _calibrate_and_rescale(setups, ranked, ctx, calibrate_top)
        if spend_planning and tgt.wall_seconds is not None:
            # what planning took so far, and the ranking below once more
            spent = time.perf_counter() - t0 + t_finish
            tgt.wall_seconds = max(1.0, tgt.wall_seconds - spent)
        ranked, too_small = finish_all()
        busy = _busy(tgt)
    infeasible += too_small
    if not ranked:
        raise UserError(_why_nothing(budget, tgt, infeasible, smallest))

    top = ranked[0]
    axes = ("loss", "seconds", "memory_bytes") if tgt.kind == "flops" else ("loss", "memory_bytes")
    front = pareto(ranked, axes)
    n_top, d_top = law.optimal(max(top.flops, 1.0))
    optimum: dict[str, Any] = {
        "flops": top.flops,
        "closed_form": {"params": n_top, "tokens": d_top,
                        "method": "Hoffmann et al. eq. 4" if law.form == "chinchilla"
                        else "numeric minimum of L(N, C/6N)"},
        "top_candidate": {"params": law.n_of(top.params, top.non_embedding_params),
                          "tokens": top.tokens},
    }
    if unique is not None:
        n_dc, d_dc = scaling.data_constrained_optimal(law, max(top.flops, 1.0), unique)
        optimum["data_constrained"] = {"params": n_dc, "tokens": d_dc,
                                       "epochs": scaling.epochs(d_dc, unique)}
    notes.append(data_desc)
    if law.kind == "fit":
        notes.append(_fit_note(law, data_cfg, data_given))
    else:
        notes.append(
            f"loss: {law.kind} ({law.source}); nats/token on that law's data and tokenizer, not "
            "this corpus's: compare candidates with it, do not read it as this corpus's loss"
            + ("" if ctx.ref_seq is None else
               f"; includes a context-length heuristic relative to T={ctx.ref_seq}")
        )
    if not tgt.memory_strict and top.memory_bytes and tgt.memory_limit \
            and top.memory_bytes > tgt.memory_limit:
        notes.append(
            f"memory: the top candidate needs {top.memory_bytes / 2**30:.0f} GiB even at "
            f"micro-batch {top.micro_batch}{' with checkpointing' if top.checkpointing else ''}: "
            "more than one 80 GiB GPU; the trainer's DDP replicates the model (no sharding)"
        )
    if top.extrapolated:
        notes.append(
            f"the top candidate ({_fmt_count(top.params)} params, {_fmt_count(top.tokens)} "
            "tokens) lies outside the range the law was fitted on: an extrapolation"
        )
    if top.epochs > 1.0 + 1e-9:
        notes.append(
            f"data-constrained: the top candidate repeats the data {top.epochs:.2f} epochs; "
            f"priced as {_fmt_count(top.effective_tokens)} effective tokens (Muennighoff et al. "
            "2023)" + (" — beyond ~4 epochs repeats are worth much less than new data"
                       if top.epochs > 4 else "")
        )
    c_top = top.flops
    if c_top < scaling.DEEPSEEK_FIT_RANGE[0]:
        notes.append(
            f"lr and batch: {c_top:.2g} FLOPs is below the range the DeepSeek LLM 2024 priors "
            "were fitted on (1e17-2e19): lr held at its 1e17 value, batch extrapolated and "
            f"capped to give at least {PRIOR_MIN_STEPS} steps"
        )
    elif c_top > scaling.DEEPSEEK_FIT_RANGE[1]:
        notes.append(f"lr and batch: DeepSeek LLM 2024 priors extrapolated to {c_top:.2g} FLOPs "
                     "(fitted on 1e17-2e19)")
    if tgt.kind in ("gpu", "flops") and tgt.profile is not None:
        notes.append(
            f"time: {tgt.source} peak x default MFU by model size "
            f"(top: MFU {top.mfu:.0%}); {'measured' if tgt.source == 'measured' else 'unmeasured'}"
            + (f"; {tgt.devices} GPUs data parallel, communication not priced"
               if tgt.devices > 1 else "")
        )
    if tgt.kind == "time":
        if calibrated:
            notes.append(
                f"time: calibrated by timing real steps of {len(calibrated)} candidates; the "
                "others are scaled by the measured/estimated ratio"
            )
            if busy:
                notes.append(busy)
        else:
            notes.append(
                "time: estimated from the measured matmul peak x an efficiency by model size "
                "(not calibrated)"
            )
    return Plan(
        budget=budget, target=tgt, law=law, data=data_cfg, data_given=data_given,
        unique_tokens=unique, vocab_size=vocab, candidates=ranked, infeasible=infeasible,
        front=front, pareto_axes=axes, optimum=optimum, notes=notes, calibrated=calibrated,
        optimizer=optimizer, schedule=schedule, family=family, seed=seed,
        elapsed_s=time.perf_counter() - t0,
    )


def _fit_note(law: scaling.LossLaw, data: DataConfig, data_given: bool) -> str:
    """What a fitted law's predictions mean, and whether they apply to this plan's data."""
    level = float(law.extra.get("interval_level", 0.9))
    out = (f"loss: fit ({law.source}); nats/token on that corpus and tokenizer, with a "
           f"{level:.0%} interval (bootstrap refits + run-to-run scatter)")
    fdata = law.extra.get("data") or {}
    if fdata and (not data_given or fdata.get("source") != data.source
                  or fdata.get("tokenizer") != data.tokenizer):
        out += (f"; the fit is for {fdata.get('source')} ({fdata.get('tokenizer')}): pass the "
                "same --data and --tokenizer for its predictions to apply")
    return out


def _copy(c: Candidate) -> Candidate:
    from dataclasses import replace

    return replace(c)


def _calibrate_and_rescale(
    setups: list[Candidate], ranked: list[Candidate], ctx: _Ctx, k: int
) -> list[str]:
    """Replace estimated throughput by measured throughput (this machine, --time budgets).

    Round 1 times one candidate per model size at up to CALIBRATION_PROBES sizes spread evenly
    (in FLOPs per token) over the candidates, the best-ranked included, and corrects every
    other candidate by the measured/estimated ratio interpolated in log FLOPs per token: small
    models are overhead-bound, so the ratio depends on size. Round 2 re-ranks and times the k
    best that were not timed yet. Returns the names timed exactly.
    """
    deadline = time.perf_counter() + CALIBRATION_SECONDS
    best_per_shape: dict[Shape, Candidate] = {}
    for c in ranked:
        best_per_shape.setdefault(c.shape, c)
    by_size = sorted(best_per_shape.values(), key=lambda c: c.flops_per_token)
    n = min(CALIBRATION_PROBES, len(by_size))
    picks = {by_size[round(i * (len(by_size) - 1) / max(1, n - 1))].name for i in range(n)}
    probes = [ranked[0]] + [c for c in by_size if c.name in picks and c is not ranked[0]]
    measured = measure_throughput(probes, ctx, deadline=deadline)
    est = {s.name: s.estimated_tokens_per_s for s in setups}
    points = sorted(
        (math.log(c.flops_per_token), math.log(measured[c.name] / est[c.name]))
        for c in probes if c.name in measured and est.get(c.name)
    )
    _apply(setups, measured, points)
    for _ in range(2):  # round 2: the best few, exactly
        ranked2 = sorted((_finish(_copy(s), ctx) for s in setups),
                         key=lambda c: _rank_key(c, ctx.target.device))
        todo = [c for c in ranked2 if c.feasible][:k]
        todo = [c for c in todo if c.name not in measured]
        if not todo:
            break
        more = measure_throughput(todo, ctx, deadline=deadline + CALIBRATION_SECONDS / 2)
        if not more:
            break
        measured.update(more)
        _apply(setups, measured, points)
    return sorted(measured)


def _apply(setups: list[Candidate], measured: dict[str, float],
           points: list[tuple[float, float]]) -> None:
    """Set each setup's throughput: measured if timed, else the estimate x the interpolated
    measured/estimated ratio (always from the original estimate, so this can be re-applied)."""
    for s in setups:
        if s.estimated_tokens_per_s is None:
            continue
        if s.name in measured:
            r = measured[s.name] / s.estimated_tokens_per_s
            s.time_source = "calibrated"
        elif points:
            r = math.exp(scaling.interpolate(math.log(s.flops_per_token), points))
            s.time_source = f"estimate x {r:.2f} (calibration)"
        else:
            continue
        s.tokens_per_s = s.estimated_tokens_per_s * r
        if s.estimated_mfu is not None:
            s.mfu = s.estimated_mfu * r


def _busy(tgt: Target) -> str | None:
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
        "calibrated step times reflect that, and multi-threaded torch slows down sharply "
        "under contention" + ("" if threads else "; OMP_NUM_THREADS=1 makes timings steadier")
    )


def _why_nothing(budget: Budget, tgt: Target, bad: list[Candidate], smallest: Shape) -> str:
    small = [c for c in bad if c.reason.startswith("budget too small")]
    if small:
        c = min(small, key=lambda c: c.params)
        flag = {"time": "--time", "flops": "--flops", "gpu_hours": "--gpu-hours",
                "cost": "--cost"}[budget.kind]
        value = {"time": budget.seconds, "flops": budget.flops, "gpu_hours": budget.gpu_hours,
                 "cost": budget.cost}[budget.kind]
        what = f"{flag} {value:g}"
        return (
            f"{what}: budget too small for the smallest model ({c.shape.name}, "
            f"{_fmt_count(c.params)} params): {c.tokens:,} tokens, {c.steps} optimizer steps "
            f"(at least {MIN_STEPS} needed)"
        )
    if bad:
        c = min(bad, key=lambda c: c.memory_bytes or 0)
        return f"plan: no candidate fits on {tgt.name}: {c.shape.name} {c.reason}"
    return f"plan: no candidate for this budget on {tgt.name}"
