"""Data parallelism under `torchrun`: how one global batch splits over the ranks, and how the
model is spread over them (`train.parallel`).

- ddp: every rank holds the whole model; DistributedDataParallel all-reduces the gradients.
- fsdp: FSDP2 (`torch.distributed.fsdp.fully_shard`) on each transformer block, then on the root
  module: parameters, gradients and optimizer state are sharded over all ranks (ZeRO-3); a
  block's weights are all-gathered for its forward and, with `train.reshard_after_forward`,
  freed after it and gathered again in backward.
- hsdp: a 2-D device mesh (nodes x LOCAL_WORLD_SIZE): shard within a node, replicate across
  nodes; on one node it is fsdp.

In a single process `train.parallel` changes nothing. Gradients are reduced every micro-step
under fsdp/hsdp (reduce-scatter, so each rank keeps only its shard of the accumulated gradient);
hsdp all-reduces across nodes on the last micro-step only; ddp syncs on the last micro-step only.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from budgetlm.errors import UserError

if TYPE_CHECKING:
    from budgetlm.train.state import RunState


@dataclass(frozen=True)
class BatchSplit:
    """One rank's share of a global batch of `grad_accum` micro-batches of `micro_batch`
    sequences: piece `part` of `parts` equal pieces of each micro-step in `micros`."""

    micros: tuple[int, ...]
    parts: int
    part: int
    rows: int  # sequences in each piece: micro_batch // parts

    def piece(self, x: Any) -> Any:
        """This rank's rows of a whole micro-batch (all of it when `parts` is 1)."""
        if self.parts == 1:
            return x
        return x[self.part * self.rows : (self.part + 1) * self.rows]


def split_global_batch(micro_batch: int, grad_accum: int, world: int, rank: int) -> BatchSplit:
    """Which rows of each step's global batch rank `rank` of `world` computes.

    The global batch stays `micro_batch * grad_accum` sequences per optimizer step whatever the
    world size (`config.tokens_per_step`: grad_accum counts micro-steps over all ranks). With
    g = gcd(world, grad_accum), each micro-batch is cut into p = world / g equal pieces of
    micro_batch / p sequences, and rank r computes piece r % p of the micro-steps m with
    m % g == r // p: grad_accum / g pieces each, every sequence of the global batch exactly once.
    When world divides grad_accum (p = 1) each rank takes whole micro-steps (m % world == rank);
    with grad_accum 1 and 2 ranks each takes half of the one micro-batch. Every piece has the
    same size, so the mean of the ranks' mean piece losses is the single-process loss (exactly
    for a causal LM; a masked LM's pieces may hold different numbers of masked targets). A
    piece is cut from the whole micro-batch as one process draws it (masks included).

    A split exists exactly when world divides micro_batch * grad_accum; otherwise a UserError
    names the `--set` that makes one.
    """
    g = math.gcd(world, grad_accum)
    parts = world // g
    if micro_batch % parts:
        global_batch = micro_batch * grad_accum
        mb = -(-micro_batch // parts) * parts
        step = world // math.gcd(world, micro_batch)
        ga = -(-grad_accum // step) * step
        raise UserError(
            f"train.micro_batch: a global batch of {micro_batch} x {grad_accum} = {global_batch} "
            f"sequences does not split evenly over {world} ranks; use --set "
            f"train.micro_batch={mb} (global batch {mb * grad_accum}) or --set "
            f"train.grad_accum={ga} (global batch {micro_batch * ga})"
        )
    micros = tuple(m for m in range(grad_accum) if m % g == rank // parts)
    return BatchSplit(micros, parts, rank % parts, micro_batch // parts)


def sharded(s: RunState) -> bool:
    """True when this run shards its model over ranks (fsdp/hsdp under torchrun)."""
    return s.dist.world > 1 and s.cfg.train.parallel in ("fsdp", "hsdp")


def _mesh(s: RunState) -> Any:
    """fsdp: one dimension over all ranks; hsdp: (nodes, ranks per node)."""
    from torch.distributed.device_mesh import init_device_mesh

    world = s.dist.world
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if s.cfg.train.parallel == "hsdp" and 0 < per_node < world:
        if world % per_node:
            raise UserError(
                f"train.parallel: hsdp needs the same number of ranks on every node "
                f"({world} ranks, {per_node} on this node)"
            )
        return init_device_mesh(
            s.device, (world // per_node, per_node), mesh_dim_names=("replicate", "shard")
        )
    return init_device_mesh(s.device, (world,), mesh_dim_names=("shard",))


def shard_model(model: Any, s: RunState) -> Any:
    """fsdp/hsdp under torchrun: FSDP2 on each transformer block (of the inner budgetlm model
    when a peft wrapper holds it), then on `model`; the same module comes back, its parameters
    now DTensor shards, so the optimizer must be built after this. bf16/fp16 runs gather the
    weights in that precision and reduce gradients in fp32 (MixedPrecisionPolicy); autocast still
    runs around the forward as it does for ddp. Otherwise `model` as it is."""
    if not sharded(s):
        return model
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from budgetlm.train.finetune import base_model

    precision = s.cfg.train.precision
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    policy = MixedPrecisionPolicy(
        param_dtype=dtype, reduce_dtype=torch.float32 if dtype is not None else None
    )
    if precision == "fp16":  # the sharded scaler's found-inf flag meets DTensor grads
        warnings.filterwarnings("ignore", message="Found a non-scalar tensor with numel=1")
    mesh = _mesh(s)
    for block in base_model(model).blocks:
        fully_shard(
            block, mesh=mesh, mp_policy=policy,
            reshard_after_forward=s.cfg.train.reshard_after_forward,
        )
    fully_shard(model, mesh=mesh, mp_policy=policy)  # the root keeps its weights for backward
    return model


def wrap_data_parallel(model: Any, s: RunState) -> Any:
    """ddp under torchrun: DistributedDataParallel around the model; otherwise as it is."""
    if s.dist.world == 1 or sharded(s):
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[s.dist.local_rank] if s.device == "cuda" else None)


def grad_scaler(s: RunState) -> Any:
    """The fp16 loss scaler (disabled otherwise); sharded runs agree over ranks on a skipped
    step (torch's ShardedGradScaler all-reduces the found-inf flag)."""
    import torch

    fp16 = s.cfg.train.precision == "fp16"
    if fp16 and sharded(s):
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(s.device)
    return torch.amp.GradScaler(s.device, enabled=fp16)


def grad_sync(model: Any, s: RunState, last: bool) -> contextlib.AbstractContextManager[Any]:
    """Around one micro-step's backward: ddp skips the all-reduce until the last micro-step;
    hsdp reduce-scatters within the node every micro-step and all-reduces across nodes on the
    last; fsdp reduce-scatters every micro-step."""
    if s.dist.world == 1:
        return contextlib.nullcontext()
    if sharded(s):
        model.set_requires_all_reduce(last)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if last else model.no_sync()


def agree(s: RunState, flag: bool) -> bool:
    """`flag` true on any rank -> true on every rank (for decisions that start collectives)."""
    if s.dist.world == 1:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor(float(flag), device=s.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def rank0_value(s: RunState, value: float) -> float:
    """Rank 0's `value` on every rank."""
    if s.dist.world == 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor(float(value), dtype=torch.float64, device=s.device)
    dist.broadcast(t, src=0)
    return float(t.item())
