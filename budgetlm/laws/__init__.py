"""Scaling laws: loss forms, published constants, compute-optimal allocation, data repetition,
hyperparameter priors. Pure Python (no torch, no numpy), so `budgetlm plan` stays fast.

- `forms`: the loss laws L(N, D) (`LossLaw`; `ChinchillaLaw`, `KaplanLaw`, `MeanLaw`).
- `priors`: published constants (CHINCHILLA, EPOCH, KAPLAN, `prior`), DeepSeek's lr and batch
  priors, the µP lr prior (Cerebras-GPT's base lr and width), the context-length heuristic.
- `repetition`: Muennighoff et al.'s data-constrained scaling (effective data and parameters).
- `fitfile`: a law fitted on this corpus, from a fit.json (`law_from_fit`).
- `stats`: quantiles, prediction intervals, minimization on a log scale, interpolation.
- `fitting` (numpy, scipy): fitting the forms to runs; `entropy`: compression-rate bounds.
"""

from budgetlm.laws.fitfile import flatten_fit_file, law_from_fit
from budgetlm.laws.forms import ChinchillaLaw, KaplanLaw, LossLaw, MeanLaw, SingleFormLaw
from budgetlm.laws.priors import (
    CHINCHILLA,
    CHINCHILLA_TABLE3,
    DEEPSEEK_FIT_RANGE,
    EPOCH,
    KAPLAN,
    MUP_BASE_LR,
    MUP_BASE_WIDTH,
    MUP_LR_SOURCE,
    PRIORS,
    context_excess,
    deepseek_batch_tokens,
    deepseek_lr,
    lr_prior,
    mup_lr_prior,
    prior,
)
from budgetlm.laws.repetition import (
    MUENNIGHOFF_MIN_PARAMS,
    R_D_STAR,
    R_N_STAR,
    data_constrained_optimal,
    effective_data,
    effective_params,
    epochs,
    excess_params_base,
)
from budgetlm.laws.stats import (
    geometric_mean,
    interpolate,
    interval_about,
    minimize_log,
    optimal_split,
    quantile,
)

__all__ = [
    "CHINCHILLA",
    "CHINCHILLA_TABLE3",
    "DEEPSEEK_FIT_RANGE",
    "EPOCH",
    "KAPLAN",
    "MUENNIGHOFF_MIN_PARAMS",
    "MUP_BASE_LR",
    "MUP_BASE_WIDTH",
    "MUP_LR_SOURCE",
    "PRIORS",
    "R_D_STAR",
    "R_N_STAR",
    "ChinchillaLaw",
    "KaplanLaw",
    "LossLaw",
    "MeanLaw",
    "SingleFormLaw",
    "context_excess",
    "data_constrained_optimal",
    "deepseek_batch_tokens",
    "deepseek_lr",
    "effective_data",
    "effective_params",
    "epochs",
    "excess_params_base",
    "flatten_fit_file",
    "geometric_mean",
    "interpolate",
    "interval_about",
    "law_from_fit",
    "lr_prior",
    "minimize_log",
    "mup_lr_prior",
    "optimal_split",
    "prior",
    "quantile",
]
