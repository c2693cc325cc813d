"""budgetlm's GPT weights to and from a Hugging Face checkpoint (GPT-2 and Llama layouts).

Two layouts, chosen by the model's positions (`hf_layout`): learned positions are GPT-2's
(`transformer.h.{i}.attn.c_attn`, Conv1D weights stored (in, out), so transposed here; one
fused q|k|v projection), rotary ones Llama's (`model.layers.{i}.self_attn.q_proj`, separate
q, k, v; Mistral, Qwen2 and Qwen3 share the names, Qwen3 adds `q_norm` / `k_norm`). budgetlm's
`fused_qkv` may differ from the layout's: the q, k, v rows are then split or concatenated.

Nothing here needs `transformers`: HF's Llama rotary embedding is the rotate-half form of
budgetlm's `Rotary` with the same inverse frequencies, its attention scales by head_dim^-1/2 and
its RMSNorm is torch's, so weights map one to one without permutation. A tied head is absent
from HF checkpoints and is budgetlm's token embedding.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from budgetlm.config import ModelConfig
from budgetlm.errors import UserError
from budgetlm.estimate import param_specs

# (budgetlm module inside block i, HF module inside block i), per layout
_BLOCK_MODULES: dict[str, tuple[tuple[str, str], ...]] = {
    "gpt2": (
        ("ln_1", "ln_1"), ("attn.c_attn", "attn.c_attn"), ("attn.c_proj", "attn.c_proj"),
        ("ln_2", "ln_2"), ("mlp.c_fc", "mlp.c_fc"), ("mlp.c_proj", "mlp.c_proj"),
    ),
    "llama": (
        ("ln_1", "input_layernorm"), ("attn.q_proj", "self_attn.q_proj"),
        ("attn.k_proj", "self_attn.k_proj"), ("attn.v_proj", "self_attn.v_proj"),
        ("attn.c_proj", "self_attn.o_proj"), ("attn.q_norm", "self_attn.q_norm"),
        ("attn.k_norm", "self_attn.k_norm"), ("ln_2", "post_attention_layernorm"),
        ("mlp.w1", "mlp.gate_proj"), ("mlp.w3", "mlp.up_proj"), ("mlp.w2", "mlp.down_proj"),
    ),
}
_BLOCK_PREFIX = {"gpt2": "transformer.h", "llama": "model.layers"}
_TOP_MODULES: dict[str, tuple[tuple[str, str], ...]] = {
    "gpt2": (("wte", "transformer.wte"), ("wpe", "transformer.wpe"),
             ("ln_f", "transformer.ln_f"), ("lm_head", "lm_head")),
    "llama": (("wte", "model.embed_tokens"), ("ln_f", "model.norm"), ("lm_head", "lm_head")),
}
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # GPT-2: weight is (in, out)
_LINEARS = ("attn.c_attn", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.c_proj",
            "mlp.c_fc", "mlp.c_proj", "mlp.w1", "mlp.w2", "mlp.w3")
_QKV = ("attn.q_proj", "attn.k_proj", "attn.v_proj")


def hf_layout(cfg: ModelConfig) -> str:
    """The HF names budgetlm's GPT maps to: "gpt2" for learned positions, "llama" for rotary."""
    return "gpt2" if cfg.positions == "learned" else "llama"


def _module_map(cfg: ModelConfig) -> dict[str, str]:
    """budgetlm module -> HF module for every module of `cfg`'s GPT in the layout's names (the
    layout's q/k/v form: fused for gpt2, separate for llama)."""
    layout = hf_layout(cfg)
    out = dict(_TOP_MODULES[layout])
    for i in range(cfg.n_layer):
        for ours, theirs in _BLOCK_MODULES[layout]:
            out[f"blocks.{i}.{ours}"] = f"{_BLOCK_PREFIX[layout]}.{i}.{theirs}"
    return out


def hf_module_names(cfg: ModelConfig) -> dict[str, str]:
    """budgetlm Linear module name -> HF module name for every Linear whose weight maps one to
    one (GPT-2's Conv1D up to its transpose): e.g. "blocks.0.attn.q_proj" ->
    "model.layers.0.self_attn.q_proj", "blocks.0.attn.c_attn" -> "transformer.h.0.attn.c_attn",
    and "lm_head" -> "lm_head". A fused c_attn in the Llama layout, or separate q/k/v in
    GPT-2's, has no one-to-one HF module and is left out; so is every MoE block (no HF layout
    here)."""
    linear = {"lm_head"}
    if not cfg.n_expert:
        linear |= {
            s.name.removesuffix(".weight") for s in param_specs(cfg)
            if s.name.endswith(".weight") and s.name.split(".", 2)[-1][:-7] in _LINEARS
        }
    return {ours: theirs for ours, theirs in _module_map(cfg).items() if ours in linear}


def _qkv_widths(cfg: ModelConfig) -> tuple[int, int, int]:
    inner, kv_inner = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    return inner, kv_inner, kv_inner


def _split_qkv(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Fused `attn.c_attn.{weight,bias}` -> `attn.{q,k,v}_proj.{weight,bias}` (rows split)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        module, _, kind = name.rpartition(".")
        if not module.endswith(".attn.c_attn"):
            out[name] = t
            continue
        base = module.removesuffix("c_attn")
        for part, piece in zip(_QKV, t.split(_qkv_widths(cfg), dim=0), strict=True):
            out[f"{base}{part.split('.')[1]}.{kind}"] = piece
    return out


def _fuse_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`attn.{q,k,v}_proj.{weight,bias}` -> fused `attn.c_attn.{weight,bias}` (rows q|k|v)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        module, _, kind = name.rpartition(".")
        if module.endswith((".attn.k_proj", ".attn.v_proj")):
            continue
        if module.endswith(".attn.q_proj"):
            base = module.removesuffix("q_proj")
            parts = [state[f"{base}{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")]
            out[f"{base}c_attn.{kind}"] = torch.cat(parts, dim=0)
            continue
        out[name] = t
    return out


def _is_conv1d(module: str) -> bool:
    return module.startswith("blocks.") and module.split(".", 2)[2] in _CONV1D


def to_hf_state(
    state: Mapping[str, torch.Tensor], cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """budgetlm GPT state dict -> HF names and shapes of `hf_layout(cfg)`; a tied head is left
    out (HF ties it to the embedding)."""
    layout = hf_layout(cfg)
    ours = dict(state)
    if cfg.tie_embeddings:
        ours.pop("lm_head.weight", None)
    if layout == "gpt2" and not cfg.fused_qkv:
        ours = _fuse_qkv(ours)
    elif layout == "llama" and cfg.fused_qkv:
        ours = _split_qkv(ours, cfg)
    names = _module_map(cfg)
    out: dict[str, torch.Tensor] = {}
    for name, t in ours.items():
        module, _, kind = name.rpartition(".")
        if layout == "gpt2" and kind == "weight" and _is_conv1d(module):
            t = t.t()
        out[f"{names[module]}.{kind}"] = t.contiguous()
    return out


def from_hf_state(
    hf: Mapping[str, torch.Tensor], cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """HF state (names as `to_hf_state` writes them) -> budgetlm GPT state dict for `cfg`. Names
    budgetlm does not know are returned under their HF name (the caller reports them)."""
    layout = hf_layout(cfg)
    back = {theirs: ours for ours, theirs in _module_map(cfg).items()}
    ours: dict[str, torch.Tensor] = {}
    for name, t in hf.items():
        module, _, kind = name.rpartition(".")
        mine = back.get(module)
        if mine is None:
            ours[name] = t
            continue
        if layout == "gpt2" and kind == "weight" and _is_conv1d(mine):
            t = t.t()
        ours[f"{mine}.{kind}"] = t
    if layout == "gpt2" and not cfg.fused_qkv:
        ours = _split_qkv(ours, cfg)
    elif layout == "llama" and cfg.fused_qkv:
        ours = _fuse_qkv(ours)
    if cfg.tie_embeddings and "wte.weight" in ours:
        ours["lm_head.weight"] = ours["wte.weight"]
    return ours


# ---------------------------------------------------------------------------------------------
# Reading a Hugging Face directory's safetensors

WHERE = "model.from_pretrained"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Buffers older checkpoints carry that are no weights: GPT-2's causal mask, Llama's inv_freq.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a HF model directory: model.safetensors, or the shards its
    index names."""
    single, index = directory / SINGLE_FILE, directory / INDEX_FILE
    if single.is_file():
        return [single]
    if not index.is_file():
        hint = " (pytorch_model.bin is not read: save the model with safetensors)" if (
            directory / "pytorch_model.bin").exists() else ""
        raise UserError(f"{WHERE}: {directory} has no {SINGLE_FILE} or {INDEX_FILE}{hint}")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted({str(v) for v in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{WHERE}: {index}: not a safetensors index (no weight_map)") from None
    files = [directory / n for n in names]
    for f in files:
        if not f.is_file():
            raise UserError(f"{WHERE}: {index}: names {f.name}, which is not in {directory}")
    return files


def _hf_name(name: str, layout: str) -> str | None:
    """A checkpoint tensor's name as `to_hf_state` spells it (a bare base model's names get the
    causal LM's prefix); None for a buffer that is no weight."""
    if name.endswith(_BUFFER_SUFFIXES):
        return None
    prefix = "transformer." if layout == "gpt2" else "model."
    if name.startswith((prefix, "lm_head.")):
        return name
    return prefix + name


def _read_shapes(files: list[Path], layout: str) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    """HF name -> (file, name in the file, shape), without reading any tensor."""
    out: dict[str, tuple[Path, str, tuple[int, ...]]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    name = _hf_name(key, layout)
                    if name is not None:
                        out[name] = (path, key, tuple(f.get_slice(key).get_shape()))
        except (OSError, SafetensorError) as exc:
            raise UserError(f"{WHERE}: {path}: not a readable safetensors file ({exc})") from None
    return out


def _check_names(
    found: dict[str, tuple[Path, str, tuple[int, ...]]], expected: dict[str, tuple[int, ...]],
    cfg: ModelConfig, directory: Path,
) -> None:
    """Every expected tensor present with its shape, and nothing else (a tied head's copy and a
    longer learned-position table excepted)."""
    missing = [n for n in expected if n not in found]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"{WHERE}: {directory}: tensor {missing[0]}{more} missing from the "
                        "checkpoint (its config.json describes them)")
    for name, (path, key, shape) in found.items():
        if name not in expected:
            if name == "lm_head.weight" and cfg.tie_embeddings:
                continue
            raise UserError(f"{WHERE}: {path}: unexpected tensor {key} (the model its "
                            "config.json describes has no such weight)")
        want = expected[name]
        longer_table = name.endswith("wpe.weight") and shape[1:] == want[1:] and (
            shape[0] >= want[0])
        if shape != want and not longer_table:
            raise UserError(f"{WHERE}: {path}: tensor {key} has shape {list(shape)}, the "
                            f"config expects {list(want)}")


def load_pretrained(model: nn.Module, cfg: ModelConfig, directory: str | Path) -> None:
    """Copy the weights of the HF model directory `directory` (GPT-2 or Llama layout, one file
    or shards) into budgetlm's GPT `model` built from `cfg`, strictly: a missing, unexpected or
    misshapen tensor is a UserError naming the file and tensor. A learned-position table longer
    than `cfg.seq_len` (training on a shorter context) keeps its first seq_len rows."""
    if cfg.family != "gpt" or cfg.n_expert:
        raise UserError(f"{WHERE}: weights load into dense GPT models only")
    d = Path(directory).expanduser()
    layout = hf_layout(cfg)
    expected = {n: tuple(t.shape) for n, t in to_hf_state(model.state_dict(), cfg).items()}
    found = _read_shapes(checkpoint_files(d), layout)
    _check_names(found, expected, cfg, d)
    hf: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for name in expected:
        path, key, _ = found[name]
        by_file.setdefault(path, []).append((name, key))
    for path, pairs in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            for name, key in pairs:
                hf[name] = f.get_tensor(key)[: expected[name][0]]
    try:
        with torch.no_grad():
            model.load_state_dict(from_hf_state(hf, cfg), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{WHERE}: {d}: weights do not fit the model ({first})") from None
