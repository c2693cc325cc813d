"""Training memory of a run config, piece by piece (no torch import).

Bytes at the training peak, summed piece by piece (a slight upper bound: see
`memory_breakdown`). Parameters stay fp32 under mixed precision (torch autocast), so `weights`
counts fp32 parameters plus autocast's 16-bit copies of the matmul weights and `master` is 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from budgetlm.config import OPTIMIZERS, ModelConfig, RunConfig
from budgetlm.errors import UserError
from budgetlm.estimate.inputs import assumed_micro_batch, checked_precision
from budgetlm.estimate.params import ParamSpec, count_params, param_specs

MiB = 1 << 20

# The CUDA context (driver state, kernel images) lives outside PyTorch's allocator, so
# torch.cuda.max_memory_allocated() never sees it. Typically 300–600 MiB per process on recent
# drivers with lazy module loading (CUDA_MODULE_LOADING=LAZY, default since CUDA 11.7 / torch 2).
# benchmarks/memory_accuracy.py measures it on the machine it runs on.
CUDA_CONTEXT_BYTES = 512 * MiB
# cuBLAS / cuBLASLt workspaces come from PyTorch's caching allocator (so they *are* in
# max_memory_allocated); torch uses up to 32 MiB per handle on Hopper.
CUBLAS_WORKSPACE_BYTES = 32 * MiB
# Caching-allocator slack (reserved minus allocated: block rounding, fragmentation), as a
# fraction of tensor bytes. Not visible to max_memory_allocated; it is what nvidia-smi adds.
ALLOCATOR_SLACK_FRACTION = 0.10
# CPU: op temporaries the estimate does not model. Excludes the resident code and data of the
# torch runtime itself (~0.3–0.5 GB of RSS before any tensor exists).
CPU_OVERHEAD_BYTES = 64 * MiB

# Optimizer state in bytes per fp32 parameter (torch.optim semantics).
_STATE_BYTES = {
    "adamw": 8,  # exp_avg + exp_avg_sq (Loshchilov & Hutter 2019)
    "adam": 8,
    "lamb": 8,  # m + v (You et al. 2020)
    "lion": 4,  # momentum only (Chen et al. 2023)
}


@dataclass(frozen=True)
class Memory:
    """Bytes at the training peak, by kind. total = the sum of the fields.

    weights: fp32 parameters, plus under 16-bit autocast the cast copies of every matmul weight
      (autocast caches them and autograd saves them for the backward pass).
    grads: one fp32 gradient per parameter.
    optimizer: optimizer state (see `optimizer_state_bytes`).
    master: a separate fp32 master copy. 0 here: autocast keeps the parameters themselves in
      fp32, so they are the master copy (counted in `weights`); a pure-16-bit mode would put
      2 B/param in weights and 4 B/param here.
    activations: tensors saved for the backward pass by the blocks, embedding and head.
    logits: (B, T, V) in the compute dtype plus the fp32 log-probabilities kept by the loss and
      the two fp32 gradients that exist while the loss is differentiated.
    overhead: runtime memory outside tensors (see `overhead_parts`).
    """

    weights: int
    grads: int
    optimizer: int
    master: int
    activations: int
    logits: int
    overhead: int

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.grads
            + self.optimizer
            + self.master
            + self.activations
            + self.logits
            + self.overhead
        )

    def to_dict(self) -> dict[str, int]:
        d = asdict(self)
        d["total"] = self.total
        return d


def _bytes_per_element(precision: str) -> int:
    """Bytes of an activation element in the compute dtype."""
    return 4 if precision == "fp32" else 2


def _muon_hidden(s: ParamSpec) -> bool:
    """A 2-D hidden weight: a Linear weight that is not the LM head (Muon's share)."""
    return s.role in ("matrix", "head") and not s.name.startswith("lm_head")


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
    specs = param_specs(m)
    n = sum(s.numel for s in specs)
    if optimizer in _STATE_BYTES:
        return _STATE_BYTES[optimizer] * n
    if optimizer == "sgd":
        return 4 * n if momentum > 0 else 0
    if optimizer == "rmsprop":
        return 4 * n + (4 * n if momentum > 0 else 0)
    if optimizer == "muon":
        hidden = sum(s.numel for s in specs if _muon_hidden(s))
        return 4 * hidden + 8 * (n - hidden)
    if optimizer == "adafactor":
        return 4 * sum((s.shape[0] + s.shape[1]) if len(s.shape) == 2 else s.numel for s in specs)
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


def activation_bytes(
    m: ModelConfig, micro_batch: int, precision: str, checkpointing: bool, device: str = "cuda"
) -> int:
    """Bytes of saved activations for one micro-batch (logits excluded)."""
    tokens = micro_batch * m.seq_len
    enc = layer_activation_bytes(m, precision, device)
    if m.family == "t5":
        dec = layer_activation_bytes(m, precision, device, cross_attention=True)
        dec += _bytes_per_element(precision) * m.d_model  # encoder output cast for cross K/V
        layers = [enc] * m.n_layer + [dec] * m.decoder_layers
    else:
        layers = [enc] * m.n_layer
    final = _final_activation_bytes(m, precision, device)
    if checkpointing:
        # Korthikanti et al. 2022 §4.2, full recompute: keep each block's input (fp32 residual
        # stream here) and, during backward, one block's working set at a time.
        per_token = 4 * m.d_model * len(layers) + max(layers) + final
    else:
        per_token = sum(layers) + final
    return int(math.ceil(tokens * per_token))


def logits_bytes(m: ModelConfig, micro_batch: int, precision: str) -> int:
    """(B, T, V) logits in the compute dtype, plus fp32: the log-probabilities kept by
    cross-entropy, the gradient w.r.t. them and the gradient w.r.t. the logits (alive together
    while log_softmax is differentiated). Often the peak for small models with large vocabularies.
    """
    elements = micro_batch * m.seq_len * m.vocab_size
    return elements * (_bytes_per_element(precision) + 4 + 4 + 4)


def overhead_parts(device: str, tensor_bytes: int) -> dict[str, int]:
    """Runtime memory besides tensors: {"context", "workspace", "allocator_slack"}.

    Only "workspace" is visible to torch.cuda.max_memory_allocated(); compare that counter with
    `Memory.total - context - allocator_slack`.
    """
    if device == "cpu":
        return {"context": 0, "workspace": CPU_OVERHEAD_BYTES, "allocator_slack": 0}
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

    The pieces are summed as if all were alive at once. At the real peak (the start of backward,
    when the loss is differentiated) the parameter gradients mostly do not exist yet, while at
    the optimizer step activations are gone but the optimizer's temporaries are not; the sum is
    therefore a mild upper bound when activations dominate and close when weights dominate.
    """
    m = cfg.model
    mb = assumed_micro_batch(cfg, micro_batch)
    prec = checked_precision(precision or cfg.train.precision)
    opt = optimizer or cfg.optim.name
    ckpt = cfg.train.activation_checkpointing if checkpointing is None else checkpointing
    dev = _memory_device_kind(device, cfg)

    pc = count_params(m)
    weights = 4 * pc.total
    if prec != "fp32":
        weights += 2 * pc.matmul  # autocast's 16-bit copies of the matmul weights
    grads = 4 * pc.total
    state = optimizer_state_bytes(m, opt, cfg.optim.momentum)
    acts = activation_bytes(m, mb, prec, ckpt, dev)
    logits = logits_bytes(m, mb, prec)
    tensors = weights + grads + state + acts + logits
    overhead = sum(overhead_parts(dev, tensors).values())
    return Memory(
        weights=weights,
        grads=grads,
        optimizer=state,
        master=0,
        activations=acts,
        logits=logits,
        overhead=overhead,
    )
