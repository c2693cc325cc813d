"""GPT (causal LM) and BERT-style (masked LM) transformers, read top to bottom: `layers`
(norms, rotary, attention), `mlp` (dense MLP, mixture of experts), `transformer` (the block and
what both families share), `gpt`, `bert`; `hf_weights` maps a GPT's weights to and from a Hugging
Face checkpoint (GPT-2 and Llama names, `hf_module_names`, `load_pretrained`).

nanoGPT-style: one `Block` (pre-norm attention + MLP) shared by both families, every option of
`ModelConfig` honoured (learned or rotary positions, LayerNorm or RMSNorm, GELU (exact or
tanh), ReLU or SwiGLU MLP, fused or separate q/k/v projections, biases on or off, tied
embeddings, fused SDPA or eager attention, dropout, per-head width that may differ from d_model
/ n_head, grouped-query attention, qk-norm, sliding window, mixture of experts). Parameter names
here are mirrored by `budgetlm.estimate.param_shapes`, which the tests compare name by name:

    blocks.{i}.ln_1, blocks.{i}.attn.c_attn (fused q | k | v: (n_head + 2·kv_heads)·head_dim
    rows) or, with fused_qkv false, blocks.{i}.attn.q_proj / k_proj / v_proj,
    blocks.{i}.attn.c_proj, blocks.{i}.attn.q_norm / k_norm (qk_norm: head_dim each),
    blocks.{i}.ln_2, then a dense blocks.{i}.mlp.{w1,w3,w2 | c_fc,c_proj} or an MoE
    blocks.{i}.mlp.router (n_expert x d, no bias), blocks.{i}.mlp.experts.{e}.{...},
    blocks.{i}.mlp.shared.{s}.{...}

Classification (`n_classes` set): no LM/MLM head; `classifier` (Linear d_model -> n_classes)
over a pooled state (`model.classify`); PAD_ID (-1) in the input marks padding, masked out of
attention and pooling and embedded as id 0.

Parametrization (`model.parametrization`, GPT and BERT): standard, or µP (Yang et al. 2022,
"Tensor Programs V") relative to `mup_base_width`, with m = `cfg.width_mult` = d_model /
mup_base_width and every width dimension taken to grow by m (heads, experts, vocabulary fixed):

- init (`TransformerBase._init_weights`): embeddings (tokens, learned positions, BERT's token
  types) and the readout (an untied lm_head, the classifier, BERT's MLM decoder) normal(0,
  init_std); every other Linear weight (attention, MLPs, MoE router and experts, BERT's MLM
  transform dense) normal(0, init_std/√m), residual projections also / √(2·n_layer);
- attention logits (`layers`): sqrt(head_dim_base)/head_dim, head_dim_base = head_dim/m, in SDPA
  and eager attention alike;
- readout: its input times 1/m (`_readout_in`; the classifier's pooled input), so the logits
  are 1/m of standard's without a second (B, T, V) tensor.

The per-parameter learning rates that complete µP are `budgetlm.optim`'s (`build_optimizer(...,
width_mult=m)`). At m = 1 the model is standard parametrization's: the same init draws in the
same order, the same forward. The multipliers are elementwise on (B, T, C) tensors, so FLOPs and
memory are those of standard parametrization (`budgetlm.estimate` does not read it).

Loss = mean cross-entropy over targets != -100, computed in fp32 (`logits.float()`); in
training mode an MoE model adds router_aux_coef x its load-balancing loss (validation loss is
the plain cross-entropy).
"""

from __future__ import annotations

import torch.nn as nn

from budgetlm.config import ModelConfig
from budgetlm.model.bert import N_TOKEN_TYPES, BertMLM, MLMHead, mlm_mask
from budgetlm.model.classify import CLASSIFIER, build_classifier, pool
from budgetlm.model.gpt import GPT
from budgetlm.model.hf_weights import hf_layout, hf_module_names, load_pretrained
from budgetlm.model.layers import Rotary, SelfAttention, make_norm, window_mask
from budgetlm.model.mlp import MLP, MoE, route
from budgetlm.model.t5 import T5, decoder_start_id
from budgetlm.model.transformer import IGNORE_INDEX, PAD_ID, Block, TransformerBase

__all__ = [
    "CLASSIFIER", "GPT", "IGNORE_INDEX", "MLP", "N_TOKEN_TYPES", "PAD_ID", "BertMLM", "Block",
    "MLMHead", "MoE", "Rotary", "SelfAttention", "T5", "TransformerBase", "build_classifier",
    "build_model", "decoder_start_id", "expert_load", "hf_layout", "hf_module_names",
    "load_pretrained", "make_norm", "mlm_mask", "n_params", "pool", "route", "window_mask",
]


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised GPT, BertMLM or T5 (encoder-decoder) for `cfg`."""
    if cfg.family == "gpt":
        return GPT(cfg)
    if cfg.family == "bert":
        return BertMLM(cfg)
    return T5(cfg)


def n_params(model: nn.Module) -> int:
    """Parameters of `model`, tied tensors counted once."""
    return sum(p.numel() for p in model.parameters())


def expert_load(model: nn.Module) -> list[list[int]]:
    """Tokens per expert of each MoE block since the last call, and clear them ([] for a dense
    model or one that is not a budgetlm transformer)."""
    if isinstance(model, TransformerBase):
        return model.take_expert_load()
    return []
