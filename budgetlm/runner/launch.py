"""How a trial's process is started: spawned fresh, or forked from a warm server.

`spawn`: `python -m budgetlm.runner.child TRIAL.yaml --run-dir DIR`, a new interpreter per trial.
Importing torch (and the torch._dynamo that torch.optim pulls in) costs 3-5 s of CPU each time,
which on a laptop is a large share of a short trial.

`fork` (default on Linux): one server process per tuner (budgetlm.runner.forkserver) imports
torch and budgetlm once and forks a child per trial that runs exactly what `spawn` runs
(`budgetlm.runner.child.main`), in its own session, dying with the server as the server dies
with the tuner. `ForkLauncher` is the tuner's side of that server's protocol.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Protocol


class Handle(Protocol):
    """A started trial process, as `subprocess.Popen` presents one."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class SpawnLauncher:
    """A fresh interpreter per trial."""

    name = "spawn"

    def wait_ready(self) -> None:
        pass

    def start(self, argv: list[str], env: dict[str, str], stdout: Path, stderr: Path) -> Handle:
        cmd = [sys.executable, "-m", "budgetlm.runner.child", *argv]
        with stdout.open("wb") as out, stderr.open("wb") as err:
            return subprocess.Popen(
                cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, close_fds=True,
            )

    def close(self) -> None:
        pass


class _Forked:
    """A child of the fork server, as seen from the tuner."""

    def __init__(self, pid: int, server: ForkLauncher):
        self.pid = pid
        self.returncode: int | None = None
        self._server = server
        self._done = threading.Event()

    def _exited(self, rc: int) -> None:
        self.returncode = rc
        self._done.set()

    def poll(self) -> int | None:
        if not self._done.is_set() and self._server.dead():
            self._exited(-int(signal.SIGKILL))  # the server is gone, and its children with it
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            if self.poll() is None:
                raise subprocess.TimeoutExpired(f"trial pid {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode


class ForkLauncher:
    """Client of the fork server (started from the calling thread: call it from the main one,
    since PR_SET_PDEATHSIG follows the thread that forked the server)."""

    name = "fork"

    def __init__(self, env: dict[str, str] | None = None, log: Path | None = None):
        server_env = dict(os.environ if env is None else env)
        server_env["BUDGETLM_TUNE_PARENT"] = str(os.getpid())
        self._log = (log.open("ab") if log is not None else subprocess.DEVNULL)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "budgetlm.runner.forkserver"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, env=server_env, close_fds=True,
        )
        self._lock = threading.Lock()
        self._pending: dict[int, Any] = {}
        self._children: dict[int, _Forked] = {}
        self._early: dict[int, int] = {}
        self._next = 0
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name="forkserver-reader", daemon=True)
        self._reader.start()

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Block until the server has imported everything; RuntimeError if it cannot start."""
        if not self._ready.wait(timeout) or self.dead():
            self.close()
            raise RuntimeError("the trial fork server did not start")

    def dead(self) -> bool:
        return self.proc.poll() is not None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            with self._lock:
                if msg.get("ready"):
                    self._ready.set()
                elif "exit" in msg:
                    forked = self._children.pop(int(msg["exit"]), None)
                    if forked is not None:
                        forked._exited(int(msg["rc"]))
                    else:
                        self._early[int(msg["exit"])] = int(msg["rc"])
                elif "id" in msg:
                    box = self._pending.pop(int(msg["id"]), None)
                    if box is not None:
                        box.append(msg)
                        box[0].set()
        with self._lock:  # the server is gone: so are its children
            for forked in self._children.values():
                forked._exited(-int(signal.SIGKILL))
            self._children.clear()
            for box in self._pending.values():
                box[0].set()

    def start(self, argv: list[str], env: dict[str, str], stdout: Path, stderr: Path) -> Handle:
        box: list[Any] = [threading.Event()]
        with self._lock:
            self._next += 1
            rid = self._next
            self._pending[rid] = box
            req = {"id": rid, "argv": argv, "env": env, "cwd": os.getcwd(),
                   "stdout": str(stdout), "stderr": str(stderr)}
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write((json.dumps(req) + "\n").encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                raise RuntimeError("the trial fork server is gone") from None
        if not box[0].wait(60) or len(box) < 2:
            raise RuntimeError("the trial fork server did not answer")
        pid = int(box[1]["pid"])
        forked = _Forked(pid, self)
        with self._lock:
            if pid in self._early:
                forked._exited(self._early.pop(pid))
            else:
                self._children[pid] = forked
        return forked

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()


def make_launcher(kind: str, env: dict[str, str] | None = None, log: Path | None = None) -> Any:
    """`fork` where it can work (Linux), else `spawn`. A fork server starts in the background:
    call `ready(launcher)` before the first trial."""
    if kind == "fork" and sys.platform.startswith("linux"):
        try:
            return ForkLauncher(env, log)
        except OSError:
            pass
    return SpawnLauncher()


def ready(launcher: Any) -> Any:
    """The launcher once usable: a fork server that fails to start gives way to spawn."""
    if isinstance(launcher, ForkLauncher):
        try:
            launcher.wait_ready()
        except RuntimeError:
            return SpawnLauncher()
    return launcher
