"""How close is `budgetlm.estimate.memory_breakdown` to what a CUDA GPU really allocates?

For a grid of shapes x micro-batch x precision x checkpointing x optimizer, build the model with
`budgetlm.model.build_model` and the optimizer with `budgetlm.optim.build_optimizer`, run 3
training steps (forward under autocast for bf16, backward, grad-norm clip, optimizer step,
zero_grad(set_to_none=True)) and compare
`torch.cuda.max_memory_allocated()` with the estimate.

What is compared: max_memory_allocated counts tensors from PyTorch's caching allocator only, so
it cannot see the CUDA context nor the allocator's reserved-but-free slack. The comparison is
therefore against `Memory.tensor_peak + workspace` (see
`budgetlm.estimate.overhead_parts`; benchmarks/memory_truth.py checks the tensor peak itself
against torch's MemTracker without a GPU); max_memory_reserved is recorded beside it, and the CUDA
context is measured once (device memory in use minus memory reserved by PyTorch).

Usage:
    python benchmarks/memory_accuracy.py            # full grid (about a minute on an H100)
    python benchmarks/memory_accuracy.py --quick    # the first 4 rows
    python benchmarks/memory_accuracy.py --dry-run  # estimates only (no GPU needed)

Writes benchmarks/results/memory_accuracy.json and appends a table to benchmarks/RESULTS.md.
Exits 0 with a message when there is no CUDA device.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budgetlm.config import ModelConfig, RunConfig
from budgetlm.estimate import memory_breakdown, overhead_parts

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results" / "memory_accuracy.json"
RESULTS_MD = HERE / "RESULTS.md"
STEPS = 3

SHAPES: dict[str, dict[str, Any]] = {
    "gpt-small": dict(n_layer=6, n_head=8, d_model=512, vocab_size=32768, seq_len=512),
    "gpt2-124m": dict(n_layer=12, n_head=12, d_model=768, vocab_size=50257, seq_len=1024),
    "bert-base": dict(
        family="bert",
        n_layer=12,
        n_head=12,
        d_model=768,
        vocab_size=30522,
        seq_len=512,
        norm_eps=1e-12,
    ),
    "llama-ish": dict(
        n_layer=8,
        n_head=8,
        d_model=512,
        d_ff=1408,
        vocab_size=32000,
        seq_len=1024,
        positions="rope",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        tie_embeddings=False,
    ),
    "gpt-eager": dict(
        n_layer=6,
        n_head=8,
        d_model=512,
        vocab_size=32768,
        seq_len=1024,
        attention="eager",
    ),
    "gpt-dropout": dict(
        n_layer=6,
        n_head=8,
        d_model=512,
        vocab_size=32768,
        seq_len=512,
        dropout=0.1,
    ),
}


@dataclass(frozen=True)
class Row:
    shape: str
    micro_batch: int
    precision: str
    checkpointing: bool
    optimizer: str

    @property
    def label(self) -> str:
        ck = "ckpt" if self.checkpointing else "-"
        return f"{self.shape} b={self.micro_batch} {self.precision} {ck} {self.optimizer}"


GRID = [
    Row("gpt-small", 8, "fp32", False, "adamw"),
    Row("gpt-small", 8, "bf16", False, "adamw"),
    Row("gpt-small", 8, "bf16", True, "adamw"),
    Row("gpt-small", 32, "bf16", False, "sgd"),
    Row("gpt2-124m", 1, "bf16", False, "adamw"),
    Row("gpt2-124m", 4, "fp32", False, "adamw"),
    Row("gpt2-124m", 8, "bf16", False, "adamw"),
    Row("gpt2-124m", 8, "bf16", True, "adamw"),
    Row("gpt2-124m", 16, "bf16", True, "sgd"),
    Row("bert-base", 8, "fp32", False, "adamw"),
    Row("bert-base", 16, "bf16", False, "adamw"),
    Row("bert-base", 16, "bf16", True, "sgd"),
    Row("llama-ish", 8, "bf16", False, "adamw"),
    Row("llama-ish", 8, "bf16", True, "adamw"),
    Row("llama-ish", 4, "fp32", False, "sgd"),
    Row("gpt-eager", 4, "bf16", False, "adamw"),
    Row("gpt-eager", 4, "fp32", False, "adamw"),
    Row("gpt-dropout", 8, "bf16", False, "adamw"),
]


def run_config(row: Row) -> RunConfig:
    return RunConfig(
        model=ModelConfig(**SHAPES[row.shape]),
        optim={"name": row.optimizer, "momentum": 0.9, "weight_decay": 0.1},
        train={
            "precision": row.precision,
            "micro_batch": row.micro_batch,
            "activation_checkpointing": row.checkpointing,
            "device": "cuda",
        },
    )


def estimate_row(row: Row) -> dict[str, Any]:
    cfg = run_config(row)
    mem = memory_breakdown(cfg, device="cuda")
    parts = overhead_parts("cuda", mem.tensor_peak)
    return {
        "memory": mem.to_dict(),
        "overhead_parts": parts,
        "allocated": mem.tensor_peak + parts["workspace"],
        "reserved": mem.tensor_peak + parts["workspace"] + parts["allocator_slack"],
    }


def measure_row(row: Row, torch: Any) -> dict[str, Any]:
    """Peak allocated/reserved bytes over STEPS training steps of `row`."""
    from budgetlm.model import build_model, mlm_mask
    from budgetlm.optim import build_optimizer

    cfg = run_config(row)
    m = cfg.model
    dev = torch.device("cuda")
    gc.collect()
    torch.cuda.empty_cache()
    torch.manual_seed(0)
    model = build_model(m).to(dev).train()
    model.activation_checkpointing = row.checkpointing
    opt = build_optimizer(model, cfg.optim)  # what `budgetlm train` uses (fused AdamW on CUDA)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start_allocated = torch.cuda.memory_allocated()
    try:
        for _ in range(STEPS):
            x = torch.randint(m.vocab_size, (row.micro_batch, m.seq_len), device=dev)
            y = x
            if m.family == "bert":
                x, y = mlm_mask(x, m.mask_rate, m.vocab_size - 1, m.vocab_size - 1, None)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=row.precision == "bf16"):
                logits, loss = model(x, y)  # logits kept alive, as a training loop does
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            del logits, loss
        torch.cuda.synchronize()
        out = {
            "allocated": int(torch.cuda.max_memory_allocated()),
            "reserved": int(torch.cuda.max_memory_reserved()),
            "start_allocated": int(start_allocated),
            "oom": False,
        }
    except torch.OutOfMemoryError:
        out = {"allocated": None, "reserved": None, "start_allocated": None, "oom": True}
    del model, opt
    gc.collect()
    torch.cuda.empty_cache()
    return out


def measure_context(torch: Any) -> int:
    """Device memory in use by this process beyond what PyTorch reserved: the CUDA context
    (exact when this is the only process on the GPU)."""
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return int(total - free - torch.cuda.memory_reserved())


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        est, meas = r["estimate"], r.get("measured")
        mem = est["memory"]
        err = r.get("error")
        rows.append(
            [
                r["label"],
                _gib(mem["activations"]),
                _gib(mem["logits"]),
                _gib(mem["weights"] + mem["grads"] + mem["optimizer"]),
                _gib(est["allocated"]),
                _gib(meas["allocated"]) if meas else "-",
                ("OOM" if meas and meas["oom"] else f"{err:+.1%}") if err is not None else "-",
                _gib(meas["reserved"]) if meas else "-",
            ]
        )
    return rows


HEADER = [
    "row",
    "act GiB",
    "logits GiB",
    "w+g+opt GiB",
    "est alloc GiB",
    "max_alloc GiB",
    "error",
    "max_reserved GiB",
]


def print_table(rows: list[list[str]], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(" | ".join(HEADER))
        for r in rows:
            print(" | ".join(r))
        return
    t = Table(title=title)
    for h in HEADER:
        t.add_column(h, justify="left" if h == "row" else "right")
    for r in rows:
        t.add_row(*r)
    Console(width=None if sys.stdout.isatty() else 160).print(t)


def markdown(rows: list[list[str]], title: str, notes: list[str]) -> str:
    lines = [f"## {title}", ""]
    lines += notes + [""] if notes else []
    lines.append("| " + " | ".join(HEADER) + " |")
    lines.append("| " + " | ".join("---" for _ in HEADER) + " |")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the first 4 rows")
    ap.add_argument("--dry-run", action="store_true", help="print estimates only; no GPU")
    ap.add_argument("--no-write", action="store_true", help="do not write results files")
    args = ap.parse_args(argv)
    grid = GRID[:4] if args.quick else GRID

    if args.dry_run:
        results = [
            {"label": row.label, "row": row.__dict__, "estimate": estimate_row(row)} for row in grid
        ]
        print_table(table_rows(results), "memory estimates (dry run, no measurement)")
        return 0

    import torch

    if not torch.cuda.is_available():
        print(
            "memory_accuracy: no CUDA device here; this benchmark needs a GPU "
            "(use --dry-run to print the estimates). Nothing measured."
        )
        return 0

    device_name = torch.cuda.get_device_name()
    context = measure_context(torch)
    results = []
    for row in grid:
        est = estimate_row(row)
        meas = measure_row(row, torch)
        err = None
        if not meas["oom"]:
            err = (est["allocated"] - meas["allocated"]) / meas["allocated"]
        results.append(
            {
                "label": row.label,
                "row": row.__dict__,
                "estimate": est,
                "measured": meas,
                "error": err,
            }
        )
        print(
            f"{row.label}: estimate {_gib(est['allocated'])} GiB, "
            f"measured {_gib(meas['allocated'])} GiB",
            flush=True,
        )

    errors = [abs(r["error"]) for r in results if r["error"] is not None]
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"memory_accuracy — {device_name} — {date}"
    notes = [
        f"torch {torch.__version__}; {STEPS} steps per row; error = (estimate allocated - "
        "max_memory_allocated) / max_memory_allocated, where estimate allocated = "
        "Memory.tensor_peak + cuBLAS workspace.",
        f"CUDA context measured: {_gib(context)} GiB (estimate's CUDA_CONTEXT_BYTES: "
        f"{_gib(overhead_parts('cuda', 0)['context'])} GiB).",
    ]
    if errors:
        notes.append(
            f"mean |error| {sum(errors) / len(errors):.1%}, max |error| {max(errors):.1%} "
            f"over {len(errors)} rows."
        )
    rows = table_rows(results)
    print_table(rows, title)
    for n in notes:
        print(n)
    if not args.no_write:
        RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_JSON.write_text(
            json.dumps(
                {
                    "device": device_name,
                    "date": date,
                    "torch": torch.__version__,
                    "context_measured": context,
                    "steps": STEPS,
                    "rows": results,
                },
                indent=2,
            )
        )
        with RESULTS_MD.open("a") as f:
            f.write(markdown(rows, title, notes))
        print(f"wrote {RESULTS_JSON} and appended to {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
