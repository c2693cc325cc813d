"""Corpora, tokenizers, the token cache and batches.

`load_corpus(cfg.data)` turns a `DataConfig` into a `Corpus`: two 1-D token arrays (train, val),
the tokenizer that made them, the UTF-8 bytes behind each split (for bits per byte) and, for the
synthetic Markov source, the exact entropy rate. torch is imported only inside the batch
functions, so the planner can count tokens without it.

Sources (`DataConfig.source`, and `val_source` when given):
  PATH.txt / any text file   one document; must be UTF-8 with no NUL bytes
  DIR                        every .txt / .md file below it (recursive, hidden entries skipped),
                             sorted by relative path; one document per file
  PATH.jsonl                 one document per line, the string in field `text_field`
  PATH.parquet               one document per row, column `text_field` (nulls skipped)
  builtin:pystdlib           the running interpreter's standard-library .py files (no download):
                             sorted relative paths below sysconfig's "stdlib"; skips
                             site-packages, __pycache__, hidden dirs and the test suites
                             (directories named test, tests, idle_test: they would triple the
                             size) and _sysconfigdata_*.py (build-specific); files that are not
                             UTF-8 are skipped (none on CPython 3.11)
  synthetic:markov[:k=v,..]  a random order-k Markov chain; see `MarkovChain`

Documents are joined with one "\n". `max_bytes` keeps the first max_bytes bytes of that join
(cut back to a character boundary; applied to `source` and `val_source` separately; for markov it
caps the number of symbols).

Split: without `val_source`, validation is the LAST `val_fraction` of the corpus BYTES (at least
one byte, cut back to a UTF-8 character boundary): one rule for one file and for many documents,
and split sizes that do not depend on document lengths. With `val_source`, the whole of `source`
trains and `val_source` validates.

Tokenizers: byte (256 ids, the UTF-8 bytes); char (the sorted characters of the source corpus,
both splits, ids 0..n-1 exactly as nanoGPT's shakespeare_char, plus <unk> = n for characters seen
only later, e.g. in val_source); bpe (HF `tokenizers` ByteLevel BPE trained on the TRAIN split;
lossless on any text). The markov source ignores `DataConfig.tokenizer`: its tokens ARE the
symbols, and its tokenizer is the identity "symbol" tokenizer (symbol i <-> chr(i)); one symbol
counts as one byte for bits per byte.

Cache: token ids live in `<cache_dir>/<key>/{train,val}.bin` (raw uint16, uint32 when the
vocabulary exceeds 65535) with `meta.json` and the tokenizer beside them, written to a temporary
directory and renamed into place. The key hashes the source identity (path + size + mtime_ns;
for directories and builtin:pystdlib the sorted listing of those; for synthetic the parameters),
the tokenizer config, the split parameters and max_bytes. A hit costs a stat walk and two
memmaps: no text is read again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
import sysconfig
import uuid
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from budgetlm.config import DataConfig
from budgetlm.errors import UserError

if TYPE_CHECKING:
    import torch

CACHE_VERSION = 1
MAX_MARKOV_STATES = 4096
TOKENIZER_META = "budgetlm_tokenizer.json"
UNK_CHAR = "\ufffd"  # what <unk> decodes to
_TEXT_SUFFIXES = (".txt", ".md")
_STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)


# ---------------------------------------------------------------------------------------------
# Tokenizers


class Tokenizer:
    """Base class: `name`, `vocab_size`, `encode`, `decode`, `save`; `load_tokenizer` reads back."""

    name: str = ""
    vocab_size: int = 0

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def encode_array(self, text: str) -> np.ndarray:
        """Encode a whole corpus split to a 1-D int array (overridden with fast paths)."""
        return np.asarray(self.encode(text), dtype=np.int64)

    def _meta(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size}

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / TOKENIZER_META).write_text(json.dumps(self._meta(), ensure_ascii=False))
        return d

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """256 ids: the UTF-8 bytes of the text."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


class CharTokenizer(Tokenizer):
    """Characters sorted by code point get ids 0..n-1; id n is <unk> for anything else."""

    name = "char"

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.unk_id = len(self.chars)
        self.vocab_size = len(self.chars) + 1
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        # code point -> id lookup table; the last slot catches everything above the largest
        table = np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32)
        top = int(table[-1]) + 1 if len(table) else 0
        self._lut = np.full(top + 1, self.unk_id, dtype=np.int64)
        self._lut[table] = np.arange(len(table))

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        present = np.flatnonzero(np.bincount(cps)).astype(np.uint32) if len(cps) else cps
        return cls(present.tobytes().decode("utf-32-le"))

    def encode(self, text: str) -> list[int]:
        unk = self.unk_id
        return [self._stoi.get(c, unk) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        chars, n = self.chars, len(self.chars)
        return "".join(chars[i] if 0 <= i < n else UNK_CHAR for i in (int(j) for j in ids))

    def encode_array(self, text: str) -> np.ndarray:
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return self._lut[np.minimum(cps, len(self._lut) - 1)]

    def _meta(self) -> dict[str, Any]:
        return {**super()._meta(), "chars": self.chars}


class BpeTokenizer(Tokenizer):
    """Byte-level BPE from HF `tokenizers` (GPT-2 style): lossless on any text."""

    name = "bpe"
    HF_FILE = "bpe.json"

    def __init__(self, hf: Any):
        self.hf = hf
        self.vocab_size = int(hf.get_vocab_size())

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BpeTokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        hf.train_from_iterator(_line_chunks(text), trainer=trainer)
        return cls(hf)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text).ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([int(i) for i in ids])

    def encode_array(self, text: str) -> np.ndarray:
        # Chunks end at newlines, so this equals encoding the whole text except where a chunk
        # boundary falls inside a run of whitespace; decoding is lossless either way.
        encs = self.hf.encode_batch(list(_line_chunks(text)))
        parts = [np.asarray(e.ids, dtype=np.int64) for e in encs]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def save(self, directory: str | Path) -> Path:
        d = super().save(directory)
        self.hf.save(str(d / self.HF_FILE))
        return d


class SymbolTokenizer(Tokenizer):
    """Identity tokenizer for synthetic sources: symbol i <-> the character chr(i)."""

    name = "symbol"

    def __init__(self, vocab_size: int):
        self.vocab_size = int(vocab_size)

    def encode(self, text: str) -> list[int]:
        ids = [ord(c) for c in text]
        if any(i >= self.vocab_size for i in ids):
            raise ValueError(f"text has symbols outside 0..{self.vocab_size - 1}")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(chr(int(i)) for i in ids)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Read a tokenizer written by `Tokenizer.save(directory)`."""
    d = Path(directory)
    meta_path = d / TOKENIZER_META
    if not meta_path.is_file():
        raise UserError(f"{d}: no tokenizer here (expected {TOKENIZER_META})")
    meta = json.loads(meta_path.read_text())
    name = meta.get("name")
    if name == "byte":
        return ByteTokenizer()
    if name == "char":
        return CharTokenizer(meta["chars"])
    if name == "symbol":
        return SymbolTokenizer(meta["vocab_size"])
    if name == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BpeTokenizer(HFTokenizer.from_file(str(d / BpeTokenizer.HF_FILE)))
    raise UserError(f"{meta_path}: unknown tokenizer {name!r}")


def _line_chunks(text: str, size: int = 1 << 16) -> Iterator[str]:
    """Split text into pieces of about `size` characters that end at a newline when possible."""
    start, n = 0, len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            nl = text.rfind("\n", start, end)
            if nl >= start:
                end = nl + 1
        yield text[start:end]
        start = end


# ---------------------------------------------------------------------------------------------
# Synthetic Markov source


class MarkovChain:
    """An order-k Markov chain over `vocab` symbols, with its exact entropy rate.

    State s encodes the last k symbols x1..xk (x1 oldest) as the base-vocab number x1..xk; after
    emitting y the state becomes (s * vocab + y) mod vocab**k. `probs[s]` is the distribution
    of the next symbol. The entropy rate is H = sum_s pi(s) * H(probs[s]) nats/token, with pi
    the stationary distribution of the k-gram chain (power iteration; a sparse linear solve if
    that has not converged in 2000 steps).
    """

    def __init__(self, order: int, vocab: int, probs: np.ndarray):
        probs = np.asarray(probs, dtype=np.float64)
        n_states = vocab**order
        if probs.shape != (n_states, vocab):
            raise ValueError(f"probs must have shape ({n_states}, {vocab}), got {probs.shape}")
        if (probs < 0).any() or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-9):
            raise ValueError("probs rows must be probability distributions")
        self.order, self.vocab, self.n_states = order, vocab, n_states
        self.probs = probs / probs.sum(axis=1, keepdims=True)
        self._next = (np.arange(n_states)[:, None] * vocab + np.arange(vocab)[None, :]) % n_states
        self.stationary = self._stationary()
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(self.probs > 0, self.probs * np.log(self.probs), 0.0)
        self.entropy_rate = float(-(self.stationary[:, None] * plogp).sum())

    @classmethod
    def random(
        cls,
        order: int = 2,
        vocab: int = 32,
        alpha: float = 0.1,
        seed: int = 0,
        smoothing: float = 1e-3,
    ) -> MarkovChain:
        """Rows ~ Dirichlet(alpha), mixed with `smoothing` of uniform (keeps it ergodic)."""
        rng = np.random.default_rng([seed, 0])
        probs = rng.dirichlet(np.full(vocab, alpha), size=vocab**order)
        return cls(order, vocab, (1.0 - smoothing) * probs + smoothing / vocab)

    def _stationary(self) -> np.ndarray:
        S, nxt, P = self.n_states, self._next.ravel(), self.probs
        pi = np.full(S, 1.0 / S)
        for _ in range(2000):
            new = np.bincount(nxt, weights=(pi[:, None] * P).ravel(), minlength=S)
            done = np.abs(new - pi).sum() < 1e-13
            pi = new
            if done:
                return pi / pi.sum()
        import scipy.sparse as sp
        import scipy.sparse.linalg as spla

        cols = np.repeat(np.arange(S), self.vocab)
        a = sp.csr_matrix((P.ravel(), (nxt, cols)), shape=(S, S)) - sp.identity(S, format="csr")
        a = a.tolil()
        a[0, :] = 1.0  # replace one (redundant) balance equation by sum(pi) = 1
        b = np.zeros(S)
        b[0] = 1.0
        pi = spla.spsolve(a.tocsc(), b)
        if not np.all(np.isfinite(pi)) or (pi < -1e-12).any():
            raise ValueError("Markov chain has no unique stationary distribution")
        pi = np.clip(pi, 0.0, None)
        return pi / pi.sum()

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n symbols; the first k are a stationary k-gram, so the whole sequence is stationary."""
        rng = np.random.default_rng([seed, 1])
        V, S, k = self.vocab, self.n_states, self.order
        s = int(rng.choice(S, p=self.stationary))
        head = [(s // V ** (k - 1 - j)) % V for j in range(k)][:n]
        cum = np.cumsum(self.probs, axis=1)
        cum[:, -1] = 2.0  # u < 1 always lands inside the row
        rows = [memoryview(cum[i]) for i in range(S)]  # bisect on views: fast, no copies
        m = n - len(head)
        out = [0] * m
        for t, u in enumerate(rng.random(m).tolist()):
            y = bisect_right(rows[s], u)
            out[t] = y
            s = (s * V + y) % S
        dtype = np.uint16 if V <= 65535 else np.uint32
        return np.asarray(head + out, dtype=dtype)

    def log_loss(self, tokens: np.ndarray) -> float:
        """Mean -log p(x_t | previous k symbols) under this chain, over t >= k (nats/token)."""
        x = np.asarray(tokens, dtype=np.int64)
        k, n = self.order, len(x)
        s = np.zeros(n - k, dtype=np.int64)
        for j in range(k):
            s = s * self.vocab + x[j : n - k + j]
        return float(-np.log(self.probs[s, x[k:]]).mean())


_MARKOV_DEFAULTS: dict[str, int | float] = {
    "order": 2,
    "vocab": 32,
    "tokens": 2_000_000,
    "seed": 0,
    "alpha": 0.1,
}


def _parse_markov(spec: str, rest: str, fld: str) -> dict[str, Any]:
    params: dict[str, Any] = dict(_MARKOV_DEFAULTS)
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in _MARKOV_DEFAULTS:
            raise UserError(
                f"{fld}: {spec!r}: unknown or malformed parameter {item!r} "
                f"(keys: {', '.join(_MARKOV_DEFAULTS)}, as key=value)"
            )
        try:
            if key == "alpha":
                val: int | float = float(raw)
                ok = math.isfinite(val) and val > 0
            else:
                f = float(raw.replace("_", ""))
                val = int(f)
                ok = f == val and val >= {"order": 0, "vocab": 2, "tokens": 2, "seed": 0}[key]
        except ValueError:
            ok = False
        if not ok:
            raise UserError(f"{fld}: {spec!r}: bad value for {key}: {raw!r}")
        params[key] = val
    if params["vocab"] > 65535:
        raise UserError(f"{fld}: {spec!r}: vocab must be at most 65535")
    states = params["vocab"] ** params["order"]
    if states > MAX_MARKOV_STATES:
        raise UserError(
            f"{fld}: {spec!r}: vocab^order = {params['vocab']}^{params['order']} = {states} "
            f"states, at most {MAX_MARKOV_STATES} (lower vocab or order)"
        )
    return params


# ---------------------------------------------------------------------------------------------
# Sources


@dataclass
class _Source:
    spec: str
    fld: str  # "data.source" or "data.val_source", for messages
    kind: str  # text | dir | jsonl | parquet | pystdlib | markov
    path: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def _parse_source(spec: str, fld: str) -> _Source:
    spec = spec.strip()
    if not spec:
        raise UserError(f"{fld}: empty source")
    if spec.startswith("builtin:"):
        if spec != "builtin:pystdlib":
            raise UserError(f"{fld}: unknown builtin corpus {spec!r} (available: builtin:pystdlib)")
        return _Source(spec, fld, "pystdlib", Path(sysconfig.get_paths()["stdlib"]))
    if spec.startswith("synthetic:"):
        kind, _, rest = spec[len("synthetic:") :].partition(":")
        if kind != "markov":
            raise UserError(
                f"{fld}: unknown synthetic source {spec!r} (available: synthetic:markov[:k=v,...])"
            )
        return _Source(spec, fld, "markov", params=_parse_markov(spec, rest, fld))
    path = Path(spec).expanduser()
    if not path.exists():
        m = _SCHEME.match(spec)
        if m and len(m.group(1)) > 1:
            raise UserError(
                f"{fld}: unknown source scheme {m.group(1) + ':'!r} in {spec!r} "
                "(expected a path, builtin:pystdlib or synthetic:markov)"
            )
        raise UserError(f"{fld}: {spec}: no such file or directory")
    path = path.resolve()
    if path.is_dir():
        return _Source(spec, fld, "dir", path)
    suffix = path.suffix.lower()
    kind = "jsonl" if suffix == ".jsonl" else "parquet" if suffix == ".parquet" else "text"
    return _Source(spec, fld, kind, path)


def _walk(
    root: Path,
    suffixes: tuple[str, ...],
    skip_dirs: frozenset[str] = frozenset(),
    skip_file: Any = None,
) -> list[tuple[str, Path]]:
    """(relative posix path, path) of matching files below root, sorted; hidden entries skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in skip_dirs]
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(suffixes):
                continue
            if skip_file is not None and skip_file(name):
                continue
            p = Path(dirpath) / name
            found.append((p.relative_to(root).as_posix(), p))
    found.sort()
    return found


def _source_files(src: _Source) -> list[tuple[str, Path]]:
    assert src.path is not None
    if src.kind == "pystdlib":
        return _walk(
            src.path, (".py",), _STDLIB_SKIP_DIRS, lambda n: n.startswith("_sysconfigdata_")
        )
    files = _walk(src.path, _TEXT_SUFFIXES)
    if not files:
        raise UserError(f"{src.fld}: {src.spec} is empty (no .txt or .md files)")
    return files


def _identity(src: _Source, cfg: DataConfig) -> dict[str, Any]:
    """What the cache key depends on: stats only, never the text."""
    ident: dict[str, Any] = {"kind": src.kind}
    if src.kind == "markov":
        ident.update(src.params)
        return ident
    assert src.path is not None
    ident["path"] = str(src.path)
    if src.kind in ("dir", "pystdlib"):
        listing = []
        for rel, p in _source_files(src):
            st = p.stat()
            listing.append([rel, st.st_size, st.st_mtime_ns])
        ident["files"] = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        if src.kind == "pystdlib":
            ident["python"] = sys.version
    else:
        st = src.path.stat()
        ident.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        if src.kind in ("jsonl", "parquet"):
            ident["text_field"] = cfg.text_field
    return ident


def _char_boundary(data: bytes | memoryview, i: int) -> int:
    """Largest j <= i that does not fall inside a UTF-8 multi-byte character."""
    while 0 < i < len(data) and (data[i] & 0xC0) == 0x80:
        i -= 1
    return i


def _not_text(src: _Source, path: Path) -> UserError:
    return UserError(f"{src.fld}: {path} is not a UTF-8 text file")


def _read(src: _Source, cfg: DataConfig) -> tuple[bytes, int]:
    """(UTF-8 bytes of the documents joined by "\\n", truncated to max_bytes; document count)."""
    limit = cfg.max_bytes
    docs: list[bytes] = []
    total = 0  # bytes so far, separators included

    def add(doc: bytes) -> bool:  # returns True when the byte budget is spent
        nonlocal total
        total += len(doc) + (1 if docs else 0)
        docs.append(doc)
        return limit is not None and total >= limit

    assert src.path is not None
    if src.kind == "text":
        with open(src.path, "rb") as f:
            data = f.read() if limit is None else f.read(limit + 4)
        if limit is not None and len(data) > limit:
            data = data[: _char_boundary(data, limit)]
        if b"\0" in data:
            raise _not_text(src, src.path)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise _not_text(src, src.path) from None
        add(data)
    elif src.kind in ("dir", "pystdlib"):
        for _, p in _source_files(src):
            data = p.read_bytes()
            bad = b"\0" in data
            if not bad:
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError:
                    bad = True
            if bad:
                if src.kind == "pystdlib":
                    continue  # documented: non-UTF-8 stdlib files are skipped
                raise _not_text(src, p)
            if add(data):
                break
    elif src.kind == "jsonl":
        with open(src.path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{src.fld}: {src.path} line {lineno}"
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    raise UserError(f"{where}: invalid JSON ({exc})") from None
                if not isinstance(rec, dict):
                    raise UserError(f"{where}: expected a JSON object")
                if cfg.text_field not in rec:
                    raise UserError(f"{where}: no field {cfg.text_field!r} (set data.text_field)")
                text = rec[cfg.text_field]
                if not isinstance(text, str):
                    raise UserError(f"{where}: field {cfg.text_field!r} is not a string")
                if add(text.encode("utf-8")):
                    break
    elif src.kind == "parquet":
        import pandas as pd
        import pyarrow.parquet as pq

        try:
            columns = pq.read_schema(src.path).names
        except Exception:  # any pyarrow failure means "not a parquet file"
            raise UserError(f"{src.fld}: {src.path} is not a readable parquet file") from None
        if cfg.text_field not in columns:
            raise UserError(
                f"{src.fld}: {src.path} has no column {cfg.text_field!r} "
                f"(columns: {', '.join(columns)}; set data.text_field)"
            )
        col = pd.read_parquet(src.path, columns=[cfg.text_field])[cfg.text_field]
        for row, text in enumerate(col.tolist()):
            if text is None or (isinstance(text, float) and math.isnan(text)):
                continue
            if not isinstance(text, str):
                raise UserError(
                    f"{src.fld}: {src.path} row {row}: column {cfg.text_field!r} is not a string"
                )
            if add(text.encode("utf-8")):
                break
    joined = b"\n".join(docs)
    if limit is not None and len(joined) > limit:
        joined = joined[: _char_boundary(joined, limit)]
    if not joined:
        what = " (no records)" if src.kind in ("jsonl", "parquet") and not docs else ""
        raise UserError(f"{src.fld}: {src.spec} is empty{what}")
    return joined, len(docs)


def _split_point(n: int, val_fraction: float) -> int:
    """Index where validation starts: the last val_fraction of n items, at least one."""
    n_val = min(n, max(1, round(n * val_fraction)))
    return n - n_val


# ---------------------------------------------------------------------------------------------
# Corpus, cache


@dataclass
class Corpus:
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
    """cfg.cache_dir, else $BUDGETLM_CACHE_DIR/tokens, else ~/.cache/budgetlm/tokens."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("BUDGETLM_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "tokens"
    return Path.home() / ".cache" / "budgetlm" / "tokens"


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
        tokenizer = load_tokenizer(entry / "tokenizer")
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


def _cache_key(cfg: DataConfig, src: _Source, val_src: _Source | None) -> str:
    tok = {"name": "symbol"} if src.kind == "markov" else {"name": cfg.tokenizer}
    if tok["name"] == "bpe":
        tok["bpe_vocab_size"] = cfg.bpe_vocab_size
    material = {
        "version": CACHE_VERSION,
        "source": _identity(src, cfg),
        "val_source": _identity(val_src, cfg) if val_src else None,
        "tokenizer": tok,
        "val_fraction": None if val_src else cfg.val_fraction,
        "max_bytes": cfg.max_bytes,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


def _build(cfg: DataConfig, src: _Source, val_src: _Source | None, key: str) -> dict[str, Any]:
    """Read, split and tokenize; returns what the cache entry holds (arrays, tokenizer, meta)."""
    info: dict[str, Any] = {"source": cfg.source, "val_source": cfg.val_source}
    entropy_rate = None
    if src.kind == "markov":
        p = src.params
        chain = MarkovChain.random(p["order"], p["vocab"], p["alpha"], p["seed"])
        n = p["tokens"] if cfg.max_bytes is None else min(p["tokens"], cfg.max_bytes)
        seq = chain.sample(n, p["seed"])
        cut = _split_point(n, cfg.val_fraction)
        train_ids, val_ids = seq[:cut], seq[cut:]
        tokenizer: Tokenizer = SymbolTokenizer(p["vocab"])
        train_bytes, val_bytes = len(train_ids), len(val_ids)
        entropy_rate = chain.entropy_rate
        info.update(
            n_bytes=n,
            n_docs=1,
            markov=dict(p),
            sha256=hashlib.sha256(seq.astype("<u2").tobytes()).hexdigest(),
            split=f"last {cfg.val_fraction:g} of symbols",
        )
    else:
        data, n_docs = _read(src, cfg)
        if val_src is not None:
            train_b, (val_b, val_docs) = data, _read(val_src, cfg)
            info.update(split="val_source", val_n_bytes=len(val_b), val_n_docs=val_docs)
        else:
            cut = _char_boundary(data, _split_point(len(data), cfg.val_fraction))
            train_b, val_b = data[:cut], data[cut:]
            info["split"] = f"last {cfg.val_fraction:g} of bytes"
        if cfg.tokenizer == "byte":  # fast path: the bytes are the ids
            tokenizer = ByteTokenizer()
            train_ids = np.frombuffer(train_b, dtype=np.uint8)
            val_ids = np.frombuffer(val_b, dtype=np.uint8)
        else:
            train_text, val_text = train_b.decode("utf-8"), val_b.decode("utf-8")
            if cfg.tokenizer == "char":
                tokenizer = CharTokenizer.from_text(data.decode("utf-8"))
            else:
                tokenizer = BpeTokenizer.train(train_text, cfg.bpe_vocab_size)
            train_ids = tokenizer.encode_array(train_text)
            val_ids = tokenizer.encode_array(val_text)
        train_bytes, val_bytes = len(train_b), len(val_b)
        info.update(n_bytes=len(data), n_docs=n_docs, sha256=hashlib.sha256(data).hexdigest())
        if src.kind == "pystdlib":
            info["stdlib"] = str(src.path)
            info["python"] = sys.version.split()[0]
    info.update(
        tokenizer=tokenizer.name,
        vocab_size=tokenizer.vocab_size,
        cache_key=key,
        train_tokens=len(train_ids),
        val_tokens=len(val_ids),
    )
    return {
        "train": train_ids,
        "val": val_ids,
        "tokenizer": tokenizer,
        "info": info,
        "train_bytes": train_bytes,
        "val_bytes": val_bytes,
        "entropy_rate": entropy_rate,
    }


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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def load_corpus(cfg: DataConfig, seq_len: int | None = None) -> Corpus:
    """Load (from the cache when possible) the corpus `cfg` names, split and tokenized.

    With `seq_len`, each split must hold at least seq_len + 1 tokens (inputs plus shifted
    targets), else UserError.
    """
    src = _parse_source(cfg.source, "data.source")
    val_src = _parse_source(cfg.val_source, "data.val_source") if cfg.val_source else None
    if val_src is not None and (src.kind == "markov" or val_src.kind == "markov"):
        raise UserError(
            "data.val_source: not supported with synthetic sources "
            "(a synthetic corpus is split by data.val_fraction)"
        )
    key = _cache_key(cfg, src, val_src)
    root = cache_root(cfg)
    corpus = _open_entry(root / key, key)
    cached = corpus is not None
    if corpus is None:
        _write_entry(root, key, _build(cfg, src, val_src, key))
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


def count_tokens(cfg: DataConfig) -> int:
    """Training tokens in the corpus (through the cache; markov needs no generation)."""
    src = _parse_source(cfg.source, "data.source")
    if src.kind == "markov" and not cfg.val_source:
        n = src.params["tokens"]
        n = n if cfg.max_bytes is None else min(n, cfg.max_bytes)
        return _split_point(n, cfg.val_fraction)
    return int(len(load_corpus(cfg).train))


# ---------------------------------------------------------------------------------------------
# Batches


def _window_error(n: int, seq_len: int, what: str) -> UserError:
    return UserError(
        f"data.source: corpus has {n} {what} tokens, shorter than one sequence (seq_len={seq_len})"
    )


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
