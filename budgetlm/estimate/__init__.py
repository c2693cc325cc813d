"""Parameters, FLOPs, memory and step time of a config, as pure functions (no torch import).

Everything here is a function of a `RunConfig` / `ModelConfig` and, for step time, a hardware
profile. `budgetlm plan` calls it for thousands of candidates, so it stays stdlib-only: importing
this package must not import torch (a test checks).

- `params`: parameter tensors and counts (`param_specs`, `param_shapes`, `count_params`: total,
  embedding, active per token, per expert).
- `flops`: FLOPs per token (`flops_per_token`; `model_flops_per_token` = forward + backward,
  of the active parameters for a mixture of experts; `training_flops_per_token` = what a step
  of a config executes, a LoRA fine-tune's without the frozen weights' gradients).
- `finetune`: what a fine-tune trains (`lora_targets`, `lora_plan`, `trainable_count`) and how
  it holds the frozen rest (`frozen_bytes`, NF4 `nf4_bytes`).
- `activations`: what a step saves for backward, per token and block (`lora_activations`: a
  LoRA fine-tune's).
- `memory`: bytes at the training peak (`memory_breakdown` and its pieces; every expert
  resident, or one rank's share with `expert_shards`).
- `steptime`: seconds per optimizer step on a hardware profile (`step_time`, `default_mfu`).
- `sharding`: memory per rank under ddp, zero1, zero2 and zero3 / FSDP2 (`rank_memory`).
- `comm`: bytes each rank sends per step and their time on a fabric (`comm_volume`, `comm_time`).
- `report`: all of it at once (`estimate`).
"""

from budgetlm.estimate.activations import activation_bytes, layer_activation_bytes
from budgetlm.estimate.comm import DEFAULT_OVERLAP, CommTime, CommVolume, comm_time, comm_volume
from budgetlm.estimate.finetune import (
    LoraPlan,
    LoraTarget,
    TrainableCount,
    finetune_spec_counts,
    lora_plan,
    lora_targets,
    nf4_bytes,
    trainable_count,
)
from budgetlm.estimate.flops import (
    MAX_FLOPS_PER_TOKEN,
    Flops,
    flops_per_token,
    lora_flops_per_token,
    model_flops_per_token,
    training_flops_per_token,
)
from budgetlm.estimate.inputs import MAX_TOKENS_PER_STEP, assumed_micro_batch, checked_precision
from budgetlm.estimate.memory import (
    ALLOCATOR_SLACK_FRACTION,
    CUBLAS_WORKSPACE_BYTES,
    CUDA_CONTEXT_BYTES,
    NF4_NOTE,
    Memory,
    logits_bytes,
    memory_breakdown,
    memory_phase_totals,
    optimizer_state_bytes,
    overhead_parts,
)
from budgetlm.estimate.params import (
    MAX_PARAMS,
    ParamCount,
    ParamSpec,
    active_block_matmul_params,
    block_matmul_params,
    count_params,
    expert_params,
    head_matmul_params,
    param_shapes,
    param_spec_counts,
    param_specs,
    resident_spec_counts,
)
from budgetlm.estimate.report import Estimate, estimate
from budgetlm.estimate.sharding import LAYOUTS, RankMemory, layout_for, rank_memory
from budgetlm.estimate.steptime import MEASURED_TO_DATASHEET, StepTime, default_mfu, step_time

__all__ = [
    "DEFAULT_OVERLAP",
    "LAYOUTS",
    "CommTime",
    "CommVolume",
    "RankMemory",
    "comm_time",
    "comm_volume",
    "layout_for",
    "rank_memory",
    "MAX_FLOPS_PER_TOKEN",
    "MAX_PARAMS",
    "MAX_TOKENS_PER_STEP",
    "memory_phase_totals",
    "param_spec_counts",
    "ALLOCATOR_SLACK_FRACTION",
    "CUBLAS_WORKSPACE_BYTES",
    "CUDA_CONTEXT_BYTES",
    "MEASURED_TO_DATASHEET",
    "Estimate",
    "Flops",
    "LoraPlan",
    "LoraTarget",
    "TrainableCount",
    "finetune_spec_counts",
    "lora_flops_per_token",
    "lora_plan",
    "lora_targets",
    "nf4_bytes",
    "trainable_count",
    "training_flops_per_token",
    "Memory",
    "NF4_NOTE",
    "ParamCount",
    "ParamSpec",
    "StepTime",
    "activation_bytes",
    "active_block_matmul_params",
    "assumed_micro_batch",
    "block_matmul_params",
    "checked_precision",
    "count_params",
    "default_mfu",
    "estimate",
    "expert_params",
    "flops_per_token",
    "head_matmul_params",
    "layer_activation_bytes",
    "logits_bytes",
    "memory_breakdown",
    "model_flops_per_token",
    "optimizer_state_bytes",
    "overhead_parts",
    "param_shapes",
    "param_specs",
    "resident_spec_counts",
    "step_time",
]
