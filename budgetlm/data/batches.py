"""Training and validation batches from token arrays, and bits per byte.

torch is imported inside the batch functions only, so counting tokens needs no torch.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from budgetlm.errors import UserError

if TYPE_CHECKING:
    import torch


def _window_error(n: int, seq_len: int, what: str) -> UserError:
    return UserError(
        f"data.source: corpus has {n} {what} tokens, shorter than one sequence (seq_len={seq_len})"
    )


def _positive(value: object, fld: str) -> int:
    """`value` as an int >= 1; UserError naming `fld` otherwise (bools and floats included)."""
    try:
        whole = None if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        whole = None
    if whole is None or whole < 1:
        raise UserError(f"{fld}: must be a whole number >= 1, got {value!r}")
    return whole


def sample_batch(
    tokens: np.ndarray,
    batch: int,
    seq_len: int,
    seed: int,
    step: int,
    micro: int = 0,
    rank: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [micro*batch, (micro+1)*batch) of step `step`'s stream of random windows.

    Stateless: the stream is default_rng([seed, step, rank]), so a resumed run draws the same
    data, and micro 4 x accumulation 4 sees exactly the windows of one micro-batch of 16.
    x = tokens[i:i+T], y = tokens[i+1:i+T+1], as int64 tensors of shape (B, T).
    """
    import torch

    batch = _positive(batch, "train.micro_batch")
    seq_len = _positive(seq_len, "model.seq_len")
    if isinstance(micro, bool) or operator.index(micro) < 0:
        raise ValueError(f"micro must be a whole number >= 0, got {micro!r}")
    n = len(tokens)
    if n < seq_len + 1:
        raise _window_error(n, seq_len, "training")
    rng = np.random.default_rng([int(v) % 2**64 for v in (seed, step, rank)])
    # integers() draws sequentially, so a longer draw extends a shorter one (prefix property)
    starts = rng.integers(0, n - seq_len, size=(micro + 1) * batch)[micro * batch :]
    win = np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)
    x = torch.from_numpy(np.ascontiguousarray(win[:, :-1]))  # (B, T)
    y = torch.from_numpy(np.ascontiguousarray(win[:, 1:]))  # (B, T)
    return x, y


def val_batches(
    tokens: np.ndarray, batch: int, seq_len: int, max_tokens: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows from the start of `tokens`, in batches of up to `batch` windows,
    until max_tokens target tokens (rounded down to whole windows; at least one window)."""
    import torch

    batch = _positive(batch, "train.micro_batch")
    seq_len = _positive(seq_len, "model.seq_len")
    n, T = len(tokens), seq_len
    n_windows = (n - 1) // T
    if n_windows < 1:
        raise _window_error(n, seq_len, "validation")
    n_windows = min(n_windows, max(1, max_tokens // T))
    for w0 in range(0, n_windows, batch):
        nb = min(batch, n_windows - w0)
        chunk = np.asarray(tokens[w0 * T : (w0 + nb) * T + 1], dtype=np.int64)
        x = torch.from_numpy(chunk[:-1].reshape(nb, T).copy())  # (B, T)
        y = torch.from_numpy(chunk[1:].reshape(nb, T).copy())  # (B, T)
        yield x, y


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    """Tokenizer-independent quality: (loss / ln 2) bits per token / bytes per token."""
    if bytes_per_token <= 0:
        raise ValueError("bytes_per_token must be positive")
    return loss_nats / math.log(2) / bytes_per_token
