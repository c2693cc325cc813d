"""Plan vs preset on this CPU: does `budgetlm plan` beat nanoGPT's CPU recipe in the same time?

1. Corpus: ~1 MB of English-like text generated offline and deterministically: the docstrings
   (module, class and function) of this interpreter's standard library, in sorted file order,
   joined by blank lines and cut at 1,000,000 characters (no network; same text for the same
   Python version). Character-level, like nanoGPT's shakespeare_char.
2. `budgetlm plan --time 3m --data FILE --tokenizer char -o plan.yaml`, then
   `budgetlm train plan.yaml` (the top candidate, unchanged).
3. `budgetlm train nanogpt-cpu --data FILE --tokenizer char --max-time 180` with the preset's
   2000-step cap lifted (`--set train.max_steps=null`), so the recipe also gets the full 3 minutes
   and its cosine schedule is driven by the time cap.
4. Both final models (last checkpoint) are evaluated again on the whole validation split (the last
   5% of the corpus), so the comparison does not depend on each run's `eval_tokens`.

Prints a table and appends it to benchmarks/RESULTS.md. Takes about 7 minutes on 2 cores.

    python benchmarks/plan_vs_preset.py [--time 180] [--workdir DIR] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, machine, prepare_workdir, reevaluate, run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", type=float, default=180.0, help="seconds for each run")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here")
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads for every step (OMP_NUM_THREADS); on a shared "
                         "2-core machine 1 keeps other processes from collapsing throughput")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()[0]
    work, env, corpus = prepare_workdir(args.workdir, "budgetlm-plan-vs-preset-", args.threads)

    secs = f"{args.time:g}s"
    plan, plan_wall = run_cli("plan", "--time", secs, "--data", str(corpus), "--tokenizer", "char",
                           "-o", str(work / "plan.yaml"), env=env)
    top = plan["top"]
    print(f"plan ({plan_wall:.1f} s): {top['name']}, {top['params']:,} params, lr {top['lr']:.3g},"
          f" batch {top['micro_batch']}x{top['grad_accum']}, predicted {top['tokens']:,} tokens",
          flush=True)
    runs = {
        "plan (top candidate)": ["train", str(work / "plan.yaml"), "--run-dir", str(work / "plan")],
        "nanogpt-cpu preset": [
            "train", "nanogpt-cpu", "--data", str(corpus), "--tokenizer", "char",
            "--max-time", f"{args.time:g}", "--set", "train.max_steps=null",
            "--run-dir", str(work / "preset"),
        ],
    }
    rows = []
    for label, cmd in runs.items():
        res, wall = run_cli(*cmd, env=env)
        loss, bpb, n = reevaluate(Path(res["run_dir"]))
        cfg = json.loads(json.dumps(res.get("predicted", {})))
        rows.append({
            "run": label, "params": res["params"], "steps": res["steps"], "tokens": res["tokens"],
            "train_s": res["train_seconds"], "val_loss": res["val_loss"], "val_bpb": res["val_bpb"],
            "full_val_loss": loss, "full_val_bpb": bpb, "val_tokens": n,
            "batch": f"{res['micro_batch']}x{res['grad_accum']}", "plan": cfg.get("plan"),
        })
        print(f"{label}: {res['steps']} steps, {res['tokens']:,} tokens, "
              f"val bpb {res['val_bpb']:.4f} (run's eval), {bpb:.4f} (whole val split)", flush=True)

    winner = min(rows, key=lambda r: r["full_val_bpb"])["run"]
    lines = [
        f"## plan_vs_preset — {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"Machine: {machine()}. Corpus: stdlib docstrings, 1,000,000 chars, char tokenizer "
        f"({corpus.stat().st_size:,} bytes). Budget: {args.time:g} s per run"
        + (f"; OMP_NUM_THREADS={args.threads} for plan and both runs." if args.threads else ".")
        + f" Load average at the start: {load0:.1f} (other processes share the CPU).",
        f"Plan: `budgetlm plan --time {secs} --data FILE --tokenizer char` -> {top['name']} "
        f"({top['params']:,} params, lr {top['lr']:.3g}, micro-batch {top['micro_batch']} x "
        f"{top['grad_accum']}, {top['epochs']:.1f} epochs predicted; "
        f"{plan['top']['time_source']}; plan took {plan_wall:.1f} s).",
        "",
        "| run | params | steps | tokens | batch | train s | val bpb (run) | val bpb (whole val) "
        "| val loss (whole val) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['params']:,} | {r['steps']:,} | {r['tokens']:,} | {r['batch']} | "
            f"{r['train_s']:.0f} | {r['val_bpb']:.4f} | {r['full_val_bpb']:.4f} | "
            f"{r['full_val_loss']:.4f} |"
        )
    delta = rows[1]["full_val_bpb"] - rows[0]["full_val_bpb"]
    lines += ["", f"Winner: **{winner}** (plan − preset = {-delta:+.4f} bpb on the whole "
              f"validation split).", ""]
    text = "\n".join(lines)
    print()
    print(text)
    if not args.no_append:
        append_results(text)
    return 0 if math.isfinite(delta) else 1


if __name__ == "__main__":
    raise SystemExit(main())
