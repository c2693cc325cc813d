"""The training loop proper: micro-steps, optimizer step, logging, eval, early stop, checkpoints."""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from budgetlm.config import RunConfig, with_overrides
from budgetlm.errors import UserError

if TYPE_CHECKING:
    from budgetlm.train.api import TrainResult, _Run


class StopRun(Exception):
    """Raised from an `on_eval` callback to end a run early with a status (e.g. "pruned")."""

    def __init__(self, status: str, reason: str = ""):
        super().__init__(reason or status)
        self.status = status
        self.reason = reason or status


@dataclass
class Counters:
    step: int = 0
    tokens: int = 0
    flops: float = 0.0
    train_seconds: float = 0.0
    best_val: float = math.inf
    best_bpb: float | None = None
    bad_evals: int = 0
    last_val: float | None = None
    last_bpb: float | None = None
    last_loss: float | None = None


def _rng_state() -> dict[str, Any]:
    import torch

    st: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(st["cpu"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _batch(s: _Run, split: Any, mb: int, step: int, micro: int) -> tuple[Any, Any]:
    """The (inputs, targets) of one micro-step; BERT batches are masked with a seeded generator."""
    import torch

    from budgetlm.data import sample_batch
    from budgetlm.model import mlm_mask

    cfg = s.cfg
    x, y = sample_batch(split, mb, cfg.model.seq_len, cfg.seed, step, micro)
    if s.mask_id is not None:
        g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step * 1009 + micro) % 2**62)
        x, y = mlm_mask(x, cfg.model.mask_rate, s.mask_id, s.mask_id, g)
    return x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)


def evaluate(s: _Run, model: Any, mb: int) -> tuple[float, float]:
    """Mean val loss (nats/token) and bits per byte on the fixed validation windows."""
    import torch

    from budgetlm.data import bits_per_byte, val_batches
    from budgetlm.model import mlm_mask
    from budgetlm.train.api import autocast_ctx

    cfg = s.cfg
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i, (x, y) in enumerate(
            val_batches(s.corpus.val, mb, cfg.model.seq_len, cfg.train.eval_tokens)
        ):
            if s.mask_id is not None:
                g = torch.Generator().manual_seed(1_000_003 + i)
                x, y = mlm_mask(x, cfg.model.mask_rate, s.mask_id, s.mask_id, g)
            x, y = x.to(s.device), y.to(s.device)
            with autocast_ctx(s.device, cfg.train.precision):
                _, loss = model(x, y)
            n = int((y != -100).sum())
            total += float(loss) * n
            count += n
    model.train(was_training)
    loss = total / max(count, 1)
    return loss, bits_per_byte(loss, s.corpus.val_bytes_per_token)


def _fits(s: _Run, model: Any, opt: Any, mb: int) -> float | None:
    """Tokens/s of two full steps at micro-batch `mb`, or None when it runs out of memory."""
    import torch

    from budgetlm.train.api import autocast_ctx

    try:
        times = []
        for rep in range(3):
            t0 = time.perf_counter()
            x, y = _batch(s, s.corpus.train, mb, step=-1 - rep, micro=0)
            with autocast_ctx(s.device, s.cfg.train.precision):
                _, loss = model(x, y)
            loss.backward()
            opt.zero_grad(set_to_none=True)
            if s.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return mb * s.cfg.model.seq_len / min(times[1:])
    except torch.OutOfMemoryError:
        opt.zero_grad(set_to_none=True)
        if s.device == "cuda":
            torch.cuda.empty_cache()
        return None


def resolve_micro_batch(s: _Run, model: Any, opt: Any) -> int:
    """`micro_batch: auto`: largest that fits on a GPU (backing off on OOM), fastest on a CPU."""
    from budgetlm.estimate import memory_breakdown

    limit = None
    if s.profile is not None:
        limit = 0.9 * s.profile.device_memory_bytes
    candidates = [2**i for i in range(0, 11)]
    if limit is not None:
        fitting = [b for b in candidates if memory_breakdown(s.cfg, micro_batch=b).total <= limit]
        candidates = fitting or [1]
    if s.device == "cuda":
        for mb in reversed(candidates):
            if _fits(s, model, opt, mb) is not None:
                return mb
        raise UserError("train.micro_batch: even micro_batch=1 does not fit in GPU memory")
    best, best_rate = 1, 0.0
    for mb in candidates[:7]:  # 1..64 on a CPU
        rate = _fits(s, model, opt, mb)
        if rate is None:
            break
        if rate > best_rate * 1.03:
            best, best_rate = mb, rate
    return best


def run_loop(s: _Run) -> TrainResult:
    import torch

    from budgetlm.model import build_model
    from budgetlm.optim import build_optimizer, clip_grad_norm, lr_factor, set_lr
    from budgetlm.train.api import TrainResult, autocast_ctx
    from budgetlm.train.rundir import load_checkpoint

    cfg, t = s.cfg, s.cfg.train
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(s.device)
    if t.init_from and s.resume_state is None:
        init = load_checkpoint(t.init_from, "train.init_from")
        try:
            model.load_state_dict(init["model"])
        except (RuntimeError, KeyError) as exc:
            first = str(exc).splitlines()[0]
            raise UserError(
                f"train.init_from: checkpoint does not match the model ({first})"
            ) from None
    model.activation_checkpointing = t.activation_checkpointing
    raw_model = model
    opt = build_optimizer(model, cfg.optim, fused=True if s.device == "cuda" else None)

    mb = t.micro_batch
    if mb == "auto":
        mb = resolve_micro_batch(s, model, opt)
        cfg = s.cfg = with_overrides(cfg, [f"train.micro_batch={mb}"])
    assert isinstance(mb, int)
    if t.grad_accum % s.dist.world != 0:
        raise UserError(
            f"train.grad_accum: {t.grad_accum} must be divisible by the world size {s.dist.world}"
        )
    my_micros = [m for m in range(t.grad_accum) if m % s.dist.world == s.dist.rank]
    if s.dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[s.dist.local_rank] if s.device == "cuda" else None)
    if t.compile:
        model = torch.compile(model)
    scaler = torch.amp.GradScaler(s.device, enabled=t.precision == "fp16")

    c = Counters()
    if s.resume_state is not None:
        st = s.resume_state
        raw_model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        c = Counters(**st["counters"])
        _set_rng_state(st["rng"])
        if s.dist.main:
            s.run.truncate_metrics(c.step)
    elif s.dist.main:
        from budgetlm.train.rundir import environment

        s.run.create(cfg, environment(s.profile.to_dict() if s.profile else None))
        s.corpus.tokenizer.save(s.run.path / "tokenizer")

    est = s.est.estimate(cfg, s.profile)
    model_flops_per_token = est.flops.forward + est.flops.backward  # model FLOPs (no recompute)
    tokens_per_step = mb * t.grad_accum * cfg.model.seq_len
    other_caps = t.max_time or t.max_tokens or t.max_flops
    by_steps = cfg.schedule.driver == "steps" or (cfg.schedule.driver == "auto" and not other_caps)
    total_steps = t.max_steps if by_steps else None  # nanoGPT-style decay after warmup

    def checkpoint_state() -> dict[str, Any]:
        return {
            "model": raw_model.state_dict(),
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "counters": c.__dict__.copy(),
            "rng": _rng_state(),
            "config": cfg.model_dump(mode="json"),
        }

    status, reason = "completed", ""
    loop_start = time.perf_counter()
    elapsed_before = c.train_seconds
    last_eval_time = loop_start
    last_eval_step = c.step if s.resume_state is not None else -1
    step_times: list[float] = []
    data_seconds = 0.0  # host time spent drawing batches: shows whether data loading stalls
    if s.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    bar = _progress_bar(s)
    model.train()
    try:
        while True:
            elapsed = elapsed_before + time.perf_counter() - loop_start
            stop = s.stop_reason(c.step, c.tokens, c.flops, elapsed)
            if stop:
                reason = stop
                break
            t0 = time.perf_counter()
            p = s.cap_progress(c.step, c.tokens, c.flops, elapsed)
            lr = set_lr(opt, lr_factor(cfg.schedule, p, c.step, total_steps=total_steps))
            loss_acc = torch.zeros((), device=s.device)
            for i, m in enumerate(my_micros):
                t_data = time.perf_counter()
                x, y = _batch(s, s.corpus.train, mb, c.step, m)
                data_seconds += time.perf_counter() - t_data
                sync = (
                    model.no_sync()
                    if s.dist.world > 1 and i < len(my_micros) - 1
                    else contextlib.nullcontext()
                )
                with sync:
                    with autocast_ctx(s.device, t.precision):
                        _, loss = model(x, y)
                    loss = loss / len(my_micros)
                    scaler.scale(loss).backward()
                loss_acc += loss.detach()
            if cfg.optim.grad_clip is not None:
                scaler.unscale_(opt)
                clip_grad_norm(raw_model, cfg.optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            c.step += 1
            c.tokens += tokens_per_step
            c.flops += model_flops_per_token * tokens_per_step
            check_now = s.device == "cpu" or c.step % t.log_interval == 0
            if check_now:
                if s.dist.world > 1:
                    import torch.distributed as dist

                    dist.all_reduce(loss_acc, op=dist.ReduceOp.AVG)
                c.last_loss = float(loss_acc)
                if not math.isfinite(c.last_loss):
                    status, reason = "diverged", f"non-finite loss at step {c.step}"
                    break
            step_times.append(time.perf_counter() - t0)
            now = time.perf_counter()
            c.train_seconds = elapsed_before + now - loop_start
            if c.step % t.log_interval == 0 and s.dist.main:
                s.run.log({
                    "kind": "train", "step": c.step, "tokens": c.tokens, "lr": lr,
                    "loss": c.last_loss, "elapsed": c.train_seconds, "progress": p,
                })
            due = c.step % t.eval_interval == 0 or (
                t.eval_time_interval is not None and now - last_eval_time >= t.eval_time_interval
            )
            if due:
                stopped = _eval_and_track(s, raw_model, mb, c, checkpoint_state)
                last_eval_time, last_eval_step = time.perf_counter(), c.step
                if stopped:
                    status, reason = "early_stopped", f"no improvement in {t.patience} evals"
                    break
            if t.checkpoint_interval and c.step % t.checkpoint_interval == 0 and s.dist.main:
                s.run.save_checkpoint(checkpoint_state(), c.step, t.keep_last)
            if bar is not None:
                bar.update(s, c, p)
    except KeyboardInterrupt:
        status, reason = "interrupted", "Ctrl-C"
    except StopRun as exc:
        status, reason = exc.status, exc.reason
    finally:
        if bar is not None:
            bar.close()
    c.train_seconds = elapsed_before + time.perf_counter() - loop_start
    if status in ("completed", "early_stopped") and last_eval_step != c.step and c.step > 0:
        _eval_and_track(s, raw_model, mb, c, checkpoint_state, final=True)
    if s.dist.main and c.step > 0 and status != "diverged":
        s.run.save_checkpoint(checkpoint_state(), c.step, t.keep_last)
    return _result(s, cfg, c, status, reason, mb, est, step_times, data_seconds, TrainResult)


def _eval_and_track(
    s: _Run, model: Any, mb: int, c: Counters, state_fn: Any, final: bool = False
) -> bool:
    """Evaluate, log, keep the best checkpoint; True when early stopping says stop."""
    t = s.cfg.train
    loss, bpb = evaluate(s, model, mb)
    c.last_val, c.last_bpb = loss, bpb
    improved = loss < c.best_val - t.min_delta
    if loss < c.best_val:
        c.best_val, c.best_bpb = loss, bpb
        if s.dist.main and math.isfinite(loss):
            s.run.save_best(state_fn())
    c.bad_evals = 0 if improved else c.bad_evals + 1
    record = {
        "kind": "eval", "step": c.step, "tokens": c.tokens, "val_loss": loss, "val_bpb": bpb,
        "elapsed": c.train_seconds, "flops": c.flops, "final": final,
    }
    if s.dist.main:
        s.run.log(record)
    if s.on_eval is not None and not final:
        s.on_eval(record)
    return t.patience is not None and c.bad_evals >= t.patience and not final


def _prediction(cfg: RunConfig, val_loss: float | None,
                val_bpb: float | None) -> dict[str, Any] | None:
    from budgetlm.calibrate import check_prediction

    plan = cfg.meta.get("predicted")
    return check_prediction(plan, val_loss, val_bpb) if isinstance(plan, dict) else None


def _result(
    s: _Run, cfg: RunConfig, c: Counters, status: str, reason: str, mb: int, est: Any,
    step_times: list[float], data_seconds: float, result_cls: Any,
) -> TrainResult:
    import torch

    measured: dict[str, Any] = {}
    if step_times:
        tail = sorted(step_times[len(step_times) // 5 :] or step_times)
        measured["step_seconds_median"] = tail[len(tail) // 2]
        measured["data_seconds_share"] = data_seconds / max(sum(step_times), 1e-9)
    if s.device == "cuda":
        measured["peak_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        measured["peak_rss_bytes"] = int(rss if sys.platform == "darwin" else rss * 1024)
    predicted: dict[str, Any] = {"memory_bytes": est.memory.total}
    if est.step is not None:
        predicted["step_seconds"] = est.step.seconds
        predicted["step_source"] = est.step.source
    if cfg.meta.get("predicted"):
        predicted["plan"] = cfg.meta["predicted"]
    rate = c.tokens / c.train_seconds if c.train_seconds > 0 else None
    achieved = c.flops / c.train_seconds if c.train_seconds > 0 else None
    peak = s.profile.peak(cfg.train.precision) if s.profile is not None else None
    if s.profile is not None and s.profile.device != s.device:
        peak = None
    result = result_cls(
        status=status,
        stop_reason=reason,
        run_dir=str(s.run.path),
        steps=c.step,
        tokens=c.tokens,
        wall_seconds=time.perf_counter() - s.t_start,
        train_seconds=c.train_seconds,
        val_loss=c.last_val,
        val_bpb=c.last_bpb,
        best_val_loss=c.best_val if math.isfinite(c.best_val) else None,
        best_val_bpb=c.best_bpb,
        train_loss=c.last_loss,
        params=est.params.total,
        micro_batch=mb,
        grad_accum=cfg.train.grad_accum,
        world_size=s.dist.world,
        tokens_per_s=rate,
        model_flops=c.flops,
        achieved_flops_per_s=achieved,
        measured_peak_flops=peak,
        mfu_vs_measured_peak=(achieved / peak) if achieved and peak else None,
        entropy_rate=s.corpus.entropy_rate,
        predicted=predicted,
        measured=measured,
        prediction=_prediction(cfg, c.last_val, c.last_bpb),
    )
    if s.dist.main:
        s.run.write_result(result.to_dict())
    if s.dist.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return result


class _Bar:
    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.task = self.p.add_task("train", total=1.0, info="")
        self.p.start()
        self.last = 0.0

    def update(self, s: _Run, c: Counters, p: float) -> None:
        now = time.perf_counter()
        if now - self.last < 0.2:
            return
        self.last = now
        rate = c.tokens / c.train_seconds if c.train_seconds else 0.0
        loss = f"{c.last_loss:.3f}" if c.last_loss is not None else "-"
        val = f" val {c.last_val:.3f}" if c.last_val is not None else ""
        info = f"step {c.step} · loss {loss}{val} · {rate:,.0f} tok/s"
        self.p.update(self.task, completed=p, info=info)

    def close(self) -> None:
        self.p.stop()


def _progress_bar(s: _Run) -> _Bar | None:
    if not s.progress or not s.dist.main:
        return None
    return _Bar()

