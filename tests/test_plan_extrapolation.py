"""A plan from a calibration fit prices sizes up to FIT_SIZE_SPAN times the fit's largest pilot
and says so when the fit's optimum lies beyond; a prior is not held."""

from __future__ import annotations

from typing import Any

from fakes import fake_cpu_profile

from budgetlm.plan import Budget, plan
from budgetlm.plan.extrapolation import FIT_SIZE_SPAN

UNIQUE = 855_000
LARGEST_PILOT = 458_976


def _fit(**more: Any) -> dict[str, Any]:
    """The fit a 60-minute calibration on ~1M characters made on this CPU (a data exponent
    above 1: its optimum runs to many times its largest pilot)."""
    return {
        "kind": "budgetlm-fit", "law": {"E": 1.7087, "A": 17.4028, "B": 41474094.7,
                                        "alpha": 0.33539, "beta": 1.42575},
        "residual_std": 0.03, "interval_level": 0.9, "seq_len": 64, "precision": "fp32",
        "unique_tokens": UNIQUE, "fit_range": [17_632, LARGEST_PILOT, 485_888, 9_066_928],
        "pilots": [{"state": "complete", "epochs": 16.0, "tokens": 16.0 * UNIQUE}], **more,
    }


def _plan(fit: dict[str, Any] | None) -> Any:
    return plan(Budget(seconds=2760), tokens=UNIQUE, fit=fit,
                profile=fake_cpu_profile(bf16=None), timing=False)


def test_a_fit_plans_within_its_pilots_reach() -> None:
    held = _plan(_fit())
    cap = FIT_SIZE_SPAN * LARGEST_PILOT
    assert held.candidates and all(c.params <= cap for c in held.candidates)
    note = next(n for n in held.notes if n.startswith("size:"))
    assert "459K" in note and "4x" in note
    free = _plan({k: v for k, v in _fit().items() if k != "fit_range"})  # no range: no cap
    assert free.candidates[0].params > cap
    assert not any(n.startswith("size:") for n in free.notes)


def test_a_prior_is_not_held() -> None:
    p = _plan(None)
    assert not any(n.startswith("size:") for n in p.notes)
