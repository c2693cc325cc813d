"""Reading, changing and writing RunConfigs: load a preset or YAML file, apply `key=value`
overrides (`--set`), set typed values by dotted path, dump YAML, and the JSON Schema."""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from budgetlm.config.presets import preset
from budgetlm.config.schema import RunConfig, validate
from budgetlm.errors import UserError
from budgetlm.units import atomic_write_text


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], parsed value). Values are parsed as YAML scalars."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key=value (e.g. model.n_layer=4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise UserError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def check_path(path: list[str]) -> None:
    """Reject unknown dotted paths with a close-match suggestion."""
    cls: type[BaseModel] | None = RunConfig
    for i, part in enumerate(path):
        if cls is None:
            return
        fields = cls.model_fields
        if part not in fields:
            dotted = ".".join(path[: i + 1])
            hint = difflib.get_close_matches(part, list(fields), n=1)
            suggest = f" (did you mean {'.'.join(path[:i] + hint)}?)" if hint else ""
            raise UserError(f"{dotted}: unknown key{suggest}")
        ann = fields[part].annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if part == "meta":
            return


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for item in overrides or []:
        path, value = parse_override(item)
        check_path(path)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[path[-1]] = value
    return out


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating levels as needed."""
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if p.is_dir():
        raise UserError(f"{p}: is a directory, expected a YAML file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{p}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a text file") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{p}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def _looks_like_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml", ".json")) or "/" in spec or Path(spec).exists()


def load_config(spec: str, overrides: list[str] | None = None) -> RunConfig:
    """Load a RunConfig from a preset name or a YAML file, then apply `key=value` overrides.

    A YAML file may name `preset: NAME` at its top to start from a preset.
    """
    if _looks_like_path(spec):
        raw = read_yaml(spec)
        base_name = raw.pop("preset", None)
        if base_name is not None:
            if not isinstance(base_name, str):
                raise UserError(f"{spec}: preset: expected a preset name")
            raw = _deep_merge(preset(base_name).model_dump(), raw)
        source = str(spec)
    else:
        raw = preset(spec).model_dump()
        source = f"preset {spec}"
    for top in raw:
        if top not in RunConfig.model_fields:
            check_path([top])
    raw = apply_overrides(raw, overrides)
    return validate(raw, source=source)


def with_overrides(cfg: RunConfig, overrides: list[str] | None) -> RunConfig:
    """`cfg` with `key=value` strings (as typed on a command line) applied and validated."""
    if not overrides:
        return cfg
    return validate(apply_overrides(cfg.model_dump(), overrides), source="--set")


def with_values(cfg: RunConfig, values: dict[str, Any], source: str = "config") -> RunConfig:
    """`cfg` with typed values set by dotted path (`{"model.vocab_size": 257}`), validated.

    The path is checked like an override (unknown keys are errors with a close match); values
    keep their Python types (no parsing of strings)."""
    if not values:
        return cfg
    data = cfg.model_dump()
    for dotted, value in values.items():
        check_path(dotted.split("."))
        set_path(data, dotted, value)
    return validate(data, source=source)


def to_yaml(cfg: RunConfig) -> str:
    header = "# budgetlm RunConfig (resolved). Run it with: budgetlm train THIS_FILE\n"
    body = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    return header + body


def dump_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write `cfg` as a runnable YAML file (atomically)."""
    return atomic_write_text(path, to_yaml(cfg))


def json_schema() -> str:
    schema = RunConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "budgetlm RunConfig"
    return json.dumps(schema, indent=2)
