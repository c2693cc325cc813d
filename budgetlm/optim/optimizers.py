"""Optimizers torch does not ship: Lion (Chen et al. 2023), LAMB (You et al. 2020) and Muon for
hidden matrices with AdamW for the rest, behind one `torch.optim.Optimizer`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from budgetlm.optim.muon import Muon, loss_of

# ---------------------------------------------------------------------------------------------
# Lion and LAMB


def _check_hyperparameters(lr: float, betas: tuple[float, float], eps: float,
                           weight_decay: float) -> None:
    if lr < 0.0:
        raise ValueError(f"invalid lr {lr}")
    if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ValueError(f"invalid betas {betas}")
    if eps < 0.0:
        raise ValueError(f"invalid eps {eps}")
    if weight_decay < 0.0:
        raise ValueError(f"invalid weight_decay {weight_decay}")


class PerTensorOptimizer(torch.optim.Optimizer):
    """An optimizer whose update reads one parameter tensor at a time: `step` runs the closure,
    skips parameters without a gradient, rejects sparse gradients and calls `update`."""

    def update(self, p: torch.Tensor, g: torch.Tensor, state: dict[str, Any],
               group: dict[str, Any]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = loss_of(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                self.update(p, p.grad, self.state[p], group)
        return loss


class Lion(PerTensorOptimizer):
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
        _check_hyperparameters(lr, betas, 0.0, weight_decay)
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    def update(self, p: torch.Tensor, g: torch.Tensor, state: dict[str, Any],
               group: dict[str, Any]) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        b1, b2 = group["betas"]
        if not state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        m = state["exp_avg"]
        c = m.mul(b1).add_(g, alpha=1 - b1)
        if wd != 0:
            p.mul_(1 - lr * wd)
        p.add_(c.sign_(), alpha=-lr)
        m.mul_(b2).add_(g, alpha=1 - b2)


class Lamb(PerTensorOptimizer):
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
        _check_hyperparameters(lr, betas, eps, weight_decay)
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def update(self, p: torch.Tensor, g: torch.Tensor, state: dict[str, Any],
               group: dict[str, Any]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        b1, b2 = group["betas"]
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


# ---------------------------------------------------------------------------------------------
# Muon + AdamW as one optimizer


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon (budgetlm.optim.muon) on hidden matrices and torch.optim.AdamW on everything else, as
    ONE torch.optim.Optimizer.

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
        loss = loss_of(closure)
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


