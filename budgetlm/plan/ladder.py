"""The size ladder: GPT shapes spaced geometrically in non-embedding parameters.

Width/depth grows from ~32 for tiny models to ~128 for large ones; heads are 32 wide below width
256 and 64 wide above (16 below width 64).
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass

LADDER_RATIO = 1.25  # consecutive rungs differ by about this factor in non-embedding parameters
LADDER_SPAN = 16.0  # price rungs within this factor of the rough compute-optimal size

WIDTHS = (
    32, 48, 64, 80, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 576, 640, 768, 896, 1024, 1152,
    1280, 1536, 1792, 2048, 2304, 2560, 3072, 3584, 4096, 4608, 5120, 6144, 7168, 8192, 9216,
    10240, 12288, 14336, 16384, 18432, 20480,
)


@dataclass(frozen=True)
class Shape:
    """A GPT's depth, width and head count, and the recipe it is built with (`plan.arch`)."""

    n_layer: int
    d_model: int
    n_head: int
    arch: str = "gpt2"

    @property
    def name(self) -> str:
        return f"L{self.n_layer}-d{self.d_model}"

    @property
    def approx_params(self) -> int:
        """12·L·d²: attention 4d² + MLP 8d² per block (non-embedding, no norms or biases) of the
        gpt2 recipe; the ladder's measure of size for every recipe."""
        return 12 * self.n_layer * self.d_model**2


def head_dim_for(d_model: int) -> int:
    """64 for widths of 256 and up (GPT-2/3, Llama); 32 for small models (nanoGPT's CPU recipe:
    128 wide, 4 heads); 16 below width 64."""
    if d_model >= 256 and d_model % 64 == 0:
        return 64
    return 32 if d_model >= 64 and d_model % 32 == 0 else 16


def target_aspect(n_params: float) -> float:
    """Preferred width/depth ratio: 32 up to ~1M parameters (nanoGPT CPU 128/4), 64 at 100M
    (GPT-2/3 small 768/12), 128 at 10B and above (GPT-3 6.7B-175B, 4096/32 ... 12288/96)."""
    x = max(n_params, 1e6)
    return min(128.0, 32.0 * (x / 1e6) ** (math.log(2) / math.log(100)))


@functools.lru_cache(maxsize=8)
def ladder(
    min_params: float = 1e4, max_params: float = 2e12, ratio: float = LADDER_RATIO
) -> tuple[Shape, ...]:
    """Shapes spaced by ~`ratio` in non-embedding parameters, each with a sensible aspect ratio.

    For each rung, of the (width, depth) pairs within half a rung of the target size, the one
    closest to the target size and to `target_aspect` (log distance, size weighted twice), with
    width/depth within a factor 2.5 of the target aspect;
    widths from a fixed list of multiples of 16 (tiny) to multiples of 1024 (large).
    """
    pairs = sorted(
        (12 * n * d * d, d, n) for d in WIDTHS for n in range(1, 161)
        if 12 * n * d * d <= 3 * max_params
    )
    sizes = [p[0] for p in pairs]
    out: list[Shape] = []
    seen: set[tuple[int, int]] = set()
    target = min_params
    half = math.sqrt(ratio)
    while target <= max_params:
        lo, hi = bisect.bisect_left(sizes, target / half), bisect.bisect_left(sizes, target * half)
        best = _best_pair(pairs[lo:hi], target)
        if best is not None and best not in seen:
            seen.add(best)
            d, n = best
            out.append(Shape(n_layer=n, d_model=d, n_head=max(1, d // head_dim_for(d))))
        target *= ratio
    return tuple(out)


def _best_pair(pairs: list[tuple[int, int, int]], target: float) -> tuple[int, int] | None:
    """(width, depth) of the (params, width, depth) closest to `target` size and aspect."""
    best, best_score = None, math.inf
    for p, d, n in pairs:
        off_aspect = abs(math.log((d / n) / target_aspect(p)))
        if off_aspect > math.log(2.5):
            continue
        score = off_aspect + 2 * abs(math.log(p / target))
        if score < best_score:
            best, best_score = (d, n), score
    return best
