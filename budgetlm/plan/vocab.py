"""The planned vocabulary, in words (the law itself: `budgetlm.laws.vocabulary`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from budgetlm.laws.vocabulary import VOCAB_SOURCE

if TYPE_CHECKING:
    from budgetlm.plan.pricing import Candidate


def vocab_note(top: Candidate) -> str | None:
    """What vocabulary the exported BPE is trained with, and why (None: not chosen)."""
    if not top.vocab_chosen:
        return None
    return (f"vocabulary: a {top.vocab_size:,}-token BPE (data.bpe_vocab_size), the "
            f"compute-optimal size for this model ({VOCAB_SOURCE}); each candidate is priced "
            "with its own vocabulary's embedding and head; a corpus's token counts are those of "
            "its tokenizer as given")
