"""The run directory: resolved config, environment, metrics, checkpoints and result.

Layout (DESIGN §8):
    config.yaml      the resolved RunConfig (runnable as is; a classification run's label set
                     resolved into data.labels, in class-id order)
    env.json         python/torch versions, git sha, hardware profile
    metrics.jsonl    one JSON object per log or eval line
    checkpoints/     step_XXXXXXXX.pt (last k) and best.pt, each written then renamed; written
                     every train.checkpoint_interval steps or checkpoint_seconds of training;
                     one found unloadable on --resume is renamed NAME.unreadable. fsdp/hsdp
                     runs write sharded ones instead, step_XXXXXXXX.dcp/ and best.dcp/
                     (budgetlm.train.sharded_ckpt); the last k count both kinds
    tokenizer/       the tokenizer the run used
    result.json      final metrics, predicted vs measured
"""

from __future__ import annotations

import contextlib
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
from budgetlm.train.sharded_ckpt import (
    METADATA_FILE,
    SHARDED_SUFFIX,
    TRAINER_FILE,
    load_model_weights,
    remove_checkpoint,
    save_sharded,
)
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
        self.made = False  # prepare_new created the directory

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def holds_run(self) -> bool:
        """True when a run already wrote here (config, metrics or checkpoints)."""
        if (self.path / "config.yaml").exists() or self.metrics_path.exists():
            return True
        return self.ckpt_dir.is_dir() and any(self.ckpt_dir.iterdir())

    def prepare_new(self) -> None:
        """Make the directory of a new run: refused when it is a file or already holds a run,
        or when it cannot be created."""
        where = f"--run-dir {self.path}"
        try:
            if self.path.exists() and not self.path.is_dir():
                raise UserError(f"{where}: is a file, not a directory")
            if self.holds_run():
                raise UserError(
                    f"{self.path} already holds a run; use --resume {self.path} or a new --run-dir"
                )
            self.made = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
        except PermissionError as exc:
            raise UserError(f"{where}: permission denied ({exc.filename or self.path})") from None
        except (FileExistsError, NotADirectoryError) as exc:
            raise UserError(f"{where}: {exc.filename or self.path} is not a directory") from None
        except OSError as exc:
            raise UserError(f"{where}: cannot create it ({exc.strerror or exc})") from None

    def discard_if_unused(self) -> None:
        """Remove the directory `prepare_new` made when the run failed before writing to it."""
        if not self.made:
            return
        try:
            if self.ckpt_dir.is_dir() and not any(self.ckpt_dir.iterdir()):
                self.ckpt_dir.rmdir()
            if not any(self.path.iterdir()):
                self.path.rmdir()
        except OSError:
            pass

    def require_run(self) -> None:
        """`--resume`: the directory must be a run directory (hold its config.yaml)."""
        try:
            is_dir, has_config = self.path.is_dir(), (self.path / "config.yaml").is_file()
        except PermissionError:
            raise UserError(f"--resume {self.path}: permission denied") from None
        if not is_dir:
            raise UserError(f"--resume {self.path}: no such run directory")
        if not has_config:
            raise UserError(
                f"--resume {self.path}: not a run directory (no config.yaml, no checkpoint)"
            )

    def create(self, cfg: RunConfig, env: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(exist_ok=True)
        dump_config(cfg, self.path / "config.yaml")
        write_json(self.path / "env.json", env)

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Keep metrics up to `step` (inclusive): what a resumed run will write again is dropped,
        and so is a line torn by a kill or a full disk."""
        if not self.metrics_path.exists():
            return
        kept = [
            line for line, rec in _parsed_lines(self.metrics_path)
            if rec is not None and rec.get("step", 0) <= step
        ]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics records; a torn (unparsable) line is skipped."""
        if not self.metrics_path.exists():
            return []
        return [rec for _, rec in _parsed_lines(self.metrics_path) if rec is not None]

    def save_checkpoint(self, state: dict[str, Any], step: int, keep_last: int) -> Path:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.ckpt_dir / f"step_{step:08d}.pt"
        _save_whole(state, path)
        self.keep_last_steps(keep_last)
        return path

    def save_best(self, state: dict[str, Any]) -> None:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        _save_whole(state, self.ckpt_dir / "best.pt")
        remove_checkpoint(self.ckpt_dir / f"best{SHARDED_SUFFIX}")  # one best, the newest

    def save_sharded_checkpoint(self, model: Any, opt: Any, trainer_state: dict[str, Any],
                                main: bool, step: int | None, keep_last: int) -> Path:
        """The sharded checkpoint of `step` (None: best.dcp); every rank calls this together."""
        name = "best" if step is None else f"step_{step:08d}"
        if main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = save_sharded(self.ckpt_dir / f"{name}{SHARDED_SUFFIX}", model, opt,
                            trainer_state, main)
        if main and step is None:
            remove_checkpoint(self.ckpt_dir / "best.pt")
        elif main:
            self.keep_last_steps(keep_last)
        return path

    def step_checkpoints(self) -> list[Path]:
        """step_* checkpoints of both kinds, by step."""
        if not self.ckpt_dir.is_dir():
            return []
        found = [*self.ckpt_dir.glob("step_*.pt"), *self.ckpt_dir.glob(f"step_*{SHARDED_SUFFIX}")]
        return sorted(found, key=lambda p: (p.stem, p.suffix))

    def keep_last_steps(self, keep_last: int) -> None:
        for old in self.step_checkpoints()[:-keep_last]:
            remove_checkpoint(old)

    def latest_checkpoint(self) -> Path | None:
        found = self.step_checkpoints()
        return found[-1] if found else None

    def best_checkpoint(self) -> Path | None:
        found = [p for p in (self.ckpt_dir / "best.pt", self.ckpt_dir / f"best{SHARDED_SUFFIX}")
                 if p.exists()]
        return max(found, key=_mtime) if found else None

    def checkpoints(self) -> list[Path]:
        """Every checkpoint (step_* and best, single-file or sharded), the most recently
        written first."""
        if not self.ckpt_dir.is_dir():
            return []
        best = [p for p in (self.ckpt_dir / "best.pt", self.ckpt_dir / f"best{SHARDED_SUFFIX}")
                if p.exists()]
        found = [*self.step_checkpoints(), *best]

        def key(p: Path) -> tuple[float, int, str]:
            return (_mtime(p), not p.name.startswith("best."), p.name)

        return sorted(found, key=key, reverse=True)

    def load_resumable(self) -> tuple[dict[str, Any] | None, Path | None, list[tuple[Path, str]]]:
        """The newest checkpoint that loads whole (falling back to older ones, then best.pt):
        (state, its path, each newer one passed over with why). (None, None, []) when there is
        none; a UserError when there are checkpoints but none loads."""
        skipped: list[tuple[Path, str]] = []
        candidates = self.checkpoints()
        for path in candidates:
            try:
                state = _load_state(path)
            except UnreadableCheckpoint as exc:
                skipped.append((path, str(exc)))
                continue
            return state, path, skipped
        if candidates:
            why = "; ".join(f"{p.name} {reason}" for p, reason in skipped)
            raise UserError(
                f"--resume {self.path}: no loadable checkpoint ({why}); start a new --run-dir"
            )
        return None, None, []

    def set_aside(self, name: str) -> None:
        """Rename an unloadable checkpoint to NAME.unreadable: kept for a look, never loaded or
        counted among the last k again."""
        path = self.ckpt_dir / name
        with contextlib.suppress(OSError):
            path.rename(path.with_name(path.name + ".unreadable"))

    def write_result(self, result: dict[str, Any]) -> None:
        write_json(self.path / "result.json", result)


class UnreadableCheckpoint(Exception):
    """A checkpoint file that is truncated, corrupt, unreadable or not a training state."""


RESUME_KEYS = ("model", "optimizer", "counters", "rng")


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _load_state(path: Path) -> dict[str, Any]:
    """A whole checkpoint, or a sharded one's trainer state with "sharded": its directory (the
    model and optimizer are read into the built model, `sharded_ckpt.load_sharded`)."""
    if path.is_dir():
        if not (path / METADATA_FILE).is_file():
            raise UnreadableCheckpoint("is incomplete (no DCP metadata)")
        state = _load_state_file(path / TRAINER_FILE, ("counters", "rng"))
        state["sharded"] = path
        return state
    return _load_state_file(path, RESUME_KEYS)


def _load_state_file(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except PermissionError:
        raise UnreadableCheckpoint("(permission denied)") from None
    except Exception as exc:  # truncated, corrupt or a foreign file
        raise UnreadableCheckpoint(f"is unreadable ({type(exc).__name__})") from None
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise UnreadableCheckpoint("is not a training checkpoint")
    return state


def _parsed_lines(path: Path) -> list[tuple[str, dict[str, Any] | None]]:
    """Each non-blank line of a JSON-lines file with its record (None: torn or not an object)."""
    out: list[tuple[str, dict[str, Any] | None]] = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        out.append((line, rec if isinstance(rec, dict) else None))
    return out


def _save_whole(state: dict[str, Any], path: Path) -> None:
    """torch.save, atomically: never half a checkpoint."""
    import torch

    atomic_replace(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, what: str = "init_from") -> dict[str, Any]:
    """Load a checkpoint (a file or a sharded directory, whose model is read whole), or the
    best/latest one in a run directory."""
    import torch

    p = Path(path)
    if p.is_dir() and not (p / TRAINER_FILE).is_file():
        run = RunDir(p)
        found = run.best_checkpoint() or run.latest_checkpoint()
        if found is None:
            raise UserError(f"{what} {p}: no checkpoint in {run.ckpt_dir}")
        p = found
    if not p.exists():
        raise UserError(f"{what} {p}: no such checkpoint")
    try:
        if p.is_dir():
            state = torch.load(p / TRAINER_FILE, map_location="cpu", weights_only=False)
            return {**state, "model": load_model_weights(p)}
        return torch.load(p, map_location="cpu", weights_only=False)
    except PermissionError:
        raise UserError(f"{what} {p}: permission denied") from None
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"{what} {p}: not a budgetlm checkpoint ({type(exc).__name__})") from None
