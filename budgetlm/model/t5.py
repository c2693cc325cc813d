"""T5: an encoder-decoder transformer (Raffel et al. 2020) that mirrors Hugging Face
`T5ForConditionalGeneration` name by name (the names `budgetlm.estimate.param_shapes` lists):

    shared (token table), encoder.block.{i}.layer.0.{SelfAttention.{q,k,v,o},layer_norm},
    encoder.block.{i}.layer.1.{DenseReluDense.{wi | wi_0,wi_1},wo,layer_norm},
    encoder.final_layer_norm; decoder.block.{i}.layer.{0 self, 1 EncDecAttention, 2 FF};
    block 0 of each stack holds `SelfAttention.relative_attention_bias` (buckets x heads),
    shared by the stack's blocks; lm_head only when the embeddings are untied.

Pre-norm blocks: x + dropout(attn(norm(x))), the MLP likewise; the norm is T5's RMSNorm
(weight only) with norm=rmsnorm, LayerNorm (with a bias when `bias`) with norm=layernorm, and
every Linear has a bias only when `bias` (T5 has none). Attention scores are not scaled by
1/sqrt(d_head): T5 folds that into the init of q (HF `_init_weights`, used here with factor 1;
`init_std` is GPT's and BERT's). Relative positions: the (query, key) offset in
`relative_buckets` buckets (half exact, half logarithmic up to a distance of 128),
bidirectional in the encoder, causal in the decoder (T5's `_relative_position_bucket`); scores
get the bucket's learned bias per head. `positions: learned` adds a (seq_len x d) table per
stack (`embed_positions`, not in HF T5); rope is refused.

MLP (`DenseReluDense`): mlp=relu is T5's wi -> ReLU -> wo (Raffel et al. 2020, what t5-base
uses); gelu / gelu_tanh the same with that activation (HF "gelu" / "gelu_new"); swiglu is the
gated form of T5 v1.1 with SiLU, silu(wi_0 x) * wi_1 x -> wo (HF "gated-silu", Shazeer 2020).

Ids: inputs (B, T_in) may hold `PAD_ID` (-1) as padding: embedded as id 0, never attended to,
neither by the encoder nor by cross-attention. The decoder reads the targets shifted right
behind the decoder start id, which is the last id of the vocabulary (`decoder_start_id`;
`budgetlm.data.spans.t5_vocabulary` reserves it); ignored targets (-100) become that id too
(their outputs are not in the loss and, the decoder being causal, change no other output).
With tied embeddings the decoder output is scaled by d_model**-0.5 before the head, as HF does.
Loss = mean fp32 cross-entropy over targets != -100.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from budgetlm.config import ModelConfig
from budgetlm.errors import UserError
from budgetlm.model.layers import make_norm
from budgetlm.model.transformer import IGNORE_INDEX, PAD_ID

MAX_DISTANCE = 128  # T5's relative_attention_max_distance


def decoder_start_id(cfg: ModelConfig) -> int:
    """The id the decoder starts from: the last id of the vocabulary."""
    return cfg.vocab_size - 1


def relative_buckets(rel: torch.Tensor, bidirectional: bool, n_buckets: int,
                     max_distance: int = MAX_DISTANCE) -> torch.Tensor:
    """T5's `_relative_position_bucket` of key - query offsets `rel` (int64)."""
    out = torch.zeros_like(rel)
    if bidirectional:
        n_buckets //= 2
        out = out + (rel > 0).long() * n_buckets
        rel = rel.abs()
    else:
        rel = -torch.clamp(rel, max=0)
    exact = n_buckets // 2
    far = exact + (
        torch.log(rel.float() / exact) / math.log(max_distance / exact) * (n_buckets - exact)
    ).long()
    far = torch.clamp(far, max=n_buckets - 1)
    return out + torch.where(rel < exact, rel, far)


class T5Attention(nn.Module):
    """q, k, v, o (no score scaling); block 0's self-attention holds the relative-bias table.

    forward(x, kv, mask): `mask` is an additive float bias (eager) or a boolean keep-mask
    (SDPA), broadcast to (B, H, T_q, T_k), or None."""

    def __init__(self, cfg: ModelConfig, relative: bool, causal: bool, eager: bool):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        inner = cfg.n_head * cfg.head_dim
        self.q = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.k = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.v = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.o = nn.Linear(inner, cfg.d_model, bias=cfg.bias)
        self.relative_attention_bias = (
            nn.Embedding(cfg.relative_buckets, cfg.n_head) if relative else None
        )
        self.n_buckets, self.causal, self.eager = cfg.relative_buckets, causal, eager
        self.dropout = cfg.dropout
        self.attn_dropout = nn.Dropout(cfg.dropout)

    def position_bias(self, tq: int, tk: int, device: torch.device) -> torch.Tensor:
        """(1, H, tq, tk) learned bias of each (query, key) offset's bucket."""
        assert self.relative_attention_bias is not None
        rel = torch.arange(tk, device=device)[None, :] - torch.arange(tq, device=device)[:, None]
        buckets = relative_buckets(rel, not self.causal, self.n_buckets)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H*dh) -> (B, H, T, dh)
        return x.view(x.size(0), x.size(1), self.n_head, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        src = x if kv is None else kv
        q, k, v = self._split(self.q(x)), self._split(self.k(src)), self._split(self.v(src))
        if self.eager:
            scores = q @ k.transpose(-2, -1)  # (B, H, T, Tk), unscaled as in T5
            if mask is not None:
                scores = scores + mask
            att = self.attn_dropout(F.softmax(scores.float(), dim=-1).to(v.dtype))
            y = att @ v
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                is_causal=self.causal and kv is None and mask is None, scale=1.0,
            )
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


class T5DenseFF(nn.Module):
    """wi -> activation -> dropout -> wo, or gated (swiglu): silu(wi_0) * wi_1 -> wo."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, f, b = cfg.d_model, cfg.ff, cfg.bias
        self.gated = cfg.mlp == "swiglu"
        if self.gated:
            self.wi_0 = nn.Linear(d, f, bias=b)
            self.wi_1 = nn.Linear(d, f, bias=b)
        else:
            self.wi = nn.Linear(d, f, bias=b)
        self.wo = nn.Linear(f, d, bias=b)
        acts = {"relu": nn.ReLU(), "gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh")}
        self.act = nn.SiLU() if self.gated else acts[cfg.mlp]
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(self.dropout(h))


class T5LayerSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, relative: bool, causal: bool, eager: bool):
        super().__init__()
        self.SelfAttention = T5Attention(cfg, relative, causal, eager)
        self.layer_norm = make_norm(cfg, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return x + self.dropout(self.SelfAttention(self.layer_norm(x), mask=mask))


class T5LayerCrossAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, eager: bool):
        super().__init__()
        self.EncDecAttention = T5Attention(cfg, relative=False, causal=False, eager=eager)
        self.layer_norm = make_norm(cfg, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, enc: torch.Tensor, mask: torch.Tensor | None
                ) -> torch.Tensor:
        return x + self.dropout(self.EncDecAttention(self.layer_norm(x), kv=enc, mask=mask))


class T5LayerFF(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.DenseReluDense = T5DenseFF(cfg)
        self.layer_norm = make_norm(cfg, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.DenseReluDense(self.layer_norm(x)))


class T5Block(nn.Module):
    """layer: [self-attention, (cross-attention,) MLP]."""

    def __init__(self, cfg: ModelConfig, decoder: bool, first: bool, eager: bool):
        super().__init__()
        relative = first and cfg.positions == "relative"
        layers: list[nn.Module] = [T5LayerSelfAttention(cfg, relative, decoder, eager)]
        if decoder:
            layers.append(T5LayerCrossAttention(cfg, eager))
        layers.append(T5LayerFF(cfg))
        self.layer = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, enc: torch.Tensor | None,
                cross_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.layer[0](x, mask)
        if enc is not None:
            x = self.layer[1](x, enc, cross_mask)
        return self.layer[-1](x)


class T5Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with cross-attention)."""

    def __init__(self, cfg: ModelConfig, decoder: bool, n_layer: int, eager: bool):
        super().__init__()
        self.decoder, self.eager = decoder, eager
        self.embed_positions = (
            nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.positions == "learned" else None
        )
        self.block = nn.ModuleList(
            T5Block(cfg, decoder, first=i == 0, eager=eager) for i in range(n_layer)
        )
        self.final_layer_norm = make_norm(cfg, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_checkpointing = False

    def self_mask(self, T: int, keep: torch.Tensor | None, device: torch.device
                  ) -> torch.Tensor | None:
        """The self-attention mask of this stack for T positions (`keep`: (B, T) keys that may
        be attended to, None for all): relative bias + padding (+ causal) for eager attention,
        a boolean padding mask (or None) for SDPA."""
        if not self.eager:
            return None if keep is None else keep[:, None, None, :]
        attn = self.block[0].layer[0].SelfAttention
        bias = attn.position_bias(T, T, device) if attn.relative_attention_bias is not None \
            else None
        allowed = None if keep is None else keep[:, None, None, :]
        if self.decoder:
            causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
            allowed = causal if allowed is None else allowed & causal
        if allowed is not None:
            add = torch.zeros(allowed.shape, device=device).masked_fill(
                ~allowed, torch.finfo(torch.float32).min)
            bias = add if bias is None else bias + add
        return bias

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None,
                enc: torch.Tensor | None = None, cross_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        T = x.size(1)
        if self.embed_positions is not None:
            x = x + self.embed_positions(torch.arange(T, device=x.device))
        x = self.dropout(x)
        mask = self.self_mask(T, keep, x.device)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.block:
            if recompute:
                x = checkpoint(block, x, mask, enc, cross_mask, use_reentrant=False)
            else:
                x = block(x, mask, enc, cross_mask)
        return self.dropout(self.final_layer_norm(x))


class T5(nn.Module):
    """Encoder-decoder LM: forward(idx (B, T_in), targets (B, T_out)) -> (logits, loss)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.positions == "rope":
            raise UserError("model.positions: t5 takes relative or learned positions, not rope")
        if cfg.positions == "learned" and cfg.decoder_seq_len > cfg.seq_len:
            raise UserError(f"model.target_len: {cfg.decoder_seq_len} exceeds model.seq_len "
                            f"({cfg.seq_len}), the length of the learned position table")
        self.cfg = cfg
        eager = cfg.attention == "eager" or cfg.positions == "relative"
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = T5Stack(cfg, decoder=False, n_layer=cfg.n_layer, eager=eager)
        self.decoder = T5Stack(cfg, decoder=True, n_layer=cfg.decoder_layers, eager=eager)
        self.lm_head = (
            None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        )
        self._init_weights()

    @property
    def activation_checkpointing(self) -> bool:
        return self.encoder.activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, on: bool) -> None:
        self.encoder.activation_checkpointing = self.decoder.activation_checkpointing = on

    def _init_weights(self) -> None:
        """Mesh TensorFlow's T5 init as HF `T5PreTrainedModel._init_weights` (factor 1): tables
        N(0, 1), q N(0, (d·d_head)^-1/2), k, v and wi N(0, d^-1/2), o N(0, (h·d_head)^-1/2),
        wo N(0, d_ff^-1/2), relative bias N(0, d^-1/2); biases 0, norm weights 1."""
        cfg = self.cfg
        d, inner = cfg.d_model, cfg.n_head * cfg.head_dim
        std = {"q": (d * cfg.head_dim) ** -0.5, "k": d**-0.5, "v": d**-0.5, "o": inner**-0.5,
               "wi": d**-0.5, "wi_0": d**-0.5, "wi_1": d**-0.5, "wo": cfg.ff**-0.5,
               "relative_attention_bias": d**-0.5}
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std.get(name.rsplit(".", 1)[-1], 1.0))
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def encode(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder output (B, T_in, C), cross-attention mask) of inputs `idx` (PAD_ID: padding)."""
        if idx.size(1) > self.cfg.seq_len:
            raise ValueError(f"input of length {idx.size(1)} exceeds model.seq_len="
                             f"{self.cfg.seq_len}")
        pad = idx == PAD_ID  # a mask whether or not there is padding: no host sync
        enc = self.encoder(self.shared(idx.masked_fill(pad, 0)), ~pad)
        cross = ~pad[:, None, None, :]
        if self.encoder.eager:
            cross = torch.zeros(cross.shape, device=idx.device).masked_fill(
                ~cross, torch.finfo(torch.float32).min)
        return enc, cross

    def decode(self, enc: torch.Tensor, cross: torch.Tensor, targets: torch.Tensor
               ) -> torch.Tensor:
        """Logits (B, T_out, V) of teacher-forced `targets` (IGNORE_INDEX: ignored) given an
        `encode` result: the decoder reads the targets shifted right after the start id."""
        cfg = self.cfg
        if targets.size(1) > cfg.decoder_seq_len:
            raise ValueError(f"targets of length {targets.size(1)} exceed the decoder length "
                             f"{cfg.decoder_seq_len}")
        start = decoder_start_id(cfg)
        dec_in = torch.cat([targets.new_full((targets.size(0), 1), start), targets[:, :-1]], 1)
        dec_in = dec_in.masked_fill(dec_in == IGNORE_INDEX, start)
        x = self.decoder(self.shared(dec_in), enc=enc, cross_mask=cross)
        if self.lm_head is None:
            return F.linear(x * cfg.d_model**-0.5, self.shared.weight)
        return self.lm_head(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        enc, cross = self.encode(idx)
        logits = self.decode(enc, cross, targets)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX)
        return logits, loss
