"""Shapes of published open models, as presets (`budgetlm estimate llama3-8b`): what the
estimator and the planner need to count them. They are far too large to train on a CPU; the
trainable small versions are `llama-tiny` and `moe-tiny`.

Each entry follows the model's Hugging Face config.json; where budgetlm's config cannot describe
a feature, the comment says so.
"""

from __future__ import annotations

from typing import Any

# What every shape below shares: rope, RMSNorm, SwiGLU, no biases, untied head.
_LLAMA_BLOCKS: dict[str, Any] = {
    "positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False,
    "tie_embeddings": False, "fused_qkv": False,
}


def _shape(name: str, **model: Any) -> dict[str, Any]:
    """A published model's preset: its shape over the shared blocks, a BPE vocabulary of its
    size, and bf16 training one sequence at a time."""
    return {
        "name": name,
        "model": {**_LLAMA_BLOCKS, **model},
        "data": {"tokenizer": "bpe", "bpe_vocab_size": model["vocab_size"]},
        "train": {"precision": "bf16", "micro_batch": 1, "grad_accum": 64},
    }


SHAPE_PRESETS: dict[str, dict[str, Any]] = {
    # Meta Llama 3 8B (config.json of meta-llama/Meta-Llama-3-8B): 8,030,261,248 parameters.
    "llama3-8b": _shape(
        "llama3-8b", n_layer=32, n_head=32, n_kv_head=8, d_model=4096, d_ff=14336,
        vocab_size=128256, seq_len=8192, rope_theta=500000.0, norm_eps=1e-05,
    ),
    # Qwen2.5-7B (config.json of Qwen/Qwen2.5-7B): 7,615,616,512 parameters; biases on the
    # q/k/v projections only. Its sliding_window is off (use_sliding_window false).
    "qwen2.5-7b": _shape(
        "qwen2.5-7b", n_layer=28, n_head=28, n_kv_head=4, d_model=3584, d_ff=18944,
        vocab_size=152064, seq_len=131072, rope_theta=1000000.0, norm_eps=1e-06, qkv_bias=True,
    ),
    # Mistral-7B v0.1 (config.json of mistralai/Mistral-7B-v0.1): 7,241,732,096 parameters;
    # sliding-window attention over 4,096 tokens.
    "mistral-7b": _shape(
        "mistral-7b", n_layer=32, n_head=32, n_kv_head=8, d_model=4096, d_ff=14336,
        vocab_size=32000, seq_len=32768, rope_theta=10000.0, norm_eps=1e-05, sliding_window=4096,
    ),
    # Mixtral-8x7B v0.1 (config.json of mistralai/Mixtral-8x7B-v0.1): 46,702,792,704 parameters,
    # 8 experts per block, top-2, no sliding window.
    "mixtral-8x7b": _shape(
        "mixtral-8x7b", n_layer=32, n_head=32, n_kv_head=8, d_model=4096, d_ff=14336,
        vocab_size=32000, seq_len=32768, rope_theta=1000000.0, norm_eps=1e-05, n_expert=8,
        n_expert_active=2, router_aux_coef=0.02,
    ),
    # Qwen3-30B-A3B (config.json of Qwen/Qwen3-30B-A3B): 30,532,122,624 parameters, about 3.3B
    # active: 128 experts of width 768 per block, top-8, no shared expert, head_dim 128 (wider
    # than d_model / n_head), q/k RMSNorm.
    "qwen3-30b-a3b": _shape(
        "qwen3-30b-a3b", n_layer=48, n_head=32, n_kv_head=4, d_head=128, d_model=2048, d_ff=6144,
        vocab_size=151936, seq_len=40960, rope_theta=1000000.0, norm_eps=1e-06, qk_norm=True,
        n_expert=128, n_expert_active=8, d_expert=768, router_aux_coef=0.001,
    ),
    # DeepSeek-V2-Lite (config.json of deepseek-ai/DeepSeek-V2-Lite): 15,706,484,224 parameters,
    # 2.4B active. The MoE is described exactly: first block dense (width 10944), then 64
    # routed experts of width 1408, top-6, and 2 shared experts. Not described: multi-head
    # latent attention (kv_lora_rank 512, q/k heads of 128 + 64 rotary dims, v heads of 128).
    # It stands here as plain multi-head attention with 16 heads of 128, which is what MLA
    # materializes per head in training (keys and values of all 16 heads); that counts
    # 16,777,216 attention parameters per block instead of 13,763,072, 15,787,866,112 in all
    # (+0.5%), and its scores use 128 dims where MLA's use 192. Nor described: routing weights
    # not renormalized (norm_topk_prob false) and the sequence-level aux loss (alpha 0.001,
    # taken here as router_aux_coef).
    "deepseek-v2-lite": _shape(
        "deepseek-v2-lite", n_layer=27, n_head=16, d_model=2048, d_ff=10944, vocab_size=102400,
        seq_len=163840, rope_theta=10000.0, norm_eps=1e-06, n_expert=64, n_expert_active=6,
        n_shared_expert=2, d_expert=1408, n_dense_layer=1, router_aux_coef=0.001,
    ),
}
