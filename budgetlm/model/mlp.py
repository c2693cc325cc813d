"""The MLP of a block: dense (GELU, GELU's tanh approximation, ReLU or SwiGLU) or a mixture of
experts.

MoE (Shazeer et al. 2017; Mixtral / Qwen-MoE routing): a router Linear(d -> n_expert, no bias),
softmax over its logits, the top-k experts per token with their probabilities renormalized to
sum 1, plus `n_shared_expert` experts every token passes through (DeepSeekMoE). Each expert is
an MLP of the config's `mlp` type with hidden width `expert_ff`.

Dropless: tokens are sorted by expert and every expert computes exactly the tokens routed to it
(index_select in, index_add back); there is no capacity factor and no token is dropped.

Load balancing (Switch Transformer, Fedus et al. 2022, eq. 4): aux = n_expert · Σ_e f_e · P_e,
f_e the share of the N·k routed (token, expert) pairs that went to e, P_e the mean router
probability of e over the N tokens; 1.0 when perfectly balanced. The model adds
router_aux_coef · Σ over MoE layers of aux to the training loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from budgetlm.config import ModelConfig


def _activation(kind: str) -> nn.Module:
    if kind == "gelu":
        return nn.GELU()
    if kind == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    return nn.ReLU()


class MLP(nn.Module):
    """d -> ff -> d with GELU, GELU's tanh approximation (GPT-2's `gelu_new`) or ReLU; SwiGLU
    uses three matrices (Shazeer 2020).

    `ff` defaults to cfg.ff; `dropout` to cfg.dropout (experts pass 0: the MoE drops once)."""

    def __init__(self, cfg: ModelConfig, ff: int | None = None, dropout: float | None = None):
        super().__init__()
        self.kind = cfg.mlp
        d, ff = cfg.d_model, cfg.ff if ff is None else ff
        if self.kind == "swiglu":
            self.w1 = nn.Linear(d, ff, bias=cfg.bias)  # gate
            self.w3 = nn.Linear(d, ff, bias=cfg.bias)  # up
            self.w2 = nn.Linear(ff, d, bias=cfg.bias)  # down (residual projection)
        else:
            self.c_fc = nn.Linear(d, ff, bias=cfg.bias)
            self.act = _activation(self.kind)
            self.c_proj = nn.Linear(ff, d, bias=cfg.bias)  # residual projection
        self.dropout = nn.Dropout(cfg.dropout if dropout is None else dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C)
        if self.kind == "swiglu":
            h = F.silu(self.w1(x)) * self.w3(x)  # (..., ff)
            return self.dropout(self.w2(h))
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (..., C)


def route(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Router logits (N, E) -> (probs (N, E) fp32, top-k weights (N, k) summing to 1,
    top-k expert indices (N, k))."""
    probs = F.softmax(logits.float(), dim=-1)
    weights, experts = probs.topk(k, dim=-1)
    return probs, weights / weights.sum(dim=-1, keepdim=True), experts


def balance_loss(probs: torch.Tensor, experts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's n_expert · Σ_e f_e · P_e (1.0 when balanced)."""
    n_expert = probs.size(-1)
    f = counts.to(probs.dtype) / experts.numel()  # share of routed pairs per expert
    return n_expert * (f * probs.mean(dim=0)).sum()


class MoE(nn.Module):
    """Router + routed experts + shared experts; forward returns (output, aux loss, counts)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.k = cfg.n_expert_active
        self.router = nn.Linear(cfg.d_model, cfg.n_expert, bias=False)
        self.experts = nn.ModuleList(
            MLP(cfg, cfg.expert_ff, dropout=0.0) for _ in range(cfg.n_expert)
        )
        self.shared = nn.ModuleList(
            MLP(cfg, cfg.expert_ff, dropout=0.0) for _ in range(cfg.n_shared_expert)
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, C)
        probs, weights, experts = route(self.router(flat), self.k)  # (N, E), (N, k), (N, k)
        pairs = experts.reshape(-1)  # (N*k,) expert of each routed (token, slot) pair
        order = torch.argsort(pairs, stable=True)  # pairs grouped by expert
        counts = torch.bincount(pairs, minlength=len(self.experts))  # (E,)
        tokens = order // self.k  # token of each sorted pair
        xs = flat.index_select(0, tokens)  # (N*k, C)
        outs = [
            expert(chunk)
            for expert, chunk in zip(self.experts, xs.split(counts.tolist()), strict=True)
        ]
        ys = torch.cat(outs)  # (N*k, C)
        ys = ys * weights.reshape(-1)[order].to(ys.dtype)[:, None]
        out = flat.new_zeros(flat.size(0), shape[-1], dtype=ys.dtype).index_add_(0, tokens, ys)
        for expert in self.shared:
            out = out + expert(flat)
        aux = balance_loss(probs, experts, counts)
        return self.dropout(out.view(shape)), aux, counts.detach()
