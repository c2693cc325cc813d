"""Pretrain, then fine-tune on labeled data: GPT vs BERT vs T5 at equal total wall time.

The task (`--task`): `reviews` (the default, `budgetlm.data.reviews`): one- or two-clause
reviews whose sentiment negation and "but" decide, 2 balanced labels; unlabeled text: reviews
each followed by how the writer felt ("so i was happy."). Or `stories`
(`budgetlm.data.stories`): where is an object, given objects in boxes in rooms (`--hops 2`) or
in rooms (`--hops 1`), `--pairs` objects, 4 balanced labels; unlabeled text: stories each
followed by what its facts imply. Measured first with stories: every family and both
trainings stayed near the 1 / pairs accuracy of naming a room the story mentions (2-layer
models did not learn the lookup in minutes), so pretraining had nothing to show there.

T5 takes T5's relative position bias (`--t5-positions relative`, the default) or a learned
position table (`learned`). Measured on the reviews task at this size (2+2 layers, d_model 64,
one thread): after 120 s of span corruption (1,711 steps) a T5 fine-tune stayed at one class;
after 600 s (12,674 steps) it reached 0.993 test accuracy. The decoder takes thousands of steps
to learn to read the encoder: the first byte of a corrupted span stayed at the unigram level
(2.77 nats) for 1,500 steps of a plain training loop, and Hugging Face's T5ForConditionalGeneration
of the same shape did the same (2.74); with learned positions it fell to 2.21 in those steps.

For each family (same width, depth, context and byte tokenizer):
1. pretrain P seconds on the unlabeled text with its own objective (gpt next token, bert masked
   tokens, t5 corrupted spans; `task: lm`);
2. fine-tune F seconds on the labeled training rows (`task: classification`,
   `train.init_from` the pretraining run, early stopping on validation accuracy, the best
   checkpoint restored);
3. from scratch: the same classifier trained P + F seconds from random weights (the same total
   time, the same early stopping), and for exactly as many steps as the fine-tune took (equal
   steps, no early stopping).
Both are scored on test rows drawn from another seed (never seen in training or validation):
accuracy and macro-F1 (`budgetlm.train.classify`), whole test set.

Prints a table and appends it to benchmarks/RESULTS.md. Takes about 3 x (2P + 3F) + ~1 min.

    python benchmarks/pretrain_finetune.py [--pretrain 60] [--finetune 60] [--families gpt bert t5]
                                           [--task reviews|stories] [--seq-len N] [--rows 6000]
                                           [--hops 2] [--pairs 2] [--workdir DIR] [--threads N]
                                           [--t5-positions relative|learned]
                                           [--no-append] [--quick]

--quick (a smoke check, not a result): 8 s + 8 s per family, small data, nothing appended.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, machine  # noqa: E402

SHAPE = {"n_layer": 2, "n_head": 4, "d_model": 64, "seq_len": 64}  # seq_len: --seq-len
PRESET = {"gpt": "tiny", "bert": "bert-tiny", "t5": "t5-tiny"}
LR = 3e-3  # every family's peak lr in pretraining and from scratch (tiny's)
T5_MODEL = {"positions": "relative"}  # --t5-positions (module docstring)


def _config(family: str, task: str, source: str, seconds: float | None, threads: int | None,
            init_from: str | None = None, lr: float = LR, steps: int | None = None) -> Any:
    from budgetlm.config import preset, with_values

    model = {**SHAPE}
    if family == "t5":
        model.update({"n_decoder_layer": SHAPE["n_layer"], **T5_MODEL})
    values: dict[str, Any] = {f"model.{k}": v for k, v in model.items()}
    values.update({
        "task": task, "data.source": source,
        "data.tokenizer": "byte", "optim.lr": lr, "schedule.name": "wsd",
        "schedule.warmup_steps": 0, "schedule.warmup_fraction": 0.05,
        "train.max_steps": steps, "train.max_time": seconds, "train.micro_batch": 16,
        "train.eval_interval": max(1, steps // 12) if steps else 10**6,
        "train.eval_time_interval": max(2.0, seconds / 12) if seconds else None,
        "train.checkpoint_seconds": None, "train.threads": threads, "train.init_from": init_from,
    })
    if task == "classification":
        values.update({"train.monitor": "val_accuracy", "train.patience": None if steps else 6})
    else:
        values.update({"train.eval_tokens": 16384})
    return with_values(preset(PRESET[family]), values)


def _train(cfg: Any, run_dir: Path) -> Any:
    from budgetlm.train import train

    t0 = time.perf_counter()
    res = train(cfg, run_dir=run_dir, progress=False)
    print(f"  {run_dir.name}: {res.status} ({res.stop_reason}), {res.steps} steps, "
          f"{time.perf_counter() - t0:.0f} s wall", flush=True)
    return res


def score(run_dir: Path, test_source: str) -> tuple[float, float, int]:
    """(accuracy, macro-F1, rows) of the model a classification run kept, on `test_source`:
    the trainer's own evaluation (`train.classify.evaluate_classifier`) with the test rows as
    its validation split."""
    from budgetlm.config import load_config
    from budgetlm.data import load_tokenizer
    from budgetlm.model import build_model
    from budgetlm.train.classify import evaluate_classifier, load_task
    from budgetlm.train.finetune import plain_state_dict
    from budgetlm.train.rundir import RunDir, load_checkpoint

    cfg = load_config(str(run_dir / "config.yaml"))
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"val_source": test_source})})
    data = load_task(cfg, tokenizer=load_tokenizer(run_dir / "tokenizer"))
    model = build_model(cfg.model)
    ckpt = RunDir(run_dir).latest_checkpoint()  # the final weights (best, when restored)
    model.load_state_dict(plain_state_dict(load_checkpoint(ckpt, "benchmark")))
    metrics = evaluate_classifier(SimpleNamespace(cfg=cfg, corpus=data, device="cpu"), model, 64)
    return float(metrics["val_accuracy"] or 0.0), float(metrics["val_f1"] or 0.0), len(data.val)


def _family(family: str, work: Path, files: Any, test: str, p: float, f: float,
            threads: int | None) -> list[dict[str, Any]]:
    d = work / family
    print(f"{family}: pretrain {p:g} s, fine-tune {f:g} s; scratch {p + f:g} s", flush=True)
    pre = _train(_config(family, "lm", str(files.txt), p, threads), d / "pretrain")
    from budgetlm.plan.finetune_classify import classify_lr_fraction

    ft_cfg = _config(family, "classification", str(files.jsonl), f, threads,
                     init_from=str(d / "pretrain"), lr=classify_lr_fraction(family) * LR)
    ft = _train(ft_cfg, d / "finetune")
    sc = _train(_config(family, "classification", str(files.jsonl), p + f, threads),
                d / "scratch")
    eq = _train(_config(family, "classification", str(files.jsonl), None, threads,
                        steps=ft.steps), d / "scratch_steps")
    rows = []
    for how, res, run in (("pretrain + fine-tune", ft, d / "finetune"),
                          ("from scratch, equal time", sc, d / "scratch"),
                          ("from scratch, equal steps", eq, d / "scratch_steps")):
        acc, f1, n = score(run, test)
        rows.append({"family": family, "how": how, "acc": acc, "f1": f1, "n": n,
                     "val_acc": (res.best_eval or {}).get("val_accuracy"),
                     "steps": res.steps, "pre_steps": pre.steps if ft is res else 0,
                     "params": res.params})
        print(f"  {how}: test accuracy {acc:.3f}, macro-F1 {f1:.3f} ({n} rows)", flush=True)
    return rows


TASKS = {
    "reviews": "Reviews task (`budgetlm.data.reviews`: one or two clauses, negation and 'but' "
               "decide; 2 labels)",
    "stories": "Stories task (`budgetlm.data.stories`: where is an object, 4 labels)",
}


def task_flags(args: argparse.Namespace) -> str:
    """The task's flags as given on the command line (for the table's command)."""
    flags = f" --task {args.task} --seq-len {args.seq_len} --rows {args.rows}"
    if args.families != ["gpt", "bert", "t5"]:
        flags += " --families " + " ".join(args.families)
    if "t5" in args.families:
        flags += f" --t5-positions {args.t5_positions}"
    if args.task == "stories":
        flags += f" --hops {args.hops} --pairs {args.pairs}"
    return flags


def _table(rows: list[dict[str, Any]], p: float, f: float, n_test: int, majority: float,
           args: argparse.Namespace) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    t5_shape = (f" (t5: {SHAPE['n_layer']}+{SHAPE['n_layer']}, {T5_MODEL['positions']} positions)"
                if "t5" in args.families else "")
    lines = [
        f"## Pretrain then fine-tune on labeled data: GPT vs BERT vs T5 ({when})",
        "",
        f"`python benchmarks/pretrain_finetune.py --pretrain {p:g} --finetune {f:g}"
        f"{' --threads ' + str(args.threads) if args.threads else ''}{task_flags(args)}` on "
        f"{machine()}. {TASKS[args.task]}; {n_test} test rows "
        f"from another seed, majority baseline {majority:.3f}. Every model: "
        f"{SHAPE['n_layer']} layers{t5_shape}, d_model "
        f"{SHAPE['d_model']}, context {SHAPE['seq_len']} bytes. Pretrain {p:g} s + fine-tune "
        f"{f:g} s (lr: the planner's fraction of {LR:g}, 0.3 for gpt and bert, 1 for t5: "
        "`plan.finetune_classify`) vs the same classifier from scratch "
        f"for {p + f:g} s (lr {LR:g}), and for the fine-tune's number of steps; early stopping "
        "on validation accuracy with the best checkpoint restored (not in the equal-steps "
        "runs), scored on the test rows.",
        "",
        "| family | training | params | steps (pretrain + fine-tune) | val acc (best) | "
        "test accuracy | test macro-F1 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        steps = f"{r['pre_steps']} + {r['steps']}" if r["pre_steps"] else f"{r['steps']}"
        val = f"{r['val_acc']:.3f}" if r["val_acc"] is not None else "-"
        lines.append(f"| {r['family']} | {r['how']} | {r['params']:,} | {steps} | {val} | "
                     f"{r['acc']:.3f} | {r['f1']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrain", type=float, default=60.0, help="pretraining seconds")
    ap.add_argument("--finetune", type=float, default=60.0, help="fine-tuning seconds")
    ap.add_argument("--families", nargs="+", default=["gpt", "bert", "t5"],
                    choices=["gpt", "bert", "t5"])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--task", choices=["reviews", "stories"], default="reviews",
                    help="the generated labeled task (budgetlm.data.stories or .reviews)")
    ap.add_argument("--hops", type=int, default=2, choices=[1, 2],
                    help="facts a question takes: 2 (object -> box -> room) or 1 (object -> room)")
    ap.add_argument("--pairs", type=int, default=2, help="objects per story")
    ap.add_argument("--seq-len", type=int, default=None,
                    help="context in bytes (default: 64 for reviews, 256 for stories)")
    ap.add_argument("--rows", type=int, default=6000, help="labeled training rows")
    ap.add_argument("--t5-positions", choices=["relative", "learned"], default="relative",
                    help="t5's positions (module docstring): T5's relative bias, or learned")
    args = ap.parse_args()
    T5_MODEL["positions"] = args.t5_positions
    args.seq_len = args.seq_len or (64 if args.task == "reviews" else 256)
    SHAPE["seq_len"] = args.seq_len
    import tempfile

    from budgetlm.data.labeled import majority_accuracy, read_labeled
    from budgetlm.data.stories import write_stories

    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    p, f = (8.0, 8.0) if args.quick else (args.pretrain, args.finetune)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="budgetlm-ptft-"))
    n_rows, n_bytes = (600, 100_000) if args.quick else (args.rows, 2_000_000)
    if args.task == "reviews":
        from budgetlm.data.reviews import write_reviews as write
    else:
        write = functools.partial(write_stories, pairs=args.pairs, hops=args.hops)
    files = write(work / "data", n_labeled=n_rows, n_unlabeled_bytes=n_bytes, seed=0)
    test = write(work / "test", n_labeled=2000, n_unlabeled_bytes=1, seed=1)
    test_rows = read_labeled(str(test.jsonl), "test", "text", "label")
    import numpy as np

    labels = sorted({r.label for r in test_rows})
    majority = majority_accuracy(np.asarray([labels.index(r.label) for r in test_rows]))
    print(f"work: {work}; {n_rows} labeled rows, {n_bytes:,} bytes unlabeled", flush=True)
    rows: list[dict[str, Any]] = []
    for family in args.families:
        rows += _family(family, work, files, str(test.jsonl), p, f, args.threads)
    table = _table(rows, p, f, len(test_rows), majority, args)
    print(table)
    if not (args.no_append or args.quick):
        append_results(table)


if __name__ == "__main__":
    main()
