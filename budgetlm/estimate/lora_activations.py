"""What a LoRA fine-tune's training step saves for backward and holds in passing, per token
(no torch import).

A LoRA fine-tune (`budgetlm.estimate.finetune`) saves less through its frozen weights than
full training (`budgetlm.estimate.activations`) — a frozen Linear keeps no input, a frozen norm
no normalised input, nothing below the first trained piece of the first block needs a
gradient — and more for its adapters (each A's input, a 16-bit cast copy under autocast, and
A's output); its residual stream is 16-bit when the frozen embedding is. Checked tensor by
tensor and against torch's MemTracker on peft-wrapped models (tests/test_estimate_finetune.py).
"""

from __future__ import annotations

import math

from budgetlm.config import ModelConfig
from budgetlm.estimate.activations import attention_saved, bytes_per_element, dropout_mask_bytes
from budgetlm.estimate.finetune import ATTENTION_INPUTS, BLOCK_PIECES, MLP_OUTPUTS, LoraPlan


def residual_bytes(precision: str, plan: LoraPlan) -> int:
    """Bytes of a residual-stream element in a LoRA fine-tune: the frozen token embedding is
    held in the 16-bit compute dtype, so the stream is too; fp32 when the embedding trains
    (a tied trained head) or in fp32 runs."""
    return 4 if precision == "fp32" or plan.embedding else bytes_per_element(precision)


def _lora_norm_saved(m: ModelConfig, device: str, cr: int, trained: bool,
                     grad_in: bool = True) -> float:
    """A norm (fp32 weight) over a residual stream of cr-byte elements. LayerNorm keeps its
    input and fp32 mean and rstd — on CUDA, whose autocast runs it in fp32, an fp32 copy of a
    16-bit input. RMSNorm: the composite kernel (CPU, or a 16-bit input) keeps the fp32
    upcast input and rstd, plus the fp32 normalised input when its weight trains (only that
    when its input needs no gradient); CUDA's fused kernel (fp32 input) keeps input and
    rstd."""
    d = m.d_model
    cuda = device != "cpu"
    if m.norm == "layernorm":
        return (4 if cuda else cr) * d + 8
    if cuda and cr == 4:
        return 4 * d + 4
    if not grad_in:
        return 4 * d if trained else 0
    return 4 * d + 4 + (4 * d if trained else 0)


def norm_output_bytes(m: ModelConfig, device: str, cr: int) -> int:
    """Bytes of an element of a norm's output over a cr-byte stream: the stream's dtype, but
    fp32 from LayerNorm under CUDA autocast."""
    return 4 if m.norm == "layernorm" and device != "cpu" else cr


def _adapters_saved(plan: LoraPlan, d_in: int, n: int, c: int, device: str, kept: bool,
                    grad_in: bool) -> float:
    """Bytes per token saved by n adapters reading one input of width d_in (peft: x cast to
    the adapters' fp32, dropout, B(A(x))): each A keeps its input for its weight gradient —
    under autocast its own 16-bit cast copy, in fp32 the input itself (`kept`: already saved
    by another piece), after dropout>0 the dropped copy and the mask (fp32 input; the mask
    only when x needs a gradient) — and each B keeps A's output (rank wide)."""
    if n == 0:
        return 0.0
    a_out = n * c * plan.rank
    if plan.dropout > 0:
        mask = d_in * dropout_mask_bytes(device, 4) if grad_in else 0
        return n * (c * d_in + mask) + a_out
    if c != 4:
        return n * c * d_in + a_out
    return (0 if kept else 4 * d_in) + a_out


def _lora_mlp_saved(m: ModelConfig, plan: LoraPlan, c: int, device: str, f: int,
                    grad_in: bool = True) -> tuple[float, float, float]:
    """(input adapters, activation, output adapter) bytes per token of one MLP of width f in a
    LoRA fine-tune: GELU keeps its input, ReLU its output (which an fp32 down adapter then
    shares), SwiGLU the gate, silu(gate) and up projection."""
    swiglu = m.mlp == "swiglu"
    up = sum(name in plan.mlp for name in (("w1", "w3") if swiglu else ("c_fc",)))
    act = 3 * c * f if swiglu else c * f
    down = _adapters_saved(plan, f, int(("w2" if swiglu else "c_proj") in plan.mlp), c, device,
                           m.mlp == "relu", True)
    return _adapters_saved(plan, m.d_model, up, c, device, False, grad_in), act, down


def _lora_moe_saved(m: ModelConfig, plan: LoraPlan, c: int, device: str) -> float:
    """One MoE MLP of a LoRA fine-tune per token: the router's logits and routing (its input
    is not kept: the router is frozen), each of the token's top-k experts as an MLP of width
    expert_ff plus the output the routing weight multiplies and the weighted output the
    scatter back (index_add_) keeps, and the shared experts (in fp32 their input adapters
    share the block input)."""
    d, k, E = m.d_model, m.n_expert_active, m.n_expert
    up, act, down = _lora_mlp_saved(m, plan, c, device, m.expert_ff)
    expert = up + act + down + 2 * c * d + 12
    shared = m.n_shared_expert * (up + act + down)
    if m.n_shared_expert > 1 and c == 4 and plan.dropout == 0 and up:
        shared -= (m.n_shared_expert - 1) * 4 * d
    return (c + 4) * E + 12 * k + 4 + k * expert + shared


def _lora_attention_saved(m: ModelConfig, plan: LoraPlan, c: int, device: str) -> float:
    """Bytes per token one SDPA attention of a LoRA fine-tune saves, its projections' inputs
    aside (the adapters'): q, k and v — with fused projections v's view keeps the whole
    projection output; separate projections keep v's, and q's and k's only when nothing
    replaces them — the rotated q and k, or the frozen qk-norms' (fp32 upcast of 16-bit q and
    k, rstd per head, the normalised fp32 q and k on CPU when the norms train, and their
    output), the output and fp32 logsumexp, the residual dropout mask."""
    inner, kv_inner, d = m.n_head * m.head_dim, m.kv_heads * m.head_dim, m.d_model
    qk = inner + kv_inner
    replaced = m.qk_norm or m.positions == "rope"
    if m.fused_qkv:
        b = c * (inner + 2 * kv_inner)
    else:
        b = c * kv_inner + (c * qk if not replaced or (m.qk_norm and c == 4) else 0)
    if m.qk_norm:
        b += (4 * qk if c != 4 else 0) + (4 * qk if plan.norms and device == "cpu" else 0)
        b += 4 * (m.n_head + m.kv_heads)
    if replaced:
        b += c * qk
    b += c * inner + 4 * m.n_head
    return b + (d * dropout_mask_bytes(device, c) if m.dropout > 0 else 0)


def _lora_block_pieces(m: ModelConfig, plan: LoraPlan, precision: str, device: str,
                       moe: bool) -> list[tuple[float, float]]:
    """Per piece of `BLOCK_PIECES`: (bytes per token it saves, bytes when it is the first
    piece that trains in a block whose input needs no gradient)."""
    c, cr = bytes_per_element(precision), residual_bytes(precision, plan)
    autocast, dropout = precision != "fp32", m.dropout > 0
    eager = m.attention == "eager"
    inner = m.n_head * m.head_dim
    norm = _lora_norm_saved(m, device, cr, plan.norms)
    first_norm = _lora_norm_saved(m, device, cr, plan.norms, grad_in=False)
    sdpa = not eager and not (dropout and device == "cpu")
    # the output projection's input is SDPA's saved output itself: SDPA lays its output out
    # like q, which is a (B, T, H, dh) view of the projection output unless the qk-norms made
    # it a new per-head tensor; then the projection reads a contiguous copy
    out_kept = sdpa and not m.qk_norm
    if sdpa:
        attn = _lora_attention_saved(m, plan, c, device)
    else:  # eager, or CPU dropout's math fallback: the full count less the projections' inputs
        proj_inputs = c * m.d_model * (1 if m.fused_qkv or not autocast else 3)
        attn = attention_saved(m, c, device, dropout, eager, autocast) - proj_inputs - c * inner
    n_in = len(plan.attn & ATTENTION_INPUTS)

    def attn_in(grad_in: bool) -> float:
        return _adapters_saved(plan, m.d_model, n_in, c, device, False, grad_in)

    attn_out = _adapters_saved(plan, inner, int("c_proj" in plan.attn), c, device, out_kept,
                               True)
    if moe:
        mlp_in, mlp_first = 0.0, 0.0
        act, down = _lora_moe_saved(m, plan, c, device), 0.0
    else:
        mlp_in, act, down = _lora_mlp_saved(m, plan, c, device, m.ff)
        mlp_first = _lora_mlp_saved(m, plan, c, device, m.ff, grad_in=False)[0]
    mask = m.d_model * dropout_mask_bytes(device, c) if dropout and not moe else 0
    return [(norm, first_norm), (attn_in(True), attn_in(False)), (attn, attn),
            (attn_out, attn_out), (norm, first_norm), (mlp_in, mlp_first),
            (act + mask, act + mask), (down, down)]


def _lora_block_bytes(pieces: list[tuple[float, float]], first: int | None) -> float:
    """Bytes per token a block saves when the pieces before `first` need no gradient (None:
    every piece does)."""
    if first is None:
        return sum(p for p, _ in pieces)
    if first >= len(pieces):
        return 0.0
    return pieces[first][1] + sum(p for p, _ in pieces[first + 1:])


def _lora_final_bytes(m: ModelConfig, plan: LoraPlan, precision: str, device: str) -> float:
    """Per token, outside the blocks, in a LoRA fine-tune: the final norm's input (when the
    blocks below train), the head's input when the head trains (BERT: its MLM transform's GELU
    input and norm, and the embedding norm when norms train), the embedding dropout mask when
    the embedding trains."""
    c, cr, d = bytes_per_element(precision), residual_bytes(precision, plan), m.d_model
    first = plan.first_trained(m)
    blocks_train = first is None or first < len(BLOCK_PIECES)
    b = _lora_norm_saved(m, device, cr, plan.norms) if blocks_train or plan.norms else 0.0
    if plan.head:
        b += c * d  # the head's input, for its weight gradient
    if m.family == "bert":
        b += c * d + _lora_norm_saved(m, device, 4, plan.norms)  # GELU input, fp32 head.norm
        b += c * d if plan.head else 0  # the decoder's input
        b += _lora_norm_saved(m, device, cr, True) if plan.norms or plan.embedding else 0
    if m.dropout > 0 and plan.embedding:
        b += d * dropout_mask_bytes(device, 4)
    return b


def lora_activation_pieces(
    m: ModelConfig, plan: LoraPlan, precision: str, device: str
) -> tuple[float, float, int, float]:
    """Per token, for a LoRA fine-tune: (largest block, all blocks, number of blocks, outside
    the blocks), the first block saving nothing below its first trained piece."""
    first = plan.first_trained(m)
    rest = None if first is None or first < len(BLOCK_PIECES) else first
    largest = blocks = 0.0
    start = 0
    for moe, n in ((False, m.n_layer - m.moe_layers), (True, m.moe_layers)):
        if not n:
            continue
        pieces = _lora_block_pieces(m, plan, precision, device, moe)
        head = _lora_block_bytes(pieces, first if start == 0 else rest)
        tail = _lora_block_bytes(pieces, rest)
        largest = max(largest, head, tail if n > 1 else 0.0)
        blocks += head + (n - 1) * tail
        start += n
    return largest, blocks, m.n_layer, _lora_final_bytes(m, plan, precision, device)


def lora_activation_bytes(
    m: ModelConfig, plan: LoraPlan, micro_batch: int, precision: str, checkpointing: bool,
    device: str = "cuda",
) -> int:
    """Bytes of saved activations of one micro-batch of a LoRA fine-tune at the end of the
    forward pass (logits excluded); under checkpointing each block keeps its input, the
    residual stream (`residual_bytes`)."""
    tokens = micro_batch * m.seq_len
    _largest, blocks, n, final = lora_activation_pieces(m, plan, precision, device)
    kept = residual_bytes(precision, plan) * m.d_model * n if checkpointing else blocks
    return int(math.ceil(tokens * (kept + final)))


def lora_checkpoint_alias(m: ModelConfig, plan: LoraPlan, precision: str,
                          device: str = "cuda") -> int:
    """Bytes per token of a recomputed block's saved activations that are its input itself
    (kept anyway under checkpointing): ln_1's saved input, unless the norm upcast a 16-bit
    input to a new fp32 tensor (RMSNorm, and LayerNorm under CUDA autocast)."""
    cr = residual_bytes(precision, plan)
    return cr * m.d_model if cr == 4 or (m.norm == "layernorm" and device == "cpu") else 0


def lora_block_transients(m: ModelConfig, plan: LoraPlan, precision: str,
                          recompute: bool = False, device: str = "cuda") -> float:
    """Bytes per token a block of a LoRA fine-tune holds beyond its saved activations where its
    forward peaks, at the MLP down projection's adapter (measured on CPU under MemTracker):

    - the block's input and the residual after the attention, unless a norm saved them as they
      are (a recompute instead holds two residual-sized gradients, the block output's and the
      one it was computed from; the checkpoint keeps the input);
    - the MLP's input, unless an fp32 adapter saved it as it is;
    - the down projection's input unless saved as it is (by ReLU, or by the adapter in fp32),
      peft's fp32 cast of it under autocast, the frozen projection's output, and then the
      larger of the dropped copy (adapter dropout under autocast) and B's output with its
      scaled copy, being added (a recompute stops early at B, before either of the latter);
    - with the down projection not adapted, the activation's output and the projection's (a
      recompute stops at the activation)."""
    c, cr, d = bytes_per_element(precision), residual_bytes(precision, plan), m.d_model
    autocast = c != 4
    as_is = not autocast and plan.dropout == 0
    residual = cr * d - lora_checkpoint_alias(m, plan, precision, device)
    b = residual + (2 * cr * d if recompute else residual)
    b += 0 if as_is and plan.mlp - MLP_OUTPUTS else norm_output_bytes(m, device, cr) * d
    dense = b + _down_transients(m, plan, c, m.ff, recompute)
    if not m.moe_layers:
        return dense
    # an MoE block peaks in its last (shared) expert, holding the routed experts' outputs
    # (top-k per token) and their combination
    k = m.n_expert_active
    return max(dense, b + (k + 1) * c * d + _down_transients(m, plan, c, m.expert_ff, recompute))


def _down_transients(m: ModelConfig, plan: LoraPlan, c: int, f: int, recompute: bool) -> float:
    """`lora_block_transients` at the down projection of an MLP of width f."""
    autocast, d = c != 4, m.d_model
    as_is = not autocast and plan.dropout == 0
    h = 0 if m.mlp == "relu" else c * f
    if not plan.mlp & MLP_OUTPUTS:
        return 0 if recompute else h + c * d
    b = (0 if as_is else h) + (4 * f if autocast else 0) + c * d
    dropped = 4 * f if autocast and plan.dropout > 0 else 0
    return b + (dropped if recompute else max(dropped, 2 * c * d))


def lora_mlp_backward_bytes(m: ModelConfig, plan: LoraPlan, precision: str,
                            device: str) -> tuple[float, float]:
    """The backward working set of a LoRA fine-tune's MLP, net of what it has freed by its
    peak, as (bytes per token, bytes per hidden element per token).

    Per token: the incoming residual gradient, less the MLP's dropout mask, freed by then.
    Per hidden element: the hidden-width gradients alive at once in the compute dtype — at an
    adapted down projection the frozen weight's input
    gradient, the adapter's and their sum (SwiGLU's product rule then needs three too); else
    the input gradient and the activation's (three for SwiGLU) — less the adapter's saved input
    copy (unless ReLU's saved output is it) and its dropout mask, freed by then."""
    c, cr, d = bytes_per_element(precision), residual_bytes(precision, plan), m.d_model
    adapted = bool(plan.mlp & MLP_OUTPUTS)
    per_token = cr * d - (d * dropout_mask_bytes(device, c) if m.dropout > 0 else 0)
    grads = 3 if adapted or m.mlp == "swiglu" else 2
    freed = 0
    if adapted:
        freed = 0 if m.mlp == "relu" and c == 4 and plan.dropout == 0 else c
        freed += dropout_mask_bytes(device, 4) if plan.dropout > 0 else 0
    return per_token, grads * c - freed
