"""Training FLOPs per token of a model config (no torch import).

2 FLOPs per multiply-add, per token at `seq_len`. Attention scores and values are counted as the
full T x T square even for causal models (`causal_halved=False`), because that is what the fused
kernels execute and what `torch.utils.flop_counter.FlopCounterMode` counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from budgetlm.config import ModelConfig
from budgetlm.estimate.params import block_matmul_params, head_matmul_params


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
    block = 2.0 * block_matmul_params(m) + attention
    forward = block + 2.0 * head_matmul_params(m)
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


def model_flops_per_token(m: ModelConfig) -> float:
    """Model FLOPs per token: forward + backward, without activation recomputation.

    The work the model itself requires, whatever the memory strategy; MFU and compute budgets
    (6·N·D-style accounting) count these. Equals `flops_per_token(m).forward +
    flops_per_token(m).backward`.
    """
    return flops_per_token(m).model
