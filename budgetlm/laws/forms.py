"""Loss laws L(N, D) in nats/token: one class per functional form behind the `LossLaw` base.

Chinchilla form (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", eq. 2):

    L(N, D) = E + A / N^alpha + B / D^beta          N: parameters, D: training tokens

minimized under C = 6·N·D (Kaplan et al. 2020 §2.1) in closed form (Hoffmann et al. eq. 4):

    N_opt(C) = G · (C/6)^a,   D_opt(C) = G^-1 · (C/6)^b,
    G = (alpha·A / (beta·B))^(1/(alpha+beta)),   a = beta/(alpha+beta),   b = alpha/(alpha+beta).

Kaplan form (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", eq. 1.5 / 4.1,
constants from Table 2, the joint L(N, D) fit), N counting non-embedding parameters:

    L(N, D) = [ (N_c/N)^(alpha_N/alpha_D) + D_c/D ]^alpha_D

Mean: the geometric mean of laws of other forms fitted to the same runs; its interval spans all
of theirs, so the forms' disagreement is part of it.

A law serializes (`to_dict`) to one flat layout shared by all forms: name, form ("chinchilla",
"kaplan" or "mean"), the constants of its form, params, kind, source, unit, fit_range, extra and
members, keys left out where they are zero or empty.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
from abc import ABC, abstractmethod
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar

from budgetlm.laws.repetition import repeated_data_loss
from budgetlm.laws.stats import geometric_mean, interval_about, optimal_split

LOG_FLOAT_MAX = math.log(sys.float_info.max)


def saturated_exp(x: float) -> float:
    """exp(x), or the largest float where exp would overflow."""
    return math.exp(min(x, LOG_FLOAT_MAX))


# Every constant any form has, in the order of the serialized layout.
CONSTANT_NAMES: tuple[str, ...] = ("E", "A", "B", "alpha", "beta", "n_c", "d_c", "alpha_n",
                                   "alpha_d")
DEFAULT_INTERVAL_LEVEL = 0.9


def require_positive_flops(flops: float) -> None:
    """ValueError unless a compute budget is positive."""
    if flops <= 0:
        raise ValueError("flops must be positive")


@dataclass(frozen=True)
class LossLaw(ABC):
    """A loss law L(N, D) in nats/token with its provenance; one subclass per form.

    form: "chinchilla", "kaplan" or "mean" (a class attribute of each form).
    params: which parameter count N means: "total" (Chinchilla and Epoch count every parameter,
      embeddings included) or "non_embedding" (Kaplan).
    kind: "prior" (published constants) or "fit" (fitted on this corpus).
    fit_range: (N_min, N_max, D_min, D_max) of the runs the constants were fitted on; a
      prediction outside it is an extrapolation.
    extra: what a fit carries besides its constants (bootstrap, residual_std, interval_level,
      seq_len, ...).
    """

    form: ClassVar[str]
    name: str
    _: KW_ONLY
    params: str = "total"
    kind: str = "prior"
    source: str = ""
    unit: str = "nats/token"
    fit_range: tuple[float, float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @abstractmethod
    def loss(self, n: float, d: float) -> float:
        """Predicted loss (nats/token, the law's own tokenizer) of N parameters after D tokens."""

    @abstractmethod
    def optimal(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimizing L(N, D) under 6·N·D = flops."""

    @abstractmethod
    def params_for_tokens(self, tokens: float) -> float:
        """U_N: the compute-optimal size for `tokens` tokens (Muennighoff et al.'s base params)."""

    @abstractmethod
    def loss_repeated(
        self, n: float, d: float, unique: float | None, excess_params: bool = True
    ) -> float:
        """L(N', D') of Muennighoff et al. 2023: D tokens drawn from `unique` unique tokens.

        unique None: unlimited data (plain L(N, D)). excess_params: also discount parameters
        beyond the compute-optimal size for `unique` tokens (their N' term).
        """

    @property
    @abstractmethod
    def has_interval(self) -> bool:
        """Whether `interval` is wider than the point (the law carries its uncertainty)."""

    @abstractmethod
    def interval(
        self, n: float, d: float, unique: float | None = None, level: float | None = None
    ) -> tuple[float, float, float]:
        """(point, lo, hi) of L(N', D') at `level` (default: the fit's own)."""

    def constants(self) -> dict[str, float]:
        """The constants of this law's form by name (serialized in CONSTANT_NAMES order)."""
        return {}

    def member_layouts(self) -> tuple[dict[str, Any], ...]:
        """The full layouts of the laws this one combines (none for a single form)."""
        return ()

    def n_of(self, total: float, non_embedding: float) -> float:
        """The parameter count this law means, from a model's total and non-embedding counts."""
        return non_embedding if self.params == "non_embedding" else total

    def in_range(self, n: float, d: float) -> bool:
        """Whether (N, D) lies inside the runs the law was fitted on (always, if unknown)."""
        if self.fit_range is None:
            return True
        n0, n1, d0, d1 = self.fit_range
        return n0 <= n <= n1 and d0 <= d <= d1

    def interval_level(self, level: float | None) -> float:
        """`level`, or the fit's own interval level when it is None."""
        return float(level if level is not None else
                     self.extra.get("interval_level", DEFAULT_INTERVAL_LEVEL))

    def layout(self) -> dict[str, Any]:
        """Every field of the serialized layout: unused constants 0.0, members in full."""
        return {
            "name": self.name, "form": self.form,
            **dict.fromkeys(CONSTANT_NAMES, 0.0), **self.constants(),
            "params": self.params, "kind": self.kind, "source": self.source, "unit": self.unit,
            "fit_range": self.fit_range, "extra": copy.deepcopy(self.extra),
            "members": self.member_layouts(),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: `layout` without its zero and empty values."""
        return {k: v for k, v in self.layout().items() if v not in (0.0, None, {}, "", ())}


def declared_constants(cls: type) -> tuple[str, ...]:
    """The fields `cls` itself declares without a default, in order: a law's constants."""
    own = cls.__dict__.get("__annotations__", {})
    return tuple(name for name in own if name not in cls.__dict__)


@dataclass(frozen=True)
class SingleFormLaw(LossLaw):
    """A law of one functional form, its constants named by `constant_names`. Repeated data
    enters through Muennighoff et al.'s N', D'; the interval combines the spread of the
    bootstrap refits (`extra["bootstrap"]`, rows of the constants in `constant_names` order)
    with the scatter of single runs (`extra["residual_std"]`).
    """

    constant_names: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, form: str | None = None, **kwargs: Any) -> None:
        """`class ChinchillaLaw(SingleFormLaw, form="chinchilla")`: the form's name, and its
        constants are the fields the class declares without a default, in order."""
        super().__init_subclass__(**kwargs)
        if form is not None:
            cls.form = form
            cls.constant_names = declared_constants(cls)

    def constants(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.constant_names}

    def loss_repeated(
        self, n: float, d: float, unique: float | None, excess_params: bool = True
    ) -> float:
        return repeated_data_loss(self, n, d, unique, excess_params)

    @functools.cached_property
    def bootstrap_laws(self) -> tuple[SingleFormLaw, ...]:
        """The law of each bootstrap refit (same form, name, params and kind)."""
        rows = self.extra.get("bootstrap") or []
        return tuple(type(self)(self.name, *row, params=self.params, kind=self.kind)
                     for row in rows)

    @property
    def has_interval(self) -> bool:
        return bool(self.extra.get("bootstrap")) or bool(self.extra.get("residual_std"))

    def interval(
        self, n: float, d: float, unique: float | None = None, level: float | None = None
    ) -> tuple[float, float, float]:
        """(point, lo, hi) of L(N', D'): the bootstrap refits' spread (parameter uncertainty)
        and the scatter of single runs about the law (`residual_std`, log space) combined in
        quadrature on each side; `level` defaults to the fit's own."""
        point = self.loss_repeated(n, d, unique)
        lvl = self.interval_level(level)
        preds = [b.loss_repeated(n, d, unique) for b in self.bootstrap_laws]
        return interval_about(point, preds, float(self.extra.get("residual_std") or 0.0), lvl)


@dataclass(frozen=True)
class ChinchillaLaw(SingleFormLaw, form="chinchilla"):
    """L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, eq. 2)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n: float, d: float) -> float:
        if n <= 0 or d <= 0:
            return math.inf
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def G(self) -> float:  # noqa: N802 - Hoffmann et al.'s symbol
        """Hoffmann et al. eq. 4: G = (alpha·A / (beta·B))^(1/(alpha+beta))."""
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    @property
    def allocation_exponents(self) -> tuple[float, float]:
        """(a, b) = (beta/(alpha+beta), alpha/(alpha+beta)): N_opt ∝ C^a, D_opt ∝ C^b."""
        return self.beta / (self.alpha + self.beta), self.alpha / (self.alpha + self.beta)

    def optimal(self, flops: float) -> tuple[float, float]:
        """Hoffmann et al. eq. 4 in closed form."""
        require_positive_flops(flops)
        g = self.G
        a, b = self.allocation_exponents
        return g * (flops / 6) ** a, (flops / 6) ** b / g

    def params_for_tokens(self, tokens: float) -> float:
        """C/6 = (tokens·G)^(1/b) at the optimum, N = G·(C/6)^a; in logs, saturating at the
        largest float (a bootstrap law's exponents can send it past it)."""
        a, b = self.allocation_exponents
        return saturated_exp(math.log(self.G) + a / b * math.log(tokens * self.G))


@dataclass(frozen=True)
class KaplanLaw(SingleFormLaw, form="kaplan"):
    """L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D (Kaplan et al. 2020, eq. 1.5)."""

    n_c: float
    d_c: float
    alpha_n: float
    alpha_d: float

    def loss(self, n: float, d: float) -> float:
        if n <= 0 or d <= 0:
            return math.inf
        return ((self.n_c / n) ** (self.alpha_n / self.alpha_d) + self.d_c / d) ** self.alpha_d

    def optimal(self, flops: float) -> tuple[float, float]:
        """Closed form: d/dN [(Nc/N)^p + 6·Dc·N/C] = 0  ->  N^(p+1) = p·Nc^p·C / (6·Dc)."""
        require_positive_flops(flops)
        p = self.alpha_n / self.alpha_d
        n = math.exp((math.log(p) + p * math.log(self.n_c) + math.log(flops / 6)
                      - math.log(self.d_c)) / (p + 1))
        return n, flops / (6 * n)

    def params_for_tokens(self, tokens: float) -> float:
        """The optimum above solved for N at D_opt = tokens: N_c·(p·D/D_c)^(1/p), in logs,
        saturating at the largest float (a small p sends it past it)."""
        p = self.alpha_n / self.alpha_d
        return saturated_exp(math.log(self.n_c) + math.log(p * tokens / self.d_c) / p)


@dataclass(frozen=True)
class MeanLaw(LossLaw):
    """The geometric mean of `members`' losses (laws of other forms fitted to the same runs),
    whose interval spans all of theirs."""

    form: ClassVar[str] = "mean"
    members: tuple[LossLaw, ...] = ()

    def member_layouts(self) -> tuple[dict[str, Any], ...]:
        return tuple(m.layout() for m in self.members)

    def loss(self, n: float, d: float) -> float:
        if n <= 0 or d <= 0:
            return math.inf
        return geometric_mean([m.loss(n, d) for m in self.members])

    def optimal(self, flops: float) -> tuple[float, float]:
        """Found numerically (`optimal_split`)."""
        require_positive_flops(flops)
        return optimal_split(self.loss, flops)

    def params_for_tokens(self, tokens: float) -> float:
        """Bisection on log C for D_opt(C) = tokens (D_opt grows monotonically in C)."""
        lo, hi = math.log(6 * tokens), math.log(6 * tokens) + 80
        for _ in range(200):
            mid = (lo + hi) / 2
            if self.optimal(math.exp(mid))[1] < tokens:
                lo = mid
            else:
                hi = mid
        return self.optimal(math.exp(lo))[0]

    def loss_repeated(
        self, n: float, d: float, unique: float | None, excess_params: bool = True
    ) -> float:
        return geometric_mean([m.loss_repeated(n, d, unique, excess_params)
                               for m in self.members])

    @property
    def has_interval(self) -> bool:
        return any(m.has_interval for m in self.members)

    def interval(
        self, n: float, d: float, unique: float | None = None, level: float | None = None
    ) -> tuple[float, float, float]:
        """(point, lo, hi): every member's interval inside, the forms' disagreement too."""
        point = self.loss_repeated(n, d, unique)
        lvl = self.interval_level(level)
        spans = [m.interval(n, d, unique, lvl) for m in self.members]
        return point, min(s[1] for s in spans), max(s[2] for s in spans)
