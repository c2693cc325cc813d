"""The distributions of a study's search space: float, int or categorical."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid")


class FloatParam(StrictModel):
    """A float in [low, high], optionally log-uniform or on a grid of `step`."""

    type: Literal["float"]
    low: float = Field(description="lowest value")
    high: float = Field(description="highest value")
    log: bool = Field(False, description="sample log-uniformly (low must be > 0)")
    step: float | None = Field(None, gt=0.0, description="grid spacing (not with log)")

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: low ({self.low}) must be > 0")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot both be set")
        return self


class IntParam(StrictModel):
    """An integer in [low, high], optionally log-uniform or on a grid of `step`."""

    type: Literal["int"]
    low: int = Field(description="lowest value")
    high: int = Field(description="highest value")
    log: bool = Field(False, description="sample log-uniformly (low must be >= 1)")
    step: int = Field(1, ge=1, description="grid spacing")

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low < 1:
            raise ValueError(f"log: low ({self.low}) must be >= 1")
        if self.log and self.step != 1:
            raise ValueError("step and log cannot both be set")
        return self


Scalar = None | bool | int | float | str


class CategoricalParam(StrictModel):
    """One of a list of choices."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1, description="the values to choose from")

    @field_validator("choices")
    @classmethod
    def _unique(cls, v: list[Scalar]) -> list[Scalar]:
        seen: list[str] = []
        for c in v:
            key = json.dumps(c)
            if key in seen:
                raise ValueError(f"duplicate choice {c!r}")
            seen.append(key)
        return v


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def suggest_params(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """Ask the optuna `trial` for a value of each distribution in `space`."""
    params: dict[str, Any] = {}
    for key, d in space.items():
        if isinstance(d, FloatParam):
            params[key] = trial.suggest_float(key, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, CategoricalParam):
            params[key] = trial.suggest_categorical(key, d.choices)
        else:
            params[key] = trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
    return params
