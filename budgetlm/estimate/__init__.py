"""Parameters, FLOPs, memory and step time of a config, as pure functions (no torch import).

Everything here is a function of a `RunConfig` / `ModelConfig` and, for step time, a hardware
profile. `budgetlm plan` calls it for thousands of candidates, so it stays stdlib-only: importing
this package must not import torch (a test checks).

- `params`: parameter tensors and counts (`param_specs`, `param_shapes`, `count_params`: total,
  embedding, active per token, per expert).
- `flops`: FLOPs per token (`flops_per_token`; `model_flops_per_token` = forward + backward,
  of the active parameters for a mixture of experts).
- `activations`: what a step saves for backward, per token and block.
- `memory`: bytes at the training peak (`memory_breakdown` and its pieces; every expert
  resident, or one rank's share with `expert_shards`).
- `steptime`: seconds per optimizer step on a hardware profile (`step_time`, `default_mfu`).
- `report`: all of it at once (`estimate`).
"""

from budgetlm.estimate.activations import activation_bytes, layer_activation_bytes
from budgetlm.estimate.finetune import LoraTarget, lora_targets
from budgetlm.estimate.flops import (
    MAX_FLOPS_PER_TOKEN,
    Flops,
    flops_per_token,
    model_flops_per_token,
)
from budgetlm.estimate.inputs import MAX_TOKENS_PER_STEP, assumed_micro_batch, checked_precision
from budgetlm.estimate.memory import (
    ALLOCATOR_SLACK_FRACTION,
    CUBLAS_WORKSPACE_BYTES,
    CUDA_CONTEXT_BYTES,
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
from budgetlm.estimate.steptime import MEASURED_TO_DATASHEET, StepTime, default_mfu, step_time

__all__ = [
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
    "LoraTarget",
    "lora_targets",
    "Memory",
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
