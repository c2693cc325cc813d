"""Tests for budgetlm.data: sources, tokenizers, the token cache, batches, Markov entropy."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from budgetlm.config import DataConfig
from budgetlm.data import (
    UNK_CHAR,
    BpeTokenizer,
    ByteTokenizer,
    CharTokenizer,
    Corpus,
    MarkovChain,
    bits_per_byte,
    count_tokens,
    load_corpus,
    load_tokenizer,
    sample_batch,
    val_batches,
)
from budgetlm.errors import UserError

TEXT = "".join(
    f"line {i}: the quick brown fox jumps over the lazy dog. héllo wörld ✓\n" for i in range(200)
)


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETLM_CACHE_DIR", str(tmp_path / "cache"))


def cfg(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), **kw)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def corpus_text(c: Corpus) -> str:
    return c.tokenizer.decode(np.concatenate([c.train, c.val]).tolist())


# ---------------------------------------------------------------------------------------------
# Sources


def test_text_file_splits_last_fraction_of_bytes(tmp_path):
    f = write(tmp_path / "a.txt", TEXT)
    c = load_corpus(cfg(f, val_fraction=0.1))
    n = len(TEXT.encode())
    assert c.info["n_bytes"] == n and c.info["n_docs"] == 1
    assert c.train_bytes + c.val_bytes == n
    assert abs(c.val_bytes - 0.1 * n) <= 4  # moved back to a character boundary at most
    assert corpus_text(c) == TEXT
    assert c.tokenizer.decode(c.val.tolist()) == TEXT.encode()[c.train_bytes :].decode()
    assert c.val_bytes_per_token == 1.0 and c.entropy_rate is None
    assert c.train.dtype == np.uint16


def test_directory_is_recursive_sorted_and_only_txt_md(tmp_path):
    d = tmp_path / "docs"
    write(d / "b.md", "second\n")
    write(d / "a.txt", "first\n")
    write(d / "sub" / "c.txt", "third\n")
    write(d / "skip.py", "not me\n")
    write(d / ".hidden.txt", "not me either\n")
    c = load_corpus(cfg(d, val_fraction=0.1))
    assert c.info["n_docs"] == 3
    assert corpus_text(c) == "first\n\nsecond\n\nthird\n"  # documents joined by "\n"


def test_jsonl_reads_text_field(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"body": f"record {i} ünïcode"}) for i in range(50)) + "\n")
    c = load_corpus(cfg(f, text_field="body"))
    assert c.info["n_docs"] == 50
    assert corpus_text(c) == "\n".join(f"record {i} ünïcode" for i in range(50))


def test_parquet_reads_column(tmp_path):
    import pandas as pd

    f = tmp_path / "d.parquet"
    pd.DataFrame({"text": [f"row {i}" for i in range(40)], "n": range(40)}).to_parquet(f)
    c = load_corpus(cfg(f))
    assert c.info["n_docs"] == 40
    assert corpus_text(c) == "\n".join(f"row {i}" for i in range(40))


def test_max_bytes_truncates_at_a_character_boundary(tmp_path):
    f = write(tmp_path / "a.txt", "ab" + "é" * 100)  # é is two bytes
    c = load_corpus(cfg(f, max_bytes=5))
    assert c.info["n_bytes"] == 4 and corpus_text(c) == "abé"


def test_val_source_overrides_the_split(tmp_path):
    tr = write(tmp_path / "train.txt", TEXT)
    va = write(tmp_path / "val.txt", "validation text only\n" * 10)
    c = load_corpus(cfg(tr, val_source=str(va)))
    assert c.train_bytes == len(TEXT.encode())
    assert c.tokenizer.decode(c.val.tolist()) == "validation text only\n" * 10
    assert c.info["split"] == "val_source"


def test_builtin_pystdlib_is_deterministic_and_cached(tmp_path):
    a = load_corpus(DataConfig(source="builtin:pystdlib", cache_dir=str(tmp_path / "c1")))
    b = load_corpus(DataConfig(source="builtin:pystdlib", cache_dir=str(tmp_path / "c1")))
    c = load_corpus(DataConfig(source="builtin:pystdlib", cache_dir=str(tmp_path / "c2")))
    assert not a.info["cached"] and b.info["cached"] and not c.info["cached"]
    assert a.info["sha256"] == b.info["sha256"] == c.info["sha256"]
    assert a.info["n_bytes"] > 1_000_000 and a.info["n_docs"] > 100
    assert a.tokenizer.name == "byte" and len(a.train) == a.train_bytes
    assert np.array_equal(a.val, c.val)
    # the second load is served from the memmap cache (timings belong in benchmarks/)
    assert Path(b.info["cache_path"]).exists() and isinstance(b.train, np.memmap)


def test_builtin_pystdlib_respects_max_bytes():
    c = load_corpus(DataConfig(source="builtin:pystdlib", max_bytes=100_000))
    assert c.info["n_bytes"] <= 100_000 and c.info["n_bytes"] > 99_000


def test_cache_key_follows_file_changes(tmp_path):
    f = write(tmp_path / "a.txt", TEXT)
    assert not load_corpus(cfg(f)).info["cached"]
    assert load_corpus(cfg(f)).info["cached"]
    write(f, TEXT + "more\n")
    c = load_corpus(cfg(f))
    assert not c.info["cached"] and corpus_text(c) == TEXT + "more\n"
    cache = tmp_path / "cache" / "tokens"
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_count_tokens_matches_corpus(tmp_path):
    f = write(tmp_path / "a.txt", TEXT)
    assert count_tokens(cfg(f)) == len(load_corpus(cfg(f)).train)
    m = DataConfig(source="synthetic:markov:tokens=5000")
    assert count_tokens(m) == len(load_corpus(m).train) == 4750


# ---------------------------------------------------------------------------------------------
# Tokenizers


def test_char_tokenizer_round_trip_and_unknown(tmp_path):
    f = write(tmp_path / "a.txt", "hello world\n" * 20)
    c = load_corpus(cfg(f, tokenizer="char"))
    tok = c.tokenizer
    assert isinstance(tok, CharTokenizer)
    assert tok.chars == "\n dehlorw" and tok.vocab_size == len(tok.chars) + 1
    assert tok.decode(tok.encode("hello")) == "hello"
    assert tok.encode("hez") == [tok.encode("h")[0], tok.encode("e")[0], tok.unk_id]
    assert tok.decode(tok.encode("z")) == UNK_CHAR
    assert np.array_equal(tok.encode_array("hez€"), tok.encode("hez€"))
    assert corpus_text(c) == "hello world\n" * 20
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.encode("wohz") == tok.encode("wohz")


def test_bpe_round_trip_and_save_load(tmp_path):
    f = write(tmp_path / "a.txt", TEXT * 3)
    c = load_corpus(cfg(f, tokenizer="bpe", bpe_vocab_size=300))
    tok = c.tokenizer
    assert isinstance(tok, BpeTokenizer) and tok.name == "bpe"
    assert 256 < tok.vocab_size <= 300
    assert len(c.train) < c.train_bytes  # merges compress
    assert corpus_text(c) == TEXT * 3
    sample = "the lazy dog: héllo ✓ 日本 \t\r\n"
    assert tok.decode(tok.encode(sample)) == sample  # lossless on unseen text
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.vocab_size == tok.vocab_size and again.encode(sample) == tok.encode(sample)
    # deterministic: a rebuild in a fresh cache trains the same tokenizer
    c2 = load_corpus(cfg(f, tokenizer="bpe", bpe_vocab_size=300, cache_dir=str(tmp_path / "c2")))
    assert not c2.info["cached"] and np.array_equal(c.train, c2.train)


def test_byte_tokenizer_save_load(tmp_path):
    tok = ByteTokenizer()
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.name == "byte" and again.vocab_size == 256
    assert again.encode("é") == [0xC3, 0xA9] and again.decode([0xC3, 0xA9]) == "é"
    with pytest.raises(UserError, match="no tokenizer"):
        load_tokenizer(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------
# Markov


def _h(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_markov_entropy_matches_closed_form():
    # P(0->1) = a, P(1->0) = b; stationary pi = (b, a) / (a + b); H = pi0 h(a) + pi1 h(b).
    a, b = 0.1, 0.3
    chain = MarkovChain(order=1, vocab=2, probs=np.array([[1 - a, a], [b, 1 - b]]))
    pi = np.array([b, a]) / (a + b)
    assert np.allclose(chain.stationary, pi, atol=1e-12)
    expected = pi[0] * _h(a) + pi[1] * _h(b)
    assert chain.entropy_rate == pytest.approx(expected, rel=1e-10)
    seq = chain.sample(400_000, seed=1)
    assert chain.log_loss(seq) == pytest.approx(expected, rel=0.01)


def test_markov_order0_is_iid_entropy():
    p = np.array([[0.5, 0.25, 0.125, 0.125]])
    assert MarkovChain(0, 4, p).entropy_rate == pytest.approx(1.75 * math.log(2))


def test_markov_source_entropy_and_empirical_loss():
    c = load_corpus(DataConfig(source="synthetic:markov:order=2,vocab=16,tokens=200000,seed=3"))
    assert c.tokenizer.name == "symbol" and c.tokenizer.vocab_size == 16
    assert c.info["tokenizer"] == "symbol" and c.info["n_bytes"] == 200_000
    assert c.train_bytes == len(c.train) and c.val_bytes_per_token == 1.0
    chain = MarkovChain.random(order=2, vocab=16, seed=3)
    H = c.entropy_rate
    assert H == pytest.approx(chain.entropy_rate) and H < 0.7 * math.log(16)
    assert chain.log_loss(c.train) == pytest.approx(H, rel=0.01)
    assert load_corpus(
        DataConfig(source="synthetic:markov:order=2,vocab=16,tokens=200000,seed=3")
    ).info["cached"]


def test_markov_default_params_and_tokenizer_ignored():
    c = load_corpus(DataConfig(source="synthetic:markov:tokens=1000", tokenizer="bpe"))
    assert c.tokenizer.name == "symbol" and c.tokenizer.vocab_size == 32
    assert c.info["markov"] == {"order": 2, "vocab": 32, "tokens": 1000, "seed": 0, "alpha": 0.1}
    assert c.entropy_rate < 0.7 * math.log(32)


# ---------------------------------------------------------------------------------------------
# Batches


def test_sample_batch_is_stateless_and_shifted():
    import torch

    tokens = np.arange(1000, dtype=np.uint16)
    x, y = sample_batch(tokens, batch=4, seq_len=16, seed=7, step=3)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    x2, y2 = sample_batch(tokens, batch=4, seq_len=16, seed=7, step=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, sample_batch(tokens, 4, 16, seed=7, step=4)[0])
    assert not torch.equal(x, sample_batch(tokens, 4, 16, seed=7, step=3, micro=1)[0])
    assert not torch.equal(x, sample_batch(tokens, 4, 16, seed=7, step=3, rank=1)[0])
    # micro-batches are slices of one stream: 4 x 4 draws exactly the windows of 1 x 16
    big, _ = sample_batch(tokens, batch=16, seq_len=16, seed=7, step=3)
    parts = [sample_batch(tokens, 4, 16, seed=7, step=3, micro=m)[0] for m in range(4)]
    assert torch.equal(big, torch.cat(parts))
    # every window fits, including the last possible start
    xs, ys = sample_batch(np.arange(17), batch=8, seq_len=16, seed=0, step=0)
    assert torch.equal(xs[0], torch.arange(16)) and torch.equal(ys[0], torch.arange(1, 17))


def test_val_batches_deterministic_non_overlapping():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = list(val_batches(tokens, batch=3, seq_len=10, max_tokens=75))
    assert [tuple(x.shape) for x, _ in batches] == [(3, 10), (3, 10), (1, 10)]  # 7 windows
    xs = torch_cat([x for x, _ in batches])
    ys = torch_cat([y for _, y in batches])
    assert np.array_equal(xs.numpy().ravel(), np.arange(70))
    assert np.array_equal(ys.numpy().ravel(), np.arange(1, 71))
    again = list(val_batches(tokens, batch=3, seq_len=10, max_tokens=75))
    assert all((a[0] == b[0]).all() for a, b in zip(batches, again, strict=True))
    assert len(list(val_batches(tokens, 3, 10, max_tokens=1))) == 1  # at least one window
    assert sum(len(x) for x, _ in val_batches(tokens[:35], 8, 10, 10**9)) == 3  # 34 targets


def torch_cat(ts):
    import torch

    return torch.cat(ts)


def test_bits_per_byte():
    assert bits_per_byte(math.log(2), 1.0) == pytest.approx(1.0)
    assert bits_per_byte(2 * math.log(2), 4.0) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# Errors: UserError naming the field or file


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"data\.source: .*nope\.txt: no such file or directory"):
        load_corpus(cfg(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match=r"data\.val_source: .*no such file"):
        load_corpus(cfg(write(tmp_path / "a.txt", TEXT), val_source=str(tmp_path / "v.txt")))


def test_empty_file_and_empty_dir(tmp_path):
    with pytest.raises(UserError, match=r"data\.source: .*e\.txt is empty"):
        load_corpus(cfg(write(tmp_path / "e.txt", "")))
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "x.py", "code")
    with pytest.raises(UserError, match=r"data\.source: .*d is empty \(no \.txt or \.md"):
        load_corpus(cfg(tmp_path / "d"))


def test_corpus_shorter_than_one_sequence(tmp_path):
    f = write(tmp_path / "a.txt", "x" * 100)
    msg = r"data\.source: corpus has 95 training tokens, shorter than one sequence \(seq_len=128\)"
    with pytest.raises(UserError, match=msg):
        load_corpus(cfg(f), seq_len=128)
    with pytest.raises(UserError, match=r"data\.source: corpus has 5 validation tokens"):
        load_corpus(cfg(f), seq_len=16)
    assert len(load_corpus(cfg(f), seq_len=4).val) == 5


def test_binary_file(tmp_path):
    f = tmp_path / "blob.txt"
    f.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match=r"data\.source: .*blob\.txt is not a UTF-8 text file"):
        load_corpus(cfg(f))
    g = tmp_path / "latin1.txt"
    g.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.txt is not a UTF-8 text file"):
        load_corpus(cfg(g))


def test_jsonl_bad_line_and_missing_field(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "ok"}\n\n{"text": broken\n')
    with pytest.raises(UserError, match=r"data\.source: .*d\.jsonl line 3: invalid JSON"):
        load_corpus(cfg(f))
    f.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(UserError, match=r"d\.jsonl line 2: no field 'text'"):
        load_corpus(cfg(f))


def test_parquet_missing_column(tmp_path):
    import pandas as pd

    f = tmp_path / "d.parquet"
    pd.DataFrame({"body": ["a", "b"]}).to_parquet(f)
    with pytest.raises(UserError, match=r"d\.parquet has no column 'text' \(columns: body"):
        load_corpus(cfg(f))


def test_unknown_sources():
    with pytest.raises(UserError, match=r"data\.source: unknown builtin corpus 'builtin:nope'"):
        load_corpus(DataConfig(source="builtin:nope"))
    with pytest.raises(UserError, match=r"data\.source: unknown synthetic source"):
        load_corpus(DataConfig(source="synthetic:foo"))
    with pytest.raises(UserError, match=r"data\.source: unknown source scheme 'hf:'"):
        load_corpus(DataConfig(source="hf:wikitext"))
    with pytest.raises(UserError, match=r"unknown or malformed parameter 'size=3'"):
        load_corpus(DataConfig(source="synthetic:markov:size=3"))
    with pytest.raises(UserError, match=r"bad value for vocab"):
        load_corpus(DataConfig(source="synthetic:markov:vocab=1"))


def test_markov_too_many_states():
    with pytest.raises(UserError, match=r"data\.source: .*32\^3 = 32768 states, at most 4096"):
        load_corpus(DataConfig(source="synthetic:markov:order=3,vocab=32"))
    with pytest.raises(UserError, match=r"data\.source: .*states"):
        count_tokens(DataConfig(source="synthetic:markov:order=13,vocab=2"))


def test_cache_dir_is_used(tmp_path):
    f = write(tmp_path / "a.txt", TEXT)
    c = load_corpus(cfg(f, cache_dir=str(tmp_path / "mine")))
    assert Path(c.info["cache_path"]).parent == tmp_path / "mine"
    assert (Path(c.info["cache_path"]) / "meta.json").is_file()
    assert os.listdir(tmp_path / "mine") == [c.info["cache_key"]]


def test_cache_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("BUDGETLM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    f = write(tmp_path / "a.txt", TEXT)
    c = load_corpus(cfg(f))
    assert Path(c.info["cache_path"]).parent == tmp_path / "xdg" / "budgetlm" / "tokens"
    assert (Path(c.info["cache_path"]) / "meta.json").is_file()


def test_broken_cache_entry_is_rebuilt(tmp_path):
    f = write(tmp_path / "a.txt", TEXT)
    c = load_corpus(cfg(f))
    entry = Path(c.info["cache_path"])
    (entry / "train.bin").write_bytes(b"\0\0")  # wrong size
    again = load_corpus(cfg(f))
    assert not again.info["cached"] and corpus_text(again) == TEXT
    assert load_corpus(cfg(f)).info["cached"]


def test_negative_micro_batch_in_batches_is_user_error():
    tokens = np.arange(1000, dtype=np.uint16)
    for bad in (-4, 0, True, 2.5, "auto"):
        with pytest.raises(UserError, match=r"^train\.micro_batch: must be a whole number >= 1"):
            sample_batch(tokens, batch=bad, seq_len=16, seed=0, step=0)
        with pytest.raises(UserError, match=r"^train\.micro_batch: must be a whole number >= 1"):
            next(val_batches(tokens, batch=bad, seq_len=16, max_tokens=64))
    with pytest.raises(UserError, match=r"^model\.seq_len: must be a whole number >= 1, got -1"):
        sample_batch(tokens, batch=2, seq_len=-1, seed=0, step=0)
    with pytest.raises(UserError, match=r"^model\.seq_len: must be a whole number >= 1, got 0"):
        next(val_batches(tokens, batch=2, seq_len=0, max_tokens=64))
    x, _ = sample_batch(tokens, batch=np.int64(3), seq_len=16, seed=0, step=0)
    assert tuple(x.shape) == (3, 16)


def test_corrupt_tokenizer_file_is_user_error(tmp_path):
    d = tmp_path / "tok"
    CharTokenizer("abc").save(d)
    meta = next(p for p in d.iterdir() if p.suffix == ".json")
    meta.write_text("{not json")
    with pytest.raises(UserError, match=r"not a tokenizer file"):
        load_tokenizer(d)
    meta.write_text(json.dumps({"name": "char"}))
    with pytest.raises(UserError, match=r"incomplete char tokenizer"):
        load_tokenizer(d)


# ---------------------------------------------------------------------------------------------
# Unreadable files, through the CLI with file permissions enforced


def _permissions_enforced(tmp_path: Path) -> list[str]:
    """A command prefix under which file permissions hold: none for a normal user; for root,
    setpriv dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH. Skips when neither works."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is missing: cannot drop CAP_DAC_OVERRIDE")
    prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps=-all"]
    probe = tmp_path / "probe.txt"
    probe.write_text("x")
    probe.chmod(0)
    r = subprocess.run(
        [*prefix, sys.executable, "-c", f"open({str(probe)!r}).read()"],
        capture_output=True,
        text=True,
    )
    if "PermissionError" not in r.stderr:
        pytest.skip(f"setpriv cannot drop the capability here: {r.stderr.strip()[:200]}")
    return prefix


def _train_on(tmp_path: Path, source: Path, prefix: list[str]) -> subprocess.CompletedProcess:
    run_dir = tmp_path / f"run-{source.name}"
    env = {**os.environ, "BUDGETLM_CACHE_DIR": str(tmp_path / "cache")}
    args = [sys.executable, "-m", "budgetlm", "train", "tiny", "--max-steps", "1"]
    args += ["--run-dir", str(run_dir), "--set", f"data.source={source}"]
    return subprocess.run([*prefix, *args], capture_output=True, text=True, env=env, timeout=120)


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    return lines[0]


def test_unreadable_data_file_is_one_line_error(tmp_path):
    prefix = _permissions_enforced(tmp_path)
    f = write(tmp_path / "secret.txt", TEXT)
    f.chmod(0)
    line = _one_line_error(_train_on(tmp_path, f, prefix))
    assert line == f"error: data.source: cannot read {f}: permission denied"


def test_unreadable_data_directory_is_not_called_empty(tmp_path):
    prefix = _permissions_enforced(tmp_path)
    d = tmp_path / "docs"
    write(d / "a.txt", TEXT)
    d.chmod(0)
    try:
        line = _one_line_error(_train_on(tmp_path, d, prefix))
    finally:
        d.chmod(0o755)
    assert line == f"error: data.source: cannot read {d}: permission denied"
    assert "empty" not in line
    # an unreadable subdirectory is an error too, never silently left out of the corpus
    write(d / "sub" / "b.txt", TEXT)
    (d / "sub").chmod(0)
    try:
        line = _one_line_error(_train_on(tmp_path, d, prefix))
    finally:
        (d / "sub").chmod(0o755)
    assert line == f"error: data.source: cannot read {d / 'sub'}: permission denied"
