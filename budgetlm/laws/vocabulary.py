"""The compute-optimal vocabulary (Tao et al. 2024, "Scaling Laws with Vocabulary: Larger Models
Deserve Larger Vocabularies", NeurIPS 2024).

Their approach 2 (derivative-based estimation; the three approaches agree) gives the optimal
vocabulary parameters N_v = V · d (one embedding matrix) as a power law of the non-vocabulary
parameters N_nv, fitted on models of 33M to 3B parameters:

    N_v_opt = 3,145,728 · (N_nv / 33M)^0.8354

(the coefficients of their released code, `optimal_Nv_predict.py`: 3,145,728 is the optimal
vocabulary parameters they found for their 33M non-vocabulary-parameter model). Vocabulary
parameters grow slower than the rest (exponent < 1), but they grow: a larger compute budget buys
a larger model and so a larger vocabulary. The optimal vocabulary is V = N_v_opt / d_model,
here rounded to a multiple of VOCAB_MULTIPLE (an efficient matmul width) within
[MIN_VOCAB, MAX_VOCAB].
"""

from __future__ import annotations

TAO_NV_AT_33M = 3_145_728.0  # optimal vocabulary parameters of a 33M non-vocabulary model
TAO_N_NV_REF = 33_000_000.0
TAO_GAMMA = 0.8354  # N_v_opt ∝ N_nv^gamma (approach 2 of Tao et al. 2024)
VOCAB_MULTIPLE = 64
MIN_VOCAB = 320  # a byte-level BPE's 256 bytes and some merges (data.bpe_vocab_size >= 260)
MAX_VOCAB = 262_144
VOCAB_SOURCE = ("Tao et al. 2024, Scaling Laws with Vocabulary, approach 2: "
                "N_v = 3.15M x (N_nv/33M)^0.8354, V = N_v/d_model")


def optimal_vocab_params(non_vocab_params: float) -> float:
    """N_v_opt: the compute-optimal vocabulary parameters (V · d) of a model with
    `non_vocab_params` non-vocabulary parameters (Tao et al. 2024, approach 2)."""
    return TAO_NV_AT_33M * (max(non_vocab_params, 1.0) / TAO_N_NV_REF) ** TAO_GAMMA


def optimal_vocab(non_vocab_params: float, d_model: int) -> int:
    """The compute-optimal vocabulary size V = N_v_opt / d_model, a multiple of VOCAB_MULTIPLE
    within [MIN_VOCAB, MAX_VOCAB]."""
    v = optimal_vocab_params(non_vocab_params) / max(d_model, 1)
    v = round(v / VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    return int(min(max(v, MIN_VOCAB), MAX_VOCAB))
