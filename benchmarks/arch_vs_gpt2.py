"""Llama recipe vs GPT-2 recipe on this CPU: which plans and trains better in the same time?

1. Corpus: ~1 MB of English-like text generated offline and deterministically (the docstrings of
   this interpreter's standard library, `common.make_corpus`), character-level; the last 5% is
   the held-out validation split.
2. For each recipe: `budgetlm plan --time T --arch ARCH --data FILE --tokenizer char -o
   ARCH/plan.yaml`, then `budgetlm train ARCH/plan.yaml` (the top candidate, unchanged). Both
   runs get the same wall time T (the plan's step timing comes before it, outside T).
3. Both final models (last checkpoint) are evaluated again on the whole validation split, so
   the comparison does not depend on each run's `eval_tokens`.

Prints a table and appends it to benchmarks/RESULTS.md. Takes about 2 x (T + ~40 s).

    python benchmarks/arch_vs_gpt2.py [--time 180] [--workdir DIR] [--threads N] [--no-append]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, machine, prepare_workdir, reevaluate, run_cli  # noqa: E402

ARCHS = ("llama", "gpt2")




def _run_arch(arch: str, corpus: Path, seconds: float, work: Path,
              env: dict[str, str]) -> dict:
    """Plan with `--arch arch`, train the exported plan, re-evaluate it: one table row."""
    d = work / arch
    d.mkdir(parents=True, exist_ok=True)
    plan, plan_wall = run_cli("plan", "--time", f"{seconds:g}s", "--arch", arch, "--data",
                           str(corpus), "--tokenizer", "char", "-o", str(d / "plan.yaml"),
                           env=env)
    top = plan["top"]
    print(f"{arch}: plan ({plan_wall:.1f} s) -> {top['name']}, {top['params']:,} params, "
          f"lr {top['lr']:.3g}, batch {top['micro_batch']}x{top['grad_accum']}, "
          f"{top['time_source']}", flush=True)
    res, _ = run_cli("train", str(d / "plan.yaml"), "--run-dir", str(d / "run"), env=env)
    loss, bpb, n = reevaluate(Path(res["run_dir"]))
    print(f"{arch}: {res['steps']} steps, {res['tokens']:,} tokens, val bpb "
          f"{res['val_bpb']:.4f} (run's eval), {bpb:.4f} (whole val split)", flush=True)
    return {
        "arch": arch, "top": top["name"], "shape": _shape(top), "params": res["params"],
        "steps": res["steps"], "tokens": res["tokens"], "train_s": res["train_seconds"],
        "val_bpb": res["val_bpb"], "full_val_bpb": bpb, "full_val_loss": loss,
        "val_tokens": n, "batch": f"{res['micro_batch']}x{res['grad_accum']}",
        "lr": top["lr"], "plan_s": plan_wall, "timed": bool(plan["timed"]),
    }


def _shape(top: dict) -> str:
    kv = "" if top["n_kv_head"] == top["n_head"] else f", {top['n_kv_head']} kv"
    return f"{top['n_layer']}x{top['d_model']}, {top['n_head']} heads{kv}, ff {top['d_ff']}"


def _report(rows: list[dict], seconds: float, corpus: Path, threads: int | None,
            load0: float) -> str:
    winner = min(rows, key=lambda r: r["full_val_bpb"])
    by = {r["arch"]: r for r in rows}
    delta = by["llama"]["full_val_bpb"] - by["gpt2"]["full_val_bpb"]
    lines = [
        f"## arch_vs_gpt2 — {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"Machine: {machine()}. Corpus: stdlib docstrings, char tokenizer "
        f"({corpus.stat().st_size:,} bytes; the last 5% held out). Budget: {seconds:g} s of "
        "training per run, after `budgetlm plan --time "
        f"{seconds:g}s --arch ARCH --data FILE --tokenizer char`"
        + (f"; OMP_NUM_THREADS={threads}." if threads else ".")
        + f" Load average at the start: {load0:.1f}.",
        "",
        "| arch | plan top | shape | params | lr | batch | steps | tokens | train s | plan s "
        "| val bpb (run) | val bpb (whole val) | val loss (whole val) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['top']} | {r['shape']} | {r['params']:,} | {r['lr']:.3g} | "
            f"{r['batch']} | {r['steps']:,} | {r['tokens']:,} | {r['train_s']:.0f} | "
            f"{r['plan_s']:.0f} | {r['val_bpb']:.4f} | {r['full_val_bpb']:.4f} | "
            f"{r['full_val_loss']:.4f} |"
        )
    lines += ["", f"Winner: **{winner['arch']}** (llama − gpt2 = {delta:+.4f} bpb on the whole "
              "validation split).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", type=float, default=180.0, help="training seconds for each run")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here")
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (OMP_NUM_THREADS) for plan, train, evaluation")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()[0]
    work, env, corpus = prepare_workdir(args.workdir, "budgetlm-arch-vs-gpt2-", args.threads)
    rows = [_run_arch(a, corpus, args.time, work, env) for a in ARCHS]
    text = _report(rows, args.time, corpus, args.threads, load0)
    print()
    print(text)
    if not args.no_append:
        append_results(text)
    return 0 if all(math.isfinite(r["full_val_bpb"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
