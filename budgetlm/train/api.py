"""The built-in trainer: `train(cfg) -> TrainResult`.

One loop for GPT (causal LM) and BERT-style (masked LM) models. Caps (steps, tokens, FLOPs, wall
time) stop the run; the schedule is driven by the elapsed fraction of the binding cap so a capped
run ends annealed (Cramming, Geiping & Goldstein 2022). Batches are a pure function of
(seed, step, micro-step), so a resumed run draws the same data as an uninterrupted one.

DDP: launched by `torchrun`, each rank takes the micro-steps `m` with `m % world == rank` of the
same global batch, so the optimizer sees the same gradient as a single process would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from budgetlm.config import RunConfig, load_config, with_overrides, with_values
from budgetlm.data import load_tokenizer
from budgetlm.errors import UserError
from budgetlm.train.finetune import model_from_checkpoint
from budgetlm.train.loop import run_loop
from budgetlm.train.result import TrainResult
from budgetlm.train.rundir import RunDir, load_checkpoint
from budgetlm.train.state import RunState

# `budgetlm train` flags -> the config field each sets
TRAIN_FLAGS = {
    "data": "data.source", "val_data": "data.val_source", "tokenizer": "data.tokenizer",
    "max_time": "train.max_time", "max_steps": "train.max_steps", "max_tokens": "train.max_tokens",
}
POSITIVE_FLAGS = ("max_time", "max_steps", "max_tokens")
DEFAULT_PRESET = "tiny"  # `budgetlm train` without a CONFIG


def resolve_train_config(spec: str | None, overrides: list[str] | None = None,
                         resume: Path | None = None, **flags: Any) -> RunConfig:
    """Config from a preset or file (None: the default preset, `DEFAULT_PRESET`), or, with
    `resume`, the run's own config.yaml; then flags (`TRAIN_FLAGS`: data, val_data, tokenizer,
    max_time, max_steps, max_tokens; None: not given), then `--set`s."""
    values: dict[str, Any] = {}
    for name, value in flags.items():
        if name not in TRAIN_FLAGS:
            raise TypeError(f"resolve_train_config: unknown flag {name!r}")
        if value is None:
            continue
        if name in POSITIVE_FLAGS and value <= 0:
            raise UserError(f"--{name.replace('_', '-')}: must be positive, got {value}")
        values[TRAIN_FLAGS[name]] = value
    if resume is not None:
        RunDir(resume).require_run()
        if spec is not None:
            raise UserError(
                f"--resume continues {resume}'s own config; drop CONFIG ({spec}) or use --set"
            )
        cfg = load_config(str(Path(resume) / "config.yaml"))
    else:
        cfg = load_config(spec if spec is not None else DEFAULT_PRESET)
    cfg = with_values(cfg, values, source="--set")
    return with_overrides(cfg, list(overrides or []))


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
    if resume is not None and run_dir is not None and (
        Path(run_dir).resolve() != Path(resume).resolve()
    ):
        raise UserError(
            f"--run-dir {run_dir} with --resume {resume}: a resumed run continues in its own "
            "directory; drop --run-dir"
        )
    if not cfg.train.has_cap and resume is None:
        raise UserError(
            "train: no cap set; give one of train.max_steps, max_tokens, max_flops or max_time"
        )
    state = RunState(
        cfg,
        Path(run_dir) if run_dir is not None else None,
        Path(resume) if resume is not None else None,
        progress,
    )
    state.on_eval = on_eval
    try:
        return run_loop(state)
    except BaseException:
        state.run.discard_if_unused()  # a run refused before its first write leaves nothing
        raise


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

    path = Path(run_dir)
    if not (path / "config.yaml").exists():
        raise UserError(f"sample {path}: not a run directory (no config.yaml)")
    cfg = load_config(str(path / "config.yaml"))
    if cfg.model.family != "gpt":
        raise UserError(f"sample {path}: model.family is {cfg.model.family}; only gpt generates")
    state = load_checkpoint(path, "sample")
    tok = load_tokenizer(path / "tokenizer")
    model = model_from_checkpoint(cfg, state)  # a LoRA run's adapters merged
    model.eval()
    torch.manual_seed(seed)
    ids = tok.encode(prompt) or [0]
    idx = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(idx, max_new_tokens, temperature=max(temperature, 1e-5), top_k=top_k)
    return tok.decode(out[0].tolist())
