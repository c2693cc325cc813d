"""Full fine-tuning vs LoRA at equal wall time, on a model budgetlm pretrained itself.

1. Pretrain: `budgetlm plan --time P --arch llama --data builtin:pystdlib --tokenizer byte`
   and `budgetlm train` of its top candidate: a small Llama on this interpreter's standard
   library source code, read as bytes.
2. Export: `budgetlm export RUN --hf DIR` (config.json + model.safetensors; bytes need no
   tokenizer.json).
3. Fine-tuning corpus: ~1 MB of English prose, the standard library's docstrings
   (`common.make_corpus`), the last 5% held out. The pretraining corpus holds these docstrings
   too, inside the code; both methods start from the same model, so the overlap favours neither.
4. Plan: `budgetlm plan --finetune DIR --data FILE --time F` (the same budget for both): the
   plan's best full fine-tune and its best LoRA fine-tune, each as its runnable config.
5. Train both with `budgetlm train`, each capped at F seconds of training; re-evaluate the
   checkpoint each run keeps (its best) and the exported model before any fine-tuning on the
   whole validation split.

Prints a table and appends it to benchmarks/RESULTS.md. Takes about P + 2 x F + ~2 min.

    python benchmarks/finetune.py [--pretrain-time 120] [--time 180] [--workdir DIR]
                                  [--threads N] [--no-append] [--quick]

--quick (a smoke check, not a result): 10 s of pretraining, 10 s per fine-tune, 200 KB of
prose, nothing appended.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, machine, make_corpus, prepare_workdir, run_cli  # noqa: E402

PRETRAIN_DATA = "builtin:pystdlib"


def _pretrain(work: Path, seconds: float, env: dict[str, str], quick: bool) -> Path:
    """Plan and train the base model; its run directory."""
    d = work / "pretrain"
    d.mkdir(parents=True, exist_ok=True)
    flags = ["--no-timing"] if quick else []
    plan, _ = run_cli("plan", "--time", f"{seconds:g}s", "--arch", "llama", "--data",
                      PRETRAIN_DATA, "--tokenizer", "byte", "-o", str(d / "plan.yaml"), *flags,
                      env=env)
    top = plan["top"]
    print(f"pretrain: {top['name']}, {top['params']:,} params, lr {top['lr']:.3g}", flush=True)
    res, _ = run_cli("train", str(d / "plan.yaml"), "--run-dir", str(d / "run"), env=env)
    print(f"pretrain: {res['steps']} steps, {res['tokens']:,} tokens, val bpb "
          f"{res['val_bpb']:.4f} (on {PRETRAIN_DATA})", flush=True)
    return Path(res["run_dir"])


def _export(run: Path, out: Path, env: dict[str, str]) -> Path:
    cmd = [sys.executable, "-m", "budgetlm", "export", str(run), "--hf", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{' '.join(cmd[2:])} failed (exit {done.returncode})")
    print(done.stdout.strip(), flush=True)
    return out


def _plan(hf: Path, corpus: Path, seconds: float, work: Path) -> tuple[object, dict[str, Path]]:
    """The fine-tune plan (this process: it needs both methods' configs) and the YAML of its
    best full and best LoRA candidate."""
    from budgetlm.config import dump_config
    from budgetlm.plan import Budget
    from budgetlm.plan.finetune_plan import plan_finetune

    p = plan_finetune(Budget(seconds=seconds), hf, str(corpus))
    out: dict[str, Path] = {}
    for method in ("full", "lora"):
        i = next((i for i, c in enumerate(p.candidates)
                  if c.method.name == method and not c.estimate_only), None)
        if i is None:
            raise SystemExit(f"the plan has no runnable {method} fine-tune")
        c = p.candidates[i]
        path = work / method / "plan.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        dump_config(p.config(i), path)
        out[method] = path
        print(f"plan: {method}: #{i + 1} {c.name}, trains {c.trainable_params:,}, lr "
              f"{c.lr:.3g}, batch {c.micro_batch}x{c.grad_accum}, {c.epochs:.3g} epochs planned "
              f"(est. {c.seconds or 0:.0f} s)", flush=True)
    return p, out


def _evaluate(cfg: object, model: object) -> tuple[float, float, int]:
    """(val loss nats/token, val bits/byte, tokens) of `model` on the whole validation split of
    `cfg`'s data, in non-overlapping windows of its seq_len."""
    import torch

    from budgetlm.data import bits_per_byte, load_corpus, val_batches

    T = cfg.model.seq_len  # type: ignore[attr-defined]
    corpus = load_corpus(cfg.data, seq_len=T,  # type: ignore[attr-defined]
                         pretrained=cfg.model.from_pretrained)  # type: ignore[attr-defined]
    model.eval()  # type: ignore[attr-defined]
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in val_batches(corpus.val, 32, T, len(corpus.val)):
            _, loss = model(x, y)  # type: ignore[operator]
            total += float(loss) * y.numel()
            count += y.numel()
    loss = total / count
    return loss, bits_per_byte(loss, corpus.val_bytes_per_token), count


def _evaluate_run(run: Path) -> tuple[float, float, int]:
    """The checkpoint the run keeps (best.pt), adapters merged, on the whole validation split."""
    from budgetlm.config import load_config
    from budgetlm.train.finetune import model_from_checkpoint
    from budgetlm.train.rundir import load_checkpoint

    cfg = load_config(str(run / "config.yaml"))
    return _evaluate(cfg, model_from_checkpoint(cfg, load_checkpoint(run, "benchmark")))


def _evaluate_base(plan_yaml: Path) -> tuple[float, float, int]:
    """The exported model before any fine-tuning, on the same validation split."""
    from budgetlm.config import load_config
    from budgetlm.model import build_model, load_pretrained

    cfg = load_config(str(plan_yaml))
    model = build_model(cfg.model)
    load_pretrained(model, cfg.model, cfg.model.from_pretrained)
    return _evaluate(cfg, model)


def _finetune(method: str, plan_yaml: Path, env: dict[str, str]) -> dict:
    d = plan_yaml.parent
    res, _ = run_cli("train", str(plan_yaml), "--run-dir", str(d / "run"), env=env)
    loss, bpb, n = _evaluate_run(Path(res["run_dir"]))
    print(f"{method}: {res['steps']} steps, {res['tokens']:,} tokens, {res['stop_reason']}, "
          f"val bpb {bpb:.4f} (whole val)", flush=True)
    return {"method": method, "steps": res["steps"], "tokens": res["tokens"],
            "train_s": res["train_seconds"], "stop": res["stop_reason"],
            "val_loss": loss, "val_bpb": bpb, "val_tokens": n}


def _report(p: object, rows: list[dict], base: tuple[float, float, int], args: argparse.Namespace,
            corpus: Path, pre: Path, load0: float) -> str:
    cands = {c.method.name: c for c in reversed(p.candidates)  # type: ignore[attr-defined]
             if not c.estimate_only}
    lines = [
        f"## finetune — {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"Machine: {machine()}. Base: a Llama planned and pretrained by budgetlm for "
        f"{args.pretrain_time:g} s on {PRETRAIN_DATA} (bytes; {pre}), exported with `budgetlm "
        f"export --hf`. Fine-tuning corpus: stdlib docstrings ({corpus.stat().st_size:,} bytes; "
        f"the last 5% held out). Budget: `budgetlm plan --finetune DIR --data FILE --time "
        f"{args.time:g}s`; each method trains its best planned row for at most {args.time:g} s"
        + (f"; OMP_NUM_THREADS={args.threads}." if args.threads else ".")
        + f" Load average at the start: {load0:.1f}.",
        "",
        "| method | trains | lr | batch | planned epochs | steps | tokens | train s | stopped by "
        "| val loss (whole val) | val bpb (whole val) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
        f"| (base, no fine-tune) | 0 | - | - | - | 0 | 0 | 0 | - | {base[0]:.4f} | "
        f"{base[1]:.4f} |",
    ]
    for r in rows:
        c = cands[r["method"]]
        lines.append(
            f"| {c.method.label} | {c.trainable_params:,} | {c.lr:.3g} | "
            f"{c.micro_batch}x{c.grad_accum} | {c.epochs:.3g} | {r['steps']:,} | "
            f"{r['tokens']:,} | {r['train_s']:.0f} | {r['stop']} | {r['val_loss']:.4f} | "
            f"{r['val_bpb']:.4f} |"
        )
    best = min(rows, key=lambda r: r["val_bpb"])
    by = {r["method"]: r for r in rows}
    lines += ["", f"Lower held-out bpb: **{best['method']}** (lora − full = "
              f"{by['lora']['val_bpb'] - by['full']['val_bpb']:+.4f} bpb; the plan ranked "
              f"{p.top.method.label} first).", ""]  # type: ignore[attr-defined]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrain-time", type=float, default=120.0, help="pretraining seconds")
    ap.add_argument("--time", type=float, default=180.0, help="fine-tuning seconds per method")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here")
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (OMP_NUM_THREADS) for every step")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke check: 10 s budgets, 200 KB of prose, nothing appended")
    args = ap.parse_args(argv)
    if args.quick:
        args.pretrain_time, args.time, args.no_append = 10.0, 10.0, True
    load0 = os.getloadavg()[0]
    work, env, corpus = prepare_workdir(args.workdir, "budgetlm-finetune-", args.threads)
    if args.quick:
        corpus = make_corpus(work / "stdlib_docstrings_200k.txt", 200_000)
    pre = _pretrain(work, args.pretrain_time, env, args.quick)
    hf = _export(pre, work / "hf", env)
    p, configs = _plan(hf, corpus, args.time, work)
    base = _evaluate_base(configs["full"])
    print(f"base (no fine-tune): val bpb {base[1]:.4f} (whole val)", flush=True)
    rows = [_finetune(m, configs[m], env) for m in ("full", "lora")]
    text = _report(p, rows, base, args, corpus, pre, load0)
    print()
    print(text)
    if not args.no_append:
        append_results(text)
    return 0 if all(math.isfinite(r["val_bpb"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
