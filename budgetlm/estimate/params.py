"""Parameter tensors of a model config: names, shapes, roles and counts (no torch import).

Exact for gpt/bert, checked name by name against `budgetlm.model` (tied tensors counted once).
`param_shapes` mirrors the model's `named_parameters()`; t5 mirrors HF
`T5ForConditionalGeneration` (relative-position bias tables in the first block of each stack).

The blocks of a stack are identical but for their names (and t5's first block, which holds the
relative-bias table), so counts come from `param_spec_counts`: one entry per distinct tensor
with how often the model holds it. They take constant time in depth; only `param_specs` and
`param_shapes` list every tensor of every block.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Context

from budgetlm.config import ModelConfig
from budgetlm.errors import UserError

# The largest model the estimator answers for: 1e18 parameters is 4 EB of fp32 weights alone,
# beyond the memory of every accelerator ever built put together (and 1e5-1e6 times the largest
# models trained). Below it every count and FLOP figure is an exact int or a finite float.
MAX_PARAMS = 10**18


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


# A run of identical tensor groups: the indices it covers and the specs of index i.
_Run = tuple[range, Callable[[int], list[ParamSpec]]]


def _fixed(specs: list[ParamSpec]) -> _Run:
    return range(1), lambda _i: specs


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


def _embedding_specs(m: ModelConfig) -> list[ParamSpec]:
    """Token table (+ learned positions) of gpt/bert."""
    out = [ParamSpec("wte.weight", (m.vocab_size, m.d_model), "embedding")]
    if m.positions == "learned":
        out.append(ParamSpec("wpe.weight", (m.seq_len, m.d_model), "embedding"))
    return out


def _gpt_runs(m: ModelConfig) -> list[_Run]:
    tail = _norm_specs(m, "ln_f")
    if not m.tie_embeddings:
        tail.append(ParamSpec("lm_head.weight", (m.vocab_size, m.d_model), "head"))  # no bias
    return [
        _fixed(_embedding_specs(m)),
        (range(m.n_layer), lambda i: _block_specs(m, i)),
        _fixed(tail),
    ]


def _bert_runs(m: ModelConfig) -> list[_Run]:
    V, d = m.vocab_size, m.d_model
    head = _embedding_specs(m)
    head.append(ParamSpec("wtt.weight", (2, d), "embedding"))  # token types, like HF
    head += _norm_specs(m, "ln_emb")
    tail = _norm_specs(m, "ln_f")
    tail += _linear_specs(m, "head.dense", d, d, "head")
    tail += _norm_specs(m, "head.norm")
    if not m.tie_embeddings:
        tail.append(ParamSpec("lm_head.weight", (V, d), "head"))
    if m.bias:
        tail.append(ParamSpec("lm_head.bias", (V,), "vector"))  # MLM decoder's own bias
    return [_fixed(head), (range(m.n_layer), lambda i: _block_specs(m, i)), _fixed(tail)]


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


def _t5_block_specs(m: ModelConfig, stack: str, i: int) -> list[ParamSpec]:
    """Block i of a t5 stack: self-attention (+ cross-attention in the decoder), then the MLP."""
    ff_names = ("wi_0", "wi_1", "wo") if m.mlp == "swiglu" else ("wi", "", "wo")
    p = f"{stack}.block.{i}.layer"
    out = _t5_attention_specs(m, f"{p}.0.SelfAttention", first=i == 0)
    out += _norm_specs(m, f"{p}.0.layer_norm")
    ff = 1
    if stack == "decoder":
        out += _t5_attention_specs(m, f"{p}.1.EncDecAttention", first=False)
        out += _norm_specs(m, f"{p}.1.layer_norm")
        ff = 2
    out += _mlp_specs(m, f"{p}.{ff}.DenseReluDense", ff_names)
    out += _norm_specs(m, f"{p}.{ff}.layer_norm")
    return out


def _t5_runs(m: ModelConfig) -> list[_Run]:
    """HF T5ForConditionalGeneration: shared embedding, encoder and decoder stacks, lm_head."""
    V, d = m.vocab_size, m.d_model
    runs = [_fixed([ParamSpec("shared.weight", (V, d), "embedding")])]
    for stack, n in (("encoder", m.n_layer), ("decoder", m.decoder_layers)):
        if m.positions == "learned":
            runs.append(
                _fixed([ParamSpec(f"{stack}.embed_positions.weight", (m.seq_len, d), "embedding")])
            )

        def block(i: int, stack: str = stack) -> list[ParamSpec]:
            return _t5_block_specs(m, stack, i)

        runs += [(range(min(n, 1)), block), (range(1, n), block)]  # block 0 holds the table
        runs.append(_fixed(_norm_specs(m, f"{stack}.final_layer_norm")))
    if not m.tie_embeddings:
        runs.append(_fixed([ParamSpec("lm_head.weight", (V, d), "head")]))
    return runs


def _runs(m: ModelConfig) -> list[_Run]:
    if m.family == "gpt":
        return _gpt_runs(m)
    if m.family == "bert":
        return _bert_runs(m)
    return _t5_runs(m)


def param_specs(m: ModelConfig) -> list[ParamSpec]:
    """Every parameter tensor of the model `m` describes, in `named_parameters()` order.

    Lists every block: linear in depth. Counts should use `param_spec_counts`."""
    return [s for idx, specs in _runs(m) for i in idx for s in specs(i)]


def param_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape}, equal to `{n: tuple(p.shape) for n, p in model.named_parameters()}` of
    `build_model(m)` for gpt and bert."""
    return {s.name: s.shape for s in param_specs(m)}


def param_spec_counts(m: ModelConfig) -> list[tuple[ParamSpec, int]]:
    """(spec, how many tensors like it the model holds), in `named_parameters()` order.

    One entry per tensor outside the blocks and per tensor of one block, named as in the first
    block it stands for; `sum(k * s.numel for s, k in ...)` is the parameter count. Constant
    time in depth.
    """
    return [
        (s, idx.stop - idx.start)
        for idx, specs in _runs(m)
        if idx.stop > idx.start
        for s in specs(idx.start)
    ]


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
    return sum(k * s.numel for s, k in param_spec_counts(m) if s.role == "matrix")


def sci(n: int | float) -> str:
    """A count in at most three significant digits, "1.2e+22", for ints of any size."""
    return format(Context(prec=3).create_decimal(n).normalize(), "g")


def describe_shape(m: ModelConfig) -> str:
    """The shape fields that size a model, for messages: 'n_layer=2, d_model=64, ...'."""
    parts = [f"n_layer={m.n_layer}"]
    if m.family == "t5":
        parts.append(f"decoder_layers={m.decoder_layers}")
    parts += [
        f"d_model={m.d_model}",
        f"n_head={m.n_head}",
        f"d_ff={m.ff}",
        f"vocab_size={m.vocab_size}",
        f"seq_len={m.seq_len}",
    ]
    return ", ".join(parts)


def count_params(m: ModelConfig) -> ParamCount:
    """Exact parameter count (Kaplan et al. 2020 §2.1 split: embedding vs non-embedding).

    UserError when the model has more than MAX_PARAMS parameters."""
    counts = param_spec_counts(m)
    total = sum(k * s.numel for s, k in counts)
    if total > MAX_PARAMS:
        raise UserError(
            f"model: {sci(total)} parameters ({describe_shape(m)}) is beyond any hardware; "
            f"estimates stop at {sci(MAX_PARAMS)}"
        )
    embedding = sum(k * s.numel for s, k in counts if s.role == "embedding")
    return ParamCount(
        total=total,
        embedding=embedding,
        non_embedding=total - embedding,
        matmul=block_matmul_params(m) + head_matmul_params(m),
    )
