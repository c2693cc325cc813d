"""The hard cap of one trial (`TrialCap`): time, tokens, FLOPs or steps, and the kill limits.

The cap is also the resource axis that intermediate values are reported on: elapsed
milliseconds, tokens, MFLOPs or steps (`AXIS_SCALE` converts cap units to that integer axis).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CapKind = Literal["time", "tokens", "flops", "steps"]
CAP_KINDS: tuple[str, ...] = CapKind.__args__  # type: ignore[attr-defined]
# The TrainConfig field that carries each kind of cap.
CAP_FIELDS = {
    "time": "max_time", "tokens": "max_tokens", "flops": "max_flops", "steps": "max_steps"
}
# Intermediate values are reported on an integer axis: elapsed milliseconds, tokens, MFLOPs, steps.
AXIS_SCALE = {"time": 1000.0, "tokens": 1.0, "flops": 1e-6, "steps": 1.0}
AXIS_UNIT = {"time": "ms", "tokens": "tokens", "flops": "MFLOP", "steps": "steps"}
# Where each kind of cap's resource is in a metrics record (metrics.jsonl).
RECORD_FIELD = {"time": "elapsed", "tokens": "tokens", "flops": "flops", "steps": "step"}


class TrialCap(BaseModel):
    """The hard cap of one trial: exactly one of time, tokens, flops or steps. It is also the
    resource axis that intermediate values are reported on (so pruners act on the budget)."""

    model_config = ConfigDict(extra="forbid")

    time: float | None = Field(None, gt=0.0, description="wall seconds of training per trial")
    tokens: int | None = Field(None, ge=1, description="training tokens per trial")
    flops: float | None = Field(None, gt=0.0, description="training FLOPs per trial (estimated)")
    steps: int | None = Field(None, ge=1, description="optimizer steps per trial")
    grace: float | None = Field(
        None, ge=0.0,
        description="seconds past cap x 1.1 before the tuner kills a time-capped trial "
        "(default 5 + 10% of the cap; covers the final eval and checkpoint)",
    )
    startup: float = Field(
        300.0, gt=0.0, description="seconds a trial may take to start training before it is killed"
    )
    stall: float = Field(
        600.0, gt=0.0,
        description="seconds without a new metrics line (after training starts) before a trial "
        "counts as hung and is killed",
    )

    @model_validator(mode="after")
    def _one_cap(self) -> TrialCap:
        given = [k for k in CAP_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of time, tokens, flops or steps"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in CAP_KINDS if getattr(self, k) is not None)

    @property
    def value(self) -> float:
        return float(getattr(self, self.kind))

    @property
    def grace_seconds(self) -> float:
        return 5.0 + 0.1 * self.value if self.grace is None else self.grace

    @property
    def axis_max(self) -> int:
        """The cap on the integer reporting axis."""
        return max(1, int(round(self.value * AXIS_SCALE[self.kind])))

    @property
    def kill_after(self) -> float | None:
        """Seconds after training started at which a time-capped trial is killed (None: no
        such limit for other caps)."""
        return self.value * 1.1 + self.grace_seconds if self.kind == "time" else None

    def describe(self) -> str:
        v = self.value
        if self.kind == "time":
            return f"{v:g} s"
        if self.kind == "flops":
            return f"{v:.3g} FLOPs"
        return f"{int(v):,} {self.kind}"
