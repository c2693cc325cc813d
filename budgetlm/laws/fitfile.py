"""A law fitted on this corpus, from the fit.json `budgetlm calibrate` writes (or its law block).

The fit enters the planner through `law_from_fit` with the same L(N, D) forms as the priors and
is labelled "fit". A fit.json holds a Chinchilla-form law (pilot runs, Huber loss in log space as
Chinchilla did) and, under `forms.kaplan`, a Kaplan-form fit of the same runs: the law is then
the geometric mean of the two (`MeanLaw`), and every interval spans both forms' intervals.
"""

from __future__ import annotations

import math
from typing import Any

from budgetlm.errors import UserError
from budgetlm.laws.forms import (
    DEFAULT_INTERVAL_LEVEL,
    ChinchillaLaw,
    KaplanLaw,
    LossLaw,
    MeanLaw,
)

FIT_FILE_KIND = "budgetlm-fit"
CHINCHILLA_KEYS: tuple[str, ...] = ("E", "A", "B", "alpha", "beta")
KAPLAN_KEYS: tuple[str, ...] = ("n_c", "d_c", "alpha_n", "alpha_d")
# What the flattened fit keeps beside the law: what predictions and plans need.
FIT_FILE_CARRIED: tuple[str, ...] = (
    "bootstrap", "residual_std", "interval_level", "seq_len", "precision", "bpb_per_nat",
    "unique_tokens", "fit_range", "data", "optimizer", "eval_tokens", "forms", "parametrization",
)
# The uncertainty of one form, kept with that form (not shared by a mean of forms).
UNCERTAINTY_KEYS: tuple[str, ...] = ("bootstrap", "residual_std", "interval_level")


def law_from_fit(fit: dict[str, Any]) -> LossLaw:
    """A law fitted on this corpus: a Chinchilla-form {E, A, B, alpha, beta[, name, source, ...]},
    or a whole fit.json written by `budgetlm calibrate` (kind "budgetlm-fit").

    The hook through which a fitted law (from pilot runs) replaces the prior in `plan(fit=...)`.
    Extra keys (bootstrap, residual_std, interval_level, seq_len, precision, bpb_per_nat, ...)
    are kept in `extra`. When the fit also holds a Kaplan-form fit of the same runs
    (`forms.kaplan`, as calibrate writes), the law is a `MeanLaw` over the two: predictions are
    their geometric mean and every interval spans both forms' intervals.
    """
    if fit.get("kind") == FIT_FILE_KIND:
        fit = flatten_fit_file(fit)
    missing = [k for k in CHINCHILLA_KEYS if k not in fit]
    if missing:
        raise UserError(f"fit: missing {', '.join(missing)} (expected keys "
                        f"{', '.join(CHINCHILLA_KEYS)})")
    values = positive_numbers(fit, CHINCHILLA_KEYS, "E")
    extra = {k: v for k, v in fit.items()
             if k not in (*CHINCHILLA_KEYS, "name", "source", "fit_range", "forms")}
    fr = fit.get("fit_range")
    common: dict[str, Any] = {
        "name": str(fit.get("name", "fit")), "params": "total", "kind": "fit",
        "source": str(fit.get("source", "fitted on this corpus")),
        "fit_range": tuple(fr) if fr else None,
    }
    chin = ChinchillaLaw(extra=extra, **common, **values)
    forms = fit.get("forms")
    kap = forms.get("kaplan") if isinstance(forms, dict) else None
    if kap is None:
        return chin
    kaplan = _kaplan_member(kap, extra, common)
    shared = {k: v for k, v in extra.items() if k not in ("bootstrap", "residual_std")}
    return MeanLaw(members=(chin, kaplan), extra=shared, **common)


def _kaplan_member(kap: Any, extra: dict[str, Any], common: dict[str, Any]) -> KaplanLaw:
    """The Kaplan-form law of a fit's `forms.kaplan` block (KaplanFit.to_dict's layout)."""
    if not isinstance(kap, dict) or not isinstance(kap.get("law"), dict):
        raise UserError("fit: forms.kaplan must be an object with a 'law' (n_c, d_c, alpha_n, "
                        "alpha_d)")
    values = positive_numbers(kap["law"], KAPLAN_KEYS, None, where="forms.kaplan.law")
    kextra = {k: kap[k] for k in UNCERTAINTY_KEYS if k in kap}
    kextra.setdefault("interval_level", extra.get("interval_level", DEFAULT_INTERVAL_LEVEL))
    return KaplanLaw(extra=kextra, **common, **values)


def positive_numbers(d: dict[str, Any], keys: tuple[str, ...], may_be_zero: str | None,
                     where: str = "") -> dict[str, float]:
    """{key: float(d[key])} for `keys`, each finite and positive (`may_be_zero` may also be 0);
    UserError naming the first missing key or the offending ones."""
    at = f"{where}: " if where else ""
    try:
        values = {k: float(d[k]) for k in keys}
    except KeyError as exc:
        raise UserError(f"fit: {at}missing {exc.args[0]}") from None
    except (TypeError, ValueError):
        raise UserError(f"fit: {at}{', '.join(keys)} must be numbers") from None
    bad = [k for k, v in values.items()
           if not math.isfinite(v) or v < 0 or (v == 0 and k != may_be_zero)]
    if bad:
        if may_be_zero == "E":  # the message the Chinchilla form has always given
            raise UserError("fit: A, B, alpha and beta must be positive")
        raise UserError(f"fit: {at}{', '.join(bad)} must be positive")
    return values


def flatten_fit_file(fit: dict[str, Any]) -> dict[str, Any]:
    """The law of a fit.json with what predictions need next to it (see `law_from_fit`)."""
    law = fit.get("law")
    if not isinstance(law, dict):
        raise UserError("fit: no 'law' object (is this a fit.json written by budgetlm calibrate?)")
    n_ok = sum(1 for p in fit.get("pilots", []) if p.get("state") == "complete")
    data = fit.get("data") or {}
    out: dict[str, Any] = {k: law[k] for k in CHINCHILLA_KEYS if k in law}
    out["name"] = "corpus"
    out["source"] = (f"fitted on {n_ok} pilot runs of {data.get('source', 'this corpus')} "
                     f"({data.get('tokenizer', '?')} tokens) by budgetlm calibrate")
    for k in FIT_FILE_CARRIED:
        if fit.get(k) is not None:
            out[k] = fit[k]
    return out
