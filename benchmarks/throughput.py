"""Training throughput: budgetlm's GPT against HF transformers' GPT2LMHeadModel of the same shape.

Both models are timed in this one run, in alternating rounds (same batch, fp32, SDPA attention,
AdamW, no dropout), so the ratio is measured side by side. Achieved FLOP/s uses the estimator's
model FLOPs per token (forward + backward) and is reported as a share of this machine's measured
fp32 matmul throughput (`budgetlm profile`).

The table also gives a ceiling: the same step's dense matmuls alone (every linear layer's forward
GEMM and its two backward GEMMs, at the step's shapes, on random tensors), timed in the same run.
No step can beat the share of peak its own GEMMs reach, since everything else in a step (attention,
norms, activations, the loss, the optimizer) only adds time. `--compile` adds a row for
budgetlm's model under `torch.compile` (inductor generates fused C++ kernels for the
elementwise work on CPU).

    python benchmarks/throughput.py [--rounds 5] [--compile] [--no-append]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from budgetlm.config import load_config
from budgetlm.estimate import model_flops_per_token
from budgetlm.hardware import load_profile
from budgetlm.model import build_model
from budgetlm.optim import build_optimizer

SHAPES = {
    # (a) nanoGPT's CPU recipe shape; GPT-2-style biases so both models have the same parameters
    "a: nanogpt-cpu B=12 T=64": dict(n_layer=4, n_head=4, d_model=128, seq_len=64, vocab=65, b=12),
    # (b) a 6-layer, 384-wide, seq-256 GPT
    "b: 6L-384 B=16 T=256": dict(n_layer=6, n_head=6, d_model=384, seq_len=256, vocab=65, b=16),
}


def ours(s: dict) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    cfg = load_config("tiny", [
        f"model.n_layer={s['n_layer']}", f"model.n_head={s['n_head']}",
        f"model.d_model={s['d_model']}", f"model.seq_len={s['seq_len']}",
        f"model.vocab_size={s['vocab']}", "model.bias=true", "model.dropout=0.0",
        "optim.weight_decay=0.1",
    ])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    return model, build_optimizer(model, cfg.optim), cfg


def hf(s: dict) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from transformers import GPT2Config, GPT2LMHeadModel

    conf = GPT2Config(
        vocab_size=s["vocab"], n_positions=s["seq_len"], n_embd=s["d_model"],
        n_layer=s["n_layer"], n_head=s["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, attn_implementation="sdpa", bos_token_id=0, eos_token_id=0,
        loss_type="ForCausalLM",
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(conf)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)


def step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer, is_hf: bool, x, y):
    def step() -> None:
        if is_hf:
            loss = model(input_ids=x, labels=x).loss
        else:
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def gemm_ceiling(s: dict, rounds: int) -> float:
    """FLOP/s of the step's linear-layer GEMMs alone (forward, grad-input, grad-weight)."""
    m, d, v = s["b"] * s["seq_len"], s["d_model"], s["vocab"]
    shapes = [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)] * s["n_layer"] + [(d, v)]
    g = torch.Generator().manual_seed(0)
    mats = [(torch.randn(m, i, generator=g), torch.randn(o, i, generator=g),
             torch.randn(m, o, generator=g)) for i, o in shapes]
    flops = sum(3 * 2 * m * i * o for i, o in shapes)

    def run() -> None:
        for a, w, gy in mats:
            a @ w.t()
            gy @ w
            gy.t() @ a

    run()
    n = max(2, int(2.0 / max(time_steps(run, 1), 1e-3)))
    return flops / statistics.median(time_steps(run, n) for _ in range(rounds))


def time_steps(step, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="also time budgetlm's model compiled")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prof = load_profile()
    peak = prof.peak("fp32")
    rows = []
    for name, s in SHAPES.items():
        b, t = s["b"], s["seq_len"]
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, s["vocab"], (b, t), generator=g)
        y = torch.randint(0, s["vocab"], (b, t), generator=g)
        m1, o1, cfg = ours(s)
        m2, o2 = hf(s)
        n_ours = sum(p.numel() for p in m1.parameters())
        n_hf = sum(p.numel() for p in m2.parameters())
        per_tok = model_flops_per_token(cfg.model)
        s1, s2 = step_fn(m1, o1, False, x, y), step_fn(m2, o2, True, x, y)
        for _ in range(3):  # warm-up
            s1()
            s2()
        n = max(2, int(2.0 / max(time_steps(s1, 1), 1e-3)))  # ~2 s per timing block
        t_ours, t_hf = [], []
        for _ in range(args.rounds):
            t_ours.append(time_steps(s1, n))
            t_hf.append(time_steps(s2, n))
        tok_ours = b * t / statistics.median(t_ours)
        tok_hf = b * t / statistics.median(t_hf)
        tok_comp = None
        if args.compile:
            mc, oc, _ = ours(s)
            sc = step_fn(torch.compile(mc), oc, False, x, y)
            for _ in range(3):
                sc()
            tok_comp = b * t / statistics.median(time_steps(sc, n) for _ in range(args.rounds))
        ceiling = gemm_ceiling(s, args.rounds)
        rows.append({
            "shape": name, "params": f"{n_ours:,} / {n_hf:,}",
            "budgetlm tok/s": tok_ours, "HF tok/s": tok_hf, "ratio": tok_ours / tok_hf,
            "budgetlm FLOP/s": tok_ours * per_tok, "HF FLOP/s": tok_hf * per_tok,
            "budgetlm % peak": 100 * tok_ours * per_tok / peak if peak else float("nan"),
            "HF % peak": 100 * tok_hf * per_tok / peak if peak else float("nan"),
            "compiled % peak": (100 * tok_comp * per_tok / peak) if tok_comp and peak else None,
            "compiled tok/s": tok_comp,
            "ceiling % peak": 100 * ceiling / peak if peak else float("nan"),
        })
    header = (
        "| shape | params (ours / HF) | budgetlm tok/s | HF tok/s | ratio | budgetlm GFLOP/s "
        "| HF GFLOP/s | budgetlm % fp32 peak | HF % fp32 peak | budgetlm compiled tok/s (% peak) "
        "| GEMMs alone % fp32 peak |\n" + "|---" * 11 + "|"
    )
    lines = [header]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['params']} | {r['budgetlm tok/s']:,.0f} | {r['HF tok/s']:,.0f} "
            f"| {r['ratio']:.2f}x | {r['budgetlm FLOP/s'] / 1e9:.1f} | {r['HF FLOP/s'] / 1e9:.1f} "
            f"| {r['budgetlm % peak']:.0f}% | {r['HF % peak']:.0f}% | "
            + (f"{r['compiled tok/s']:,.0f} ({r['compiled % peak']:.0f}%)"
               if r["compiled tok/s"] else "-")
            + f" | {r['ceiling % peak']:.0f}% |"
        )
    table = "\n".join(lines)
    print(table)
    machine = (
        f"{prof.cpu_model}, {prof.cpu_cores} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, measured fp32 matmul peak "
        f"{(peak or 0) / 1e9:.1f} GFLOP/s"
    )
    print(machine)
    if not args.no_append:
        out = Path(__file__).with_name("RESULTS.md")
        flag = " --compile" if args.compile else ""
        with out.open("a") as f:
            f.write(
                f"\n## Throughput: budgetlm vs HF GPT2LMHeadModel ({date.today()})\n\n"
                f"Machine: {machine}; Python {platform.python_version()}. "
                f"Command: `python benchmarks/throughput.py{flag}`. "
                "fp32, SDPA, AdamW, no dropout; "
                f"median of {args.rounds} alternating rounds.\n\n{table}\n"
            )
        print(f"appended to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
