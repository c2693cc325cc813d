"""One trial's process: `python -m budgetlm.runner.child TRIAL.yaml --run-dir DIR` (or the same
`main` in a child forked by the tuner's fork server, see budgetlm.runner.launch).

Exactly `budgetlm train TRIAL.yaml --run-dir DIR --json --quiet`, plus two things the tuner needs:

- It dies with its parent: Linux `prctl(PR_SET_PDEATHSIG, SIGKILL)` (the tuner's kill -9 takes
  its trainers with it), and a watchdog thread that exits when the parent pid changes (other
  platforms, and the window before prctl took effect).
- Test hook (fault injection), used by the tuner's tests and documented here only:
  `meta.fault` in the trial config (e.g. a categorical `meta.fault` in the study space) or the
  environment variable `BUDGETLM_TUNE_FAULT` names a fault, optionally `@K` (default 3): at the
  K-th training forward pass the process
    raise  raises RuntimeError          exit  calls os._exit(3)
    segv   kills itself with SIGSEGV    hang  sleeps forever
    nan    makes the loss NaN           oom   raises torch.OutOfMemoryError
  `none` (or an empty value) injects nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any

FAULTS = ("raise", "exit", "segv", "hang", "nan", "oom")
PR_SET_PDEATHSIG = 1


def die_with_parent(watch: bool = True) -> None:
    """SIGKILL this process when its parent dies; exit now if the parent is already gone."""
    parent = os.environ.get("BUDGETLM_TUNE_PARENT")
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if parent is None:
        return
    expected = int(parent)
    if os.getppid() != expected:  # the parent died before prctl took effect
        os._exit(1)
    if not watch:
        return

    def watcher() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != expected:
                os._exit(1)

    threading.Thread(target=watcher, name="parent-watch", daemon=True).start()


def _fault_spec(trial_yaml: str) -> str | None:
    spec = os.environ.get("BUDGETLM_TUNE_FAULT")
    if not spec:
        import yaml

        try:
            with open(trial_yaml) as f:
                raw = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError):
            return None
        spec = (raw.get("meta") or {}).get("fault")
    if spec is None or str(spec).strip().lower() in ("", "none", "null"):
        return None
    return str(spec).strip().lower()


def install_fault(spec: str) -> None:
    """Patch budgetlm.model.build_model so the built model misbehaves as `spec` says."""
    kind, _, at = spec.partition("@")
    if kind not in FAULTS:
        raise SystemExit(f"error: meta.fault: unknown fault {kind!r}; one of {', '.join(FAULTS)}")
    after = int(at) if at else 3
    import budgetlm.model as model_mod

    original = model_mod.build_model

    def build_model(*args: Any, **kwargs: Any) -> Any:
        model = original(*args, **kwargs)
        calls = [0]

        def hook(module: Any, inputs: Any, output: Any) -> Any:
            if not module.training:
                return None
            calls[0] += 1
            if calls[0] < after:
                return None
            if kind == "nan":
                logits, loss = output
                return logits, loss * float("nan")
            if kind == "raise":
                raise RuntimeError(f"injected fault (meta.fault={spec})")
            if kind == "exit":
                os._exit(3)
            if kind == "segv":
                os.kill(os.getpid(), signal.SIGSEGV)
            if kind == "hang":
                while True:
                    time.sleep(60)
            if kind == "oom":
                import torch

                raise torch.OutOfMemoryError(f"injected fault: out of memory (meta.fault={spec})")
            return None

        model.register_forward_hook(hook)
        return model

    model_mod.build_model = build_model


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[1] != "--run-dir":
        raise SystemExit("usage: python -m budgetlm.runner.child TRIAL.yaml --run-dir DIR")
    die_with_parent()
    trial_yaml, _, run_dir = args
    fault = _fault_spec(trial_yaml)
    if fault is not None:
        install_fault(fault)
    sys.argv = ["budgetlm", "train", trial_yaml, "--run-dir", run_dir, "--json", "--quiet"]
    from budgetlm.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
