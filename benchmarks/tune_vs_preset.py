"""Tune-then-train vs the nanogpt-cpu preset, for the same total wall time on this CPU.

The budget B (default 600 s) is wall-clock time, tuning included:

1. Corpus: ~1 MB of English-like text made offline and deterministically: the docstrings of this
   interpreter's standard library (sorted files, ast.walk order, > 80 chars each) joined by blank
   lines, cut at 1,000,000 characters. Character-level, like nanoGPT's shakespeare_char.
2. Tune: `budgetlm tune` a study over the preset (lr, optimizer, depth, width, micro-batch; the
   preset itself is trial 0), each trial capped at `--trial-time` seconds, the study at
   `--tune-share` x B. The tuner's whole wall time (startup, trials, outputs) is measured.
3. Train the best trial's config (`budgetlm export --keep-time-cap`) for what is left of B.
4. Preset: `budgetlm train nanogpt-cpu` for the whole B (its 2000-step cap lifted, so its cosine
   schedule follows the time cap).
5. Both final models are evaluated again on the whole validation split (last 5% of the corpus).

Prints a table and appends it to benchmarks/RESULTS.md. Takes about 2 x B plus a minute.

    python benchmarks/tune_vs_preset.py [--budget 600] [--tune-share 0.5] [--trial-time 20]
                                        [--workers 2] [--threads 1] [--workdir DIR] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, machine, make_corpus, reevaluate  # noqa: E402


def study(corpus: Path, trial_time: float, tune_time: float, workers: int) -> dict:
    return {
        "name": "tune_vs_preset",
        "base": "nanogpt-cpu",
        "data": {"source": str(corpus), "tokenizer": "char"},
        "objective": "val_bpb",
        "trial_cap": {"time": trial_time},
        "budget": {"time": tune_time},
        "sampler": "tpe",
        "pruner": {"type": "hyperband", "reduction_factor": 3},
        "workers": workers,
        "threads": max(1, (os.cpu_count() or 1) // workers),
        "evals": 8,
        "enqueue": [{"optim.lr": 1e-3, "optim.name": "adamw", "model.n_layer": 4,
                     "model.d_model": 128, "train.micro_batch": 12}],
        "space": {
            "optim.lr": {"type": "float", "low": 3e-4, "high": 2e-2, "log": True},
            "optim.name": {"type": "categorical", "choices": ["adamw", "lion", "muon"]},
            "model.n_layer": {"type": "int", "low": 1, "high": 6},
            "model.d_model": {"type": "categorical", "choices": [64, 96, 128, 192]},
            "train.micro_batch": {"type": "categorical", "choices": [6, 12, 24]},
        },
    }


def _cli(*args: str, cwd: Path, env: dict[str, str], json_out: bool = True) -> tuple[dict, float]:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "budgetlm", *args, *(["--json"] if json_out else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"budgetlm {' '.join(args)} failed (exit {out.returncode})")
    return (json.loads(out.stdout) if json_out else {}), wall






def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=600.0, help="total wall seconds per arm")
    ap.add_argument("--tune-share", type=float, default=0.5, help="share of the budget to tune")
    ap.add_argument("--trial-time", type=float, default=20.0, help="seconds per trial")
    ap.add_argument("--workers", type=int, default=2, help="trials at once")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the two final runs (default 1: on a shared machine "
                    "2 OpenMP threads on 2 busy cores run ~10x slower)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here")
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args(argv)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="budgetlm-tune-vs-preset-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    corpus = make_corpus(work / "stdlib_docstrings.txt")
    print(f"corpus: {corpus} ({corpus.stat().st_size:,} bytes); workdir {work}", flush=True)
    B = args.budget

    # Arm 1: tune, then train the best config for what is left of the budget.
    spec = study(corpus, args.trial_time, B * args.tune_share, args.workers)
    (work / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    summary, tune_wall = _cli("tune", "study.yaml", "--quiet", cwd=work, env=env)
    best = summary["best"]
    print(f"tune ({tune_wall:.0f} s): {summary['trials']} trials {summary['states']}, best "
          f"trial {best['number']} val bpb {best['values'][0]:.4f} {best['params']}", flush=True)
    _cli("export", "study.yaml", "-o", "best.yaml", "--keep-time-cap", cwd=work, env=env,
         json_out=False)
    left = B - tune_wall
    if left <= 1:
        raise SystemExit(f"tuning took {tune_wall:.0f} s of the {B:g} s budget; raise --budget")
    run_env = {**env, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    threads = f"train.threads={args.threads}"
    tuned, _ = _cli("train", "best.yaml", "--max-time", f"{left:.1f}", "--run-dir", "tuned",
                    "--set", threads, "--quiet", cwd=work, env=run_env)
    tuned_wall = time.perf_counter() - t0
    # Arm 2: the preset for the whole budget.
    preset, preset_wall = _cli(
        "train", "nanogpt-cpu", "--data", str(corpus), "--tokenizer", "char", "--max-time",
        f"{B:g}", "--set", "train.max_steps=null", "--set", threads, "--run-dir", "preset",
        "--quiet",
        cwd=work, env=run_env,
    )
    rows = []
    for label, res, wall in (
        ("tune + train best", tuned, tune_wall + tuned_wall),
        ("nanogpt-cpu preset", preset, preset_wall),
    ):
        loss, bpb, _ = reevaluate(work / res["run_dir"])
        rows.append({"run": label, "params": res["params"], "steps": res["steps"],
                     "tokens": res["tokens"], "train_s": res["train_seconds"], "wall_s": wall,
                     "val_bpb": res["val_bpb"], "full_bpb": bpb, "full_loss": loss})
        print(f"{label}: {res['tokens']:,} tokens, val bpb {bpb:.4f} (whole val split)",
              flush=True)

    delta = rows[1]["full_bpb"] - rows[0]["full_bpb"]
    p = {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in best["params"].items()}
    states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(summary["states"].items()))
    lines = [
        f"## tune_vs_preset — {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"Machine: {machine()}. Corpus: stdlib docstrings, 1,000,000 chars, char tokenizer. "
        f"Budget: {B:g} s of wall time per arm, tuning included; final runs on "
        f"{args.threads} torch thread(s).",
        f"Tuning: {summary['trials']} trials of {args.trial_time:g} s ({args.workers} at once; "
        f"{states}), {tune_wall:.0f} s in all; {summary['saved_seconds']:.0f} "
        f"trial-seconds saved by pruning. Best: {', '.join(f'{k}={v}' for k, v in p.items())}; "
        f"then trained for the {left:.0f} s left.",
        "",
        "| run | params | steps | tokens | train s | wall s (all) | val bpb (run) "
        "| val bpb (whole val) | val loss (whole val) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['params']:,} | {r['steps']:,} | {r['tokens']:,} | "
            f"{r['train_s']:.0f} | {r['wall_s']:.0f} | {r['val_bpb']:.4f} | {r['full_bpb']:.4f} "
            f"| {r['full_loss']:.4f} |"
        )
    winner = min(rows, key=lambda r: r["full_bpb"])["run"]
    lines += ["", f"Winner: **{winner}** (preset − tuned = {delta:+.4f} bpb on the whole "
              "validation split).", ""]
    text = "\n".join(lines)
    print()
    print(text)
    if not args.no_append:
        append_results(text)
    return 0 if math.isfinite(delta) else 1


if __name__ == "__main__":
    raise SystemExit(main())
