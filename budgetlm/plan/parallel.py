"""Pricing a candidate on several GPUs: the data-parallel layout and activation checkpointing
that fit memory per GPU and give the shortest optimizer step.

Layouts are what the trainer runs (`train.parallel`, `train.reshard_after_forward`): ddp
(replicated), fsdp (FSDP2 on every block: full shard, ZeRO-3; without resharding after forward,
ZeRO-2) and, on several nodes, hsdp (sharded within a node, replicated across nodes). Memory per
GPU is `budgetlm.estimate.rank_memory`; a step is its compute (`plan.precision.compute_time`,
the single-GPU estimate of one micro-batch, times the micro-steps) plus the communication not
hidden behind it (`budgetlm.estimate.comm_time` on the target's `hardware.Fabric`, with its
stated overlap assumption).

The step depends on the batch (FSDP gathers the weights on every micro-step, DDP all-reduces once
per optimizer step), so layouts are compared, by seconds per sequence, at the batch the budget
roughly buys (the prior's, at the compute-only throughput) split into the largest micro-batches
that fit. Memory is affine in the micro-batch per phase (`AffineMemory`: two estimator calls a
layout, ~0.5 ms each), so layouts are priced lazily (`_LayoutSearch.choose`): ddp first; else
from the least memory up, each layout bounded from below by its step at the largest micro-batch
the layouts below it allow, and priced only when that bound beats the best so far by
WORTH_PRICING; a layout that did not fit a smaller model at a shorter sequence is not tried.
`finish_candidate` prices the chosen layout again at the batch finally chosen
(`Candidate.step_model`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from budgetlm.config import ModelConfig, RunConfig, tokens_per_step
from budgetlm.estimate import (
    DEFAULT_OVERLAP,
    CommTime,
    comm_time,
    layout_for,
    memory_phase_totals,
    model_flops_per_token,
    rank_memory,
)
from budgetlm.plan.budget import Target
from budgetlm.plan.ladder import Shape
from budgetlm.plan.precision import ComputeTime, compute_time, estimator_precision
from budgetlm.plan.pricing import (
    AffineMemory,
    Candidate,
    PlanContext,
    batch_split,
    estimator_config,
    exact_batch,
    micro_batch_cap,
    model_sizes,
    price_each,
)

# what each layout label means, in the order the notes list them
LAYOUT_WORDS = {
    "ddp": "ddp: replicated (train.parallel ddp)",
    "fsdp": "fsdp: FSDP2 full shard, ZeRO-3 (train.parallel fsdp, reshard_after_forward true)",
    "fsdp-z2": "fsdp-z2: gathered blocks kept from forward to backward, ZeRO-2 (fsdp, "
               "reshard_after_forward false)",
    "hsdp": "hsdp: full shard within a node, replicated across nodes (hsdp)",
    "hsdp-z2": "hsdp-z2: hsdp without resharding after forward",
}


@dataclass(frozen=True)
class Layout:
    """How a candidate is spread over the GPUs: train.parallel, train.reshard_after_forward
    (fsdp/hsdp) and train.activation_checkpointing."""

    parallel: str
    reshard: bool = True
    checkpointing: bool = False

    @property
    def sharding(self) -> str:
        """The estimator's layout: ddp, zero2 or zero3 (`budgetlm.estimate.layout_for`)."""
        return layout_for(self.parallel, self.reshard)

    @property
    def label(self) -> str:
        """'ddp', 'fsdp', 'fsdp-z2', 'hsdp' or 'hsdp-z2' (keys of LAYOUT_WORDS)."""
        return self.parallel + ("-z2" if self.sharding == "zero2" else "")


# A layout is priced only when its best case beats the best step found by more than this
# share: layouts within a few percent of each other are alike to a step-time estimate, and
# each costs two memory estimates.
WORTH_PRICING = 0.03
SMALLEST = Layout("fsdp", True, True)  # full shard over every GPU, checkpointed
# every layout, each after those that take no more memory per GPU than it
MEMORY_ORDER = (
    SMALLEST, Layout("fsdp"), Layout("fsdp", False, True), Layout("hsdp", True, True),
    Layout("fsdp", False), Layout("hsdp"), Layout("hsdp", False, True), Layout("hsdp", False),
    Layout("ddp", True, True), Layout("ddp"),
)
# each layout -> the layouts that shard more (so take no more memory per GPU than it)
_SHARDS_MORE = {"ddp": (("hsdp", False), ("fsdp", False)),
                "hsdp-z2": (("hsdp", True), ("fsdp", False)),
                "fsdp-z2": (("fsdp", True),), "hsdp": (("fsdp", True),)}


@functools.cache
def _below(lay: Layout, nodes: int) -> tuple[Layout, ...]:
    """Every layout that takes no more memory per GPU than `lay` (transitively)."""
    out: list[Layout] = []
    for less in _needs_no_more(lay, nodes):
        out += [less, *_below(less, nodes)]
    return tuple(out)


def _needs_no_more(lay: Layout, nodes: int) -> list[Layout]:
    """The layouts next below `lay` in memory per GPU: those that shard more (fsdp <= fsdp-z2
    <= hsdp-z2 <= ddp, fsdp <= hsdp <= hsdp-z2; hsdp only on several `nodes`), then `lay`
    with checkpointing."""
    out = [Layout(par, rs, lay.checkpointing) for par, rs in _SHARDS_MORE.get(lay.label, ())
           if par != "hsdp" or nodes > 1]
    if not lay.checkpointing:
        out.append(Layout(lay.parallel, lay.reshard, True))
    return out


@dataclass(frozen=True)
class StepPrice:
    """One optimizer step of `micro_batch` x `accum` sequences on each of `devices` GPUs:
    compute, then the communication `comm` (its exposed part adds to the step)."""

    micro_batch: int
    accum: int
    devices: int
    seq_len: int
    compute_seconds: float
    comm: CommTime

    @property
    def seconds(self) -> float:
        return self.compute_seconds + self.comm.exposed_seconds

    @property
    def seconds_per_sequence(self) -> float:
        """The step's seconds per sequence of one GPU: what layouts are compared by (their
        batches differ by rounding)."""
        return self.seconds / (self.micro_batch * self.accum)

    @property
    def comm_share(self) -> float:
        """Share of the step spent on communication not hidden behind compute."""
        return self.comm.exposed_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Training tokens per second, all GPUs together."""
        return tokens_per_step(self.micro_batch, self.accum * self.devices,
                               self.seq_len) / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {"step_seconds": self.seconds, "compute_seconds": self.compute_seconds,
                "comm_seconds": self.comm.exposed_seconds,
                "comm_total_seconds": self.comm.seconds, "comm_share": self.comm_share,
                "comm_bytes": self.comm.volume.bytes_sent, "bottleneck": self.comm.bottleneck}


@dataclass(frozen=True)
class StepModel:
    """Prices a step of one candidate in one layout on `fabric` at any batch.

    cfg: the estimator's config (model, precision, checkpointing); seq_seconds: compute of one
    sequence on one GPU (forward, backward, recompute), linear in the sequences."""

    cfg: RunConfig
    fabric: Any
    layout: Layout
    seq_seconds: float

    def price(self, micro_batch: int, accum: int) -> StepPrice:
        compute = micro_batch * accum * self.seq_seconds
        comm = comm_time(self.cfg, self.fabric, self.layout.sharding,
                         parallel=self.layout.parallel, compute_seconds=compute,
                         micro_steps=accum)
        return StepPrice(micro_batch, accum, self.fabric.gpus, self.cfg.model.seq_len,
                         compute, comm)


@dataclass(frozen=True)
class _Choice:
    layout: Layout
    memory: AffineMemory
    max_micro_batch: int
    price: StepPrice
    split: tuple[int, int]  # (micro-batch, accumulation) priced

    @property
    def cost(self) -> float:
        return self.price.seconds_per_sequence


class _LayoutSearch:
    """The layouts of one (model, precision) on the target's GPUs, memory priced on demand."""

    def __init__(self, shape: Shape, precision: str, ctx: PlanContext,
                 cfgs: dict[bool, RunConfig], times: dict[bool, ComputeTime]):
        tgt = ctx.target
        m = cfgs[False].model
        self.shape, self.precision, self.seq_len = shape, precision, m.seq_len
        self.ctx, self.fabric, self.cfgs, self.times = ctx, tgt.fabric, cfgs, times
        self.limit = float(tgt.memory_limit or 0.0)
        self.cap = micro_batch_cap(tgt)
        self.order = [lay for lay in MEMORY_ORDER
                      if lay.parallel != "hsdp" or self.fabric.nodes > 1]
        self.fit: dict[Layout, bool] = {}  # whether micro-batch 1 fits
        self.choices: dict[Layout, _Choice] = {}  # the layouts priced (they fit)
        self.at1_smallest = 0  # memory of the smallest layout at micro-batch 1
        self.prices: dict[tuple[Layout, tuple[int, int]], StepPrice] = {}
        # the batch the budget roughly buys, at the compute-only throughput
        rate = tokens_per_step(1, tgt.devices, m.seq_len) / times[False].seconds
        fpt = model_flops_per_token(m)
        tokens = (float(tgt.flops) / fpt if tgt.kind == "flops"  # type: ignore[arg-type]
                  else rate * float(tgt.wall_seconds))  # type: ignore[arg-type]
        self.compute, self.tokens = fpt * tokens, tokens

    def split(self, mb_cap: int) -> tuple[int, int]:
        return batch_split(self.tokens, self.compute, self.cfgs[False].model.seq_len,
                           self.fabric.gpus, mb_cap, exact_batch(self.ctx.target))

    def model(self, lay: Layout) -> StepModel:
        return StepModel(self.cfgs[lay.checkpointing], self.fabric, lay,
                         self.times[lay.checkpointing].seconds)

    def price(self, lay: Layout, split: tuple[int, int]) -> StepPrice:
        key = (lay, split)
        if key not in self.prices:
            self.prices[key] = self.model(lay).price(*split)
        return self.prices[key]

    def _totals(self, lay: Layout, mb: int) -> dict[str, int]:
        rm = rank_memory(self.cfgs[lay.checkpointing], self.fabric.gpus, lay.sharding,
                         parallel=lay.parallel, ranks_per_node=self.fabric.gpus_per_node,
                         micro_batch=mb, device="cuda")
        return memory_phase_totals(rm, "cuda")  # type: ignore[arg-type]  # .phases as Memory's

    def evaluate(self, lay: Layout) -> _Choice | None:
        """`lay` at the largest micro-batch that fits (None: micro-batch 1 does not fit, or did
        not for a model no larger at a sequence no longer: memory grows with both)."""
        failed = self.ctx.no_fit.setdefault((self.precision, lay), [])
        size = (self.shape.approx_params, self.seq_len)
        if lay != SMALLEST and any(n <= size[0] and t <= size[1] for n, t in failed):
            self.fit[lay] = False
            return None
        at1 = self._totals(lay, 1)
        if lay == SMALLEST:
            self.at1_smallest = max(at1.values())
        self.fit[lay] = max(at1.values()) <= self.limit
        if not self.fit[lay]:
            failed.append(size)
            return None
        at2 = self._totals(lay, 2)
        mem = AffineMemory(tuple((at1[p], at2[p] - at1[p]) for p in at1))
        mb_max = mem.largest_pow2(self.limit, self.cap)
        split = self.split(mb_max)
        self.choices[lay] = _Choice(lay, mem, mb_max, self.price(lay, split), split)
        return self.choices[lay]

    def ceiling(self, lay: Layout) -> int | None:
        """The largest micro-batch `lay` can take, from the layouts below it priced so far
        (they take no more memory at any micro-batch); None: one of them does not fit."""
        below = _below(lay, self.fabric.nodes)
        if any(self.fit.get(x) is False for x in below):
            return None
        return min((self.choices[x].max_micro_batch for x in below if x in self.choices),
                   default=self.cap)

    def choose(self) -> _Choice | None:
        """The layout with the shortest step that fits (None: none fits at micro-batch 1).

        ddp first (it takes the most memory): when it fits, its step does not depend on the
        micro-batch (one all-reduce per optimizer step), so only a layout that steps faster at
        the largest micro-batch can beat it. Otherwise full sharding over every GPU or within
        each node, whichever steps faster at the largest micro-batch (or, when it does not fit,
        the least memory: when that does not fit, nothing does), then the others from the least
        memory up
        (MEMORY_ORDER): each one's step at the largest micro-batch the layouts below it allow
        bounds it from below (checkpointing only adds compute), and it is priced only when
        that bound beats the best step so far by WORTH_PRICING."""
        ddp = self.evaluate(Layout("ddp"))
        full = self.split(self.cap)
        if ddp is not None:  # its all-reduce per optimizer step is the same at any micro-batch
            best = ddp
            for lay in self.order:
                if not lay.checkpointing and lay != ddp.layout and self.worth(lay, full, best):
                    got = self.evaluate(lay)
                    if got is not None and got.cost < best.cost:
                        best = got
            return best
        # full shard over every GPU or, on several nodes, within each (whichever steps faster
        # at the largest micro-batch); else the least memory
        first = min((lay for lay in (Layout("fsdp"), Layout("hsdp")) if lay in self.order),
                    key=lambda lay: self.price(lay, full).seconds_per_sequence)
        best = self.evaluate(first) or self.evaluate(SMALLEST)
        if best is None:
            return None  # not even the layout with the least memory fits
        for lay in self.order:
            ceiling = None if lay in self.fit else self.ceiling(lay)
            if ceiling is not None and self.worth(lay, self.split(ceiling), best):
                got = self.evaluate(lay)
                if got is not None and got.cost < best.cost:
                    best = got
        return best

    def worth(self, lay: Layout, split: tuple[int, int], best: _Choice) -> bool:
        """Whether `lay` at `split`, its best case, beats `best` by more than WORTH_PRICING
        (its compute alone first, then with its communication)."""
        goal = (1.0 - WORTH_PRICING) * best.cost
        return self.times[lay.checkpointing].seconds < goal \
            and self.price(lay, split).seconds_per_sequence < goal


def price_sharded(shape: Shape, seq_len: int, precisions: list[str],
                  ctx: PlanContext) -> list[Candidate]:
    """`pricing.price_candidates` on several GPUs with an interconnect (`Target.fabric`): each
    precision's candidate in the layout that fits and steps fastest."""
    return price_each(shape, seq_len, precisions, ctx, _price_sharded_in)


def _price_sharded_in(shape: Shape, m: ModelConfig, precision: str,
                      ctx: PlanContext) -> Candidate | None:
    """The candidate of model `m` in `precision` (None: no peak for it on this GPU)."""
    tgt = ctx.target
    prec = estimator_precision(precision)
    cfgs = {ck: estimator_config(m, prec, 1, ck, ctx.optimizer, "cuda") for ck in (False, True)}
    times: dict[bool, ComputeTime] = {}
    for ck, cfg in cfgs.items():
        t = compute_time(cfg, tgt.profile, 1, precision)
        if t is None:
            return None  # no peak for this precision on this GPU
        times[ck] = t
    search = _LayoutSearch(shape, precision, ctx, cfgs, times)
    best = search.choose()
    common = {"shape": shape, "seq_len": m.seq_len, "precision": precision,
              "vocab_size": ctx.vocab, "grad_accum": 1, "devices": tgt.devices, **model_sizes(m)}
    if best is None:
        need = search.at1_smallest
        return Candidate(
            **common, micro_batch=1, checkpointing=True, memory_bytes=need, tokens_per_s=None,
            time_source="", feasible=False,
            reason=f"does not fit: {need / 2**30:.1f} GiB per GPU at micro-batch 1 even fully "
                   f"sharded (fsdp over {tgt.devices} GPUs) with checkpointing > "
                   f"{search.limit / 2**30:.1f} GiB",
        )
    lay, t = best.layout, times[best.layout.checkpointing]
    cand = Candidate(
        **common, micro_batch=best.max_micro_batch, checkpointing=lay.checkpointing,
        memory_bytes=best.memory(best.max_micro_batch), tokens_per_s=best.price.tokens_per_s,
        time_source=t.source, parallel=lay.parallel,
        reshard_after_forward=None if lay.parallel == "ddp" else lay.reshard,
    )
    cand.mfu = cand.estimated_mfu = t.mfu
    cand.estimated_tokens_per_s = cand.tokens_per_s
    cand.memory_model = best.memory
    cand.step_model = search.model(lay)
    cand.step = best.price
    return cand


def layout_label(c: Candidate) -> str | None:
    """The candidate's layout ('fsdp', 'ddp', ...), None when none was priced (one GPU)."""
    return c.step_model.layout.label if c.step_model is not None else None


def comm_notes(top: Candidate, tgt: Target, shown: list[Candidate]) -> list[str]:
    """The fabric, the overlap assumption, the top candidate's layout and its communication
    share with the link that bounds it (why a slow network makes the plan slower), and what the
    layouts of the `shown` candidates mean."""
    fab = tgt.fabric
    if fab is None or top.step is None:
        return []
    step: StepPrice = top.step
    comm = step.comm
    between = fab.network is not None and fab.nodes > 1 and comm.bottleneck == fab.network.name
    where = "between nodes" if between else "inside a node"
    label = layout_label(top) or "ddp"
    share = (f"{comm.bottleneck} {where}: communication is {step.comm_share:.0%} of the step "
             f"(top: {label}{' with checkpointing' if top.checkpointing else ''}, "
             f"{step.compute_seconds:.3g} s of compute and {comm.exposed_seconds:.3g} s of "
             f"communication not hidden, of {comm.seconds:.3g} s, per optimizer step)")
    if step.comm_share >= 0.3:
        share += "; the step is communication-bound: a faster network would shorten it"
    labels = {layout_label(c) for c in [top, *shown]}
    return [
        f"interconnect: {fab.describe()} (datasheet figures, unmeasured); ring collectives, "
        f"{DEFAULT_OVERLAP:.0%} of their time assumed hidden behind compute",
        share,
        "layout (par), the fastest that fits memory per GPU, chosen per candidate: "
        + "; ".join(words for key, words in LAYOUT_WORDS.items() if key in labels),
    ]
