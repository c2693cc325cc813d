"""The recipes the planner builds candidates with (`--arch`), and the loss rule for MoE.

- gpt2: learned positions, LayerNorm, GELU MLP of width 4d, tied embeddings, no biases (the
  ladder's shapes as they are).
- llama: RoPE, RMSNorm, SwiGLU of width 8/3·d rounded up to a multiple of 256 (of 64 below
  width 1024), as Llama's `multiple_of`; heads of 64 (128 from width 2048, as Llama 3 8B/70B),
  the ladder's 32/16 below width 256; grouped-query attention with n_head/4 key/value heads
  when 4 divides n_head (Llama 3: 32/8), else plain multi-head; no biases; untied head.
- moe: llama blocks whose MLP is DeepSeekMoE's (Dai et al. 2024, DeepSeekMoE 16B): 64 routed
  experts, top-6, plus 2 shared experts, each of width 1/8 of the dense SwiGLU width rounded up
  to a multiple of 64 (of 16 below width 1024), so a token's active expert width is about the
  dense width; the first block keeps a dense MLP (`first_k_dense_replace = 1`).

An MoE is priced by its active FLOPs (the estimator's `model_flops_per_token`) and all its
parameters in memory (every expert resident). Its loss comes from the dense law by
`MOE_LOSS_RULE`: a rule, not a fit.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from typing import Any

from budgetlm.config import ModelConfig
from budgetlm.errors import UserError
from budgetlm.plan.ladder import Shape, head_dim_for, ladder

ARCHS = ("gpt2", "llama", "moe")
MOE_EXPERTS = 64  # routed experts per MoE block (DeepSeekMoE 16B)
MOE_ACTIVE = 6  # routed experts per token (top-k)
MOE_SHARED = 2  # shared experts every token passes through
MOE_GRANULARITY = 8  # dense SwiGLU width / expert width
MOE_DENSE_LAYERS = 1  # the first block keeps a dense MLP

MOE_LOSS_RULE: dict[str, Any] = {
    "name": "active-parameters",
    "kind": "rule",
    "params": "active",
    "text": (
        "the dense law at the MoE's active parameters (routed top-k + shared experts, router, "
        "attention, embeddings): a rule, not a fit; conservative, since routed models reach a "
        "lower loss than dense ones of the same active size (Clark et al. 2022, Unified Scaling "
        "Laws for Routed Language Models; Dai et al. 2024, DeepSeekMoE), so the predicted loss "
        "is an upper estimate"
    ),
}


def check_arch(arch: str | None) -> str | None:
    """`arch` if it is one of ARCHS (None: the default); a one-line UserError otherwise."""
    if arch is not None and arch not in ARCHS:
        raise UserError(f"--arch: unknown architecture {arch!r}; one of {', '.join(ARCHS)}")
    return arch


def default_arch(device: str) -> str:
    """llama on a GPU; gpt2 on a CPU (where benchmarks/arch_vs_gpt2.py has not shown llama
    ahead yet) and for a FLOP budget with no device (Chinchilla's allocation, reproduced with
    the gpt2 ladder's counts)."""
    return "llama" if device == "cuda" else "gpt2"


def llama_head_dim(d_model: int) -> int:
    """128 from width 2048, 64 from 256, the ladder's 32/16 below."""
    if d_model >= 2048 and d_model % 128 == 0:
        return 128
    return head_dim_for(d_model)


def kv_heads_for(n_head: int) -> int:
    """n_head / 4 key/value heads when 4 divides n_head, else n_head."""
    return n_head // 4 if n_head % 4 == 0 else n_head


def _round_up(x: float, multiple: int) -> int:
    return max(multiple, math.ceil(x / multiple) * multiple)


def swiglu_width(d_model: int) -> int:
    """8/3·d rounded up to a multiple of 256 (of 64 below width 1024)."""
    return _round_up(8 * d_model / 3, 256 if d_model >= 1024 else 64)


def expert_width(d_model: int) -> int:
    """The dense SwiGLU width / MOE_GRANULARITY, rounded up to a multiple of 64 (of 16 below
    width 1024): DeepSeekMoE 16B's 10944 -> 1408."""
    return _round_up(swiglu_width(d_model) / MOE_GRANULARITY, 64 if d_model >= 1024 else 16)


def arch_shape(shape: Shape, arch: str) -> Shape:
    """The ladder's `shape` (depth, width) in recipe `arch`: its head count by that recipe."""
    if arch == "gpt2":
        return replace(shape, arch=arch)
    return replace(shape, arch=arch, n_head=max(1, shape.d_model // llama_head_dim(shape.d_model)))


@functools.lru_cache(maxsize=8)
def arch_ladder(arch: str) -> tuple[Shape, ...]:
    """The size ladder's shapes in recipe `arch`."""
    return tuple(arch_shape(s, arch) for s in ladder())


def model_config(shape: Shape, seq_len: int, vocab: int, family: str) -> ModelConfig:
    """The planner's model: `shape` in its recipe, no dropout."""
    common: dict[str, Any] = {
        "family": family, "n_layer": shape.n_layer, "n_head": shape.n_head,
        "d_model": shape.d_model, "vocab_size": vocab, "seq_len": seq_len, "bias": False,
        "dropout": 0.0,
    }
    if shape.arch == "gpt2":
        return ModelConfig(**common, tie_embeddings=True)
    kv = kv_heads_for(shape.n_head)
    llama = {
        **common, "positions": "rope", "norm": "rmsnorm", "mlp": "swiglu",
        "d_ff": swiglu_width(shape.d_model), "n_kv_head": kv if kv != shape.n_head else None,
        "tie_embeddings": False,
    }
    if shape.arch == "llama":
        return ModelConfig(**llama)
    return ModelConfig(
        **llama, n_expert=MOE_EXPERTS, n_expert_active=MOE_ACTIVE, n_shared_expert=MOE_SHARED,
        d_expert=expert_width(shape.d_model),
        n_dense_layer=MOE_DENSE_LAYERS if shape.n_layer > MOE_DENSE_LAYERS else 0,
    )


def expert_params(m: ModelConfig) -> int:
    """Parameters of one expert of `m`: 3 matrices d x f for swiglu, 2 otherwise (+ biases)."""
    d, f = m.d_model, m.expert_ff
    if m.mlp == "swiglu":
        return 3 * d * f + (2 * f + d if m.bias else 0)
    return 2 * d * f + (f + d if m.bias else 0)


def inactive_params(m: ModelConfig) -> int:
    """Parameters a token does not pass through: the routed experts outside its top-k."""
    return (m.n_expert - m.n_expert_active) * expert_params(m) * m.moe_layers


def describe_arch(arch: str, m: ModelConfig) -> str:
    """The recipe of a plan in words (its top candidate `m` as the example)."""
    if arch == "gpt2":
        return ("arch: gpt2 (learned positions, LayerNorm, GELU MLP of 4d, tied embeddings, "
                "no biases)")
    text = (f"arch: {arch} (RoPE, RMSNorm, SwiGLU of 8/3·d rounded up, heads of "
            f"{m.head_dim}, {m.kv_heads} key/value heads of {m.n_head}, untied head, no biases")
    if arch == "moe":
        text += (f"; MoE MLPs as DeepSeekMoE 16B (Dai et al. 2024): {m.n_expert} routed experts "
                 f"top-{m.n_expert_active} + {m.n_shared_expert} shared, each {m.expert_ff} wide, "
                 f"{'first block dense' if m.n_dense_layer else 'no dense block'}; time from "
                 "active FLOPs, memory from all experts")
    return text + ")"
