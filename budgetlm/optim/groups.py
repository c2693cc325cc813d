"""Parameter groups: the decay / no-decay split every optimizer uses, Muon's split of hidden
matrices from everything else (embeddings, heads, norms, biases stay with AdamW), and µP's
per-group learning rates.

µP (Yang et al. 2022, "Tensor Programs V", in the form the `mup` package implements, with the
rules of its MuAdam and MuSGD) sorts parameters by which of their dimensions grow with the
width, for a model that is the base model widened m = d_model / mup_base_width times (every
width dimension, d_model, ff, head_dim and expert width, by the same m; heads, experts and
vocabulary fixed):

- hidden: 2-D, both dimensions grow (the block matrices, BERT's MLM transform dense);
- router: 2-D from the width onto a fixed number of outputs, with no output multiplier (the MoE
  router, `ROUTER_NAMES`): a matrix whose fan-in grows and fan-out does not, its init
  ∝ 1/sqrt(fan_in) as a hidden matrix's, so its logits start Θ(1) and, with the lrs below,
  move Θ(1) per step at every width;
- vector: one dimension grows (embeddings and so a tied head, an untied readout, whose input
  the model scales by 1/m, biases and norm weights of the blocks);
- fixed: none grows (the readout's and the classifier's bias).

Learning-rate multiplier m**e by optimizer (`MUP_LR_EXPONENT`): Adam-like (adam, adamw, lion,
rmsprop: entrywise-normalised updates) hidden and router lr/m, the rest lr (MuAdam: matrix-like
lr / fan-in multiplier); sgd hidden lr, router lr/m, vector lr·m, fixed lr (MuSGD: matrix-like
lr · fan-out multiplier / fan-in multiplier, vector-like lr·m). Muon's update has spectral norm
lr·sqrt(max(1, fan_out/fan_in)), which meets the spectral condition of Yang, Simon & Bernstein
2023 (Θ(sqrt(fan_out/fan_in))) for every matrix whose two dimensions grow together, so the
hidden matrices keep Muon's lr; the router's fan_out/fan_in shrinks as 1/m, so its Muon lr is
/ sqrt(m); Muon's AdamW part follows the Adam rule. Each scaled group's weight decay is divided
by the same multiplier, as MuAdam and MuSGD do for torch's lr-scaled decay: the decay per step,
lr·wd, does not change with the width. At m = 1 the groups are exactly the standard ones.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from budgetlm.config import OptimConfig
from budgetlm.config.kinds import MUP_LR_EXPONENT, NO_MUP_RULE

DEFAULT_MUON_LR = 0.02  # Keller Jordan's Muon default for hidden matrices (modded-nanogpt)

# Modules whose 2-D weight is an output projection onto the vocabulary (or a classifier): Muon is
# for hidden matrices only, so these stay with AdamW even when untied. The name is the last
# component of the owning module's path (`lm_head` in nanoGPT/HF GPT-2/T5, `decoder` in HF BERT's
# MLM head `cls.predictions.decoder`).
HEAD_NAMES = frozenset(
    {"lm_head", "head", "output", "out_head", "unembed", "unembedding", "decoder", "classifier"}
)
# Modules whose 2-D weight maps the width onto a fixed number of outputs inside the network,
# without the readout's 1/m multiplier: the MoE router (budgetlm.model.MoE.router).
ROUTER_NAMES = frozenset({"router"})

# ---------------------------------------------------------------------------------------------
# Parameter groups


def named_trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters in registration order, each once (tied weights appear once)."""
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters():  # remove_duplicate=True: tied params once
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def _embedding_ids(model: nn.Module) -> set[int]:
    """ids of nn.Embedding weights; a tied LM head *is* one of these tensors."""
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def _owner(name: str) -> str:
    """The last component of the owning module's path ('' for a top-level parameter)."""
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 else ""


def _is_head(name: str) -> bool:
    return _owner(name) in HEAD_NAMES


def _is_hidden(name: str, p: nn.Parameter, emb: set[int]) -> bool:
    """A 2-D hidden matrix: not an nn.Embedding weight (so not a tied head), not owned by a
    module named in HEAD_NAMES (an untied head)."""
    return p.ndim == 2 and id(p) not in emb and not _is_head(name)


def mup_class(name: str, p: nn.Parameter, emb: set[int]) -> str:
    """µP's class of one parameter: hidden, router, vector or fixed (module docstring)."""
    if _is_hidden(name, p, emb):
        return "router" if _owner(name) in ROUTER_NAMES else "hidden"
    if p.ndim == 1 and _is_head(name):
        return "fixed"
    return "vector"


def width_scaled(
    groups: list[dict[str, Any]], classes: dict[int, str], rule: str, width_mult: float
) -> list[dict[str, Any]]:
    """`groups` with µP's lrs: each group split where its parameters' multipliers
    m**MUP_LR_EXPONENT[rule][class] differ (registration order kept within each part), every
    part's lr, base_lr and weight decay scaled (lr·mult, wd/mult) and its multiplier kept as
    `width_lr_mult`; `groups` itself at m = 1. classes: id(param) -> mup_class."""
    if width_mult == 1.0:
        return groups
    exponent = MUP_LR_EXPONENT[rule]
    out = []
    for g in groups:
        parts: dict[float, tuple[list[nn.Parameter], list[str]]] = {}
        for p in g["params"]:
            kind = classes[id(p)]
            ps, kinds = parts.setdefault(width_mult ** exponent[kind], ([], []))
            ps.append(p)
            if kind not in kinds:
                kinds.append(kind)
        for mult, (ps, kinds) in parts.items():
            name = g["name"] if len(parts) == 1 else f"{g['name']}:{'+'.join(kinds)}"
            out.append({**g, "params": ps, "lr": g["lr"] * mult, "base_lr": g["base_lr"] * mult,
                        "weight_decay": g["weight_decay"] / mult, "name": name,
                        "width_lr_mult": mult})
    return out


def _classes(named: list[tuple[str, nn.Parameter]], emb: set[int]) -> dict[int, str]:
    return {id(p): mup_class(n, p, emb) for n, p in named}


def _check_rule(cfg: OptimConfig, width_mult: float) -> None:
    if width_mult != 1.0 and cfg.name in NO_MUP_RULE:
        raise ValueError(f"optim.name: {cfg.name} has no µP rule ({NO_MUP_RULE[cfg.name]})")


def _split_decay(
    named: list[tuple[str, nn.Parameter]], emb: set[int], decay_all: bool
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    decay, no_decay = [], []
    for _, p in named:
        if decay_all or (p.ndim >= 2 and id(p) not in emb):
            decay.append(p)
        else:
            no_decay.append(p)
    return decay, no_decay


def param_groups(
    model: nn.Module, cfg: OptimConfig, width_mult: float = 1.0
) -> list[dict[str, Any]]:
    """Decay group: tensors with ndim >= 2 that are not embeddings (nn.Embedding weights, and so
    a tied LM head). No-decay group: biases, norm weights, embeddings. `decay_all` puts every
    parameter in the decay group. Tied parameters are counted once; empty groups are dropped.
    width_mult != 1: each group split by µP's lr multipliers (`width_scaled`; sgd's rule for
    sgd, Adam's for the others).

    Each group: {"params", "weight_decay", "lr", "base_lr", "name"} (+ "width_lr_mult").
    """
    _check_rule(cfg, width_mult)
    named = named_trainable(model)
    if not named:
        raise ValueError("model has no trainable parameters")
    emb = _embedding_ids(model)
    decay, no_decay = _split_decay(named, emb, cfg.decay_all)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    for g in groups:
        g["lr"] = cfg.lr
        g["base_lr"] = cfg.lr
    groups = [g for g in groups if g["params"]]
    rule = "sgd" if cfg.name == "sgd" else "adam"
    return width_scaled(groups, _classes(named, emb), rule, width_mult)


def muon_split(
    model: nn.Module, cfg: OptimConfig, width_mult: float = 1.0
) -> tuple[list[dict], list[dict]]:
    """(muon_groups, adamw_groups) for optim.name=muon.

    Muon gets the 2-D hidden weight matrices: ndim == 2, not an nn.Embedding weight (so not a tied
    head), not owned by a module named in HEAD_NAMES (an untied head). AdamW gets the rest with the
    usual decay / no-decay split. Muon's group decays with `weight_decay` (decoupled, torch Muon).
    width_mult != 1: µP's multipliers (`width_scaled`): the router's Muon lr / sqrt(m), the rest
    unchanged.
    """
    named = named_trainable(model)
    if not named:
        raise ValueError("model has no trainable parameters")
    emb = _embedding_ids(model)
    hidden = [(n, p) for n, p in named if _is_hidden(n, p, emb)]
    hidden_ids = {id(p) for _, p in hidden}
    rest = [(n, p) for n, p in named if id(p) not in hidden_ids]
    muon_lr = cfg.muon_lr if cfg.muon_lr is not None else DEFAULT_MUON_LR
    muon_groups = []
    if hidden:
        muon_groups.append({
            "params": [p for _, p in hidden], "weight_decay": cfg.weight_decay,
            "lr": muon_lr, "base_lr": muon_lr, "name": "muon", "use_muon": True,
        })
    decay, no_decay = _split_decay(rest, emb, cfg.decay_all)
    adamw_groups = [
        {"params": ps, "weight_decay": wd, "lr": cfg.lr, "base_lr": cfg.lr, "name": nm,
         "use_muon": False}
        for ps, wd, nm in ((decay, cfg.weight_decay, "decay"), (no_decay, 0.0, "no_decay"))
        if ps
    ]
    classes = _classes(named, emb)
    return (width_scaled(muon_groups, classes, "muon", width_mult),
            width_scaled(adamw_groups, classes, "adam", width_mult))


