"""Everything at once: parameters, FLOPs, memory and step time of a run config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from budgetlm.config import RunConfig, tokens_per_step
from budgetlm.estimate.finetune import TrainableCount, trainable_count
from budgetlm.estimate.flops import Flops, model_flops_per_token, training_flops_per_token
from budgetlm.estimate.inputs import assumed_micro_batch
from budgetlm.estimate.memory import Memory, memory_breakdown
from budgetlm.estimate.params import ParamCount, count_params
from budgetlm.estimate.steptime import StepTime, step_time


@dataclass(frozen=True)
class Estimate:
    """Parameters, FLOPs per token, memory and (with a hardware profile) step time of `config`.

    params: the model's parameters; trainable: those that train as `config.finetune` trains it
    (all of them for a full run; adapters, and norms or head if asked, for LoRA) with the
    total as peft counts it (adapters included); flops: what a training step executes
    (`training_flops_per_token`)."""

    config: RunConfig
    params: ParamCount
    flops: Flops
    memory: Memory
    step: StepTime | None
    trainable: TrainableCount | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready. flops_per_token = forward + backward of a training step (no recompute);
        a LoRA fine-tune adds trainable_params, adapter_params, params_with_adapters,
        model_flops_per_token (the 6N-style count MFU is quoted in) and finetune."""
        cfg = self.config
        mb = assumed_micro_batch(cfg)
        return {
            "params": self.params.total,
            **self._finetune_dict(),
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


    def _finetune_dict(self) -> dict[str, Any]:
        """A LoRA fine-tune's own fields (a full run trains every parameter: none): trainable
        and adapter parameters, the total with adapters (as peft counts it), the 6N-style
        model FLOPs per token MFU is quoted in, and the method."""
        cfg = self.config
        ft = cfg.finetune
        if ft.method != "lora":
            return {}
        trainable = self.trainable or trainable_count(cfg)
        return {
            "trainable_params": trainable.trainable,
            "adapter_params": trainable.adapters,
            "params_with_adapters": trainable.total,
            "model_flops_per_token": model_flops_per_token(cfg.model),
            "finetune": {"method": ft.method, "rank": ft.lora.rank, "quantize": ft.quantize},
        }


def estimate(cfg: RunConfig, profile: object | None = None) -> Estimate:
    """Parameters (total and trainable), training FLOPs, memory and (with a profile) step time
    of `cfg`, as `cfg.finetune` trains it.

    Memory is estimated for the profile's device when a profile is given, else for
    cfg.train.device ("auto" = cuda).
    """
    device = getattr(profile, "device", None) if profile is not None else None
    return Estimate(
        config=cfg,
        params=count_params(cfg.model),
        flops=training_flops_per_token(cfg),
        memory=memory_breakdown(cfg, device=device),
        step=step_time(cfg, profile),
        trainable=trainable_count(cfg),
    )
