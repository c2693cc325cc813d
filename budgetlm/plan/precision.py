"""Precisions the planner prices, and the step time of a candidate in one of them.

fp32, bf16 and fp16 are what the trainer runs (`train.precision`). fp8 is priced from the
datasheet's dense FP8 tensor peak (`budgetlm.hardware.FP8_KEY`) for GPUs whose row has one, and
only when asked for (`--precision fp8`): the estimator has no fp8 of its own, so an fp8 candidate
is its bf16 twin (memory, communication, MFU) at the fp8 peak, and it is estimate-only: the
trainer's fp8 path is not there yet, so it is never the exported (top) candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from budgetlm.config import PRECISIONS, RunConfig
from budgetlm.estimate import step_time

FP8 = "fp8"
PLAN_PRECISIONS = (*PRECISIONS, FP8)
# precision -> why a candidate in it is an estimate only (the trainer cannot run it)
ESTIMATE_ONLY: dict[str, str] = {
    FP8: "datasheet fp8 peak; the trainer's fp8 path is not there yet",
}
FP8_TIME_SOURCE = "datasheet fp8 peak x default MFU (unmeasured)"


def estimator_precision(precision: str) -> str:
    """The precision the estimator prices memory and communication in (fp8 as bf16)."""
    return "bf16" if precision == FP8 else precision


def estimate_only(precision: str) -> bool:
    """True for a precision the planner prices but the trainer cannot run."""
    return precision in ESTIMATE_ONLY


@dataclass(frozen=True)
class ComputeTime:
    """Seconds of one micro-step of one device, and the MFU and source behind them."""

    seconds: float
    mfu: float
    source: str


def compute_time(cfg: RunConfig, profile: Any, micro_batch: int,
                 precision: str) -> ComputeTime | None:
    """`budgetlm.estimate.step_time` of `cfg` at `micro_batch` in `precision` (None: no peak
    for it); fp8 is the bf16 step at the datasheet's fp8 peak (the same MFU)."""
    if precision != FP8:
        st = step_time(cfg, profile, micro_batch=micro_batch, precision=precision)
        return None if st is None else ComputeTime(st.seconds, st.mfu, st.source)
    fp8, bf16 = profile.peak(FP8), profile.peak("bf16")
    if not fp8 or not bf16:
        return None
    st = step_time(cfg, profile, micro_batch=micro_batch, precision="bf16")
    if st is None:
        return None
    return ComputeTime(st.seconds * bf16 / fp8, st.mfu, FP8_TIME_SOURCE)
