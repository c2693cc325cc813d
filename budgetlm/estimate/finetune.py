"""What a fine-tune trains and how it holds the rest (no torch import).

`lora_targets` is the one resolution of `finetune.lora.target` to module names: the trainer hands
exactly these names to `peft`, and the estimator counts adapter parameters, FLOPs and memory from
the same list (`lora_plan`, `finetune_spec_counts`).

A LoRA fine-tune (Hu et al. 2021) as `budgetlm.train.finetune.prepare_model` builds it: every
weight frozen, the frozen matrices and embeddings held in the training precision's 16-bit dtype
(bf16/fp16 runs; fp32 otherwise), norm weights in fp32 (frozen or not); on each adapted Linear an
fp32 `lora_A` (rank x d_in) and `lora_B` (d_out x rank); with `lora.train_norms` every norm
weight and with `lora.train_head` the LM head (a tied head is the token embedding) train, in
fp32. Only trainable tensors get gradients and optimizer state.

`finetune.quantize: nf4` holds the frozen block matrices as QLoRA does (Dettmers et al. 2023):
4-bit NormalFloat in blocks of 64 weights, each block's absmax constant itself quantized to
8 bits in blocks of 256 with one fp32 constant per block ("double quantization"), 4 + 8/64 +
32/(64·256) = 4.127 bits per parameter, the paper's §3 figure. It is an estimate only: the
trainer does not quantize.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from budgetlm.config import LoraConfig, ModelConfig, RunConfig
from budgetlm.errors import UserError
from budgetlm.estimate.params import (
    ParamSpec,
    param_spec_counts,
    param_specs,
    resident_spec_counts,
)

ALL_LINEAR = "all-linear"
ADAPTER_NAME = "default"  # peft's name of the one adapter: ...lora_A.default.weight
NF4_BLOCK = 64  # weights per NF4 block, each with one absmax constant
NF4_CONSTANT_BLOCK = 256  # 8-bit block constants per fp32 second-level constant
# The pieces of a transformer block in forward order: a norm, the attention's input projections,
# the attention itself, its output projection, a norm, the MLP's input projections, the MLP's
# activation (or, in an MoE block, the whole mixture), its output projection.
BLOCK_PIECES = ("ln_1", "attn_in", "attn", "attn_out", "ln_2", "mlp_in", "mlp", "mlp_out")
ATTENTION_INPUTS = frozenset({"c_attn", "q_proj", "k_proj", "v_proj"})
MLP_OUTPUTS = frozenset({"c_proj", "w2"})


@dataclass(frozen=True)
class LoraTarget:
    """One adapted Linear: its module name in the model and its input and output widths."""

    module: str
    d_in: int
    d_out: int

    @property
    def adapter_params(self) -> int:
        """lora_A (rank x d_in) + lora_B (d_out x rank) per unit of rank."""
        return self.d_in + self.d_out


def _linear_module(s: ParamSpec) -> str | None:
    """The module name of a block Linear's weight that adapters may attach to; None for anything
    else, an MoE router included (a routing decision, not a projection: `peft`'s all-linear
    leaves it alone too)."""
    if s.role != "matrix" or not s.name.endswith(".weight"):
        return None
    module = s.name[: -len(".weight")]
    return None if module.endswith(".router") else module


def _last(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def _block_linears(m: ModelConfig) -> list[LoraTarget]:
    """Every Linear inside the transformer blocks except an MoE router, in `named_parameters()`
    order."""
    out = []
    for s in param_specs(m):
        module = _linear_module(s)
        if module is not None:
            d_out, d_in = s.shape
            out.append(LoraTarget(module, d_in, d_out))
    return out


def _target_filter(lora: LoraConfig, modules: Iterable[str]) -> Callable[[str], bool]:
    """Whether `lora.target` adapts a module: all-linear, or its last name component is one of
    the targets. A target that matches none of `modules` is a UserError naming it."""
    wanted = set(lora.target)
    if ALL_LINEAR in wanted:
        return lambda _module: True
    names = {_last(module) for module in modules}
    missing = sorted(wanted - names)
    if missing:
        raise UserError(
            f"finetune.lora.target: {', '.join(missing)} matches no Linear of this model "
            f"(its names: {', '.join(sorted(names))}, or {ALL_LINEAR})"
        )
    return lambda module: _last(module) in wanted


def lora_targets(m: ModelConfig, lora: LoraConfig) -> list[LoraTarget]:
    """The Linear modules `lora.target` names: all-linear, or those whose last name component is
    one of the targets. A target that matches nothing is a UserError naming it."""
    linears = _block_linears(m)
    chosen = _target_filter(lora, (t.module for t in linears))
    return [t for t in linears if chosen(t.module)]


# ---------------------------------------------------------------------------------------------
# What trains


@dataclass(frozen=True)
class LoraPlan:
    """A LoRA fine-tune as the estimator needs it.

    rank, dropout: the adapters'. attn / mlp: the last name components of the adapted Linears
    of an attention and of an MLP (dense, routed expert or shared expert alike). norms, head:
    `lora.train_norms`, `lora.train_head`. embedding: the token embedding trains (train_head
    with a tied head), so every block's input needs a gradient. quantize: finetune.quantize.
    """

    rank: int
    dropout: float
    attn: frozenset[str]
    mlp: frozenset[str]
    norms: bool
    head: bool
    embedding: bool
    quantize: str

    def adapts(self, module: str) -> bool:
        """Whether the block Linear `module` carries an adapter."""
        return _last(module) in (self.attn if ".attn." in module else self.mlp)

    def trains(self, piece: str, m: ModelConfig) -> bool:
        """Whether a piece of a block (`BLOCK_PIECES`) holds a trainable parameter (an MoE
        block's experts and shared experts count as its MLP)."""
        if piece in ("ln_1", "ln_2"):
            return self.norms
        if piece == "attn_in":
            return bool(self.attn & ATTENTION_INPUTS)
        if piece == "attn":
            return self.norms and m.qk_norm
        if piece == "attn_out":
            return "c_proj" in self.attn
        if piece == "mlp_in":
            return bool(self.mlp - MLP_OUTPUTS)
        return piece == "mlp_out" and bool(self.mlp & MLP_OUTPUTS)

    def first_trained(self, m: ModelConfig) -> int | None:
        """Index in `BLOCK_PIECES` of the first piece of a block that trains: in the first block
        nothing before it needs a gradient (its input does not require one), and no block does
        when none trains (len(BLOCK_PIECES)). None when every block's input needs a gradient
        (the token embedding trains)."""
        if self.embedding:
            return None
        for i, piece in enumerate(BLOCK_PIECES):
            if self.trains(piece, m):
                return i
        return len(BLOCK_PIECES)

    def input_grad(self, m: ModelConfig, block: int, piece: int) -> bool:
        """Whether the input of piece index `piece` of block `block` needs a gradient."""
        first = self.first_trained(m)
        if first is None:
            return True
        if block > 0:
            return first < len(BLOCK_PIECES)
        return piece > first


def lora_plan(cfg: RunConfig) -> LoraPlan | None:
    """What a LoRA fine-tune of `cfg` trains; None for a full fine-tune. UserError for a t5
    model (budgetlm trains gpt and bert) and for a LoRA run that trains nothing."""
    ft = cfg.finetune
    if ft.method != "lora":
        return None
    m, lora = cfg.model, ft.lora
    if m.family == "t5":
        raise UserError("finetune.method: lora is estimated for gpt and bert models, not t5")
    # one block of each kind names every Linear: constant time in depth and experts
    modules = [mod for s, _k in param_spec_counts(m) if (mod := _linear_module(s)) is not None]
    chosen = _target_filter(lora, modules)
    targets = [mod for mod in modules if chosen(mod)]
    if not targets and not (lora.train_norms or lora.train_head):
        raise UserError("finetune.lora.target: names no module and nothing else trains")
    attn = frozenset(_last(mod) for mod in targets if ".attn." in mod)
    mlp = frozenset(_last(mod) for mod in targets if ".mlp." in mod)
    return LoraPlan(
        rank=lora.rank, dropout=lora.dropout, attn=attn, mlp=mlp, norms=lora.train_norms,
        head=lora.train_head, embedding=lora.train_head and m.tie_embeddings,
        quantize=ft.quantize,
    )


def is_norm(s: ParamSpec) -> bool:
    """A weight or bias of a norm module (what `lora.train_norms` trains): ln_1, ln_2, ln_f,
    BERT's ln_emb and head.norm, qk_norm's q_norm and k_norm."""
    module = _last(s.name.rsplit(".", 1)[0])
    return module.startswith("ln_") or module.endswith("norm")


@dataclass(frozen=True)
class BlockLinear:
    """One Linear of a block: its module name (in the first block of its kind), widths, the
    piece of the block it is in (index in `BLOCK_PIECES`; an MoE router reads what the MLP's
    input projections read) and how many times one token multiplies it (top-k of the routed
    experts, every shared expert)."""

    module: str
    d_in: int
    d_out: int
    piece: int
    active: float


def block_linears(m: ModelConfig, moe: bool = False) -> list[BlockLinear]:
    """Every Linear of one dense block (one MoE block with `moe`), in forward order."""
    first = m.n_layer - m.moe_layers if moe else 0
    run = m.moe_layers if moe else m.n_layer - m.moe_layers
    prefix = f"blocks.{first}."
    out = []
    for s, k in param_spec_counts(m):
        if s.role != "matrix" or not s.name.startswith(prefix) or not run:
            continue
        module = s.name[: -len(".weight")]
        last = _last(module)
        if ".attn." in module:
            piece = "attn_in" if last in ATTENTION_INPUTS else "attn_out"
        else:
            piece = "mlp_out" if last in MLP_OUTPUTS else "mlp_in"
        d_out, d_in = s.shape
        active = m.n_expert_active if s.expert else k / run
        out.append(BlockLinear(module, d_in, d_out, BLOCK_PIECES.index(piece), active))
    return out


TOKEN_TABLES = ("wte.weight", "shared.weight")  # the token embedding a tied head is


def _head_modules(m: ModelConfig) -> set[str]:
    """Modules `lora.train_head` trains: the LM head and every Linear outside the blocks
    (BERT's MLM transform)."""
    return {"lm_head"} | {s.name.rsplit(".", 1)[0] for s, _k in resident_spec_counts(m)
                          if s.role == "head"}


def _base_trains(s: ParamSpec, plan: LoraPlan, heads: set[str]) -> bool:
    """Whether a model parameter trains in a LoRA fine-tune: a norm's with train_norms; with
    train_head the head's, and with a tied head the token embedding it is."""
    if plan.norms and is_norm(s):
        return True
    if not plan.head:
        return False
    return s.name.rsplit(".", 1)[0] in heads or (plan.embedding and s.name in TOKEN_TABLES)


def adapter_specs(module: str, d_in: int, d_out: int, rank: int,
                  expert: bool = False) -> list[ParamSpec]:
    """peft's lora_A (rank x d_in) and lora_B (d_out x rank) of one adapted Linear."""
    return [
        ParamSpec(f"{module}.lora_A.{ADAPTER_NAME}.weight", (rank, d_in), "adapter", expert),
        ParamSpec(f"{module}.lora_B.{ADAPTER_NAME}.weight", (d_out, rank), "adapter", expert),
    ]


def finetune_spec_counts(
    cfg: RunConfig, expert_shards: int = 1
) -> tuple[list[tuple[ParamSpec, int]], list[tuple[ParamSpec, int]]]:
    """(trainable, frozen) tensors of `cfg` as it trains, as (spec, count) in
    `named_parameters()` order (adapters after the weight they adapt); with the routed experts
    sharded over `expert_shards` ranks, those one rank holds. A full fine-tune trains
    everything."""
    m = cfg.model
    counts = resident_spec_counts(m, expert_shards)
    plan = lora_plan(cfg)
    if plan is None:
        return counts, []
    chosen = _target_filter(cfg.finetune.lora, (module for s, _k in counts
                                                if (module := _linear_module(s)) is not None))
    heads = _head_modules(m)
    trainable: list[tuple[ParamSpec, int]] = []
    frozen: list[tuple[ParamSpec, int]] = []
    for s, k in counts:
        module = _linear_module(s)
        (trainable if _base_trains(s, plan, heads) else frozen).append((s, k))
        if module is not None and chosen(module):
            d_out, d_in = s.shape
            trainable += [(a, k) for a in adapter_specs(module, d_in, d_out, plan.rank, s.expert)]
    return trainable, frozen


@dataclass(frozen=True)
class TrainableCount:
    """Parameters of a config as it trains, counted as peft's `get_nb_trainable_parameters()`
    counts them: total = every parameter (adapters included), trainable = those that get
    gradients; adapters = the LoRA matrices (0 for a full fine-tune)."""

    total: int
    trainable: int
    adapters: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


def trainable_count(cfg: RunConfig) -> TrainableCount:
    """Total, trainable and adapter parameters of `cfg` (full: all of them train)."""
    trainable, frozen = finetune_spec_counts(cfg)
    n_trainable = sum(k * s.numel for s, k in trainable)
    adapters = sum(k * s.numel for s, k in trainable if s.role == "adapter")
    return TrainableCount(n_trainable + sum(k * s.numel for s, k in frozen), n_trainable,
                          adapters)


def nf4_bytes(numel: int) -> int:
    """Bytes of one tensor in QLoRA's NF4 with double quantization: 4 bits per weight, an 8-bit
    constant per block of NF4_BLOCK weights, an fp32 constant per NF4_CONSTANT_BLOCK blocks."""
    blocks = math.ceil(numel / NF4_BLOCK)
    return math.ceil(numel / 2) + blocks + 4 * math.ceil(blocks / NF4_CONSTANT_BLOCK)


def frozen_bytes(frozen: list[tuple[ParamSpec, int]], precision: str, quantize: str) -> int:
    """Bytes of the frozen tensors: norms in fp32, the rest in the training precision's 16-bit
    dtype (4 bytes in fp32); with quantize nf4 the block matrices in NF4 (`nf4_bytes`)."""
    held = 4 if precision == "fp32" else 2
    total = 0
    for s, k in frozen:
        if quantize == "nf4" and s.role == "matrix":
            total += k * nf4_bytes(s.numel)
        else:
            total += k * s.numel * (4 if is_norm(s) else held)
    return total
