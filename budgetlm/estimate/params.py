"""Parameter tensors of a model config: names, shapes, roles and counts (no torch import).

Exact for gpt/bert, checked name by name against `budgetlm.model` (tied tensors counted once).
`param_shapes` mirrors the model's `named_parameters()`; t5 mirrors HF
`T5ForConditionalGeneration` (relative-position bias tables in the first block of each stack).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from budgetlm.config import ModelConfig


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor: its name in the model, shape and role.

    role: "embedding" (token/position/token-type tables), "matrix" (a Linear weight inside a
    transformer block), "head" (a Linear weight outside the blocks: LM head, MLM dense),
    "vector" (norm weights and biases), "table" (t5 relative-position bias).
    """

    name: str
    shape: tuple[int, ...]
    role: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _norm_specs(m: ModelConfig, prefix: str) -> list[ParamSpec]:
    """LayerNorm: weight (+ bias when m.bias); RMSNorm: weight only."""
    out = [ParamSpec(f"{prefix}.weight", (m.d_model,), "vector")]
    if m.norm == "layernorm" and m.bias:
        out.append(ParamSpec(f"{prefix}.bias", (m.d_model,), "vector"))
    return out


def _linear_specs(m: ModelConfig, prefix: str, d_in: int, d_out: int, role: str) -> list[ParamSpec]:
    out = [ParamSpec(f"{prefix}.weight", (d_out, d_in), role)]
    if m.bias:
        out.append(ParamSpec(f"{prefix}.bias", (d_out,), "vector"))
    return out


def _mlp_specs(m: ModelConfig, prefix: str, names: tuple[str, str, str]) -> list[ParamSpec]:
    """names: (gate, up, down) for swiglu; (up, -, down) otherwise."""
    d, f = m.d_model, m.ff
    if m.mlp == "swiglu":
        gate, up, down = names
        return (
            _linear_specs(m, f"{prefix}.{gate}", d, f, "matrix")
            + _linear_specs(m, f"{prefix}.{up}", d, f, "matrix")
            + _linear_specs(m, f"{prefix}.{down}", f, d, "matrix")
        )
    up, _, down = names
    return _linear_specs(m, f"{prefix}.{up}", d, f, "matrix") + _linear_specs(
        m, f"{prefix}.{down}", f, d, "matrix"
    )


def _block_specs(m: ModelConfig, i: int) -> list[ParamSpec]:
    """budgetlm.model.Block: ln_1, attn.c_attn (fused q,k,v), attn.c_proj, ln_2, mlp."""
    d, inner = m.d_model, m.n_head * m.head_dim
    p = f"blocks.{i}"
    return (
        _norm_specs(m, f"{p}.ln_1")
        + _linear_specs(m, f"{p}.attn.c_attn", d, 3 * inner, "matrix")
        + _linear_specs(m, f"{p}.attn.c_proj", inner, d, "matrix")
        + _norm_specs(m, f"{p}.ln_2")
        + _mlp_specs(
            m, f"{p}.mlp", ("w1", "w3", "w2") if m.mlp == "swiglu" else ("c_fc", "", "c_proj")
        )
    )


def _gpt_specs(m: ModelConfig) -> list[ParamSpec]:
    V, d = m.vocab_size, m.d_model
    out = [ParamSpec("wte.weight", (V, d), "embedding")]
    if m.positions == "learned":
        out.append(ParamSpec("wpe.weight", (m.seq_len, d), "embedding"))
    for i in range(m.n_layer):
        out += _block_specs(m, i)
    out += _norm_specs(m, "ln_f")
    if not m.tie_embeddings:
        out.append(ParamSpec("lm_head.weight", (V, d), "head"))  # GPT head has no bias
    return out


def _bert_specs(m: ModelConfig) -> list[ParamSpec]:
    V, d = m.vocab_size, m.d_model
    out = [ParamSpec("wte.weight", (V, d), "embedding")]
    if m.positions == "learned":
        out.append(ParamSpec("wpe.weight", (m.seq_len, d), "embedding"))
    out.append(ParamSpec("wtt.weight", (2, d), "embedding"))  # token types, like HF
    out += _norm_specs(m, "ln_emb")
    for i in range(m.n_layer):
        out += _block_specs(m, i)
    out += _norm_specs(m, "ln_f")
    out += _linear_specs(m, "head.dense", d, d, "head")
    out += _norm_specs(m, "head.norm")
    if not m.tie_embeddings:
        out.append(ParamSpec("lm_head.weight", (V, d), "head"))
    if m.bias:
        out.append(ParamSpec("lm_head.bias", (V,), "vector"))  # MLM decoder's own bias
    return out


def _t5_attention_specs(m: ModelConfig, prefix: str, first: bool) -> list[ParamSpec]:
    d, inner = m.d_model, m.n_head * m.head_dim
    out: list[ParamSpec] = []
    for name in ("q", "k", "v"):
        out += _linear_specs(m, f"{prefix}.{name}", d, inner, "matrix")
    out += _linear_specs(m, f"{prefix}.o", inner, d, "matrix")
    if first and m.positions == "relative":
        out.append(
            ParamSpec(
                f"{prefix}.relative_attention_bias.weight", (m.relative_buckets, m.n_head), "table"
            )
        )
    return out


def _t5_specs(m: ModelConfig) -> list[ParamSpec]:
    """HF T5ForConditionalGeneration: shared embedding, encoder and decoder stacks, lm_head."""
    V, d = m.vocab_size, m.d_model
    out = [ParamSpec("shared.weight", (V, d), "embedding")]
    ff_names = ("wi_0", "wi_1", "wo") if m.mlp == "swiglu" else ("wi", "", "wo")
    for stack, n in (("encoder", m.n_layer), ("decoder", m.decoder_layers)):
        if m.positions == "learned":
            out.append(ParamSpec(f"{stack}.embed_positions.weight", (m.seq_len, d), "embedding"))
        for i in range(n):
            p = f"{stack}.block.{i}.layer"
            out += _t5_attention_specs(m, f"{p}.0.SelfAttention", first=i == 0)
            out += _norm_specs(m, f"{p}.0.layer_norm")
            ff = 1
            if stack == "decoder":
                out += _t5_attention_specs(m, f"{p}.1.EncDecAttention", first=False)
                out += _norm_specs(m, f"{p}.1.layer_norm")
                ff = 2
            out += _mlp_specs(m, f"{p}.{ff}.DenseReluDense", ff_names)
            out += _norm_specs(m, f"{p}.{ff}.layer_norm")
        out += _norm_specs(m, f"{stack}.final_layer_norm")
    if not m.tie_embeddings:
        out.append(ParamSpec("lm_head.weight", (V, d), "head"))
    return out


def param_specs(m: ModelConfig) -> list[ParamSpec]:
    """Every parameter tensor of the model `m` describes, in `named_parameters()` order."""
    if m.family == "gpt":
        return _gpt_specs(m)
    if m.family == "bert":
        return _bert_specs(m)
    return _t5_specs(m)


def param_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape}, equal to `{n: tuple(p.shape) for n, p in model.named_parameters()}` of
    `build_model(m)` for gpt and bert."""
    return {s.name: s.shape for s in param_specs(m)}


@dataclass(frozen=True)
class ParamCount:
    """total = embedding + non_embedding (tied head counted once).

    embedding: token (+ learned position, + token-type) tables. matmul: parameters that take
    part in a matmul per token — every Linear weight plus the LM head (V·d even when tied to the
    embedding); excludes embedding lookups, norms, biases and t5's relative-bias tables.
    """

    total: int
    embedding: int
    non_embedding: int
    matmul: int


def head_matmul_params(m: ModelConfig) -> int:
    """Matmul parameters outside the blocks: LM head (V·d, tied or not) + BERT's MLM dense (d·d)."""
    head = m.vocab_size * m.d_model
    if m.family == "bert":
        head += m.d_model * m.d_model
    return head


def block_matmul_params(m: ModelConfig) -> int:
    """Linear weights inside the transformer blocks (role "matrix")."""
    return sum(s.numel for s in param_specs(m) if s.role == "matrix")


def count_params(m: ModelConfig) -> ParamCount:
    """Exact parameter count (Kaplan et al. 2020 §2.1 split: embedding vs non-embedding)."""
    specs = param_specs(m)
    total = sum(s.numel for s in specs)
    embedding = sum(s.numel for s in specs if s.role == "embedding")
    return ParamCount(
        total=total,
        embedding=embedding,
        non_embedding=total - embedding,
        matmul=block_matmul_params(m) + head_matmul_params(m),
    )
