"""`budgetlm estimate` on Hugging Face config.json files written by `transformers`: the parameter
count equals `sum(p.numel())` of the `transformers` model built from the same config on the meta
device (nothing downloaded), and configs budgetlm cannot describe stop with one line, exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from budgetlm.cli import app
from budgetlm.config import load_config
from budgetlm.config.shapes import SHAPE_PRESETS

transformers = pytest.importorskip("transformers")

SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300,
         "max_position_embeddings": 128, "intermediate_size": 96}

# (id, config class, kwargs, model class): one or more shapes per supported model_type.
CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("llama-gqa", "LlamaConfig", {**SMALL, "num_key_value_heads": 2}, "AutoModelForCausalLM"),
    ("llama-mha-tied-bias-headdim", "LlamaConfig",
     {**SMALL, "head_dim": 24, "tie_word_embeddings": True, "attention_bias": True,
      "mlp_bias": True}, "AutoModelForCausalLM"),
    ("mistral-window", "MistralConfig",
     {**SMALL, "num_key_value_heads": 1, "sliding_window": 32}, "AutoModelForCausalLM"),
    ("qwen2-gqa", "Qwen2Config", {**SMALL, "num_key_value_heads": 2}, "AutoModelForCausalLM"),
    ("qwen3-qknorm-headdim", "Qwen3Config",
     {**SMALL, "num_key_value_heads": 2, "head_dim": 32, "tie_word_embeddings": True},
     "AutoModelForCausalLM"),
    ("gemma-mqa", "GemmaConfig", {**SMALL, "num_key_value_heads": 1, "head_dim": 16},
     "AutoModelForCausalLM"),
    ("mixtral", "MixtralConfig",
     {**SMALL, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2},
     "AutoModelForCausalLM"),
    ("qwen2_moe-shared-dense-first", "Qwen2MoeConfig",
     {**SMALL, "num_hidden_layers": 3, "num_key_value_heads": 2, "num_experts": 4,
      "num_experts_per_tok": 2, "moe_intermediate_size": 32,
      "shared_expert_intermediate_size": 64, "mlp_only_layers": [0]}, "AutoModelForCausalLM"),
    ("qwen3_moe", "Qwen3MoeConfig",
     {**SMALL, "num_hidden_layers": 3, "num_key_value_heads": 2, "head_dim": 8,
      "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 24,
      "mlp_only_layers": [0, 1]}, "AutoModelForCausalLM"),
    ("gpt2", "GPT2Config", {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 300,
                            "n_positions": 128}, "AutoModelForCausalLM"),
    ("gpt2-n_inner", "GPT2Config", {"n_embd": 48, "n_layer": 3, "n_head": 3, "n_inner": 80,
                                    "vocab_size": 300, "n_positions": 64},
     "AutoModelForCausalLM"),
    ("bert", "BertConfig", {**SMALL}, "BertForMaskedLM"),
    ("t5", "T5Config", {"vocab_size": 300, "d_model": 64, "d_kv": 16, "d_ff": 96,
                        "num_layers": 2, "num_decoder_layers": 3, "num_heads": 4},
     "T5ForConditionalGeneration"),
    ("t5-gated-silu", "T5Config", {"vocab_size": 300, "d_model": 64, "d_kv": 8, "d_ff": 80,
                                   "num_layers": 2, "num_heads": 6,
                                   "feed_forward_proj": "gated-silu"},
     "T5ForConditionalGeneration"),
]

# Parameters of Qwen2 / Qwen2-MoE models that budgetlm's config does not describe (named in
# meta.hf_not_described): the shared expert's gate.
_LEFT_OUT = re.compile(r"shared_expert_gate\.weight$")


def _write(tmp_path: Path, cls: str, kwargs: dict[str, Any]) -> tuple[Any, Path]:
    cfg = getattr(transformers, cls)(**kwargs)
    out = tmp_path / "model"
    cfg.save_pretrained(out)
    return cfg, out


def _hf_params(cfg: Any, model_cls: str) -> dict[str, int]:
    with torch.device("meta"):
        model_type = getattr(transformers, model_cls)
        from_config = getattr(model_type, "from_config", None)
        model = from_config(cfg) if from_config else model_type(cfg)
    return {n: p.numel() for n, p in model.named_parameters()}


def _estimate(spec: str | Path) -> dict[str, Any]:
    res = CliRunner().invoke(app, ["estimate", str(spec), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _expected(cfg: Any, model_cls: str) -> int:
    """What budgetlm counts for this config: the transformers model, less what the notes say
    is left out, plus budgetlm BERT's final LayerNorm."""
    named = _hf_params(cfg, model_cls)
    total = sum(named.values())
    if cfg.model_type in ("qwen2", "qwen2_moe"):
        total -= sum(n for name, n in named.items() if _LEFT_OUT.search(name))
    if cfg.model_type == "bert":
        total += 2 * cfg.hidden_size
    return total


@pytest.mark.parametrize(("cls", "kwargs", "model_cls"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_estimate_of_a_transformers_config_counts_its_parameters(
    tmp_path: Path, cls: str, kwargs: dict[str, Any], model_cls: str
) -> None:
    cfg, out = _write(tmp_path, cls, kwargs)
    expected = _expected(cfg, model_cls)
    assert _estimate(out)["params"] == expected
    assert _estimate(out / "config.json")["params"] == expected


def test_every_supported_model_type_has_a_case() -> None:
    from budgetlm.config.hf import SUPPORTED

    written = {getattr(transformers, c[1])().model_type for c in CASES}
    assert written == set(SUPPORTED)


def test_fields_map_onto_the_model_config(tmp_path: Path) -> None:
    _, out = _write(tmp_path, "Qwen3MoeConfig", {
        **CASES[8][2], "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"},
        "rms_norm_eps": 1e-5, "router_aux_loss_coef": 0.02, "norm_topk_prob": True,
    })
    cfg = load_config(str(out))
    m = cfg.model
    assert (m.family, m.n_layer, m.n_head, m.n_kv_head, m.d_model, m.head_dim) == (
        "gpt", 3, 4, 2, 64, 8)
    assert (m.d_ff, m.vocab_size, m.seq_len, m.rope_theta, m.norm_eps) == (
        96, 300, 128, 1e6, 1e-5)
    assert (m.positions, m.norm, m.mlp, m.bias, m.tie_embeddings, m.qk_norm) == (
        "rope", "rmsnorm", "swiglu", False, False, True)
    assert (m.n_expert, m.n_expert_active, m.d_expert, m.n_dense_layer, m.n_shared_expert) == (
        8, 2, 24, 2, 0)
    assert m.router_aux_coef == 0.02 and m.sliding_window is None
    assert cfg.name == "model" and cfg.meta["hf_model_type"] == "qwen3_moe"
    assert "hf_not_described" not in cfg.meta
    assert cfg.data.tokenizer == "bpe" and cfg.data.bpe_vocab_size == 300


def test_qwen2_notes_name_the_parameters_left_out(tmp_path: Path) -> None:
    cfg, out = _write(tmp_path, "Qwen2MoeConfig", CASES[7][2])
    named = _hf_params(cfg, "AutoModelForCausalLM")
    notes = load_config(str(out)).meta["hf_not_described"]
    noted = [int(x.replace(",", "")) for note in notes
             for x in re.findall(r"\(([\d,]+) parameters\)", note)]
    assert sum(noted) == sum(n for name, n in named.items() if _LEFT_OUT.search(name)) > 0
    m = load_config(str(out)).model
    assert (m.n_shared_expert, m.d_expert, m.n_dense_layer, m.d_ff) == (2, 32, 1, 96)


def test_estimate_prints_what_is_not_described_and_takes_a_bare_directory_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, "Qwen2MoeConfig", next(c[2] for c in CASES if c[1] == "Qwen2MoeConfig"))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["estimate", "model", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["params"] > 0
    assert "note: the shared expert's sigmoid gate (" in res.stderr
    plain = CliRunner().invoke(app, ["estimate", "model"])
    assert plain.exit_code == 0 and "estimate: model" in plain.stdout


def test_older_config_files_and_sliding_windows(tmp_path: Path) -> None:
    """transformers 4.x spellings: top-level rope_theta and rope_scaling, num_experts for
    qwen3_moe, no head_dim; Qwen's sliding window on every layer or on some only."""
    raw = {"model_type": "qwen3_moe", **SMALL, "num_key_value_heads": 2, "head_dim": 16,
           "num_experts": 4, "num_experts_per_tok": 1, "moe_intermediate_size": 16,
           "rope_theta": 5e5, "rope_scaling": {"type": "yarn", "factor": 4.0},
           "use_sliding_window": True, "max_window_layers": 0, "sliding_window": 16,
           "torch_dtype": "bfloat16", "_name_or_path": "org/Some-Model"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    cfg = load_config(str(path))
    assert (cfg.model.n_expert, cfg.model.rope_theta, cfg.model.sliding_window) == (4, 5e5, 16)
    assert cfg.name == "Some-Model" and cfg.train.precision == "bf16"
    assert any("yarn" in n for n in cfg.meta["hf_not_described"])
    path.write_text(json.dumps({**raw, "max_window_layers": 1}))
    partial = load_config(str(path))
    assert partial.model.sliding_window is None
    assert any("1 of 2 layers" in n for n in partial.meta["hf_not_described"])
    llama = {"model_type": "llama", **SMALL, "rope_theta": 5e5}
    path.write_text(json.dumps(llama))
    m = load_config(str(path)).model
    assert (m.kv_heads, m.head_dim, m.rope_theta, m.tie_embeddings) == (4, 16, 5e5, False)


_MALFORMED: dict[str, tuple[Any, str]] = {
    "not-json": ("{'model_type': 'llama',", "not valid JSON"),
    "not-a-mapping": ([1, 2], "expected a mapping at the top level, got a list"),
    "no-model-type": ({"architectures": ["X"], **SMALL}, "model_type: missing"),
    "unknown-model-type": ({"model_type": "phi3", **SMALL}, "model_type 'phi3' is not supported"),
    "missing-hidden-size": ({"model_type": "llama", **{k: v for k, v in SMALL.items()
                                                       if k != "hidden_size"}},
                            "hidden_size: missing"),
    "negative-heads": ({"model_type": "mistral", **SMALL, "num_attention_heads": -4},
                       "num_attention_heads: expected a whole number >= 1, got -4"),
    "kv-not-dividing": ({"model_type": "llama", **SMALL, "num_key_value_heads": 3},
                        "num_key_value_heads: 3 must divide num_attention_heads (4)"),
    "mla-deepseek": ({"model_type": "deepseek_v2", **SMALL, "kv_lora_rank": 512},
                     "multi-head latent attention"),
    "mla-field": ({"model_type": "llama", **SMALL, "kv_lora_rank": 512}, "kv_lora_rank:"),
    "gemma2": ({"model_type": "gemma2", **SMALL}, "model_type 'gemma2' is not supported"),
    "interleaved-moe": ({"model_type": "qwen3_moe", **SMALL, "num_key_value_heads": 2,
                         "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
                         "decoder_sparse_step": 2, "num_hidden_layers": 4},
                        "decoder_sparse_step: 2: MoE blocks interleaved"),
    "shared-width": ({"model_type": "qwen2_moe", **SMALL, "num_key_value_heads": 2,
                      "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                      "shared_expert_intermediate_size": 40},
                     "shared_expert_intermediate_size: 40 is not a multiple"),
    "bias-split": ({"model_type": "llama", **SMALL, "attention_bias": True},
                   "attention_bias: true with mlp_bias false"),
    "nan": ('{"model_type": "llama", "rms_norm_eps": NaN}', "NaN is not a JSON number"),
    "duplicate": ('{"model_type": "llama", "model_type": "qwen2"}', "duplicate key"),
    "string-width": ({"model_type": "gpt2", "n_embd": "64", "n_layer": 2, "n_head": 4,
                      "vocab_size": 300}, "n_embd: expected a whole number >= 1, got '64'"),
}


@pytest.mark.parametrize("case", list(_MALFORMED))
def test_config_json_budgetlm_cannot_read_is_one_line_exit_2(tmp_path: Path, case: str) -> None:
    content, needle = _MALFORMED[case]
    out = tmp_path / "model"
    out.mkdir()
    text = content if isinstance(content, str) else json.dumps(content)
    (out / "config.json").write_text(text)
    res = CliRunner().invoke(app, ["estimate", str(out)])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert str(out / "config.json") in res.stderr and needle in res.stderr, res.stderr


def test_a_directory_without_config_json_is_one_line_exit_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["estimate", str(tmp_path)])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "without a config.json" in res.stderr


# Published shapes: the transformers config of each model, as its config.json states it.
_PUBLISHED: dict[str, tuple[str, dict[str, Any]]] = {
    "llama3-8b": ("LlamaConfig", {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5}),
    "mistral-7b": ("MistralConfig", {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
        "max_position_embeddings": 32768, "sliding_window": 4096, "rms_norm_eps": 1e-5}),
    "qwen2.5-7b": ("Qwen2Config", {
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
        "max_position_embeddings": 131072, "rope_theta": 1e6, "rms_norm_eps": 1e-6,
        "sliding_window": 131072, "max_window_layers": 28}),
    "mixtral-8x7b": ("MixtralConfig", {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
        "max_position_embeddings": 32768, "rope_theta": 1e6, "rms_norm_eps": 1e-5,
        "num_local_experts": 8, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02}),
    "qwen3-30b-a3b": ("Qwen3MoeConfig", {
        "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
        "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
        "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8, "vocab_size": 151936,
        "max_position_embeddings": 40960, "rope_theta": 1e6, "rms_norm_eps": 1e-6,
        "norm_topk_prob": True, "router_aux_loss_coef": 0.001}),
}


@pytest.mark.parametrize("name", list(_PUBLISHED))
def test_shape_presets_are_what_their_config_json_reads_as(tmp_path: Path, name: str) -> None:
    cls, kwargs = _PUBLISHED[name]
    _, out = _write(tmp_path, cls, kwargs)
    from_hf = load_config(str(out)).model
    preset = load_config(name).model
    fields = set(type(preset).model_fields) - {"dropout", "init_std", "attention"}
    assert {k: getattr(preset, k) for k in fields} == {k: getattr(from_hf, k) for k in fields}


@pytest.mark.parametrize(("name", "published"), [
    ("llama3-8b", 8_030_261_248), ("mistral-7b", 7_241_732_096),
    ("qwen2.5-7b", 7_615_616_512), ("mixtral-8x7b", 46_702_792_704),
    ("qwen3-30b-a3b", None),
])
def test_shape_presets_count_the_published_parameters(
    tmp_path: Path, name: str, published: int | None
) -> None:
    cls, kwargs = _PUBLISHED[name]
    cfg, _ = _write(tmp_path, cls, kwargs)
    named = _hf_params(cfg, "AutoModelForCausalLM")
    assert published is None or sum(named.values()) == published
    assert _estimate(name)["params"] == _expected(cfg, "AutoModelForCausalLM")


def test_deepseek_v2_lite_preset_describes_what_it_can() -> None:
    m = load_config("deepseek-v2-lite").model
    assert (m.n_layer, m.d_model, m.n_head, m.vocab_size) == (27, 2048, 16, 102400)
    assert (m.n_expert, m.n_expert_active, m.n_shared_expert, m.d_expert, m.n_dense_layer) == (
        64, 6, 2, 1408, 1)
    assert m.ff == 10944 and not m.tie_embeddings
    assert set(SHAPE_PRESETS) >= {"llama3-8b", "qwen2.5-7b", "mistral-7b", "mixtral-8x7b",
                                  "qwen3-30b-a3b", "deepseek-v2-lite"}


_KEYS = sorted({*SMALL, "num_key_value_heads", "head_dim", "rope_theta", "rope_parameters",
                "rope_scaling", "tie_word_embeddings", "attention_bias", "mlp_bias", "qkv_bias",
                "sliding_window", "use_sliding_window", "max_window_layers", "layer_types",
                "num_experts", "num_local_experts", "num_experts_per_tok",
                "moe_intermediate_size", "shared_expert_intermediate_size", "mlp_only_layers",
                "decoder_sparse_step", "norm_topk_prob", "router_aux_loss_coef", "hidden_act",
                "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "d_model", "d_ff",
                "d_kv", "num_layers", "num_heads", "num_decoder_layers", "feed_forward_proj",
                "type_vocab_size", "torch_dtype", "rms_norm_eps"})


def test_any_config_json_content_is_a_run_config_or_one_user_error() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from budgetlm.config import validate
    from budgetlm.config.hf import SUPPORTED, hf_run_data
    from budgetlm.errors import UserError
    from budgetlm.estimate import count_params

    scalars = st.one_of(
        st.integers(-3, 300), st.integers(-(2**70), 2**70), st.booleans(), st.none(),
        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["silu", "relu", "x"]),
    )
    values = st.one_of(scalars, st.lists(scalars, max_size=3),
                       st.dictionaries(st.sampled_from(["rope_theta", "rope_type", "type"]),
                                       scalars, max_size=2))
    docs = st.fixed_dictionaries(
        {"model_type": st.sampled_from([*SUPPORTED, "gemma2", 3])},
        optional={k: values for k in _KEYS},
    )

    @settings(max_examples=300, deadline=None, database=None)
    @given(doc=docs, base=st.booleans())
    def check(doc: dict[str, Any], base: bool) -> None:
        raw = {**SMALL, **doc} if base else doc
        try:
            cfg = validate(hf_run_data(raw, "config.json"), source="config.json")
            count_params(cfg.model)
        except UserError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("config.json")

    check()
