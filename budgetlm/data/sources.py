"""Corpus sources: parsing a source spec, finding and reading its documents, and the synthetic
Markov source.

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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import sysconfig
from bisect import bisect_right
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from budgetlm.config import DataConfig
from budgetlm.errors import UserError

MAX_MARKOV_STATES = 4096
_TEXT_SUFFIXES = (".txt", ".md")
_STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)


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
    """Chain parameters from "k=v,..." (`rest`), the defaults for those not given."""
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
class Source:
    """A parsed source spec: what `kind` of source it is and where (path) or how (params)."""

    spec: str
    fld: str  # "data.source" or "data.val_source", for messages
    kind: str  # text | dir | jsonl | parquet | pystdlib | markov
    path: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def read_error(fld: str, path: str | Path, exc: OSError) -> UserError:
    """One line for a file or directory that cannot be read: "FLD: cannot read PATH: why"."""
    where = exc.filename if exc.filename else path
    if isinstance(exc, PermissionError):
        why = "permission denied"
    else:
        why = (exc.strerror or type(exc).__name__).lower()
    prefix = f"{fld}: " if fld else ""
    return UserError(f"{prefix}cannot read {where}: {why}")


@contextmanager
def reading(fld: str, path: str | Path) -> Iterator[None]:
    """Turn an OSError while reading `path` (or a file below it) into `read_error`."""
    try:
        yield
    except OSError as exc:
        raise read_error(fld, path, exc) from None


def _raise(exc: OSError) -> None:
    raise exc


def parse_source(spec: str, fld: str) -> Source:
    """The `Source` a spec names (see the module docstring); UserError naming `fld` otherwise."""
    spec = spec.strip()
    if not spec:
        raise UserError(f"{fld}: empty source")
    if spec.startswith("builtin:"):
        if spec != "builtin:pystdlib":
            raise UserError(f"{fld}: unknown builtin corpus {spec!r} (available: builtin:pystdlib)")
        return Source(spec, fld, "pystdlib", Path(sysconfig.get_paths()["stdlib"]))
    if spec.startswith("synthetic:"):
        kind, _, rest = spec[len("synthetic:") :].partition(":")
        if kind != "markov":
            raise UserError(
                f"{fld}: unknown synthetic source {spec!r} (available: synthetic:markov[:k=v,...])"
            )
        return Source(spec, fld, "markov", params=_parse_markov(spec, rest, fld))
    path = Path(spec).expanduser()
    try:
        path.stat()
        found = True
    except (FileNotFoundError, NotADirectoryError):
        found = False
    except OSError as exc:
        raise read_error(fld, path, exc) from None
    if not found:
        m = _SCHEME.match(spec)
        if m and len(m.group(1)) > 1:
            raise UserError(
                f"{fld}: unknown source scheme {m.group(1) + ':'!r} in {spec!r} "
                "(expected a path, builtin:pystdlib or synthetic:markov)"
            )
        raise UserError(f"{fld}: {spec}: no such file or directory")
    path = path.resolve()
    if path.is_dir():
        return Source(spec, fld, "dir", path)
    suffix = path.suffix.lower()
    kind = "jsonl" if suffix == ".jsonl" else "parquet" if suffix == ".parquet" else "text"
    return Source(spec, fld, kind, path)


def _walk(
    root: Path,
    suffixes: tuple[str, ...],
    skip_dirs: frozenset[str] = frozenset(),
    skip_file: Callable[[str], bool] | None = None,
) -> list[tuple[str, Path]]:
    """(relative posix path, path) of matching files below root, sorted; hidden entries skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
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


def _source_files(src: Source) -> list[tuple[str, Path]]:
    """The documents of a dir or pystdlib source: (relative posix path, path), sorted."""
    assert src.path is not None
    if src.kind == "pystdlib":
        with reading(src.fld, src.path):
            return _walk(
                src.path, (".py",), _STDLIB_SKIP_DIRS, lambda n: n.startswith("_sysconfigdata_")
            )
    with reading(src.fld, src.path):
        files = _walk(src.path, _TEXT_SUFFIXES)
    if not files:
        raise UserError(f"{src.fld}: {src.spec} is empty (no .txt or .md files)")
    return files


def source_identity(src: Source, cfg: DataConfig) -> dict[str, Any]:
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
            with reading(src.fld, p):
                st = p.stat()
            listing.append([rel, st.st_size, st.st_mtime_ns])
        ident["files"] = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        if src.kind == "pystdlib":
            ident["python"] = sys.version
    else:
        with reading(src.fld, src.path):
            st = src.path.stat()
        ident.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        if src.kind in ("jsonl", "parquet"):
            ident["text_field"] = cfg.text_field
    return ident


def char_boundary(data: bytes | memoryview, i: int) -> int:
    """Largest j <= i that does not fall inside a UTF-8 multi-byte character."""
    while 0 < i < len(data) and (data[i] & 0xC0) == 0x80:
        i -= 1
    return i


# ---------------------------------------------------------------------------------------------
# Reading documents


class _Documents:
    """Documents read so far, up to a byte budget (`limit`, separators included; None: all)."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.docs: list[bytes] = []
        self.total = 0

    def add(self, doc: bytes) -> bool:
        """Keep `doc`; True when the byte budget is spent."""
        self.total += len(doc) + (1 if self.docs else 0)
        self.docs.append(doc)
        return self.limit is not None and self.total >= self.limit


def _is_utf8_text(data: bytes) -> bool:
    """UTF-8 with no NUL bytes."""
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _not_text(src: Source, path: Path) -> UserError:
    return UserError(f"{src.fld}: {path} is not a UTF-8 text file")


def _read_text_file(src: Source, path: Path, docs: _Documents) -> None:
    """One document: the file (its first max_bytes, cut back to a character boundary)."""
    limit = docs.limit
    with open(path, "rb") as f:
        data = f.read() if limit is None else f.read(limit + 4)
    if limit is not None and len(data) > limit:
        data = data[: char_boundary(data, limit)]
    if not _is_utf8_text(data):
        raise _not_text(src, path)
    docs.add(data)


def _read_directory(src: Source, docs: _Documents) -> None:
    """One document per file of a dir or pystdlib source, until the byte budget is spent."""
    for _, p in _source_files(src):
        with reading(src.fld, p):
            data = p.read_bytes()
        if not _is_utf8_text(data):
            if src.kind == "pystdlib":
                continue  # documented: non-UTF-8 stdlib files are skipped
            raise _not_text(src, p)
        if docs.add(data):
            break


def _read_jsonl(src: Source, path: Path, text_field: str, docs: _Documents) -> None:
    """One document per non-blank line: the string in field `text_field`."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{src.fld}: {path} line {lineno}"
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise UserError(f"{where}: invalid JSON ({exc})") from None
            if not isinstance(rec, dict):
                raise UserError(f"{where}: expected a JSON object")
            if text_field not in rec:
                raise UserError(f"{where}: no field {text_field!r} (set data.text_field)")
            text = rec[text_field]
            if not isinstance(text, str):
                raise UserError(f"{where}: field {text_field!r} is not a string")
            if docs.add(text.encode("utf-8")):
                break


def _read_parquet(src: Source, path: Path, text_field: str, docs: _Documents) -> None:
    """One document per row: column `text_field`, nulls skipped."""
    import pandas as pd
    import pyarrow.parquet as pq

    with open(path, "rb"):  # unreadable: an OSError for `reading`, not "not parquet"
        pass
    try:
        columns = pq.read_schema(path).names
    except Exception:  # any pyarrow failure means "not a parquet file"
        raise UserError(f"{src.fld}: {path} is not a readable parquet file") from None
    if text_field not in columns:
        raise UserError(
            f"{src.fld}: {path} has no column {text_field!r} "
            f"(columns: {', '.join(columns)}; set data.text_field)"
        )
    col = pd.read_parquet(path, columns=[text_field])[text_field]
    for row, text in enumerate(col.tolist()):
        if text is None or (isinstance(text, float) and math.isnan(text)):
            continue
        if not isinstance(text, str):
            raise UserError(f"{src.fld}: {path} row {row}: column {text_field!r} is not a string")
        if docs.add(text.encode("utf-8")):
            break


def read_source(src: Source, cfg: DataConfig) -> tuple[bytes, int]:
    """(UTF-8 bytes of the documents joined by "\\n", truncated to max_bytes; document count)."""
    limit = cfg.max_bytes
    docs = _Documents(limit)
    assert src.path is not None
    with reading(src.fld, src.path):
        if src.kind == "text":
            _read_text_file(src, src.path, docs)
        elif src.kind in ("dir", "pystdlib"):
            _read_directory(src, docs)
        elif src.kind == "jsonl":
            _read_jsonl(src, src.path, cfg.text_field, docs)
        elif src.kind == "parquet":
            _read_parquet(src, src.path, cfg.text_field, docs)
    joined = b"\n".join(docs.docs)
    if limit is not None and len(joined) > limit:
        joined = joined[: char_boundary(joined, limit)]
    if not joined:
        what = " (no records)" if src.kind in ("jsonl", "parquet") and not docs.docs else ""
        raise UserError(f"{src.fld}: {src.spec} is empty{what}")
    return joined, len(docs.docs)
