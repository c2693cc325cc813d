"""Named starting points: `budgetlm train tiny`, `preset: nanogpt-cpu` at the top of a file."""

from __future__ import annotations

import difflib
from typing import Any

from budgetlm.config.schema import RunConfig, validate
from budgetlm.config.shapes import SHAPE_PRESETS
from budgetlm.errors import UserError

PRESETS: dict[str, dict[str, Any]] = {
    # Trains in seconds on a CPU: a 2-layer byte-level GPT.
    "tiny": {
        "name": "tiny",
        "model": {"n_layer": 2, "n_head": 2, "d_model": 64, "vocab_size": 256, "seq_len": 64},
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_steps": 10},
        "train": {
            "micro_batch": 16, "max_steps": 500, "eval_interval": 100, "eval_tokens": 16384,
            "threads": 1,
        },
    },
    # nanoGPT's shakespeare_char CPU recipe (README "I only have a macbook"):
    # n_layer 4, n_head 4, n_embd 128, block 64, batch 12, 2000 iters, lr 1e-3 cosine to 1e-4,
    # 100 warmup iters, beta2 0.99, dropout 0.0. Vocab 65 is shakespeare's character set.
    "nanogpt-cpu": {
        "name": "nanogpt-cpu",
        "model": {
            "n_layer": 4, "n_head": 4, "d_model": 128, "vocab_size": 65, "seq_len": 64,
            "dropout": 0.0, "bias": False,
        },
        "optim": {"name": "adamw", "lr": 1e-3, "beta2": 0.99, "weight_decay": 0.1},
        "schedule": {"name": "cosine", "warmup_steps": 100, "min_lr_ratio": 0.1},
        "data": {"tokenizer": "char"},
        "train": {
            "micro_batch": 12, "max_steps": 2000, "eval_interval": 250, "eval_tokens": 64 * 12 * 20,
        },
    },
    # GPT-2 small (Radford et al. 2019): 124,439,808 parameters with the tied head.
    "gpt2-124m": {
        "name": "gpt2-124m",
        "model": {
            "n_layer": 12, "n_head": 12, "d_model": 768, "vocab_size": 50257, "seq_len": 1024,
            "positions": "learned", "bias": True, "tie_embeddings": True,
        },
        "optim": {"lr": 6e-4, "beta2": 0.95},
        "schedule": {"warmup_steps": 700},
        "data": {"tokenizer": "bpe", "bpe_vocab_size": 50257},
        "train": {"precision": "bf16", "micro_batch": 16, "grad_accum": 32},
    },
    # BERT-base (Devlin et al. 2019) as HF BertForMaskedLM.
    "bert-base": {
        "name": "bert-base",
        "model": {
            "family": "bert", "n_layer": 12, "n_head": 12, "d_model": 768, "vocab_size": 30522,
            "seq_len": 512, "positions": "learned", "bias": True, "tie_embeddings": True,
            "norm_eps": 1e-12,
        },
        "optim": {"lr": 1e-4, "beta2": 0.999, "weight_decay": 0.01},
        "schedule": {"name": "linear", "warmup_steps": 10000},
        "data": {"tokenizer": "bpe", "bpe_vocab_size": 30522},
        "train": {"precision": "bf16", "micro_batch": 32},
    },
    # T5-base (Raffel et al. 2020): 12+12 layers, relative position bias, ReLU MLP, no biases.
    "t5-base": {
        "name": "t5-base",
        "model": {
            "family": "t5", "n_layer": 12, "n_decoder_layer": 12, "n_head": 12, "d_model": 768,
            "d_ff": 3072, "d_head": 64, "vocab_size": 32128, "seq_len": 512,
            "positions": "relative", "norm": "rmsnorm", "mlp": "relu", "bias": False,
            "tie_embeddings": True, "norm_eps": 1e-6,
        },
        "data": {"tokenizer": "bpe", "bpe_vocab_size": 32128},
        "train": {"precision": "bf16", "micro_batch": 32},
    },
}

# A small BERT that trains on a CPU: tiny's shape as a masked LM, fewer steps.
PRESETS["bert-tiny"] = {
    "name": "bert-tiny",
    "model": {**PRESETS["tiny"]["model"], "family": "bert"},
    "optim": {"lr": 2e-3},
    "schedule": {"warmup_steps": 10},
    "train": {**PRESETS["tiny"]["train"], "max_steps": 150, "eval_interval": 50},
}

# A small T5 that trains on a CPU: tiny's width as an encoder-decoder (2 + 2 layers), T5's
# recipe (relative position bias, RMSNorm, ReLU MLP, no biases, tied head), span corruption of
# 15% of the tokens in spans of mean length 3 (Raffel et al. 2020 §3.1.4). At this size the
# decoder takes thousands of steps to learn to read the encoder: a fine-tune needs minutes of
# pretraining before it (benchmarks/pretrain_finetune.py and RESULTS.md measure it).
PRESETS["t5-tiny"] = {
    "name": "t5-tiny",
    "model": {
        **PRESETS["tiny"]["model"], "family": "t5", "n_decoder_layer": 2, "positions": "relative",
        "norm": "rmsnorm", "mlp": "relu", "bias": False, "tie_embeddings": True,
        "relative_buckets": 32, "norm_eps": 1e-6,
    },
    "optim": {"lr": 3e-3},
    "schedule": {"warmup_steps": 10},
    "train": {**PRESETS["tiny"]["train"], "max_steps": 150, "eval_interval": 50},
}

# tiny's size and budget with a Llama recipe: rotary positions, RMSNorm, SwiGLU (hidden width
# 8/3·d rounded to 32), no biases, untied head, grouped-query attention (4 query heads share 2
# key/value heads).
PRESETS["llama-tiny"] = {
    "name": "llama-tiny",
    "model": {
        **PRESETS["tiny"]["model"], "n_head": 4, "n_kv_head": 2, "d_ff": 160,
        "positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False,
        "tie_embeddings": False,
    },
    "optim": {"lr": 3e-3},
    "schedule": {"warmup_steps": 10},
    "train": {**PRESETS["tiny"]["train"], "max_steps": 300},
}

# llama-tiny with mixture-of-experts MLPs (Mixtral / DeepSeekMoE style): block 0 dense, block 1
# routes each token to 2 of 4 experts plus one shared expert of width 48 (3 x 48 active, near
# llama-tiny's 160).
PRESETS["moe-tiny"] = {
    "name": "moe-tiny",
    "model": {
        **PRESETS["llama-tiny"]["model"], "n_expert": 4, "n_expert_active": 2,
        "n_shared_expert": 1, "d_expert": 48, "n_dense_layer": 1, "router_aux_coef": 0.01,
    },
    "optim": {"lr": 3e-3},
    "schedule": {"warmup_steps": 10},
    "train": {**PRESETS["tiny"]["train"], "max_steps": 300},
}

PRESETS.update(SHAPE_PRESETS)
LARGE_PRESETS = frozenset({"gpt2-124m", "bert-base", "t5-base", *SHAPE_PRESETS})



def preset(name: str) -> RunConfig:
    """The preset `name` as a RunConfig; a one-line error with a close match otherwise."""
    if name not in PRESETS:
        hint = difflib.get_close_matches(name, list(PRESETS), n=1)
        suggest = f" (did you mean {hint[0]}?)" if hint else ""
        raise UserError(
            f"unknown preset {name!r}{suggest}; presets: {', '.join(PRESETS)}"
        )
    return validate(PRESETS[name], source=f"preset {name}")
