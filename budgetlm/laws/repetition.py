"""Data-constrained scaling (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models").

With U unique tokens seen for D total tokens (epochs = D/U, R = epochs - 1 repetitions), eq. 5:

    D' = U + U · R_D* · (1 - exp(-R / R_D*)),     R_D* = 15.4 (fitted 15.387)

and likewise for parameters in excess of U_N, the compute-optimal size for U tokens
(R_N = N/U_N - 1, R_N* = 5.3, fitted 5.309): N' = U_N + U_N·R_N*·(1 - exp(-R_N/R_N*)),
with U_N held at >= 10M parameters, the smallest models they fitted it on. The loss is then
L(N', D'). Up to ~4 epochs D' ≈ D: repeated data is nearly as good as new; with scarce data the
compute-optimal allocation moves to more epochs and fewer parameters than Chinchilla's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from budgetlm.laws.stats import optimal_split

if TYPE_CHECKING:
    from budgetlm.laws.forms import LossLaw

# Muennighoff et al. 2023, §3.1 / eq. 5: fitted decay constants of repeated data and excess
# parameters.
R_D_STAR = 15.4
R_N_STAR = 5.3
# Their models spanned 10M to 9B parameters: the excess-parameter decay is not applied to
# models smaller than this (see `excess_params_base`).
MUENNIGHOFF_MIN_PARAMS = 1e7


def epochs(tokens: float, unique: float | None) -> float:
    """Passes over the unique data that `tokens` training tokens take (1.0 when unlimited)."""
    if unique is None or unique <= 0:
        return 1.0
    return max(1.0, tokens / unique)


def effective_data(tokens: float, unique: float, r_star: float = R_D_STAR) -> float:
    """D' = U + U·R*·(1 - exp(-R/R*)), R = tokens/U - 1 (Muennighoff et al. 2023, eq. 5)."""
    if tokens <= unique:
        return tokens
    r = tokens / unique - 1
    return unique + unique * r_star * (1 - math.exp(-r / r_star))


def excess_params_base(law: LossLaw, unique: float) -> float:
    """U_N: the size beyond which parameters decay in value (Muennighoff et al. eq. 5), i.e. the
    law's compute-optimal size for `unique` tokens, held at the smallest model the decay was
    fitted on (MUENNIGHOFF_MIN_PARAMS): below it the decay would be extrapolated from the prior's
    tokens-per-parameter ratio, not observed."""
    return max(law.params_for_tokens(unique), MUENNIGHOFF_MIN_PARAMS)


def effective_params(n: float, base: float, r_star: float = R_N_STAR) -> float:
    """N' = U_N + U_N·R_N*·(1 - exp(-R_N/R_N*)), R_N = N/U_N - 1 (Muennighoff et al. eq. 5)."""
    if n <= base:
        return n
    r = n / base - 1
    return base + base * r_star * (1 - math.exp(-r / r_star))


def repeated_data_loss(law: LossLaw, n: float, d: float, unique: float | None,
                       excess_params: bool = True) -> float:
    """L(N', D') of one law form: D tokens drawn from `unique` unique tokens (None: unlimited
    data, plain L(N, D)); excess_params: also discount parameters beyond U_N (the N' term)."""
    if unique is None or unique <= 0 or d <= unique:
        return law.loss(n, d)
    d_eff = effective_data(d, unique)
    n_eff = n
    if excess_params:
        n_eff = effective_params(n, excess_params_base(law, unique))
    return law.loss(n_eff, d_eff)


def data_constrained_optimal(
    law: LossLaw, flops: float, unique: float | None, excess_params: bool = True
) -> tuple[float, float]:
    """(N, D) minimizing the data-constrained loss under 6·N·D = flops."""
    if unique is None:
        return law.optimal(flops)
    return optimal_split(lambda n, d: law.loss_repeated(n, d, unique, excess_params), flops)
