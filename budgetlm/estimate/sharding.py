"""Training memory of one rank under data parallelism, replicated or sharded (no torch import).

Built from the single-process pieces (`budgetlm.estimate.memory.step_sizes` and the phases of
`budgetlm.estimate.phases`): activations, logits and working sets are those of one micro-batch
on one rank (data parallelism does not shard them); parameters, gradients and optimizer state
are replicated or sharded by the layout:

- ddp: everything replicated (torch DistributedDataParallel). With its default
  `gradient_as_bucket_view=False` the reducer keeps gradient buckets as large as the gradients
  for the whole run (`comm`), besides the gradients themselves.
- zero1: optimizer state (and its update's temporaries) sharded over the ranks, the rest as
  ddp (Rajbhandari et al. 2020, stage 1).
- zero2 / zero3: FSDP2 (`torch.distributed.fsdp.fully_shard`) on each transformer block, then
  on the root module, as budgetlm's trainer applies it; zero3 is `reshard_after_forward=True`
  (full shard), zero2 `reshard_after_forward=False` (the gathered blocks stay from their forward
  to their backward). Each rank holds the fp32 shard of every parameter (dim-0 chunks padded to
  ceil(rows / ranks) on rank 0, the largest), its gradient shard and its optimizer state. In
  flight: the root module's gathered parameters (the root is never resharded after forward),
  the gathered block in use and the all-gather output of the next one (FSDP2 keeps the last
  forward all-gather output until the next one and prefetches one block in backward), each
  block's unsharded gradients and reduce-scatter input (kept until the next reduce-scatter).
  16-bit precision means FSDP2's MixedPrecisionPolicy(param_dtype=bf16/fp16,
  reduce_dtype=fp32): gathered parameters and unsharded gradients in 16 bits, reduce-scatter in
  fp32, the sharded fp32 parameters are the master copy (in `weights`).

hsdp shards within a node and replicates across nodes: per rank it is zero3 (or zero2) over the
ranks of one node. Checked against torch's FSDPMemTracker / MemTracker under fake tensors and the
fake process group: tests/test_sharding.py (within 2.3% on 36 of 42 shape x world rows).

Known over-estimate: activations are the single-process estimate's, whose residual stream is fp32
(autocast keeps fp32 parameters). Under MixedPrecisionPolicy(bf16) the embeddings and blocks run
on 16-bit weights, so the residual stream, the checkpointed block inputs and their gradients are
16-bit: a bf16 zero2/zero3 estimate runs high by 2 bytes a residual-stream element (measured
+7% to +14% with activation checkpointing on tiny models, under +2% without).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from budgetlm.config import ModelConfig, RunConfig
from budgetlm.errors import UserError
from budgetlm.estimate.activations import bytes_per_element
from budgetlm.estimate.finetune import lora_plan
from budgetlm.estimate.inputs import assumed_micro_batch, checked_precision
from budgetlm.estimate.memory import overhead_parts, step_sizes
from budgetlm.estimate.params import ParamSpec, resident_spec_counts
from budgetlm.estimate.phases import StepSizes, step_phases

LAYOUTS = ("ddp", "zero1", "zero2", "zero3")
# The phases of a step under FSDP: as `budgetlm.estimate.phases.PHASES` with, per block (at
# the block where each holds the most), its gathering for backward (all-gather output copied
# out), its backward, its end (gradients complete, unreduced) and its reduce-scatter; before
# them the end of the last block's forward, after them the root's reduce-scatter.
FSDP_PHASES = (
    "block_forward", "forward", "loss_backward", "block_gather", "block_backward", "block_end",
    "block_reduce_scatter", "embedding_backward", "root_reduce_scatter", "optimizer",
)
CATEGORIES = ("weights", "gathered", "grads", "comm", "optimizer", "activations", "logits",
              "temporaries")
# Gradients are reduced in fp32 (MixedPrecisionPolicy reduce_dtype=float32; fp32 training too).
REDUCE_BYTES = 4
_BLOCK = re.compile(r"^((?:blocks|encoder\.block|decoder\.block)\.\d+)\.")


@dataclass(frozen=True)
class ShardUnit:
    """One FSDP unit (a block, or the root module's own parameters): `numel` parameters, of
    which rank 0 holds `shard` elements (each tensor's first ceil(rows / ranks) rows)."""

    numel: int
    shard: int


@dataclass(frozen=True)
class ShardUnits:
    """The FSDP units of a model sharded over `ranks`: the root and the blocks in forward order;
    `starts`: the first block of each run of identical blocks."""

    ranks: int
    root: ShardUnit
    blocks: tuple[ShardUnit, ...]
    starts: tuple[int, ...] = (0,)

    @cached_property
    def numel_before(self) -> tuple[int, ...]:
        """numel_before[i]: parameters of blocks 0..i-1 (i up to the number of blocks)."""
        return (0, *itertools.accumulate(b.numel for b in self.blocks))

    @cached_property
    def shard_from(self) -> tuple[int, ...]:
        """shard_from[i]: rank 0's elements of blocks i.. (i up to the number of blocks)."""
        return (*itertools.accumulate((b.shard for b in reversed(self.blocks)),
                                      initial=0),)[::-1]

    @property
    def numel(self) -> int:
        return self.root.numel + self.numel_before[-1]

    @property
    def shard(self) -> int:
        return self.root.shard + self.shard_from[0]


def _rows_shard(s: ParamSpec, ranks: int) -> int:
    """Elements of rank 0's dim-0 chunk of tensor `s` (FSDP2's Shard(0), padded)."""
    rows = s.shape[0] if s.shape else 1
    return -(-rows // ranks) * (s.numel // max(rows, 1))


def shard_units(m: ModelConfig, ranks: int) -> ShardUnits:
    """The root and per-block FSDP units of model `m` sharded over `ranks` (>= 1)."""
    if ranks < 1:
        raise UserError(f"ranks: must be a whole number >= 1, got {ranks!r}")
    root = [0, 0]
    runs: dict[str, list[tuple[ParamSpec, int]]] = {}
    for s, k in resident_spec_counts(m):
        hit = _BLOCK.match(s.name)
        if hit is None:
            root[0] += k * s.numel
            root[1] += k * _rows_shard(s, ranks)
        else:
            runs.setdefault(hit.group(1), []).append((s, k))
    blocks: list[ShardUnit] = []
    starts: list[int] = []
    for specs in runs.values():  # one run of identical blocks each, in forward order
        length = min(k for _s, k in specs)
        unit = ShardUnit(sum(k * s.numel for s, k in specs) // length,
                         sum(k * _rows_shard(s, ranks) for s, k in specs) // length)
        starts.append(len(blocks))
        blocks += [unit] * length
    return ShardUnits(ranks, ShardUnit(root[0], root[1]), tuple(blocks), tuple(starts))


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds at its training peak, by kind, in the phase the peak is in.

    weights: resident parameters and buffers: the fp32 replica (+ autocast's 16-bit copies
      autograd keeps) under ddp/zero1, the fp32 shard (the master copy) under zero2/zero3.
    gathered: FSDP's unsharded parameters and all-gather outputs in flight (0 under ddp/zero1).
    grads: parameter gradients alive (unsharded and sharded).
    comm: communication buffers: DDP's gradient buckets, FSDP's reduce-scatter input.
    optimizer: optimizer state (sharded under zero1/2/3).
    activations, logits, temporaries: as in `budgetlm.estimate.Memory` (one micro-batch).
    device_remainder: CUDA context, workspace, allocator slack (0 on CPU).
    phases: every phase's tensor bytes; tensor_peak = their maximum; total adds the remainder.
    """

    layout: str
    world: int
    shard_ranks: int
    weights: int
    gathered: int
    grads: int
    comm: int
    optimizer: int
    activations: int
    logits: int
    temporaries: int
    device_remainder: int
    peak_phase: str
    phases: tuple[tuple[str, int], ...]

    @property
    def tensor_peak(self) -> int:
        return sum(getattr(self, k) for k in CATEGORIES)

    @property
    def total(self) -> int:
        return self.tensor_peak + self.device_remainder

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in ("layout", "world", "shard_ranks",
                                                           *CATEGORIES)}
        d.update(tensor_peak=self.tensor_peak, peak_phase=self.peak_phase,
                 device_remainder=self.device_remainder, total=self.total,
                 phases=dict(self.phases))
        return d


def layout_for(parallel: str, reshard_after_forward: bool = True) -> str:
    """The LAYOUTS entry budgetlm's trainer runs for train.parallel (ddp, fsdp, hsdp)."""
    if parallel == "ddp":
        return "ddp"
    if parallel in ("fsdp", "hsdp"):
        return "zero3" if reshard_after_forward else "zero2"
    raise UserError(f"train.parallel: unknown layout {parallel!r}; one of ddp, fsdp, hsdp")


def _shard_ranks(world: int, parallel: str, ranks_per_node: int | None) -> int:
    """Ranks a parameter is sharded over: the world, or one node's ranks under hsdp."""
    if parallel != "hsdp":
        return world
    if ranks_per_node is None or ranks_per_node < 1:
        raise UserError("ranks_per_node: hsdp shards within a node; give the ranks per node")
    if world % ranks_per_node:
        raise UserError(f"world: {world} ranks is not a whole number of nodes of "
                        f"{ranks_per_node} ranks (hsdp)")
    return ranks_per_node


def _row(weights: int = 0, gathered: int = 0, grads: int = 0, comm: int = 0, optimizer: int = 0,
         activations: int = 0, logits: int = 0, temporaries: int = 0) -> dict[str, int]:
    return {"weights": weights, "gathered": gathered, "grads": grads, "comm": comm,
            "optimizer": optimizer, "activations": activations, "logits": logits,
            "temporaries": temporaries}


def _replicated_phases(s: StepSizes, layout: str, world: int, buckets: int,
                       state_fraction: float) -> dict[str, dict[str, int]]:
    """ddp / zero1: the single-process phases plus the gradient buckets; zero1 shards the
    optimizer state and its update's temporaries."""
    out = {}
    sharded = layout == "zero1" and world > 1
    for name, parts in step_phases(s).items():
        temps = parts["temporaries"]
        if sharded and name == "optimizer":
            temps = math.ceil(temps * state_fraction)
        state = math.ceil(parts["optimizer"] * state_fraction) if sharded else parts["optimizer"]
        out[name] = _row(parts["weights"], 0, parts["grads"], buckets, state,
                         parts["activations"], parts["logits"], temps)
    return out


@dataclass(frozen=True)
class _FsdpBytes:
    """Bytes FSDP moves around, for one model and layout (see `_fsdp_phases`)."""

    units: ShardUnits
    param: int  # bytes of a gathered parameter (MixedPrecisionPolicy param_dtype)
    resident: int  # the fp32 shards and the buffers
    state: int
    opt_temps: int
    head_grad: int  # the head's unsharded gradient
    tied_sum: int  # a tied embedding's dense gradient and its sum with the head's

    def gathered(self, u: ShardUnit) -> int:
        return self.param * u.numel

    def all_gather(self, u: ShardUnit | None) -> int:
        return 0 if u is None else self.param * self.units.ranks * u.shard

    def reduce_scatter(self, u: ShardUnit | None) -> int:
        return 0 if u is None else REDUCE_BYTES * self.units.ranks * u.shard

    def grad_shards(self, first: int) -> int:
        """fp32 gradient shards of blocks `first`.. (reduce-scattered already)."""
        return 4 * self.units.shard_from[first]

    def reducing(self, u: ShardUnit) -> int:
        """Gradients while `u` reduce-scatters: its unsharded gradients, then its shard."""
        return max(self.param * u.numel, 4 * u.shard)


def _fsdp_bytes(s: StepSizes, units: ShardUnits, precision: str) -> _FsdpBytes:
    frac = units.shard / max(units.numel, 1)
    p = bytes_per_element(precision)
    return _FsdpBytes(
        units=units,
        param=p,
        resident=4 * units.shard + (s.params - 4 * units.numel),
        state=math.ceil(s.state * frac),
        opt_temps=math.ceil(s.opt_temps * frac),
        head_grad=s.grads_head * p // 4,
        tied_sum=2 * s.tied_embedding * p // 4,
    )


def _candidates(units: ShardUnits) -> list[int]:
    """Blocks whose backward can hold the most: each run of equal blocks at its ends (within
    a run every term is linear in the index) and next to where the neighbours change."""
    n = len(units.blocks)
    edges = {0, n - 1, *units.starts}
    return sorted({j for i in edges for j in (i - 1, i, i + 1) if 0 <= j < n})


def _block_rows(s: StepSizes, b: _FsdpBytes, reshard: bool, i: int) -> list[dict[str, int]]:
    """What is alive at block i's gathering for backward, its backward (at its working set),
    its end (its gradients complete, not yet reduced) and its reduce-scatter."""
    blocks, n = b.units.blocks, s.n_blocks
    unit = blocks[i]
    below = blocks[i - 1] if i > 0 else None  # prefetched (the root is gathered already)
    above = blocks[i + 1] if i + 1 < len(blocks) else None  # its reduce-scatter input is kept
    root = b.gathered(b.units.root)
    if reshard:
        params = root + b.gathered(unit) + b.all_gather(below)
    else:  # the blocks below are still gathered from the forward
        params = root + b.param * b.units.numel_before[i + 1]
    reduced = b.head_grad + b.grad_shards(i + 1)
    held = s.logits * s.c  # the loop holds the logits until the next step
    recompute = s.acts_block if s.checkpointing else 0
    kept_below = s.acts_kept * i // n
    w, st = b.resident, b.state
    kept = s.inputs + s.acts_kept * (i + 1) // n
    return [
        # its all-gather output copied out into its parameters (the prefetch comes after)
        _row(w, root + b.gathered(unit) + b.all_gather(unit) if reshard else params, reduced,
             b.reduce_scatter(above), st, kept, held),
        _row(w, params, reduced, b.reduce_scatter(above), st, kept + recompute, held,
             s.workspace),
        _row(w, params, reduced + b.gathered(unit), b.reduce_scatter(above), st,
             s.inputs + kept_below, held),
        _row(w, params - b.gathered(unit), reduced + b.reducing(unit), b.reduce_scatter(unit),
             st, s.inputs + kept_below, held),
    ]


def _fsdp_phases(s: StepSizes, b: _FsdpBytes, reshard: bool) -> dict[str, dict[str, int]]:
    """zero3 (reshard) / zero2: what is alive in each of FSDP_PHASES (the block phases at the
    block where they hold the most)."""
    blocks = b.units.blocks
    root = b.gathered(b.units.root)
    every = b.param * b.units.numel_before[-1]
    fp32_copy = 4 if s.c != 4 else 0  # logits.float() for the loss
    held = s.logits * s.c
    acts = s.inputs + s.acts_kept + s.acts_final
    w, st = b.resident, b.state
    rows = [_block_rows(s, b, reshard, i) for i in _candidates(b.units)]
    worst = [max((r[k] for r in rows), key=lambda row: sum(row.values())) for k in range(4)]
    last = blocks[-1]
    return {
        # the end of the last block's forward: its parameters and its all-gather output
        "block_forward": _row(w, root + b.all_gather(last) + (b.gathered(last) if reshard
                                                               else every), 0, 0, st,
                              s.inputs + s.acts_kept),
        # the last block's all-gather output stays until the root's forward ends
        "forward": _row(w, root + b.all_gather(blocks[-1]) + (0 if reshard else every), 0, 0,
                        st, acts, s.logits * (s.c + fp32_copy + 4), s.final_out),
        # the root's backward prefetches the last block
        "loss_backward": _row(w, root + (b.all_gather(blocks[-1]) if reshard else every), 0, 0,
                              st, acts, s.logits * (s.c + 12)),
        "block_gather": worst[0],
        "block_backward": worst[1],
        "block_end": worst[2],
        "block_reduce_scatter": worst[3],
        "embedding_backward": _row(w, root, b.grad_shards(0) + b.gathered(b.units.root),
                                   b.reduce_scatter(blocks[0]), st, s.inputs, held, b.tied_sum),
        # the root reshards, then reduce-scatters (the first block's input freed before)
        "root_reduce_scatter": _row(w, 0, b.grad_shards(0) + b.reducing(b.units.root),
                                    b.reduce_scatter(b.units.root), st, s.inputs, held),
        "optimizer": _row(w, 0, 4 * b.units.shard, 0, st, s.inputs, held, b.opt_temps),
    }


def rank_memory(
    cfg: RunConfig,
    world: int,
    layout: str | None = None,
    *,
    parallel: str | None = None,
    ranks_per_node: int | None = None,
    micro_batch: int | None = None,
    precision: str | None = None,
    optimizer: str | None = None,
    checkpointing: bool | None = None,
    device: str | None = None,
    bucket_view: bool = False,
) -> RankMemory:
    """Training memory of one rank of `world` (rank 0, which holds the largest shards).

    layout: one of LAYOUTS; None takes it from train.parallel and train.reshard_after_forward.
    parallel: "hsdp" shards over `ranks_per_node` ranks and replicates across nodes (default
    train.parallel). bucket_view: DDP's gradient_as_bucket_view (then no separate buckets).
    Other arguments as `budgetlm.estimate.memory_breakdown`; micro_batch is what one rank
    computes at once (when world does not divide train.grad_accum, the trainer cuts each
    micro-batch into pieces: budgetlm.train.parallel.split_global_batch). A LoRA fine-tune is
    estimated under ddp/zero1 only.
    """
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise UserError(f"world: must be a whole number of ranks >= 1, got {world!r}")
    par = parallel or cfg.train.parallel
    lay = layout or layout_for(par, cfg.train.reshard_after_forward)
    if lay not in LAYOUTS:
        raise UserError(f"layout: unknown {lay!r}; one of {', '.join(LAYOUTS)}")
    ranks = _shard_ranks(world, par, ranks_per_node) if lay in ("zero2", "zero3") else world
    if lay in ("zero2", "zero3") and lora_plan(cfg) is not None:
        raise UserError(f"finetune.method: lora is estimated under ddp, not sharded ({lay})")
    prec = checked_precision(precision or cfg.train.precision)
    dev = "cpu" if (device or cfg.train.device) == "cpu" else "cuda"  # as memory_breakdown
    ckpt = cfg.train.activation_checkpointing if checkpointing is None else checkpointing
    # step_sizes raises the UserError for an unknown optimizer (optimizer_state_bytes)
    s = step_sizes(cfg, assumed_micro_batch(cfg, micro_batch), prec,
                   optimizer or cfg.optim.name, ckpt, dev)
    units = shard_units(cfg.model, ranks)
    if lay in ("ddp", "zero1"):
        buckets = s.grads_all if world > 1 and not bucket_view else 0
        frac = units.shard / max(units.numel, 1)
        phases = _replicated_phases(s, lay, world, buckets, frac)
    else:
        phases = _fsdp_phases(s, _fsdp_bytes(s, units, prec), lay == "zero3")
    peak = max(phases, key=lambda p: sum(phases[p].values()))
    parts = phases[peak]
    return RankMemory(
        layout=lay, world=world, shard_ranks=ranks if lay != "ddp" else 1,
        **parts,
        device_remainder=sum(overhead_parts(dev, sum(parts.values())).values()),
        peak_phase=peak,
        phases=tuple((p, sum(v.values())) for p, v in phases.items()),
    )
