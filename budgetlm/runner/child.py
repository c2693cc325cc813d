"""One trial's process: `python -m budgetlm.runner.child TRIAL.yaml --run-dir DIR` (or the same
`main` in a child forked by the tuner's fork server, see budgetlm.runner.launch).

It does what `budgetlm train TRIAL.yaml --run-dir DIR --json --quiet` does (the result as JSON on
stdout; `error: …` on stderr and exit 2 for a config the trainer rejects; exit 130 when
interrupted), plus two things the tuner needs:

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
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from budgetlm.config import load_config
from budgetlm.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError

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


def fault_spec(trial_yaml: str) -> str | None:
    """The fault to inject: $BUDGETLM_TUNE_FAULT, else the trial config's `meta.fault`; None
    for none."""
    spec = os.environ.get("BUDGETLM_TUNE_FAULT")
    if not spec:
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
    import budgetlm.model as model_mod  # torch: only once a fault is asked for

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
    """`TRIAL.yaml --run-dir DIR`: train it as `budgetlm train … --json --quiet` would."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[1] != "--run-dir":
        raise SystemExit("usage: python -m budgetlm.runner.child TRIAL.yaml --run-dir DIR")
    die_with_parent()
    trial_yaml, _, run_dir = args
    fault = fault_spec(trial_yaml)
    if fault is not None:
        install_fault(fault)
    try:
        run_trial(trial_yaml, Path(run_dir))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None


def run_trial(trial_yaml: str, run_dir: Path) -> None:
    """Train the config in `trial_yaml` into `run_dir`; print the result as JSON on stdout
    (rank 0 only); exit 130 when the run was interrupted."""
    from budgetlm.train import train  # torch: after die_with_parent guards this process

    cfg = load_config(trial_yaml)
    result = train(cfg, run_dir=run_dir, progress=False)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for the run
        return
    sys.stdout.write(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    if result.status == "interrupted":
        raise SystemExit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
