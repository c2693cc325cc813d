"""Run one trial in its own process, watch it, and say how it ended.

The child is `python -m budgetlm.runner.child trial.yaml --run-dir DIR` (= `budgetlm train … --json
--quiet` that dies with its parent), spawned or forked from a warm server (budgetlm.runner.launch).
It runs in its own session, so a Ctrl-C at the terminal
reaches only the tuner, which then ends its children itself. While it runs, the parent tails
`DIR/metrics.jsonl`: each eval record goes to `report` (the pruner); when `report` answers with
a reason, the child is stopped (SIGTERM to its process group, SIGKILL after `TERM_WAIT`
seconds). Hard limits: a time-capped trial is killed `cap x 1.1 + grace` seconds after training
started (the trainer itself stops at the cap, annealed); any trial is killed if it has not
started training after `startup` seconds, or writes no metrics line for `stall` seconds. Once
the trainer has written `result.json` the limits no longer apply (it is done; interpreter exit can
take a second or two on a loaded machine); it gets `EXIT_WAIT` seconds to exit.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm.config import RunConfig, dump_config
from budgetlm.runner.caps import RECORD_FIELD, TrialCap
from budgetlm.runner.launch import Handle, SpawnLauncher

TERM_WAIT = 3.0  # seconds between SIGTERM and SIGKILL
EXIT_WAIT = 10.0  # seconds a trial that wrote result.json may take to exit
POLL = 0.2


@dataclass
class Outcome:
    """How a trial ended. state: complete | pruned | fail. kind: a finer label (completed,
    early_stopped, pruned, diverged, infeasible, invalid, crashed, failed, oom, hung,
    interrupted)."""

    state: str
    kind: str
    reason: str
    result: dict[str, Any] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


class _Tail:
    """New complete lines of a growing file."""

    def __init__(self, path: Path):
        self.path = path
        self.pos = 0
        self.buf = b""

    def lines(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.pos)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(chunk)
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        return [x.decode("utf-8", "replace") for x in done if x.strip()]


def _kill(proc: Handle) -> None:
    """SIGTERM the child's process group, then SIGKILL; reap it."""
    for sig, wait in ((signal.SIGTERM, TERM_WAIT), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:  # not yet its own group leader (it calls setsid first thing)
                os.kill(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _stderr_tail(path: Path, limit: int = 20000) -> str:
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


def _last_line(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line:
            return line[:300]
    return ""


def classify_exit(rc: int, result: dict[str, Any] | None, stderr: str) -> Outcome:
    """Outcome of a child that exited on its own."""
    if rc == 0 and result is not None:
        status = str(result.get("status"))
        why = str(result.get("stop_reason") or status)
        if status in ("completed", "early_stopped"):
            # val_loss: every task has one (t5 and classification runs have no val_bpb)
            loss = result.get("val_loss")
            if loss is None or not math.isfinite(float(loss)):
                return Outcome("fail", "failed", f"{status} without a finite val_loss", result)
            return Outcome("complete", status, why, result)
        if status == "diverged":
            return Outcome("pruned", "diverged", f"diverged: {why}", result)
        if status == "pruned":
            return Outcome("pruned", "pruned", why, result)
        return Outcome("fail", "interrupted" if status == "interrupted" else "failed",
                       f"{status}: {why}", result)
    oom = "OutOfMemoryError" in stderr or "out of memory" in stderr.lower()
    if rc < 0:
        name = _signal_name(rc)
        if name == "SIGKILL":
            return Outcome("fail", "oom", "killed by SIGKILL (the OS out-of-memory killer?)")
        what = {"SIGSEGV": "segmentation fault", "SIGABRT": "abort", "SIGBUS": "bus error"}
        return Outcome("fail", "crashed", f"crashed: {name} ({what.get(name, 'signal')})")
    last = _last_line(stderr)
    if oom:
        return Outcome("fail", "oom", f"out of memory: {last}")
    if rc == 130:
        return Outcome("fail", "interrupted", "interrupted")
    if rc == 2:
        return Outcome("fail", "invalid", f"trainer rejected the config: {last}")
    return Outcome("fail", "failed", f"exit {rc}: {last}" if last else f"exit {rc}")


def run_trial_process(
    cfg: RunConfig,
    run_dir: Path,
    cap: TrialCap,
    *,
    report: Callable[[dict[str, Any]], str | None] | None = None,
    stop: threading.Event | None = None,
    heartbeat: Callable[[], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    env: dict[str, str] | None = None,
    launcher: Any = None,
) -> Outcome:
    """Run `cfg` in a child process under `cap`; see the module docstring."""
    argv = _prepare_run_dir(cfg, run_dir)
    child_env = dict(os.environ if env is None else env)
    child_env["BUDGETLM_TUNE_PARENT"] = str(os.getpid())
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    out_path, err_path = run_dir / "stdout.json", run_dir / "stderr.log"
    watch = _Watch(run_dir, cap, report=report, stop=stop, heartbeat=heartbeat, on_eval=on_eval)
    proc = (launcher or SpawnLauncher()).start(argv, child_env, out_path, err_path)
    if on_start is not None:
        on_start(proc.pid)
    verdict: Outcome | None = None
    try:
        verdict = watch.follow(proc)
    finally:
        if proc.poll() is None:
            _kill(proc)
    wall = time.monotonic() - watch.t0
    watch.drain()
    if verdict is None:
        result = _read_json(out_path) or _read_json(run_dir / "result.json")
        rc = proc.returncode
        if watch.finished is not None and result is not None and rc in (
            -signal.SIGTERM, -signal.SIGKILL
        ):
            rc = 0  # it had finished; we only ended a slow exit
        verdict = classify_exit(rc, result, _stderr_tail(err_path))
    verdict.attrs.update({
        "wall_seconds": round(wall, 3),
        "startup_seconds": (
            round(watch.started - watch.t0, 3) if watch.started is not None else None
        ),
        "exit_code": proc.returncode,
        "run_dir": str(run_dir),
    })
    verdict.attrs.update(_progress_attrs(verdict.result, watch.last_record, watch.last_eval))
    return verdict


def _prepare_run_dir(cfg: RunConfig, run_dir: Path) -> list[str]:
    """A fresh `run_dir` holding the trial's config; the child's command line arguments."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a leftover of an earlier study with the same numbers
    run_dir.mkdir(parents=True)
    trial_yaml = dump_config(cfg, run_dir / "trial.yaml")
    return [str(trial_yaml), "--run-dir", str(run_dir)]


class _Watch:
    """The parent's view of one running trial: its metrics, its progress, the limits."""

    def __init__(
        self,
        run_dir: Path,
        cap: TrialCap,
        *,
        report: Callable[[dict[str, Any]], str | None] | None,
        stop: threading.Event | None,
        heartbeat: Callable[[], None] | None,
        on_eval: Callable[[dict[str, Any]], None] | None,
    ):
        self.run_dir = run_dir
        self.cap = cap
        self.report = report
        self.stop = stop
        self.heartbeat = heartbeat
        self.on_eval = on_eval
        self.tail = _Tail(run_dir / "metrics.jsonl")
        self.t0 = time.monotonic()
        self.started: float | None = None  # monotonic time training began (config.yaml written)
        self.finished: float | None = None  # the trainer wrote result.json: only its exit is left
        self.last_activity = self.t0
        self.last_eval: dict[str, Any] | None = None
        self.last_record: dict[str, Any] | None = None

    def follow(self, proc: Handle) -> Outcome | None:
        """Watch until the child exits (None) or must be stopped (the verdict; None too when it
        had finished and was only slow to exit)."""
        while proc.poll() is None:
            if self.stop is not None and self.stop.wait(POLL):
                return Outcome("fail", "interrupted", "interrupted (tuner stopped: Ctrl-C)")
            if self.stop is None:
                time.sleep(POLL)
            now = time.monotonic()
            if self.heartbeat is not None:
                self.heartbeat()
            if self.started is None and (self.run_dir / "config.yaml").exists():
                self.started = self.last_activity = now
            if self.finished is None and (self.run_dir / "result.json").exists():
                self.finished = now
            verdict = self._read_metrics(now)
            if verdict is not None:
                return verdict
            if self.finished is not None:
                if now - self.finished > EXIT_WAIT:
                    return None  # done but slow to exit: stop it, keep its result
                continue
            verdict = self._over_limit(now)
            if verdict is not None:
                return verdict
        return None

    def _read_metrics(self, now: float) -> Outcome | None:
        """Take in the new metrics lines; the verdict when the pruner stops the trial."""
        for line in self.tail.lines():
            self.last_activity = now
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.last_record = rec
            if rec.get("kind") != "eval" or rec.get("final"):
                continue
            self.last_eval = rec
            if self.on_eval is not None:
                self.on_eval(rec)
            why = self.report(rec) if self.report is not None else None
            if why is not None:
                return Outcome("pruned", "pruned", why, attrs=_pruned_attrs(rec, self.cap))
        return None

    def _over_limit(self, now: float) -> Outcome | None:
        """The verdict when the trial is past a hard limit (start-up, time cap, stall)."""
        cap, started = self.cap, self.started
        if started is None:
            if now - self.t0 > cap.startup:
                return Outcome(
                    "fail", "hung", f"hung: did not start training within {cap.startup:g} s"
                )
            return None
        limit = cap.kill_after
        if limit is not None and now - started > limit:
            return Outcome(
                "fail", "hung",
                f"hung: still running {now - started:.1f} s after training started "
                f"(cap {cap.value:g} s + 10% + grace {cap.grace_seconds:g} s); killed",
            )
        if now - self.last_activity > cap.stall:
            return Outcome(
                "fail", "hung", f"hung: no metrics for {now - self.last_activity:.0f} s; killed"
            )
        return None

    def drain(self) -> None:
        """Read the metrics lines written after the last look."""
        for line in self.tail.lines():
            try:
                self.last_record = json.loads(line)
                if self.last_record.get("kind") == "eval":
                    self.last_eval = self.last_record
            except json.JSONDecodeError:
                pass


def _progress_attrs(
    res: dict[str, Any] | None,
    last_record: dict[str, Any] | None,
    last_eval: dict[str, Any] | None,
) -> dict[str, Any]:
    """How far the trial got and what it scored: from its result, else its last metrics."""
    src = res if res is not None else (last_record or {})
    attrs = {
        "steps": src.get("steps", src.get("step")),
        "tokens": src.get("tokens"),
        "train_seconds": src.get("train_seconds", src.get("elapsed")),
    }
    if res is not None:
        attrs.update({
            "val_bpb": res.get("val_bpb"), "val_loss": res.get("val_loss"),
            "flops": res.get("model_flops"), "params_count": res.get("params"),
            "trainer_status": res.get("status"), "stop_reason": res.get("stop_reason"),
        })
    elif last_eval is not None:
        attrs.update({"val_bpb": last_eval.get("val_bpb"),
                      "val_loss": last_eval.get("val_loss"),
                      "flops": last_eval.get("flops")})
    return attrs


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
        out = json.loads(text[text.index("{"):]) if "{" in text else None
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None


def _pruned_attrs(rec: dict[str, Any], cap: TrialCap) -> dict[str, Any]:
    """Where on the cap axis the trial was pruned, and the trial-seconds that saved."""
    elapsed = float(rec.get("elapsed") or 0.0)
    reached = float(rec.get(RECORD_FIELD[cap.kind]) or 0.0)
    if cap.kind == "time":
        saved = max(0.0, cap.value - elapsed)
    elif reached > 0:
        saved = max(0.0, elapsed * (cap.value / reached - 1.0))
    else:
        saved = 0.0
    return {"pruned_at": reached, "pruned_fraction": reached / cap.value,
            "saved_seconds": round(saved, 3)}
