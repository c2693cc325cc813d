"""A trial's eval records, reported to the pruner on the cap's axis.

Intermediate values are reported at steps of an integer axis (elapsed milliseconds, tokens,
MFLOPs or steps), snapped to a grid of `evals` cells over the cap so that trials report at the
same steps (MedianPruner compares values at equal steps).
"""

from __future__ import annotations

import math
from typing import Any

from budgetlm.runner.caps import AXIS_SCALE, RECORD_FIELD
from budgetlm.tune import storage as st
from budgetlm.tune.schema import StudySpec


def axis_step(units: float, axis_max: int, grid: int) -> int:
    """The reporting step of a resource value: snapped down to a grid of `grid` cells over the
    cap, so trials report at the same steps (MedianPruner compares values at equal steps)."""
    cell = math.floor(units * grid / axis_max + 1e-9)
    return int(round(cell * axis_max / grid))


class PruneReporter:
    """`report(rec)` for budgetlm.runner.process: reports the eval record `rec` to the pruner
    and returns why the trial should stop, or None. Only single-objective studies on val_bpb,
    val_loss or val_error (1 - the record's val_accuracy) with a pruner report anything."""

    def __init__(self, trial: Any, spec: StudySpec):
        self.trial = trial
        self.spec = spec
        self.target = spec.objectives[0]
        self.enabled = not spec.multi and self.target in ("val_bpb", "val_loss", "val_error") and (
            spec.pruner.type != "none"
        )
        self.kind = spec.trial_cap.kind
        self.scale = AXIS_SCALE[self.kind]
        self.grid = spec.evals or 10
        self.last_step = -1

    def __call__(self, rec: dict[str, Any]) -> str | None:
        value = rec.get(self.target)
        if self.target == "val_error" and rec.get("val_accuracy") is not None:
            value = 1.0 - float(rec["val_accuracy"])
        if not self.enabled or value is None or not math.isfinite(float(value)):
            return None
        axis = rec.get(RECORD_FIELD[self.kind])
        cap = self.spec.trial_cap
        step = axis_step(float(axis or 0.0) * self.scale, cap.axis_max, self.grid)
        if step <= self.last_step:
            return None  # a second eval in the same grid cell adds nothing for the pruner
        self.last_step = step
        st.retry(self.trial.report, float(value), step)
        if not st.retry(self.trial.should_prune):
            return None
        kind = self.kind
        where = f"{float(axis):.1f} s" if kind == "time" else f"{float(axis):.3g} {kind}"
        return (f"pruned by {self.spec.pruner.type} at {where} "
                f"({self.target} {float(value):.4f})")
