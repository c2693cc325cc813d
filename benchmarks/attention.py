"""Causal attention on this machine: SDPA against the two other ways a model could compute it.

For a shape (default: shape (b) of throughput.py, B=16, 6 heads of 64, T=256) it times forward +
backward of `F.scaled_dot_product_attention(is_causal=True)` (torch's pick of kernel), the same
forced to the MATH backend, and explicit matmuls + mask + softmax, in one run. FLOP/s count the
full T x T square (4 matmuls of 2·B·H·T²·hd FLOPs: 2 forward, 4 backward = 12·B·H·T²·hd), as the
estimator and FlopCounterMode do. It bounds what a training step can reach: attention runs at
this rate whatever the GEMMs around it do.

    python benchmarks/attention.py [--b 16 --heads 6 --seq 256 --head-dim 64] [--no-append]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, machine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--b", type=int, default=16)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--no-append", action="store_true")
    a = ap.parse_args(argv)
    b, h, t, hd = a.b, a.heads, a.seq, a.head_dim
    torch.manual_seed(0)
    q, k, v = (torch.randn(b, h, t, hd, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, h, t, hd)
    mask = torch.full((t, t), float("-inf")).triu(1)

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def math_backend() -> torch.Tensor:
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def explicit() -> torch.Tensor:
        s = (q @ k.transpose(-1, -2)) * (1 / math.sqrt(hd)) + mask
        return torch.softmax(s, -1) @ v

    flops = 12 * b * h * t * t * hd
    rows = []
    for name, f in (("SDPA (torch's choice)", sdpa), ("SDPA, MATH backend", math_backend),
                    ("explicit matmuls + softmax", explicit)):
        for _ in range(3):
            f().backward(grad)
        t0 = time.perf_counter()
        for _ in range(a.reps):
            f().backward(grad)
        dt = (time.perf_counter() - t0) / a.reps
        rows.append((name, dt, flops / dt))
    lines = [
        f"## attention — {date.today()}",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/attention.py` (B={b}, {h} heads of "
        f"{hd}, T={t}, causal, forward + backward, {a.reps} repetitions each, one run).",
        "",
        "| implementation | ms per fwd+bwd | GFLOP/s (full square) |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {n} | {dt * 1e3:.1f} | {r / 1e9:.1f} |" for n, dt, r in rows]
    text = "\n".join(lines)
    print(text)
    if not a.no_append:
        append_results(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
