"""Learning-rate transfer across width: µP vs standard parametrization on this CPU.

The question µP answers (Yang et al. 2022, "Tensor Programs V"): does the best learning rate found
on a narrow model still hold on a wide one? For each parametrization, AdamW learning-rate sweeps
train the same GPT at width 64 and at width 256 (same depth, heads, context, batch, schedule,
seed and training tokens, as Yang et al.'s transfer sweeps keep steps and batch fixed across
widths; `--tokens-per-param R` gives each width R tokens per parameter instead), then score each
model on the whole validation split.

Why not equal tokens per parameter by default: the width-256 model has ~14x the parameters, so on
this CPU (~9K tokens/s at width 256) equal tokens per parameter leaves the width-64 runs a few
hundred steps, still on the unigram plateau, where the lr sweep has no optimum to find (measured:
1 token per parameter gave width-64 losses of 2.84-3.19 nats in no order across lrs 1e-3..3.2e-2).

- standard: `model.parametrization: standard` at both widths.
- µP: `model.parametrization: mup` with `model.mup_base_width: 64`; at width 64 the multiplier is
  1, where µP is standard parametrization (so the width-64 sweep is shared by both).

The best lr of a sweep is the minimum of a parabola through the three lowest grid points around
the grid's best in log2(lr) (the grid's best itself when it sits at an end of the grid). Transfer
holds when the width-256 optimum lies within a factor √2 of the width-64 one.

Corpus: ~1 MB of stdlib docstrings (benchmarks/common.py), byte tokenizer, validation split 5%.

    python benchmarks/mup_transfer.py [--lrs 1e-3 2e-3 ...] [--depth 2] [--tokens 800000]
                                      [--tokens-per-param R]
                                      [--threads 2] [--workdir DIR] [--no-append] [--quick]

--quick (a smoke check, not a result): widths 32/64, three learning rates, nothing appended.
Takes about 25 minutes on a 2-core CPU with the defaults; run it alone.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, machine, prepare_workdir, reevaluate  # noqa: E402

LRS = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2)
SHAPE = {"n_head": 4, "seq_len": 64, "positions": "learned"}
BATCH = 8  # sequences per step: 512 tokens


def run_config(corpus: Path, width: int, depth: int, lr: float, mup: bool, tokens: int | None,
               threads: int | None, base_width: int) -> Any:
    """The swept config: a tiny-preset GPT at `width`, AdamW at `lr`, cosine with 5% warmup,
    capped at `tokens` training tokens; evaluated once at the end."""
    from budgetlm.config import preset, with_values

    values: dict[str, Any] = {f"model.{k}": v for k, v in SHAPE.items()}
    values.update({
        "model.d_model": width, "model.n_layer": depth, "model.dropout": 0.0,
        "model.parametrization": "mup" if mup else "standard",
        "model.mup_base_width": base_width if mup else None,
        "data.source": str(corpus), "data.tokenizer": "byte",
        "optim.name": "adamw", "optim.lr": lr, "optim.weight_decay": 0.1,
        "schedule.name": "cosine", "schedule.warmup_steps": 0, "schedule.warmup_fraction": 0.05,
        "schedule.driver": "tokens", "train.micro_batch": BATCH, "train.grad_accum": 1,
        "train.max_tokens": tokens, "train.max_steps": None, "train.max_time": None,
        "train.eval_interval": 10**9, "train.eval_tokens": 8192, "train.checkpoint_seconds": None,
        "train.threads": threads, "seed": 0,
    })
    return with_values(preset("tiny"), values)


def n_params(cfg: Any) -> int:
    from budgetlm.estimate import count_params

    return int(count_params(cfg.model).total)


def train_and_score(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Train `cfg` into `run_dir`; its whole-validation loss (nan if it diverged)."""
    from budgetlm.train import train

    t0 = time.perf_counter()
    res = train(cfg, run_dir=run_dir, progress=False)
    wall = time.perf_counter() - t0
    loss = math.nan
    if res.status == "completed" and math.isfinite(res.val_loss or math.nan):
        loss, _, _ = reevaluate(run_dir)
    print(f"  {run_dir.name}: {res.status}, {res.steps} steps, {res.tokens:,} tokens, "
          f"whole-val loss {loss:.4f}, {wall:.0f} s", flush=True)
    return {"loss": loss, "steps": res.steps, "tokens": res.tokens, "seconds": wall}


def best_lr(lrs: list[float], losses: list[float]) -> float:
    """The sweep's optimum: the vertex of a parabola through the grid's best and its two
    neighbours in log2(lr); the grid's best itself at an end of the grid or when the three
    points do not curve upward."""
    finite = [(lr, loss) for lr, loss in zip(lrs, losses, strict=True) if math.isfinite(loss)]
    if not finite:
        return math.nan
    i = min(range(len(lrs)), key=lambda j: losses[j] if math.isfinite(losses[j]) else math.inf)
    if i == 0 or i == len(lrs) - 1 or not all(math.isfinite(losses[j]) for j in (i - 1, i + 1)):
        return lrs[i]
    x = [math.log2(lrs[j]) for j in (i - 1, i, i + 1)]
    y = [losses[j] for j in (i - 1, i, i + 1)]
    denom = (x[0] - x[1]) * (x[0] - x[2]) * (x[1] - x[2])
    a = (x[2] * (y[1] - y[0]) + x[1] * (y[0] - y[2]) + x[0] * (y[2] - y[1])) / denom
    b = (x[2] ** 2 * (y[0] - y[1]) + x[1] ** 2 * (y[2] - y[0]) + x[0] ** 2 * (y[1] - y[2])) / denom
    if a <= 0:
        return lrs[i]
    vertex = -b / (2 * a)
    return 2 ** min(max(vertex, x[0]), x[2])


def sweep(corpus: Path, work: Path, width: int, mup: bool, args: argparse.Namespace,
          base_width: int) -> dict[str, Any]:
    label = f"{'mup' if mup else 'sp'}-w{width}"
    print(f"{label}:", flush=True)
    probe = run_config(corpus, width, args.depth, 1e-3, mup, None, args.threads, base_width)
    params = n_params(probe)
    tokens = int(args.tokens_per_param * params) if args.tokens_per_param else args.tokens
    runs = [train_and_score(run_config(corpus, width, args.depth, lr, mup, tokens, args.threads,
                                       base_width), work / f"{label}-lr{lr:g}")
            for lr in args.lrs]
    losses = [r["loss"] for r in runs]
    return {"label": label, "width": width, "params": params, "tokens": tokens,
            "losses": losses, "best": best_lr(list(args.lrs), losses),
            "seconds": sum(r["seconds"] for r in runs), "steps": runs[0]["steps"]}


def table(rows: list[dict[str, Any]], lrs: list[float], args: argparse.Namespace,
          wall: float, base_width: int) -> str:
    head = " | ".join(f"lr {lr:g}" for lr in lrs)
    lines = [
        f"## mup_transfer — {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/mup_transfer.py` "
        f"(depth {args.depth}, {SHAPE['n_head']} heads, context {SHAPE['seq_len']}, batch "
        f"{BATCH} sequences, {_tokens(args)}, AdamW "
        f"wd 0.1, cosine with 5% warmup, seed 0, byte tokenizer on ~1 MB of stdlib docstrings; "
        f"µP base width {base_width}). Whole-validation loss (nats/token); {wall / 60:.1f} min.",
        "",
        f"| sweep | params | tokens | steps | {head} | best lr |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in lrs) + " | ---: |",
    ]
    for r in rows:
        cells = " | ".join("diverged" if not math.isfinite(v) else f"{v:.4f}"
                           for v in r["losses"])
        lines.append(f"| {r['label']} | {r['params']:,} | {r['tokens']:,} | {r['steps']:,} | "
                     f"{cells} | {r['best']:.3g} |")
    return "\n".join(lines)


def _tokens(args: argparse.Namespace) -> str:
    if args.tokens_per_param:
        return f"{args.tokens_per_param:g} training tokens per parameter"
    return f"{args.tokens:,} training tokens at every width"


def verdicts(rows: dict[str, dict[str, Any]], narrow: int, wide: int) -> list[str]:
    out = []
    for p, name in (("sp", "standard"), ("mup", "µP")):
        a, b = rows[f"sp-w{narrow}"]["best"], rows[f"{p}-w{wide}"]["best"]
        ratio = max(a, b) / min(a, b)
        held = "holds" if ratio <= math.sqrt(2) else "does not hold"
        out.append(f"- {name}: best lr {a:.3g} at width {narrow}, {b:.3g} at width {wide}: "
                   f"ratio {ratio:.2f} (transfer within √2 {held}).")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=800_000, help="training tokens at every width")
    ap.add_argument("--tokens-per-param", type=float, default=None,
                    help="instead of --tokens: this many tokens per parameter at each width")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke check: widths 32/64, 3 lrs")
    args = ap.parse_args(argv)
    narrow, wide = (32, 64) if args.quick else (64, 256)
    if args.quick:
        args.lrs, args.tokens = [2e-3, 8e-3, 3.2e-2], 20_000
    import torch

    torch.set_num_threads(args.threads)
    work, _, corpus = prepare_workdir(args.workdir, "budgetlm-mup-transfer-", args.threads)
    t0 = time.perf_counter()
    rows = [sweep(corpus, work, narrow, False, args, narrow),
            sweep(corpus, work, wide, False, args, narrow),
            sweep(corpus, work, wide, True, args, narrow)]
    rows[0]["label"] = f"sp-w{narrow} (= mup at m=1)"
    by = {"sp-w" + str(narrow): rows[0], f"sp-w{wide}": rows[1], f"mup-w{wide}": rows[2]}
    text = table(rows, list(args.lrs), args, time.perf_counter() - t0, narrow)
    text += "\n\n" + "\n".join(verdicts(by, narrow, wide)) + "\n"
    print()
    print(text)
    if not (args.no_append or args.quick):
        append_results(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
