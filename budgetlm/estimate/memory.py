"""Training memory of a run config, piece by piece (no torch import).

The tensor peak is the largest phase of a training step (`budgetlm.estimate.phases`), each
phase counting what is alive in it; `total` adds the device's remainder (CUDA context, cuBLAS
workspace, allocator slack; 0 on CPU). Parameters stay fp32 under mixed precision (torch
autocast), so `weights` counts fp32 parameters plus autocast's 16-bit copies of the matmul
weights and `master` is 0. Checked against torch's MemTracker: benchmarks/memory_truth.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from budgetlm.config import OPTIMIZERS, ModelConfig, RunConfig
from budgetlm.errors import UserError
from budgetlm.estimate.inputs import assumed_micro_batch, checked_precision
from budgetlm.estimate.params import (
    block_matmul_params,
    count_params,
    head_matmul_params,
    param_spec_counts,
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
        return d


def _bytes_per_element(precision: str) -> int:
    """Bytes of an activation element in the compute dtype."""
    return 4 if precision == "fp32" else 2


def optimizer_state_bytes(m: ModelConfig, optimizer: str, momentum: float = 0.9) -> int:
    """Optimizer state for fp32 parameters, in bytes.

    adamw/adam/lamb 8 B/param (two moments); lion 4 (one moment); sgd 4 with momentum, else 0;
    rmsprop 4 (square average) + 4 with momentum; muon (Jordan et al. 2024, modded-nanogpt)
    4 B (momentum) on the 2-D hidden weights (every Linear weight but the LM head, as
    `budgetlm.optim.muon_split` groups them) and AdamW's 8 B on everything else (embeddings,
    LM head, norms, biases); adafactor (Shazeer & Stern 2018; torch.optim.Adafactor)
    factors the second moment of each matrix into a row and a column vector (rows + cols
    floats) and keeps it in full for vectors, with no first moment.
    """
    counts = param_spec_counts(m)
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


def _norm_saved(m: ModelConfig, device: str) -> float:
    """Bytes per token a norm keeps for backward: its fp32 input (the residual stream) plus
    fp32 statistics; torch's composite RMSNorm (CPU) also keeps the normalised fp32 input."""
    d = m.d_model
    if m.norm == "layernorm":
        return 4 * d + 8  # input + mean + rstd
    extra = 4 * d if device == "cpu" else 0  # CUDA dispatches to the fused aten::_fused_rms_norm
    return 4 * d + 4 + extra  # input + rstd


def _mask_bytes(device: str, dtype_bytes: int) -> int:
    """A dropout mask per element: CUDA's fused dropout keeps a bool mask (1 B); the CPU path
    keeps a scaled mask in the dropped tensor's dtype."""
    return 1 if device != "cpu" else dtype_bytes


def _attention_saved(
    m: ModelConfig, c: int, device: str, dropout: bool, eager: bool, autocast: bool
) -> float:
    """Bytes per token saved by one self-attention (projections included), as pieces.

    Korthikanti et al. 2022 §4.1 (16-bit, unfused): 11·s·b·h + 5·a·s²·b bytes:
    projection input 2sbh, Q and K 4sbh, V 2sbh, output-projection input 2sbh, dropout mask sbh,
    softmax output 2as²b, its dropout mask as²b and dropout output 2as²b.
    """
    d, H, T, inner = m.d_model, m.n_head, m.seq_len, m.n_head * m.head_dim
    b = c * d  # qkv projection input (cast copy under autocast)
    if dropout:
        b += d * _mask_bytes(device, c)  # residual dropout mask
    b += c * inner  # attention output = output-projection input (same storage with SDPA)
    if not eager and dropout and device == "cpu":
        # CPU SDPA has no fused dropout: the math fallback upcasts q, k, v to fp32 copies and
        # keeps fp32 softmax output, dropout mask and dropout output.
        return b + 3 * 4 * inner + H * T * 12
    if eager:
        b += 3 * c * inner  # q, k, v as the matmuls keep them (reshaped copies of the views)
        if m.positions == "rope" and H == 1:
            b += 2 * c * inner  # one head: v's reshape is a view, keeping the whole projection
        # softmax output: fp32 under CUDA autocast (softmax is on its fp32 list), else compute
        # dtype. The AV matmul keeps its own 16-bit input: the dropout output, or a cast copy
        # of the softmax output when dtypes differ.
        soft = 4 if (c == 4 or (autocast and device != "cpu")) else c
        if dropout:
            per_score = soft + _mask_bytes(device, soft) + c
        else:
            per_score = soft + (c if soft != c else 0)
        return b + H * T * per_score
    b += 3 * c * inner  # q, k, v: views of one projection output, kept by SDPA
    if m.positions == "rope":
        b += 2 * c * inner  # rotated q and k are new tensors (v's view keeps the projection)
    return b + 4 * H  # SDPA (flash / memory-efficient): fp32 logsumexp per head, no scores


def _mlp_saved(m: ModelConfig, c: int, dropout: bool, autocast: bool, device: str) -> float:
    """Bytes per token saved by one MLP. Korthikanti et al. 2022: 19·s·b·h for a 4h GELU MLP
    (input 2sbh, GELU input 8sbh, GELU output 8sbh, dropout mask sbh) — here with the real
    width f and activation: GELU keeps its input and the down projection its output (2·f);
    ReLU keeps only its output, which is the down projection's input (1·f); SwiGLU keeps the
    gate, silu(gate), up and their product (4·f) and, under autocast, a second cast input."""
    d, f = m.d_model, m.ff
    if m.mlp == "swiglu":
        b = c * d * (2 if autocast else 1) + 4 * c * f
    elif m.mlp == "gelu":
        b = c * d + 2 * c * f
    else:
        b = c * d + c * f
    if dropout:
        b += d * _mask_bytes(device, c)
    return b


def layer_activation_bytes(
    m: ModelConfig, precision: str = "bf16", device: str = "cuda", cross_attention: bool = False
) -> float:
    """Bytes per token one block keeps for backward (Korthikanti et al. 2022, eq. 1, by piece).

    Differences from the paper's 34·s·b·h + 5·a·s²·b, all from what PyTorch actually saves:
    the residual stream is fp32 (parameters stay fp32 under autocast, so the two norm inputs
    cost 4 B/element, not 2); the MLP uses its real width and activation; d_head·h may differ
    from d; with SDPA the 5·a·s²·b term is replaced by a logsumexp per head; dropout masks
    exist only when dropout > 0 (torch skips dropout at p = 0).
    """
    c = _bytes_per_element(precision)
    autocast = precision != "fp32"
    dropout = m.dropout > 0
    eager = m.attention == "eager" or (m.family == "t5" and m.positions == "relative")
    b = 2 * _norm_saved(m, device)
    b += _attention_saved(m, c, device, dropout, eager, autocast)
    b += _mlp_saved(m, c, dropout, autocast, device)
    if cross_attention:  # t5 decoder: one more norm + attention over the encoder output
        b += _norm_saved(m, device) + _attention_saved(m, c, device, dropout, eager, autocast)
    return b


def _final_activation_bytes(m: ModelConfig, precision: str, device: str) -> float:
    """Per token, outside the blocks: final norm and head inputs (and BERT's embedding norm
    and MLM transform: dense input, GELU input, fp32 norm input, decoder input)."""
    c, d = _bytes_per_element(precision), m.d_model
    b = _norm_saved(m, device) + c * d  # ln_f input, LM-head input
    if m.family == "bert":
        b += _norm_saved(m, device)  # embedding norm
        b += 2 * c * d + _norm_saved(m, device)  # head.dense input, GELU input, head.norm input
    if m.family == "t5":
        b += _norm_saved(m, device)  # the encoder's final norm
    if m.dropout > 0:
        b += d * _mask_bytes(device, 4)  # embedding dropout mask (fp32 embedding sum)
    return b


def _activation_pieces(
    m: ModelConfig, precision: str, device: str
) -> tuple[float, float, int, float]:
    """Per token: (largest block, all blocks, number of blocks, outside the blocks)."""
    enc = layer_activation_bytes(m, precision, device)
    if m.family == "t5":
        dec = layer_activation_bytes(m, precision, device, cross_attention=True)
        dec += _bytes_per_element(precision) * m.d_model  # encoder output cast for cross K/V
        n = m.n_layer + m.decoder_layers
        largest = max(enc, dec) if m.decoder_layers else enc
        blocks = enc * m.n_layer + dec * m.decoder_layers
    else:
        n, largest, blocks = m.n_layer, enc, enc * m.n_layer
    return largest, blocks, n, _final_activation_bytes(m, precision, device)


def activation_bytes(
    m: ModelConfig, micro_batch: int, precision: str, checkpointing: bool, device: str = "cuda"
) -> int:
    """Bytes of saved activations for one micro-batch at the end of the forward pass (logits
    excluded). Under checkpointing (Korthikanti et al. 2022 §4.2, full recompute) each block
    keeps only its input, the fp32 residual stream; the recompute of one block during the
    backward pass is counted in the phase it happens in (`budgetlm.estimate.phases`)."""
    tokens = micro_batch * m.seq_len
    _largest, blocks, n, final = _activation_pieces(m, precision, device)
    per_token = (4 * m.d_model * n if checkpointing else blocks) + final
    return int(math.ceil(tokens * per_token))


def logits_bytes(m: ModelConfig, micro_batch: int, precision: str) -> int:
    """Bytes of the (B, T, V) tensors alive while the loss is differentiated: the logits in the
    compute dtype (the training loop holds them), the fp32 log-probabilities cross-entropy
    saved, the gradient nll_loss returns and the one log_softmax returns. Often the peak for
    small models with large vocabularies."""
    elements = micro_batch * m.seq_len * m.vocab_size
    return elements * (_bytes_per_element(precision) + 4 + 4 + 4)


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


def _grad_sizes(m: ModelConfig) -> tuple[int, int, int, int]:
    """fp32 gradient bytes: (head side, one block, embeddings not shared with the head, tied
    token-embedding table or 0)."""
    counts = param_spec_counts(m)
    n_blocks = max(m.n_layer + (m.decoder_layers if m.family == "t5" else 0), 1)
    in_blocks = sum(k * s.numel for s, k in counts
                    if s.name.startswith("blocks.") or ".block." in s.name)
    block = in_blocks // n_blocks
    emb = sum(k * s.numel for s, k in counts if s.role == "embedding")
    tied = m.vocab_size * m.d_model if m.tie_embeddings else 0
    return 4 * head_matmul_params(m), 4 * block, 4 * (emb - tied), 4 * tied


def step_sizes(
    cfg: RunConfig, micro_batch: int, precision: str, optimizer: str, checkpointing: bool,
    device: str,
) -> StepSizes:
    """The sizes `budgetlm.estimate.phases.step_phases` combines, for `cfg`."""
    m, o = cfg.model, cfg.optim
    c = _bytes_per_element(precision)
    tokens = micro_batch * m.seq_len
    largest, _blocks, n_blocks, final = _activation_pieces(m, precision, device)
    copies = 2 if precision != "fp32" else 0
    grads_head, grads_block, grads_emb, tied = _grad_sizes(m)
    # Rotary attention saves its cos and sin tables, repeated to (T, head_dim) in the compute
    # dtype, for q and for k: per block, whatever the batch.
    rope = 4 * m.seq_len * m.head_dim * c if m.positions == "rope" else 0
    kept = activation_bytes(m, micro_batch, precision, checkpointing, device)
    final_bytes = int(math.ceil(tokens * final))
    return StepSizes(
        params=4 * count_params(m).total + _buffer_bytes(m),
        state=optimizer_state_bytes(m, optimizer, o.momentum),
        inputs=16 * tokens,  # int64 token ids and targets
        copies_head=copies * head_matmul_params(m),
        copies_block=copies * block_matmul_params(m) // max(n_blocks, 1),
        acts_block=int(math.ceil(tokens * largest)) + rope,
        acts_kept=kept - final_bytes + (0 if checkpointing else n_blocks * rope),
        acts_final=final_bytes,
        logits=tokens * m.vocab_size,
        c=c,
        final_out=4 * m.d_model * tokens,
        grads_head=grads_head,
        grads_block=grads_block,
        grads_all=4 * count_params(m).total,
        grads_embedding=grads_emb,
        tied_embedding=tied,
        workspace=block_workspace_bytes(m, tokens, c),
        opt_temps=optimizer_temp_bytes(m, optimizer, device, o.weight_decay, o.momentum,
                                       o.nesterov, o.decay_all),
        n_blocks=max(n_blocks, 1),
        checkpointing=checkpointing,
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
) -> Memory:
    """Training memory of `cfg` in bytes; None takes the value from `cfg` (micro_batch "auto"
    counts as 1). device: "cpu" or "cuda"; default cfg.train.device, where "auto" means cuda.

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
    phases = step_phases(step_sizes(cfg, mb, prec, opt, ckpt, dev))
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
    )
