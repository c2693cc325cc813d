"""Reading the budget and corpus flags that `plan` and `calibrate` share."""

from __future__ import annotations

import math
from typing import Any

from budgetlm.config import DataConfig
from budgetlm.errors import UserError, format_validation_error
from budgetlm.plan import Budget
from budgetlm.units import parse_duration, parse_number


def _optional_number(text: str | None, flag: str) -> float | None:
    return None if text is None else parse_number(text, flag)


def parse_budget(
    *,
    gpu_hours: str | None = None,
    flops: str | None = None,
    time_budget: str | None = None,
    cost: str | None = None,
    price: str | None = None,
    gpu: str | None = None,
    gpus: str = "1",
    command: str = "plan",
) -> Budget:
    """A planner Budget from the flags as typed (--gpu-hours 8, --flops 1e19, --time 1h30m…)
    for `command` (which names the budget flags it takes when none is given)."""
    n_gpus = parse_count(gpus, "--gpus") or 1
    return Budget(
        gpu_hours=_optional_number(gpu_hours, "--gpu-hours"),
        flops=_optional_number(flops, "--flops"),
        seconds=parse_duration(time_budget) if time_budget is not None else None,
        cost=_optional_number(cost, "--cost"),
        price=_optional_number(price, "--price"),
        gpu=gpu,
        gpus=n_gpus,
        command=command,
    )


def parse_count(text: str | None, flag: str) -> int | None:
    """A positive whole count as typed ('2e6', '400M', '20k', '1000'), or None when not given."""
    if text is None:
        return None
    n = parse_number(text, flag)
    if not math.isfinite(n):
        raise UserError(f"{flag}: must be a finite number, got {text}")
    if n <= 0:
        raise UserError(f"{flag}: must be positive, got {text}")
    if n != int(n):
        raise UserError(f"{flag}: expected a whole number, got {text}")
    return int(n)


def parse_token_count(text: str | None) -> int | None:
    """--tokens as a positive whole count ('2e8', '400M'), or None when not given."""
    return parse_count(text, "--tokens")


def data_config(source: str | None, tokenizer: str | None) -> DataConfig | None:
    """The corpus of --data (with --tokenizer), or None when no corpus is given."""
    if source is None:
        if tokenizer is not None:
            raise UserError("--tokenizer: applies to --data")
        return None
    fields: dict[str, Any] = {"source": source}
    if tokenizer is not None:
        fields["tokenizer"] = tokenizer
    try:
        return DataConfig(**fields)
    except Exception as exc:  # pydantic ValidationError
        if hasattr(exc, "errors"):
            raise UserError(format_validation_error(exc, prefix="data.")) from None
        raise
