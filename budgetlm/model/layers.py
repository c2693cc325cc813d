"""Norms, rotary positions and self-attention (multi-head, grouped-query, sliding window).

Attention projects q, k and v with one fused Linear `c_attn` of width
(n_head + 2·kv_heads)·head_dim — q first, then k, then v — so a plain multi-head model keeps
GPT-2's (3·n_head·head_dim) layout and names; with `fused_qkv` false, with three Linears
`q_proj`, `k_proj`, `v_proj` (Llama's layout: the same math, the rows of c_attn split in
three). Grouped-query attention (Ainslie et al. 2023) lets each of the kv_heads key/value heads
serve n_head / kv_heads consecutive query heads (kv head j serves query heads j·g … j·g+g-1, as
HF's `repeat_kv`): through SDPA with `enable_gqa=True` (the math backend repeats k/v itself),
and through an explicit `repeat_interleave` in eager attention.

Sliding-window attention (Mistral): query i attends to keys j with 0 <= i - j < window. A window
shorter than the sequence is an explicit boolean mask, so SDPA (and eager) compute the full
T x T score square and mask it: the window saves no FLOPs or memory here, it changes what the
model can see. A window at least as long as the sequence is plain causal attention.

Attention logits are q·k / sqrt(head_dim); under µP (width multiplier m = `width_mult`) they
are q·k · sqrt(head_dim_base) / head_dim with head_dim_base = head_dim / m, the base model's:
the same at m = 1, and ∝ 1/head_dim as the heads widen (Yang et al. 2022 use 1/d attention:
once q and k are correlated by training, q·k grows like head_dim, not its square root).

Padding (classification batches): `keep` (B, T), False at padding, masks padding keys out of
every query's softmax through the same explicit mask, so a padded sequence's real positions see
exactly what they would unpadded.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from budgetlm.config import ModelConfig
from budgetlm.errors import UserError


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    """LayerNorm (bias only when cfg.bias) or RMSNorm (weight only)."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021), rotate-half form as in GPT-NeoX / Llama."""

    def __init__(self, head_dim: int, seq_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        t = torch.arange(seq_len, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # (T, dh/2)
        # non-persistent: derived from the config, not part of the checkpoint
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, T, dh)
        T = x.size(-2)
        cos = self.cos[:T].to(x.dtype).repeat(1, 2)  # (T, dh); in x's dtype (bf16 under autocast)
        sin = self.sin[:T].to(x.dtype).repeat(1, 2)
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
        return x * cos + rotated * sin


def window_mask(T: int, window: int, device: torch.device) -> torch.Tensor:
    """(T, T) bool, True where query i may attend key j: 0 <= i - j < window."""
    i = torch.arange(T, device=device)
    dist = i[:, None] - i[None, :]
    return (dist >= 0) & (dist < window)


class SelfAttention(nn.Module):
    """Multi-head or grouped-query self-attention; causal for GPT, bidirectional for BERT.

    qk_norm: RMSNorm over head_dim of every query and key head (one weight of head_dim each,
    `q_norm` and `k_norm`), applied before the rotary embedding (Qwen3, OLMo 2)."""

    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.inner = cfg.n_head * cfg.head_dim  # may differ from d_model
        self.kv_inner = cfg.kv_heads * cfg.head_dim
        self.causal = causal
        self.window = cfg.sliding_window if causal else None
        self.eager = cfg.attention == "eager"
        self.dropout = cfg.dropout
        # logits scale: 1/sqrt(head_dim) (None: SDPA's default), or µP's sqrt(head_dim_base) /
        # head_dim with head_dim_base = head_dim / m (see the module docstring)
        m = cfg.width_mult
        self.scale = None if m == 1.0 else math.sqrt(cfg.head_dim / m) / cfg.head_dim
        qkv_bias = cfg.bias if cfg.qkv_bias is None else cfg.qkv_bias  # Qwen2: q, k, v only
        self.c_attn = self.q_proj = self.k_proj = self.v_proj = None
        if cfg.fused_qkv:
            self.c_attn = nn.Linear(cfg.d_model, self.inner + 2 * self.kv_inner, bias=qkv_bias)
        else:
            self.q_proj = nn.Linear(cfg.d_model, self.inner, bias=qkv_bias)
            self.k_proj = nn.Linear(cfg.d_model, self.kv_inner, bias=qkv_bias)
            self.v_proj = nn.Linear(cfg.d_model, self.kv_inner, bias=qkv_bias)
        self.c_proj = nn.Linear(self.inner, cfg.d_model, bias=cfg.bias)  # residual projection
        self.q_norm = self.k_norm = None
        if cfg.qk_norm:
            self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
            self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.rotary = None
        if cfg.positions == "rope":
            if cfg.head_dim % 2:
                raise UserError(
                    f"model.d_head: positions=rope needs an even head_dim, got {cfg.head_dim}"
                )
            self.rotary = Rotary(cfg.head_dim, cfg.seq_len, cfg.rope_theta)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, C) -> q (B, H, T, dh), k and v (B, Hkv, T, dh), normed and rotated."""
        B, T, _ = x.size()
        if self.c_attn is not None:
            q, k, v = self.c_attn(x).split((self.inner, self.kv_inner, self.kv_inner), dim=2)
        else:
            assert self.q_proj is not None and self.k_proj is not None and self.v_proj is not None
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, dh)
        k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, dh)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, dh)
        if self.q_norm is not None and self.k_norm is not None:
            # in fp32 (the fused kernel wants input and weight in one dtype), back to q's dtype
            q = self.q_norm(q.float()).to(v.dtype)
            k = self.k_norm(k.float()).to(v.dtype)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        return q, k, v

    def _mask(
        self, T: int, device: torch.device, keep: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The explicit mask: (T, T) for a window shorter than T, None otherwise; with `keep`
        ((B, T) bool, False at padding) (B, 1, T, T): no query attends a padding key (a padding
        query still attends itself, so no row is empty)."""
        mask = None
        if self.window is not None and self.window < T:
            mask = window_mask(T, self.window, device)
        if keep is None:
            return mask
        if mask is None and self.causal:
            mask = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        eye = torch.eye(T, dtype=torch.bool, device=device)
        padded = keep[:, None, None, :] | eye  # (B, 1, T, T)
        return padded if mask is None else padded & mask

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C); keep: (B, T) bool, False at padding keys (None: no padding)."""
        B, T, _ = x.size()
        q, k, v = self._heads(x)
        mask = self._mask(T, x.device, keep)
        gqa = self.n_kv != self.n_head
        if self.eager:
            if gqa:
                group = self.n_head // self.n_kv
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            scale = 1.0 / math.sqrt(self.head_dim) if self.scale is None else self.scale
            att = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, T)
            if mask is None and self.causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, H, T, dh)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                is_causal=self.causal and mask is None, scale=self.scale, enable_gqa=gqa,
            )  # (B, H, T, dh)
        y = y.transpose(1, 2).contiguous().view(B, T, self.inner)  # (B, T, H*dh)
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)
