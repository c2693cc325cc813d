"""Upper bounds on a text's entropy rate from general-purpose compressors.

A compressor's output is a code for the token sequence, so its length in bits, divided by the
number of tokens, bounds from above the entropy per token of the source the sample came from
(Shannon's source coding theorem; up to the sample's finiteness). zlib (DEFLATE, LZ77 +
Huffman), bz2 (BWT) and lzma (LZMA2, preset 9) are measured; the smallest is the bound.

`budgetlm calibrate` uses it as the ceiling of a fitted law's irreducible loss E: a fit on small
pilots, whose loss curves flatten early, otherwise tends to put E above what these compressors
already achieve (measured on builtin:pystdlib: E = 1.63 nats/byte from nine pilots, bz2 1.10,
lzma 1.12, zlib 1.33, and a 20-minute run reached 1.33). It is an empirical ceiling for a model
with a short context, not a theorem: the compressors also exploit repeats farther back than a
model's window. Token ids are compressed as little-endian integers of the smallest width that
holds the vocabulary, so the bound is in nats per token of the tokenizer used.
"""

from __future__ import annotations

import bz2
import lzma
import math
import zlib
from typing import Any

import numpy as np

# compress at most this many tokens (the start of the split): ~1-2 s for all three on one core
MAX_TOKENS = 1_000_000


def compression_rates(tokens: Any, vocab_size: int) -> dict[str, float]:
    """{compressor: nats per token} of the token ids `tokens` (the first MAX_TOKENS)."""
    ids = np.asarray(tokens[:MAX_TOKENS])
    n = int(ids.size)
    if n == 0:
        return {}
    dtype = np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32
    raw = ids.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    sizes = {
        "zlib": len(zlib.compress(raw, 9)),
        "bz2": len(bz2.compress(raw, 9)),
        "lzma": len(lzma.compress(raw, preset=9)),
    }
    return {k: 8 * v * math.log(2) / n for k, v in sizes.items()}


def entropy_bound(tokens: Any, vocab_size: int) -> dict[str, Any] | None:
    """The smallest compression rate (nats/token) with all three measured; None if no tokens."""
    rates = compression_rates(tokens, vocab_size)
    if not rates:
        return None
    best = min(rates, key=lambda k: rates[k])
    return {"value": rates[best], "compressor": best, "rates": rates,
            "tokens": int(min(len(tokens), MAX_TOKENS))}
