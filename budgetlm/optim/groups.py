"""Parameter groups: the decay / no-decay split every optimizer uses, and Muon's split of hidden
matrices from everything else (embeddings, heads, norms, biases stay with AdamW)."""

from __future__ import annotations

from typing import Any

from torch import nn

from budgetlm.config import OptimConfig

DEFAULT_MUON_LR = 0.02  # Keller Jordan's Muon default for hidden matrices (modded-nanogpt)

# Modules whose 2-D weight is an output projection onto the vocabulary (or a classifier): Muon is
# for hidden matrices only, so these stay with AdamW even when untied. The name is the last
# component of the owning module's path (`lm_head` in nanoGPT/HF GPT-2/T5, `decoder` in HF BERT's
# MLM head `cls.predictions.decoder`).
HEAD_NAMES = frozenset(
    {"lm_head", "head", "output", "out_head", "unembed", "unembedding", "decoder", "classifier"}
)


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


def _is_head(name: str) -> bool:
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2] in HEAD_NAMES


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


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Decay group: tensors with ndim >= 2 that are not embeddings (nn.Embedding weights, and so
    a tied LM head). No-decay group: biases, norm weights, embeddings. `decay_all` puts every
    parameter in the decay group. Tied parameters are counted once; empty groups are dropped.

    Each group: {"params", "weight_decay", "lr", "base_lr", "name"}.
    """
    named = named_trainable(model)
    if not named:
        raise ValueError("model has no trainable parameters")
    decay, no_decay = _split_decay(named, _embedding_ids(model), cfg.decay_all)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    for g in groups:
        g["lr"] = cfg.lr
        g["base_lr"] = cfg.lr
    return [g for g in groups if g["params"]]


def muon_split(model: nn.Module, cfg: OptimConfig) -> tuple[list[dict], list[dict]]:
    """(muon_groups, adamw_groups) for optim.name=muon.

    Muon gets the 2-D hidden weight matrices: ndim == 2, not an nn.Embedding weight (so not a tied
    head), not owned by a module named in HEAD_NAMES (an untied head). AdamW gets the rest with the
    usual decay / no-decay split. Muon's group decays with `weight_decay` (decoupled, torch Muon).
    """
    named = named_trainable(model)
    if not named:
        raise ValueError("model has no trainable parameters")
    emb = _embedding_ids(model)
    hidden = [
        (n, p) for n, p in named if p.ndim == 2 and id(p) not in emb and not _is_head(n)
    ]
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
    return muon_groups, adamw_groups


