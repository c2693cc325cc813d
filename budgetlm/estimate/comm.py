"""Communication of one optimizer step under data parallelism: bytes each rank sends, and the
seconds they take on a fabric (no torch import).

Ring collectives over k ranks (NCCL's algorithm for large messages; Patarasuk & Yuan 2009): an
all-reduce of B bytes sends 2(k-1)/k x B from every rank, an all-gather or a reduce-scatter
whose full buffer is B sends (k-1)/k x B. Per layout (see `budgetlm.estimate.sharding`):

- ddp: one all-reduce of the gradients per optimizer step (budgetlm's loop skips the sync on
  the other micro-steps), in DDP's buckets of 25 MiB (fp32 gradients: autocast keeps fp32
  parameters).
- zero1: a reduce-scatter of the gradients and an all-gather of the updated parameters (fp32).
- zero2 / zero3 (FSDP2): on every micro-step, an all-gather of each block's parameters for the
  forward (in MixedPrecisionPolicy's param_dtype), zero3 again for the backward (the root is
  not resharded after forward), and a reduce-scatter of each unit's gradients (fp32 reduce).
- hsdp: the zero3 collectives within a node, plus an all-reduce of every gradient shard across
  the nodes on the last micro-step (one rank per node in each, all of a node's ranks at once
  over its NICs).

Time: bytes over the bandwidth of the slowest link a collective crosses, per direction (a ring
over several nodes runs at min(NVLink of a GPU, the node's network), NCCL using one ring per
NIC), plus an assumed latency per call (`budgetlm.hardware.interconnect`). `overlap` is the
fraction of it assumed hidden behind compute (DEFAULT_OVERLAP), never more than the compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from budgetlm.config import RunConfig
from budgetlm.errors import UserError
from budgetlm.estimate.activations import bytes_per_element
from budgetlm.estimate.inputs import checked_precision
from budgetlm.estimate.sharding import LAYOUTS, REDUCE_BYTES, layout_for, shard_units

# Fraction of the communication time assumed hidden behind compute: FSDP prefetches the next
# all-gather during the current block and DDP all-reduces buckets during the backward pass, but
# the first all-gather, the last reduce-scatter and contention for memory bandwidth stay
# exposed. An assumption, not measured here; 0 is the no-overlap bound, 1 the perfect one.
DEFAULT_OVERLAP = 0.5
# torch DistributedDataParallel's bucket_cap_mb default; the first bucket is 1 MiB.
DDP_BUCKET_BYTES = 25 * 2**20
DDP_FIRST_BUCKET_BYTES = 2**20


@dataclass(frozen=True)
class Collective:
    """One kind of collective in a step: `bytes_sent` by one rank per optimizer step over
    `calls` calls, among `ranks` ranks. scope: "world" (every rank; crosses nodes when there
    are several), "node" (the ranks of one node) or "across" (one rank per node, all of a
    node's ranks at once)."""

    kind: str
    what: str
    scope: str
    ranks: int
    bytes_sent: int
    calls: int


@dataclass(frozen=True)
class CommVolume:
    """Every collective of one optimizer step of `layout` over `world` ranks."""

    layout: str
    world: int
    shard_ranks: int
    micro_steps: int
    collectives: tuple[Collective, ...]

    @property
    def bytes_sent(self) -> int:
        return sum(c.bytes_sent for c in self.collectives)


def _ring(kind: str, full_bytes: float, ranks: int) -> int:
    """Bytes one rank sends in a ring `kind` whose full buffer is `full_bytes`."""
    if ranks <= 1:
        return 0
    share = 2 * (ranks - 1) / ranks if kind == "all_reduce" else (ranks - 1) / ranks
    return math.ceil(share * full_bytes)


def _ddp_buckets(grad_bytes: int) -> int:
    """DDP's bucket count for `grad_bytes` of gradients (the first bucket 1 MiB)."""
    rest = max(grad_bytes - DDP_FIRST_BUCKET_BYTES, 0)
    return 1 + math.ceil(rest / DDP_BUCKET_BYTES)


def _micro_steps(cfg: RunConfig, world: int, micro_steps: int | None) -> int:
    """Micro-steps one rank runs per optimizer step: `micro_steps`, else the trainer's split
    of train.grad_accum over the ranks (`budgetlm.train.parallel.split_global_batch`:
    grad_accum / gcd(world, grad_accum), each a piece of a micro-batch when world does not
    divide grad_accum)."""
    if micro_steps is None:
        return cfg.train.grad_accum // math.gcd(world, cfg.train.grad_accum)
    if isinstance(micro_steps, bool) or not isinstance(micro_steps, int) or micro_steps < 1:
        raise UserError(f"micro_steps: must be a whole number >= 1, got {micro_steps!r}")
    return micro_steps


def comm_volume(
    cfg: RunConfig,
    world: int,
    layout: str | None = None,
    *,
    parallel: str | None = None,
    ranks_per_node: int | None = None,
    micro_steps: int | None = None,
    precision: str | None = None,
) -> CommVolume:
    """The collectives of one optimizer step of `cfg` on `world` ranks. layout, parallel and
    ranks_per_node as `budgetlm.estimate.sharding.rank_memory` (hsdp replicates across
    world / ranks_per_node nodes); micro_steps: per rank and optimizer step (default: the
    trainer's split of train.grad_accum over the ranks)."""
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise UserError(f"world: must be a whole number of ranks >= 1, got {world!r}")
    par = parallel or cfg.train.parallel
    lay = layout or layout_for(par, cfg.train.reshard_after_forward)
    if lay not in LAYOUTS:
        raise UserError(f"layout: unknown {lay!r}; one of {', '.join(LAYOUTS)}")
    steps = _micro_steps(cfg, world, micro_steps)
    hsdp = par == "hsdp" and lay in ("zero2", "zero3")
    if hsdp and (ranks_per_node is None or ranks_per_node < 1 or world % ranks_per_node):
        raise UserError(f"ranks_per_node: hsdp needs whole nodes; {world} ranks over "
                        f"{ranks_per_node!r} a node")
    ranks = ranks_per_node if hsdp and ranks_per_node else world
    units = shard_units(cfg.model, ranks)
    scope = "node" if hsdp else "world"
    out: list[Collective] = []
    if lay in ("ddp", "zero1"):
        grads = 4 * units.numel
        if lay == "ddp":
            out.append(Collective("all_reduce", "gradients", "world", world,
                                  _ring("all_reduce", grads, world), _ddp_buckets(grads)))
        else:
            out += [Collective("reduce_scatter", "gradients", "world", world,
                               _ring("reduce_scatter", grads, world), 1),
                    Collective("all_gather", "updated parameters", "world", world,
                               _ring("all_gather", grads, world), 1)]
        return CommVolume(lay, world, world if lay == "zero1" else 1, steps, tuple(out))
    p = bytes_per_element(checked_precision(precision or cfg.train.precision))
    n_units, blocks = 1 + len(units.blocks), sum(b.shard for b in units.blocks)
    out.append(Collective("all_gather", "parameters for the forward", scope, ranks,
                          steps * p * (ranks - 1) * units.shard, steps * n_units))
    if lay == "zero3":
        out.append(Collective("all_gather", "block parameters for the backward", scope, ranks,
                              steps * p * (ranks - 1) * blocks, steps * len(units.blocks)))
    out.append(Collective("reduce_scatter", "gradients", scope, ranks,
                          steps * REDUCE_BYTES * (ranks - 1) * units.shard, steps * n_units))
    nodes = world // ranks
    if hsdp and nodes > 1:  # on the last micro-step only
        out.append(Collective("all_reduce", "gradient shards across nodes", "across", nodes,
                              _ring("all_reduce", REDUCE_BYTES * units.shard, nodes), n_units))
    return CommVolume(lay, world, ranks, steps, tuple(out))


@dataclass(frozen=True)
class CommTime:
    """Seconds of communication per optimizer step on a fabric.

    seconds: every collective back to back (bytes over its bandwidth plus latency per call);
    exposed_seconds: what is left after `overlap` of it hides behind `compute_seconds` (never
    more than the compute); bottleneck: the link that bounds the most bytes, in words.
    """

    volume: CommVolume
    seconds: float
    latency_seconds: float
    exposed_seconds: float
    overlap: float
    compute_seconds: float | None
    bandwidths: dict[str, float]
    bottleneck: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.volume.layout, "world": self.volume.world,
            "bytes_sent": self.volume.bytes_sent, "seconds": self.seconds,
            "latency_seconds": self.latency_seconds, "exposed_seconds": self.exposed_seconds,
            "overlap": self.overlap, "bandwidths": dict(self.bandwidths),
            "bottleneck": self.bottleneck,
        }


def _bandwidths(fabric: Any) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """Per scope: bytes per second per rank and direction, latency per call, the link named."""
    intra, inter = float(fabric.intra_bytes_per_s), fabric.inter_bytes_per_s
    link = str(getattr(getattr(fabric, "link", None), "name", "the node's link"))
    if fabric.nodes <= 1 or inter is None:
        bw = {"world": intra, "node": intra, "across": intra}
        return bw, dict.fromkeys(bw, fabric.intra_latency_s), dict.fromkeys(bw, link)
    network = str(getattr(getattr(fabric, "network", None), "name", "the network"))
    world = min(intra, float(inter))
    bw = {"world": world, "node": intra, "across": float(inter) / fabric.gpus_per_node}
    names = {"world": link if intra <= inter else network, "node": link, "across": network}
    lat = {"world": fabric.inter_latency_s, "node": fabric.intra_latency_s,
           "across": fabric.inter_latency_s}
    return bw, lat, names


def comm_time(
    cfg: RunConfig,
    fabric: Any,
    layout: str | None = None,
    *,
    parallel: str | None = None,
    compute_seconds: float | None = None,
    overlap: float = DEFAULT_OVERLAP,
    micro_steps: int | None = None,
    precision: str | None = None,
) -> CommTime:
    """Communication time of one optimizer step of `cfg` on `fabric` (a
    `budgetlm.hardware.Fabric`, or any object with gpus, nodes, gpus_per_node, intra_bytes_per_s,
    inter_bytes_per_s, intra_latency_s and inter_latency_s): one rank per GPU, hsdp nodes as the
    fabric's. compute_seconds: the step's compute time, which bounds what overlap can hide."""
    if not 0.0 <= overlap <= 1.0:
        raise UserError(f"overlap: a fraction between 0 and 1, got {overlap!r}")
    vol = comm_volume(cfg, fabric.gpus, layout, parallel=parallel,
                      ranks_per_node=fabric.gpus_per_node, micro_steps=micro_steps,
                      precision=precision)
    bw, lat, names = _bandwidths(fabric)
    transfer = sum(c.bytes_sent / bw[c.scope] for c in vol.collectives if c.bytes_sent)
    latency = sum(c.calls * lat[c.scope] for c in vol.collectives if c.bytes_sent)
    total = transfer + latency
    hidden = overlap * total
    if compute_seconds is not None:
        hidden = min(hidden, max(float(compute_seconds), 0.0))
    heavy = max(vol.collectives, key=lambda c: c.bytes_sent / bw[c.scope], default=None)
    bottleneck = names[heavy.scope] if heavy is not None and heavy.bytes_sent else "none"
    return CommTime(vol, total, latency, total - hidden, overlap, compute_seconds, bw,
                    bottleneck)
