"""Where and how a run computes: the device, autocast for the precision, and the process group
when launched by `torchrun` (how the model is spread over it: `budgetlm.train.parallel`)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from budgetlm.errors import UserError
from budgetlm.hardware import load_profile


def pick_device(name: str) -> str:
    """`train.device` -> "cuda" or "cpu" ("auto": CUDA when available)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda requested but no CUDA device is available")
    return name


def autocast_ctx(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """torch.autocast for bf16/fp16 on `device`; nothing for fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device, dtype=dtype)


@dataclass
class Dist:
    """This process's place in a data-parallel run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_world() -> int:
    """The world size `torchrun` set (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str) -> Dist:
    """Join the process group `torchrun` set up (nccl on CUDA, gloo on CPU); alone otherwise."""
    world = launched_world()
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device == "cuda":
        import torch

        torch.cuda.set_device(d.local_rank)
    return d


def close_distributed(d: Dist) -> None:
    """Wait for every rank, then leave the process group."""
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def machine_profile() -> Any:
    """This machine's hardware profile, or None: a profile is a nicety for the result, never a
    reason to fail a run."""
    try:
        return load_profile()
    except Exception:
        return None
