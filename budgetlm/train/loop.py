"""The training loop proper: micro-steps, optimizer step, logging, eval, early stop, checkpoints.

`run_loop(state)` builds the model and optimizer (`build_engine`), resumes or creates the run
directory, then `TrainingLoop` takes steps until a cap, early stop, divergence, a `StopRun` from
the eval callback, or Ctrl-C; the result is written by `budgetlm.train.result`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from budgetlm import model as models  # looked up at call time: a trial's fault hook patches it
from budgetlm.config import with_values
from budgetlm.errors import UserError
from budgetlm.estimate import estimate, memory_breakdown, training_flops_per_token
from budgetlm.optim import build_optimizer, clip_grad_norm, lr_factor, set_lr
from budgetlm.train import classify
from budgetlm.train.batches import draw_batch, eval_metrics, resolve_micro_batch
from budgetlm.train.finetune import base_model, plain_state_dict, prepare_model, save_run_adapter
from budgetlm.train.parallel import (
    BatchSplit,
    agree,
    grad_scaler,
    grad_sync,
    rank0_value,
    shard_model,
    sharded,
    split_global_batch,
    wrap_data_parallel,
)
from budgetlm.train.progress import progress_bar
from budgetlm.train.result import TrainResult, build_result
from budgetlm.train.rundir import environment, load_checkpoint
from budgetlm.train.runtime import autocast_ctx
from budgetlm.train.sharded_ckpt import load_sharded, load_whole_into_sharded
from budgetlm.train.state import Counters, RunState, StopRun, rng_state, set_rng_state
from budgetlm.units import human_bytes


@dataclass
class Engine:
    """What computes: the model as trained (DDP/compiled wrapper), the plain model (sharded in
    place under fsdp/hsdp), optimizer, gradient scaler, micro-batch and this rank's share of each
    global batch."""

    model: Any
    raw_model: Any
    opt: Any
    scaler: Any
    micro_batch: int
    split: BatchSplit
    sharded: bool = False  # fsdp/hsdp over several ranks: collective, sharded checkpoints


def _init_weights_from(model: Any, path: str) -> None:
    init = load_checkpoint(path, "train.init_from")
    try:
        model.load_state_dict(plain_state_dict(init))
    except (RuntimeError, KeyError) as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"train.init_from: checkpoint does not match the model ({first})") from None


def check_it_fits(s: RunState) -> None:
    """Refuse, before building anything, a model this machine cannot hold: the estimator's
    tensor peak (exact on CPU) against the memory of the device the profile describes. Sizes
    beyond any hardware are refused by the estimator itself."""
    mem = memory_breakdown(s.cfg)
    p = s.profile
    if p is None or p.device != s.device or not p.device_memory_bytes:
        return
    if mem.tensor_peak > p.device_memory_bytes:
        raise UserError(
            f"train: {s.cfg.name} needs about {human_bytes(mem.tensor_peak)} at its peak "
            f"({mem.peak_phase}); this {s.device} has {human_bytes(p.device_memory_bytes)} "
            "(see budgetlm estimate; try a smaller model.* or train.micro_batch, or "
            "train.activation_checkpointing=true)"
        )


def build_engine(s: RunState) -> Engine:
    """Model (from model.from_pretrained, then init_from, unless resuming), sharded by FSDP2
    under fsdp/hsdp, optimizer, resolved micro-batch and this rank's share of the global batch
    (`split_global_batch`), DDP under ddp, compile."""
    import torch

    check_it_fits(s)
    cfg, t = s.cfg, s.cfg.train
    torch.manual_seed(cfg.seed)
    model = models.build_model(cfg.model).to(s.device)
    if cfg.model.from_pretrained and s.resume_state is None:  # init_from, if set, loads on top
        models.load_pretrained(model, cfg.model, cfg.model.from_pretrained)
    if t.init_from and s.resume_state is None and cfg.task == "classification":
        classify.init_backbone(model, cfg, t.init_from)  # LM head dropped, classifier fresh
    elif t.init_from and s.resume_state is None:
        _init_weights_from(model, t.init_from)
    model.activation_checkpointing = t.activation_checkpointing
    model = prepare_model(model, cfg)  # full: as it is; lora: peft's wrapper, adapters train
    model = shard_model(model, s)  # fsdp/hsdp under torchrun: FSDP2 per block, then the root
    raw_model = model
    opt = build_optimizer(model, cfg.optim, fused=True if s.device == "cuda" else None,
                          width_mult=cfg.model.width_mult)
    mb = t.micro_batch
    if mb == "auto":
        mb = resolve_micro_batch(s, model, opt)
        models.expert_load(base_model(model))  # the probe's forwards are not training tokens
        mb = int(rank0_value(s, mb))  # every rank trains rank 0's choice
        s.cfg = with_values(cfg, {"train.micro_batch": mb})
    assert isinstance(mb, int)
    split = split_global_batch(mb, t.grad_accum, s.dist.world, s.dist.rank)
    model = wrap_data_parallel(model, s)  # ddp under torchrun: DistributedDataParallel
    if t.compile:
        model = torch.compile(model)
    return Engine(model, raw_model, opt, grad_scaler(s), mb, split, sharded(s))


def resume_or_create(s: RunState, e: Engine) -> Counters:
    """Counters from the checkpoint being resumed (weights, optimizer, RNG restored), or a new
    run directory with the resolved config, environment and tokenizer."""
    if s.dist.main:
        for name in s.unreadable:
            s.run.set_aside(name)
    if s.resume_state is None:
        if s.dist.main:
            s.say_resume()
            s.run.create(s.cfg, environment(s.profile.to_dict() if s.profile else None))
            s.corpus.tokenizer.save(s.run.path / "tokenizer")
            if s.restart:
                s.run.truncate_metrics(0)
        return Counters()
    st = s.resume_state
    _load_resumed(s, e, st)
    s.say_resume()
    set_rng_state(st["rng"])
    c = Counters(**st["counters"])
    if s.dist.main:
        s.run.truncate_metrics(c.step)
    return c


def _load_resumed(s: RunState, e: Engine, st: dict[str, Any]) -> None:
    """Weights, optimizer and scaler state of the resumed checkpoint; a UserError when the run's
    config.yaml no longer describes the model or optimizer it saved. A sharded checkpoint loads
    into any layout (resharded by DCP); a single-file one into a sharded model too."""
    try:
        if "sharded" in st:
            load_sharded(st["sharded"], e.raw_model, e.opt)
        elif e.sharded:
            load_whole_into_sharded(st, e.raw_model, e.opt)
        else:
            e.raw_model.load_state_dict(st["model"])
            e.opt.load_state_dict(st["optimizer"])
        if st.get("scaler"):
            e.scaler.load_state_dict(st["scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        saved = (st.get("config") or {}).get("model") or {}
        now = s.cfg.model.model_dump(mode="json")
        changed = [f"model.{k}: {v} -> {now.get(k)}" for k, v in saved.items() if v != now.get(k)]
        why = ", ".join(changed[:4]) if changed else str(exc).strip().splitlines()[0][:200]
        raise UserError(
            f"--resume {s.run.path}: config.yaml no longer matches the checkpoint ({why}); "
            "restore the config or start a new --run-dir"
        ) from None


class TrainingLoop:
    """Steps until a stop; `status` and `reason` say why it stopped."""

    def __init__(self, s: RunState, e: Engine, c: Counters):
        cfg, t = s.cfg, s.cfg.train
        self.s, self.e, self.c = s, e, c
        self.tokens_per_step = cfg.tokens_per_step
        self.flops_per_token = training_flops_per_token(cfg, checkpointing=False).model
        other_caps = t.max_time or t.max_tokens or t.max_flops
        by_steps = cfg.schedule.driver == "steps" or (
            cfg.schedule.driver == "auto" and not other_caps
        )
        self.total_steps = t.max_steps if by_steps else None  # nanoGPT-style decay after warmup
        self.status, self.reason = "completed", ""
        self.restored = False  # the best checkpoint's weights restored at the end
        self.step_times: list[float] = []
        self.micros_done = 0  # micro-steps of the step under way
        self.data_seconds = 0.0  # host time drawing batches: shows whether data loading stalls
        self.elapsed_before = c.train_seconds
        self.loop_start = time.perf_counter()
        self.last_eval_time = self.loop_start
        self.last_eval_step = c.step if s.resume_state is not None else -1
        self.last_ckpt_time = self.loop_start

    def trainer_state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the weights and the optimizer state."""
        e = self.e
        return {
            "scaler": e.scaler.state_dict() if e.scaler.is_enabled() else None,
            "counters": self.c.__dict__.copy(),
            "rng": rng_state(),
            "config": self.s.cfg.model_dump(mode="json"),
        }

    def checkpoint_state(self) -> dict[str, Any]:
        e = self.e
        return {
            "model": e.raw_model.state_dict(), "optimizer": e.opt.state_dict(),
            **self.trainer_state(),
        }

    def save(self, best: bool = False) -> None:
        """This step's checkpoint (or the best): one file that rank 0 writes, or under
        fsdp/hsdp a sharded directory that every rank writes its shards into."""
        s, e, keep = self.s, self.e, self.s.cfg.train.keep_last
        if e.sharded:
            step = None if best else self.c.step
            s.run.save_sharded_checkpoint(
                e.raw_model, e.opt, self.trainer_state(), s.dist.main, step, keep
            )
        elif s.dist.main and best:
            s.run.save_best(self.checkpoint_state())
        elif s.dist.main:
            s.run.save_checkpoint(self.checkpoint_state(), self.c.step, keep)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.loop_start

    def run(self) -> None:
        """Take steps until a cap, early stop, divergence, StopRun or Ctrl-C."""
        bar = progress_bar(self.s)
        self.e.model.train()
        try:
            while self.step(bar):
                pass
        except KeyboardInterrupt:
            self.status, self.reason = "interrupted", "Ctrl-C"
        except StopRun as exc:
            self.status, self.reason = exc.status, exc.reason
        finally:
            if bar is not None:
                bar.close()
        self.c.train_seconds = self.elapsed()

    def step(self, bar: Any) -> bool:
        """One optimizer step and what follows it; False when the run must stop."""
        s, c = self.s, self.c
        stop = s.stop_reason(c.step, c.tokens, c.flops, self.elapsed())
        if stop:
            self.reason = stop
            return False
        t0 = time.perf_counter()
        p = s.cap_progress(c.step, c.tokens, c.flops, self.elapsed())
        if s.cfg.train.on_plateau == "cooldown" and not self.cool_down(p):
            return False
        lr = set_lr(self.e.opt, lr_factor(s.cfg.schedule, p, c.step, total_steps=self.total_steps,
                                          cooldown_from=c.cooldown_from))
        loss = self.accumulate_and_step()
        if loss is None:
            self.reason = "max_time" if c.step > 0 else self.no_step_fits()
            return False
        c.step += 1
        c.tokens += self.tokens_per_step
        c.flops += self.flops_per_token * self.tokens_per_step
        if not self.track_loss(loss):
            return False
        self.step_times.append(time.perf_counter() - t0)
        c.train_seconds = self.elapsed()
        if c.step % s.cfg.train.log_interval == 0 and s.dist.main:
            s.run.log({
                "kind": "train", "step": c.step, "tokens": c.tokens, "lr": lr,
                "loss": c.last_loss, "elapsed": c.train_seconds, "progress": p,
            })
        if not self.eval_if_due():
            return False
        self.checkpoint_if_due()
        if bar is not None:
            bar.update(s, c, p)
        return True

    def cool_down(self, p: float) -> bool:
        """train.on_plateau cooldown: when patience has run out in the stable phase, the wsd
        cooldown starts at this step (every rank at rank 0's progress); False once that
        cooldown has ended, and the run stops there."""
        s, c = self.s, self.c
        decay = s.cfg.schedule.decay_fraction
        if agree(s, c.plateau):
            c.plateau = False
            p0 = rank0_value(s, p)
            if c.cooldown_from is None and p0 < 1.0 - decay:
                c.cooldown_from = p0
                if s.dist.main:
                    s.run.log({"kind": "cooldown", "step": c.step, "progress": p0,
                               "elapsed": c.train_seconds})
        if c.cooldown_from is None or not agree(s, p >= c.cooldown_from + decay):
            return True
        self.status = "early_stopped"
        self.reason = (f"no improvement in {s.cfg.train.patience} evals: cooled down from "
                       f"{c.cooldown_from:.0%} of the run")
        return False

    def checkpoint_if_due(self) -> None:
        """A checkpoint every checkpoint_interval steps or checkpoint_seconds of training,
        whichever comes first."""
        s, c, t = self.s, self.c, self.s.cfg.train
        now = time.perf_counter()
        by_steps = t.checkpoint_interval is not None and c.step % t.checkpoint_interval == 0
        by_time = t.checkpoint_seconds is not None and (
            now - self.last_ckpt_time >= t.checkpoint_seconds
        )
        if self.e.sharded and t.checkpoint_seconds is not None:
            by_time = agree(s, by_time)  # every rank writes its shards
        if not (by_steps or by_time):
            return
        self.save()
        self.last_ckpt_time = time.perf_counter()

    def out_of_time(self) -> bool:
        """The time cap reached (between micro-steps); every rank takes the same answer."""
        max_time = self.s.cfg.train.max_time
        if max_time is None:
            return False
        return agree(self.s, self.elapsed() >= max_time)

    def no_step_fits(self) -> str:
        t = self.s.cfg.train
        return (
            f"max_time: not one optimizer step finished within train.max_time={t.max_time:g} s "
            f"(train.grad_accum={t.grad_accum} micro-steps; {self.micros_done} done); "
            "lower train.grad_accum or raise the time cap"
        )

    def accumulate_and_step(self) -> Any:
        """Forward and backward of this rank's micro-steps, then the optimizer step; the mean
        micro-step loss (a detached tensor), or None when the time cap came between micro-steps:
        the unfinished step is abandoned (its gradients dropped, never applied)."""
        import torch

        s, e = self.s, self.e
        loss_acc = torch.zeros((), device=s.device)
        self.micros_done = 0
        micros = e.split.micros
        for i, m in enumerate(micros):
            if i > 0 and self.out_of_time():
                e.opt.zero_grad(set_to_none=True)
                return None
            t_data = time.perf_counter()
            x, y = draw_batch(s, s.corpus.train, e.micro_batch, self.c.step, m)
            x, y = e.split.piece(x), e.split.piece(y)  # the whole micro-batch, then this rank's
            self.data_seconds += time.perf_counter() - t_data
            with grad_sync(e.model, s, last=i == len(micros) - 1):
                with autocast_ctx(s.device, s.cfg.train.precision):
                    _, loss = e.model(x, y)
                loss = loss / len(micros)
                e.scaler.scale(loss).backward()
            loss_acc += loss.detach()
            self.micros_done = i + 1
        if s.cfg.optim.grad_clip is not None:
            e.scaler.unscale_(e.opt)
            clip_grad_norm(e.raw_model, s.cfg.optim.grad_clip)
        e.scaler.step(e.opt)
        e.scaler.update()
        e.opt.zero_grad(set_to_none=True)
        return loss_acc

    def track_loss(self, loss_acc: Any) -> bool:
        """Read the loss (every step on a CPU, every log_interval on a GPU, where reading it
        synchronizes); False when it is not finite."""
        s, c = self.s, self.c
        if not (s.device == "cpu" or c.step % s.cfg.train.log_interval == 0):
            return True
        if s.dist.world > 1:
            import torch.distributed as dist

            dist.all_reduce(loss_acc, op=dist.ReduceOp.AVG)
        c.last_loss = float(loss_acc)
        if not math.isfinite(c.last_loss):
            self.status, self.reason = "diverged", f"non-finite loss at step {c.step}"
            return False
        return True

    def eval_if_due(self) -> bool:
        """Evaluate every eval_interval steps or eval_time_interval seconds; False when early
        stopping says stop."""
        t, c = self.s.cfg.train, self.c
        now = time.perf_counter()
        due = c.step % t.eval_interval == 0 or (
            t.eval_time_interval is not None and now - self.last_eval_time >= t.eval_time_interval
        )
        if self.e.sharded and t.eval_time_interval is not None:
            due = agree(self.s, due)  # a sharded forward takes every rank
        if not due:
            return True
        stopped = eval_and_track(self.s, self.e, c, lambda: self.save(best=True))
        self.last_eval_time, self.last_eval_step = time.perf_counter(), c.step
        if stopped and t.on_plateau == "cooldown":  # the cooldown starts (or goes on) instead
            c.plateau, c.bad_evals = True, 0
        elif stopped:
            what = "" if t.monitor == "val_loss" else f"{t.monitor} "
            self.status = "early_stopped"
            self.reason = f"no {what}improvement in {t.patience} evals"
            return False
        return True

    def finish(self) -> None:
        """A final eval when the last step was not evaluated; the last checkpoint."""
        s, c = self.s, self.c
        ended_well = self.status in ("completed", "early_stopped")
        if ended_well and self.last_eval_step != c.step and c.step > 0:
            eval_and_track(s, self.e, c, lambda: self.save(best=True), final=True)
        t = s.cfg.train
        if (ended_well and s.cfg.task == "classification" and t.patience is not None
                and not self.e.sharded and c.best_step is not None and c.best_step != c.step):
            self.restored = classify.restore_best(s.run, self.e.raw_model)
        if c.step > 0 and self.status != "diverged":
            self.save()


def eval_and_track(
    s: RunState, e: Engine, c: Counters, save_best: Callable[[], None], final: bool = False
) -> bool:
    """Evaluate, log, keep the best checkpoint by `train.monitor` (in its `monitor_mode`);
    True when early stopping (patience, min_delta on the monitored metric) says stop."""
    t = s.cfg.train
    metrics = eval_metrics(s, e.raw_model, e.micro_batch)
    value = metrics[t.monitor]
    assert value is not None
    if e.sharded:  # one decision to save the best for every rank (each writes its shards)
        value = rank0_value(s, value)
        metrics[t.monitor] = value
    loss, bpb = metrics["val_loss"], metrics["val_bpb"]
    assert loss is not None
    c.last_val, c.last_bpb, c.last_metrics = loss, bpb, metrics
    best = c.best_score
    if best is None and t.monitor == "val_loss" and math.isfinite(c.best_val):
        best = c.best_val  # resumed from a checkpoint that predates best_score
    improved, better = classify.judge(t, value, best)
    c.bad_evals = 0 if improved else c.bad_evals + 1
    if loss < c.best_val:
        c.best_val, c.best_bpb = loss, bpb
    if better:
        c.best_score, c.best_step, c.best_metrics = value, c.step, metrics
        save_best()
    record = {
        "kind": "eval", "step": c.step, "tokens": c.tokens, **metrics,
        "elapsed": c.train_seconds, "flops": c.flops, "final": final,
    }
    # tokens per expert of each MoE block in this rank's training steps since the last eval;
    # not summed over ranks: they may evaluate at different moments (eval_time_interval)
    load = models.expert_load(base_model(e.raw_model))
    if load:
        record["expert_load"] = load
    if s.dist.main:
        s.run.log(record)
    if s.on_eval is not None and not final:
        s.on_eval(record)
    return t.patience is not None and c.bad_evals >= t.patience and not final


def run_loop(s: RunState) -> TrainResult:
    """Train `s` to its end and write its result."""
    import torch

    e = build_engine(s)
    c = resume_or_create(s, e)
    est = estimate(s.cfg, s.profile)
    if s.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loop = TrainingLoop(s, e, c)
    loop.run()
    loop.finish()
    if s.dist.main:
        save_run_adapter(s.cfg, s.run.path, e.raw_model, c.step > 0 and loop.status != "diverged")
    return build_result(s, c, loop.status, loop.reason, e.micro_batch, est, loop.step_times,
                        loop.data_seconds, restored=loop.restored)
