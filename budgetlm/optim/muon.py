"""Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/) with the orthogonalization
computed in a dtype the device is fast at.

The update rule is torch.optim.Muon's (torch 2.13) step for step: momentum buffer by lerp, optional
Nesterov, a quintic Newton-Schulz iteration (a, b, c) = (3.4445, -4.7750, 2.0315) for 5 steps,
decoupled weight decay, and the learning rate scaled by sqrt(max(1, rows/cols)) ("original").
torch's version always iterates in bfloat16, which GPUs run at tensor-core speed but CPUs without
native bf16 kernels run 20-50x slower than fp32 (measured by `budgetlm profile`). Here the
iteration dtype is `ns_dtype`: bfloat16 on CUDA, float32 elsewhere, unless set. With
`ns_dtype=torch.bfloat16` it reproduces torch.optim.Muon exactly (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
EPS = 1e-7


def loss_of(closure: Callable[[], Any] | None) -> Any:
    """The loss a `step(closure)` returns: the closure run with gradients enabled, or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def newton_schulz(g: torch.Tensor, dtype: torch.dtype, steps: int = NS_STEPS,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  eps: float = EPS) -> torch.Tensor:
    """Approximate orthogonalization U S' V^T of a 2-D matrix (S' ~ 1) in `dtype`."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, update, x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D hidden weight matrices; see the module docstring."""

    def __init__(self, params: Iterable[Any], lr: float = 0.02, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_dtype: torch.dtype | None = None) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be >= 0")
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                    "nesterov": nesterov}
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D parameters only, got shape {tuple(p.shape)}")

    def _dtype(self, p: torch.Tensor) -> torch.dtype:
        if self.ns_dtype is not None:
            return self.ns_dtype
        return torch.bfloat16 if p.is_cuda else torch.float32

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = loss_of(closure)
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - mu)
                update = grad.lerp(buf, mu) if group["nesterov"] else buf
                ortho = newton_schulz(update, self._dtype(p))
                rows, cols = p.shape
                p.mul_(1 - lr * wd)
                p.add_(ortho, alpha=-lr * math.sqrt(max(1.0, rows / cols)))
        return loss
