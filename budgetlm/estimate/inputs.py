"""What an estimate takes from a run config besides the model: micro-batch and precision."""

from __future__ import annotations

from budgetlm.config import PRECISIONS, RunConfig
from budgetlm.errors import UserError


def assumed_micro_batch(cfg: RunConfig, micro_batch: int | None = None) -> int:
    """The micro-batch an estimate assumes: `micro_batch` when given, else
    cfg.train.micro_batch, with "auto" counted as 1."""
    if micro_batch is not None:
        return int(micro_batch)
    mb = cfg.train.micro_batch
    return 1 if mb == "auto" else int(mb)


def checked_precision(precision: str) -> str:
    """`precision` itself when it is one of PRECISIONS; UserError otherwise."""
    if precision not in PRECISIONS:
        raise UserError(
            f"train.precision: unknown precision {precision!r}; one of {', '.join(PRECISIONS)}"
        )
    return precision
