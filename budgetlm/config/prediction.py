"""`Prediction`: what a plan predicted for a run, carried in a planned config's `meta.predicted`."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict

from budgetlm.config.strict import CheckedModel


class Prediction(CheckedModel):
    """What a plan predicted for a run (`meta.predicted` of a planned config). `budgetlm train`
    reports it against the actual result; a run planned from a fitted law gets predicted vs
    actual loss in result.json. The plan's other facts (params, tokens, seconds, …) ride along.
    """

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    loss: float
    """predicted final validation loss (nats/token)"""
    loss_kind: Literal["prior", "fit"]
    """prior: a published law (fitted on its own data and tokenizer); fit: this corpus's law"""
    loss_lo: float | None = None
    """lower end of the loss interval (fitted laws)"""
    loss_hi: float | None = None
    """upper end of the loss interval (fitted laws)"""
    interval_level: float | None = None
    """coverage of [loss_lo, loss_hi]"""
    bpb: float | None = None
    """predicted bits per byte (fitted laws)"""
    bpb_lo: float | None = None
    """lower end of the bits-per-byte interval"""
    bpb_hi: float | None = None
    """upper end of the bits-per-byte interval"""
