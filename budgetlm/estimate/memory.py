"""Training memory of a run config, piece by piece (no torch import).

The tensor peak is the largest phase of a training step (`budgetlm.estimate.phases`), each
phase counting what is alive in it; `total` adds the device's remainder (CUDA context, cuBLAS
workspace, allocator slack; 0 on CPU). Parameters stay fp32 under mixed precision (torch
autocast), so `weights` counts fp32 parameters plus autocast's 16-bit copies of the matmul
weights and `master` is 0. Checked against torch's MemTracker: benchmarks/memory_truth.py.

A LoRA fine-tune (`budgetlm.estimate.finetune`) holds its frozen weights in the training
precision's 16-bit dtype (or NF4, an estimate only) and gives gradients, optimizer state and
autocast copies only to what trains; its activations are `lora_activation_pieces`. Checked the
same way on peft-wrapped models: tests/test_estimate_finetune.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from budgetlm.config import OPTIMIZERS, ModelConfig, RunConfig
from budgetlm.errors import UserError
from budgetlm.estimate.activations import (
    activation_bytes,
    activation_pieces,
    bytes_per_element,
)
from budgetlm.estimate.finetune import LoraPlan, finetune_spec_counts, frozen_bytes, lora_plan
from budgetlm.estimate.inputs import assumed_micro_batch, checked_precision
from budgetlm.estimate.lora_activations import (
    lora_activation_bytes,
    lora_activation_pieces,
    lora_block_transients,
    lora_checkpoint_alias,
    lora_mlp_backward_bytes,
    norm_output_bytes,
    residual_bytes,
)
from budgetlm.estimate.params import (
    ParamSpec,
    block_matmul_params,
    head_matmul_params,
    resident_spec_counts,
)
from budgetlm.estimate.phases import (
    PHASES,
    StepSizes,
    block_workspace_bytes,
    muon_hidden,
    optimizer_temp_bytes,
    peak_phase,
    step_phases,
)
from budgetlm.estimate.t5_memory import t5_moments

MiB = 1 << 20

# The CUDA context (driver state, kernel images) lives outside PyTorch's allocator, so
# torch.cuda.max_memory_allocated() never sees it. Typically 300–600 MiB per process on recent
# drivers with lazy module loading (CUDA_MODULE_LOADING=LAZY, default since CUDA 11.7 / torch 2).
# An assumed value, not measured here: benchmarks/memory_accuracy.py measures it on a GPU.
CUDA_CONTEXT_BYTES = 512 * MiB
# cuBLAS / cuBLASLt workspaces come from PyTorch's caching allocator (so they *are* in
# max_memory_allocated, though no tensor holds them): torch's default workspace is 4096 KiB x 8
# = 32 MiB per handle on Hopper (aten/src/ATen/cuda/CublasHandlePool.cpp, getChosenWorkspaceSize).
CUBLAS_WORKSPACE_BYTES = 32 * MiB
# Caching-allocator slack (reserved minus allocated: block rounding to 512 B / 2 MiB segments,
# fragmentation), as a fraction of the tensor peak. An assumed value, not measured here; not
# visible to max_memory_allocated, it is what max_memory_reserved and nvidia-smi add.
ALLOCATOR_SLACK_FRACTION = 0.10
# What a memory estimate with finetune.quantize nf4 says about itself.
NF4_NOTE = (
    "frozen block matrices in NF4 with double quantization (QLoRA, 4.127 bits/param): "
    "an estimate only, the trainer does not quantize"
)
# Optimizer state in bytes per fp32 parameter (torch.optim semantics).
_STATE_BYTES = {
    "adamw": 8,  # exp_avg + exp_avg_sq (Loshchilov & Hutter 2019)
    "adam": 8,
    "lamb": 8,  # m + v (You et al. 2020)
    "lion": 4,  # momentum only (Chen et al. 2023)
}


@dataclass(frozen=True)
class Memory:
    """Bytes at the training peak: the tensors alive in the peak phase of a step (see
    `budgetlm.estimate.phases`), by kind, plus the device's remainder.

    weights: fp32 parameters and buffers, plus under 16-bit autocast the cast copies of the
      matmul weights autograd still keeps in that phase.
    grads: the fp32 parameter gradients that exist in that phase.
    optimizer: optimizer state (see `optimizer_state_bytes`).
    master: a separate fp32 master copy. 0 here: autocast keeps the parameters themselves in
      fp32, so they are the master copy (counted in `weights`).
    activations: token ids and the tensors saved for the backward pass then.
    logits: the (B, T, V) tensors then: logits in the compute dtype and the fp32
      log-probabilities and their gradients.
    temporaries: working tensors of that phase (optimizer update, backward working set).
    device_remainder: memory outside the tensors (see `overhead_parts`); 0 on CPU.
    peak_phase: the phase the tensor peak is in; phases: every phase's tensor bytes.
    note: what the estimate assumes that a run does not do (NF4 frozen weights), or "".
    tensor_peak = the sum of the tensor kinds; total = tensor_peak + device_remainder.
    """

    weights: int
    grads: int
    optimizer: int
    master: int
    activations: int
    logits: int
    temporaries: int
    device_remainder: int
    peak_phase: str
    phases: tuple[tuple[str, int], ...]
    note: str = ""

    @property
    def tensor_peak(self) -> int:
        return (
            self.weights
            + self.grads
            + self.optimizer
            + self.master
            + self.activations
            + self.logits
            + self.temporaries
        )

    @property
    def total(self) -> int:
        return self.tensor_peak + self.device_remainder

    @property
    def overhead(self) -> int:
        """The device remainder (the name the planner and older callers use)."""
        return self.device_remainder

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            k: getattr(self, k)
            for k in ("weights", "grads", "optimizer", "master", "activations", "logits",
                      "temporaries")
        }
        d["tensor_peak"] = self.tensor_peak
        d["peak_phase"] = self.peak_phase
        d["device_remainder"] = self.device_remainder
        d["total"] = self.total
        d["phases"] = dict(self.phases)
        if self.note:
            d["note"] = self.note
        return d


def optimizer_state_bytes(
    m: ModelConfig, optimizer: str, momentum: float = 0.9, expert_shards: int = 1,
    counts: list[tuple[ParamSpec, int]] | None = None,
) -> int:
    """Optimizer state for fp32 parameters, in bytes.

    adamw/adam/lamb 8 B/param (two moments); lion 4 (one moment); sgd 4 with momentum, else 0;
    rmsprop 4 (square average) + 4 with momentum; muon (Jordan et al. 2024, modded-nanogpt)
    4 B (momentum) on the 2-D hidden weights (every Linear weight but the LM head, as
    `budgetlm.optim.muon_split` groups them) and AdamW's 8 B on everything else (embeddings,
    LM head, norms, biases); adafactor (Shazeer & Stern 2018; torch.optim.Adafactor)
    factors the second moment of each matrix into a row and a column vector (rows + cols
    floats) and keeps it in full for vectors, with no first moment. Every expert's state is
    counted (all experts resident) unless expert_shards > 1 (see `resident_spec_counts`).
    counts: the trainable tensors when not all of them train (a LoRA fine-tune's, from
    `budgetlm.estimate.finetune.finetune_spec_counts`).
    """
    if counts is None:
        counts = resident_spec_counts(m, expert_shards)
    n = sum(k * s.numel for s, k in counts)
    if optimizer in _STATE_BYTES:
        return _STATE_BYTES[optimizer] * n
    if optimizer == "sgd":
        return 4 * n if momentum > 0 else 0
    if optimizer == "rmsprop":
        return 4 * n + (4 * n if momentum > 0 else 0)
    if optimizer == "muon":
        hidden = sum(k * s.numel for s, k in counts if muon_hidden(s))
        return 4 * hidden + 8 * (n - hidden)
    if optimizer == "adafactor":
        return 4 * sum(k * ((s.shape[0] + s.shape[1]) if len(s.shape) == 2 else s.numel)
                       for s, k in counts)
    raise UserError(f"optim.name: unknown optimizer {optimizer!r}; one of {', '.join(OPTIMIZERS)}")


def logits_bytes(m: ModelConfig, micro_batch: int, precision: str) -> int:
    """Bytes of the (B, T, V) tensors alive while the loss is differentiated: the logits in the
    compute dtype (the training loop holds them), the fp32 log-probabilities cross-entropy
    saved, the gradient nll_loss returns and the one log_softmax returns. Often the peak for
    small models with large vocabularies."""
    elements = micro_batch * m.seq_len * m.vocab_size
    return elements * (bytes_per_element(precision) + 4 + 4 + 4)


def overhead_parts(device: str, tensor_bytes: int) -> dict[str, int]:
    """Device memory besides the tensors: {"context", "workspace", "allocator_slack"}, all 0
    on CPU (RSS of the runtime itself is not a tensor and is not counted).

    On CUDA only "workspace" is visible to torch.cuda.max_memory_allocated(); compare that
    counter with `Memory.total - context - allocator_slack`, and max_memory_reserved with
    `Memory.total - context`.
    """
    if device == "cpu":
        return {"context": 0, "workspace": 0, "allocator_slack": 0}
    return {
        "context": CUDA_CONTEXT_BYTES,
        "workspace": CUBLAS_WORKSPACE_BYTES,
        "allocator_slack": int(ALLOCATOR_SLACK_FRACTION * tensor_bytes),
    }


def _memory_device_kind(device: str | None, cfg: RunConfig) -> str:
    """The device kind memory is estimated for, "cpu" or "cuda": `device`, else
    cfg.train.device; "auto" plans for a GPU (the larger overhead)."""
    dev = device or cfg.train.device
    return "cpu" if dev == "cpu" else "cuda"


def _buffer_bytes(m: ModelConfig) -> int:
    """Module buffers: each rotary attention's fp32 cos and sin tables (T x head_dim/2 each)."""
    if m.positions != "rope":
        return 0
    return (m.n_layer + (m.decoder_layers if m.family == "t5" else 0)) * 4 * m.seq_len * m.head_dim


def _first_run_length(m: ModelConfig) -> int:
    """Blocks in the run block 0 belongs to (the dense blocks, else the MoE blocks)."""
    dense = m.n_layer - m.moe_layers
    return dense if dense else m.n_layer


def _block_numel(m: ModelConfig, counts: list[tuple[ParamSpec, int]], first: int, run: int,
                 matrices: bool) -> int:
    """Elements of one block of the run that starts at block `first` and holds `run` blocks
    (its Linear weights only, with matrices)."""
    prefix = f"blocks.{first}."
    return sum(k * s.numel for s, k in counts if s.name.startswith(prefix)
               and (s.role == "matrix" or not matrices)) // max(run, 1)


def _grad_sizes(m: ModelConfig, counts: list[tuple[ParamSpec, int]]) -> tuple[int, int, int, int]:
    """fp32 gradient bytes: (head side, the first block, embeddings not shared with the head,
    tied token-embedding table or 0). A dense stack's blocks are alike: their mean is used."""
    n_blocks = max(m.n_layer + (m.decoder_layers if m.family == "t5" else 0), 1)
    if m.moe_layers:
        block = _block_numel(m, counts, 0, _first_run_length(m), matrices=False)
    else:
        in_blocks = sum(k * s.numel for s, k in counts
                        if s.name.startswith("blocks.") or ".block." in s.name)
        block = in_blocks // n_blocks
    emb = sum(k * s.numel for s, k in counts if s.role == "embedding")
    tied = m.vocab_size * m.d_model if m.tie_embeddings else 0
    return 4 * head_matmul_params(m), 4 * block, 4 * (emb - tied), 4 * tied


def _block_copies(m: ModelConfig, counts: list[tuple[ParamSpec, int]], n_blocks: int,
                  copies: int) -> tuple[int, int]:
    """Autocast's 16-bit copies of block weights: (the largest block's, all blocks')."""
    if not m.moe_layers:
        one = copies * block_matmul_params(m) // max(n_blocks, 1)
        return one, one * max(n_blocks, 1)
    first_moe = m.n_layer - m.moe_layers
    moe = _block_numel(m, counts, first_moe, m.moe_layers, matrices=True)
    dense = _block_numel(m, counts, 0, first_moe, matrices=True) if first_moe else 0
    return copies * max(moe, dense), copies * (moe * m.moe_layers + dense * first_moe)


def step_sizes(
    cfg: RunConfig, micro_batch: int, precision: str, optimizer: str, checkpointing: bool,
    device: str, expert_shards: int = 1,
) -> StepSizes:
    """The sizes `budgetlm.estimate.phases.step_phases` combines, for `cfg` as
    `cfg.finetune` trains it; with the routed experts sharded over `expert_shards` ranks, those
    one rank holds."""
    plan = lora_plan(cfg)
    if plan is not None:
        return _lora_step_sizes(cfg, plan, micro_batch, precision, optimizer, checkpointing,
                                device, expert_shards)
    m, o = cfg.model, cfg.optim
    c = bytes_per_element(precision)
    tokens = micro_batch * m.seq_len
    largest, _blocks, n_blocks, final = activation_pieces(m, precision, device)
    counts = resident_spec_counts(m, expert_shards)
    resident = sum(k * s.numel for s, k in counts)
    grads_head, grads_block, grads_emb, tied = _grad_sizes(m, counts)
    copies_block, copies_all = _block_copies(m, counts, n_blocks,
                                             2 if precision != "fp32" else 0)
    # Rotary attention saves its cos and sin tables, repeated to (T, head_dim) in the compute
    # dtype, for q and for k: per block, whatever the batch.
    rope = 4 * m.seq_len * m.head_dim * c if m.positions == "rope" else 0
    kept = activation_bytes(m, micro_batch, precision, checkpointing, device)
    final_bytes = int(math.ceil(tokens * final))
    out_tokens = micro_batch * m.decoder_seq_len  # t5: decoder tokens; else = tokens
    return StepSizes(
        params=4 * resident + _buffer_bytes(m),
        state=optimizer_state_bytes(m, optimizer, o.momentum, expert_shards),
        inputs=8 * (tokens + out_tokens),  # int64 token ids and targets
        copies_head=(2 if precision != "fp32" else 0) * head_matmul_params(m),
        copies_block=copies_block,
        copies_blocks=copies_all,
        acts_block=int(math.ceil(tokens * largest)) + rope,
        acts_kept=kept - final_bytes + (0 if checkpointing else n_blocks * rope),
        acts_final=final_bytes,
        logits=out_tokens * m.vocab_size,
        c=c,
        final_out=4 * m.d_model * out_tokens,
        grads_head=grads_head,
        grads_block=grads_block,
        grads_all=4 * resident,
        grads_embedding=grads_emb,
        tied_embedding=tied,
        workspace=block_workspace_bytes(m, tokens, c),
        opt_temps=optimizer_temp_bytes(m, optimizer, device, o.weight_decay, o.momentum,
                                       o.nesterov, o.decay_all, expert_shards),
        n_blocks=max(n_blocks, 1),
        checkpointing=checkpointing,
        **_t5_held(m, micro_batch, precision, device, checkpointing, counts),
    )


def _t5_held(m: ModelConfig, micro_batch: int, precision: str, device: str,
             checkpointing: bool, counts: list[tuple[ParamSpec, int]]) -> dict[str, Any]:
    """t5: what the blocks of its two stacks hold while differentiated (`StepSizes`); {} else."""
    if m.family != "t5":
        return {}
    return {"stack_moments": t5_moments(m, micro_batch, precision, device, checkpointing,
                                        counts)}


def _lora_step_sizes(
    cfg: RunConfig, plan: LoraPlan, micro_batch: int, precision: str, optimizer: str,
    checkpointing: bool, device: str, expert_shards: int = 1,
) -> StepSizes:
    """`step_sizes` of a LoRA fine-tune: frozen weights in their held dtype (NF4 with
    quantize nf4), trainable tensors in fp32 with gradients, optimizer state and autocast copies
    (adapters, a trained head) only for them; activations of `lora_activation_pieces`."""
    m, o = cfg.model, cfg.optim
    c, cr = bytes_per_element(precision), residual_bytes(precision, plan)
    autocast = precision != "fp32"
    tokens = micro_batch * m.seq_len
    largest, _blocks, n_blocks, final = lora_activation_pieces(m, plan, precision, device)
    trainable, frozen = finetune_spec_counts(cfg, expert_shards)
    n_trainable = sum(k * s.numel for s, k in trainable)
    in_blocks = [(s, k) for s, k in trainable if s.name.startswith("blocks.")]
    outside = n_trainable - sum(k * s.numel for s, k in in_blocks)
    adapters = [(s, k) for s, k in in_blocks if s.role == "adapter"]
    if m.moe_layers:
        run = _first_run_length(m)
        block = _block_numel(m, in_blocks, 0, run, matrices=False)
        copies_block = _block_numel(m, adapters, 0, run, matrices=False)
        copies_block = max(copies_block, _block_numel(m, adapters, m.n_layer - m.moe_layers,
                                                      m.moe_layers, matrices=False))
    else:
        block = sum(k * s.numel for s, k in in_blocks) // max(n_blocks, 1)
        copies_block = sum(k * s.numel for s, k in adapters) // max(n_blocks, 1)
    head_copies = sum(k * s.numel for s, k in trainable
                      if not s.name.startswith("blocks.") and len(s.shape) == 2)
    rope = 4 * m.seq_len * m.head_dim * c if m.positions == "rope" else 0
    kept = lora_activation_bytes(m, plan, micro_batch, precision, checkpointing, device)
    final_bytes = int(math.ceil(tokens * final))
    workspace = block_workspace_bytes(
        m, tokens, c, lora=lora_mlp_backward_bytes(m, plan, precision, device))
    if checkpointing:  # the recompute of a block may hold more than its backward does
        recompute = lora_block_transients(m, plan, precision, recompute=True, device=device)
        workspace = max(workspace, int(math.ceil(tokens * recompute)))
        largest -= lora_checkpoint_alias(m, plan, precision, device)
    if plan.quantize == "nf4":  # one matrix dequantized to the compute dtype at a time
        workspace += c * max((s.numel for s, _k in frozen if s.role == "matrix"), default=0)
    tied = 4 * m.vocab_size * m.d_model if plan.embedding else 0
    return StepSizes(
        params=frozen_bytes(frozen, precision, plan.quantize) + 4 * n_trainable
        + _buffer_bytes(m),
        state=optimizer_state_bytes(m, optimizer, o.momentum, expert_shards, counts=trainable),
        inputs=16 * tokens,
        copies_head=c * head_copies if autocast else 0,
        copies_block=c * copies_block if autocast else 0,
        copies_blocks=c * sum(k * s.numel for s, k in adapters) if autocast else 0,
        acts_block=int(math.ceil(tokens * largest)) + rope,
        acts_kept=kept - final_bytes + (0 if checkpointing else n_blocks * rope),
        acts_final=final_bytes,
        logits=tokens * m.vocab_size,
        c=c,
        final_out=norm_output_bytes(m, device, cr) * m.d_model * tokens,  # the final norm's
        grads_head=4 * outside,
        grads_block=4 * block,
        grads_all=4 * n_trainable,
        grads_embedding=0,
        tied_embedding=tied,
        workspace=workspace,
        opt_temps=optimizer_temp_bytes(m, optimizer, device, o.weight_decay, o.momentum,
                                       o.nesterov, o.decay_all, expert_shards, trainable),
        n_blocks=max(n_blocks, 1),
        checkpointing=checkpointing,
        block_transients=int(math.ceil(
            tokens * lora_block_transients(m, plan, precision, device=device))),
    )


def memory_phase_totals(mem: Memory, device: str) -> dict[str, int]:
    """Each phase's tensor bytes of `mem` plus the device remainder they would carry on `device`
    ("cpu" or "cuda"): each is affine in the micro-batch, and `mem.total` is their maximum
    (convex in it, so a straight line through two micro-batches can fall below it further
    out)."""
    return {p: b + sum(overhead_parts(device, b).values()) for p, b in mem.phases}


def memory_breakdown(
    cfg: RunConfig,
    micro_batch: int | None = None,
    precision: str | None = None,
    optimizer: str | None = None,
    checkpointing: bool | None = None,
    *,
    device: str | None = None,
    expert_shards: int = 1,
) -> Memory:
    """Training memory of `cfg` in bytes; None takes the value from `cfg` (micro_batch "auto"
    counts as 1). device: "cpu" or "cuda"; default cfg.train.device, where "auto" means cuda.

    A mixture of experts keeps every expert resident (weights, gradients, optimizer state);
    expert_shards > 1 gives one rank's share when the routed experts are sharded over that
    many ranks (expert parallelism; see `resident_spec_counts`), activations unchanged.

    The tensor peak is the largest phase of a steady-state step (`budgetlm.estimate.phases`);
    the components are what is alive in that phase. `total` adds the device remainder.
    """
    mb = assumed_micro_batch(cfg, micro_batch)
    prec = checked_precision(precision or cfg.train.precision)
    opt = optimizer or cfg.optim.name
    if opt not in OPTIMIZERS:
        raise UserError(f"optim.name: unknown optimizer {opt!r}; one of {', '.join(OPTIMIZERS)}")
    ckpt = cfg.train.activation_checkpointing if checkpointing is None else checkpointing
    dev = _memory_device_kind(device, cfg)
    phases = step_phases(step_sizes(cfg, mb, prec, opt, ckpt, dev, expert_shards))
    peak = peak_phase(phases)
    parts = phases[peak]
    tensors = sum(parts.values())
    return Memory(
        weights=parts["weights"],
        grads=parts["grads"],
        optimizer=parts["optimizer"],
        master=0,
        activations=parts["activations"],
        logits=parts["logits"],
        temporaries=parts["temporaries"],
        device_remainder=sum(overhead_parts(dev, tensors).values()),
        peak_phase=peak,
        phases=tuple((p, sum(phases[p].values())) for p in PHASES),
        note=NF4_NOTE if cfg.finetune.method == "lora" and cfg.finetune.quantize == "nf4" else "",
    )
