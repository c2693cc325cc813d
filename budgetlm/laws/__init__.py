"""Scaling laws: loss forms, published constants, compute-optimal allocation, data repetition,
hyperparameter priors. Pure Python (no torch, no numpy), so `budgetlm plan` stays fast.

Every constant here is a *prior*: fitted on somebody else's data, tokenizer and training recipe.
A loss predicted from one is a statement about that setup transported to ours, and the planner
labels it "prior". A law refitted on this corpus (a later step: pilot runs, Huber loss in log
space as Chinchilla did) enters through `law_from_fit` with the same L(N, D) form and is labelled
"fit".

Forms
-----
Chinchilla form (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", eq. 2):

    L(N, D) = E + A / N^alpha + B / D^beta          N: parameters, D: training tokens

minimized under C = 6·N·D (Kaplan et al. 2020 §2.1) in closed form (Hoffmann et al. eq. 4):

    N_opt(C) = G · (C/6)^a,   D_opt(C) = G^-1 · (C/6)^b,
    G = (alpha·A / (beta·B))^(1/(alpha+beta)),   a = beta/(alpha+beta),   b = alpha/(alpha+beta).

Kaplan form (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", eq. 1.5 / 4.1,
constants from Table 2, the joint L(N, D) fit), N counting non-embedding parameters:

    L(N, D) = [ (N_c/N)^(alpha_N/alpha_D) + D_c/D ]^alpha_D

Data-constrained (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models", eq. 5):
with U unique tokens seen for D total tokens (epochs = D/U, R = epochs - 1 repetitions),

    D' = U + U · R_D* · (1 - exp(-R / R_D*)),     R_D* = 15.4 (fitted 15.387)

and likewise for parameters in excess of U_N, the compute-optimal size for U tokens
(R_N = N/U_N - 1, R_N* = 5.3, fitted 5.309): N' = U_N + U_N·R_N*·(1 - exp(-R_N/R_N*)),
with U_N held at >= 10M parameters, the smallest models they fitted it on. The loss is then
L(N', D'). Up to ~4 epochs D' ≈ D: repeated data is nearly as good as new; with scarce data the
compute-optimal allocation moves to more epochs and fewer parameters than Chinchilla's.

Hyperparameter priors (DeepSeek-AI 2024, "DeepSeek LLM: Scaling Open-Source Language Models
with Longtermism", §3.1, eq. 1), C in FLOPs (their C = M·D with M the non-embedding FLOPs per
token including attention), fitted for 1e17 ≤ C ≤ 2e19 with AdamW (0.9, 0.95), weight decay 0.1:

    lr_opt(C) = 0.3118 · C^-0.125,     B_opt(C) = 0.2920 · C^0.3271   (tokens per step)

`lr_prior` holds the lr at its 1e17 value below the fitted range (see its docstring for why).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from budgetlm.errors import UserError

# Muennighoff et al. 2023, §3.1 / eq. 5: fitted decay constants of repeated data and excess
# parameters.
R_D_STAR = 15.4
R_N_STAR = 5.3
# Their models spanned 10M to 9B parameters: the excess-parameter decay is not applied to
# models smaller than this (see `excess_params_base`).
MUENNIGHOFF_MIN_PARAMS = 1e7

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


@dataclass(frozen=True)
class LossLaw:
    """A loss law L(N, D) in nats/token with its provenance.

    form: "chinchilla" (E + A/N^alpha + B/D^beta), "kaplan" ([(Nc/N)^(aN/aD) + Dc/D]^aD) or
      "mean": the geometric mean of `members`' losses (laws of other forms fitted to the same
      runs), whose interval spans all of theirs (`interval`).
    params: which parameter count N means: "total" (Chinchilla and Epoch count every parameter,
    embeddings included) or "non_embedding" (Kaplan).
    kind: "prior" (published constants) or "fit" (fitted on this corpus).
    fit_range: (N_min, N_max, D_min, D_max) of the runs the constants were fitted on; a prediction
    outside it is an extrapolation.
    """

    name: str
    form: str
    E: float = 0.0
    A: float = 0.0
    B: float = 0.0
    alpha: float = 0.0
    beta: float = 0.0
    n_c: float = 0.0
    d_c: float = 0.0
    alpha_n: float = 0.0
    alpha_d: float = 0.0
    params: str = "total"
    kind: str = "prior"
    source: str = ""
    unit: str = "nats/token"
    fit_range: tuple[float, float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    members: tuple[LossLaw, ...] = ()

    # -- the law --------------------------------------------------------------------------------
    def loss(self, n: float, d: float) -> float:
        """Predicted loss (nats/token, the law's own tokenizer) of N parameters after D tokens."""
        if n <= 0 or d <= 0:
            return math.inf
        if self.form == "chinchilla":
            return self.E + self.A / n**self.alpha + self.B / d**self.beta
        if self.form == "kaplan":
            return ((self.n_c / n) ** (self.alpha_n / self.alpha_d) + self.d_c / d) ** self.alpha_d
        if self.form == "mean":
            return _geometric_mean([m.loss(n, d) for m in self.members])
        raise ValueError(f"unknown law form {self.form!r}")

    def n_of(self, total: float, non_embedding: float) -> float:
        """The parameter count this law means, from a model's total and non-embedding counts."""
        return non_embedding if self.params == "non_embedding" else total

    # -- compute-optimal allocation ---------------------------------------------------------------
    def optimal(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimizing L(N, D) under 6·N·D = flops."""
        if flops <= 0:
            raise ValueError("flops must be positive")
        if self.form == "chinchilla":
            g = self.G
            a, b = self.beta / (self.alpha + self.beta), self.alpha / (self.alpha + self.beta)
            return g * (flops / 6) ** a, (flops / 6) ** b / g
        if self.form == "kaplan":
            # d/dN [(Nc/N)^p + 6·Dc·N/C] = 0  ->  N^(p+1) = p·Nc^p·C / (6·Dc)
            p = self.alpha_n / self.alpha_d
            n = math.exp((math.log(p) + p * math.log(self.n_c) + math.log(flops / 6)
                          - math.log(self.d_c)) / (p + 1))
            return n, flops / (6 * n)
        n = minimize_log(lambda x: self.loss(x, flops / (6 * x)), 1.0, flops / 6)
        return n, flops / (6 * n)

    @property
    def G(self) -> float:  # noqa: N802 - Hoffmann et al.'s symbol
        """Hoffmann et al. eq. 4: G = (alpha·A / (beta·B))^(1/(alpha+beta))."""
        if self.form != "chinchilla":
            raise ValueError("G is defined for the Chinchilla form only")
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    def params_for_tokens(self, tokens: float) -> float:
        """U_N: the compute-optimal size for `tokens` tokens (Muennighoff et al.'s base params)."""
        if self.form == "chinchilla":
            a, b = self.beta / (self.alpha + self.beta), self.alpha / (self.alpha + self.beta)
            c6 = (tokens * self.G) ** (1 / b)
            return self.G * c6**a
        if self.form == "kaplan":  # the optimum above solved for N at D_opt = tokens
            p = self.alpha_n / self.alpha_d
            return self.n_c * (p * tokens / self.d_c) ** (1 / p)
        # numeric: find C with D_opt(C) = tokens (D_opt grows monotonically in C)
        lo, hi = math.log(6 * tokens), math.log(6 * tokens) + 80
        for _ in range(200):
            mid = (lo + hi) / 2
            if self.optimal(math.exp(mid))[1] < tokens:
                lo = mid
            else:
                hi = mid
        return self.optimal(math.exp(lo))[0]

    # -- with repeated data -----------------------------------------------------------------------
    def loss_repeated(
        self, n: float, d: float, unique: float | None, excess_params: bool = True
    ) -> float:
        """L(N', D') of Muennighoff et al. 2023: D tokens drawn from `unique` unique tokens.

        unique None: unlimited data (plain L(N, D)). excess_params: also discount parameters
        beyond the compute-optimal size for `unique` tokens (their N' term).
        """
        if self.form == "mean":
            return _geometric_mean(
                [m.loss_repeated(n, d, unique, excess_params) for m in self.members])
        if unique is None or unique <= 0 or d <= unique:
            return self.loss(n, d)
        d_eff = effective_data(d, unique)
        n_eff = n
        if excess_params:
            n_eff = effective_params(n, excess_params_base(self, unique))
        return self.loss(n_eff, d_eff)

    # -- uncertainty of a fitted law ----------------------------------------------------------
    @functools.cached_property
    def _bootstrap_laws(self) -> tuple[LossLaw, ...]:
        sets = self.extra.get("bootstrap") or []
        if self.form == "kaplan":
            return tuple(
                LossLaw(name=self.name, form="kaplan", n_c=nc, d_c=dc, alpha_n=an, alpha_d=ad,
                        params=self.params, kind=self.kind)
                for nc, dc, an, ad in sets
            )
        return tuple(
            LossLaw(name=self.name, form="chinchilla", E=e, A=a, B=b, alpha=al, beta=be,
                    params=self.params, kind=self.kind)
            for e, a, b, al, be in sets
        )

    @property
    def has_interval(self) -> bool:
        if self.form == "mean":
            return any(m.has_interval for m in self.members)
        return bool(self.extra.get("bootstrap")) or bool(self.extra.get("residual_std"))

    def interval(
        self, n: float, d: float, unique: float | None = None, level: float | None = None
    ) -> tuple[float, float, float]:
        """(point, lo, hi) of L(N', D'): the bootstrap refits' spread (parameter uncertainty,
        `extra["bootstrap"]`) and the scatter of single runs about the law (`residual_std`, log
        space) combined in quadrature on each side; `level` defaults to the fit's own."""
        point = self.loss_repeated(n, d, unique)
        lvl = float(level if level is not None else self.extra.get("interval_level", 0.9))
        if self.form == "mean":  # every member's interval inside: the forms' disagreement too
            spans = [m.interval(n, d, unique, lvl) for m in self.members]
            return point, min(s[1] for s in spans), max(s[2] for s in spans)
        preds = [b.loss_repeated(n, d, unique) for b in self._bootstrap_laws]
        return interval_about(point, preds, float(self.extra.get("residual_std") or 0.0), lvl)

    def in_range(self, n: float, d: float) -> bool:
        if self.fit_range is None:
            return True
        n0, n1, d0, d1 = self.fit_range
        return n0 <= n <= n1 and d0 <= d <= d1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: v for k, v in d.items() if v not in (0.0, None, {}, "", ())}


def _geometric_mean(xs: list[float]) -> float:
    if not xs or any(not (x > 0) for x in xs):
        return math.inf
    if any(math.isinf(x) for x in xs):
        return math.inf
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


# ---------------------------------------------------------------------------------------------
# Published constants (priors)

CHINCHILLA = LossLaw(
    name="chinchilla", form="chinchilla",
    E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, params="total",
    source="Hoffmann et al. 2022, Training Compute-Optimal Large Language Models, eq. 10 "
           "(approach 3); MassiveText, SentencePiece 32k",
    fit_range=(7e7, 1.6e10, 5e9, 5e11),
)

EPOCH = LossLaw(
    name="epoch", form="chinchilla",
    E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658, params="total",
    source="Besiroglu et al. 2024 (Epoch AI), Chinchilla Scaling: A replication attempt, eq. 3 "
           "(refit of Hoffmann et al.'s approach 3 data)",
    fit_range=(7e7, 1.6e10, 5e9, 5e11),
)

KAPLAN = LossLaw(
    name="kaplan", form="kaplan",
    n_c=6.4e13, d_c=1.8e13, alpha_n=0.076, alpha_d=0.103, params="non_embedding",
    source="Kaplan et al. 2020, Scaling Laws for Neural Language Models, eq. 1.5 with the L(N,D) "
           "fit of Table 2; WebText2, GPT-2 BPE; N excludes embeddings",
    fit_range=(7.7e5, 1.5e9, 2.2e7, 2.3e10),
)

PRIORS: dict[str, LossLaw] = {"epoch": EPOCH, "chinchilla": CHINCHILLA, "kaplan": KAPLAN}


def prior(name: str) -> LossLaw:
    if name not in PRIORS:
        raise UserError(f"--prior: unknown prior {name!r}; expected one of {', '.join(PRIORS)}")
    return PRIORS[name]


def law_from_fit(fit: dict[str, Any]) -> LossLaw:
    """A law fitted on this corpus: a Chinchilla-form {E, A, B, alpha, beta[, name, source, ...]},
    or a whole fit.json written by `budgetlm calibrate` (kind "budgetlm-fit").

    The hook through which a fitted law (from pilot runs) replaces the prior in `plan(fit=...)`.
    Extra keys (bootstrap, residual_std, interval_level, seq_len, precision, bpb_per_nat, ...)
    are kept in `extra`. When the fit also holds a Kaplan-form fit of the same runs
    (`forms.kaplan`, as calibrate writes), the law is form "mean" over the two: predictions are
    their geometric mean and every interval spans both forms' intervals.
    """
    if fit.get("kind") == "budgetlm-fit":
        fit = flatten_fit_file(fit)
    need = ("E", "A", "B", "alpha", "beta")
    missing = [k for k in need if k not in fit]
    if missing:
        raise UserError(f"fit: missing {', '.join(missing)} (expected keys {', '.join(need)})")
    values = _positive_numbers(fit, need, "E")
    extra = {k: v for k, v in fit.items()
             if k not in (*need, "name", "source", "fit_range", "forms")}
    fr = fit.get("fit_range")
    common: dict[str, Any] = {
        "name": str(fit.get("name", "fit")), "params": "total", "kind": "fit",
        "source": str(fit.get("source", "fitted on this corpus")),
        "fit_range": tuple(fr) if fr else None,
    }
    chin = LossLaw(form="chinchilla", extra=extra, **common, **values)
    kap = (fit.get("forms") or {}).get("kaplan") if isinstance(fit.get("forms"), dict) else None
    if kap is None:
        return chin
    if not isinstance(kap, dict) or not isinstance(kap.get("law"), dict):
        raise UserError("fit: forms.kaplan must be an object with a 'law' (n_c, d_c, alpha_n, "
                        "alpha_d)")
    kv = _positive_numbers(kap["law"], ("n_c", "d_c", "alpha_n", "alpha_d"), None,
                           where="forms.kaplan.law")
    kextra = {k: kap[k] for k in ("bootstrap", "residual_std", "interval_level") if k in kap}
    kextra.setdefault("interval_level", extra.get("interval_level", 0.9))
    kaplan = LossLaw(form="kaplan", extra=kextra, **common, **kv)
    shared = {k: v for k, v in extra.items() if k not in ("bootstrap", "residual_std")}
    return LossLaw(form="mean", extra=shared, members=(chin, kaplan), **common)


def _positive_numbers(d: dict[str, Any], keys: tuple[str, ...], may_be_zero: str | None,
                      where: str = "") -> dict[str, float]:
    try:
        values = {k: float(d[k]) for k in keys}
    except KeyError as exc:
        raise UserError(f"fit: {where + ': ' if where else ''}missing {exc.args[0]}") from None
    except (TypeError, ValueError):
        raise UserError(f"fit: {where + ': ' if where else ''}{', '.join(keys)} must be "
                        "numbers") from None
    bad = [k for k, v in values.items()
           if not math.isfinite(v) or v < 0 or (v == 0 and k != may_be_zero)]
    if bad:
        if may_be_zero == "E":  # the message the Chinchilla form has always given
            raise UserError("fit: A, B, alpha and beta must be positive")
        raise UserError(f"fit: {where + ': ' if where else ''}{', '.join(bad)} must be positive")
    return values


def flatten_fit_file(fit: dict[str, Any]) -> dict[str, Any]:
    """The law of a fit.json with what predictions need next to it (see `law_from_fit`)."""
    law = fit.get("law")
    if not isinstance(law, dict):
        raise UserError("fit: no 'law' object (is this a fit.json written by budgetlm calibrate?)")
    n_ok = sum(1 for p in fit.get("pilots", []) if p.get("state") == "complete")
    data = fit.get("data") or {}
    out: dict[str, Any] = {k: law[k] for k in ("E", "A", "B", "alpha", "beta") if k in law}
    out["name"] = "corpus"
    out["source"] = (f"fitted on {n_ok} pilot runs of {data.get('source', 'this corpus')} "
                     f"({data.get('tokenizer', '?')} tokens) by budgetlm calibrate")
    for k in ("bootstrap", "residual_std", "interval_level", "seq_len", "precision",
              "bpb_per_nat", "unique_tokens", "fit_range", "data", "optimizer", "eval_tokens",
              "forms"):
        if fit.get(k) is not None:
            out[k] = fit[k]
    return out


# ---------------------------------------------------------------------------------------------
# Intervals


def quantile(xs: list[float], q: float) -> float:
    """The q-quantile of xs, linear between order statistics (numpy's default)."""
    v = sorted(xs)
    if not v:
        raise ValueError("quantile of nothing")
    pos = min(max(q, 0.0), 1.0) * (len(v) - 1)
    i = int(pos)
    j = min(i + 1, len(v) - 1)
    return v[i] + (v[j] - v[i]) * (pos - i)


def interval_about(
    point: float, preds: list[float], residual_std: float, level: float
) -> tuple[float, float, float]:
    """(point, lo, hi): each side combines the bootstrap predictions' percentile distance from
    the point with the single-run scatter (a log-space std at the normal quantile of `level`)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    tail = (1 - level) / 2
    down = max(0.0, point - quantile(preds, tail)) if preds else 0.0
    up = max(0.0, quantile(preds, 1 - tail) - point) if preds else 0.0
    noise_down = point * (1 - math.exp(-z * residual_std))
    noise_up = point * (math.exp(z * residual_std) - 1)
    return point, point - math.hypot(down, noise_down), point + math.hypot(up, noise_up)


# ---------------------------------------------------------------------------------------------
# Data-constrained scaling (Muennighoff et al. 2023)


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


def data_constrained_optimal(
    law: LossLaw, flops: float, unique: float | None, excess_params: bool = True
) -> tuple[float, float]:
    """(N, D) minimizing the data-constrained loss under 6·N·D = flops."""
    if unique is None:
        return law.optimal(flops)
    n = minimize_log(
        lambda x: law.loss_repeated(x, flops / (6 * x), unique, excess_params), 1.0, flops / 6
    )
    return n, flops / (6 * n)


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


# ---------------------------------------------------------------------------------------------
# Numerics


def minimize_log(f: Any, lo: float, hi: float, iters: int = 200, grid: int = 240) -> float:
    """Minimize f(x) over [lo, hi]: a log-spaced grid, then golden-section search on log x
    around the best grid point (robust to the flat shoulders of the data-constrained law)."""
    a, b = math.log(max(lo, 1e-300)), math.log(hi)
    if b <= a:
        return lo
    xs = [a + (b - a) * i / grid for i in range(grid + 1)]
    best = min(range(len(xs)), key=lambda i: f(math.exp(xs[i])))
    a, b = xs[max(0, best - 1)], xs[min(grid, best + 1)]
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(math.exp(c)), f(math.exp(d))
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(math.exp(d))
        if b - a < 1e-9:
            break
    return math.exp((a + b) / 2)


def interpolate(x: float, pts: list[tuple[float, float]]) -> float:
    """Piecewise-linear through `pts` (sorted by x), flat beyond the ends."""
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]
