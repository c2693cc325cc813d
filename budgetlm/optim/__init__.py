"""Optimizers and learning-rate schedules.

The trainer calls five things: `build_optimizer` (one optimizer object for any `optim.name`),
`lr_factor` (the schedule: a multiplier of the peak lr), `set_lr` (apply it to every group),
`clip_grad_norm`, and, through `build_optimizer`, `param_groups` (decay / no-decay split).

Weight decay by optimizer (`optim.weight_decay`, applied to the decay group only):
- adamw, lion, lamb, muon, adafactor: decoupled decay (Loshchilov & Hutter 2019), p -= lr·wd·p.
- sgd: torch's L2 term (g += wd·p); without momentum this is the same update as decoupled decay.
- adam, rmsprop: none. torch's `weight_decay` for these is a coupled L2 penalty that the adaptive
  denominator rescales, which is not what the config field means; choose `adamw` for Adam with
  decay. (Deciding by "was the field set explicitly" is not used: a resolved config.yaml sets
  every field, so a run and its rerun would differ.)

Every param group carries `base_lr` (its peak lr) so `set_lr` scales all groups, Muon's and
AdamW's alike, by one schedule factor. State dicts are plain `torch.optim.Optimizer` state dicts,
so `opt.load_state_dict(opt2.state_dict())` resumes bit-exactly (save/load through `torch.save`, as
a checkpoint does: a live state dict shares tensors with its optimizer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from budgetlm.config import OptimConfig, ScheduleConfig
from budgetlm.optim.muon import Muon

__all__ = [
    "HEAD_NAMES",
    "Lamb",
    "Lion",
    "MuonWithAdamW",
    "build_optimizer",
    "clip_grad_norm",
    "lr_factor",
    "muon_split",
    "param_groups",
    "set_lr",
]

DEFAULT_MUON_LR = 0.02  # Keller Jordan's Muon default for hidden matrices (modded-nanogpt)

# Modules whose 2-D weight is an output projection onto the vocabulary (or a classifier): Muon is
# for hidden matrices only, so these stay with AdamW even when untied. The name is the last
# component of the owning module's path (`lm_head` in nanoGPT/HF GPT-2/T5, `decoder` in HF BERT's
# MLM head `cls.predictions.decoder`).
HEAD_NAMES = frozenset(
    {"lm_head", "head", "output", "out_head", "unembed", "unembedding", "decoder", "classifier"}
)


# ---------------------------------------------------------------------------------------------
# Parameter groups


def _named_trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters in registration order, each once (tied weights appear once)."""
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters():  # remove_duplicate=True: tied params once
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def _embedding_ids(model: nn.Module) -> set[int]:
    """ids of nn.Embedding weights; a tied LM head *is* one of these tensors."""
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def _is_head(name: str) -> bool:
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2] in HEAD_NAMES


def _split_decay(
    named: list[tuple[str, nn.Parameter]], emb: set[int], decay_all: bool
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    decay, no_decay = [], []
    for _, p in named:
        if decay_all or (p.ndim >= 2 and id(p) not in emb):
            decay.append(p)
        else:
            no_decay.append(p)
    return decay, no_decay


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Decay group: tensors with ndim >= 2 that are not embeddings (nn.Embedding weights, and so
    a tied LM head). No-decay group: biases, norm weights, embeddings. `decay_all` puts every
    parameter in the decay group. Tied parameters are counted once; empty groups are dropped.

    Each group: {"params", "weight_decay", "lr", "base_lr", "name"}.
    """
    named = _named_trainable(model)
    if not named:
        raise ValueError("model has no trainable parameters")
    decay, no_decay = _split_decay(named, _embedding_ids(model), cfg.decay_all)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    for g in groups:
        g["lr"] = cfg.lr
        g["base_lr"] = cfg.lr
    return [g for g in groups if g["params"]]


def muon_split(model: nn.Module, cfg: OptimConfig) -> tuple[list[dict], list[dict]]:
    """(muon_groups, adamw_groups) for optim.name=muon.

    Muon gets the 2-D hidden weight matrices: ndim == 2, not an nn.Embedding weight (so not a tied
    head), not owned by a module named in HEAD_NAMES (an untied head). AdamW gets the rest with the
    usual decay / no-decay split. Muon's group decays with `weight_decay` (decoupled, torch Muon).
    """
    named = _named_trainable(model)
    if not named:
        raise ValueError("model has no trainable parameters")
    emb = _embedding_ids(model)
    hidden = [
        (n, p) for n, p in named if p.ndim == 2 and id(p) not in emb and not _is_head(n)
    ]
    hidden_ids = {id(p) for _, p in hidden}
    rest = [(n, p) for n, p in named if id(p) not in hidden_ids]
    muon_lr = cfg.muon_lr if cfg.muon_lr is not None else DEFAULT_MUON_LR
    muon_groups = []
    if hidden:
        muon_groups.append({
            "params": [p for _, p in hidden], "weight_decay": cfg.weight_decay,
            "lr": muon_lr, "base_lr": muon_lr, "name": "muon", "use_muon": True,
        })
    decay, no_decay = _split_decay(rest, emb, cfg.decay_all)
    adamw_groups = [
        {"params": ps, "weight_decay": wd, "lr": cfg.lr, "base_lr": cfg.lr, "name": nm,
         "use_muon": False}
        for ps, wd, nm in ((decay, cfg.weight_decay, "decay"), (no_decay, 0.0, "no_decay"))
        if ps
    ]
    return muon_groups, adamw_groups


# ---------------------------------------------------------------------------------------------
# Lion and LAMB


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2).

        c = β1·m + (1−β1)·g
        p ← p − lr·(sign(c) + λ·p)          (decoupled decay, as in the paper)
        m ← β2·m + (1−β2)·g

    One state tensor per parameter (`exp_avg`). The paper suggests an lr 3–10× smaller than
    AdamW's and a λ 3–10× larger.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid lr {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                c = m.mul(b1).add_(g, alpha=1 - b1)
                if wd != 0:
                    p.mul_(1 - lr * wd)
                p.add_(c.sign_(), alpha=-lr)
                m.mul_(b2).add_(g, alpha=1 - b2)
        return loss


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning", Algorithm 2), applied
    per parameter tensor ("layer"), with φ the identity:

        m ← β1·m + (1−β1)·g            v ← β2·v + (1−β2)·g²
        m̂ = m / (1−β1^t)               v̂ = v / (1−β2^t)
        r = m̂ / (√v̂ + ε) + λ·p
        p ← p − lr · (‖p‖ / ‖r‖) · r    (trust ratio 1 when ‖p‖ = 0 or ‖r‖ = 0)

    The trust ratio stays a tensor (no host sync).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid lr {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"invalid eps {eps} or weight_decay {weight_decay}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat = m / (1 - b1**t)
                v_hat = v / (1 - b2**t)
                r = m_hat.div_(v_hat.sqrt_().add_(eps))
                if wd != 0:
                    r.add_(p, alpha=wd)
                w_norm = p.norm()
                r_norm = r.norm()
                ratio = torch.where(
                    (w_norm > 0) & (r_norm > 0), w_norm / r_norm, torch.ones_like(w_norm)
                )
                p.add_(r.mul_(ratio), alpha=-lr)
        return loss


# ---------------------------------------------------------------------------------------------
# Muon + AdamW as one optimizer


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon (budgetlm.optim.muon) on hidden matrices and torch.optim.AdamW on everything else, as ONE
    torch.optim.Optimizer.

    The two inner optimizers own disjoint groups; this object's `param_groups` are the very same
    dicts (AdamW's first, then Muon's; each flagged `use_muon`) and all three share one `state`
    dict, so `param_groups`, `state`, `zero_grad`, `state_dict` and `load_state_dict` are the
    stock Optimizer ones and cover both. After `load_state_dict` the inner optimizers are relinked
    to the new group dicts. GradScaler works unchanged: `unscale_` walks `param_groups`, and
    `scaler.step(opt)` calls `opt.step()`, which steps both inner optimizers. (This class does not
    set `_step_supports_amp_scaling`, so the scaler unscales first even when AdamW is fused.)

    The inner optimizers (`.muon`, `.adamw`, either may be None) are implementation details:
    because they share the state dict, call `state_dict()` on this object only.
    """

    def __init__(
        self,
        muon_groups: list[dict[str, Any]],
        adamw_groups: list[dict[str, Any]],
        *,
        muon_kwargs: dict[str, Any] | None = None,
        adamw_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.muon = Muon(muon_groups, **(muon_kwargs or {})) if muon_groups else None
        self.adamw = (
            torch.optim.AdamW(adamw_groups, **(adamw_kwargs or {})) if adamw_groups else None
        )
        inner = self._inner()
        if not inner:
            raise ValueError("optimizer got an empty parameter list")
        self._ready = False
        super().__init__([g for o in inner for g in o.param_groups], {})
        self._ready = True
        self._relink()

    def _inner(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.adamw, self.muon) if o is not None]

    def _relink(self) -> None:
        """Point the inner optimizers at this object's group dicts and state."""
        if self.adamw is not None:
            self.adamw.param_groups = [g for g in self.param_groups if not g["use_muon"]]
            self.adamw.state = self.state
        if self.muon is not None:
            self.muon.param_groups = [g for g in self.param_groups if g["use_muon"]]
            self.muon.state = self.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not getattr(self, "_ready", False):  # called by Optimizer.__init__ with inner groups
            super().add_param_group(param_group)
            return
        param_group.setdefault("use_muon", False)
        target = self.muon if param_group["use_muon"] else self.adamw
        if target is None:
            raise ValueError("no inner optimizer for this group")
        target.add_param_group(param_group)  # fills that optimizer's defaults
        target.param_groups.pop()
        super().add_param_group(param_group)
        param_group.setdefault("base_lr", param_group["lr"])
        self._relink()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self._inner():
            o.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        flags = [g.get("use_muon") for g in state_dict["param_groups"]]
        if flags != [g["use_muon"] for g in self.param_groups]:
            raise ValueError("state dict groups do not match this Muon/AdamW split")
        super().load_state_dict(state_dict)
        self._relink()

    def __getstate__(self) -> dict[str, Any]:  # pickle / deepcopy keep the inner optimizers
        return {**super().__getstate__(), "muon": self.muon, "adamw": self.adamw, "_ready": True}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._relink()


# ---------------------------------------------------------------------------------------------
# Factory


def _use_fused(model: nn.Module, fused: bool | None) -> bool:
    if fused is not None:
        return fused
    params = list(model.parameters())
    return bool(params) and all(p.is_cuda for p in params)


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, fused: bool | None = None
) -> torch.optim.Optimizer:
    """One optimizer for `cfg.name`; every group carries `base_lr`.

    fused: fused Adam/AdamW kernels when True, or when None and every parameter is on CUDA
    (ignored by the other optimizers).

    - sgd: momentum=cfg.momentum, nesterov=cfg.nesterov (when momentum > 0), L2 weight decay.
    - adam: torch Adam, betas/eps from cfg, no weight decay (see the module docstring).
    - adamw: torch AdamW, decoupled decay.
    - rmsprop: alpha=cfg.beta2 (second-moment decay), eps, momentum=cfg.momentum, no decay.
    - adafactor: torch Adafactor (Shazeer & Stern 2018); cfg.lr caps its relative step size
      min(lr, 1/√t); its second-moment decay is its own (β2_t = 1 − t^−0.8); decoupled decay.
    - lion: betas=(beta1, beta2). lamb: betas, eps, decoupled decay inside the trust ratio.
    - muon: MuonWithAdamW — torch Muon (lr = cfg.muon_lr or 0.02, momentum = cfg.momentum,
      nesterov = cfg.nesterov, Keller Jordan's shape lr adjustment) on 2-D hidden matrices;
      AdamW (cfg.lr, betas, eps) on embeddings, the head, norms and biases.
    """
    name = cfg.name
    betas = (cfg.beta1, cfg.beta2)
    if name == "muon":
        muon_groups, adamw_groups = muon_split(model, cfg)
        return MuonWithAdamW(
            muon_groups,
            adamw_groups,
            muon_kwargs={
                "lr": cfg.muon_lr if cfg.muon_lr is not None else DEFAULT_MUON_LR,
                "momentum": cfg.momentum, "nesterov": cfg.nesterov,
                "weight_decay": cfg.weight_decay,
            },
            adamw_kwargs={
                "lr": cfg.lr, "betas": betas, "eps": cfg.eps, "weight_decay": cfg.weight_decay,
                "fused": _use_fused(model, fused),
            },
        )
    groups = param_groups(model, cfg)
    if name in ("adam", "rmsprop"):
        for g in groups:
            g["weight_decay"] = 0.0
    lr = cfg.lr
    opt: torch.optim.Optimizer
    if name == "sgd":
        nesterov = cfg.nesterov and cfg.momentum > 0
        opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=nesterov)
    elif name == "adam":
        opt = torch.optim.Adam(groups, lr=lr, betas=betas, eps=cfg.eps,
                               fused=_use_fused(model, fused))
    elif name == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=cfg.eps,
                                fused=_use_fused(model, fused))
    elif name == "rmsprop":
        opt = torch.optim.RMSprop(groups, lr=lr, alpha=cfg.beta2, eps=cfg.eps,
                                  momentum=cfg.momentum)
    elif name == "adafactor":
        opt = torch.optim.Adafactor(groups, lr=lr)
    elif name == "lion":
        opt = Lion(groups, lr=lr, betas=betas)
    elif name == "lamb":
        opt = Lamb(groups, lr=lr, betas=betas, eps=cfg.eps)
    else:  # pragma: no cover - the config's Literal rejects other names
        raise ValueError(f"optim.name: unknown optimizer {name!r}")
    return opt


# ---------------------------------------------------------------------------------------------
# Schedules


def _decay(cfg: ScheduleConfig, p: float) -> float:
    """Decay multiplier at decay progress p in [0, 1]; min_lr_ratio exactly at p = 1."""
    lo = cfg.min_lr_ratio
    if cfg.name == "constant":
        return 1.0
    if p >= 1.0:
        return lo
    if cfg.name == "linear":
        return 1.0 - (1.0 - lo) * p
    if cfg.name == "cosine":
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * p))
    if cfg.name == "wsd":
        # Warmup-stable-decay with a (1 − sqrt) cooldown over the last decay_fraction: Hägele et
        # al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations",
        # §3 (1−sqrt outperformed linear and cosine cooldowns).
        start = 1.0 - cfg.decay_fraction
        if p <= start:
            return 1.0
        x = (p - start) / cfg.decay_fraction
        return lo + (1.0 - lo) * (1.0 - math.sqrt(x))
    raise ValueError(f"schedule.name: unknown schedule {cfg.name!r}")


def lr_factor(
    cfg: ScheduleConfig, progress: float, step: int, total_steps: int | None = None
) -> float:
    """Multiplier of the peak lr, in [0, 1].

    progress: elapsed fraction of the run in [0, 1] (steps, time, tokens or FLOPs; clamped).
    step: optimizer steps done so far (0-based index of the step about to be taken).

    Default (total_steps None): decay is measured over the whole progress [0, 1] and warmup
    multiplies it: × min(1, (step+1)/warmup_steps) when warmup_steps, × min(1,
    progress/warmup_fraction) when warmup_fraction (both when both are set).

    nanoGPT mode (total_steps given and warmup_steps > 0; a step-driven run): exactly nanoGPT's
    `get_lr` / learning_rate — warmup (step+1)/(warmup_steps+1) while step < warmup_steps, then
    decay measured from warmup end, p = (step − warmup_steps)/(total_steps − warmup_steps), and
    min_lr_ratio from step total_steps on. warmup_fraction, if also set, still multiplies.

    Decaying schedules return exactly min_lr_ratio at progress 1 (or step total_steps).
    """
    progress = min(max(float(progress), 0.0), 1.0)
    w = cfg.warmup_steps
    factor = 1.0
    if total_steps is not None and w > 0:
        if step < w:
            factor = (step + 1) / (w + 1)
        elif total_steps <= w:
            factor = _decay(cfg, 1.0)
        else:
            factor = _decay(cfg, min(1.0, (step - w) / (total_steps - w)))
    else:
        factor = _decay(cfg, progress)
        if w > 0:
            factor *= min(1.0, (step + 1) / w)
    if cfg.warmup_fraction > 0:
        factor *= min(1.0, progress / cfg.warmup_fraction)
    return min(max(factor, 0.0), 1.0)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """group["lr"] = group["base_lr"] · factor for every group. Returns the main lr: that of the
    first group not run by Muon (for muon, the AdamW lr = optim.lr · factor)."""
    main = None
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor
        if main is None and not g.get("use_muon", False):
            main = g["lr"]
    return main if main is not None else optimizer.param_groups[0]["lr"]


def clip_grad_norm(
    model_or_params: nn.Module | Iterable[torch.Tensor], max_norm: float | None
) -> float:
    """Clip the global gradient L2 norm to max_norm (None or <= 0: measure only). Returns the
    norm before clipping as a float (one host sync). Under GradScaler call `scaler.unscale_(opt)`
    first. May be inf/nan when a gradient is not finite (the scaler then skips the step)."""
    if isinstance(model_or_params, nn.Module):
        params = [p for p in model_or_params.parameters() if p.grad is not None]
    else:
        params = [p for p in model_or_params if p.grad is not None]
    if not params:
        return 0.0
    if max_norm is None or max_norm <= 0:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm)
