"""The data-limited regime on this CPU: does more budget ever plan a worse model on a small corpus?

1. Corpus: the ~1 MB offline text of `common.make_corpus` (stdlib docstrings), character-level.
   Its last HELD_OUT share is cut off into a file of its own that neither the plans nor the
   pilots ever see; plans and pilots get the rest (which they split again for their own
   validation).
2. For each budget (3, 20 and 60 minutes): the prior's plan (`budgetlm plan --time T --data
   TRAIN --tokenizer char -o`, trained unchanged) and the calibrated plan (`budgetlm calibrate
   --time T ...`: pilots, a fit, and the plan of the rest, trained unchanged).
3. Every final model (the best checkpoint when the run kept one: a repeating plan stops early
   and keeps its best) is evaluated on the whole held-out file, in non-overlapping windows.

Prints a table and appends it to benchmarks/RESULTS.md. The full run takes hours of CPU.
`--quick` is a smoke test of the same pipeline (a 120K-character corpus, budgets of 20 and 40
seconds, and one small FLOP-budget calibration whose fit plans both), minutes, not appended.

    python benchmarks/data_limited.py [--quick] [--workdir DIR] [--threads 1] [--no-append]
                                      [--arm prior|calibrated|both] [--resume]
                                      [--minutes 3 20 60]

`--arm` runs one of the two plans at every budget: the two arms side by side in two processes
(`--threads 1` each, on a 2-core machine) take half the wall time; each appends its own table.
`--resume` (with `--workdir`) keeps the rows a stopped run finished and runs the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, machine, make_corpus, run_cli  # noqa: E402

from budgetlm.units import atomic_write_text  # noqa: E402

HELD_OUT = 0.1  # of the corpus's characters, never seen by plans or pilots
FULL_MINUTES = (3.0, 20.0, 60.0)
QUICK_SECONDS = (20.0, 40.0)


def split_corpus(corpus: Path, work: Path) -> tuple[Path, Path]:
    """(the file plans and pilots get, the held-out file): the last HELD_OUT of the text."""
    text = corpus.read_text(encoding="utf-8")
    cut = int(len(text) * (1 - HELD_OUT))
    train, held = work / "train.txt", work / "heldout.txt"
    train.write_text(text[:cut], encoding="utf-8")
    held.write_text(text[cut:], encoding="utf-8")
    return train, held


def heldout_loss(run_dir: Path, held: Path) -> tuple[float, float, int]:
    """(loss nats/token, bits/byte, tokens) of the run's best checkpoint (else its last) on the
    whole held-out file, in non-overlapping windows of the model's seq_len."""
    import numpy as np
    import torch

    from budgetlm.config import load_config
    from budgetlm.data import load_corpus, val_batches
    from budgetlm.model import build_model
    from budgetlm.train.rundir import RunDir, load_checkpoint

    cfg = load_config(str(run_dir / "config.yaml"))
    tok = load_corpus(cfg.data, seq_len=cfg.model.seq_len).tokenizer  # the run's, from cache
    text = held.read_text(encoding="utf-8")
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    rd = RunDir(run_dir)
    ckpt = rd.best_checkpoint() or rd.latest_checkpoint()
    model = build_model(cfg.model)  # the run's config.yaml: its vocabulary resolved
    model.load_state_dict(load_checkpoint(ckpt, "benchmark")["model"])
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in val_batches(ids, 64, cfg.model.seq_len, len(ids)):
            _, loss = model(x, y)
            total += float(loss) * y.numel()
            count += y.numel()
    loss = total / count
    bytes_per_token = len(text.encode("utf-8")) / len(ids)
    return loss, loss / math.log(2) / bytes_per_token, count


def train_and_score(label: str, plan_yaml: Path, run_dir: Path, held: Path,
                    env: dict[str, str]) -> dict[str, Any]:
    """Train `plan_yaml` unchanged and score it on the held-out file."""
    res, _ = run_cli("train", str(plan_yaml), "--run-dir", str(run_dir), env=env)
    loss, bpb, n = heldout_loss(run_dir, held)
    pred = (res.get("predicted") or {}).get("plan") or {}
    unique = pred.get("unique_tokens")
    row = {"run": label, "params": res["params"], "tokens": res["tokens"],
           "epochs": res["tokens"] / unique if unique else None,  # as run, not as planned
           "planned_epochs": pred.get("epochs"), "stop": res["stop_reason"],
           "train_s": res["train_seconds"], "val_loss": res["val_loss"],
           "train_loss": res.get("train_loss"), "heldout_loss": loss, "heldout_bpb": bpb,
           "heldout_tokens": n}
    print(f"{label}: {res['params']:,} params, {res['tokens']:,} tokens, stop {res['stop_reason']}"
          f", held-out {loss:.4f} nats/token ({bpb:.4f} bpb)", flush=True)
    return row


def prior_row(seconds: float, train: Path, held: Path, work: Path,
              env: dict[str, str]) -> dict[str, Any]:
    out = work / f"prior-{seconds:g}s.yaml"
    run_cli("plan", "--time", f"{seconds:g}s", "--data", str(train), "--tokenizer", "char",
            "-o", str(out), env=env)
    return train_and_score(f"prior {_duration(seconds)}", out, work / out.stem, held, env)


def calibrated_row(seconds: float, train: Path, held: Path, work: Path, env: dict[str, str],
                   fit: Path | None) -> dict[str, Any]:
    """The calibrated plan: `calibrate --time` (its plan of the rest), or with `fit` given (the
    quick mode's one small calibration) `plan --fit` for the whole budget."""
    if fit is None:
        fit_json = work / f"fit-{seconds:g}s.json"
        run_cli("calibrate", "--time", f"{seconds:g}s", "--data", str(train), "--tokenizer",
                "char", "-o", str(fit_json), env=env)
        out = fit_json.with_name(fit_json.stem + ".plan.yaml")
    else:
        out = work / f"fit-{seconds:g}s.yaml"
        run_cli("plan", "--time", f"{seconds:g}s", "--data", str(train), "--tokenizer", "char",
                "--fit", str(fit), "-o", str(out), env=env)
    return train_and_score(f"calibrated {_duration(seconds)}", out, work / out.stem, held, env)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| run | params | tokens | epochs | stop | train s | train loss | own val loss | "
            "held-out loss | held-out bpb |\n|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        ep = f"{r['epochs']:.1f}" if r["epochs"] is not None else "-"
        tl = f"{r['train_loss']:.3f}" if r["train_loss"] is not None else "-"
        lines.append(f"| {r['run']} | {r['params']:,} | {r['tokens']:,} | {ep} | {r['stop']} | "
                     f"{r['train_s']:.0f} | {tl} | {r['val_loss']:.3f} | "
                     f"{r['heldout_loss']:.4f} | {r['heldout_bpb']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke test (minutes, not appended)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here")
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of every run")
    ap.add_argument("--arm", choices=("prior", "calibrated", "both"), default="both",
                    help="which plans to train at every budget")
    ap.add_argument("--minutes", type=float, nargs="+", default=list(FULL_MINUTES),
                    help="the budgets (minutes) of a full run")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows WORKDIR/data_limited.json holds; run the missing ones")
    args = ap.parse_args(argv)
    import tempfile

    work = args.workdir or Path(tempfile.mkdtemp(prefix="budgetlm-data-limited-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if args.threads:
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
    corpus = make_corpus(work / "stdlib_docstrings.txt",
                         n_chars=120_000 if args.quick else 1_000_000)
    train, held = split_corpus(corpus, work)
    print(f"corpus: {corpus} ({corpus.stat().st_size:,} bytes); held out: {held}", flush=True)
    budgets = QUICK_SECONDS if args.quick else tuple(60 * m for m in args.minutes)
    fit = None
    if args.quick:  # one small FLOP-budget calibration (seconds) plans every quick budget
        fit = work / "fit-quick.json"
        run_cli("calibrate", "--flops", "3e11", "--seq-len", "32", "--bootstrap", "20",
                "--data", str(train), "--tokenizer", "char", "-o", str(fit), env=env)
    kept = work / "data_limited.json"  # written as it goes; --resume starts from it
    rows = json.loads(kept.read_text()) if args.resume and kept.is_file() else []
    done = {r["run"] for r in rows}
    arms = {"prior": lambda s: prior_row(s, train, held, work, env),
            "calibrated": lambda s: calibrated_row(s, train, held, work, env, fit)}
    for s in budgets:
        for arm, make in arms.items():
            if args.arm in (arm, "both") and f"{arm} {_duration(s)}" not in done:
                rows.append(make(s))
                atomic_write_text(kept, json.dumps(rows, indent=1))
    text = table(rows)
    print(text)
    if not args.quick and not args.no_append:
        minutes = [f"{m:g}" for m in args.minutes]
        arm_flags = "".join(f" --{k} {v}" for k, v in (
            ("threads", args.threads), ("arm", args.arm),
            ("minutes", " ".join(minutes) if tuple(args.minutes) != FULL_MINUTES else None),
        ) if v and v != "both")
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        append_results(
            f"## Data-limited plans: {', '.join(minutes)} minutes on a ~1M-character "
            f"corpus ({when})\n\n"
            f"{machine()}. `python benchmarks/data_limited.py{arm_flags}`. Held-out: the last "
            f"{HELD_OUT:.0%} of the corpus, seen by no plan and no pilot; whole-file loss of "
            "each run's best checkpoint (else its last).\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
