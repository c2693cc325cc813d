"""T5 span corruption lengths (Raffel et al. 2020 §3.1.4): how many raw tokens one sequence
reads, how many are corrupted in how many spans, and the encoder and decoder lengths that result.
The one definition the model config (`ModelConfig.decoder_seq_len`), the data pipeline
(`budgetlm.data.spans`) and the estimator read."""

from __future__ import annotations

from typing import NamedTuple


class SpanLengths(NamedTuple):
    """T5 span corruption of one sequence: raw tokens read, of which `noise` are corrupted in
    `spans` spans; the encoder reads `inputs` (kept tokens + one sentinel per span), the decoder
    `targets` (one sentinel per span + the corrupted tokens)."""

    raw: int
    noise: int
    spans: int
    inputs: int
    targets: int


def _span_lengths(raw: int, noise_density: float, mean_span_length: float) -> SpanLengths:
    noise = min(max(int(round(raw * noise_density)), 1), raw - 1)
    spans = min(max(int(round(noise / mean_span_length)), 1), noise, raw - noise)
    return SpanLengths(raw, noise, spans, raw - noise + spans, noise + spans)


def span_corruption_lengths(
    inputs_len: int, noise_density: float, mean_span_length: float
) -> SpanLengths:
    """The longest raw sequence whose corrupted form fits `inputs_len` encoder tokens (T5's
    `random_spans_helper`, Raffel et al. 2020, without an EOS token)."""
    if inputs_len < 2:
        return SpanLengths(inputs_len, 0, 0, inputs_len, 1)
    raw = inputs_len
    while _span_lengths(raw + 1, noise_density, mean_span_length).inputs <= inputs_len:
        raw += 1
    return _span_lengths(raw, noise_density, mean_span_length)
