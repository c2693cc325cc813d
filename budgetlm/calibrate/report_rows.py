"""Plain rows (JSON-ready) of a fit.json for tables and plots: the fitted parameters with their
intervals, the pilots with their residuals, and the compute-optimal allocation per level."""

from __future__ import annotations

import math
from typing import Any

from budgetlm import laws
from budgetlm.calibrate.report_load import LAW_KEYS, law_of
from budgetlm.units import finite_number

DEFAULT_LEVEL = 0.9
UNLEVELLED = 1 << 30  # sorts pilots without a level after all levels


def summary_rows(fit: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Plain rows (JSON-ready) for three tables.

    parameters: name, value, lo, hi (the file's interval, else bootstrap percentiles), and the
    derived exponents a = beta/(alpha+beta) (N_opt ∝ C^a), b = alpha/(alpha+beta).
    pilots: level, name, params, tokens, flops, val loss, fitted loss, residual in %, wall s,
    state, ordered by level then size.
    optimal: the fitted compute-optimal allocation at each level (and at the planned run's FLOPs
    when the file has a plan): n_opt, d_opt, tokens_per_param, loss, the bootstrap interval of
    n_opt (n_opt_lo, n_opt_hi; None without bootstrap), and the best pilot of the level.
    """
    law = law_of(fit)
    level = interval_level(fit)
    boots = bootstrap_laws(fit)
    pilots = pilot_rows(fit, law)
    return {"parameters": parameter_rows(fit, law, boots, level), "pilots": pilots,
            "optimal": optimal_rows(fit, law, boots, level, pilots)}


def parameter_rows(fit: dict[str, Any], law: laws.LossLaw, boots: list[laws.LossLaw],
                   level: float) -> list[dict[str, Any]]:
    """E, A, B, alpha, beta with their intervals, then the derived exponents a and b."""
    intervals = fit.get("intervals") or {}
    rows: list[dict[str, Any]] = []
    for k in LAW_KEYS:
        lo, hi = number_pair(intervals.get(k))
        if lo is None and boots:
            lo, hi = central_interval([getattr(b, k) for b in boots], level)
        rows.append({"name": k, "value": float(getattr(law, k)), "lo": lo, "hi": hi,
                     "derived": False})
    for name, f in (("a", exponent_a), ("b", lambda b: 1 - exponent_a(b))):
        lo, hi = central_interval([f(b) for b in boots], level) if boots else (None, None)
        rows.append({"name": name, "value": f(law), "lo": lo, "hi": hi, "derived": True})
    return rows


def pilot_rows(fit: dict[str, Any], law: laws.LossLaw) -> list[dict[str, Any]]:
    """One row per pilot, ordered by level, then size, then name."""
    levels = fit_levels(fit)
    rows = [pilot_row(q, levels, law) for q in fit.get("pilots") or []]
    rows.sort(key=lambda r: (r["level"] if r["level"] is not None else UNLEVELLED,
                             r["params"] or 0.0, r["name"]))
    return rows


def pilot_row(q: dict[str, Any], levels: list[float], law: laws.LossLaw) -> dict[str, Any]:
    """A pilot as a row; its fitted loss from the law when the file has none."""
    lv = pilot_level(q, levels)
    val, fitted = finite_number(q.get("val_loss")), finite_number(q.get("fitted_loss"))
    n, d = finite_number(q.get("params")), finite_number(q.get("tokens"))
    d_eff = finite_number(q.get("effective_tokens")) or d
    if fitted is None and val is not None and n and d_eff:
        fitted = law.loss(n, d_eff)
    resid = finite_number(q.get("residual"))
    if val is not None and fitted:
        pct: float | None = 100 * (val / fitted - 1)
    else:
        pct = 100 * math.expm1(resid) if resid is not None else None
    return {
        "level": lv, "level_flops": levels[lv] if lv is not None else None,
        "name": str(q.get("name", "?")), "params": n, "tokens": d, "effective_tokens": d_eff,
        "flops": finite_number(q.get("flops")), "val_loss": val,
        "val_bpb": finite_number(q.get("val_bpb")),
        "fitted_loss": fitted, "residual": resid, "residual_pct": pct,
        "wall_seconds": finite_number(q.get("wall_seconds")), "state": pilot_state(q),
        "reason": str(q["reason"]) if q.get("reason") else None,
    }


def optimal_rows(fit: dict[str, Any], law: laws.LossLaw, boots: list[laws.LossLaw],
                 level: float, pilots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The optimum at each level with the level's best pilot, then at the plan's FLOPs."""
    rows = []
    for i, c in enumerate(fit_levels(fit)):
        row = optimum_row(fit, law, boots, level, c, f"level {i}")
        best = best_pilot([r for r in pilots if r["level"] == i])
        row["best_pilot"] = best["name"] if best else None
        row["best_params"] = best["params"] if best else None
        row["best_loss"] = best["val_loss"] if best else None
        rows.append(row)
    plan = fit.get("plan") or {}
    plan_c = finite_number(plan.get("flops"))
    if plan_c and plan_c > 0:
        row = optimum_row(fit, law, boots, level, plan_c, "plan")
        row.update({"plan_name": plan.get("name"), "plan_params": finite_number(plan.get("params")),
                    "plan_tokens": finite_number(plan.get("tokens")),
                    "plan_loss": finite_number(plan.get("loss")),
                    "plan_loss_lo": finite_number(plan.get("loss_lo")),
                    "plan_loss_hi": finite_number(plan.get("loss_hi"))})
        rows.append(row)
    return rows


def optimum_row(fit: dict[str, Any], law: laws.LossLaw, boots: list[laws.LossLaw],
                level: float, c: float, at: str) -> dict[str, Any]:
    """The compute-optimal allocation at `c` FLOPs, its N_opt interval, and its epochs and
    repeated-data loss when the data is limited."""
    n, d = law.optimal(c)
    lo, hi = central_interval(bootstrap_n_opts(boots, c), level) if boots else (None, None)
    unique = finite_number(fit.get("unique_tokens"))
    ep = laws.epochs(d, unique) if unique else None
    return {"at": at, "flops": c, "n_opt": n, "d_opt": d, "tokens_per_param": d / n,
            "loss": law.loss(n, d), "n_opt_lo": lo, "n_opt_hi": hi, "epochs": ep,
            "loss_repeated": law.loss(n, laws.effective_data(d, unique))
            if unique and ep and ep > 1 else None}


# ---------------------------------------------------------------------------------------------
# Reading the parts of a fit


def interval_level(fit: dict[str, Any]) -> float:
    """The fit's interval level (0.9 when absent or not in (0, 1))."""
    v = finite_number(fit.get("interval_level"))
    return v if v is not None and 0 < v < 1 else DEFAULT_LEVEL


def number_pair(v: Any) -> tuple[float | None, float | None]:
    """[lo, hi] as two finite floats, else (None, None)."""
    if isinstance(v, list | tuple) and len(v) == 2:
        lo, hi = finite_number(v[0]), finite_number(v[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None, None


def is_fit_range(v: Any) -> bool:
    """Whether v is an (N_min, N_max, D_min, D_max) of nonzero finite numbers."""
    return isinstance(v, list | tuple) and len(v) == 4 and all(finite_number(x) for x in v)


def pilot_state(q: dict[str, Any]) -> str:
    """The pilot's state; without one, 'complete' when it has a loss, else 'failed'."""
    state = q.get("state")
    if state:
        return str(state)
    return "complete" if finite_number(q.get("val_loss")) is not None else "failed"


def is_plottable_row(r: dict[str, Any]) -> bool:
    """Whether a pilot row finished with a loss and a size (a point on the plot and the fit)."""
    return r["state"] == "complete" and r["val_loss"] is not None and (r["params"] or 0) > 0


def is_plottable_pilot(q: dict[str, Any]) -> bool:
    """`is_plottable_row` of a pilot as the file holds it."""
    return is_plottable_row({"state": pilot_state(q), "val_loss": finite_number(q.get("val_loss")),
                             "params": finite_number(q.get("params"))})


def fit_levels(fit: dict[str, Any]) -> list[float]:
    """FLOPs per pilot at each level: `levels`, else the pilots' distinct `level_flops`."""
    given = [finite_number(c) for c in fit.get("levels") or []]
    if given and all(c and c > 0 for c in given):
        return [float(c) for c in given]  # type: ignore[arg-type]
    return sorted({c for q in fit.get("pilots") or []
                   if (c := finite_number(q.get("level_flops"))) and c > 0})


def pilot_level(q: dict[str, Any], levels: list[float]) -> int | None:
    """The pilot's level index: its `level`, else the level within 1.5x of its FLOPs."""
    lv = q.get("level")
    if isinstance(lv, int) and not isinstance(lv, bool) and 0 <= lv < len(levels):
        return lv
    c = finite_number(q.get("level_flops")) or finite_number(q.get("flops"))
    if c and c > 0 and levels:
        i = min(range(len(levels)), key=lambda j: abs(math.log(levels[j] / c)))
        if abs(math.log(levels[i] / c)) < math.log(1.5):
            return i
    return None


def best_pilot(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The plottable row with the lowest validation loss, if any."""
    done = [r for r in rows if is_plottable_row(r)]
    return min(done, key=lambda r: r["val_loss"]) if done else None


# ---------------------------------------------------------------------------------------------
# Bootstrap


def bootstrap_laws(fit: dict[str, Any]) -> list[laws.LossLaw]:
    """The valid bootstrap refits ([E, A, B, alpha, beta] lists or dicts of those keys) as
    Chinchilla-form laws; sets with a missing or non-positive A, B, alpha or beta are skipped."""
    out = []
    for b in fit.get("bootstrap") or []:
        if isinstance(b, dict):
            vals = [finite_number(b.get(k)) for k in LAW_KEYS]
        elif isinstance(b, list | tuple) and len(b) >= len(LAW_KEYS):
            vals = [finite_number(x) for x in b[: len(LAW_KEYS)]]
        else:
            continue
        if any(v is None for v in vals) or any(v <= 0 for v in vals[1:]):  # type: ignore[operator]
            continue
        out.append(laws.ChinchillaLaw(name="bootstrap", kind="fit",
                                      **dict(zip(LAW_KEYS, vals, strict=True))))  # type: ignore
    return out


def exponent_a(law: laws.LossLaw) -> float:
    """a = beta/(alpha+beta): N_opt ∝ C^a (Hoffmann et al. eq. 4)."""
    return law.beta / (law.alpha + law.beta)


def bootstrap_n_opts(boots: list[laws.LossLaw], c: float) -> list[float]:
    """N_opt at `c` FLOPs of each bootstrap refit (those that overflow left out)."""
    out = []
    for b in boots:
        try:
            n = b.optimal(c)[0]
        except (OverflowError, ZeroDivisionError):
            continue
        if math.isfinite(n) and n > 0:
            out.append(n)
    return out


def central_interval(vals: list[float], level: float) -> tuple[float | None, float | None]:
    """The central `level` interval of vals (linear interpolation between order statistics);
    (None, None) without finite values."""
    xs = [v for v in vals if math.isfinite(v)]
    if not xs:
        return None, None
    q = (1 - level) / 2
    return laws.quantile(xs, q), laws.quantile(xs, 1 - q)
