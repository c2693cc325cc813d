"""What a fine-tune trains: the model as `finetune.method` prepares it, merged back, and the
adapter files a LoRA run leaves.

`prepare_model` returns the model unchanged for a full fine-tune (every weight trains). For LoRA
it freezes every weight, holds the frozen matrices and embeddings in the training precision's
16-bit dtype (bf16/fp16 runs; norms stay fp32: they are tiny, and fused norm kernels want their
weight in the input's fp32), and wraps the model with `peft` (Hu et al. 2021: W x + (alpha / r)
B A x) on exactly the modules `budgetlm.estimate.lora_targets` names, adapters in fp32.
`lora.train_norms` / `train_head` make those weights trainable too, in fp32.

The wrapped model keeps budgetlm's `forward(idx, targets)`: `peft.PeftModel` passes arguments
through and reads unknown attributes (`cfg`, `generate`) from the budgetlm model; `base_model`
returns that model itself (with its adapter layers) for what needs the budgetlm class.
Checkpoints hold the wrapped model's state dict (frozen weights included), so a resume restores
it exactly. `merged_model` folds the adapters into the plain budgetlm model (fp32).

`save_adapter` writes RUN_DIR/adapter/ as `PeftModel.save_pretrained` does (adapter_config.json
+ adapter_model.safetensors); for a model from a Hugging Face directory the module names are the
`transformers` model's, so `peft.PeftModel.from_pretrained(hf_model, RUN_DIR/adapter)` loads it.
Trained norms and head travel as peft's `modules_to_save`.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from budgetlm.config import RunConfig
from budgetlm.errors import UserError
from budgetlm.estimate import lora_targets, param_specs
from budgetlm.model import build_model, hf_layout, hf_module_names
from budgetlm.model.hf_weights import to_hf_state
from budgetlm.train.rundir import RunDir, load_checkpoint

PEFT_EXTRA = "pip install 'budgetlm[finetune]'"
ADAPTER_DIR = "adapter"  # RUN_DIR/adapter/: peft's adapter files
ADAPTER_NAME = "default"  # peft's name of the one adapter a run trains
PEFT_PREFIX = "base_model.model."  # what PeftModel puts before the wrapped model's names
NORMS = (nn.LayerNorm, nn.RMSNorm)


def import_peft() -> Any:
    """The `peft` module, or a UserError naming the extra that installs it."""
    try:
        import peft
    except ImportError:
        raise UserError(f"finetune.method: lora needs peft ({PEFT_EXTRA})") from None
    return peft


def is_peft(model: nn.Module) -> bool:
    """Whether `model` is a `peft.PeftModel`; never imports peft (slow: it loads transformers),
    since a model wrapped by peft means peft is already loaded."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def base_model(model: nn.Module) -> nn.Module:
    """The budgetlm model inside a peft wrapper (its Linears carry the adapters); `model` itself
    when it is not wrapped."""
    return model.get_base_model() if is_peft(model) else model  # type: ignore[operator]


def frozen_dtype(precision: str) -> Any:
    """The dtype frozen weights are held in: bf16/fp16 for those precisions, else None (fp32)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def head_modules(model: nn.Module, cfg: RunConfig) -> list[str]:
    """Names of the modules `lora.train_head` trains: the LM head (a tied one is the token
    embedding) and every module whose weight the estimator counts as a head (BERT's MLM
    transform)."""
    heads = {s.name.removesuffix(".weight") for s in param_specs(cfg.model) if s.role == "head"}
    return [name for name, _ in model.named_modules() if name == "lm_head" or name in heads]


def extra_trainable(model: nn.Module, cfg: RunConfig) -> dict[str, nn.Parameter]:
    """Parameters besides the adapters that a LoRA run trains (`train_norms`, `train_head`), by
    name in `model` (a tied head under its first name)."""
    lora = cfg.finetune.lora
    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if lora.train_norms and isinstance(m, NORMS)]
    if lora.train_head:
        names += head_modules(model, cfg)
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for name in names:
        for pname, p in modules[name].named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                out[f"{name}.{pname}"] = p
    return out


def _hold_frozen(model: nn.Module, precision: str) -> None:
    """Freeze every parameter; every one outside a norm goes to the precision's 16-bit dtype."""
    dtype = frozen_dtype(precision)
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
        if dtype is not None and id(p) not in norm_params:
            p.data = p.data.to(dtype)


def check_trainer_can_lora(cfg: RunConfig) -> list[str]:
    """The module names adapters attach to, or a UserError for what the trainer cannot do."""
    ft = cfg.finetune
    if ft.quantize == "nf4":
        raise UserError(
            "finetune.quantize: nf4 is an estimate for plans; the trainer does not quantize"
        )
    targets = [t.module for t in lora_targets(cfg.model, ft.lora)]
    if cfg.model.from_pretrained:
        hf_names = hf_module_names(cfg.model)
        unmapped = [t for t in targets if t not in hf_names]
        if unmapped:
            raise UserError(
                f"finetune.lora.target: {unmapped[0]} has no one-to-one module in the Hugging "
                f"Face model, whose adapter files name its modules; set "
                f"model.fused_qkv={str(not cfg.model.fused_qkv).lower()} (its q/k/v layout)"
            )
    return targets


def prepare_model(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """`model` as `cfg.finetune.method` trains it: unchanged for full; for lora a
    `peft.PeftModel` whose only trainable parameters are the adapters (fp32) and the norms and
    head that `lora.train_norms` / `train_head` ask for (fp32); frozen weights in the training
    precision's 16-bit dtype."""
    if cfg.finetune.method == "full":
        return model
    targets = check_trainer_can_lora(cfg)
    peft = import_peft()
    lora = cfg.finetune.lora
    _hold_frozen(model, cfg.train.precision)
    config = peft.LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=targets, bias="none",
    )
    wrapped = peft.get_peft_model(model, config, autocast_adapter_dtype=True)
    adapted = {
        n for n, m in model.named_modules() if hasattr(m, "lora_A") and ADAPTER_NAME in m.lora_A
    }
    if adapted != set(targets):
        odd = sorted(adapted ^ set(targets))[:3]
        raise RuntimeError(f"peft's adapted modules differ from lora_targets' names: {odd}")
    for p in extra_trainable(model, cfg).values():
        p.data = p.data.float()
        p.requires_grad_(True)
    return wrapped


def merged_model(model: nn.Module, in_place: bool = False) -> nn.Module:
    """The plain budgetlm model with the adapters merged into its weights (peft's
    merge_and_unload), every weight in fp32 and trainable again; `model` itself when it is not
    a peft model. Works on a copy unless `in_place`."""
    if not is_peft(model):
        return model
    if not in_place:
        model = copy.deepcopy(model)
    for p in model.parameters():
        p.data = p.data.float()  # merge in fp32, not in the frozen weights' 16 bits
    plain = model.merge_and_unload()  # type: ignore[operator]
    plain.requires_grad_(True)
    return plain


def model_from_checkpoint(cfg: RunConfig, state: Mapping[str, Any]) -> nn.Module:
    """The plain budgetlm model (fp32, adapters merged) of a checkpoint of a run of `cfg`."""
    model = prepare_model(build_model(cfg.model), cfg)
    model.load_state_dict(state["model"])
    return merged_model(model, in_place=True)


def plain_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's weights under the plain budgetlm model's names: a LoRA run's merged (by
    the config it saved), any other's as they are."""
    state = checkpoint["model"]
    if not any(k.startswith(PEFT_PREFIX) for k in state):
        return dict(state)
    cfg = RunConfig.model_validate(checkpoint["config"])
    return model_from_checkpoint(cfg, checkpoint).state_dict()


# ---------------------------------------------------------------------------------------------
# Adapter files


def _lora_tensors(
    state: Mapping[str, Any], names: Mapping[str, str] | None
) -> tuple[dict[str, Any], set[str]]:
    """peft's saved lora_A/lora_B tensors of a wrapped model's state dict, modules renamed by
    `names` (None: as they are), and the adapted module names."""
    suffixes = {f".{ab}.{ADAPTER_NAME}.weight": f".{ab}.weight" for ab in ("lora_A", "lora_B")}
    tensors: dict[str, Any] = {}
    modules: set[str] = set()
    for key, t in state.items():
        for suffix, saved in suffixes.items():
            if key.startswith(PEFT_PREFIX) and key.endswith(suffix):
                module = key[len(PEFT_PREFIX) : -len(suffix)]
                module = names[module] if names is not None else module
                modules.add(module)
                tensors[f"{PEFT_PREFIX}{module}{saved}"] = t
    return tensors, modules


def _trained_extras(
    cfg: RunConfig, state: Mapping[str, Any], model: nn.Module
) -> dict[str, Any]:
    """The trained norm and head weights (`extra_trainable`) from `state`, under the names of the
    model the adapter is for; a tied head also as the embedding it is (and, for a Hugging Face
    model, as its `lm_head`, which peft's modules_to_save must copy too)."""
    extras = {name: state[PEFT_PREFIX + name] for name in extra_trainable(model, cfg)}
    if "lm_head.weight" in extras and cfg.model.tie_embeddings:
        extras["wte.weight"] = extras["lm_head.weight"]
    if not cfg.model.from_pretrained:
        return extras
    hf = to_hf_state(extras, cfg.model)  # drops a tied lm_head.weight
    if "wte.weight" in extras and cfg.model.tie_embeddings and "lm_head.weight" in extras:
        hf[f"{hf_module_names(cfg.model)['lm_head']}.weight"] = extras["wte.weight"]
    return hf


def save_adapter(
    cfg: RunConfig, state: Mapping[str, Any], model: nn.Module, out_dir: Path
) -> Path:
    """Write peft's adapter files (adapter_config.json, adapter_model.safetensors) of a LoRA
    run's wrapped-model `state` into `out_dir`, as `PeftModel.save_pretrained` does: in the
    `transformers` model's names when the model came from `model.from_pretrained`. `model` is
    the budgetlm model the state belongs to (for the names of trained norms and head)."""
    import shutil

    from safetensors.torch import save_file

    peft = import_peft()
    hf = cfg.model.from_pretrained is not None
    tensors, targets = _lora_tensors(state, hf_module_names(cfg.model) if hf else None)
    extras = _trained_extras(cfg, state, model)
    tensors.update({PEFT_PREFIX + k: t for k, t in extras.items()})
    modules_to_save = sorted({k.rpartition(".")[0] for k in extras})
    lora = cfg.finetune.lora
    base = str(Path(cfg.model.from_pretrained).resolve()) if hf else cfg.train.init_from
    config = peft.LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=sorted(targets), bias="none", modules_to_save=modules_to_save or None,
        fan_in_fan_out=hf and hf_layout(cfg.model) == "gpt2",  # GPT-2's Conv1D: (in, out)
        # transformers' tied head: peft keeps the copies of embedding and head one tensor
        ensure_weight_tying=hf and cfg.model.tie_embeddings and lora.train_head,
        base_model_name_or_path=base, inference_mode=True,
    )
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config.save_pretrained(str(tmp))
    save_file(
        {k: t.detach().to("cpu").contiguous().clone() for k, t in tensors.items()},
        str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"},
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def save_run_adapter(
    cfg: RunConfig, run_dir: Path, model: nn.Module, last_is_good: bool
) -> Path | None:
    """RUN_DIR/adapter/ of a LoRA run: from its best checkpoint when it keeps one, else from its
    latest when `last_is_good` (a single-file or sharded checkpoint, read whole); `model` is the
    wrapped model as trained. None for a full fine-tune or when there is nothing to write."""
    if cfg.finetune.method != "lora":
        return None
    run = RunDir(run_dir)
    found = run.best_checkpoint() or (run.latest_checkpoint() if last_is_good else None)
    if found is None:
        return None
    state = load_checkpoint(found, "adapter")["model"]
    return save_adapter(cfg, state, base_model(model), run_dir / ADAPTER_DIR)
