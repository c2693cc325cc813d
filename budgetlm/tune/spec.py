"""A study: its file (`budgetlm.tune.schema.StudySpec`) read, overridden and validated, with
its base config resolved.

Every sampled trial config is built from `base` + `data` + `fixed` + the sampled values + the
trial cap, then validated and estimated before it may run (budgetlm.tune.trials). A study that
names a plan (`around`, or `tune --around`) gets what it leaves out derived from the plan first
(budgetlm.tune.around). The names a study file is made of are importable from here as well
(`StudySpec`, `TrialCap`, the distributions, `CAP_FIELDS`, `AXIS_SCALE`, `check_storage_url`,
`study_json_schema`).
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from budgetlm.config import (
    PRESETS,
    RunConfig,
    load_config,
    parse_override,
    read_yaml,
    set_path,
    validate,
)
from budgetlm.errors import UserError
from budgetlm.runner.caps import AXIS_SCALE, AXIS_UNIT, CAP_FIELDS, CAP_KINDS, CapKind, TrialCap
from budgetlm.tune.around import AroundOptions, derive_around, with_options
from budgetlm.tune.params import CategoricalParam, FloatParam, IntParam, Param
from budgetlm.tune.schema import (
    OBJECTIVES,
    BudgetSpec,
    Objective,
    PrunerSpec,
    SamplerSpec,
    StudySpec,
    format_study_error,
    study_json_schema,
)
from budgetlm.tune.storage import check_storage_url

__all__ = [
    "AXIS_SCALE", "AXIS_UNIT", "CAP_FIELDS", "CAP_KINDS", "OBJECTIVES", "BudgetSpec",
    "CapKind", "CategoricalParam", "FloatParam", "IntParam", "Objective", "Param", "PrunerSpec",
    "SamplerSpec", "Study", "StudySpec", "TrialCap", "apply_study_overrides", "around_study",
    "build_study", "check_storage_url", "format_study_error", "load_study", "study_json_schema",
]


class Study:
    """A loaded study: the validated spec, where it came from, and its resolved base config."""

    def __init__(self, spec: StudySpec, path: Path, base: dict[str, Any], base_source: str,
                 storage_override: str | None = None):
        self.spec = spec
        self.path = path
        self.base = base  # RunConfig dump of base (+data, +fixed)
        self.base_source = base_source
        self.storage_url = storage_override or spec.storage or (
            f"sqlite:///runs/{spec.name}/study.db"
        )

    @property
    def outdir(self) -> Path:
        return Path("runs") / self.spec.name


def apply_study_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """`--set` for a study: study fields (budget.trials=4, storage=…, seed=1: the sampler's),
    space entries (space.optim.lr.high=0.1, or a whole `space.X={type: …}`), or RunConfig
    fields for every trial (model.n_layer=4 goes to `fixed`; fixed.seed=1 for the trainer's)."""
    out = copy.deepcopy(raw)
    for item in overrides or []:
        path, value = parse_override(item)
        head = path[0]
        if head == "space":
            space = out.setdefault("space", {})
            if not isinstance(space, dict):
                raise UserError(f"--set {item}: space is not a mapping")
            whole = ".".join(path[1:])
            if len(path) >= 2 and (whole in space or isinstance(value, dict) or value is None):
                space[whole] = value  # null removes it (also a parameter `around` derives)
            elif len(path) >= 3:
                key = ".".join(path[1:-1])
                if not isinstance(space.get(key), dict):
                    space[key] = {}
                space[key][path[-1]] = value
            else:
                raise UserError(f"--set {item}: expected space.PATH.ATTR=value")
        elif head == "data" and len(path) > 1:
            data = out.get("data") or {}
            set_path(data, ".".join(path[1:]), value)
            out["data"] = data
        elif head in StudySpec.model_fields:  # study fields first: name, seed, budget.trials
            if head == "fixed" and len(path) > 1:
                out.setdefault("fixed", {})[".".join(path[1:])] = value
            else:
                _set_study_field(out, path, value)
        elif head in RunConfig.model_fields:
            out.setdefault("fixed", {})[".".join(path)] = value
        else:
            known = list(StudySpec.model_fields) + list(RunConfig.model_fields)
            hint = difflib.get_close_matches(head, known, n=1)
            did = f" (did you mean {hint[0]}?)" if hint else ""
            raise UserError(f"--set {item}: unknown key {head!r}{did}")
    return out


def _set_study_field(node: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        nxt = node.get(part)
        if isinstance(nxt, str):  # `sampler: tpe` shorthand
            nxt = {"type": nxt}
        if not isinstance(nxt, dict):
            nxt = {}
        node[part] = nxt
        node = nxt
    node[path[-1]] = value


def _resolve_base(base: str, study_dir: Path) -> str:
    """A file relative to the cwd, else to the study file, else a preset name."""
    p = Path(base)
    if p.exists():
        return str(p)
    rel = study_dir / base
    if not p.is_absolute() and rel.exists():
        return str(rel)
    if base in PRESETS:
        return base
    if base.endswith((".yaml", ".yml", ".json")) or "/" in base:
        raise UserError(f"base: no such file {base!r}")
    hint = difflib.get_close_matches(base, list(PRESETS), n=1)
    raise UserError(
        f"base: {base!r} is neither a file nor a preset"
        + (f" (did you mean {hint[0]}?)" if hint else f"; presets: {', '.join(PRESETS)}")
    )


def _check_objectives(spec: StudySpec, base: dict[str, Any], p: str | Path) -> None:
    """Objectives the base config's task measures: val_bpb is not measured for classification
    (use val_error or val_loss), val_error only is."""
    task = base.get("task", "lm")
    for o in spec.objectives:
        if o == "val_bpb" and task == "classification":
            raise UserError(f"{p}: objective: val_bpb is not measured for task classification; "
                            "use val_error (1 - accuracy) or val_loss")
        if o == "val_error" and task != "classification":
            raise UserError(f"{p}: objective: val_error needs a base with task: classification")


def load_study(
    path: str | Path, overrides: list[str] | None = None, storage: str | None = None,
    options: AroundOptions | None = None,
) -> Study:
    """Read, override and validate a study file; resolve its base config. UserError on any
    mistake, naming the field."""
    p = Path(path)
    return build_study(read_yaml(p), p, overrides, storage, options)


def around_study(plan: str | Path, overrides: list[str] | None = None,
                 storage: str | None = None, options: AroundOptions | None = None) -> Study:
    """The study of `budgetlm tune --around PLAN.yaml` (no study file; see budgetlm.tune.around)."""
    return build_study({"around": str(plan)}, None, overrides, storage, options)


def build_study(raw: dict[str, Any], path: Path | None, overrides: list[str] | None,
                storage: str | None, options: AroundOptions | None = None) -> Study:
    """A study from the mapping `raw` of study file `path` (None: the command line's
    `--around`): overridden, derived from its plan when it names one, validated, its base
    config resolved."""
    raw = with_options(apply_study_overrides(raw, overrides), options)
    if raw.get("around") is not None:
        raw = derive_around(raw, path.parent if path is not None else None,
                            str(path) if path is not None else None)
    label = str(path) if path is not None else f"--around {raw.get('around')}"
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{label}: {format_study_error(exc)}") from None
    if storage is not None:
        try:
            check_storage_url(storage)
        except ValueError as exc:
            raise UserError(f"--storage: {exc}") from None
    base_spec = _resolve_base(spec.base, path.parent if path is not None else Path("."))
    try:
        base_cfg = load_config(base_spec)
    except UserError as exc:
        raise UserError(f"{label}: base: {exc}") from None
    base = base_cfg.model_dump(mode="json")
    if spec.data:
        base["data"].update(copy.deepcopy(spec.data))
    for key, value in spec.fixed.items():
        set_path(base, key, copy.deepcopy(value))
    try:
        validate(base, source="data/fixed")
    except UserError as exc:
        raise UserError(f"{label}: {exc}") from None
    _check_objectives(spec, base, label)
    return Study(spec, path if path is not None else Path(str(spec.around)), base, base_spec,
                 storage_override=storage)
