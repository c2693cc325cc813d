"""Sequence classification heads for GPT and BERT: pool the final hidden states, then one
Linear(d_model, n_classes) named `classifier` (weight and bias).

Pooling (`ModelConfig.pooled`): `last`, the last non-padding position (a causal model's only
position that has read the whole text; GPT's default, as in HF GPT2ForSequenceClassification);
`mean`, the mean over the non-padding positions (BERT's default; Reimers & Gurevych 2019 found
mean pooling the better sentence vector); `cls`, the first position (BERT's [CLS] position,
Devlin et al. 2019). Padding is `keep` False (the model's PAD_ID); sequences are padded on the
right, and every sequence holds at least one real token.

T5 has no head: it generates the label words (`budgetlm.train.classify`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from budgetlm.config import ModelConfig

CLASSIFIER = "classifier"  # the head's module name: classifier.weight, classifier.bias


def build_classifier(cfg: ModelConfig) -> nn.Linear | None:
    """Linear(d_model, n_classes) with a bias when `cfg.n_classes` is set (gpt, bert); None
    otherwise (an LM, or t5, which generates its labels)."""
    if cfg.n_classes is None or cfg.family == "t5":
        return None
    return nn.Linear(cfg.d_model, cfg.n_classes, bias=True)


def pool(x: torch.Tensor, keep: torch.Tensor | None, how: str) -> torch.Tensor:
    """(B, T, C) hidden states -> (B, C): `last` non-padding position, `mean` over the
    non-padding positions, or `cls` (the first position). keep: (B, T) bool, None: no
    padding."""
    if how == "cls":
        return x[:, 0]
    if keep is None:
        keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if how == "mean":
        w = keep.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
        return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
    if how == "last":
        last = keep.long().sum(dim=1).clamp_min(1) - 1  # (B,) right padding
        return x[torch.arange(x.size(0), device=x.device), last]
    raise ValueError(f"unknown pooling {how!r}")


def classify(
    head: nn.Module, x: torch.Tensor, keep: torch.Tensor | None, how: str,
    labels: torch.Tensor | None, scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class logits (B, K) of the pooled states and, with `labels` (B,), the mean cross-entropy
    (in fp32). `scale` multiplies the pooled states (µP's readout multiplier 1/m)."""
    pooled = pool(x, keep, how)  # (B, C)
    logits = head(pooled if scale == 1.0 else pooled * scale)
    if labels is None:
        return logits, None
    return logits, F.cross_entropy(logits.float(), labels)
