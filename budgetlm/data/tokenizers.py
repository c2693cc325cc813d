"""Tokenizers: byte, char, byte-level BPE and the identity "symbol" tokenizer of synthetic sources.

byte (256 ids, the UTF-8 bytes); char (the sorted characters of the source corpus, both splits,
ids 0..n-1 exactly as nanoGPT's shakespeare_char, plus <unk> = n for characters seen only later,
e.g. in val_source); bpe (HF `tokenizers` ByteLevel BPE trained on the TRAIN split; lossless on
any text); pretrained (the `tokenizer.json` of `model.from_pretrained`, read with `tokenizers`,
encoded without special tokens). The markov source ignores `DataConfig.tokenizer`: its tokens
ARE the symbols, and its tokenizer is the identity "symbol" tokenizer (symbol i <-> chr(i)); one
symbol counts as one byte for bits per byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from budgetlm.data.sources import reading
from budgetlm.errors import UserError

TOKENIZER_META = "budgetlm_tokenizer.json"
UNK_CHAR = "\ufffd"  # what <unk> decodes to


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
        return list(self.hf.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([int(i) for i in ids])

    def encode_array(self, text: str) -> np.ndarray:
        # Chunks end at newlines, so this equals encoding the whole text except where a chunk
        # boundary falls inside a run of whitespace; decoding is lossless either way.
        encs = self.hf.encode_batch(list(_line_chunks(text)), add_special_tokens=False)
        parts = [np.asarray(e.ids, dtype=np.int64) for e in encs]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def save(self, directory: str | Path) -> Path:
        d = super().save(directory)
        self.hf.save(str(d / self.HF_FILE))
        return d


class PretrainedTokenizer(BpeTokenizer):
    """A Hugging Face model's own `tokenizer.json` (any `tokenizers` model: BPE, Unigram,
    WordPiece); its ids are the pretrained model's. No BOS/EOS is added: the corpus is one
    stream of text ids."""

    name = "pretrained"
    HF_FILE = "tokenizer.json"

    def __init__(self, hf: Any):
        super().__init__(hf)
        # ids may have gaps (added tokens): the vocabulary is the largest id + 1
        largest = max(hf.get_vocab().values(), default=-1)
        self.vocab_size = max(int(hf.get_vocab_size()), largest + 1)

    @classmethod
    def from_dir(cls, directory: str | Path) -> PretrainedTokenizer:
        """The tokenizer.json of a Hugging Face model directory."""
        path = Path(directory).expanduser() / cls.HF_FILE
        if not path.is_file():
            raise UserError(
                f"data.tokenizer: pretrained needs {path} (model.from_pretrained has no "
                f"{cls.HF_FILE}; use data.tokenizer byte, char or bpe)"
            )
        return cls(_read_hf_tokenizer(path))


def _read_hf_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer as HFTokenizer

    with reading("", path):
        text = path.read_text(encoding="utf-8", errors="replace")
    try:
        return HFTokenizer.from_str(text)
    except Exception:  # the tokenizers library raises a bare Exception on a bad file
        raise UserError(f"{path}: not a readable tokenizers file") from None


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
    with reading("", meta_path):
        if not meta_path.is_file():
            raise UserError(f"{d}: no tokenizer here (expected {TOKENIZER_META})")
        text = meta_path.read_text(encoding="utf-8", errors="replace")
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path}: not a tokenizer file (expected a JSON object)")
    name = meta.get("name")
    if name == "byte":
        return ByteTokenizer()
    if name == "char" and isinstance(meta.get("chars"), str):
        return CharTokenizer(meta["chars"])
    if name == "symbol" and isinstance(meta.get("vocab_size"), int):
        return SymbolTokenizer(meta["vocab_size"])
    if name == "bpe":
        return BpeTokenizer(_read_hf_tokenizer(d / BpeTokenizer.HF_FILE))
    if name == "pretrained":
        return PretrainedTokenizer(_read_hf_tokenizer(d / PretrainedTokenizer.HF_FILE))
    if name in ("char", "symbol"):
        raise UserError(f"{meta_path}: incomplete {name} tokenizer (missing or invalid fields)")
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
