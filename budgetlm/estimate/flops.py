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
"""

from __future__ import annotations

from dataclasses import dataclass

from budgetlm.config import ModelConfig
from budgetlm.errors import UserError
from budgetlm.estimate.params import (
    MAX_PARAMS,
    active_block_matmul_params,
    describe_shape,
    head_matmul_params,
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
      2·N_matmul          every active weight multiplies the token once (multiply + add):
                          with experts, the router, the top-k routed and the shared experts
      + 2·2·T·(h·d_head)  per attention: QK^T scores (T keys) and the weighted sum of V, full
                          square (no causal halving; see module docstring)
    Backward = 2 x forward (gradients w.r.t. inputs and w.r.t. weights; Kaplan §2.1).
    Recompute (full activation checkpointing) = one more forward of the blocks, not of the
    embedding or the head (Korthikanti et al. 2022 §4 "full recomputation"), less each block's
    dense MLP's down projection when there is no dropout (torch's checkpoint stops early; see
    below). MoE blocks are counted as recomputed in full.

    t5: per *target* token with input length = output length = T: the encoder's work on one
    input token plus the decoder's on one output token (cross-attention K/V projections of the
    encoder output are counted once per input token), so 6·N·D still holds with D = targets.
    """
    T, inner = m.seq_len, m.n_head * m.head_dim
    block_int = 2 * active_block_matmul_params(m) + _attention_modules(m) * 2 * 2 * T * inner
    forward_int = block_int + 2 * head_matmul_params(m)
    if 3 * forward_int > MAX_FLOPS_PER_TOKEN:
        raise UserError(
            f"model: {sci(3 * forward_int)} FLOPs per token ({describe_shape(m)}) is beyond any "
            f"hardware; estimates stop at {sci(MAX_FLOPS_PER_TOKEN)}"
        )
    block = float(block_int)
    forward = float(forward_int)
    recompute = 0.0
    if checkpointing:
        recompute = block
        if m.dropout == 0.0:
            # torch's non-reentrant checkpoint stops recomputing once the last tensor saved for
            # backward is back (`set_checkpoint_early_stop`, default on). A matmul saves its
            # inputs before it runs, so the block's last matmul — the MLP down projection — is
            # not recomputed; with dropout > 0 the dropout mask after it is saved, so it is.
            recompute -= 2.0 * (m.n_layer - m.moe_layers) * m.ff * m.d_model
            if m.family == "t5":
                recompute -= 2.0 * m.decoder_layers * m.ff * m.d_model
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
