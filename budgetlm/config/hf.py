"""A Hugging Face `config.json` as RunConfig data, read without `transformers` (offline, no torch).

`hf_run_data(raw, source)` maps the fields that size a model (widths, depths, heads, key/value
heads, head width, vocabulary, context, experts) onto `ModelConfig` for the model types in
`SUPPORTED`. A field missing from the file takes the default the `transformers` config class
gives it (so the count is the one `from_pretrained` would build); the fields that size the model
have none and are required. `seq_len` is the model's own context (`max_position_embeddings`,
`n_positions` for gpt2/t5), uncapped: the estimate is for the model as published; a shorter
training context is `--set model.seq_len=N`.

What budgetlm's config cannot describe either stops with a one-line UserError naming the field
(when it changes the parameter count in a way no setting reproduces: multi-head latent
attention, interleaved MoE layers, extra norms) or, when the difference is small and known, is
left out and named in `meta.hf_not_described` (e.g. Qwen2-MoE's shared-expert gate), with the
number of parameters it leaves out.

Llama-like types get `fused_qkv: false` (their separate q_proj, k_proj, v_proj, what LoRA
targets name); GPT-2's `gelu_new` is `mlp: gelu_tanh`. The weights of the `PRETRAINED` types map
one to one into budgetlm's model (`model.from_pretrained`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from budgetlm.errors import UserError

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "mixtral", "qwen2_moe", "qwen3_moe")
SUPPORTED = (*LLAMA_LIKE, "gpt2", "bert", "t5")
# The model types whose weights `model.from_pretrained` maps into budgetlm's GPT (and export
# writes back): one to one, no parameter left out or changed in meaning.
PRETRAINED = ("gpt2", "llama", "mistral", "qwen2", "qwen3")
# HF activation names of GELU's tanh approximation (GPT-2's gelu_new; torch's approximate="tanh")
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")

_MLA = "multi-head latent attention (kv_lora_rank) is not described by budgetlm's config"
_UNSUPPORTED = {
    "deepseek_v2": _MLA + " (the preset deepseek-v2-lite approximates DeepSeek-V2-Lite)",
    "deepseek_v3": _MLA,
    "gemma2": "its extra pre/post-feedforward norms per block are not described",
    "gemma3": "its extra pre/post-feedforward norms per block are not described",
    "gemma3_text": "its extra pre/post-feedforward norms per block are not described",
}

_ROPE = {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "attention_bias": False}
# The defaults of each `transformers` config class (5.x) for fields a config.json may omit.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {**_ROPE, "max_position_embeddings": 2048, "tie_word_embeddings": False,
              "mlp_bias": False, "hidden_act": "silu"},
    "mistral": {**_ROPE, "max_position_embeddings": 131072, "tie_word_embeddings": False,
                "num_key_value_heads": 8, "sliding_window": 4096, "hidden_act": "silu"},
    "qwen2": {**_ROPE, "max_position_embeddings": 32768, "tie_word_embeddings": False,
              "num_key_value_heads": 32, "use_sliding_window": False, "sliding_window": None,
              "max_window_layers": 28, "hidden_act": "silu"},
    "qwen3": {**_ROPE, "max_position_embeddings": 32768, "tie_word_embeddings": False,
              "num_key_value_heads": 32, "head_dim": 128, "use_sliding_window": False,
              "sliding_window": None, "max_window_layers": 28, "hidden_act": "silu"},
    "gemma": {**_ROPE, "max_position_embeddings": 8192, "tie_word_embeddings": True,
              "num_key_value_heads": 16, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh"},
    "mixtral": {**_ROPE, "rope_theta": 1e6, "rms_norm_eps": 1e-5,
                "max_position_embeddings": 131072, "tie_word_embeddings": False,
                "num_key_value_heads": 8, "sliding_window": None, "hidden_act": "silu",
                "router_aux_loss_coef": 0.001},
    "qwen2_moe": {**_ROPE, "max_position_embeddings": 32768, "tie_word_embeddings": False,
                  "num_key_value_heads": 16, "use_sliding_window": False, "sliding_window": None,
                  "max_window_layers": 28, "hidden_act": "silu", "qkv_bias": True,
                  "norm_topk_prob": False, "decoder_sparse_step": 1, "mlp_only_layers": [],
                  "router_aux_loss_coef": 0.001},
    "qwen3_moe": {**_ROPE, "max_position_embeddings": 32768, "tie_word_embeddings": False,
                  "num_key_value_heads": 4, "use_sliding_window": False, "sliding_window": None,
                  "max_window_layers": 28, "hidden_act": "silu", "norm_topk_prob": False,
                  "decoder_sparse_step": 1, "mlp_only_layers": [], "router_aux_loss_coef": 0.001},
    "gpt2": {"n_positions": 1024, "n_inner": None, "layer_norm_epsilon": 1e-5,
             "activation_function": "gelu_new", "tie_word_embeddings": True,
             "add_cross_attention": False},
    "bert": {"max_position_embeddings": 512, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
             "tie_word_embeddings": True, "type_vocab_size": 2,
             "position_embedding_type": "absolute", "add_cross_attention": False,
             "is_decoder": False},
    "t5": {"n_positions": 512, "num_decoder_layers": None, "layer_norm_epsilon": 1e-6,
           "feed_forward_proj": "relu", "tie_word_embeddings": True,
           "relative_attention_num_buckets": 32},
}

_REQUIRED = object()
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def _shown(v: Any) -> str:
    """A JSON value as the file spells it (null, true, "text", 3)."""
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= 40 else text[:37] + "..."


class _Fields:
    """Typed access to one config.json: raw value, else the class default, else an error."""

    def __init__(self, raw: dict[str, Any], source: str, model_type: str) -> None:
        self.raw, self.source, self.defaults = raw, source, _DEFAULTS[model_type]
        self.notes: list[str] = []

    def error(self, key: str, message: str) -> UserError:
        return UserError(f"{self.source}: {key}: {message}")

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        if key in self.raw:
            return self.raw[key]
        if key in self.defaults:
            return self.defaults[key]
        if default is _REQUIRED:
            raise self.error(key, "missing (it sizes the model)")
        return default

    def whole(self, key: str, default: Any = _REQUIRED, minimum: int = 1) -> int:
        v = self.get(key, default)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.error(key, f"expected a whole number >= {minimum}, got {_shown(v)}")
        return v

    def maybe_whole(self, key: str, minimum: int = 1) -> int | None:
        return None if self.get(key, None) is None else self.whole(key, minimum=minimum)

    def positive(self, key: str) -> float:
        v = self.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise self.error(key, f"expected a number > 0, got {_shown(v)}")
        return float(v)

    def flag(self, key: str) -> bool:
        v = self.get(key)
        if not isinstance(v, bool):
            raise self.error(key, f"expected true or false, got {_shown(v)}")
        return v

    def text(self, key: str) -> str:
        v = self.get(key)
        if not isinstance(v, str):
            raise self.error(key, f"expected a string, got {_shown(v)}")
        return v


def is_hf_config(raw: dict[str, Any]) -> bool:
    """Whether a mapping read from a file is a Hugging Face config (not a RunConfig)."""
    return any(k in raw for k in ("model_type", "architectures", "transformers_version"))


def _heads(f: _Fields, d: int) -> tuple[int, int, int]:
    """(query heads, key/value heads, head width) as `transformers` builds them."""
    h = f.whole("num_attention_heads")
    kv = f.maybe_whole("num_key_value_heads") or h
    if h % kv:
        raise f.error("num_key_value_heads", f"{kv} must divide num_attention_heads ({h})")
    head_dim = f.maybe_whole("head_dim") or d // h
    if head_dim < 1:
        raise f.error("num_attention_heads", f"{h} exceeds hidden_size ({d})")
    return h, kv, head_dim


def _rope_theta(f: _Fields) -> float:
    """The rotary base: `rope_parameters` (transformers 5) or `rope_theta` (4.x). Scaling of the
    rotary angles (llama3, yarn, linear, dynamic) has no parameters and no FLOPs to count; it is
    named in the notes, since budgetlm's model applies plain RoPE."""
    params = f.raw.get("rope_parameters")
    scaling = f.raw.get("rope_scaling")
    if params is not None and not isinstance(params, dict):
        raise f.error("rope_parameters", f"expected a mapping, got {_shown(params)}")
    if scaling is not None and not isinstance(scaling, dict):
        raise f.error("rope_scaling", f"expected a mapping or null, got {_shown(scaling)}")
    theta_key, holder = "rope_theta", f
    if params and "rope_theta" in params:
        holder = _Fields(params, f"{f.source}: rope_parameters", "llama")
    theta = holder.positive(theta_key)
    kind = next((s.get(k) for s in (params or {}, scaling or {}) for k in ("rope_type", "type")
                 if s.get(k) not in (None, "default")), None)
    if kind is not None:
        f.notes.append(f"rope scaling {kind!r} is not modelled (no parameters; plain RoPE)")
    return theta


def _sliding_window(f: _Fields, model_type: str, n_layer: int) -> int | None:
    """Mistral/Mixtral: one window for every layer. Qwen: `use_sliding_window` for the layers
    from `max_window_layers` on (or as `layer_types` lists them)."""
    if model_type in ("mistral", "mixtral"):
        return f.maybe_whole("sliding_window")
    if model_type not in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe"):
        return None
    kinds = f.raw.get("layer_types")
    if isinstance(kinds, list) and len(kinds) == n_layer:
        sliding = sum(k == "sliding_attention" for k in kinds)
    elif f.flag("use_sliding_window"):
        sliding = n_layer - min(f.whole("max_window_layers", minimum=0), n_layer)
    else:
        sliding = 0
    if sliding == 0:
        return None
    window = f.whole("sliding_window")
    if sliding < n_layer:
        f.notes.append(f"a sliding window on {sliding} of {n_layer} layers only: every layer "
                       "is counted with full attention")
        return None
    return window


def _biases(f: _Fields, model_type: str) -> tuple[bool, bool]:
    """(`bias`, `qkv_bias`): budgetlm's `bias` covers every linear layer, `qkv_bias` the q, k
    and v projections only (Qwen2); HF types bias some of them only."""
    if model_type in ("qwen2", "qwen2_moe"):
        return False, model_type == "qwen2" or f.flag("qkv_bias")
    if model_type in ("mistral", "mixtral"):
        return False, False
    attn = f.flag("attention_bias")
    mlp = f.flag("mlp_bias") if model_type == "llama" else False
    if attn != mlp:
        key = "attention_bias" if attn else "mlp_bias"
        other = "mlp_bias" if attn else "attention_bias"
        raise f.error(key, f"true with {other} false is not described (budgetlm's bias "
                      "switch covers every linear layer)")
    return attn, False


def _gated_act(f: _Fields, model_type: str) -> None:
    key = "hidden_activation" if model_type == "gemma" and "hidden_activation" in f.raw \
        else "hidden_act"
    act = f.text(key)
    if act not in ("silu", "swish"):
        f.notes.append(f"{key} {act!r}: the gated MLP is counted as SwiGLU (same shapes)")


def _dense_first(f: _Fields, n_layer: int) -> int:
    """How many leading blocks keep a dense MLP (Qwen-MoE: block i is MoE unless it is in
    `mlp_only_layers` or `(i + 1) % decoder_sparse_step != 0`); only a dense prefix is
    described. Computed without walking every block."""
    only = f.get("mlp_only_layers")
    if not isinstance(only, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in only
    ):
        raise f.error("mlp_only_layers", f"expected a list of layer indices, got {_shown(only)}")
    step = f.whole("decoder_sparse_step")
    skipped = {i for i in only if 0 <= i < n_layer and (i + 1) % step == 0}
    moe_count = n_layer // step - len(skipped)
    if step == 1 and skipped == set(range(len(skipped))):
        return len(skipped)
    if step > 1 and (moe_count == 0 or (moe_count == 1 and n_layer % step == 0
                                        and n_layer - 1 not in skipped)):
        return n_layer - moe_count
    key = "mlp_only_layers" if only else "decoder_sparse_step"
    raise f.error(key, f"{_shown(f.get(key))}: MoE blocks interleaved with dense ones are "
                  "not described (only the first k blocks may be dense)")


def _moe(f: _Fields, model_type: str, model: dict[str, Any], n_layer: int) -> None:
    """Mixtral / Qwen-MoE experts onto n_expert, n_expert_active, d_expert, n_shared_expert."""
    key = "num_local_experts" if model_type == "mixtral" or "num_local_experts" in f.raw \
        else "num_experts"
    n_expert = f.whole(key, minimum=0)
    dense = n_layer if n_expert == 0 else 0
    if model_type != "mixtral" and n_expert:
        dense = _dense_first(f, n_layer)
    if dense == n_layer:
        return  # every block dense: a dense model of intermediate_size
    top_k = f.whole("num_experts_per_tok")
    if top_k > n_expert:
        raise f.error("num_experts_per_tok", f"{top_k} exceeds {key} ({n_expert})")
    model.update(n_expert=n_expert, n_expert_active=top_k, n_dense_layer=dense,
                 router_aux_coef=f.positive("router_aux_loss_coef")
                 if f.get("router_aux_loss_coef") else 0.0)
    if model_type != "mixtral":
        model["d_expert"] = f.whole("moe_intermediate_size")
        if not f.flag("norm_topk_prob"):
            f.notes.append("norm_topk_prob false: budgetlm renormalizes the top-k routing "
                           "weights (no parameters change)")
    if model_type == "qwen2_moe":
        shared = f.whole("shared_expert_intermediate_size", minimum=0)
        if shared % model["d_expert"]:
            raise f.error("shared_expert_intermediate_size",
                          f"{shared} is not a multiple of moe_intermediate_size "
                          f"({model['d_expert']}): budgetlm's shared experts have the routed "
                          "experts' width")
        model["n_shared_expert"] = shared // model["d_expert"]
        if shared:
            n = (n_layer - dense) * model["d_model"]
            f.notes.append(f"the shared expert's sigmoid gate ({n:,} parameters) is not "
                           f"described; one shared expert of width {shared} is counted as "
                           f"{shared // model['d_expert']} of width {model['d_expert']}")


def _llama_like(f: _Fields, model_type: str) -> dict[str, Any]:
    """Decoder-only RoPE / RMSNorm / gated-MLP models, dense or MoE."""
    d, n_layer = f.whole("hidden_size"), f.whole("num_hidden_layers")
    h, kv, head_dim = _heads(f, d)
    model: dict[str, Any] = {
        "family": "gpt", "n_layer": n_layer, "n_head": h, "d_model": d,
        "d_ff": f.whole("intermediate_size"), "vocab_size": f.whole("vocab_size"),
        "seq_len": f.whole("max_position_embeddings"), "positions": "rope",
        "rope_theta": _rope_theta(f), "norm": "rmsnorm", "norm_eps": f.positive("rms_norm_eps"),
        "mlp": "swiglu", "tie_embeddings": f.flag("tie_word_embeddings"), "fused_qkv": False,
    }
    model["bias"], qkv_bias = _biases(f, model_type)
    if qkv_bias:
        model["qkv_bias"] = True
    if kv != h:
        model["n_kv_head"] = kv
    if head_dim * h != d:
        model["d_head"] = head_dim
    if model_type in ("qwen3", "qwen3_moe"):
        model["qk_norm"] = True
    model["sliding_window"] = _sliding_window(f, model_type, n_layer)
    _gated_act(f, model_type)
    if model_type in ("mixtral", "qwen2_moe", "qwen3_moe"):
        _moe(f, model_type, model, n_layer)
    return model


def _plain_act(f: _Fields, key: str) -> str:
    act = f.text(key)
    if act in ("relu", "gelu"):
        return act
    if act in GELU_TANH:
        return "gelu_tanh"
    if not act.startswith("gelu"):
        f.notes.append(f"{key} {act!r} is counted as gelu (same shapes and FLOPs)")
    return "gelu"


def _gpt2(f: _Fields) -> dict[str, Any]:
    if f.flag("add_cross_attention"):
        raise f.error("add_cross_attention", "true (cross-attention blocks) is not described")
    d = f.whole("n_embd")
    h = f.whole("n_head")
    if d % h:
        raise f.error("n_head", f"{h} must divide n_embd ({d})")
    return {
        "family": "gpt", "n_layer": f.whole("n_layer"), "n_head": h, "d_model": d,
        "d_ff": f.maybe_whole("n_inner") or 4 * d, "vocab_size": f.whole("vocab_size"),
        "seq_len": f.whole("n_positions"), "positions": "learned", "norm": "layernorm",
        "norm_eps": f.positive("layer_norm_epsilon"),
        "mlp": _plain_act(f, "activation_function"), "bias": True,
        "tie_embeddings": f.flag("tie_word_embeddings"),
    }


def _bert(f: _Fields) -> dict[str, Any]:
    for key in ("is_decoder", "add_cross_attention"):
        if f.flag(key):
            raise f.error(key, "true is not described (budgetlm's BERT is an encoder MLM)")
    if f.get("position_embedding_type") != "absolute":
        raise f.error("position_embedding_type",
                      f"{_shown(f.get('position_embedding_type'))}: only absolute is described")
    if f.whole("type_vocab_size") != 2:
        raise f.error("type_vocab_size", f"{f.get('type_vocab_size')}: budgetlm's BERT has 2 "
                      "token types")
    d, h = f.whole("hidden_size"), f.whole("num_attention_heads")
    if d % h:
        raise f.error("num_attention_heads", f"{h} must divide hidden_size ({d})")
    f.notes.append(f"budgetlm's BERT is pre-norm with a final LayerNorm: {2 * d:,} parameters "
                   "more than BertForMaskedLM")
    return {
        "family": "bert", "n_layer": f.whole("num_hidden_layers"), "n_head": h, "d_model": d,
        "d_ff": f.whole("intermediate_size"), "vocab_size": f.whole("vocab_size"),
        "seq_len": f.whole("max_position_embeddings"), "positions": "learned",
        "norm": "layernorm", "norm_eps": f.positive("layer_norm_eps"),
        "mlp": _plain_act(f, "hidden_act"), "bias": True,
        "tie_embeddings": f.flag("tie_word_embeddings"),
    }


def _t5(f: _Fields) -> dict[str, Any]:
    proj = f.text("feed_forward_proj")
    gated = proj.startswith("gated-")
    act = proj.removeprefix("gated-")
    if act not in ("relu", "gelu", "gelu_new", "silu"):
        raise f.error("feed_forward_proj", f"{proj!r} is not described")
    if gated and act != "silu":
        f.notes.append(f"feed_forward_proj {proj!r}: the gated MLP is counted as SwiGLU "
                       "(same shapes)")
    n_layer = f.whole("num_layers")
    return {
        "family": "t5", "n_layer": n_layer,
        "n_decoder_layer": f.maybe_whole("num_decoder_layers") or n_layer,
        "n_head": f.whole("num_heads"), "d_model": f.whole("d_model"), "d_ff": f.whole("d_ff"),
        "d_head": f.whole("d_kv"), "vocab_size": f.whole("vocab_size"),
        "seq_len": f.whole("n_positions"), "positions": "relative",
        "relative_buckets": f.whole("relative_attention_num_buckets"), "norm": "rmsnorm",
        "norm_eps": f.positive("layer_norm_epsilon"),
        "mlp": "swiglu" if gated else "relu" if act == "relu" else "gelu", "bias": False,
        "tie_embeddings": f.flag("tie_word_embeddings"),
    }


def _model_type(raw: dict[str, Any], source: str) -> str:
    mt = raw.get("model_type")
    if mt is None:
        raise UserError(f"{source}: model_type: missing (a Hugging Face config.json names it)")
    if not isinstance(mt, str):
        raise UserError(f"{source}: model_type: expected a string, got {_shown(mt)}")
    if mt in _UNSUPPORTED:
        raise UserError(f"{source}: model_type {mt!r} is not supported: {_UNSUPPORTED[mt]}")
    if mt not in SUPPORTED:
        raise UserError(f"{source}: model_type {mt!r} is not supported (supported: "
                        f"{', '.join(sorted(SUPPORTED))})")
    if raw.get("kv_lora_rank") is not None:
        raise UserError(f"{source}: kv_lora_rank: {_MLA}")
    return mt


def _run_name(raw: dict[str, Any], source: str, model_type: str) -> str:
    named = raw.get("_name_or_path")
    if isinstance(named, str) and named.strip("/ "):
        return named.rstrip("/").rsplit("/", 1)[-1]
    p = Path(source)
    stem = p.parent.name if p.name == "config.json" else p.stem
    return stem or model_type


def hf_run_data(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """RunConfig data (a mapping for `validate`) for a Hugging Face config.json's contents.

    `source` names the file in errors and gives the run its name when the config has no
    `_name_or_path`. A one-line UserError names the model_type or field budgetlm cannot
    describe."""
    mt = _model_type(raw, source)
    f = _Fields(raw, source, mt)
    if mt in LLAMA_LIKE:
        model = _llama_like(f, mt)
    else:
        model = {"gpt2": _gpt2, "bert": _bert, "t5": _t5}[mt](f)
    data: dict[str, Any] = {
        "name": _run_name(raw, source, mt),
        "model": model,
        "meta": {"hf_config": source, "hf_model_type": mt},
    }
    if f.notes:
        data["meta"]["hf_not_described"] = f.notes
    if model["vocab_size"] >= 260:
        data["data"] = {"tokenizer": "bpe", "bpe_vocab_size": model["vocab_size"]}
    dtype = raw.get("dtype", raw.get("torch_dtype"))
    if isinstance(dtype, str) and dtype in _DTYPES:
        data["train"] = {"precision": _DTYPES[dtype]}
    return data
