"""The fork server: `python -m budgetlm.runner.forkserver`, started by `ForkLauncher`
(budgetlm.runner.launch).

It imports torch and the trainer once, then forks a child per trial. The child is still its own
process — its own session (setsid), a crash or OOM kill takes only it down, it dies with the
server (PR_SET_PDEATHSIG), and the server dies with the tuner — and it runs exactly what a
spawned trial runs (`budgetlm.runner.child.main`). The server never runs a torch operation or
initializes CUDA, so nothing unsafe crosses the fork; it is single-threaded (a select loop that
also reaps the children and reports their exit codes).

Protocol (JSON lines): tuner -> server `{"id", "argv", "env", "cwd", "stdout", "stderr"}`;
server -> tuner `{"ready": true}` once, `{"id", "pid"}` per fork and `{"exit": pid, "rc": rc}`
(rc as subprocess's returncode: negative for a signal).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import select
import signal
import sys
import traceback
from typing import Any

from budgetlm.runner import child


def _send(msg: dict[str, Any]) -> None:
    """One JSON line to the tuner (our stdout), written whole."""
    data = (json.dumps(msg) + "\n").encode()
    while data:
        n = os.write(1, data)
        data = data[n:]


def _run_child(req: dict[str, Any], server_pid: int) -> None:
    """In the forked child: become a trial process, run it, never return."""
    code = 1
    try:
        os.setsid()
        os.environ.clear()
        os.environ.update(req["env"])
        os.environ["BUDGETLM_TUNE_PARENT"] = str(server_pid)
        child.die_with_parent()
        os.chdir(req["cwd"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit():
            import torch

            torch.set_num_threads(int(threads))
        try:
            child.main(list(req["argv"]))
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def warm_imports() -> None:
    """Import what every trial imports anyway: torch (and torch._dynamo, which torch.optim's
    first optimizer pulls in) and the trainer's modules."""
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401

    import budgetlm.data  # noqa: F401
    import budgetlm.estimate  # noqa: F401
    import budgetlm.hardware  # noqa: F401
    import budgetlm.model  # noqa: F401
    import budgetlm.optim  # noqa: F401
    import budgetlm.train

    for mod in pkgutil.iter_modules(budgetlm.train.__path__, "budgetlm.train."):
        importlib.import_module(mod.name)


def serve() -> None:
    """The fork server's main loop (see the module docstring)."""
    child.die_with_parent(watch=False)
    parent = os.getppid()
    warm_imports()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the tuner handles Ctrl-C and closes stdin
    me = os.getpid()
    _send({"ready": True})
    buf = b""
    children: set[int] = set()
    while True:
        ready, _, _ = select.select([0], [], [], 0.2)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            _send({"exit": pid, "rc": os.waitstatus_to_exitcode(status)})
        if os.getppid() != parent:
            os._exit(1)
        if not ready:
            continue
        chunk = os.read(0, 65536)
        if not chunk:  # the tuner closed our stdin: done (children die with us)
            os._exit(0)
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            req = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _run_child(req, me)
            children.add(pid)
            _send({"id": req["id"], "pid": pid})


if __name__ == "__main__":
    serve()
