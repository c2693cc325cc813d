"""Compression-rate ceilings of a token stream (budgetlm.laws.entropy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from budgetlm.laws.entropy import compression_rates, entropy_bound


def test_random_bytes_do_not_compress_and_repeats_do() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 200_000)
    rates = compression_rates(noise, 256)
    # no compressor beats the entropy of uniform bytes (ln 256 nats), and each stays close to it
    for k, v in rates.items():
        assert math.log(256) * 0.999 <= v <= math.log(256) * 1.02, (k, v)
    period = np.tile(rng.integers(0, 256, 1000), 200)
    b = entropy_bound(period, 256)
    assert b is not None and b["value"] < 0.05
    assert b["value"] == min(b["rates"].values()) and b["compressor"] in b["rates"]


def test_wide_vocabularies_are_coded_in_two_bytes() -> None:
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 4096, 50_000)  # 12 bits of entropy per token
    rates = compression_rates(ids, 4096)
    assert min(rates.values()) >= math.log(4096) * 0.999
    assert min(rates.values()) < math.log(65536)


def test_empty_stream_has_no_bound() -> None:
    assert entropy_bound(np.array([], dtype=np.int64), 256) is None


def test_markov_source_bound_is_above_its_entropy_rate() -> None:
    from budgetlm.config import DataConfig
    from budgetlm.data import load_corpus

    c = load_corpus(DataConfig(source="synthetic:markov", tokenizer="byte"))
    if c.entropy_rate is None:
        pytest.skip("no exact entropy rate for this source")
    b = entropy_bound(c.val, int(c.tokenizer.vocab_size))
    assert b is not None and b["value"] >= c.entropy_rate
