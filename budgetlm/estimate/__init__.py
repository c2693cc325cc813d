"""Parameters, FLOPs, memory and step time of a config, as pure functions (no torch import).

Everything here is a function of a `RunConfig` / `ModelConfig` and, for step time, a hardware
profile. `budgetlm plan` calls it for thousands of candidates, so it stays stdlib-only: importing
this module must not import torch (a test checks).

Conventions, stated once:
- Parameters: exact for gpt/bert, checked name by name against `budgetlm.model` (tied tensors
  counted once). `param_shapes` mirrors the model's `named_parameters()`; t5 mirrors HF
  `T5ForConditionalGeneration` (relative-position bias tables in the first block of each stack).
- FLOPs: 2 per multiply-add, per token at `seq_len`. Attention scores and values are counted as
  the full T x T square even for causal models (`causal_halved=False`), because that is what the
  fused kernels execute and what `torch.utils.flop_counter.FlopCounterMode` counts.
- Memory: bytes at the training peak, summed piece by piece (a slight upper bound: see
  `memory_breakdown`). Parameters stay fp32 under mixed precision (torch autocast), so `weights`
  counts fp32 parameters plus autocast's 16-bit copies of the matmul weights and `master` is 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from budgetlm.config import OPTIMIZERS, PRECISIONS, ModelConfig, RunConfig
from budgetlm.errors import UserError

# ---------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor: its name in the model, shape and role.

    role: "embedding" (token/position/token-type tables), "matrix" (a Linear weight inside a
    transformer block), "head" (a Linear weight outside the blocks: LM head, MLM dense),
    "vector" (norm weights and biases), "table" (t5 relative-position bias).
    """

    name: str
    shape: tuple[int, ...]
    role: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _norm_specs(m: ModelConfig, prefix: str) -> list[ParamSpec]:
    """LayerNorm: weight (+ bias when m.bias); RMSNorm: weight only."""
    out = [ParamSpec(f"{prefix}.weight", (m.d_model,), "vector")]
    if m.norm == "layernorm" and m.bias:
        out.append(ParamSpec(f"{prefix}.bias", (m.d_model,), "vector"))
    return out


def _linear_specs(m: ModelConfig, prefix: str, d_in: int, d_out: int, role: str) -> list[ParamSpec]:
    out = [ParamSpec(f"{prefix}.weight", (d_out, d_in), role)]
    if m.bias:
        out.append(ParamSpec(f"{prefix}.bias", (d_out,), "vector"))
    return out


def _mlp_specs(m: ModelConfig, prefix: str, names: tuple[str, str, str]) -> list[ParamSpec]:
    """names: (gate, up, down) for swiglu; (up, -, down) otherwise."""
    d, f = m.d_model, m.ff
    if m.mlp == "swiglu":
        gate, up, down = names
        return (
            _linear_specs(m, f"{prefix}.{gate}", d, f, "matrix")
            + _linear_specs(m, f"{prefix}.{up}", d, f, "matrix")
            + _linear_specs(m, f"{prefix}.{down}", f, d, "matrix")
        )
    up, _, down = names
    return _linear_specs(m, f"{prefix}.{up}", d, f, "matrix") + _linear_specs(
        m, f"{prefix}.{down}", f, d, "matrix"
    )


def _block_specs(m: ModelConfig, i: int) -> list[ParamSpec]:
    """budgetlm.model.Block: ln_1, attn.c_attn (fused q,k,v), attn.c_proj, ln_2, mlp."""
    d, inner = m.d_model, m.n_head * m.head_dim
    p = f"blocks.{i}"
    return (
        _norm_specs(m, f"{p}.ln_1")
        + _linear_specs(m, f"{p}.attn.c_attn", d, 3 * inner, "matrix")
        + _linear_specs(m, f"{p}.attn.c_proj", inner, d, "matrix")
        + _norm_specs(m, f"{p}.ln_2")
        + _mlp_specs(
            m, f"{p}.mlp", ("w1", "w3", "w2") if m.mlp == "swiglu" else ("c_fc", "", "c_proj")
        )
    )


def _gpt_specs(m: ModelConfig) -> list[ParamSpec]:
    V, d = m.vocab_size, m.d_model
    out = [ParamSpec("wte.weight", (V, d), "embedding")]
    if m.positions == "learned":
        out.append(ParamSpec("wpe.weight", (m.seq_len, d), "embedding"))
    for i in range(m.n_layer):
        out += _block_specs(m, i)
    out += _norm_specs(m, "ln_f")
    if not m.tie_embeddings:
        out.append(ParamSpec("lm_head.weight", (V, d), "head"))  # GPT head has no bias
    return out


def _bert_specs(m: ModelConfig) -> list[ParamSpec]:
    V, d = m.vocab_size, m.d_model
    out = [ParamSpec("wte.weight", (V, d), "embedding")]
    if m.positions == "learned":
        out.append(ParamSpec("wpe.weight", (m.seq_len, d), "embedding"))
    out.append(ParamSpec("wtt.weight", (2, d), "embedding"))  # token types, like HF
    out += _norm_specs(m, "ln_emb")
    for i in range(m.n_layer):
        out += _block_specs(m, i)
    out += _norm_specs(m, "ln_f")
    out += _linear_specs(m, "head.dense", d, d, "head")
    out += _norm_specs(m, "head.norm")
    if not m.tie_embeddings:
        out.append(ParamSpec("lm_head.weight", (V, d), "head"))
    if m.bias:
        out.append(ParamSpec("lm_head.bias", (V,), "vector"))  # MLM decoder's own bias
    return out


def _t5_attention_specs(m: ModelConfig, prefix: str, first: bool) -> list[ParamSpec]:
    d, inner = m.d_model, m.n_head * m.head_dim
    out: list[ParamSpec] = []
    for name in ("q", "k", "v"):
        out += _linear_specs(m, f"{prefix}.{name}", d, inner, "matrix")
    out += _linear_specs(m, f"{prefix}.o", inner, d, "matrix")
    if first and m.positions == "relative":
        out.append(
            ParamSpec(
                f"{prefix}.relative_attention_bias.weight", (m.relative_buckets, m.n_head), "table"
            )
        )
    return out


def _t5_specs(m: ModelConfig) -> list[ParamSpec]:
    """HF T5ForConditionalGeneration: shared embedding, encoder and decoder stacks, lm_head."""
    V, d = m.vocab_size, m.d_model
    out = [ParamSpec("shared.weight", (V, d), "embedding")]
    ff_names = ("wi_0", "wi_1", "wo") if m.mlp == "swiglu" else ("wi", "", "wo")
    for stack, n in (("encoder", m.n_layer), ("decoder", m.decoder_layers)):
        if m.positions == "learned":
            out.append(ParamSpec(f"{stack}.embed_positions.weight", (m.seq_len, d), "embedding"))
        for i in range(n):
            p = f"{stack}.block.{i}.layer"
            out += _t5_attention_specs(m, f"{p}.0.SelfAttention", first=i == 0)
            out += _norm_specs(m, f"{p}.0.layer_norm")
            ff = 1
            if stack == "decoder":
                out += _t5_attention_specs(m, f"{p}.1.EncDecAttention", first=False)
                out += _norm_specs(m, f"{p}.1.layer_norm")
                ff = 2
            out += _mlp_specs(m, f"{p}.{ff}.DenseReluDense", ff_names)
            out += _norm_specs(m, f"{p}.{ff}.layer_norm")
        out += _norm_specs(m, f"{stack}.final_layer_norm")
    if not m.tie_embeddings:
        out.append(ParamSpec("lm_head.weight", (V, d), "head"))
    return out


def param_specs(m: ModelConfig) -> list[ParamSpec]:
    """Every parameter tensor of the model `m` describes, in `named_parameters()` order."""
    if m.family == "gpt":
        return _gpt_specs(m)
    if m.family == "bert":
        return _bert_specs(m)
    return _t5_specs(m)


def param_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape}, equal to `{n: tuple(p.shape) for n, p in model.named_parameters()}` of
    `build_model(m)` for gpt and bert."""
    return {s.name: s.shape for s in param_specs(m)}


@dataclass(frozen=True)
class ParamCount:
    """total = embedding + non_embedding (tied head counted once).

    embedding: token (+ learned position, + token-type) tables. matmul: parameters that take
    part in a matmul per token — every Linear weight plus the LM head (V·d even when tied to the
    embedding); excludes embedding lookups, norms, biases and t5's relative-bias tables.
    """

    total: int
    embedding: int
    non_embedding: int
    matmul: int


def _head_matmul(m: ModelConfig) -> int:
    """LM head (V·d, tied or not) + BERT's MLM dense (d·d)."""
    head = m.vocab_size * m.d_model
    if m.family == "bert":
        head += m.d_model * m.d_model
    return head


def _block_matmul(m: ModelConfig) -> int:
    return sum(s.numel for s in param_specs(m) if s.role == "matrix")


def count_params(m: ModelConfig) -> ParamCount:
    """Exact parameter count (Kaplan et al. 2020 §2.1 split: embedding vs non-embedding)."""
    specs = param_specs(m)
    total = sum(s.numel for s in specs)
    embedding = sum(s.numel for s in specs if s.role == "embedding")
    return ParamCount(
        total=total,
        embedding=embedding,
        non_embedding=total - embedding,
        matmul=_block_matmul(m) + _head_matmul(m),
    )


# ---------------------------------------------------------------------------------------------
# FLOPs


@dataclass(frozen=True)
class Flops:
    """Training FLOPs per token (2 FLOPs per multiply-add).

    causal_halved: whether attention FLOPs of causal models were halved (never, here: the
    kernels and FlopCounterMode count the full square).
    """

    forward: float
    backward: float
    recompute: float
    causal_halved: bool

    @property
    def total(self) -> float:
        """FLOPs executed per training token: forward + backward + recompute."""
        return self.forward + self.backward + self.recompute


def _attention_modules(m: ModelConfig) -> int:
    """Attention operations per token: one per gpt/bert block; t5 encoder self, decoder self
    and decoder cross (with input length = output length, cross costs the same as self)."""
    if m.family == "t5":
        return m.n_layer + 2 * m.decoder_layers
    return m.n_layer


def flops_per_token(m: ModelConfig, checkpointing: bool = False) -> Flops:
    """FLOPs per token at sequence length T = m.seq_len.

    Forward, factor by factor (Kaplan et al. 2020 §2.1 Table 1; Chinchilla, Hoffmann et al. 2022
    App. F; nanoGPT `estimate_mfu`; torchtitan `get_num_flop_per_token`):
      2·N_matmul          every weight multiplies the token once (multiply + add)
      + 2·2·T·(h·d_head)  per attention: QK^T scores (T keys) and the weighted sum of V, full
                          square (no causal halving; see module docstring)
    Backward = 2 x forward (gradients w.r.t. inputs and w.r.t. weights; Kaplan §2.1).
    Recompute (full activation checkpointing) = one more forward of the blocks, not of the
    embedding or the head (Korthikanti et al. 2022 §4 "full recomputation"), less each block's
    MLP down projection when there is no dropout (torch's checkpoint stops early; see below).

    t5: per *target* token with input length = output length = T: the encoder's work on one
    input token plus the decoder's on one output token (cross-attention K/V projections of the
    encoder output are counted once per input token), so 6·N·D still holds with D = targets.
    """
    T, inner = m.seq_len, m.n_head * m.head_dim
    attention = float(_attention_modules(m) * 2 * 2 * T * inner)
    block = 2.0 * _block_matmul(m) + attention
    forward = block + 2.0 * _head_matmul(m)
    recompute = 0.0
    if checkpointing:
        recompute = block
        if m.dropout == 0.0:
            # torch's non-reentrant checkpoint stops recomputing once the last tensor saved for
            # backward is back (`set_checkpoint_early_stop`, default on). A matmul saves its
            # inputs before it runs, so the block's last matmul — the MLP down projection — is
            # not recomputed; with dropout > 0 the dropout mask after it is saved, so it is.
            recompute -= 2.0 * m.n_layer * m.ff * m.d_model
            if m.family == "t5":
                recompute -= 2.0 * m.decoder_layers * m.ff * m.d_model
    return Flops(
        forward=forward,
        backward=2.0 * forward,
        recompute=recompute,
        causal_halved=False,
    )


# ---------------------------------------------------------------------------------------------
# Memory

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


def _resolve_device(device: str | None, cfg: RunConfig) -> str:
    dev = device or cfg.train.device
    return "cpu" if dev == "cpu" else "cuda"  # "auto" plans for a GPU (the larger overhead)


def _resolve_micro_batch(cfg: RunConfig, micro_batch: int | None) -> int:
    if micro_batch is not None:
        return int(micro_batch)
    mb = cfg.train.micro_batch
    return 1 if mb == "auto" else int(mb)


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(
            f"train.precision: unknown precision {precision!r}; one of {', '.join(PRECISIONS)}"
        )
    return precision


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
    mb = _resolve_micro_batch(cfg, micro_batch)
    prec = _check_precision(precision or cfg.train.precision)
    opt = optimizer or cfg.optim.name
    ckpt = cfg.train.activation_checkpointing if checkpointing is None else checkpointing
    dev = _resolve_device(device, cfg)

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


# ---------------------------------------------------------------------------------------------
# Step time

# Model FLOPs utilisation of dense-transformer training, as a fraction of the datasheet dense
# peak, by total parameters (log-linear between anchors). Large models: PaLM 540B 46.2%
# (Chowdhery et al. 2022, Table 3), Megatron-LM 1T 52% (Narayanan et al. 2021), Llama 3 405B
# 38–43% (Dubey et al. 2024, Table 4). Small models are launch- and bandwidth-bound: GPT-2 124M
# in eager PyTorch reaches ~25–35% on an A100 (nanoGPT without torch.compile), and models of a
# few million parameters a few percent. Priors only: calibrate on the machine when possible.
_GPU_MFU_ANCHORS = ((1e6, 0.03), (1e7, 0.10), (1e8, 0.30), (1e9, 0.40), (1e10, 0.45))
# On a CPU the profile's peak is *measured* fp32 matmul throughput (no datasheet exists); a
# training step reaches this fraction of it (softmax, norms, GELU and the optimizer cost
# relatively more at small widths). Anchored on fp32 AdamW steps on a 2-core x86 VM with
# torch 2.13: tiny (0.12M params) ~14%, nanogpt-cpu (0.8M) ~24%, a 3.2M GPT ~36%, a 10.8M GPT
# ~52% of the measured peak (noisy: CPU timings swing by 2x under load).
_CPU_MFU_ANCHORS = ((1e5, 0.12), (1e6, 0.25), (1e7, 0.45), (1e8, 0.55))
# A measured GPU matmul peak is below the datasheet (cuBLAS reaches ~70–85% of the dense peak
# on large square bf16 matmuls); the GPU anchors are fractions of the datasheet, so against a
# measured peak they are divided by this ratio (taken from the profile when it has both).
MEASURED_TO_DATASHEET = 0.8


def _interp_log(n: float, anchors: tuple[tuple[float, float], ...]) -> float:
    if n <= anchors[0][0]:
        return anchors[0][1]
    for (x0, y0), (x1, y1) in zip(anchors, anchors[1:], strict=False):
        if n <= x1:
            t = (math.log10(n) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
            return y0 + t * (y1 - y0)
    return anchors[-1][1]


def default_mfu(n_params: int, device: str = "cuda") -> float:
    """Expected fraction of the profile's peak FLOP/s a training step reaches, by model size.

    cuda: fraction of the datasheet dense peak (anchors and sources at `_GPU_MFU_ANCHORS`);
    cpu: fraction of measured matmul throughput (`_CPU_MFU_ANCHORS`).
    """
    anchors = _CPU_MFU_ANCHORS if device == "cpu" else _GPU_MFU_ANCHORS
    return _interp_log(max(float(n_params), 1.0), anchors)


@dataclass(frozen=True)
class StepTime:
    """One optimizer step: seconds = flops_per_step / flops_per_s, flops_per_s = peak x mfu,
    where peak is the profile's `peak(precision)` and mfu the fraction of it a step reaches.

    flops_per_step counts executed FLOPs (forward + backward + recompute) over
    micro_batch x grad_accum x seq_len tokens. source: "measured profile" (this machine's
    measured matmul peak x default MFU), "datasheet peak x default MFU", or "calibrated".
    """

    seconds: float
    flops_per_step: float
    flops_per_s: float
    mfu: float
    source: str


def _measured_fraction(profile: object, precision: str, peak: float) -> float:
    """Measured matmul peak / datasheet peak for this precision, else MEASURED_TO_DATASHEET."""
    sheet = getattr(profile, "datasheet", None)
    if isinstance(sheet, dict):
        ref = sheet.get(precision)
        if ref:
            return min(1.0, max(0.1, peak / float(ref)))
    return MEASURED_TO_DATASHEET


def step_time(
    cfg: RunConfig,
    profile: object | None,
    micro_batch: int | None = None,
    precision: str | None = None,
) -> StepTime | None:
    """Seconds per optimizer step on `profile` (a budgetlm.hardware.HardwareProfile or any
    object with `.peak(precision) -> float | None`, `.measured: bool`, `.device: str`).

    None when there is no profile or it has no peak for the precision. If the profile offers
    `calibrated_mfu(cfg) -> float | None` (fit from measured steps) and it answers, that MFU is
    used and the source is "calibrated".
    """
    if profile is None:
        return None
    prec = _check_precision(precision or cfg.train.precision)
    peak = profile.peak(prec)  # type: ignore[attr-defined]
    if not peak:
        return None
    mb = _resolve_micro_batch(cfg, micro_batch)
    tokens = mb * cfg.train.grad_accum * cfg.model.seq_len
    flops = flops_per_token(cfg.model, cfg.train.activation_checkpointing)
    flops_per_step = flops.total * tokens
    device = str(getattr(profile, "device", "cuda"))
    measured = bool(getattr(profile, "measured", False))
    mfu: float | None = None
    source = ""
    calibrated = getattr(profile, "calibrated_mfu", None)
    if callable(calibrated):
        mfu = calibrated(cfg)
        source = "calibrated"
    if not mfu:
        mfu = default_mfu(count_params(cfg.model).total, device)
        source = "measured profile" if measured else "datasheet peak x default MFU"
        if measured and device != "cpu":
            mfu = min(0.9, mfu / _measured_fraction(profile, prec, float(peak)))
    flops_per_s = float(peak) * float(mfu)
    return StepTime(
        seconds=flops_per_step / flops_per_s,
        flops_per_step=flops_per_step,
        flops_per_s=flops_per_s,
        mfu=float(mfu),
        source=source,
    )


# ---------------------------------------------------------------------------------------------
# Everything at once


@dataclass(frozen=True)
class Estimate:
    config: RunConfig
    params: ParamCount
    flops: Flops
    memory: Memory
    step: StepTime | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready. flops_per_token = forward + backward (model FLOPs, no recompute)."""
        cfg = self.config
        mb = _resolve_micro_batch(cfg, None)
        return {
            "params": self.params.total,
            "embedding_params": self.params.embedding,
            "non_embedding_params": self.params.non_embedding,
            "matmul_params": self.params.matmul,
            "flops_per_token": self.flops.forward + self.flops.backward,
            "flops": {
                "forward": self.flops.forward,
                "backward": self.flops.backward,
                "recompute": self.flops.recompute,
                "total": self.flops.total,
                "causal_halved": self.flops.causal_halved,
            },
            "memory": self.memory.to_dict(),
            "tokens_per_step": mb * cfg.train.grad_accum * cfg.model.seq_len,
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
