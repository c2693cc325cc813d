"""The corpus a `DataConfig` names, split and tokenized, through the token cache.

Split: without `val_source`, validation is the LAST `val_fraction` of the corpus BYTES (at least
one byte, cut back to a UTF-8 character boundary): one rule for one file and for many documents,
and split sizes that do not depend on document lengths. With `val_source`, the whole of `source`
trains and `val_source` validates.

Cache: token ids live in `<cache_root>/<key>/{train,val}.bin` (raw uint16, uint32 when the
vocabulary exceeds 65535) with `meta.json` and the tokenizer beside them, written to a temporary
directory and renamed into place. The key hashes the source identity (path + size + mtime_ns;
for directories and builtin:pystdlib the sorted listing of those; for synthetic the parameters),
the tokenizer config, the split parameters and max_bytes. A hit costs a stat walk and two
memmaps: no text is read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from budgetlm.config import DataConfig
from budgetlm.data import tokenizers
from budgetlm.data.sources import (
    MarkovChain,
    Source,
    char_boundary,
    parse_source,
    read_source,
    source_identity,
)
from budgetlm.data.tokenizers import Tokenizer
from budgetlm.errors import UserError
from budgetlm.units import cache_dir

CACHE_VERSION = 1


@dataclass
class Corpus:
    """Train and validation token ids, the tokenizer that made them and the text behind them."""

    train: np.ndarray = field(repr=False)  # 1-D token ids (a read-only memmap of the cache)
    val: np.ndarray = field(repr=False)
    tokenizer: Tokenizer
    train_bytes: int  # UTF-8 bytes of text behind each split (symbols for markov)
    val_bytes: int
    info: dict[str, Any]
    entropy_rate: float | None = None  # nats/token, exact, for synthetic:markov

    @property
    def val_bytes_per_token(self) -> float:
        return self.val_bytes / max(1, len(self.val))

    @property
    def train_bytes_per_token(self) -> float:
        return self.train_bytes / max(1, len(self.train))


def cache_root(cfg: DataConfig) -> Path:
    """cfg.cache_dir, else the tokens/ folder of budgetlm's cache directory
    (`budgetlm.units.cache_dir()`)."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return cache_dir() / "tokens"


def split_point(n: int, val_fraction: float) -> int:
    """Index where validation starts: the last val_fraction of n items, at least one."""
    n_val = min(n, max(1, round(n * val_fraction)))
    return n - n_val


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def _memmap(path: Path, dtype: np.dtype, n: int) -> np.ndarray:
    if path.stat().st_size != n * dtype.itemsize:
        raise ValueError(f"{path}: size mismatch")
    if n == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


def _open_entry(entry: Path, key: str) -> Corpus | None:
    """The cached corpus at `entry`, or None when absent or unreadable."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("key") != key:
            return None
        dtype = np.dtype(meta["dtype"])
        train = _memmap(entry / "train.bin", dtype, meta["train_tokens"])
        val = _memmap(entry / "val.bin", dtype, meta["val_tokens"])
        tokenizer = tokenizers.load_tokenizer(entry / "tokenizer")
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return None
    return Corpus(
        train,
        val,
        tokenizer,
        meta["train_bytes"],
        meta["val_bytes"],
        dict(meta["info"]),
        meta.get("entropy_rate"),
    )


def _cache_key(
    cfg: DataConfig, src: Source, val_src: Source | None, given: Tokenizer | None = None
) -> str:
    tok: dict[str, Any] = {"name": "symbol"} if src.kind == "markov" else {"name": cfg.tokenizer}
    if tok["name"] == "bpe":
        tok["bpe_vocab_size"] = cfg.bpe_vocab_size
    if tok["name"] == "pretrained" and isinstance(given, tokenizers.PretrainedTokenizer):
        tok["sha256"] = hashlib.sha256(given.hf.to_str().encode()).hexdigest()
    material = {
        "version": CACHE_VERSION,
        "source": source_identity(src, cfg),
        "val_source": source_identity(val_src, cfg) if val_src else None,
        "tokenizer": tok,
        "val_fraction": None if val_src else cfg.val_fraction,
        "max_bytes": cfg.max_bytes,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# Building a cache entry


def _build_markov(cfg: DataConfig, src: Source, info: dict[str, Any]) -> dict[str, Any]:
    """Sample the chain and split it by symbols; fills `info`."""
    p = src.params
    chain = MarkovChain.random(p["order"], p["vocab"], p["alpha"], p["seed"])
    n = p["tokens"] if cfg.max_bytes is None else min(p["tokens"], cfg.max_bytes)
    seq = chain.sample(n, p["seed"])
    cut = split_point(n, cfg.val_fraction)
    train_ids, val_ids = seq[:cut], seq[cut:]
    info.update(
        n_bytes=n,
        n_docs=1,
        markov=dict(p),
        sha256=hashlib.sha256(seq.astype("<u2").tobytes()).hexdigest(),
        split=f"last {cfg.val_fraction:g} of symbols",
    )
    return {
        "train": train_ids,
        "val": val_ids,
        "tokenizer": tokenizers.SymbolTokenizer(p["vocab"]),
        "train_bytes": len(train_ids),
        "val_bytes": len(val_ids),
        "entropy_rate": chain.entropy_rate,
    }


def _tokenize(
    cfg: DataConfig, data: bytes, train_b: bytes, val_b: bytes, given: Tokenizer | None = None
) -> tuple[Tokenizer, np.ndarray, np.ndarray]:
    """(tokenizer, train ids, val ids): char learns its alphabet from `data` (both splits), bpe
    trains on the train split, `given` (a pretrained tokenizer) is used as it is."""
    if cfg.tokenizer == "byte":  # fast path: the bytes are the ids
        train_ids = np.frombuffer(train_b, dtype=np.uint8)
        return tokenizers.ByteTokenizer(), train_ids, np.frombuffer(val_b, dtype=np.uint8)
    train_text, val_text = train_b.decode("utf-8"), val_b.decode("utf-8")
    tokenizer: Tokenizer
    if cfg.tokenizer == "char":
        tokenizer = tokenizers.CharTokenizer.from_text(data.decode("utf-8"))
    elif given is not None:
        tokenizer = given
    else:
        tokenizer = tokenizers.BpeTokenizer.train(train_text, cfg.bpe_vocab_size)
    return tokenizer, tokenizer.encode_array(train_text), tokenizer.encode_array(val_text)


def _build_text(
    cfg: DataConfig, src: Source, val_src: Source | None, info: dict[str, Any],
    given: Tokenizer | None = None,
) -> dict[str, Any]:
    """Read, split and tokenize a text source; fills `info`."""
    data, n_docs = read_source(src, cfg)
    if val_src is not None:
        train_b, (val_b, val_docs) = data, read_source(val_src, cfg)
        info.update(split="val_source", val_n_bytes=len(val_b), val_n_docs=val_docs)
    else:
        cut = char_boundary(data, split_point(len(data), cfg.val_fraction))
        train_b, val_b = data[:cut], data[cut:]
        info["split"] = f"last {cfg.val_fraction:g} of bytes"
    tokenizer, train_ids, val_ids = _tokenize(cfg, data, train_b, val_b, given)
    info.update(n_bytes=len(data), n_docs=n_docs, sha256=hashlib.sha256(data).hexdigest())
    if src.kind == "pystdlib":
        info["stdlib"] = str(src.path)
        info["python"] = sys.version.split()[0]
    return {
        "train": train_ids,
        "val": val_ids,
        "tokenizer": tokenizer,
        "train_bytes": len(train_b),
        "val_bytes": len(val_b),
        "entropy_rate": None,
    }


def _build(
    cfg: DataConfig, src: Source, val_src: Source | None, key: str, given: Tokenizer | None
) -> dict[str, Any]:
    """Read, split and tokenize; returns what the cache entry holds (arrays, tokenizer, meta)."""
    info: dict[str, Any] = {"source": cfg.source, "val_source": cfg.val_source}
    if src.kind == "markov":
        built = _build_markov(cfg, src, info)
    else:
        built = _build_text(cfg, src, val_src, info, given)
    tokenizer = built["tokenizer"]
    info.update(
        tokenizer=tokenizer.name,
        vocab_size=tokenizer.vocab_size,
        cache_key=key,
        train_tokens=len(built["train"]),
        val_tokens=len(built["val"]),
    )
    built["info"] = info
    return built


def _write_entry(root: Path, key: str, built: dict[str, Any]) -> Path:
    """Write a cache entry to a temporary directory, then rename it into place (atomic)."""
    entry = root / key
    tmp = root / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"data.cache_dir: cannot write the token cache in {root} ({exc})") from None
    try:
        dtype = _token_dtype(built["tokenizer"].vocab_size)
        np.asarray(built["train"]).astype(dtype).tofile(tmp / "train.bin")
        np.asarray(built["val"]).astype(dtype).tofile(tmp / "val.bin")
        built["tokenizer"].save(tmp / "tokenizer")
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "dtype": dtype.name,
            "train_tokens": len(built["train"]),
            "val_tokens": len(built["val"]),
            "train_bytes": built["train_bytes"],
            "val_bytes": built["val_bytes"],
            "entropy_rate": built["entropy_rate"],
            "info": built["info"],
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if entry.exists():
            if _open_entry(entry, key) is not None:
                return entry  # another process finished the same entry first; it is identical
            shutil.rmtree(entry, ignore_errors=True)  # a broken entry: replace it
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / "meta.json").exists():
                raise
    except OSError as exc:  # disk full, permissions changed under us
        why = exc.strerror or type(exc).__name__
        raise UserError(f"data.cache_dir: cannot write the token cache in {root} ({why})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def _pretrained_tokenizer(cfg: DataConfig, pretrained: str | None) -> Tokenizer | None:
    """data.tokenizer=pretrained: the tokenizer.json of the model directory `pretrained`."""
    if cfg.tokenizer != "pretrained":
        return None
    if pretrained is None:
        raise UserError("data.tokenizer: pretrained needs model.from_pretrained (the Hugging "
                        "Face model directory holding tokenizer.json)")
    return tokenizers.PretrainedTokenizer.from_dir(pretrained)


def load_corpus(
    cfg: DataConfig, seq_len: int | None = None, pretrained: str | None = None
) -> Corpus:
    """Load (from the cache when possible) the corpus `cfg` names, split and tokenized.

    With `seq_len`, each split must hold at least seq_len + 1 tokens (inputs plus shifted
    targets), else UserError. `pretrained`: the model directory (`model.from_pretrained`) whose
    tokenizer.json `data.tokenizer: pretrained` reads.
    """
    src = parse_source(cfg.source, "data.source")
    val_src = parse_source(cfg.val_source, "data.val_source") if cfg.val_source else None
    if val_src is not None and (src.kind == "markov" or val_src.kind == "markov"):
        raise UserError(
            "data.val_source: not supported with synthetic sources "
            "(a synthetic corpus is split by data.val_fraction)"
        )
    given = None if src.kind == "markov" else _pretrained_tokenizer(cfg, pretrained)
    key = _cache_key(cfg, src, val_src, given)
    root = cache_root(cfg)
    corpus = _open_entry(root / key, key)
    cached = corpus is not None
    if corpus is None:
        _write_entry(root, key, _build(cfg, src, val_src, key, given))
        corpus = _open_entry(root / key, key)
        if corpus is None:
            raise UserError(f"data.cache_dir: could not read back the token cache in {root}")
    corpus.info["cached"] = cached
    corpus.info["cache_path"] = str(root / key)
    if seq_len is not None:
        if len(corpus.train) < seq_len + 1:
            raise UserError(
                f"data.source: corpus has {len(corpus.train)} training tokens, shorter than "
                f"one sequence (seq_len={seq_len})"
            )
        if len(corpus.val) < seq_len + 1:
            fld = "data.val_source" if val_src else "data.source"
            hint = "" if val_src else "; raise data.val_fraction or use a larger corpus"
            raise UserError(
                f"{fld}: corpus has {len(corpus.val)} validation tokens, shorter than one "
                f"sequence (seq_len={seq_len}){hint}"
            )
    return corpus


def count_tokens(cfg: DataConfig, pretrained: str | None = None) -> int:
    """Training tokens in the corpus (through the cache; markov needs no generation);
    `pretrained` as for `load_corpus`."""
    src = parse_source(cfg.source, "data.source")
    if src.kind == "markov" and not cfg.val_source:
        n = src.params["tokens"]
        n = n if cfg.max_bytes is None else min(n, cfg.max_bytes)
        return split_point(n, cfg.val_fraction)
    return int(len(load_corpus(cfg, pretrained=pretrained).train))
