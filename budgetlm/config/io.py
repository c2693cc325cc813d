"""Reading, changing and writing RunConfigs: load a preset or YAML file, apply `key=value`
overrides (`--set`), set typed values by dotted path, dump YAML, and the JSON Schema."""

from __future__ import annotations

import copy
import difflib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

from budgetlm.config.hf import PRETRAINED, hf_run_data, is_hf_config
from budgetlm.config.presets import preset
from budgetlm.config.schema import ModelConfig, RunConfig, validate
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


MAX_DEPTH = 100  # nesting levels in a YAML document
MAX_VALUES = 100_000  # values in a loaded document, aliases expanded
MAX_BYTES = 16 * 2**20  # size of a YAML file

# YAML 1.2 reads 1e-3 and 2e6 as numbers; PyYAML's YAML 1.1 rules take them for strings.
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class YamlLimitError(yaml.MarkedYAMLError):
    """A document this loader refuses: duplicate keys, nesting or size beyond the limits, or
    values that are not plain data (dates, bytes, sets)."""


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML with 1e-3 as a float, duplicate keys refused and nesting bounded."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlLimitError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            text = str(node.value) if isinstance(node.value, str) else node.tag
            short = text if len(text) <= 30 else text[:27] + "..."
            reason = str(exc).split(":")[0].split(";")[0]
            raise ConstructorError(
                None, None, f"cannot read {short!r}: {reason}", node.start_mark
            ) from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                raise ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            if first is not None:
                line = key_node.start_mark.line + 1
                raise YamlLimitError(
                    None, None, f"duplicate key {key!r} on line {line} (first on line {first + 1})"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.yaml_implicit_resolvers = {  # dates stay strings, as in YAML 1.2
    first: [(tag, rx) for tag, rx in rules if tag != "tag:yaml.org,2002:timestamp"]
    for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789.")
)


_PLAIN = (str, int, float, bool, type(None))


def _check_values(data: Any) -> None:
    """Refuse documents that expand (through aliases, or a cycle) to more than MAX_VALUES, or
    that hold anything but mappings, lists, strings, numbers, booleans and nulls."""
    stack, count = [data], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise YamlLimitError(
                None, None, f"more than {MAX_VALUES} values (aliases expanded)", None
            )
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif not isinstance(node, _PLAIN):
            raise YamlLimitError(None, None, f"unsupported value type {type(node).__name__}")


def load_yaml_text(text: str) -> Any:
    """One YAML document as Python data: safe types only, `1e-3` a float, duplicate keys and
    nesting beyond MAX_DEPTH refused (YamlLimitError), aliases expanding past MAX_VALUES too."""
    loader = _ConfigLoader(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    _check_values(data)
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line saying what is wrong with a YAML text, and where."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    problem = getattr(exc, "problem", None)
    if not problem:
        problem = (str(exc).splitlines() or ["invalid YAML"])[0]
    return f"{' '.join(str(problem).split())}{where}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], parsed value). Values are parsed as YAML scalars."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key=value (e.g. model.n_layer=4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise UserError(f"--set {item!r}: empty key")
    try:
        value = load_yaml_text(raw) if raw.strip() else None
    except YamlLimitError as exc:
        raise UserError(f"--set {key}: {_yaml_problem(exc)}") from None
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
        if not isinstance(part, str):
            raise UserError(f"{part!r}: unknown key (keys are names like model)")
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


def _read_text(p: Path) -> str:
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory, expected a YAML file") from None
    except PermissionError:
        raise UserError(f"{p}: permission denied (cannot read the file)") from None
    except OSError as exc:
        raise UserError(f"{p}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise UserError(f"{p}: larger than {MAX_BYTES // 2**20} MiB; not a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a text file (not UTF-8)") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in YAML file `path`; a one-line UserError naming the file otherwise (missing,
    unreadable, empty, invalid, duplicate keys, nested too deeply, not a mapping)."""
    p = Path(path)
    text = _read_text(p)
    try:
        raw = load_yaml_text(text)
    except YamlLimitError as exc:
        raise UserError(f"{p}: {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: invalid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise UserError(f"{p}: nested too deeply") from None
    if raw is None:
        raise UserError(f"{p} is empty: expected a YAML mapping of settings")
    if not isinstance(raw, dict):
        raise UserError(f"{p}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


class _DuplicateKeyError(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: str | Path) -> dict[str, Any]:
    """The mapping in JSON file `path` (a config.json); a one-line UserError naming the file
    otherwise (missing, unreadable, not JSON, duplicate keys, NaN, nested too deeply, not a
    mapping)."""
    p = Path(path)
    text = _read_text(p)
    try:
        raw = json.loads(text, object_pairs_hook=_json_object, parse_constant=_json_constant)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{p}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except ValueError as exc:
        raise UserError(f"{p}: not valid JSON: {exc}") from None
    except RecursionError:
        raise UserError(f"{p}: nested too deeply") from None
    if not isinstance(raw, dict):
        kind = {list: "a list", str: "a string", type(None): "null"}.get(type(raw), "a number")
        raise UserError(f"{p}: expected a mapping at the top level, got {kind}")
    return raw


def _read_config_file(spec: str) -> tuple[dict[str, Any], str]:
    """(the mapping, its file) for a YAML or JSON file, or a model directory's config.json."""
    p = Path(spec)
    if p.is_dir():
        inner = p / "config.json"
        if not inner.is_file():
            raise UserError(
                f"{p}: is a directory without a config.json (expected a YAML file or a "
                "Hugging Face model directory)"
            )
        return read_json(inner), str(inner)
    if p.suffix == ".json":
        return read_json(p), str(p)
    return read_yaml(p), str(p)


def _looks_like_path(spec: str) -> bool:
    if spec.endswith((".yaml", ".yml", ".json")) or "/" in spec:
        return True
    try:
        return Path(spec).exists()
    except (OSError, ValueError):
        return True


def pretrained_model_data(directory: str) -> dict[str, Any]:
    """The `model` section (plain data) a Hugging Face model directory's config.json gives
    `model.from_pretrained`, for the model types whose weights budgetlm loads (`PRETRAINED`)."""
    where = "model.from_pretrained"
    p = Path(directory).expanduser()
    if not p.is_dir():
        raise UserError(f"{where}: {p} is not a directory (a local Hugging Face model directory)")
    config_file = p / "config.json"
    if not config_file.is_file():
        raise UserError(f"{where}: {p} has no config.json")
    raw = read_json(config_file)
    mt = raw.get("model_type")
    if isinstance(mt, str) and mt not in PRETRAINED:
        raise UserError(f"{where}: {config_file}: model_type {mt!r} is not supported for "
                        f"from_pretrained yet (supported: {', '.join(PRETRAINED)})")
    return hf_run_data(raw, str(config_file))["model"]


def _explicit_model(model: Any, overrides: list[str] | None) -> dict[str, Any]:
    """The model keys a user wrote (a file's `model:` section, then `--set model.*`)."""
    out = copy.deepcopy(model) if isinstance(model, dict) else {}
    for item in overrides or []:
        path, value = parse_override(item)
        if path[0] != "model":
            continue
        if len(path) == 1:
            out = copy.deepcopy(value) if isinstance(value, dict) else out
        else:
            set_path(out, ".".join(path[1:]), value)
    return out


def _with_pretrained(data: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """`data` with its model section read from `model.from_pretrained` (when set) and the
    user's explicit model keys on top. A model section that spells out every field (a run's
    config.yaml, a plan) is already resolved and left alone."""
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("from_pretrained"), str):
        return data
    if set(ModelConfig.model_fields) <= set(explicit):
        return data
    out = dict(data)
    out["model"] = {**pretrained_model_data(model["from_pretrained"]), **explicit}
    return out


def load_config(spec: str, overrides: list[str] | None = None) -> RunConfig:
    """Load a RunConfig from a preset name, a YAML (or JSON) file, or a Hugging Face config.json
    (the file, or the model directory holding it), then apply `key=value` overrides.

    A YAML file may name `preset: NAME` at its top to start from a preset. With
    `model.from_pretrained: DIR`, the model section is DIR's config.json with the model keys
    the file and the overrides give on top (a preset's model section does not apply).
    """
    explicit: Any = {}
    if _looks_like_path(spec):
        raw, path = _read_config_file(spec)
        hf = is_hf_config(raw)
        if hf:
            raw = hf_run_data(raw, path)
        explicit = raw.get("model")
        base_name = raw.pop("preset", None)
        if base_name is not None:
            if not isinstance(base_name, str):
                raise UserError(f"{spec}: preset: expected a preset name")
            try:
                base = preset(base_name)
            except UserError as exc:
                raise UserError(f"{spec}: preset: {exc}") from None
            raw = _deep_merge(base.model_dump(), raw)
        source = path if hf else str(spec)
        for top in raw:
            if top not in RunConfig.model_fields:
                try:
                    check_path([top])
                except UserError as exc:
                    raise UserError(f"{spec}: {exc}") from None
    else:
        raw = preset(spec).model_dump()
        source = f"preset {spec}"
    merged = _with_pretrained(apply_overrides(raw, overrides), _explicit_model(explicit, overrides))
    try:
        return validate(merged, source=source)
    except UserError:
        if not overrides:
            raise
        validate(_with_pretrained(raw, _explicit_model(explicit, [])), source=source)
        return validate(merged, source="--set")


def with_overrides(cfg: RunConfig, overrides: list[str] | None) -> RunConfig:
    """`cfg` with `key=value` strings (as typed on a command line) applied and validated.

    `--set model.from_pretrained=DIR` takes the model section from DIR, with the `--set
    model.*` keys on top."""
    if not overrides:
        return cfg
    data = apply_overrides(cfg.model_dump(), overrides)
    explicit = _explicit_model({}, overrides)
    if "from_pretrained" in explicit:
        data = _with_pretrained(data, explicit)
    return validate(data, source="--set")


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
