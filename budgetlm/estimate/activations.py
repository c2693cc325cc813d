"""Activations a training step saves for backward, per token and by piece (no torch import).

What PyTorch actually keeps, block by block: norms, attention (grouped-query attention keeps
the smaller k/v heads; qk_norm its normalised q and k), the dense MLP, and a mixture-of-experts
MLP for the tokens it routes: the router's input, logits and routing weights, and in each of a
token's top-k experts and in the shared experts that expert's input, hidden activations and
output. Checked against autograd's saved tensors (tests/test_estimate.py) and torch's
MemTracker (benchmarks/memory_truth.py).

LoRA fine-tunes: `budgetlm.estimate.lora_activations`.
"""

from __future__ import annotations

import math

from budgetlm.config import ModelConfig


def bytes_per_element(precision: str) -> int:
    """Bytes of an activation element in the compute dtype."""
    return 4 if precision == "fp32" else 2


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
    softmax output 2as²b, its dropout mask as²b and dropout output 2as²b. Separate q, k, v
    projections (`fused_qkv` false, measured on CPU) each keep their own cast input under
    autocast, and only v's output once q and k are rotated or cast into new tensors.
    """
    d, H, T, inner = m.d_model, m.n_head, m.seq_len, m.n_head * m.head_dim
    fused = m.fused_qkv
    # qkv projection input: one tensor, but under autocast each of separate q, k, v projections
    # keeps its own cast copy
    b = c * d * (1 if fused or not autocast else 3)
    if dropout:
        b += d * _mask_bytes(device, c)  # residual dropout mask
    b += c * inner  # attention output = output-projection input (same storage with SDPA)
    if not eager and dropout and device == "cpu":
        # CPU SDPA has no fused dropout: the math fallback upcasts q, k, v to fp32 copies and
        # keeps fp32 softmax output, dropout mask and dropout output.
        return b + 3 * 4 * inner + H * T * 12
    if eager:
        b += 3 * c * inner  # q, k, v as the matmuls keep them (reshaped copies of the views)
        if m.qk_norm:
            b += _qk_norm_saved(m, c, device, autocast) - c * inner
        if H == 1 and fused and m.positions == "rope":
            b += 2 * c * inner  # one head: v's reshape is a view, keeping the whole projection
        elif H == 1 and not fused and m.qk_norm and autocast and m.positions != "rope":
            b -= 2 * c * inner  # separate projections: q's and k's outputs are not kept
        # softmax output: fp32 under CUDA autocast (softmax is on its fp32 list), else compute
        # dtype. The AV matmul keeps its own 16-bit input: the dropout output, or a cast copy
        # of the softmax output when dtypes differ.
        soft = 4 if (c == 4 or (autocast and device != "cpu")) else c
        if dropout:
            per_score = soft + _mask_bytes(device, soft) + c
        else:
            per_score = soft + (c if soft != c else 0)
        return b + H * T * per_score
    kv_inner = m.kv_heads * m.head_dim
    b += c * (inner + 2 * kv_inner)  # q, k, v: views of one projection output, kept by SDPA
    if m.qk_norm:
        b += _qk_norm_saved(m, c, device, autocast)
    elif m.positions == "rope":
        b += c * (inner + kv_inner)  # rotated q and k are new tensors (v keeps the projection)
    if not fused and ((m.qk_norm and autocast) or (m.positions == "rope" and not m.qk_norm)):
        # separate projections: only v's output stays (q's and k's were cast or rotated into
        # new tensors; in fp32 the qk norms keep them)
        b -= c * (inner + kv_inner)
    return b + 4 * H  # SDPA (flash / memory-efficient): fp32 logsumexp per head, no scores


def _qk_norm_saved(m: ModelConfig, c: int, device: str, autocast: bool) -> float:
    """qk_norm before SDPA, per token (measured on CPU; rotary then adds nothing more): per q
    and k element the normalised fp32 tensor and the norm's output (and, under autocast, the
    fp32 upcast of the input), an fp32 rstd per head, and a further q-sized tensor. CUDA's
    fused RMSNorm (fp32, dtypes matching) keeps only input and rstd."""
    inner, kv_inner = m.n_head * m.head_dim, m.kv_heads * m.head_dim
    per_element = c + 4 + (4 if autocast else 0)
    if device != "cpu" and not autocast:
        per_element = c
    return (inner + kv_inner) * per_element + c * inner + 4 * (m.n_head + m.kv_heads)


def _mlp_saved(
    m: ModelConfig, c: int, dropout: bool, autocast: bool, device: str, f: int | None = None
) -> float:
    """Bytes per token saved by one MLP. Korthikanti et al. 2022: 19·s·b·h for a 4h GELU MLP
    (input 2sbh, GELU input 8sbh, GELU output 8sbh, dropout mask sbh) — here with the real
    width f and activation: GELU keeps its input and the down projection its output (2·f);
    ReLU keeps only its output, which is the down projection's input (1·f); SwiGLU keeps the
    gate, silu(gate), up and their product (4·f) and, under autocast, a second cast input."""
    d, f = m.d_model, m.ff if f is None else f
    if m.mlp == "swiglu":
        b = c * d * (2 if autocast else 1) + 4 * c * f
    elif m.mlp in ("gelu", "gelu_tanh"):
        b = c * d + 2 * c * f
    else:
        b = c * d + c * f
    if dropout:
        b += d * _mask_bytes(device, c)
    return b


def _moe_saved(m: ModelConfig, c: int, dropout: bool, autocast: bool, device: str) -> float:
    """Bytes per token saved by one MoE MLP (dropless top-k routing): the router's input and
    logits (compute dtype), the fp32 softmax and the top-k weights and int64 indices with their
    normalising sum; then, in each of the token's n_expert_active routed experts, the gathered
    input, the expert's hidden activations as in a dense MLP of width expert_ff, the expert's
    output that the routing weight multiplies and the weight and index; and a dense MLP of
    width expert_ff per shared expert (which reads the block's input)."""
    d, f, k, E = m.d_model, m.expert_ff, m.n_expert_active, m.n_expert
    router = c * d + (c + 4) * E + 12 * k + 4
    expert = _mlp_saved(m, c, False, autocast, device, f) + c * d + 12
    shared = m.n_shared_expert * _mlp_saved(m, c, False, autocast, device, f)
    mask = d * _mask_bytes(device, c) if dropout else 0
    return router + k * expert + shared + mask


def layer_activation_bytes(
    m: ModelConfig, precision: str = "bf16", device: str = "cuda", cross_attention: bool = False,
    moe: bool = False,
) -> float:
    """Bytes per token one block keeps for backward (Korthikanti et al. 2022, eq. 1, by piece).

    Differences from the paper's 34·s·b·h + 5·a·s²·b, all from what PyTorch actually saves:
    the residual stream is fp32 (parameters stay fp32 under autocast, so the two norm inputs
    cost 4 B/element, not 2); the MLP uses its real width and activation; d_head·h may differ
    from d; with SDPA the 5·a·s²·b term is replaced by a logsumexp per head; dropout masks
    exist only when dropout > 0 (torch skips dropout at p = 0). moe: a block whose MLP is a
    mixture of experts (`_moe_saved`).
    """
    c = bytes_per_element(precision)
    autocast = precision != "fp32"
    dropout = m.dropout > 0
    eager = m.attention == "eager" or (m.family == "t5" and m.positions == "relative")
    b = 2 * _norm_saved(m, device)
    b += _attention_saved(m, c, device, dropout, eager, autocast)
    if moe:
        b += _moe_saved(m, c, dropout, autocast, device)
    else:
        b += _mlp_saved(m, c, dropout, autocast, device)
    if cross_attention:  # t5 decoder: one more norm + attention over the encoder output
        b += _norm_saved(m, device) + _attention_saved(m, c, device, dropout, eager, autocast)
    return b


def _final_activation_bytes(m: ModelConfig, precision: str, device: str) -> float:
    """Per token, outside the blocks: final norm and head inputs (and BERT's embedding norm
    and MLM transform: dense input, GELU input, fp32 norm input, decoder input)."""
    c, d = bytes_per_element(precision), m.d_model
    b = _norm_saved(m, device) + c * d  # ln_f input, LM-head input
    if m.family == "bert":
        b += _norm_saved(m, device)  # embedding norm
        b += 2 * c * d + _norm_saved(m, device)  # head.dense input, GELU input, head.norm input
    if m.dropout > 0:
        b += d * _mask_bytes(device, 4)  # embedding dropout mask (fp32 embedding sum)
    return b


def activation_pieces(
    m: ModelConfig, precision: str, device: str
) -> tuple[float, float, int, float]:
    """Per token: (largest block, all blocks, number of blocks, outside the blocks)."""
    if m.family == "t5":
        return t5_activation_pieces(m, precision, device)
    enc = layer_activation_bytes(m, precision, device)
    if m.moe_layers:
        moe = layer_activation_bytes(m, precision, device, moe=True)
        dense = m.n_layer - m.moe_layers
        n, largest = m.n_layer, max(moe, enc) if dense else moe
        blocks = enc * dense + moe * m.moe_layers
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
    _largest, blocks, n, final = activation_pieces(m, precision, device)
    kept = 4 * m.d_model * n  # each block's fp32 input
    if m.family == "t5":  # per encoder token: decoder blocks read T_out / T_in as many
        r = m.decoder_seq_len / m.seq_len
        kept = 4 * m.d_model * (m.n_layer + r * m.decoder_layers) + _t5_checkpoint_extra(m, r)
    per_token = (kept if checkpointing else blocks) + final
    if m.family == "t5" and m.positions == "relative":  # int64 buckets of each stack's bias
        return int(math.ceil(tokens * per_token)) + 8 * (m.seq_len**2 + m.decoder_seq_len**2)
    return int(math.ceil(tokens * per_token))


def _t5_decoder_block(m: ModelConfig, precision: str, device: str) -> tuple[float, float]:
    """(bytes per decoder token, bytes per encoder token) one t5 decoder block saves: norms,
    causal self-attention over T_out keys and the MLP per decoder token; cross-attention's
    query side (its input, q, scores over T_in keys, the output projection's input) per
    decoder token and its k and v (and, under autocast, their cast input) per encoder token."""
    c, autocast, dropout = bytes_per_element(precision), precision != "fp32", m.dropout > 0
    eager = m.attention == "eager" or m.positions == "relative"
    dm = m.model_copy(update={"seq_len": m.decoder_seq_len})
    per_out = 3 * _norm_saved(m, device) + _mlp_saved(m, c, dropout, autocast, device)
    per_out += _attention_saved(dm, c, device, dropout, eager, autocast)
    inner = m.n_head * m.head_dim
    kv = 2 * c * inner if eager else 0.0
    per_out += _attention_saved(m, c, device, dropout, eager, autocast) - kv
    if autocast:  # the cross q projection casts only the decoder's input
        per_out -= 2 * c * m.d_model
    per_out += _t5_softmax_extra(m, m.decoder_seq_len + m.seq_len, precision)
    per_enc = kv + (2 * c * m.d_model if autocast else 0)
    return per_out, per_enc


def _t5_softmax_extra(m: ModelConfig, keys: int, precision: str) -> float:
    """Per query token, what t5's eager attention saves beyond `_attention_saved` on `keys`
    keys under autocast: the scores plus the fp32 bias are fp32, so softmax keeps an fp32
    output (not one in the compute dtype) before the cast copy the AV matmul keeps."""
    eager = m.attention == "eager" or m.positions == "relative"
    return 4.0 * m.n_head * keys if eager and precision != "fp32" else 0.0


def _t5_checkpoint_extra(m: ModelConfig, r: float) -> float:
    """Per encoder token, what t5 keeps besides the block inputs under checkpointing: the
    encoder output every decoder block reads, the combined position bias + mask of each stack
    (fp32, B x H x T x T_keys) and the cross-attention mask, all inputs of the checkpoints."""
    eager = m.attention == "eager" or m.positions == "relative"
    bias = 4 * m.n_head * (m.seq_len + r * m.decoder_seq_len) if eager else 0
    return 4 * m.d_model + bias + 4


def _t5_ff_workspace(m: ModelConfig, c: int) -> float:
    """Per token, a t5 MLP's backward working set at its largest (measured under MemTracker):
    the fp32 gradient of the residual stream, the gradient of the hidden activation and the
    activation's input gradient (compute dtype). ReLU's output is saved by both ReLU and the
    down projection, so nothing is freed before threshold_backward (2·f); GELU's output goes
    once the down projection is differentiated (1·f); SwiGLU's product rule holds the gradients
    of both factors (2·f)."""
    return 4 * m.d_model + (1 if m.mlp in ("gelu", "gelu_tanh") else 2) * c * m.ff


def t5_moment_bytes(m: ModelConfig, precision: str, device: str, checkpointing: bool,
                    decoder: bool, j: int) -> tuple[float, float, float]:
    """What is alive while block j of t5's decoder (or encoder) is differentiated, at its MLP's
    backward, or (decoder, j = -1) the decoder's token lookup: (activations per encoder token,
    temporaries per encoder token, bytes that do not depend on the batch).

    Differentiating block j of a stack keeps blocks 0..j's saved activations (under
    checkpointing their fp32 inputs and block j's recompute, which holds all that block saves);
    the decoder's blocks keep the whole encoder (its inputs under checkpointing, with the
    encoder's bias + padding mask, the encoder output and the cross mask, all inputs of the
    checkpoints), blocks 0..j's cross k and v, and, below the top block, the fp32 gradient of
    the encoder output that the upper blocks' cross-attention summed into. The encoder's
    blocks below its top block hold the (B, H, T, T) fp32 gradient of the bias + mask that
    the upper blocks summed into (the decoder's has no batch axis). The embedding lookups'
    int64 ids stay until the stack's embedding is differentiated, the bucket ids of the
    relative bias until its table is."""
    c, d, H = bytes_per_element(precision), m.d_model, m.n_head
    T, To = m.seq_len, m.decoder_seq_len
    r = To / T
    eager = m.attention == "eager" or m.positions == "relative"
    mm = m.model_copy(update={"fused_qkv": False})  # T5's separate q, k, v projections
    ids = 8 * T**2 if m.positions == "relative" else 0  # relative bucket ids, encoder
    bias = 4 * H if eager else 0  # per query per key: fp32 bias + mask, or its gradient
    if not decoder:
        block = layer_activation_bytes(mm, precision, device) + _t5_softmax_extra(mm, T, precision)
        acts = 4 * d * j + block + bias * T if checkpointing else (j + 1) * block
        acts += 8 + (bias * T if j < m.n_layer - 1 else 0)
        return acts, _t5_ff_workspace(m, c), ids
    per_out, per_enc = _t5_decoder_block(mm, precision, device)
    block = j >= 0  # j = -1: the decoder's token lookup, every decoder block done
    if checkpointing:
        enc = 4 * d * m.n_layer + bias * T + 4 * d + 4 + (per_enc if block else 0)
        dec = 4 * d * j + per_out if block else 0
    else:
        enc = m.n_layer * (layer_activation_bytes(mm, precision, device)
                           + _t5_softmax_extra(mm, T, precision))
        enc += (4 * d if c == 4 else 0) + (j + 1) * per_enc  # fp32: k and v keep the output
        dec = (j + 1) * per_out
    below_top = j < m.decoder_layers - 1
    enc += _norm_saved(m, device) + 8 + (4 * d if below_top else 0)
    const = ids + (8 * To**2 if m.positions == "relative" else 0)
    const += bias * To * To * ((1 if checkpointing and block else 0) + (1 if below_top else 0))
    temps = _t5_ff_workspace(m, c) if block else 4 * d  # or the lookup's output gradient
    return enc + r * (dec + 8), r * temps, const


def t5_activation_pieces(
    m: ModelConfig, precision: str, device: str
) -> tuple[float, float, int, float]:
    """`activation_pieces` of t5 per *encoder input token* (what a step's tokens count): the
    decoder's per-token bytes scaled by r = T_out / T_in (decoder_seq_len / seq_len)."""
    r = m.decoder_seq_len / m.seq_len
    c = bytes_per_element(precision)
    m = m.model_copy(update={"fused_qkv": False})  # T5's separate q, k, v projections
    enc = layer_activation_bytes(m, precision, device) + _t5_softmax_extra(m, m.seq_len, precision)
    per_out, per_enc = _t5_decoder_block(m, precision, device)
    dec = r * per_out + per_enc
    n = m.n_layer + m.decoder_layers
    largest = max(enc, dec) if m.decoder_layers else enc
    blocks = enc * m.n_layer + dec * m.decoder_layers
    # encoder final norm, its output (read by every decoder block), the embedding lookups' ids
    # (8 B per token), per input token; decoder final norm and head input per output token
    final = _norm_saved(m, device) + (0 if c != 4 else 4 * m.d_model) + 8
    final += r * (_norm_saved(m, device) + c * m.d_model + 16)  # + the flattened targets
    if m.dropout > 0:
        final += (1 + r) * m.d_model * _mask_bytes(device, 4)  # embedding dropout masks
    return largest, blocks, n, final


def dropout_mask_bytes(device: str, dtype_bytes: int) -> int:
    """Bytes per element of a dropout mask (`_mask_bytes`), for the LoRA count."""
    return _mask_bytes(device, dtype_bytes)


def attention_saved(m: ModelConfig, c: int, device: str, dropout: bool, eager: bool,
                    autocast: bool) -> float:
    """Bytes per token one self-attention saves in full training (`_attention_saved`)."""
    return _attention_saved(m, c, device, dropout, eager, autocast)
