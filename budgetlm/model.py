"""GPT (causal LM) and BERT-style (masked LM) transformers, read top to bottom.

nanoGPT-style: one `Block` (pre-norm attention + MLP) shared by both families, every option of
`ModelConfig` honoured (learned or rotary positions, LayerNorm or RMSNorm, GELU/ReLU/SwiGLU MLP,
biases on or off, tied embeddings, fused SDPA or eager attention, dropout, per-head width that
may differ from d_model / n_head). Parameter names here are mirrored by
`budgetlm.estimate.param_shapes`, which the tests compare name by name.

Conventions:
- The GPT LM head never has a bias (GPT-2: 124,439,808 parameters with the tied head).
- BERT mirrors HF `BertForMaskedLM` (token-type embedding of 2 rows, embedding norm, MLM head
  dense + GELU + norm + decoder with its own bias) but with pre-norm blocks and a final norm, so
  it has one norm (2·d parameters) more than HF's post-norm BERT.
- Loss = mean cross-entropy over targets != -100, computed in fp32 (`logits.float()`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from budgetlm.config import ModelConfig
from budgetlm.errors import UserError

IGNORE_INDEX = -100
N_TOKEN_TYPES = 2  # like HF BERT's type_vocab_size


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


class SelfAttention(nn.Module):
    """Multi-head self-attention; causal for GPT, bidirectional for BERT."""

    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.inner = cfg.n_head * cfg.head_dim  # may differ from d_model
        self.causal = causal
        self.eager = cfg.attention == "eager"
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.d_model, 3 * self.inner, bias=cfg.bias)  # q, k, v
        self.c_proj = nn.Linear(self.inner, cfg.d_model, bias=cfg.bias)  # residual projection
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.rotary = None
        if cfg.positions == "rope":
            if cfg.head_dim % 2:
                raise UserError(
                    f"model.d_head: positions=rope needs an even head_dim, got {cfg.head_dim}"
                )
            self.rotary = Rotary(cfg.head_dim, cfg.seq_len, cfg.rope_theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.size()
        q, k, v = self.c_attn(x).split(self.inner, dim=2)  # 3 x (B, T, H*dh)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, dh)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, dh)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, dh)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        if self.eager:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, H, T, T)
            if self.causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                att = att.masked_fill(~mask, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, H, T, dh)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal
            )  # (B, H, T, dh)
        y = y.transpose(1, 2).contiguous().view(B, T, self.inner)  # (B, T, H*dh)
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)


class MLP(nn.Module):
    """d -> ff -> d with GELU or ReLU; SwiGLU uses three matrices (Shazeer 2020)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        d, ff = cfg.d_model, cfg.ff
        if self.kind == "swiglu":
            self.w1 = nn.Linear(d, ff, bias=cfg.bias)  # gate
            self.w3 = nn.Linear(d, ff, bias=cfg.bias)  # up
            self.w2 = nn.Linear(ff, d, bias=cfg.bias)  # down (residual projection)
        else:
            self.c_fc = nn.Linear(d, ff, bias=cfg.bias)
            self.act = nn.GELU() if self.kind == "gelu" else nn.ReLU()
            self.c_proj = nn.Linear(ff, d, bias=cfg.bias)  # residual projection
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        if self.kind == "swiglu":
            h = F.silu(self.w1(x)) * self.w3(x)  # (B, T, ff)
            return self.dropout(self.w2(h))
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.ln_1 = make_norm(cfg, cfg.d_model)
        self.attn = SelfAttention(cfg, causal)
        self.ln_2 = make_norm(cfg, cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class _Transformer(nn.Module):
    """What GPT and BERT share: blocks, final norm, init, checkpointing, the loss."""

    activation_checkpointing: bool

    def _build_embeddings(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)  # token embedding
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.positions == "learned" else None

    def _embed(self, idx: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings (+ `extra`, broadcast) + learned positions: (B, T) -> (B, T, C)."""
        T = idx.size(1)
        self._check_length(T)
        x = self.wte(idx)  # (B, T, C)
        if extra is not None:
            x = x + extra
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))  # (T, C) broadcast
        return x

    def _tie_and_init(self) -> None:
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # counted once by parameters()
        self._init_weights()

    def _build_blocks(self, cfg: ModelConfig, causal: bool) -> None:
        self.blocks = nn.ModuleList([Block(cfg, causal) for _ in range(cfg.n_layer)])
        self.ln_f = make_norm(cfg, cfg.d_model)
        self.activation_checkpointing = False

    def _init_weights(self) -> None:
        """normal(0, init_std) for Linear/Embedding, zero biases; residual projections scaled
        by 1/sqrt(2·n_layer) (GPT-2, Radford et al. 2019 §2.3)."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
        resid_std = std / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("attn.c_proj.weight", "mlp.c_proj.weight", "mlp.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=resid_std)

    def _check_length(self, T: int) -> None:
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of length {T} exceeds model.seq_len={self.cfg.seq_len}")

    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.ln_f(x)

    @staticmethod
    def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over targets != -100, in fp32."""
        return F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=IGNORE_INDEX
        )


class GPT(_Transformer):
    """Decoder-only causal language model."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self._build_embeddings(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self._build_blocks(cfg, causal=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._tie_and_init()

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self._run_blocks(self.drop(self._embed(idx)))  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
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


class BertMLM(_Transformer):
    """Bidirectional encoder with a masked-LM head (mirrors HF BertForMaskedLM, pre-norm)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self._build_embeddings(cfg)
        self.wtt = nn.Embedding(N_TOKEN_TYPES, cfg.d_model)  # token type (all zeros here)
        self.ln_emb = make_norm(cfg, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self._build_blocks(cfg, causal=False)
        self.head = MLMHead(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.bias)  # decoder, bias V
        self._tie_and_init()

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self._embed(idx, extra=self.wtt.weight[0])  # token type 0 everywhere
        x = self.drop(self.ln_emb(x))
        x = self._run_blocks(x)  # (B, T, C)
        logits = self.lm_head(self.head(x))  # (B, T, V)
        if targets is None:
            return logits
        return logits, self._loss(logits, targets)


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised GPT or BertMLM for `cfg` (t5 is estimate-only)."""
    if cfg.family == "gpt":
        return GPT(cfg)
    if cfg.family == "bert":
        return BertMLM(cfg)
    raise UserError(f"model.family: {cfg.family} is supported by estimate only, not by build_model")


def n_params(model: nn.Module) -> int:
    """Parameters of `model`, tied tensors counted once."""
    return sum(p.numel() for p in model.parameters())


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
