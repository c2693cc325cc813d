"""Learning-rate schedules (a multiplier of the peak lr, driven by the elapsed fraction of the
binding cap or by steps), applying it, and gradient clipping."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from budgetlm.config import ScheduleConfig

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
        return wsd_cooldown(cfg, p - (1.0 - cfg.decay_fraction))
    raise ValueError(f"schedule.name: unknown schedule {cfg.name!r}")


def wsd_cooldown(cfg: ScheduleConfig, since: float) -> float:
    """The wsd multiplier `since` (a fraction of the run) after its cooldown began: 1 before,
    1 − sqrt down to min_lr_ratio over decay_fraction, min_lr_ratio after."""
    if since <= 0.0:
        return 1.0
    x = min(since / cfg.decay_fraction, 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * (1.0 - math.sqrt(x))


def lr_factor(
    cfg: ScheduleConfig, progress: float, step: int, total_steps: int | None = None,
    cooldown_from: float | None = None,
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

    cooldown_from (wsd, train.on_plateau cooldown): the progress at which a plateau started the
    cooldown early; it then runs from there over decay_fraction of the progress, in either mode.

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
    if cooldown_from is not None:
        factor = min(factor, wsd_cooldown(cfg, progress - cooldown_from))
    if cfg.warmup_fraction > 0:
        factor *= min(1.0, progress / cfg.warmup_fraction)
    return min(max(factor, 0.0), 1.0)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """group["lr"] = group["base_lr"] · factor for every group. Returns the main lr: that of the
    first group not run by Muon and not rescaled by µP (`width_lr_mult` 1), so optim.lr ·
    factor (for muon, the AdamW lr)."""
    main = None
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor
        if main is None and not g.get("use_muon", False) and g.get("width_lr_mult", 1.0) == 1.0:
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
