"""BERT-style masked LM: mirrors HF `BertForMaskedLM` (token-type embedding of 2 rows,
embedding norm, MLM head dense + GELU + norm + decoder with its own bias) but with pre-norm
blocks and a final norm, so it has one norm (2·d parameters) more than HF's post-norm BERT. With
`n_classes` set it is a classifier: no MLM head, `classifier` over the mean of the non-padding
positions (or the first, `pooling: cls`)."""

from __future__ import annotations

import torch
import torch.nn as nn

from budgetlm.config import ModelConfig
from budgetlm.model.layers import make_norm
from budgetlm.model.transformer import IGNORE_INDEX, TransformerBase

N_TOKEN_TYPES = 2  # like HF BERT's type_vocab_size


class MLMHead(nn.Module):
    """BERT's prediction-head transform: dense d->d, GELU, norm (HF BertPredictionHeadTransform)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.act = nn.GELU()
        self.norm = make_norm(cfg, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        # fp32 into the norm, as autocast does for LayerNorm (and RMSNorm's fused kernel needs)
        return self.norm(self.act(self.dense(x)).float())


class BertMLM(TransformerBase):
    """Bidirectional encoder with a masked-LM head (mirrors HF BertForMaskedLM, pre-norm)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self._build_embeddings(cfg)
        self.wtt = nn.Embedding(N_TOKEN_TYPES, cfg.d_model)  # token type (all zeros here)
        self.ln_emb = make_norm(cfg, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self._build_blocks(cfg, causal=False)
        self.head: MLMHead | None = None
        if self._build_head(cfg):
            self.head = MLMHead(cfg)
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.bias)  # decoder
        self._tie_and_init()

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """MLM: logits (B, T, V) (and the loss of `targets` (B, T)); classifier: class logits
        (B, K) (and the loss of `targets`, labels (B,)); PAD_ID marks a classifier's padding."""
        keep = self._keep(idx)
        x = self._embed(idx, extra=self.wtt.weight[0])  # token type 0 everywhere
        x = self.drop(self.ln_emb(x))
        x = self._run_blocks(x, keep)  # (B, T, C)
        if self.classifier is not None:
            return self._classify(x, keep, targets)
        assert self.head is not None and self.lm_head is not None
        logits = self.lm_head(self._readout_in(self.head(x)))  # (B, T, V)
        if targets is None:
            return logits
        return logits, self._loss(logits, targets)


def mlm_mask(
    tokens: torch.Tensor,
    mask_rate: float,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (Devlin et al. 2019 §3.1): select `mask_rate` of the positions; of those, 80%
    become `mask_id`, 10% a random token in [0, vocab_size), 10% stay. Targets are the original
    tokens at selected positions and -100 elsewhere; at least one position is selected."""
    dev = generator.device if generator is not None else tokens.device

    def rand() -> torch.Tensor:
        return torch.rand(tokens.shape, generator=generator, device=dev).to(tokens.device)

    selected = rand() < mask_rate
    if not bool(selected.any()):
        pos = torch.randint(tokens.numel(), (1,), generator=generator, device=dev)
        selected.view(-1)[pos.to(tokens.device)] = True
    action = rand()
    replace_mask = selected & (action < 0.8)
    replace_random = selected & (action >= 0.8) & (action < 0.9)
    random_tokens = torch.randint(
        vocab_size, tokens.shape, generator=generator, device=dev, dtype=tokens.dtype
    ).to(tokens.device)
    inputs = tokens.clone()
    inputs[replace_mask] = mask_id
    inputs[replace_random] = random_tokens[replace_random]
    targets = torch.where(selected, tokens, torch.full_like(tokens, IGNORE_INDEX))
    return inputs, targets
