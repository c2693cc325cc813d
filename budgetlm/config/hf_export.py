"""A budgetlm GPT's `ModelConfig` as a Hugging Face `config.json` (the inverse of `config.hf`).

`hf_export_type(m, original)` picks the model type: the original one for a model that came
`from_pretrained` (its config.json's `model_type`), else gpt2 for a GPT-2-shaped model (learned
positions, LayerNorm, GELU, biases, plain multi-head attention) and a Llama-family type for a
rotary one (RMSNorm, SwiGLU): qwen3 with qk_norm, qwen2 with q/k/v-only biases, mistral with a
sliding window, else llama. What no such type describes is a UserError naming the field.
`hf_config_data(m, model_type, original)` writes the fields that size and define the model over
the original config.json (its token ids and other settings kept), so `hf_run_data` of the result
gives back the same shape. No torch, no `transformers`.
"""

from __future__ import annotations

from typing import Any

from budgetlm.config.hf import PRETRAINED
from budgetlm.config.schema import ModelConfig
from budgetlm.errors import UserError

ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
}
_GPT2_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def _refuse(field: str, value: Any, why: str) -> UserError:
    """`model.FIELD: VALUE WHY`, the value as YAML spells it."""
    shown = {True: "true", False: "false"}[value] if isinstance(value, bool) else (
        "null" if value is None else str(value))
    return UserError(f"model.{field}: {shown} {why}")


def _check_common(m: ModelConfig) -> None:
    if m.family != "gpt":
        raise _refuse("family", m.family, "cannot be exported (export writes causal LMs: gpt)")
    if m.n_expert:
        raise _refuse("n_expert", m.n_expert, "(mixture of experts) cannot be exported yet")
    if m.width_mult != 1.0:
        raise _refuse("parametrization", m.parametrization,
                      f"at width multiplier {m.width_mult:g} cannot be exported: Hugging Face "
                      "models have no µP attention scale or readout multiplier")


def _check_gpt2(m: ModelConfig) -> None:
    """GPT-2: LayerNorm with biases, GELU (exact or tanh) or ReLU, every Linear biased, plain
    multi-head attention with head_dim = n_embd / n_head."""
    if m.norm != "layernorm":
        raise _refuse("norm", m.norm, "with learned positions has no Hugging Face type (GPT-2 "
                      "uses layernorm)")
    if m.mlp not in _GPT2_ACT:
        raise _refuse("mlp", m.mlp, "with learned positions has no Hugging Face type (GPT-2 "
                      "uses gelu, gelu_tanh or relu)")
    if not m.bias:
        raise _refuse("bias", m.bias, "with learned positions has no Hugging Face type (GPT-2 "
                      "biases every layer)")
    if m.qkv_bias is False:
        raise _refuse("qkv_bias", m.qkv_bias, "has no GPT-2 equivalent (c_attn has a bias)")
    if m.kv_heads != m.n_head:
        raise _refuse("n_kv_head", m.n_kv_head, "(grouped-query attention) has no GPT-2 "
                      "equivalent")
    if m.head_dim * m.n_head != m.d_model:
        raise _refuse("d_head", m.d_head, "has no GPT-2 equivalent (head width is "
                      "n_embd / n_head)")
    for field in ("qk_norm", "sliding_window"):
        if getattr(m, field):
            raise _refuse(field, getattr(m, field), "has no GPT-2 equivalent")


def _llama_type(m: ModelConfig) -> str:
    """The Llama-family type a rotary, RMSNorm, SwiGLU model is."""
    if m.norm != "rmsnorm":
        raise _refuse("norm", m.norm, "with rotary positions has no Hugging Face type (the "
                      "Llama family uses rmsnorm)")
    if m.mlp != "swiglu":
        raise _refuse("mlp", m.mlp, "with rotary positions has no Hugging Face type (the Llama "
                      "family uses swiglu)")
    qkv_only = bool(m.qkv_bias) and not m.bias
    if m.qk_norm:
        if m.bias or qkv_only or m.sliding_window:
            field = "bias" if m.bias else "qkv_bias" if qkv_only else "sliding_window"
            raise _refuse(field, getattr(m, field), "with qk_norm has no Hugging Face type "
                          "(Qwen3 has neither)")
        return "qwen3"
    if qkv_only:
        if m.sliding_window:
            raise _refuse("sliding_window", m.sliding_window, "with qkv_bias has no Hugging "
                          "Face type")
        return "qwen2"
    if m.qkv_bias is False and m.bias:
        raise _refuse("qkv_bias", m.qkv_bias, "with bias true has no Hugging Face type")
    if m.sliding_window:
        if m.bias:
            raise _refuse("bias", m.bias, "with a sliding window has no Hugging Face type "
                          "(Mistral has no biases)")
        return "mistral"
    return "llama"


def hf_export_type(m: ModelConfig, original: str | None = None) -> str:
    """The Hugging Face model_type `m` is written as; `original`: the model type of the
    directory it came from, kept when it still describes `m`."""
    _check_common(m)
    if m.positions == "learned":
        _check_gpt2(m)
        inferred = "gpt2"
    elif m.positions == "rope":
        inferred = _llama_type(m)
    else:
        raise _refuse("positions", m.positions, "cannot be exported")
    if original in PRETRAINED and original != inferred:
        # a plain Llama-shaped model is also a Mistral without a window or a Qwen2/Qwen3 whose
        # extras are off only where that type allows it
        if not (inferred == "llama" and original == "mistral"):
            raise UserError(f"model: the run's shape is a {inferred} model, no longer the "
                            f"{original} of model.from_pretrained (check model.* overrides)")
    return original if original in PRETRAINED else inferred


def _gpt2_fields(m: ModelConfig) -> dict[str, Any]:
    return {
        "n_embd": m.d_model, "n_layer": m.n_layer, "n_head": m.n_head, "n_inner": m.ff,
        "n_positions": m.seq_len, "vocab_size": m.vocab_size,
        "activation_function": _GPT2_ACT[m.mlp], "layer_norm_epsilon": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings, "resid_pdrop": m.dropout,
        "embd_pdrop": m.dropout, "attn_pdrop": m.dropout, "add_cross_attention": False,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
    }


def _llama_fields(m: ModelConfig, model_type: str, original: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "hidden_size": m.d_model, "num_hidden_layers": m.n_layer,
        "num_attention_heads": m.n_head, "num_key_value_heads": m.kv_heads,
        "head_dim": m.head_dim, "intermediate_size": m.ff, "vocab_size": m.vocab_size,
        "max_position_embeddings": max(m.seq_len, int(original.get(
            "max_position_embeddings", 0) or 0)),
        "rms_norm_eps": m.norm_eps, "hidden_act": "silu",
        "tie_word_embeddings": m.tie_embeddings, "attention_dropout": 0.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
    }
    if model_type == "llama":
        out.update(attention_bias=m.bias, mlp_bias=m.bias)
    elif model_type == "qwen3":
        out["attention_bias"] = False
    if model_type in ("qwen2", "qwen3"):
        out.update(use_sliding_window=False, sliding_window=None)
    if model_type == "mistral":
        out["sliding_window"] = m.sliding_window
    return out


def hf_config_data(
    m: ModelConfig, model_type: str, original: dict[str, Any] | None = None
) -> dict[str, Any]:
    """config.json contents for `m` as `model_type` (from `hf_export_type`), written over the
    original config.json when there is one (its token ids and other settings kept; a rotary
    model keeps its longer max_position_embeddings, and rope scaling is dropped: budgetlm's
    model applies plain RoPE)."""
    base = dict(original or {})
    for stale in ("rope_scaling", "rope_theta", "torch_dtype", "n_ctx"):
        base.pop(stale, None)
    if original is None:
        base.update(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    fields = _gpt2_fields(m) if model_type == "gpt2" else _llama_fields(m, model_type, base)
    base.update(fields)
    base.update(model_type=model_type, architectures=[ARCHITECTURES[model_type]],
                dtype="float32")
    return base
