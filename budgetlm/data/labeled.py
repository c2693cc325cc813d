"""Labeled text for classification: reading, the held-out split, the label set, tokenization.

Sources (`data.source`, and `data.val_source` when given): PATH.jsonl (one JSON object per
non-blank line), PATH.csv (a header row names the columns), PATH.parquet (columns). The text is
field/column `data.text_field` (a string), the label `data.label_field` (a string or an integer;
labels are compared as strings, so 1 and "1" are one label).

Split: with `data.val_source` the whole source trains and val_source validates. Otherwise a
seeded split of `data.val_fraction` (seed = the run's seed): stratified when every label has at
least two rows (each label gives round(n * val_fraction) of its rows, at least one and never all
of them, so the split keeps the label shares), else a plain shuffle of all rows taking
max(1, round(n * val_fraction)). `LabeledData.info["split"]` says which.

Label set: `data.labels` in its order when given (every label of the data must be in it), else
the sorted distinct labels of the training split. A validation label not in the set is an error.

Tokens: the run's tokenizer (byte; char from the characters of both splits; bpe trained on the
training texts; pretrained; or a given one, e.g. the saved tokenizer of a pretrained run), each
text truncated to its first `seq_len` tokens and padded on the right with `pad_id` (the model's
PAD_ID) to `seq_len`. Every error is a one-line UserError naming the field and the file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from budgetlm.config import DataConfig
from budgetlm.data import tokenizers
from budgetlm.data.sources import parse_source, reading
from budgetlm.data.tokenizers import Tokenizer
from budgetlm.errors import UserError

LABELED_SUFFIXES = (".jsonl", ".csv", ".parquet")


@dataclass
class Row:
    """One labeled example: its text, its label as a string and where it came from."""

    text: str
    label: str
    where: str  # "data.source: PATH line 3", for messages


@dataclass
class LabeledSplit:
    """Token ids (N, seq_len) padded with pad_id on the right, label indices (N,), lengths."""

    tokens: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    lengths: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class LabeledData:
    """The training and validation splits, the label set (index = class id), the tokenizer."""

    train: LabeledSplit
    val: LabeledSplit
    labels: list[str]
    tokenizer: Tokenizer
    info: dict[str, Any]
    label_tokens: list[list[int]] = field(default_factory=list)  # each label, tokenized
    entropy_rate: float | None = None  # no synthetic entropy rate here (a Corpus has one)


# ---------------------------------------------------------------------------------------------
# Reading


def _label(value: Any, where: str, label_field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | np.integer):
        raise UserError(
            f"{where}: label field {label_field!r} is not a string or an integer "
            f"(got {type(value).__name__})"
        )
    return str(int(value)) if isinstance(value, int | np.integer) else value


def _row(rec: dict[str, Any], where: str, text_field: str, label_field: str) -> Row:
    """A Row from a record (a JSON object, CSV row or parquet row)."""
    for name, which in ((text_field, "text"), (label_field, "label")):
        if name not in rec or rec[name] is None:
            raise UserError(f"{where}: no {which} field {name!r} (set data.{which}_field)")
    text = rec[text_field]
    if not isinstance(text, str):
        raise UserError(
            f"{where}: text field {text_field!r} is not a string (got {type(text).__name__})"
        )
    return Row(text, _label(rec[label_field], where, label_field), where)


def _read_jsonl(path: Path, fld: str, text_field: str, label_field: str) -> list[Row]:
    rows = []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{fld}: {path} line {lineno}"
            try:
                rec = json.loads(line)
            except ValueError:
                raise UserError(f"{where}: invalid JSON") from None
            if not isinstance(rec, dict):
                raise UserError(f"{where}: expected a JSON object")
            rows.append(_row(rec, where, text_field, label_field))
    return rows


def _read_csv(path: Path, fld: str, text_field: str, label_field: str) -> list[Row]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{fld}: {path} is not a UTF-8 CSV file") from None
    if "\0" in text:
        raise UserError(f"{fld}: {path} is not a UTF-8 CSV file")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    for name, which in ((text_field, "text"), (label_field, "label")):
        if columns and name not in columns:
            raise UserError(f"{fld}: {path} has no {which} column {name!r} (columns: "
                            f"{', '.join(columns)}; set data.{which}_field)")
    try:
        return [_row(rec, f"{fld}: {path} line {reader.line_num}", text_field, label_field)
                for rec in reader]
    except csv.Error as exc:
        raise UserError(f"{fld}: {path} line {reader.line_num}: not valid CSV ({exc})") from None


def _read_parquet(path: Path, fld: str, text_field: str, label_field: str) -> list[Row]:
    import pyarrow.parquet as pq

    with open(path, "rb"):  # unreadable: an OSError for `reading`
        pass
    try:
        table = pq.read_table(path)
    except Exception:  # any pyarrow failure means "not a parquet file"
        raise UserError(f"{fld}: {path} is not a readable parquet file") from None
    columns = table.column_names
    for name, which in ((text_field, "text"), (label_field, "label")):
        if name not in columns:
            raise UserError(f"{fld}: {path} has no {which} column {name!r} (columns: "
                            f"{', '.join(columns)}; set data.{which}_field)")
    texts = table.column(text_field).to_pylist()
    labels = table.column(label_field).to_pylist()
    return [
        _row({text_field: t, label_field: y}, f"{fld}: {path} row {i}", text_field, label_field)
        for i, (t, y) in enumerate(zip(texts, labels, strict=True))
    ]


def read_labeled(spec: str, fld: str, text_field: str, label_field: str) -> list[Row]:
    """The rows of a .jsonl, .csv or .parquet source; UserError naming `fld` and the file when it
    cannot be read, is empty, or a row lacks a field or holds the wrong kind of value."""
    src = parse_source(spec, fld)
    path = src.path
    if path is None or src.kind == "dir" or path.suffix.lower() not in LABELED_SUFFIXES:
        raise UserError(f"{fld}: {spec}: classification reads a .jsonl, .csv or .parquet file")
    reader = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
    with reading(fld, path):
        if path.stat().st_size == 0:
            raise UserError(f"{fld}: {path} is empty (no rows)")
        rows = reader[path.suffix.lower()](path, fld, text_field, label_field)
    if not rows:
        split = "validation" if fld.endswith("val_source") else "training"
        raise UserError(f"{fld}: {path} has no rows (an empty {split} split)")
    return rows


# ---------------------------------------------------------------------------------------------
# Split and label set


def split_rows(rows: list[Row], val_fraction: float, seed: int) -> tuple[list[Row], list[Row], str]:
    """(train, val, how): stratified by label when every label has two rows or more, else a
    shuffle; seeded. See the module docstring."""
    rng = np.random.default_rng([seed, 7])
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_label.setdefault(r.label, []).append(i)
    val_idx: list[int] = []
    if min(len(ix) for ix in by_label.values()) >= 2:
        for label in sorted(by_label):
            ix = by_label[label]
            n_val = min(len(ix) - 1, max(1, round(len(ix) * val_fraction)))
            val_idx += [ix[j] for j in rng.permutation(len(ix))[:n_val]]
        how = f"stratified: {val_fraction:g} of each label's rows (seed {seed})"
    else:
        n_val = min(len(rows) - 1, max(1, round(len(rows) * val_fraction)))
        val_idx = [int(j) for j in rng.permutation(len(rows))[:n_val]]
        how = f"shuffled: {val_fraction:g} of the rows (seed {seed}; a label has one row)"
    held = set(val_idx)
    train = [r for i, r in enumerate(rows) if i not in held]
    return train, [rows[i] for i in sorted(held)], how


def label_set(train: list[Row], val: list[Row], given: list[str] | None, src: str) -> list[str]:
    """`given` (data.labels) or the sorted distinct training labels; UserError for a single
    class, a label outside data.labels, or a validation label the training split lacks."""
    seen = Counter(r.label for r in train)
    if given is not None:
        if len(set(given)) != len(given) or len(given) < 2:
            raise UserError(f"data.labels: expected at least 2 distinct labels, got {given}")
        known = set(given)
        for r in (*train, *val):
            if r.label not in known:
                raise UserError(f"{r.where}: label {r.label!r} is not in data.labels")
    if len(seen) < 2:
        only = next(iter(seen)) if seen else None
        raise UserError(f"data.source: {src}: every training row has label {only!r}; "
                        "classification needs at least 2 labels (see data.label_field)")
    for r in val:
        if r.label not in seen:
            raise UserError(
                f"{r.where}: label {r.label!r} does not occur in the training split"
            )
    return list(given) if given is not None else sorted(seen)


# ---------------------------------------------------------------------------------------------
# Tokens


def make_tokenizer(cfg: DataConfig, train: list[Row], val: list[Row],
                   pretrained: str | None = None) -> Tokenizer:
    """The tokenizer `cfg.tokenizer` names, built from these rows (as `load_corpus` builds it
    from a text corpus)."""
    if cfg.tokenizer == "byte":
        return tokenizers.ByteTokenizer()
    if cfg.tokenizer == "char":
        return tokenizers.CharTokenizer.from_text("".join(r.text for r in (*train, *val)))
    if cfg.tokenizer == "bpe":
        return tokenizers.BpeTokenizer.train("\n".join(r.text for r in train), cfg.bpe_vocab_size)
    if pretrained is None:
        raise UserError("data.tokenizer: pretrained needs model.from_pretrained (the Hugging "
                        "Face model directory holding tokenizer.json)")
    return tokenizers.PretrainedTokenizer.from_dir(pretrained)


def encode_rows(rows: list[Row], tok: Tokenizer, labels: list[str], seq_len: int,
                pad_id: int) -> tuple[LabeledSplit, int]:
    """(the split, how many texts were truncated to seq_len tokens)."""
    index = {y: i for i, y in enumerate(labels)}
    tokens = np.full((len(rows), seq_len), pad_id, dtype=np.int64)
    lengths = np.zeros(len(rows), dtype=np.int64)
    truncated = 0
    for i, r in enumerate(rows):
        ids = tok.encode(r.text)
        if not ids:
            raise UserError(f"{r.where}: the text is empty")
        truncated += len(ids) > seq_len
        ids = ids[:seq_len]
        tokens[i, : len(ids)] = ids
        lengths[i] = len(ids)
    y = np.asarray([index[r.label] for r in rows], dtype=np.int64)
    return LabeledSplit(tokens, y, lengths), truncated


def labeled_rows(cfg: DataConfig, seed: int,
                 fld: str = "data.source") -> tuple[list[Row], list[Row], str, list[str]]:
    """(training rows, validation rows, how they were split, the label set) of `cfg.source`
    (and `cfg.val_source`); `fld` names the source in messages."""
    rows = read_labeled(cfg.source, fld, cfg.text_field, cfg.label_field)
    if cfg.val_source:
        train = rows
        val = read_labeled(cfg.val_source, "data.val_source", cfg.text_field, cfg.label_field)
        how = "data.val_source"
    else:
        train, val, how = split_rows(rows, cfg.val_fraction, seed)
    return train, val, how, label_set(train, val, cfg.labels, cfg.source)


def load_labeled(cfg: DataConfig, seq_len: int, pad_id: int, seed: int,
                 tokenizer: Tokenizer | None = None, pretrained: str | None = None,
                 ) -> LabeledData:
    """Read, split, label and tokenize `cfg.source` (and `cfg.val_source`); `tokenizer`: use
    this one (a pretrained run's) instead of building `cfg.tokenizer`."""
    train, val, how, labels = labeled_rows(cfg, seed)
    tok = tokenizer if tokenizer is not None else make_tokenizer(cfg, train, val, pretrained)
    train_split, cut_train = encode_rows(train, tok, labels, seq_len, pad_id)
    val_split, cut_val = encode_rows(val, tok, labels, seq_len, pad_id)
    counts = Counter(r.label for r in train)
    info = {
        "source": cfg.source, "val_source": cfg.val_source, "split": how,
        "train_rows": len(train), "val_rows": len(val), "labels": labels,
        "train_label_counts": {y: counts[y] for y in labels},
        "truncated_rows": cut_train + cut_val, "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "majority_val_accuracy": majority_accuracy(val_split.labels),
    }
    label_tokens = [tok.encode(y) for y in labels]
    if any(not ids for ids in label_tokens):
        raise UserError(f"data.labels: the empty label '' has no tokens ({cfg.source})")
    return LabeledData(train_split, val_split, labels, tok, info, label_tokens)


def majority_accuracy(labels: np.ndarray) -> float:
    """Accuracy of always answering the most frequent label of `labels` (the baseline)."""
    if len(labels) == 0:
        return math.nan
    return float(np.bincount(labels).max() / len(labels))
