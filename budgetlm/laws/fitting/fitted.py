"""The behaviour every fitted law shares: its prediction interval for one new run, and its JSON
(`to_dict`, read back by `from_dict` and by `budgetlm.laws.law_from_fit`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from budgetlm.errors import UserError
from budgetlm.laws.fitting.multistart import check_level
from budgetlm.laws.forms import declared_constants
from budgetlm.laws.stats import interval_about


@dataclass(kw_only=True)
class FittedLaw:
    """Base of the dataclasses of fitted laws (`LawFit`, `KaplanFit`): what every fit records.

    A subclass adds its form's constants as positional fields (named by `param_names`, in that
    order) and implements `loss` and `bootstrap_predictions`. The fields here are keywords
    (`MultistartResult.summary` gives them): objective (final Huber objective of the
    point fit, unscaled), n_points, residuals (log observed - log fitted, input order),
    residual_std (their standard error, ddof = the constants' count clipped at n - 1),
    bootstrap (the constants of each converged refit), intervals (per constant, the central
    `level` percentile interval over the refits), level, delta (Huber delta), n_init (L-BFGS-B
    starts of the point fit), n_resamples (bootstrap resamples drawn).
    """

    form: ClassVar[str]
    param_names: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, form: str | None = None, **kwargs: Any) -> None:
        """`class LawFit(FittedLaw, form="chinchilla")`: the form's name, and its constants are
        the fields the class declares without a default, in order."""
        super().__init_subclass__(**kwargs)
        if form is not None:
            cls.form = form
            cls.param_names = declared_constants(cls)
    objective: float
    n_points: int
    residuals: list[float]
    residual_std: float
    bootstrap: list[list[float]]
    intervals: dict[str, tuple[float, float]]
    level: float
    delta: float
    n_init: int
    n_resamples: int = 0

    def loss(self, n: float, d: float) -> float:
        """The fitted law's loss (nats/token) of N parameters after D tokens."""
        raise NotImplementedError

    def bootstrap_predictions(self, n: float, d: float) -> list[float]:
        """The finite, positive losses at (N, D) of the bootstrap refits."""
        raise NotImplementedError

    def constants(self) -> dict[str, float]:
        """The form's constants by name."""
        return {k: getattr(self, k) for k in self.param_names}

    def predict(self, n: float, d: float, level: float | None = None) -> tuple[float, float, float]:
        """(point, lo, hi) in the loss unit: point from the fit; interval combines parameter
        uncertainty (percentiles of the bootstrap predictions) with the scatter of single runs
        (residual_std in log space at the normal quantile of `level`), in quadrature on each side.

        The combination is `budgetlm.laws.interval_about`, the one the planner uses for
        every candidate of a plan made from a fit. `level` defaults to the fit's level. Without
        bootstrap refits the interval is the single-run scatter alone.
        """
        lvl = self.level if level is None else level
        check_level(lvl, "predict: level")
        if not (n > 0 and d > 0):
            raise UserError(f"predict: n and d must be positive, got n={n!r}, d={d!r}")
        point = self.loss(n, d)
        preds = self.bootstrap_predictions(n, d)
        return interval_about(point, preds, self.residual_std, lvl)

    def fit_block(self) -> dict[str, Any]:
        """The "fit" object of `to_dict`: how the fit was made."""
        return {"objective": self.objective, "huber_delta": self.delta, "n_init": self.n_init,
                "n_points": self.n_points, "n_bootstrap": len(self.bootstrap),
                "n_resamples": self.n_resamples}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the "law" block can be passed to `budgetlm.laws.law_from_fit`)."""
        return {
            "law": {"form": self.form, **self.constants()},
            "intervals": {k: [lo, hi] for k, (lo, hi) in self.intervals.items()},
            "interval_level": self.level,
            "bootstrap": [list(row) for row in self.bootstrap],
            "residuals": list(self.residuals),
            "residual_std": self.residual_std,
            "fit": self.fit_block(),
        }

    @classmethod
    def fields_from_fit_block(cls, fit: dict[str, Any]) -> dict[str, Any]:
        """The subclass's own fields read from the "fit" object (none here)."""
        return {}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Inverse of `to_dict` (exact round trip); UserError naming the first missing key."""
        try:
            law, fit = d["law"], d["fit"]
            if law.get("form", cls.form) != cls.form:
                raise UserError(f"fit: law form {law['form']!r} is not {cls.form!r}")
            bootstrap = [[float(v) for v in row] for row in d["bootstrap"]]
            return cls(
                **{k: float(law[k]) for k in cls.param_names},
                objective=float(fit["objective"]),
                n_points=int(fit["n_points"]),
                residuals=[float(v) for v in d["residuals"]],
                residual_std=float(d["residual_std"]),
                bootstrap=bootstrap,
                intervals={
                    str(k): (float(v[0]), float(v[1])) for k, v in d["intervals"].items()
                },
                level=float(d["interval_level"]),
                delta=float(fit["huber_delta"]),
                n_init=int(fit["n_init"]),
                n_resamples=int(fit.get("n_resamples", len(bootstrap))),
                **cls.fields_from_fit_block(fit),
            )
        except KeyError as exc:
            raise UserError(f"fit: missing key {exc.args[0]!r} in the fitted law") from None
        except (TypeError, ValueError, IndexError, AttributeError):
            raise UserError(f"fit: malformed fitted law (not {cls.__name__}.to_dict's "
                            "layout)") from None
