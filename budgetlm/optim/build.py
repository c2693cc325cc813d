"""`build_optimizer`: one optimizer object for any `optim.name`, with its parameter groups."""

from __future__ import annotations

import torch
from torch import nn

from budgetlm.config import OptimConfig
from budgetlm.optim.groups import DEFAULT_MUON_LR, muon_split, param_groups
from budgetlm.optim.optimizers import Lamb, Lion, MuonWithAdamW

# ---------------------------------------------------------------------------------------------
# Factory


def _use_fused(model: nn.Module, fused: bool | None) -> bool:
    if fused is not None:
        return fused
    params = list(model.parameters())
    return bool(params) and all(p.is_cuda for p in params)


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, fused: bool | None = None, width_mult: float = 1.0
) -> torch.optim.Optimizer:
    """One optimizer for `cfg.name`; every group carries `base_lr`.

    fused: fused Adam/AdamW kernels when True, or when None and every parameter is on CUDA
    (ignored by the other optimizers).
    width_mult: µP's width multiplier (`ModelConfig.width_mult`); != 1 splits the groups by
    µP's per-parameter lrs (budgetlm.optim.groups); 1 gives standard parametrization's groups.

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
        muon_groups, adamw_groups = muon_split(model, cfg, width_mult)
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
    groups = param_groups(model, cfg, width_mult)
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


