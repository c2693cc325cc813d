"""The estimator's tensor peak against PyTorch's own memory tracker, without a GPU.

Each row runs a steady-state training step of budgetlm's own model as `budgetlm train` does
(`build_model`, `build_optimizer`, forward under `autocast_ctx`, the logits held by the loop,
`loss.backward()`, gradient clipping, `opt.step()`, `zero_grad(set_to_none=True)`) under
`torch._subclasses.fake_tensor.FakeTensorMode` on device "cpu": no real memory is touched, so
GPT-2 124M at micro-batch 8 runs on a laptop. One update with zero gradients creates the
optimizer state; then a whole step is tracked by
`torch.distributed._tools.mem_tracker.MemTracker`, whose peak (by category) is compared with
`memory_breakdown(...).tensor_peak` for device "cpu". The CPU SDPA kernel saves what CUDA's
flash kernel saves (q, k, v, out, fp32 logsumexp), so the activations transfer; the optimizer
temporaries are per device (see `budgetlm.estimate.phases.optimizer_temp_bytes`).

Usage (run it alone: one torch thread, minutes for the full grid):
    python benchmarks/memory_truth.py            # every row; appends a table to RESULTS.md
    python benchmarks/memory_truth.py --small    # the rows tests/test_memory_truth.py runs
    python benchmarks/memory_truth.py --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

from budgetlm.config import ModelConfig, RunConfig
from budgetlm.estimate import memory_breakdown

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_accuracy import Row  # noqa: E402  (one grid row, shared with the GPU check)

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "RESULTS.md"

SHAPES: dict[str, dict[str, Any]] = {
    "gpt-nano": dict(n_layer=2, n_head=2, d_model=64, vocab_size=512, seq_len=64),
    "gpt-micro": dict(n_layer=3, n_head=4, d_model=128, vocab_size=2048, seq_len=128),
    "llama-micro": dict(
        n_layer=2, n_head=4, d_model=128, d_ff=352, vocab_size=1024, seq_len=128,
        positions="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False,
    ),
    "gpt-short": dict(n_layer=2, n_head=4, d_model=256, vocab_size=4096, seq_len=16),
    "gpt-small": dict(n_layer=6, n_head=8, d_model=512, vocab_size=32768, seq_len=512),
    "gpt2-124m": dict(n_layer=12, n_head=12, d_model=768, vocab_size=50257, seq_len=1024),
}
SMALL_SHAPES = ("gpt-nano", "gpt-micro", "llama-micro", "gpt-short")




def _rows(shape: str, spec: list[tuple[int, str, bool, str]]) -> list[Row]:
    return [Row(shape, b, p, c, o) for b, p, c, o in spec]


GRID = (
    _rows("gpt-nano", [(1, "fp32", False, "adamw"), (8, "bf16", True, "sgd"),
                       (4, "bf16", False, "lion"), (2, "fp32", True, "muon"),
                       (8, "fp32", False, "adafactor")])
    + _rows("gpt-micro", [(1, "bf16", False, "adamw"), (8, "fp32", False, "sgd"),
                          (4, "bf16", True, "adafactor"), (2, "fp32", True, "lion"),
                          (8, "bf16", False, "muon"), (4, "fp32", True, "adamw")])
    + _rows("llama-micro", [(1, "fp32", False, "adamw"), (4, "bf16", True, "muon"),
                            (8, "bf16", False, "lion"), (2, "fp32", False, "sgd"),
                            (8, "fp32", True, "adafactor")])
    + _rows("gpt-short", [(1, "fp32", False, "adamw"), (2, "bf16", False, "muon"),
                          (1, "fp32", True, "sgd")])
    + _rows("gpt-small", [(1, "bf16", False, "adamw"), (4, "fp32", True, "muon"),
                          (8, "bf16", True, "lion")])
    + _rows("gpt2-124m", [(1, "bf16", False, "adamw"), (1, "fp32", True, "sgd"),
                          (4, "fp32", False, "adamw"), (4, "bf16", True, "adafactor"),
                          (8, "bf16", False, "muon"), (8, "bf16", True, "adamw"),
                          (8, "fp32", True, "lion")])
)
SMALL_GRID = [r for r in GRID if r.shape in SMALL_SHAPES]


def run_config(row: Row) -> RunConfig:
    return RunConfig(
        model=ModelConfig(**SHAPES[row.shape]),
        optim={"name": row.optimizer},
        train={"precision": row.precision, "micro_batch": row.micro_batch,
               "activation_checkpointing": row.checkpointing, "device": "cpu"},
    )


def _step(model: Any, opt: Any, x: Any, y: Any, precision: str, grad_clip: float | None,
          marks: list[tuple[str, int]], tracker: Any = None) -> None:
    """One training step as budgetlm.train.loop runs it; `marks` gets the tracker's peak at the
    end of the forward pass, the backward pass and the optimizer step."""
    import torch

    from budgetlm.train.runtime import autocast_ctx

    def mark(section: str) -> None:
        if tracker is not None:
            marks.append((section, _total(tracker.get_tracker_snapshot("peak"))))

    with autocast_ctx("cpu", precision):
        _, loss = model(x, y)  # the loop keeps the logits in `_` until the next step
    mark("forward")
    loss.backward()
    mark("backward")
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    mark("optimizer")


def _total(snapshot: dict[Any, dict[Any, int]]) -> int:
    return sum(dev.get("Total", 0) for dev in snapshot.values())


def _categories(snapshot: dict[Any, dict[Any, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for dev in snapshot.values():
        for k, v in dev.items():
            name = getattr(k, "value", str(k))
            out[name] = out.get(name, 0) + v
    return out


def measure(row: Row) -> dict[str, Any]:
    """MemTracker's peak over a steady-state step of `row`: total bytes, bytes by category at the
    peak, and the section (forward / backward / optimizer) the peak is in."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from budgetlm.model import build_model
    from budgetlm.optim import build_optimizer

    cfg = run_config(row)
    m = cfg.model
    item = getattr(FakeTensor, "item", None)
    FakeTensor.item = lambda self: 1.0  # torch's Adafactor reads a norm; memory does not depend
    try:
        with FakeTensorMode():
            torch.manual_seed(0)
            model = build_model(m).train()
            model.activation_checkpointing = row.checkpointing
            opt = build_optimizer(model, cfg.optim)
            x = torch.randint(m.vocab_size, (row.micro_batch, m.seq_len))
            y = torch.randint(m.vocab_size, (row.micro_batch, m.seq_len))
            for p in model.parameters():  # one update creates the optimizer state
                p.grad = torch.zeros_like(p)
            opt.step()
            opt.zero_grad(set_to_none=True)
            tracker = MemTracker()
            tracker.track_external(model, opt, x, y)
            marks: list[tuple[str, int]] = []
            with tracker:
                _step(model, opt, x, y, row.precision, cfg.optim.grad_clip, marks, tracker)
            peak = tracker.get_tracker_snapshot("peak")
    finally:
        if item is None:
            del FakeTensor.item
        else:
            FakeTensor.item = item
    total = _total(peak)
    section = next(name for name, value in marks if value == total)
    return {"peak": total, "categories": _categories(peak), "section": section}


_SECTION = {"forward": "forward", "optimizer": "optimizer"}


def compare(row: Row) -> dict[str, Any]:
    """Estimate and measurement of one row, with the relative error of the tensor peak."""
    mem = memory_breakdown(run_config(row), device="cpu")
    t0 = time.perf_counter()
    meas = measure(row)
    return {
        "label": row.label,
        "row": row,
        "estimate": mem.tensor_peak,
        "phase": mem.peak_phase,
        "section": _SECTION.get(mem.peak_phase, "backward"),
        "memory": mem.to_dict(),
        "measured": meas,
        "error": (mem.tensor_peak - meas["peak"]) / meas["peak"],
        "seconds": time.perf_counter() - t0,
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


HEADER = ["row", "est phase", "tracked section", "est MiB", "tracked MiB", "error",
          "tracked params+opt / act / temp MiB"]


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in results:
        cat = r["measured"]["categories"]
        other = cat.get("Parameter", 0) + cat.get("Optstate", 0) + cat.get("Buffer", 0)
        out.append([r["label"], r["phase"], r["measured"]["section"], _mib(r["estimate"]),
                    _mib(r["measured"]["peak"]), f"{r['error']:+.2%}",
                    f"{_mib(other)} / {_mib(cat.get('Activation', 0))} / "
                    f"{_mib(cat.get('Temp', 0) + cat.get('Gradient', 0))}"])
    return out


def worst_by(results: list[dict[str, Any]], key: str) -> dict[str, float]:
    """The largest |error| per value of `key` (shape, precision, optimizer, ...)."""
    out: dict[str, float] = {}
    for r in results:
        k = str(getattr(r["row"], key))
        out[k] = max(out.get(k, 0.0), abs(r["error"]))
    return out


def markdown(results: list[dict[str, Any]], title: str, notes: list[str]) -> str:
    lines = [f"## {title}", "", *notes, ""]
    lines.append("| " + " | ".join(HEADER) + " |")
    lines.append("| " + " | ".join("---" for _ in HEADER) + " |")
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(results)]
    return "\n".join(lines) + "\n"


def summary_notes(results: list[dict[str, Any]]) -> list[str]:
    import torch

    errors = [r["error"] for r in results]
    notes = [
        f"torch {torch.__version__}, FakeTensorMode on cpu, {torch.get_num_threads()} thread(s); "
        "error = (estimate tensor_peak - MemTracker peak) / MemTracker peak; one steady-state "
        "step (optimizer state present, logits held by the loop, grad clip 1.0).",
        f"{len(results)} rows: max |error| {max(abs(e) for e in errors):.2%}, largest "
        f"underestimate {-min(min(errors), 0.0):.2%}, phase-matched sections "
        f"{sum(r['section'] == r['measured']['section'] for r in results)}/{len(results)}.",
    ]
    for key in ("shape", "precision", "checkpointing", "optimizer", "micro_batch"):
        worst = worst_by(results, key)
        notes.append(f"largest |error| by {key}: "
                     + ", ".join(f"{k} {v:.2%}" for k, v in worst.items()) + ".")
    return notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="only the rows CI runs")
    ap.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    grid = SMALL_GRID if args.small else GRID
    results = []
    for row in grid:
        r = compare(row)
        results.append(r)
        print(f"{r['label']}: estimate {_mib(r['estimate'])} MiB ({r['phase']}), tracked "
              f"{_mib(r['measured']['peak'])} MiB ({r['measured']['section']}), "
              f"error {r['error']:+.2%}, {r['seconds']:.1f} s", flush=True)
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = markdown(results, f"memory_truth — estimator vs MemTracker (fake tensors) — {date}",
                    summary_notes(results))
    print(text)
    if not args.no_write:
        existing = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
        RESULTS_MD.write_text(existing.rstrip("\n") + "\n\n" + text)
        print(f"appended to {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
