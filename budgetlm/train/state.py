"""The state of one run: its config, corpus, device, run directory and counters, and the rules
that read the caps (how far along the run is, whether it must stop)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budgetlm.config import RunConfig, with_values
from budgetlm.data import load_corpus, t5_vocabulary
from budgetlm.errors import UserError
from budgetlm.train import classify
from budgetlm.train.parallel import split_global_batch
from budgetlm.train.rundir import RunDir, default_run_dir
from budgetlm.train.runtime import (
    init_distributed,
    launched_world,
    machine_profile,
    pick_device,
)


class StopRun(Exception):
    """Raised from an `on_eval` callback to end a run early with a status (e.g. "pruned")."""

    def __init__(self, status: str, reason: str = ""):
        super().__init__(reason or status)
        self.status = status
        self.reason = reason or status


@dataclass
class Counters:
    """What a run has done so far; saved in every checkpoint."""

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
    best_score: float | None = None  # the best value of train.monitor (None: no eval yet)
    best_step: int | None = None  # the step of that eval
    best_metrics: dict[str, Any] | None = None  # that eval's val_* metrics
    last_metrics: dict[str, Any] | None = None  # the last eval's val_* metrics
    plateau: bool = False  # train.on_plateau cooldown: patience ran out, the cooldown is due
    cooldown_from: float | None = None  # the progress where a plateau started the cooldown


class RunState:
    """One training run: config (vocabulary resolved from the corpus), device, process group,
    corpus, hardware profile, run directory and, when resuming, the checkpoint to resume."""

    def __init__(self, cfg: RunConfig, run_dir: Path | None, resume: Path | None, progress: bool):
        self.t_start = time.perf_counter()
        self.device = pick_device(cfg.train.device)
        if isinstance(cfg.train.micro_batch, int):  # before joining the group: every rank fails
            split_global_batch(cfg.train.micro_batch, cfg.train.grad_accum, launched_world(), 0)
        self.dist = init_distributed(self.device)
        self.resume_state: dict[str, Any] | None = None
        self.unreadable: list[str] = []  # checkpoints passed over on resume
        self.restart = False  # --resume of a run killed before its first checkpoint
        self.resume_note = ""  # which checkpoint a resumed run continues from, for stderr
        if resume is not None:
            self.run = RunDir(resume)
            self.open_resume()
        else:
            self.run = RunDir(run_dir if run_dir is not None else default_run_dir(cfg))
            if self.dist.main:
                self.run.prepare_new()
        try:
            self.load(cfg, progress)
        except BaseException:
            self.run.discard_if_unused()
            raise

    def load(self, cfg: RunConfig, progress: bool) -> None:
        """Threads, TF32, the corpus (the config's vocabulary set from its tokenizer; a
        pretrained model keeps its own, which must hold every id), the hardware profile."""
        import torch

        if cfg.train.threads is not None:
            torch.set_num_threads(cfg.train.threads)
        if self.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if cfg.task == "classification":  # labeled rows, the label set resolved into cfg
            self.corpus: Any = classify.load_task(cfg)
            cfg = classify.with_task(cfg, self.corpus)
        else:
            self.corpus = load_corpus(
                cfg.data, seq_len=cfg.model.seq_len, pretrained=cfg.model.from_pretrained
            )
        vocab = self.corpus.tokenizer.vocab_size
        self.mask_id: int | None = None
        if cfg.model.family == "bert":
            self.mask_id = vocab  # one extra id: [MASK]
            vocab += 1
        self.first_sentinel: int | None = None
        if cfg.model.family == "t5":  # sentinels, then the decoder start id
            layout = t5_vocabulary(vocab, cfg.model, cfg.task)
            self.first_sentinel, vocab = layout.first_sentinel, layout.size
        if cfg.model.from_pretrained is not None:  # the checkpoint's vocabulary stays
            if vocab > cfg.model.vocab_size:
                raise UserError(
                    f"data.tokenizer: {cfg.data.tokenizer} has {vocab} ids, more than the "
                    f"vocabulary of model.from_pretrained ({cfg.model.vocab_size})"
                )
        else:
            if cfg.task == "classification":  # keep a pretrained run's [MASK] and sentinel ids
                vocab = classify.pretrained_vocab(cfg, vocab)
            if cfg.model.vocab_size != vocab:
                cfg = with_values(cfg, {"model.vocab_size": vocab})
        self.cfg = cfg
        self.progress = progress
        self.profile = machine_profile()
        self.on_eval: Callable[[dict[str, Any]], None] | None = None

    def open_resume(self) -> None:
        """Load the newest loadable checkpoint of the run being resumed; `resume_note` says which
        one (and which were passed over), or that the run starts again from step 0."""
        run = self.run
        run.require_run()
        state, path, skipped = run.load_resumable()
        self.unreadable = [p.name for p, _ in skipped]
        passed = ", ".join(f"{p.name} {why}" for p, why in skipped)
        passed = f"; passed over {passed}" if passed else ""
        if state is None or path is None:
            self.restart = True
            note = f"resume {run.path}: no checkpoint yet; starting again from step 0"
        else:
            self.resume_state = state
            step = state["counters"].get("step", 0)
            note = f"resume {run.path}: continuing from step {step} ({path.name}){passed}"
        self.resume_note = note if self.dist.main else ""

    def say_resume(self) -> None:
        """One line on stderr: the checkpoint a resumed run continues from."""
        if self.resume_note:
            print(self.resume_note, file=sys.stderr, flush=True)

    def cap_progress(self, steps: int, tokens: int, flops: float, elapsed: float) -> float:
        """Elapsed fraction of the run, by the schedule's driver (auto: the cap closest to done)."""
        t = self.cfg.train
        fractions = {
            "steps": steps / t.max_steps if t.max_steps else None,
            "tokens": tokens / t.max_tokens if t.max_tokens else None,
            "flops": flops / t.max_flops if t.max_flops else None,
            "time": elapsed / t.max_time if t.max_time else None,
        }
        driver = self.cfg.schedule.driver
        if driver != "auto":
            value = fractions[driver]
            if value is None:
                raise UserError(
                    f"schedule.driver: {driver} needs train.max_{driver} to be set"
                )
            return min(1.0, value)
        known = [v for v in fractions.values() if v is not None]
        return min(1.0, max(known)) if known else 0.0

    def stop_reason(self, steps: int, tokens: int, flops: float, elapsed: float) -> str | None:
        """The cap this run has reached ("max_steps", …), or None."""
        t = self.cfg.train
        if t.max_steps is not None and steps >= t.max_steps:
            return "max_steps"
        if t.max_tokens is not None and tokens >= t.max_tokens:
            return "max_tokens"
        if t.max_flops is not None and flops >= t.max_flops:
            return "max_flops"
        if t.max_time is not None and elapsed >= t.max_time:
            return "max_time"
        return None


def rng_state() -> dict[str, Any]:
    """torch's CPU (and CUDA) random state, for an exact resume."""
    import torch

    st: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    import torch

    torch.set_rng_state(st["cpu"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
