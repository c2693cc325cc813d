"""Training FLOPs per token of a model config (no torch import).

2 FLOPs per multiply-add, per token at `seq_len`. Attention scores and values are counted as the
full T x T square even for causal models (`causal_halved=False`), because that is what the fused
kernels execute and what `torch.utils.flop_counter.FlopCounterMode` counts. The same holds for
sliding-window attention: budgetlm's model passes the banded mask to SDPA explicitly, which
computes the full masked square, so a window saves no FLOPs here.

Mixture of experts: FLOPs follow the *active* weights. Every token multiplies the router
(2·d·n_expert), its n_expert_active routed experts and the shared experts; routing is dropless
(every routed token is computed), so this holds whatever the balance between experts.
Grouped-query attention shrinks the k/v projections only: scores and values still cost
2·2·T·(n_head·head_dim) per token, every query head attending.
t5: per encoder input token of a step, the decoder on its own length (`flops_per_token`).
"""

from __future__ import annotations

from dataclasses import dataclass

from budgetlm.config import ModelConfig, RunConfig
from budgetlm.errors import UserError
from budgetlm.estimate.finetune import BLOCK_PIECES, BlockLinear, LoraPlan, block_linears, lora_plan
from budgetlm.estimate.params import (
    MAX_PARAMS,
    active_block_matmul_params,
    describe_shape,
    head_matmul_params,
    param_spec_counts,
    sci,
)

# Model FLOPs per token (forward + backward) beyond which no estimate is given: a model of
# MAX_PARAMS parameters needs 6e18; the rest is room for attention over long sequences.
MAX_FLOPS_PER_TOKEN = 1000 * 6 * MAX_PARAMS


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
    def model(self) -> float:
        """Model FLOPs per token: forward + backward, no recompute."""
        return self.forward + self.backward

    @property
    def total(self) -> float:
        """FLOPs executed per training token: forward + backward + recompute."""
        return self.forward + self.backward + self.recompute


def _t5_sequence_flops(m: ModelConfig) -> tuple[int, int, int]:
    """t5, forward FLOPs of one sequence (T_in = seq_len encoder tokens, T_out =
    decoder_seq_len decoder tokens): (blocks, head, the MLP down projections of every block).

    Encoder: its block weights and self-attention (T_in keys) per input token. Decoder: its
    block weights but the cross-attention k and v, self-attention over T_out keys and
    cross-attention over T_in keys, per output token; the cross k and v projections read the
    T_in encoder outputs in every decoder block. Head: V·d per output token."""
    T_in, T_out, inner = m.seq_len, m.decoder_seq_len, m.n_head * m.head_dim
    enc = dec = cross_kv = 0
    for s, k in param_spec_counts(m):
        if s.role != "matrix":
            continue
        if s.name.startswith("encoder."):
            enc += k * s.numel
        elif ".EncDecAttention.k." in s.name or ".EncDecAttention.v." in s.name:
            cross_kv += k * s.numel
        else:
            dec += k * s.numel
    blocks = T_in * (2 * enc + m.n_layer * 2 * 2 * T_in * inner + 2 * cross_kv)
    blocks += T_out * (2 * dec + m.decoder_layers * 2 * 2 * (T_out + T_in) * inner)
    down = 2 * m.ff * m.d_model * (m.n_layer * T_in + m.decoder_layers * T_out)
    return blocks, T_out * 2 * head_matmul_params(m), down


def flops_per_token(m: ModelConfig, checkpointing: bool = False) -> Flops:
    """FLOPs per token at sequence length T = m.seq_len.

    Forward, factor by factor (Kaplan et al. 2020 §2.1 Table 1; Chinchilla, Hoffmann et al. 2022
    App. F; nanoGPT `estimate_mfu`; torchtitan `get_num_flop_per_token`):
      2·N_matmul          every active weight multiplies the token once (multiply + add):
                          with experts, the router, the top-k routed and the shared experts
      + 2·2·T·(h·d_head)  per attention: QK^T scores (T keys) and the weighted sum of V, full
                          square (no causal halving; see module docstring)
    Backward = 2 x forward (gradients w.r.t. inputs and w.r.t. weights; Kaplan §2.1).
    Recompute (full activation checkpointing) = one more forward of the blocks, not of the
    embedding or the head (Korthikanti et al. 2022 §4 "full recomputation"), less each block's
    dense MLP's down projection when there is no dropout (torch's checkpoint stops early; see
    below). MoE blocks are counted as recomputed in full.

    t5 (Raffel et al. 2020): per *encoder input token* of a real step, T_in = seq_len inputs
    and T_out = decoder_seq_len targets per sequence (`_t5_sequence_flops` / T_in): the decoder
    and the head run on T_out tokens, its self-attention over T_out keys, its cross-attention
    over T_in keys; `tokens_per_step` counts the encoder's tokens.
    """
    if m.family == "t5":  # of one sequence, then per encoder token
        block_int, head_int, down_int = _t5_sequence_flops(m)
        per = m.seq_len
    else:
        T, inner = m.seq_len, m.n_head * m.head_dim
        block_int = 2 * active_block_matmul_params(m) + m.n_layer * 2 * 2 * T * inner
        head_int, per = 2 * head_matmul_params(m), 1
        down_int = 2 * (m.n_layer - m.moe_layers) * m.ff * m.d_model
    forward_int = block_int + head_int
    if 3 * forward_int > MAX_FLOPS_PER_TOKEN * per:
        raise UserError(
            f"model: {sci(3 * forward_int // per)} FLOPs per token ({describe_shape(m)}) is "
            f"beyond any hardware; estimates stop at {sci(MAX_FLOPS_PER_TOKEN)}"
        )
    block, forward, down = block_int / per, forward_int / per, down_int / per
    recompute = 0.0
    if checkpointing:
        recompute = block
        if m.dropout == 0.0:
            # torch's non-reentrant checkpoint stops recomputing once the last tensor saved for
            # backward is back (`set_checkpoint_early_stop`, default on). A matmul saves its
            # inputs before it runs, so the block's last matmul — the MLP down projection — is
            # not recomputed; with dropout > 0 the dropout mask after it is saved, so it is.
            recompute -= down
    return Flops(
        forward=forward,
        backward=2.0 * forward,
        recompute=recompute,
        causal_halved=False,
    )


def model_flops_per_token(m: ModelConfig) -> float:
    """Model FLOPs per token: forward + backward, without activation recomputation.

    The work the model itself requires, whatever the memory strategy; MFU and compute budgets
    (6·N·D-style accounting) count these; for a mixture of experts, those of the active
    parameters (router, top-k and shared experts). Equals `flops_per_token(m).forward +
    flops_per_token(m).backward`.
    """
    return flops_per_token(m).model


def training_flops_per_token(cfg: RunConfig, checkpointing: bool | None = None) -> Flops:
    """FLOPs per token one training step of `cfg` executes, by what trains: a full fine-tune (or
    pretraining) `flops_per_token`, a LoRA fine-tune `lora_flops_per_token`. What step time,
    FLOP caps and plans count; `model_flops_per_token` stays the 6N-style fact MFU is quoted in.
    checkpointing: None takes cfg.train.activation_checkpointing."""
    ckpt = cfg.train.activation_checkpointing if checkpointing is None else checkpointing
    plan = lora_plan(cfg)
    if plan is None:
        return flops_per_token(cfg.model, ckpt)
    return lora_flops_per_token(cfg.model, plan, ckpt)


def lora_flops_per_token(m: ModelConfig, plan: LoraPlan, checkpointing: bool = False) -> Flops:
    """Training FLOPs per token of a LoRA fine-tune (Hu et al. 2021), linear by linear.

    A Linear y = W x (W: d_out x d_in, N = d_in·d_out) costs 2N forward; backward, the input
    gradient dx = W^T dy another 2N and the weight gradient dW = dy x^T 2N more (Kaplan et al.
    2020 §2.1: 6N in all). A frozen W needs no dW: autograd skips that GEMM (and does not even
    save x for it), so a frozen Linear costs 2N + 2N = 4N — as long as a gradient must flow
    through it, i.e. something below it trains. Below the lowest trainable parameter (in the
    first block, the pieces before its first adapted Linear or trained norm) nothing is
    differentiated: 2N, and the attention there has no backward either.

    The adapter of a Linear, h = B (A x) with A: r x d_in, B: d_out x r, costs 2r(d_in + d_out)
    forward and, both matrices training, 4r(d_in + d_out) backward (dA, dB, and the input
    gradients through B and A; the one through A only where x needs a gradient). So with
    every block Linear adapted (all-linear), frozen matmul parameters N and
    N_A = r·Σ(d_in + d_out) adapter parameters per token:

        forward  = 2N + 2N_A + attention
        backward = 2N + 4N_A + 2·attention       (no 2N of weight gradients)
        total   ~= 4N + 6N_A + 3·attention       instead of 6N + 3·attention

    less the first block's pieces below its first adapter. N includes the LM head (its input
    gradient is needed below it); `train_head` adds its weight gradient 2·V·d. Attention scores
    and values count the full square as in `flops_per_token`.

    Recompute (checkpointing): each block's forward once more, adapters included, except what
    torch's early stop skips when there is no dropout: the adapter's B of an adapted MLP down
    projection (its input, A's output, is the block's last saved tensor), else the frozen down
    projection itself (the activation's saved input or output is the last). MoE blocks are
    recomputed in full, as in `flops_per_token`.
    """
    flops_per_token(m)  # the size check
    T, inner = m.seq_len, m.n_head * m.head_dim
    attention = 2.0 * 2 * T * inner
    first = plan.first_trained(m)
    blocks_train = first is None or first < len(BLOCK_PIECES)
    forward = backward = recompute = 0.0
    start = 0
    for moe, n in ((False, m.n_layer - m.moe_layers), (True, m.moe_layers)):
        if not n:
            continue
        linears = block_linears(m, moe)
        tail = 0.0 if moe or m.dropout > 0 else _early_stop_tail(plan, linears)
        for block, count in ((start, 1), (start + 1, n - 1)):
            fwd, bwd = _lora_block_flops(m, plan, linears, block, attention)
            forward += count * fwd
            backward += count * bwd
            if checkpointing and blocks_train:
                recompute += count * (fwd - tail)
        start += n
    head = 2.0 * head_matmul_params(m)
    forward += head
    backward += head * (blocks_train + plan.head)  # input gradient, weight gradient
    return Flops(forward=forward, backward=backward, recompute=recompute, causal_halved=False)


def _lora_block_flops(m: ModelConfig, plan: LoraPlan, linears: list[BlockLinear], block: int,
                      attention: float) -> tuple[float, float]:
    """(forward, backward) FLOPs per token of one block of a LoRA fine-tune."""
    r = plan.rank
    forward = attention
    backward = 2 * attention if plan.input_grad(m, block, BLOCK_PIECES.index("attn")) else 0.0
    for lin in linears:
        n, grad_in = lin.d_in * lin.d_out, plan.input_grad(m, block, lin.piece)
        forward += lin.active * 2 * n
        backward += lin.active * 2 * n * grad_in
        if plan.adapts(lin.module):
            forward += lin.active * 2 * r * (lin.d_in + lin.d_out)
            backward += lin.active * 2 * r * (lin.d_in + 2 * lin.d_out + lin.d_in * grad_in)
    return forward, backward


def _early_stop_tail(plan: LoraPlan, linears: list[BlockLinear]) -> float:
    """FLOPs per token of a dense block's forward that its recompute skips (no dropout): the
    B of an adapted MLP down projection, else the frozen down projection."""
    down = next(lin for lin in linears if lin.piece == BLOCK_PIECES.index("mlp_out"))
    if plan.adapts(down.module):
        return 2.0 * plan.rank * down.d_out
    return 2.0 * down.d_in * down.d_out
