"""The built-in trainer: `train(cfg) -> TrainResult`.

One loop for GPT (causal LM) and BERT-style (masked LM) models. Caps (steps, tokens, FLOPs, wall
time) stop the run; the schedule is driven by the elapsed fraction of the binding cap so a capped
run ends annealed (Cramming, Geiping & Goldstein 2022). Batches are a pure function of
(seed, step, micro-step), so a resumed run draws the same data as an uninterrupted one.

DDP: launched by `torchrun`, each rank takes the micro-steps `m` with `m % world == rank` of the
same global batch, so the optimizer sees the same gradient as a single process would.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from budgetlm.config import RunConfig, load_config, with_overrides
from budgetlm.errors import UserError
from budgetlm.train.rundir import RunDir, default_run_dir, load_checkpoint


@dataclass
class TrainResult:
    status: str  # completed | early_stopped | diverged | interrupted
    stop_reason: str
    run_dir: str
    steps: int
    tokens: int
    wall_seconds: float
    train_seconds: float
    val_loss: float | None = None
    val_bpb: float | None = None
    best_val_loss: float | None = None
    best_val_bpb: float | None = None
    train_loss: float | None = None
    params: int = 0
    micro_batch: int = 0
    grad_accum: int = 1
    world_size: int = 1
    tokens_per_s: float | None = None
    model_flops: float = 0.0
    achieved_flops_per_s: float | None = None
    measured_peak_flops: float | None = None
    mfu_vs_measured_peak: float | None = None
    entropy_rate: float | None = None
    predicted: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    # a run planned from a fitted law: predicted loss (with its interval) against the actual one
    prediction: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Config resolution


def resolve_train_config(
    spec: str,
    overrides: list[str] | None = None,
    data: str | None = None,
    val_data: str | None = None,
    tokenizer: str | None = None,
    max_time: float | None = None,
    max_steps: int | None = None,
    max_tokens: int | None = None,
    resume: Path | None = None,
) -> RunConfig:
    """Config from a preset or file (or the run being resumed), then flags, then `--set`s."""
    sets: list[str] = []
    if data is not None:
        sets.append(f"data.source={_quote(data)}")
    if val_data is not None:
        sets.append(f"data.val_source={_quote(val_data)}")
    if tokenizer is not None:
        sets.append(f"data.tokenizer={tokenizer}")
    for name, value in (("max_time", max_time), ("max_steps", max_steps),
                        ("max_tokens", max_tokens)):
        if value is not None:
            if value <= 0:
                raise UserError(f"--{name.replace('_', '-')}: must be positive, got {value}")
            sets.append(f"train.{name}={value}")
    if resume is not None:
        RunDir(resume).require_checkpoint()
        cfg = load_config(str(Path(resume) / "config.yaml"))
        return with_overrides(cfg, sets + list(overrides or []))
    return load_config(spec, sets + list(overrides or []))


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# ---------------------------------------------------------------------------------------------
# Devices, precision, distributed


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda requested but no CUDA device is available")
    return name


def autocast_ctx(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device, dtype=dtype)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device == "cuda":
        import torch

        torch.cuda.set_device(d.local_rank)
    return d


# ---------------------------------------------------------------------------------------------
# The run


class _Run:
    """State of one training run; `train()` below drives it."""

    def __init__(self, cfg: RunConfig, run_dir: Path | None, resume: Path | None, progress: bool):
        import torch

        from budgetlm import data as data_mod
        from budgetlm import estimate as est_mod

        self.t_start = time.perf_counter()
        self.device = pick_device(cfg.train.device)
        self.dist = init_distributed(self.device)
        if cfg.train.threads is not None:
            torch.set_num_threads(cfg.train.threads)
        if self.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.corpus = data_mod.load_corpus(cfg.data, seq_len=cfg.model.seq_len)
        vocab = self.corpus.tokenizer.vocab_size
        self.mask_id: int | None = None
        if cfg.model.family == "bert":
            self.mask_id = vocab  # one extra id: [MASK]
            vocab += 1
        if cfg.model.vocab_size != vocab:
            cfg = with_overrides(cfg, [f"model.vocab_size={vocab}"])
        self.resume_state: dict[str, Any] | None = None
        if resume is not None:
            run_dir = Path(resume)
            self.resume_state = load_checkpoint(RunDir(run_dir).require_checkpoint(), "--resume")
        self.cfg = cfg
        self.progress = progress
        self.est = est_mod
        self.profile = _load_profile()
        self.run = RunDir(run_dir if run_dir is not None else default_run_dir(cfg))
        self.on_eval: Callable[[dict[str, Any]], None] | None = None

    # -- helpers ---------------------------------------------------------------------------
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


def _load_profile() -> Any:
    try:
        from budgetlm.hardware import load_profile

        return load_profile()
    except Exception:  # a profile is a nicety for the result; never fail a run on it
        return None


def train(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = False,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train `cfg` until a cap, early stop, divergence or Ctrl-C. Writes the run directory.

    `on_eval` receives each eval record (step, tokens, elapsed, val_loss, val_bpb); raising
    KeyboardInterrupt from it stops the run as Ctrl-C would (checkpoint saved, status interrupted).
    """
    from budgetlm.train.loop import run_loop

    if not cfg.train.has_cap and resume is None:
        raise UserError(
            "train: no cap set; give one of train.max_steps, max_tokens, max_flops or max_time"
        )
    state = _Run(
        cfg,
        Path(run_dir) if run_dir is not None else None,
        Path(resume) if resume is not None else None,
        progress,
    )
    state.on_eval = on_eval
    return run_loop(state)


def sample_text(
    run_dir: str | Path,
    prompt: str = "\n",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
) -> str:
    """Continue `prompt` with the best (else latest) checkpoint of a GPT run."""
    import torch

    from budgetlm.data import load_tokenizer
    from budgetlm.model import build_model

    path = Path(run_dir)
    if not (path / "config.yaml").exists():
        raise UserError(f"sample {path}: not a run directory (no config.yaml)")
    cfg = load_config(str(path / "config.yaml"))
    if cfg.model.family != "gpt":
        raise UserError(f"sample {path}: model.family is {cfg.model.family}; only gpt generates")
    state = load_checkpoint(path, "sample")
    tok = load_tokenizer(path / "tokenizer")
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    model.eval()
    torch.manual_seed(seed)
    ids = tok.encode(prompt) or [0]
    idx = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(idx, max_new_tokens, temperature=max(temperature, 1e-5), top_k=top_k)
    return tok.decode(out[0].tolist())

