"""Parameter tensors of a model config: names, shapes, roles and counts (no torch import).

Exact for gpt/bert, checked name by name against `budgetlm.model` (tied tensors counted once),
grouped-query attention and mixture-of-experts blocks included; checked in total against
Hugging Face Llama, Mistral, Qwen2, Mixtral and Qwen3-MoE models.
`param_shapes` mirrors the model's `named_parameters()`; t5 mirrors HF
`T5ForConditionalGeneration` (relative-position bias tables in the first block of each stack).

The blocks of a stack are identical but for their names (t5's first block holds the
relative-bias table; an MoE model's first `n_dense_layer` blocks keep a dense MLP), and so are
the experts of an MoE block, so counts come from `param_spec_counts`: one entry per distinct
tensor with how often the model holds it. They take constant time in depth and in the number
of experts; only `param_specs` and `param_shapes` list every tensor of every block.
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
    expert: the tensor belongs to one routed expert of an MoE block (what expert parallelism
    shards over ranks; shared experts and the router are not routed experts).
    """

    name: str
    shape: tuple[int, ...]
    role: str
    expert: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


# A run of identical tensor groups: the indices it covers and the items of index i, each a
# tensor or a nested run (the experts of an MoE block).
_Run = tuple[range, Callable[[int], list["ParamSpec | _Run"]]]


def _fixed(specs: list[ParamSpec]) -> _Run:
    return range(1), lambda _i: list(specs)


def _norm_specs(m: ModelConfig, prefix: str) -> list[ParamSpec]:
    """LayerNorm: weight (+ bias when m.bias); RMSNorm: weight only."""
    out = [ParamSpec(f"{prefix}.weight", (m.d_model,), "vector")]
    if m.norm == "layernorm" and m.bias:
        out.append(ParamSpec(f"{prefix}.bias", (m.d_model,), "vector"))
    return out


def _linear_specs(
    m: ModelConfig, prefix: str, d_in: int, d_out: int, role: str, expert: bool = False,
    bias: bool | None = None,
) -> list[ParamSpec]:
    out = [ParamSpec(f"{prefix}.weight", (d_out, d_in), role, expert)]
    if m.bias if bias is None else bias:
        out.append(ParamSpec(f"{prefix}.bias", (d_out,), "vector", expert))
    return out


def _mlp_specs(
    m: ModelConfig, prefix: str, names: tuple[str, str, str], f: int | None = None,
    expert: bool = False,
) -> list[ParamSpec]:
    """names: (gate, up, down) for swiglu; (up, -, down) otherwise. f: hidden width (m.ff)."""
    d, f = m.d_model, m.ff if f is None else f
    if m.mlp == "swiglu":
        gate, up, down = names
        return (
            _linear_specs(m, f"{prefix}.{gate}", d, f, "matrix", expert)
            + _linear_specs(m, f"{prefix}.{up}", d, f, "matrix", expert)
            + _linear_specs(m, f"{prefix}.{down}", f, d, "matrix", expert)
        )
    up, _, down = names
    return _linear_specs(m, f"{prefix}.{up}", d, f, "matrix", expert) + _linear_specs(
        m, f"{prefix}.{down}", f, d, "matrix", expert
    )


def _mlp_names(m: ModelConfig) -> tuple[str, str, str]:
    return ("w1", "w3", "w2") if m.mlp == "swiglu" else ("c_fc", "", "c_proj")


def _attention_specs(m: ModelConfig, p: str) -> list[ParamSpec]:
    """budgetlm.model.SelfAttention: c_attn (fused q, k, v: n_head + 2·kv_heads heads) or,
    with `fused_qkv` false, q_proj, k_proj and v_proj; c_proj, and with qk_norm one RMSNorm
    weight over head_dim for q and one for k. A config's `qkv_bias` (when it has one and it is
    not None) decides the q, k, v biases alone (Qwen2)."""
    d, inner, kv_inner = m.d_model, m.n_head * m.head_dim, m.kv_heads * m.head_dim
    qkv_bias = getattr(m, "qkv_bias", None)
    if m.fused_qkv:
        out = _linear_specs(
            m, f"{p}.attn.c_attn", d, inner + 2 * kv_inner, "matrix", bias=qkv_bias
        )
    else:
        out = []
        for name, width in (("q_proj", inner), ("k_proj", kv_inner), ("v_proj", kv_inner)):
            out += _linear_specs(m, f"{p}.attn.{name}", d, width, "matrix", bias=qkv_bias)
    out += _linear_specs(m, f"{p}.attn.c_proj", inner, d, "matrix")
    if m.qk_norm:
        out += [ParamSpec(f"{p}.attn.{n}.weight", (m.head_dim,), "vector")
                for n in ("q_norm", "k_norm")]
    return out


def _moe_mlp_items(m: ModelConfig, p: str) -> list[ParamSpec | _Run]:
    """An MoE MLP: router (d -> n_expert, no bias), the routed experts, the shared experts."""
    names = _mlp_names(m)

    def routed(e: int) -> list[ParamSpec | _Run]:
        return list(_mlp_specs(m, f"{p}.mlp.experts.{e}", names, m.expert_ff, expert=True))

    def shared(j: int) -> list[ParamSpec | _Run]:
        return list(_mlp_specs(m, f"{p}.mlp.shared.{j}", names, m.expert_ff))

    return [
        ParamSpec(f"{p}.mlp.router.weight", (m.n_expert, m.d_model), "matrix"),
        (range(m.n_expert), routed),
        (range(m.n_shared_expert), shared),
    ]


def _block_specs(m: ModelConfig, i: int) -> list[ParamSpec | _Run]:
    """budgetlm.model.Block: ln_1, attn, ln_2, mlp (dense, or MoE from block n_dense_layer on
    when n_expert > 0)."""
    p = f"blocks.{i}"
    out: list[ParamSpec | _Run] = [*_norm_specs(m, f"{p}.ln_1"), *_attention_specs(m, p)]
    out += _norm_specs(m, f"{p}.ln_2")
    if m.n_expert and i >= m.n_layer - m.moe_layers:
        return out + _moe_mlp_items(m, p)
    return out + _mlp_specs(m, f"{p}.mlp", _mlp_names(m))


def _block_runs(m: ModelConfig) -> list[_Run]:
    """The dense blocks, then the MoE blocks."""
    first_moe = m.n_layer - m.moe_layers

    def block(i: int) -> list[ParamSpec | _Run]:
        return _block_specs(m, i)

    return [(range(first_moe), block), (range(first_moe, m.n_layer), block)]


def _embedding_specs(m: ModelConfig) -> list[ParamSpec]:
    """Token table (+ learned positions) of gpt/bert."""
    out = [ParamSpec("wte.weight", (m.vocab_size, m.d_model), "embedding")]
    if m.positions == "learned":
        out.append(ParamSpec("wpe.weight", (m.seq_len, m.d_model), "embedding"))
    return out


def _classifier_specs(m: ModelConfig) -> list[ParamSpec]:
    """budgetlm.model.classify: Linear(d_model, n_classes) with a bias, replacing the LM head
    (and BERT's MLM head) of a gpt/bert classifier."""
    assert m.n_classes is not None
    return _linear_specs(m, "classifier", m.d_model, m.n_classes, "head", bias=True)


def _gpt_runs(m: ModelConfig) -> list[_Run]:
    tail = _norm_specs(m, "ln_f")
    if m.n_classes is not None:
        tail += _classifier_specs(m)
    elif not m.tie_embeddings:
        tail.append(ParamSpec("lm_head.weight", (m.vocab_size, m.d_model), "head"))  # no bias
    return [_fixed(_embedding_specs(m)), *_block_runs(m), _fixed(tail)]


def _bert_runs(m: ModelConfig) -> list[_Run]:
    V, d = m.vocab_size, m.d_model
    head = _embedding_specs(m)
    head.append(ParamSpec("wtt.weight", (2, d), "embedding"))  # token types, like HF
    head += _norm_specs(m, "ln_emb")
    tail = _norm_specs(m, "ln_f")
    if m.n_classes is not None:
        return [_fixed(head), *_block_runs(m), _fixed(tail + _classifier_specs(m))]
    tail += _linear_specs(m, "head.dense", d, d, "head")
    tail += _norm_specs(m, "head.norm")
    if not m.tie_embeddings:
        tail.append(ParamSpec("lm_head.weight", (V, d), "head"))
    if m.bias:
        tail.append(ParamSpec("lm_head.bias", (V,), "vector"))  # MLM decoder's own bias
    return [_fixed(head), *_block_runs(m), _fixed(tail)]


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

        def block(i: int, stack: str = stack) -> list[ParamSpec | _Run]:
            return list(_t5_block_specs(m, stack, i))

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


def _expand(runs: list[_Run]) -> list[ParamSpec]:
    out: list[ParamSpec] = []
    for idx, items in runs:
        for i in idx:
            for item in items(i):
                out += [item] if isinstance(item, ParamSpec) else _expand([item])
    return out


def _counted(runs: list[_Run], times: int = 1) -> list[tuple[ParamSpec, int]]:
    out: list[tuple[ParamSpec, int]] = []
    for idx, items in runs:
        if idx.stop <= idx.start:
            continue
        k = times * (idx.stop - idx.start)
        for item in items(idx.start):
            out += [(item, k)] if isinstance(item, ParamSpec) else _counted([item], k)
    return out


def param_specs(m: ModelConfig) -> list[ParamSpec]:
    """Every parameter tensor of the model `m` describes, in `named_parameters()` order.

    Lists every block and expert: linear in depth. Counts should use `param_spec_counts`."""
    return _expand(_runs(m))


def param_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape}, equal to `{n: tuple(p.shape) for n, p in model.named_parameters()}` of
    `build_model(m)` for gpt and bert."""
    return {s.name: s.shape for s in param_specs(m)}


def param_spec_counts(m: ModelConfig) -> list[tuple[ParamSpec, int]]:
    """(spec, how many tensors like it the model holds), in `named_parameters()` order.

    One entry per tensor outside the blocks and per tensor of one block (of one expert), named
    as in the first block (expert) it stands for; `sum(k * s.numel for s, k in ...)` is the
    parameter count. Constant time in depth and in the number of experts.
    """
    return _counted(_runs(m))


def resident_spec_counts(m: ModelConfig, expert_shards: int = 1) -> list[tuple[ParamSpec, int]]:
    """`param_spec_counts` as one rank holds them when the routed experts of each MoE block are
    sharded over `expert_shards` ranks (expert parallelism): ceil(n_expert / expert_shards)
    experts per block; everything else replicated. 1 (the default): every expert resident."""
    if expert_shards < 1:
        raise UserError(f"expert_shards: must be a whole number >= 1, got {expert_shards!r}")
    counts = param_spec_counts(m)
    if expert_shards == 1 or not m.n_expert:
        return counts
    held = m.moe_layers * -(-m.n_expert // expert_shards)
    return [(s, held if s.expert else k) for s, k in counts]


@dataclass(frozen=True)
class ParamCount:
    """total = embedding + non_embedding (tied head counted once).

    embedding: token (+ learned position, + token-type) tables. matmul: parameters that take
    part in a matmul per token — every Linear weight plus the LM head (V·d even when tied to the
    embedding); excludes embedding lookups, norms, biases and t5's relative-bias tables.
    active: the parameters one token uses: everything but the routed experts it is not sent to
    (router, its top-k experts, the shared experts and all dense parts, embeddings included);
    = total for a dense model. per_expert: one routed expert of one MoE block (0 when dense).
    active_matmul: `matmul` less the weights of the experts a token is not routed to.
    """

    total: int
    embedding: int
    non_embedding: int
    matmul: int
    active: int
    per_expert: int
    active_matmul: int


def expert_params(m: ModelConfig, matmul_only: bool = False) -> int:
    """Parameters of one routed expert of one MoE block (weights only with matmul_only)."""
    if not m.n_expert:
        return 0
    specs = _mlp_specs(m, "e", _mlp_names(m), m.expert_ff, expert=True)
    return sum(s.numel for s in specs if s.role == "matrix" or not matmul_only)


def inactive_expert_params(m: ModelConfig, matmul_only: bool = False) -> int:
    """Parameters of the routed experts one token is not sent to, over all MoE blocks."""
    return m.moe_layers * (m.n_expert - m.n_expert_active) * expert_params(m, matmul_only)


def head_matmul_params(m: ModelConfig) -> int:
    """Matmul parameters outside the blocks: LM head (V·d, tied or not) + BERT's MLM dense (d·d);
    a gpt/bert classifier's K·d instead (applied once per sequence, counted per token: an
    over-count of K·d·(T-1) per sequence, negligible beside the blocks)."""
    if m.n_classes is not None and m.family != "t5":
        return m.n_classes * m.d_model
    head = m.vocab_size * m.d_model
    if m.family == "bert":
        head += m.d_model * m.d_model
    return head


def block_matmul_params(m: ModelConfig) -> int:
    """Linear weights inside the transformer blocks (role "matrix")."""
    return sum(k * s.numel for s, k in param_spec_counts(m) if s.role == "matrix")


def active_block_matmul_params(m: ModelConfig) -> int:
    """Block Linear weights one token multiplies: the router, its top-k routed experts and the
    shared experts of each MoE block, every weight of the dense parts."""
    return block_matmul_params(m) - inactive_expert_params(m, matmul_only=True)


def sci(n: int | float) -> str:
    """A count in at most three significant digits, "1.2e+22", for ints of any size."""
    return format(Context(prec=3).create_decimal(n).normalize(), "g")


def describe_shape(m: ModelConfig) -> str:
    """The shape fields that size a model, for messages: 'n_layer=2, d_model=64, ...'."""
    parts = [f"n_layer={m.n_layer}"]
    if m.family == "t5":
        parts.append(f"decoder_layers={m.decoder_layers}")
    parts += [f"d_model={m.d_model}", f"n_head={m.n_head}"]
    if m.n_kv_head is not None:
        parts.append(f"n_kv_head={m.n_kv_head}")
    parts.append(f"d_ff={m.ff}")
    if m.n_expert:
        parts += [f"n_expert={m.n_expert}", f"d_expert={m.expert_ff}"]
    parts += [f"vocab_size={m.vocab_size}", f"seq_len={m.seq_len}"]
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
    matmul = block_matmul_params(m) + head_matmul_params(m)
    return ParamCount(
        total=total,
        embedding=embedding,
        non_embedding=total - embedding,
        matmul=matmul,
        active=total - inactive_expert_params(m),
        per_expert=expert_params(m),
        active_matmul=matmul - inactive_expert_params(m, matmul_only=True),
    )
