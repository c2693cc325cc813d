"""Decoder-only causal language model (GPT-2 shape by default; Llama, Mistral, Qwen and
mixture-of-experts shapes through the config). The LM head never has a bias (GPT-2:
124,439,808 parameters with the tied head). With `n_classes` set it is a classifier: no LM head,
`classifier` over the last non-padding position (or as `pooling` says)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from budgetlm.config import ModelConfig
from budgetlm.model.transformer import TransformerBase


class GPT(TransformerBase):
    """Decoder-only causal language model."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self._build_embeddings(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self._build_blocks(cfg, causal=True)
        if self._build_head(cfg):
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._tie_and_init()

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """LM: logits (B, T, V) (and the loss of `targets` (B, T)); classifier: class logits
        (B, K) (and the loss of `targets`, labels (B,)); PAD_ID marks a classifier's padding."""
        keep = self._keep(idx)
        x = self._run_blocks(self.drop(self._embed(idx)), keep)  # (B, T, C)
        if self.classifier is not None:
            return self._classify(x, keep, targets)
        assert self.lm_head is not None
        logits = self.lm_head(self._readout_in(x))  # (B, T, V)
        if targets is None:
            return logits
        return logits, self._loss(logits, targets)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
    ) -> torch.Tensor:
        """Sample `max_new_tokens` continuations of `idx` (B, T0); context cropped to seq_len."""
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.cfg.seq_len else idx[:, -self.cfg.seq_len :]
            logits = self(idx_cond)[:, -1, :] / temperature  # (B, V)
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = float("-inf")
            probs = F.softmax(logits.float(), dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
