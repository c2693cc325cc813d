"""What a run reports: `TrainResult`, written as result.json (`budgetlm schema result` prints its
JSON Schema), and the plan's prediction checked against the actual loss."""

from __future__ import annotations

import math
import resource
import sys
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from budgetlm.config import Prediction, RunConfig
from budgetlm.train.runtime import close_distributed


class TrainResult(BaseModel):
    """The outcome of one `budgetlm train` run (result.json in the run directory)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    status: str
    """completed | early_stopped | diverged | interrupted | pruned"""
    stop_reason: str
    """the cap reached (max_steps, max_time, …) or why it ended"""
    run_dir: str
    """the run directory"""
    steps: int
    """optimizer steps taken"""
    tokens: int
    """training tokens consumed"""
    wall_seconds: float
    """wall time from start to result, setup included"""
    train_seconds: float
    """time inside the training loop (the time cap's clock)"""
    val_loss: float | None = None
    """last validation loss (nats/token)"""
    val_bpb: float | None = None
    """last validation bits per byte"""
    best_val_loss: float | None = None
    """best validation loss of the run"""
    best_val_bpb: float | None = None
    """bits per byte at the best val loss"""
    train_loss: float | None = None
    """last training loss seen"""
    params: int = 0
    """model parameters"""
    micro_batch: int = 0
    """sequences per micro-step (auto resolved)"""
    grad_accum: int = 1
    """micro-steps per optimizer step, over all ranks"""
    world_size: int = 1
    """data-parallel processes"""
    tokens_per_s: float | None = None
    """training tokens per second"""
    model_flops: float = 0.0
    """model FLOPs done (forward + backward)"""
    achieved_flops_per_s: float | None = None
    """model FLOPs per second"""
    measured_peak_flops: float | None = None
    """this machine's measured matmul peak for the precision"""
    mfu_vs_measured_peak: float | None = None
    """achieved_flops_per_s / measured_peak_flops"""
    entropy_rate: float | None = None
    """exact entropy rate of a synthetic Markov corpus (nats/token)"""
    predicted: dict[str, Any] = Field(default_factory=dict)
    """the estimator's memory and step time for this config; `plan`: the plan's prediction
    when the config came from one"""
    measured: dict[str, Any] = Field(default_factory=dict)
    """median step seconds, data-loading share, peak memory"""
    prediction: dict[str, Any] | None = None
    """for a run planned from a fitted law: predicted loss (and interval) against the actual
    one"""
    task: str = "lm"
    """lm or classification"""
    labels: list[str] | None = None
    """classification: the label set, in class-id order (also data.labels of config.yaml)"""
    val_accuracy: float | None = None
    """classification: accuracy on the whole validation split at the last eval"""
    val_f1: float | None = None
    """classification: macro-F1 on the whole validation split at the last eval"""
    monitor: str | None = None
    """the metric early stopping and the best checkpoint followed (train.monitor)"""
    best_eval: dict[str, Any] | None = None
    """the best eval by `monitor`: its step and val_* metrics"""
    restored_best: bool = False
    """the best eval's weights were restored at the end (a classification run with
    train.patience): the run's final checkpoint holds them"""

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


ResultFile = TrainResult  # the model of result.json


def check_prediction(predicted: Prediction | dict[str, Any] | None, val_loss: float | None,
                     val_bpb: float | None) -> dict[str, Any] | None:
    """Predicted against actual for a run planned from a fitted law (None for a prior's plan,
    whose loss is in another corpus's units)."""
    if isinstance(predicted, dict):
        predicted = Prediction.model_validate(predicted)
    if predicted is None or predicted.loss_kind != "fit":
        return None
    if val_loss is None or not math.isfinite(val_loss):
        return None
    pl = float(predicted.loss)
    out: dict[str, Any] = {
        "predicted_loss": pl, "actual_loss": val_loss,
        "error": (val_loss - pl) / pl,
        "interval_level": predicted.interval_level,
    }
    lo, hi = predicted.loss_lo, predicted.loss_hi
    if lo is not None and hi is not None:
        out.update({"loss_lo": lo, "loss_hi": hi, "inside": bool(lo <= val_loss <= hi)})
    if predicted.bpb is not None and val_bpb is not None:
        out.update({"predicted_bpb": predicted.bpb, "actual_bpb": val_bpb,
                    "bpb_lo": predicted.bpb_lo, "bpb_hi": predicted.bpb_hi})
    return out


def _measured(device: str, step_times: list[float], data_seconds: float) -> dict[str, Any]:
    """Median step time (past the first fifth), data-loading share, peak memory."""
    import torch

    measured: dict[str, Any] = {}
    if step_times:
        tail = sorted(step_times[len(step_times) // 5 :] or step_times)
        measured["step_seconds_median"] = tail[len(tail) // 2]
        measured["data_seconds_share"] = data_seconds / max(sum(step_times), 1e-9)
    if device == "cuda":
        measured["peak_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        measured["peak_rss_bytes"] = int(rss if sys.platform == "darwin" else rss * 1024)
    return measured


def _predicted(cfg: RunConfig, est: Any) -> dict[str, Any]:
    predicted: dict[str, Any] = {"memory_bytes": est.memory.total}
    if est.step is not None:
        predicted["step_seconds"] = est.step.seconds
        predicted["step_source"] = est.step.source
    if cfg.meta.get("predicted"):
        predicted["plan"] = cfg.meta["predicted"]
    return predicted


def _task_fields(cfg: RunConfig, c: Any, restored: bool) -> dict[str, Any]:
    """task, monitor, best_eval (and for classification labels, val_accuracy, val_f1,
    restored_best) of a run."""
    out: dict[str, Any] = {"task": cfg.task, "monitor": cfg.train.monitor}
    if c.best_metrics is not None:
        out["best_eval"] = {"step": c.best_step, **c.best_metrics}
    if cfg.task == "classification":
        last = c.last_metrics or {}
        out.update(labels=cfg.data.labels, val_accuracy=last.get("val_accuracy"),
                   val_f1=last.get("val_f1"), restored_best=restored)
    return out


def build_result(
    s: Any, c: Any, status: str, reason: str, mb: int, est: Any,
    step_times: list[float], data_seconds: float, restored: bool = False,
) -> TrainResult:
    """The run's TrainResult; rank 0 writes it as result.json; the process group is closed."""
    cfg = s.cfg
    rate = c.tokens / c.train_seconds if c.train_seconds > 0 else None
    achieved = c.flops / c.train_seconds if c.train_seconds > 0 else None
    peak = s.profile.peak(cfg.train.precision) if s.profile is not None else None
    if s.profile is not None and s.profile.device != s.device:
        peak = None
    result = TrainResult(
        status=status, stop_reason=reason, run_dir=str(s.run.path),
        steps=c.step, tokens=c.tokens,
        wall_seconds=time.perf_counter() - s.t_start, train_seconds=c.train_seconds,
        val_loss=c.last_val, val_bpb=c.last_bpb,
        best_val_loss=c.best_val if math.isfinite(c.best_val) else None,
        best_val_bpb=c.best_bpb, train_loss=c.last_loss,
        params=est.params.total, micro_batch=mb, grad_accum=cfg.train.grad_accum,
        world_size=s.dist.world, tokens_per_s=rate, model_flops=c.flops,
        achieved_flops_per_s=achieved, measured_peak_flops=peak,
        mfu_vs_measured_peak=(achieved / peak) if achieved and peak else None,
        entropy_rate=s.corpus.entropy_rate,
        predicted=_predicted(cfg, est),
        measured=_measured(s.device, step_times, data_seconds),
        prediction=check_prediction(cfg.prediction, c.last_val, c.last_bpb),
        **_task_fields(cfg, c, restored),
    )
    if s.dist.main:
        s.run.write_result(result.to_dict())
    close_distributed(s.dist)
    return result
