"""Numbers and switches taken as written, for every config model.

A bool is not a number, a number is not a bool, a string is neither; an int field takes whole
numbers (`2e6` in YAML is 2000000, `2.5` is refused); floats are finite; magnitudes beyond
2**63 - 1 are refused. Validation errors say what was given: `expected a whole number, got true`.
"""

from __future__ import annotations

import math
import numbers
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from budgetlm.errors import format_validation_error

MAX_INT = 2**63 - 1


class TooLarge:
    """Stands in for a number too large for its field, so the field's own check refuses it."""

    def __init__(self, value: Any) -> None:
        self.value = value


def scalar_kinds(annotation: Any) -> tuple[set[type], set[Any]]:
    """The scalar types (bool, int, float) and the literal values an annotation admits."""
    kinds: set[type] = set()
    literals: set[Any] = set()
    stack = [annotation]
    while stack:
        ann = stack.pop()
        origin = get_origin(ann)
        if origin is Annotated:
            stack.append(get_args(ann)[0])
        elif origin is Literal:
            literals.update(get_args(ann))
        elif origin in (Union, types.UnionType):
            stack.extend(get_args(ann))
        elif ann in (bool, int, float):
            kinds.add(ann)
    return kinds, literals


_NUMBER_FIELDS: dict[type, dict[str, type]] = {}


def _number_fields(cls: type[BaseModel]) -> dict[str, type]:
    """Field name -> int or float, for the fields of `cls` that hold a number."""
    found = _NUMBER_FIELDS.get(cls)
    if found is None:
        found = {}
        for name, field in cls.model_fields.items():
            kinds, _ = scalar_kinds(field.annotation)
            if float in kinds:
                found[name] = float
            elif int in kinds:
                found[name] = int
        _NUMBER_FIELDS[cls] = found
    return found


def _as_number(kind: type, v: Any) -> Any:
    """`v` as the plain int or float a `kind` field takes, where it is one; else `v` itself
    (the field's strict check then refuses it)."""
    if v is None or isinstance(v, bool) or type(v) is float is kind:
        return v
    if kind is int:
        if type(v) is int and -MAX_INT <= v <= MAX_INT:
            return v
        if isinstance(v, numbers.Integral):
            n = int(v)
            return n if abs(n) <= MAX_INT else TooLarge(v)
        if isinstance(v, numbers.Real):
            f = float(v)
            if math.isfinite(f) and f.is_integer():
                return int(f) if abs(f) <= MAX_INT else TooLarge(v)
        return v
    if isinstance(v, numbers.Real):
        try:
            return float(v)
        except OverflowError:
            return TooLarge(v)
    return v


def whole_number(v: Any) -> int:
    """`v` as an int field would take it; ValueError with the reason otherwise."""
    n = _as_number(int, v)
    if isinstance(n, TooLarge):
        raise ValueError(f"number too large (more than {MAX_INT})")
    if type(n) is not int:
        raise ValueError(f"expected a whole number, got {describe(v)}")
    return n


class CheckedModel(BaseModel):
    """Strict scalars (see the module) for the fields of every subclass."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_as_written(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = data
        for name, kind in _number_fields(cls).items():
            v = data.get(name)
            if v is None or (type(v) is kind and (kind is float or -MAX_INT <= v <= MAX_INT)):
                continue
            new = _as_number(kind, v)
            if new is not v:
                if out is data:
                    out = dict(data)
                out[name] = new
        return out


def describe(v: Any) -> str:
    """A short, one-line account of a value given in a config."""
    if isinstance(v, TooLarge):
        return "a number too large"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        text = v if len(v) <= 40 else v[:37] + "..."
        return f"the string {text!r}"
    if v is None:
        return "null"
    if isinstance(v, numbers.Integral) and abs(int(v)) > MAX_INT:
        return "a number too large"
    if isinstance(v, numbers.Number):
        return repr(v)
    return {dict: "a mapping", list: "a list"}.get(type(v), type(v).__name__)


_EXPECTED = {
    "int_type": "a whole number", "int_parsing": "a whole number",
    "int_from_float": "a whole number", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
}


def _rephrase(err: dict[str, Any]) -> dict[str, Any]:
    kind, given = err.get("type"), err.get("input")
    if isinstance(given, TooLarge):
        limit = f" (more than {MAX_INT})" if kind in ("int_type", "int_parsing") else ""
        return {**err, "msg": f"number too large{limit}"}
    if kind in _EXPECTED:
        return {**err, "msg": f"expected {_EXPECTED[kind]}, got {describe(given)}"}
    if kind == "finite_number":
        return {**err, "msg": f"must be a finite number, got {given!r}"}
    return err


class _Rephrased:
    def __init__(self, exc: ValidationError) -> None:
        self._errors = [_rephrase(e) for e in exc.errors()]

    def errors(self) -> list[dict[str, Any]]:
        return self._errors


def describe_errors(exc: ValidationError) -> str:
    """One line for a config's validation errors, each naming its field and what was given."""
    return format_validation_error(_Rephrased(exc))


class StrictModel(CheckedModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
