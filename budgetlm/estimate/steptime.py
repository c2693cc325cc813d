"""Seconds per optimizer step: executed FLOPs over peak FLOP/s x MFU (no torch import)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from budgetlm.config import RunConfig
from budgetlm.estimate.flops import training_flops_per_token
from budgetlm.estimate.inputs import (
    assumed_micro_batch,
    checked_precision,
    checked_tokens_per_step,
)
from budgetlm.estimate.params import count_params

# Model FLOPs utilisation of dense-transformer training, as a fraction of the datasheet dense
# peak, by total parameters (log-linear between anchors). Large models: PaLM 540B 46.2%
# (Chowdhery et al. 2022, Table 3), Megatron-LM 1T 52% (Narayanan et al. 2021), Llama 3 405B
# 38–43% (Dubey et al. 2024, Table 4). Small models are launch- and bandwidth-bound: GPT-2 124M
# in eager PyTorch reaches ~25–35% on an A100 (nanoGPT without torch.compile), and models of a
# few million parameters a few percent. Priors only: time steps on the machine when possible.
_GPU_MFU_ANCHORS = ((1e6, 0.03), (1e7, 0.10), (1e8, 0.30), (1e9, 0.40), (1e10, 0.45))
# On a CPU the profile's peak is *measured* fp32 matmul throughput (no datasheet exists); a
# training step reaches this fraction of it (softmax, norms, GELU and the optimizer cost
# relatively more at small widths). Anchored on fp32 AdamW steps on a 2-core x86 VM with
# torch 2.13: tiny (0.12M params) ~14%, nanogpt-cpu (0.8M) ~24%, a 3.2M GPT ~36%, a 10.8M GPT
# ~52% of the measured peak (noisy: CPU timings swing by 2x under load).
_CPU_MFU_ANCHORS = ((1e5, 0.12), (1e6, 0.25), (1e7, 0.45), (1e8, 0.55))
# A measured GPU matmul peak is below the datasheet (cuBLAS reaches ~70–85% of the dense peak
# on large square bf16 matmuls); the GPU anchors are fractions of the datasheet, so against a
# measured peak they are divided by this ratio (taken from the profile when it has both).
MEASURED_TO_DATASHEET = 0.8


def _interp_log(n: float, anchors: tuple[tuple[float, float], ...]) -> float:
    if n <= anchors[0][0]:
        return anchors[0][1]
    for (x0, y0), (x1, y1) in zip(anchors, anchors[1:], strict=False):
        if n <= x1:
            t = (math.log10(n) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
            return y0 + t * (y1 - y0)
    return anchors[-1][1]


def default_mfu(n_params: int, device: str = "cuda") -> float:
    """Expected fraction of the profile's peak FLOP/s a training step reaches, by model size.

    cuda: fraction of the datasheet dense peak (anchors and sources at `_GPU_MFU_ANCHORS`);
    cpu: fraction of measured matmul throughput (`_CPU_MFU_ANCHORS`).
    """
    anchors = _CPU_MFU_ANCHORS if device == "cpu" else _GPU_MFU_ANCHORS
    return _interp_log(max(float(n_params), 1.0), anchors)


@dataclass(frozen=True)
class StepTime:
    """One optimizer step: seconds = flops_per_step / flops_per_s, flops_per_s = peak x mfu,
    where peak is the profile's `peak(precision)` and mfu the fraction of it a step reaches.

    flops_per_step counts executed FLOPs (forward + backward + recompute; for a LoRA
    fine-tune without the frozen weights' gradients, `training_flops_per_token`) over
    micro_batch x grad_accum x seq_len tokens. source: "measured profile" (this machine's
    measured matmul peak x default MFU), "datasheet peak x default MFU", or "timed".
    """

    seconds: float
    flops_per_step: float
    flops_per_s: float
    mfu: float
    source: str


def _measured_fraction(profile: object, precision: str, peak: float) -> float:
    """Measured matmul peak / datasheet peak for this precision, else MEASURED_TO_DATASHEET."""
    sheet = getattr(profile, "datasheet", None)
    if isinstance(sheet, dict):
        ref = sheet.get(precision)
        if ref:
            return min(1.0, max(0.1, peak / float(ref)))
    return MEASURED_TO_DATASHEET


def step_time(
    cfg: RunConfig,
    profile: object | None,
    micro_batch: int | None = None,
    precision: str | None = None,
) -> StepTime | None:
    """Seconds per optimizer step on `profile` (a budgetlm.hardware.HardwareProfile or any
    object with `.peak(precision) -> float | None`, `.measured: bool`, `.device: str`).

    None when there is no profile or it has no peak for the precision. If the profile offers
    `timed_mfu(cfg) -> float | None` (fit from timed steps) and it answers, that MFU is
    used and the source is "timed".
    """
    if profile is None:
        return None
    prec = checked_precision(precision or cfg.train.precision)
    peak = profile.peak(prec)  # type: ignore[attr-defined]
    if not peak:
        return None
    mb = assumed_micro_batch(cfg, micro_batch)
    tokens = checked_tokens_per_step(cfg, mb)
    flops_per_step = training_flops_per_token(cfg).total * tokens
    device = str(getattr(profile, "device", "cuda"))
    measured = bool(getattr(profile, "measured", False))
    mfu: float | None = None
    source = ""
    timed = getattr(profile, "timed_mfu", None)
    if callable(timed):
        mfu = timed(cfg)
        source = "timed"
    if not mfu:
        mfu = default_mfu(count_params(cfg.model).total, device)
        source = "measured profile" if measured else "datasheet peak x default MFU"
        if measured and device != "cpu":
            mfu = min(0.9, mfu / _measured_fraction(profile, prec, float(peak)))
    flops_per_s = float(peak) * float(mfu)
    return StepTime(
        seconds=flops_per_step / flops_per_s,
        flops_per_step=flops_per_step,
        flops_per_s=flops_per_s,
        mfu=float(mfu),
        source=source,
    )
