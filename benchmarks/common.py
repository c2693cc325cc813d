"""Pieces the head-to-head benchmarks share: an offline text corpus, re-evaluation, machine line."""

from __future__ import annotations

import ast
import json
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
_SKIP = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test",
         "idlelib", "lib2to3", "turtledemo"}


def make_corpus(path: Path, n_chars: int = 1_000_000) -> Path:
    """English prose available offline: docstrings (> 80 chars) of the standard library, in sorted
    file order and ast.walk order, cut at `n_chars`. Deterministic for one Python version."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not set(p.relative_to(root).parts[:-1]) & _SKIP)
    docs: list[str] = []
    total = 0
    for f in files:
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc) > 80:
                    docs.append(doc)
                    total += len(doc) + 2
        if total > n_chars:
            break
    path.write_text("\n\n".join(docs)[:n_chars], encoding="utf-8")
    return path


def reevaluate(run_dir: Path) -> tuple[float, float, int]:
    """(val loss nats/token, val bits/byte, tokens) of the run's last checkpoint on the whole
    validation split, in non-overlapping windows of the model's seq_len."""
    import torch

    from budgetlm.config import load_config
    from budgetlm.data import bits_per_byte, load_corpus, val_batches
    from budgetlm.model import build_model
    from budgetlm.train.rundir import RunDir, load_checkpoint

    cfg = load_config(str(run_dir / "config.yaml"))
    corpus = load_corpus(cfg.data, seq_len=cfg.model.seq_len)
    model = build_model(cfg.model)
    ckpt = RunDir(run_dir).latest_checkpoint()
    model.load_state_dict(load_checkpoint(ckpt, "benchmark")["model"])
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in val_batches(corpus.val, 64, cfg.model.seq_len, len(corpus.val)):
            _, loss = model(x, y)
            total += float(loss) * y.numel()
            count += y.numel()
    loss = total / count
    return loss, bits_per_byte(loss, corpus.val_bytes_per_token), count


def machine() -> str:
    import torch

    from budgetlm.hardware import detect_cpu

    cpu, cores, ram = detect_cpu()
    return (f"{cpu}, {cores} cores, {ram / 2**30:.0f} GiB; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; Python {platform.python_version()}")


def append_results(text: str) -> None:
    """Append one benchmark's section to benchmarks/RESULTS.md."""
    existing = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    RESULTS.write_text(existing.rstrip("\n") + "\n\n" + text + "\n")
    print(f"appended to {RESULTS}")


def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> tuple[dict, float]:
    """`budgetlm ARGS --json` in a fresh process (in `cwd` when given): its JSON answer and wall
    seconds; a failure stops the benchmark with the command's stderr."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "budgetlm", *args, "--json"],
                         capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"budgetlm {' '.join(args)} failed (exit {out.returncode})")
    return json.loads(out.stdout), wall


def prepare_workdir(workdir: Path | None, prefix: str,
                    threads: int | None) -> tuple[Path, dict[str, str], Path]:
    """A head-to-head's working directory (given or temporary), the environment its `budgetlm`
    processes run in (OMP_NUM_THREADS=threads when given, also for this process's own
    re-evaluation), and the offline corpus written there."""
    work = workdir or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    corpus = make_corpus(work / "stdlib_docstrings.txt")
    print(f"corpus: {corpus} ({corpus.stat().st_size:,} bytes)", flush=True)
    return work, env, corpus
