"""Everything at once: parameters, FLOPs, memory and step time of a run config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from budgetlm.config import RunConfig, tokens_per_step
from budgetlm.estimate.flops import Flops, flops_per_token
from budgetlm.estimate.inputs import assumed_micro_batch
from budgetlm.estimate.memory import Memory, memory_breakdown
from budgetlm.estimate.params import ParamCount, count_params
from budgetlm.estimate.steptime import StepTime, step_time


@dataclass(frozen=True)
class Estimate:
    """Parameters, FLOPs per token, memory and (with a hardware profile) step time of `config`."""

    config: RunConfig
    params: ParamCount
    flops: Flops
    memory: Memory
    step: StepTime | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready. flops_per_token = forward + backward (model FLOPs, no recompute)."""
        cfg = self.config
        mb = assumed_micro_batch(cfg)
        return {
            "params": self.params.total,
            "embedding_params": self.params.embedding,
            "non_embedding_params": self.params.non_embedding,
            "matmul_params": self.params.matmul,
            "params_active": self.params.active,
            "params_per_expert": self.params.per_expert,
            "flops_per_token": self.flops.model,
            "flops": {
                "forward": self.flops.forward,
                "backward": self.flops.backward,
                "recompute": self.flops.recompute,
                "total": self.flops.total,
                "causal_halved": self.flops.causal_halved,
            },
            "memory": self.memory.to_dict(),
            "tokens_per_step": tokens_per_step(mb, cfg.train.grad_accum, cfg.model.seq_len),
            "step_time": asdict(self.step) if self.step is not None else None,
            "micro_batch": mb,
            "precision": cfg.train.precision,
            "optimizer": cfg.optim.name,
            "checkpointing": cfg.train.activation_checkpointing,
        }


def estimate(cfg: RunConfig, profile: object | None = None) -> Estimate:
    """Parameters, FLOPs, memory and (with a profile) step time of `cfg`.

    Memory is estimated for the profile's device when a profile is given, else for
    cfg.train.device ("auto" = cuda).
    """
    device = getattr(profile, "device", None) if profile is not None else None
    return Estimate(
        config=cfg,
        params=count_params(cfg.model),
        flops=flops_per_token(cfg.model, cfg.train.activation_checkpointing),
        memory=memory_breakdown(cfg, device=device),
        step=step_time(cfg, profile),
    )
