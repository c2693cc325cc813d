"""The study's sampler and pruner, built from its file, and optuna made quiet."""

from __future__ import annotations

import warnings
from typing import Any

from budgetlm.errors import UserError
from budgetlm.runner.caps import AXIS_SCALE
from budgetlm.tune.spec import Study


def quiet_optuna() -> None:
    """Only optuna's warnings, and none of its experimental-feature notes."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*(constant_liar|multivariate|group).*")


def make_sampler(study: Study, seed: int) -> Any:
    """The optuna sampler the study file names, seeded with `seed`."""
    import optuna

    s = study.spec.sampler
    n = s.n_startup_trials
    kw: dict[str, Any] = {"seed": seed}
    if s.type == "tpe":
        return optuna.samplers.TPESampler(
            **kw, n_startup_trials=10 if n is None else n, multivariate=True,
            constant_liar=True,
        )
    if s.type == "random":
        return optuna.samplers.RandomSampler(**kw)
    if s.type == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UserError("sampler: cmaes needs the `cmaes` package (pip install cmaes)") \
                from None
        return optuna.samplers.CmaEsSampler(**kw, n_startup_trials=1 if n is None else n)
    if s.type == "gp":
        return optuna.samplers.GPSampler(**kw, n_startup_trials=10 if n is None else n)
    budget = study.spec.budget.trials or 40
    return optuna.samplers.NSGAIISampler(**kw, population_size=max(4, min(50, budget // 4)))


def make_pruner(study: Study) -> Any:
    """The optuna pruner the study file names, its resources on the cap's reporting axis (a
    Pareto study is never pruned)."""
    import optuna

    spec = study.spec
    p, cap = spec.pruner, spec.trial_cap
    scale = AXIS_SCALE[cap.kind]
    if p.type == "none" or spec.multi:
        return optuna.pruners.NopPruner()
    if p.type == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=int(p.warmup * scale)
        )
    min_res = p.min_resource if p.min_resource is not None else cap.value / 9
    min_r = max(1, int(round(min_res * scale)))
    if p.type == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_r, reduction_factor=p.reduction_factor
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=min_r, max_resource=cap.axis_max, reduction_factor=p.reduction_factor
    )
