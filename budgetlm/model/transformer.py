"""What GPT and BERT share: the pre-norm block, final norm, init (standard or µP), the µP
readout multiplier, checkpointing, the loss, and the mixture-of-experts bookkeeping (aux loss
into the training loss, tokens per expert)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from budgetlm.config import ModelConfig
from budgetlm.model.classify import build_classifier, classify
from budgetlm.model.layers import SelfAttention, make_norm
from budgetlm.model.mlp import MLP, MoE

IGNORE_INDEX = -100
# An input id marking padding (classification batches, t5 encoder inputs): not attended to,
# not pooled; the model embeds it as id 0.
PAD_ID = -1

# Linear weights on the residual path, scaled by 1/sqrt(2·n_layer) at init: attention's c_proj
# and every MLP's down projection (dense, routed or shared expert).
RESIDUAL_SUFFIXES = ("c_proj.weight", "w2.weight")

BlockOut = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    forward returns (x, aux, counts): the MoE load-balancing loss and tokens per expert of an
    MoE block, None for a dense one (returned, not stored, so checkpointing's recompute in
    backward leaves them alone)."""

    def __init__(self, cfg: ModelConfig, causal: bool, moe: bool = False):
        super().__init__()
        self.ln_1 = make_norm(cfg, cfg.d_model)
        self.attn = SelfAttention(cfg, causal)
        self.ln_2 = make_norm(cfg, cfg.d_model)
        self.mlp: nn.Module = MoE(cfg) if moe else MLP(cfg)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> BlockOut:
        x = x + self.attn(self.ln_1(x), keep)  # (B, T, C); keep: (B, T) False at padding
        if isinstance(self.mlp, MoE):
            y, aux, counts = self.mlp(self.ln_2(x))
            return x + y, aux, counts
        return x + self.mlp(self.ln_2(x)), None, None


class TransformerBase(nn.Module):
    """Blocks, final norm, init, checkpointing, the loss; subclassed by GPT and BertMLM.

    After a training forward, `aux_loss` holds Σ over MoE blocks of the balancing loss (None for
    a dense model); `expert_load` accumulates tokens per expert of every MoE block over training
    forwards until `take_expert_load` reads and clears it."""

    activation_checkpointing: bool

    def _build_embeddings(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)  # token embedding
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.positions == "learned" else None

    def _embed(self, idx: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings (+ `extra`, broadcast) + learned positions: (B, T) -> (B, T, C)."""
        T = idx.size(1)
        self._check_length(T)
        x = self.wte(idx.clamp_min(0) if self.classifier is not None else idx)  # (B, T, C)
        if extra is not None:
            x = x + extra
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))  # (T, C) broadcast
        return x

    def _build_head(self, cfg: ModelConfig) -> bool:
        """The classifier of a classification model (`cfg.n_classes`); True when there is
        none and the caller builds its LM head."""
        self.classifier = build_classifier(cfg)
        self.lm_head: nn.Module | None = None
        return self.classifier is None

    def _keep(self, idx: torch.Tensor) -> torch.Tensor | None:
        """(B, T) bool, False at PAD_ID: a classifier's padding mask (None for an LM, whose
        batches are never padded)."""
        return idx != PAD_ID if self.classifier is not None else None

    def _classify(
        self, x: torch.Tensor, keep: torch.Tensor | None, labels: torch.Tensor | None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Class logits (B, K) of the pooled states, and with `labels` (B,) the loss (mean
        cross-entropy in fp32, plus the MoE balancing loss in training)."""
        assert self.classifier is not None
        logits, loss = classify(self.classifier, x, keep, self.cfg.pooled, labels,
                                scale=1.0 / self.cfg.width_mult)
        if loss is None:
            return logits
        if self.training and self.aux_loss is not None and self.cfg.router_aux_coef > 0:
            loss = loss + self.cfg.router_aux_coef * self.aux_loss
        return logits, loss

    def _readout_in(self, x: torch.Tensor) -> torch.Tensor:
        """The LM head's input: x, or x · (1/m) under µP (width multiplier m): the logits / m
        of Yang et al. 2022's output multiplier, without a second (B, T, V) tensor."""
        m = self.cfg.width_mult
        return x if m == 1.0 else x * (1.0 / m)

    def _tie_and_init(self) -> None:
        if self.cfg.tie_embeddings and self.lm_head is not None:
            self.lm_head.weight = self.wte.weight  # counted once by parameters()
        self._init_weights()

    def _build_blocks(self, cfg: ModelConfig, causal: bool) -> None:
        moe_from = cfg.n_layer - cfg.moe_layers  # the first n_dense_layer blocks stay dense
        self.blocks = nn.ModuleList(
            [Block(cfg, causal, moe=i >= moe_from) for i in range(cfg.n_layer)]
        )
        self.ln_f = make_norm(cfg, cfg.d_model)
        self.activation_checkpointing = False
        self.aux_loss: torch.Tensor | None = None
        self.expert_load: list[torch.Tensor] = []

    def _init_weights(self) -> None:
        """normal(0, init_std) for Linear/Embedding, zero biases; residual projections scaled
        by 1/sqrt(2·n_layer) (GPT-2, Radford et al. 2019 §2.3).

        µP (width multiplier m = cfg.width_mult): every Linear but the readout (`lm_head`,
        `classifier`) draws with init_std/sqrt(m), variance ∝ 1/fan_in as the base model's
        (Yang et al. 2022's hidden weights); embeddings and the readout keep init_std (the
        readout's input is scaled by 1/m in the forward instead, as the `mup` package's
        MuReadout does). At m = 1 the same draws in the
        same order as standard parametrization."""
        std = self.cfg.init_std
        hidden_std = std / math.sqrt(self.cfg.width_mult)
        readout = {id(m) for m in (self.lm_head, self.classifier) if m is not None}
        for module in self.modules():
            if isinstance(module, nn.Linear):
                w_std = std if id(module) in readout else hidden_std
                nn.init.normal_(module.weight, mean=0.0, std=w_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
        resid_std = hidden_std / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.startswith("blocks.") and name.endswith(RESIDUAL_SUFFIXES):
                nn.init.normal_(p, mean=0.0, std=resid_std)

    def _check_length(self, T: int) -> None:
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of length {T} exceeds model.seq_len={self.cfg.seq_len}")

    def _run_blocks(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) through the blocks and the final norm; keep: the padding mask."""
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        aux_total: torch.Tensor | None = None
        loads: list[torch.Tensor] = []
        for block in self.blocks:
            if recompute:
                x, aux, counts = checkpoint(block, x, keep, use_reentrant=False)
            else:
                x, aux, counts = block(x, keep)
            if aux is not None and counts is not None:
                aux_total = aux if aux_total is None else aux_total + aux
                loads.append(counts)
        self.aux_loss = aux_total
        if self.training and loads:
            self._add_load(loads)
        return self.ln_f(x)

    def _add_load(self, loads: list[torch.Tensor]) -> None:
        if not self.expert_load:
            self.expert_load = [torch.zeros_like(c) for c in loads]
        self.expert_load = [a + c for a, c in zip(self.expert_load, loads, strict=True)]

    def take_expert_load(self) -> list[list[int]]:
        """Tokens routed to each expert of each MoE block since the last call (training
        forwards only; a token counts once per expert it is routed to); [] for a dense model."""
        load = [[int(n) for n in c.tolist()] for c in self.expert_load]
        self.expert_load = []
        return load

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over targets != -100, in fp32; in training, plus router_aux_coef
        times the MoE balancing loss."""
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=IGNORE_INDEX
        )
        if self.training and self.aux_loss is not None and self.cfg.router_aux_coef > 0:
            loss = loss + self.cfg.router_aux_coef * self.aux_loss
        return loss
