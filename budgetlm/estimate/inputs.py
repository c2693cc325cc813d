"""What an estimate takes from a run config besides the model: micro-batch and precision."""

from __future__ import annotations

import operator

from budgetlm.config import PRECISIONS, RunConfig, tokens_per_step
from budgetlm.errors import UserError

# Tokens per optimizer step beyond which no estimate is given: about 1e8 times the largest
# batches trained with (Llama 3 405B: 16M tokens per step).
MAX_TOKENS_PER_STEP = 10**15


def assumed_micro_batch(cfg: RunConfig, micro_batch: int | None = None) -> int:
    """The micro-batch an estimate assumes: `micro_batch` when given, else
    cfg.train.micro_batch, with "auto" counted as 1. UserError unless it is a whole number
    >= 1 whose micro-batch of tokens stays within MAX_TOKENS_PER_STEP."""
    mb = cfg.train.micro_batch if micro_batch is None else micro_batch
    if mb == "auto":
        return 1
    try:
        whole = None if isinstance(mb, bool) else operator.index(mb)
    except TypeError:
        whole = None
    if whole is None or whole < 1:
        raise UserError(f"train.micro_batch: must be a whole number >= 1 or auto, got {mb!r}")
    mb = whole
    if mb * cfg.model.seq_len > MAX_TOKENS_PER_STEP:
        raise UserError(
            f"train.micro_batch x model.seq_len: {mb} x {cfg.model.seq_len} tokens per "
            f"micro-batch is beyond any hardware; estimates stop at {MAX_TOKENS_PER_STEP:.0e}"
        )
    return mb


def checked_tokens_per_step(cfg: RunConfig, micro_batch: int) -> int:
    """Tokens per optimizer step at `micro_batch`; UserError beyond MAX_TOKENS_PER_STEP."""
    tokens = tokens_per_step(micro_batch, cfg.train.grad_accum, cfg.model.seq_len)
    if tokens > MAX_TOKENS_PER_STEP:
        raise UserError(
            f"train.micro_batch x train.grad_accum x model.seq_len: {micro_batch} x "
            f"{cfg.train.grad_accum} x {cfg.model.seq_len} tokens per step is beyond any "
            f"hardware; estimates stop at {MAX_TOKENS_PER_STEP:.0e}"
        )
    return tokens


def checked_precision(precision: str) -> str:
    """`precision` itself when it is one of PRECISIONS; UserError otherwise."""
    if precision not in PRECISIONS:
        raise UserError(
            f"train.precision: unknown precision {precision!r}; one of {', '.join(PRECISIONS)}"
        )
    return precision
