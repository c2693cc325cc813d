"""T5 span corruption (Raffel et al. 2020 §3.1.4) and the t5 vocabulary layout.

A window of `raw` tokens (`budgetlm.config.span_corruption_lengths(seq_len, noise_density,
mean_span_length)`) is cut, as T5's `random_spans_noise_mask` does, into `spans` kept runs and
`spans` corrupted runs, alternating and starting with a kept run, each run at least one token
long and the cut points drawn uniformly at random (`noise` corrupted tokens in all). The encoder
reads each kept run followed by the sentinel of the corrupted run after it; the decoder's
targets are each sentinel followed by the tokens it replaced. Interleaving the two by sentinel
gives back the window. No EOS token is added (as `span_corruption_lengths` counts).

Vocabulary (`t5_vocabulary`): the tokenizer's ids [0, V), then (task lm) one sentinel per span
of a window, ids [V, V + spans) in span order (sentinel i marks the i-th corrupted span; T5 counts
its 100 sentinels down from the top of its vocabulary instead), then the decoder start id
V + spans, the last id (`budgetlm.model.t5.decoder_start_id`).

torch is imported inside the functions only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from budgetlm.config import ModelConfig, SpanLengths, span_corruption_lengths
from budgetlm.errors import UserError

if TYPE_CHECKING:
    import torch


class T5Vocabulary(NamedTuple):
    """Ids of a t5 run: tokenizer ids below `first_sentinel`, `n_sentinels` sentinels from it,
    then `decoder_start`; `size` ids in all."""

    first_sentinel: int
    n_sentinels: int
    decoder_start: int
    size: int


def span_lengths(m: ModelConfig) -> SpanLengths:
    """The span-corruption lengths of `m` (windows of `raw` tokens into `seq_len` inputs); a
    UserError when its targets do not fit the decoder (`target_len` too short)."""
    lengths = span_corruption_lengths(m.seq_len, m.noise_density, m.mean_span_length)
    if lengths.spans < 1:
        raise UserError(f"model.seq_len: {m.seq_len} is too short for span corruption (>= 2)")
    if lengths.targets > m.decoder_seq_len:
        raise UserError(f"model.target_len: {m.decoder_seq_len} is shorter than the "
                        f"{lengths.targets} targets span corruption of seq_len makes")
    return lengths


def t5_vocabulary(tokenizer_vocab: int, m: ModelConfig, task: str = "lm") -> T5Vocabulary:
    """The t5 vocabulary over a tokenizer of `tokenizer_vocab` ids (see the module docstring);
    a task other than lm (span corruption) has no sentinels, only the decoder start id."""
    n = span_lengths(m).spans if task == "lm" else 0
    return T5Vocabulary(tokenizer_vocab, n, tokenizer_vocab + n, tokenizer_vocab + n + 1)


def _segments(n: int, k: int, g: torch.Generator | None) -> list[int]:
    """n items cut into k non-empty runs at uniformly random points: the run lengths."""
    import torch

    cuts = torch.randperm(n - 1, generator=g)[: k - 1].sort().values.tolist()
    edges = [0, *(c + 1 for c in cuts), n]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


def span_corrupt(
    windows: torch.Tensor, m: ModelConfig, first_sentinel: int, pad_id: int, ignore_index: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Span-corrupt each row of `windows` (B, raw) int64: (inputs (B, seq_len) padded with
    `pad_id`, targets (B, decoder_seq_len) padded with `ignore_index`; the model's PAD_ID and
    IGNORE_INDEX, which the trainer passes). Sentinel i is `first_sentinel + i`."""
    import torch

    L = span_lengths(m)
    B, raw = windows.shape
    if raw != L.raw:
        raise ValueError(f"windows of {raw} tokens; span corruption of seq_len {m.seq_len} "
                         f"reads {L.raw}")
    inputs = torch.full((B, m.seq_len), pad_id, dtype=torch.long)
    targets = torch.full((B, m.decoder_seq_len), ignore_index, dtype=torch.long)
    for b in range(B):
        kept = _segments(raw - L.noise, L.spans, generator)
        noise = _segments(L.noise, L.spans, generator)
        row, x, y, pos = windows[b].cpu(), [], [], 0
        for i, (a, n) in enumerate(zip(kept, noise, strict=True)):
            sentinel = torch.tensor([first_sentinel + i])
            x += [row[pos:pos + a], sentinel]
            y += [sentinel, row[pos + a:pos + a + n]]
            pos += a + n
        inputs[b, :L.inputs] = torch.cat(x)
        targets[b, :L.targets] = torch.cat(y)
    return inputs.to(windows.device), targets.to(windows.device)
