"""The run directory: resolved config, environment, metrics, checkpoints and result.

Layout (DESIGN §8):
    config.yaml      the resolved RunConfig (runnable as is)
    env.json         python/torch versions, git sha, hardware profile
    metrics.jsonl    one JSON object per log or eval line
    checkpoints/     step_XXXXXXXX.pt (last k) and best.pt, each written then renamed
    tokenizer/       the tokenizer the run used
    result.json      final metrics, predicted vs measured
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from budgetlm import __version__
from budgetlm.config import RunConfig, dump_config
from budgetlm.errors import UserError
from budgetlm.units import atomic_replace, atomic_write_text, write_json


def default_run_dir(cfg: RunConfig, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{cfg.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path = base.with_name(f"{base.name}-{i}")
        i += 1
    return path


def git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(profile: dict[str, Any] | None) -> dict[str, Any]:
    import torch

    return {
        "budgetlm": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "git_sha": git_sha(),
        "argv": sys.argv,
        "hardware": profile,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class RunDir:
    """Reads and writes one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def create(self, cfg: RunConfig, env: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(exist_ok=True)
        dump_config(cfg, self.path / "config.yaml")
        write_json(self.path / "env.json", env)

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Keep metrics up to `step` (inclusive): what a resumed run will write again is dropped."""
        if not self.metrics_path.exists():
            return
        kept = [
            line
            for line in self.metrics_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(x) for x in self.metrics_path.read_text().splitlines() if x.strip()]

    def save_checkpoint(self, state: dict[str, Any], step: int, keep_last: int) -> Path:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.ckpt_dir / f"step_{step:08d}.pt"
        _save_whole(state, path)
        for old in sorted(self.ckpt_dir.glob("step_*.pt"))[:-keep_last]:
            old.unlink(missing_ok=True)
        return path

    def save_best(self, state: dict[str, Any]) -> None:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        _save_whole(state, self.ckpt_dir / "best.pt")

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.ckpt_dir.glob("step_*.pt")) if self.ckpt_dir.exists() else []
        return found[-1] if found else None

    def require_checkpoint(self) -> Path:
        if not self.path.is_dir():
            raise UserError(f"--resume {self.path}: no such run directory")
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            raise UserError(f"--resume {self.path}: no checkpoint in {self.ckpt_dir}")
        return ckpt

    def write_result(self, result: dict[str, Any]) -> None:
        write_json(self.path / "result.json", result)


def _save_whole(state: dict[str, Any], path: Path) -> None:
    """torch.save, atomically: never half a checkpoint."""
    import torch

    atomic_replace(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, what: str = "init_from") -> dict[str, Any]:
    """Load a checkpoint file, or the best/latest one in a run directory."""
    import torch

    p = Path(path)
    if p.is_dir():
        run = RunDir(p)
        best = run.ckpt_dir / "best.pt"
        found = best if best.exists() else run.latest_checkpoint()
        if found is None:
            raise UserError(f"{what} {p}: no checkpoint in {run.ckpt_dir}")
        p = found
    if not p.exists():
        raise UserError(f"{what} {p}: no such checkpoint")
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"{what} {p}: not a budgetlm checkpoint ({type(exc).__name__})") from None
