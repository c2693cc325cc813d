"""Corpora, tokenizers, the token cache and batches.

`load_corpus(cfg.data)` turns a `DataConfig` into a `Corpus`: two 1-D token arrays (train, val),
the tokenizer that made them, the UTF-8 bytes behind each split (for bits per byte) and, for the
synthetic Markov source, the exact entropy rate. torch is imported only inside the batch
functions, so the planner can count tokens without it.

- `sources`: source specs, reading documents, the synthetic Markov chain.
- `tokenizers`: byte, char, bpe and symbol tokenizers.
- `corpus`: the split, the token cache, `load_corpus`, `count_tokens`.
- `batches`: `sample_batch`, `val_batches`, `bits_per_byte`.
- `labeled`: labeled text for classification (.jsonl, .csv, .parquet), split and tokenized.
- `stories`: generated stories with two-fact questions (labeled rows and unlabeled text).
- `reviews`: generated reviews whose sentiment negation and "but" decide (labeled rows
  and unlabeled text).
- `spans`: t5 span corruption (`span_corrupt`) and the t5 vocabulary layout (`t5_vocabulary`).
"""

from budgetlm.data.batches import bits_per_byte, sample_batch, val_batches
from budgetlm.data.corpus import CACHE_VERSION, Corpus, cache_root, count_tokens, load_corpus
from budgetlm.data.labeled import LabeledData, LabeledSplit, load_labeled
from budgetlm.data.sources import MAX_MARKOV_STATES, MarkovChain
from budgetlm.data.spans import T5Vocabulary, span_corrupt, span_lengths, t5_vocabulary
from budgetlm.data.tokenizers import (
                                      TOKENIZER_META,
                                      UNK_CHAR,
                                      BpeTokenizer,
                                      ByteTokenizer,
                                      CharTokenizer,
                                      SymbolTokenizer,
                                      Tokenizer,
                                      load_tokenizer,
)

__all__ = [
    "CACHE_VERSION",
    "MAX_MARKOV_STATES",
    "TOKENIZER_META",
    "UNK_CHAR",
    "BpeTokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "Corpus",
    "LabeledData",
    "LabeledSplit",
    "MarkovChain",
    "SymbolTokenizer",
    "T5Vocabulary",
    "Tokenizer",
    "bits_per_byte",
    "cache_root",
    "count_tokens",
    "load_corpus",
    "load_labeled",
    "load_tokenizer",
    "sample_batch",
    "span_corrupt",
    "span_lengths",
    "t5_vocabulary",
    "val_batches",
]
