"""Tuning that pays for itself? The plan alone vs `tune --around` the plan, at equal wall time.

The budget B (default 600 s) is wall-clock time on this CPU, tuning included:

1. Corpus: the ~1 MB offline text of `common.make_corpus` (stdlib docstrings, not the tuner's
   default corpus `builtin:pystdlib`), character-level. Its last 10% is a held-out file that
   neither the plan, the proxies nor the final runs ever see.
2. Plan: `budgetlm plan --time B --data TRAIN --tokenizer char --no-calibrate -o plan.yaml`.
3. Plan alone, twice (seeds 0 and 1): `budgetlm train plan.yaml` for the whole B. The two runs
   measure the run-to-run scatter (seed and timing) of the plan alone.
4. Tuned: `budgetlm tune --around plan.yaml --share S`: µP proxies of the planned model
   (µP anchored at the plan's width) are tuned for S x B, the best proxy's hyperparameters are
   transferred to the planned width, and that model trains for what is left of B (the
   command's whole wall time is B plus process start-up).
5. Every final model (its best checkpoint when the run kept one, else its last) is evaluated on
   the whole held-out file: bits per byte.

The tuned run wins when its held-out bpb is lower than both plan-alone runs by more than their
difference. Prints a table and appends it to benchmarks/RESULTS.md. Takes about 3 x B plus a
minute; run it alone.

    python benchmarks/tune_vs_plan.py [--budget 600] [--share 0.2] [--workers 2]
                                      [--workdir DIR] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, machine, prepare_workdir, run_cli  # noqa: E402
from data_limited import heldout_loss, split_corpus  # noqa: E402


def plan_alone(plan: Path, work: Path, seed: int, env: dict[str, str]) -> dict[str, Any]:
    res, wall = run_cli("train", str(plan), "--run-dir", str(work / f"plan-seed{seed}"),
                        "--set", f"seed={seed}", "--quiet", env=env)
    return {"run": f"plan alone (seed {seed})", "result": res, "wall": wall,
            "run_dir": Path(res["run_dir"])}


def tuned(plan: Path, work: Path, args: argparse.Namespace,
          env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`budgetlm tune --around` in `work` (its study and final run under work/runs/around)."""
    summary, wall = run_cli("tune", "--around", str(plan), "--share", f"{args.share:g}",
                            "--name", "around", "--workers", str(args.workers), env=env,
                            cwd=work)
    run_dir = work / summary["final"]["run_dir"]
    res = json.loads((run_dir / "result.json").read_text())
    row = {"run": f"tune --around (share {args.share:g}) + train", "result": res,
           "wall": wall, "run_dir": run_dir}
    return row, summary


def table(rows: list[dict[str, Any]], summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"## tune_vs_plan — {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/tune_vs_plan.py --budget "
        f"{args.budget:g} --share {args.share:g} --workers {args.workers}`. Corpus: stdlib "
        "docstrings (1,000,000 chars, char tokenizer), the last 10% held out from everything; "
        f"{args.budget:g} s of wall time per arm, tuning included.",
        "",
        "| run | params | steps | tokens | wall s | ended | held-out bpb | held-out loss |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        res = r["result"]
        ended = res["stop_reason"] if res["status"] == "early_stopped" else res["status"]
        lines.append(f"| {r['run']} | {res['params']:,} | {res['steps']:,} | "
                     f"{res['tokens']:,} | {r['wall']:.0f} | {ended} | {r['bpb']:.4f} | "
                     f"{r['loss']:.4f} |")
    a, b, t = rows[0]["bpb"], rows[1]["bpb"], rows[2]["bpb"]
    scatter = abs(a - b)
    margin = min(a, b) - t
    tr = summary["trials"]
    ps, ts = summary["plan_settings"], summary.get("transferred_settings") or {}
    lines += [
        "",
        f"Tuning: proxies of width {summary['proxy_width']} (the plan's {summary['d_model']}, "
        f"m = {summary['width_mult']:g}), {tr['total']} trials ({tr['complete']} complete, "
        f"{tr['pruned']} pruned, {tr['failed']} failed), {summary['tuning_seconds']:.0f} s "
        f"= {100 * summary['tuning_fraction']:.0f}% of the budget. Plan alone: "
        f"{_settings(ps)}; transferred from the proxies: {_settings(ts)}. Changed from the "
        f"plan: {_changes(ps, ts)}.",
        "",
        f"Plan-alone scatter {scatter:.4f} bpb; the tuned run is {abs(margin):.4f} bpb "
        f"{'below' if margin > 0 else 'above'} the better plan-alone run: "
        f"**{'wins' if margin > scatter else 'does not win'}** by the acceptance rule (lower "
        "by more than the scatter).",
    ]
    return "\n".join(lines)


def _changes(plan: dict[str, Any], moved: dict[str, Any]) -> str:
    """The settings the transfer changed, `name plan -> moved` (the best trial's edit)."""
    keys = [k for k in plan if k in moved and moved[k] != plan[k]
            and k not in ("hidden_lr", "batch_tokens")]  # both follow from the others
    return ", ".join(f"{k} {plan[k]} -> {moved[k]}" for k in keys) or "nothing"


def _settings(s: dict[str, Any]) -> str:
    if not s:
        return "none"
    out = (f"{s['optimizer']} lr {s['lr']:.3g} (hidden {s['hidden_lr'] or 0:.3g}), init "
           f"{s['init_std']:.3g}, {s['batch_tokens']} tokens/step, warmup "
           f"{s['warmup_fraction']:.3g}")
    if s.get("decay_fraction") is not None:
        out += f", decay {s['decay_fraction']:.3g}"
    return out + f", dropout {s.get('dropout', 0.0):.3g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=600.0, help="wall seconds per arm")
    ap.add_argument("--share", type=float, default=0.2, help="share of the budget to tune")
    ap.add_argument("--workers", type=int, default=2, help="proxy trials at once")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)
    work, env, corpus = prepare_workdir(args.workdir, "budgetlm-tune-vs-plan-", None)
    work = work.resolve()
    train_txt, held = split_corpus(corpus, work)
    plan = work / "plan.yaml"
    run_cli("plan", "--time", f"{args.budget:g}s", "--data", str(train_txt), "--tokenizer",
            "char", "--no-calibrate", "-o", str(plan), env=env)
    rows = [plan_alone(plan, work, 0, env), plan_alone(plan, work, 1, env)]
    tuned_row, summary = tuned(plan, work, args, env)
    rows.append(tuned_row)
    for r in rows:
        r["loss"], r["bpb"], _ = heldout_loss(r["run_dir"], held)
        print(f"{r['run']}: held-out bpb {r['bpb']:.4f} ({r['wall']:.0f} s)", flush=True)
    text = table(rows, summary, args)
    print()
    print(text)
    if not args.no_append:
        append_results(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
