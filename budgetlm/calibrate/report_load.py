"""Reading a `fit.json` back: `load_fit` checks it (a malformed file is a one-line UserError
naming it) and `law_of` gives its Chinchilla-form law as a `laws.LossLaw`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from budgetlm import laws
from budgetlm.errors import UserError
from budgetlm.units import finite_number

KIND = "budgetlm-fit"
VERSION = 1
LAW_KEYS = ("E", "A", "B", "alpha", "beta")
LIST_KEYS = ("pilots", "levels", "bootstrap", "residuals", "notes")
OBJECT_KEYS = ("plan", "data", "intervals", "budget")


def load_fit(path: str | Path) -> dict[str, Any]:
    """Read and check a `fit.json`; UserError with one line naming the file otherwise."""
    p = Path(path)
    fit = _read_json(p)
    _check_kind_and_version(p, fit)
    _check_law(p, fit.get("law"))
    _check_sections(p, fit)
    try:
        law_of(fit)
    except UserError as exc:
        raise UserError(f"{p}: law: {str(exc).removeprefix('fit: ')}") from None
    return fit


def law_of(fit: dict[str, Any]) -> laws.LossLaw:
    """The fitted Chinchilla-form law as a `laws.LossLaw` (kind "fit"): `laws.law_from_fit`
    of the file without its other forms, with the pilots' range as `fit_range` and what
    predictions need (bootstrap, residual_std, interval_level, unique_tokens, seq_len,
    bpb_per_nat, ...) in `extra`. The tables and curves show this law; the plan's prediction
    (`fit["plan"]`) is the one `budgetlm plan --fit` makes, from all the file's forms."""
    return laws.law_from_fit({**fit, "kind": KIND, "forms": None})


def os_error_reason(exc: BaseException) -> str:
    """Why an OS call failed, in a few words ('No such file or directory')."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _read_json(p: Path) -> Any:
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: no such file (write one with `budgetlm calibrate`)") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory, expected a fit.json file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read ({os_error_reason(exc)})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
                        ) from None


def _check_kind_and_version(p: Path, fit: Any) -> None:
    if not isinstance(fit, dict):
        raise UserError(f"{p}: not a budgetlm fit file (expected a JSON object, got "
                        f"{type(fit).__name__})")
    kind = fit.get("kind")
    if kind != KIND:
        raise UserError(f"{p}: kind is {kind!r}, expected {KIND!r} (a file written by "
                        "`budgetlm calibrate`)")
    version = fit.get("version", VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
        raise UserError(f"{p}: version {version!r} is not one this budgetlm reads "
                        f"(up to {VERSION}); upgrade budgetlm")


def _check_law(p: Path, law: Any) -> None:
    if not isinstance(law, dict):
        raise UserError(f"{p}: law: missing or not an object (expected keys "
                        f"{', '.join(LAW_KEYS)})")
    form = law.get("form", "chinchilla")
    if form != "chinchilla":
        raise UserError(f"{p}: law.form is {form!r}; only 'chinchilla' is supported")
    missing = [k for k in LAW_KEYS if k not in law]
    if missing:
        raise UserError(f"{p}: law: missing {', '.join(missing)} (expected keys "
                        f"{', '.join(LAW_KEYS)})")
    bad = [k for k in LAW_KEYS if finite_number(law[k]) is None]
    if bad:
        raise UserError(f"{p}: law: {', '.join(bad)} must be finite numbers, got "
                        + ", ".join(f"{k}={law[k]!r}" for k in bad))


def _check_sections(p: Path, fit: dict[str, Any]) -> None:
    for key in LIST_KEYS:
        if fit.get(key) is not None and not isinstance(fit[key], list):
            raise UserError(f"{p}: {key}: expected a list, got {type(fit[key]).__name__}")
    if any(not isinstance(q, dict) for q in fit.get("pilots") or []):
        raise UserError(f"{p}: pilots: every entry must be an object")
    for key in OBJECT_KEYS:
        if fit.get(key) is not None and not isinstance(fit[key], dict):
            raise UserError(f"{p}: {key}: expected an object, got {type(fit[key]).__name__}")
