"""Published constants: loss laws, hyperparameter priors and the context-length heuristic.

Every constant here is a *prior*: fitted on somebody else's data, tokenizer and training recipe.
A loss predicted from one is a statement about that setup transported to ours, and the planner
labels it "prior".

Hyperparameter priors (DeepSeek-AI 2024, "DeepSeek LLM: Scaling Open-Source Language Models
with Longtermism", §3.1, eq. 1), C in FLOPs (their C = M·D with M the non-embedding FLOPs per
token including attention), fitted for 1e17 ≤ C ≤ 2e19 with AdamW (0.9, 0.95), weight decay 0.1:

    lr_opt(C) = 0.3118 · C^-0.125,     B_opt(C) = 0.2920 · C^0.3271   (tokens per step)

`lr_prior` holds the lr at its 1e17 value below the fitted range (see its docstring for why).
That prior is for the standard parametrization; under µP (Yang et al. 2022) the lr is
`mup_lr_prior`'s, the same at every width (Dey et al. 2023, Cerebras-GPT).
"""

from __future__ import annotations

import functools

from budgetlm.errors import UserError
from budgetlm.laws.forms import ChinchillaLaw, KaplanLaw, LossLaw

# Chinchilla (Hoffmann et al. 2022) Table 3: compute-optimal (parameters, FLOPs, tokens) from
# their approach 1 (the table's rows); used by tests as the reference allocation.
CHINCHILLA_TABLE3: tuple[tuple[float, float, float], ...] = (
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
)

CHINCHILLA = ChinchillaLaw(
    "chinchilla", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, params="total",
    source="Hoffmann et al. 2022, Training Compute-Optimal Large Language Models, eq. 10 "
           "(approach 3); MassiveText, SentencePiece 32k",
    fit_range=(7e7, 1.6e10, 5e9, 5e11),
)

EPOCH = ChinchillaLaw(
    "epoch", E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658, params="total",
    source="Besiroglu et al. 2024 (Epoch AI), Chinchilla Scaling: A replication attempt, eq. 3 "
           "(refit of Hoffmann et al.'s approach 3 data)",
    fit_range=(7e7, 1.6e10, 5e9, 5e11),
)

KAPLAN = KaplanLaw(
    "kaplan", n_c=6.4e13, d_c=1.8e13, alpha_n=0.076, alpha_d=0.103, params="non_embedding",
    source="Kaplan et al. 2020, Scaling Laws for Neural Language Models, eq. 1.5 with the L(N,D) "
           "fit of Table 2; WebText2, GPT-2 BPE; N excludes embeddings",
    fit_range=(7.7e5, 1.5e9, 2.2e7, 2.3e10),
)

PRIORS: dict[str, LossLaw] = {"epoch": EPOCH, "chinchilla": CHINCHILLA, "kaplan": KAPLAN}


def prior(name: str) -> LossLaw:
    """The published law called `name` (a key of PRIORS); UserError naming the choices."""
    if name not in PRIORS:
        raise UserError(f"--prior: unknown prior {name!r}; expected one of {', '.join(PRIORS)}")
    return PRIORS[name]


# ---------------------------------------------------------------------------------------------
# Hyperparameter priors (DeepSeek LLM 2024, §3.1)

DEEPSEEK_FIT_RANGE = (1e17, 2e19)


def lr_prior(flops: float) -> float:
    """The DeepSeek lr prior, held at its value at the low end of the fitted range below it.

    Extrapolating eta = 0.3118·C^-0.125 five decades down (minutes on a CPU, C ~ 1e12) gives
    ~8e-3. budgetlm's own runs (2-core CPU, 4x128 character GPT, 1.57M tokens of stdlib
    docstrings, AdamW) ended at 2.47 nats with 8e-3 against 1.83 with 3e-3 (4096-token batches),
    and at 1.64 with 3e-3 against 1.76 with nanoGPT's 1e-3 (768-token batches). The fitted range
    starts at 1e17 FLOPs, where eta ≈ 2.3e-3: that value is used below it.
    """
    return deepseek_lr(max(flops, DEEPSEEK_FIT_RANGE[0]))


def deepseek_lr(flops: float) -> float:
    """eta_opt = 0.3118 · C^-0.125 (AdamW peak learning rate)."""
    return 0.3118 * flops**-0.125


def deepseek_batch_tokens(flops: float) -> float:
    """B_opt = 0.2920 · C^0.3271 tokens per optimizer step."""
    return 0.2920 * flops**0.3271


# ---------------------------------------------------------------------------------------------
# µP learning-rate prior (Dey et al. 2023, Cerebras-GPT, Appendix G)

MUP_BASE_WIDTH = 256  # d_model of Cerebras-GPT's µP proxy model (40M parameters)
MUP_BASE_LR = 6e-3  # eta_base: the AdamW peak lr its hyperparameter search found
MUP_LR_SOURCE = (
    "Dey et al. 2023, Cerebras-GPT: Open Compute-Optimal Language Models Trained on the "
    "Cerebras Wafer-Scale Cluster, Appendix G: µP base d_model 256, eta_base 6e-3 "
    "(with sigma_base 0.08, m_emb 10), tuned on a 40M-parameter proxy and transferred to "
    "111M-2.7B; the values of the Cerebras Model Zoo GPT-3 README's µP section"
)


def mup_lr_prior() -> tuple[float, int]:
    """(lr, base_width): the AdamW peak lr under µP and the base width it was tuned at.

    Under µP (Yang et al. 2022, "Tensor Programs V") the optimal lr of a given base width
    transfers unchanged to every width: a model of width d trains at this lr with the
    hidden matrices' Adam lr scaled by base_width / d (model.mup_base_width = base_width). Dey
    et al. 2023 (Cerebras-GPT) searched it on a d_model = 256 proxy: eta_base = 6e-3, used for
    their µP models from 111M to 2.7B parameters (MUP_LR_SOURCE). It is not a function of
    compute, unlike the standard-parametrization `lr_prior` (DeepSeek LLM 2024). The same
    search chose sigma_base = 0.08 and an embedding multiplier of 10, which budgetlm's µP does
    not carry (it keeps model.init_std and no embedding multiplier): the lr is a prior, not a
    transferred optimum of this model.
    """
    return MUP_BASE_LR, MUP_BASE_WIDTH


# ---------------------------------------------------------------------------------------------
# Context length


@functools.lru_cache(maxsize=256)
def context_excess(seq_len: int, scale: float = 0.5) -> float:
    """Heuristic extra loss (nats/token) of training and evaluating on windows of `seq_len`.

    The published laws carry no context term, so on their own they would always pick the
    shortest window (it costs the fewest attention FLOPs). A token at position t of a window sees
    t-1 tokens of context; per-token loss falls roughly as a power of t (Kaplan et al. 2020 §D.5,
    Fig. 20 show a power law in position). budgetlm takes excess(t) = scale · t^-1/2 and averages
    it over the window: ≈ 2·scale/sqrt(T). With scale 0.5 nats the difference between 1024 and
    2048 is ~0.01 nats, between 64 and 256 ~0.06: a tie-breaker against attention cost, not a
    prediction. Labelled a heuristic wherever it is used.
    """
    t = max(1, int(seq_len))
    return scale * sum(i**-0.5 for i in range(1, t + 1)) / t if t <= 4096 else 2 * scale / t**0.5
