"""The study file (`StudySpec`): what to tune, on what budget, with which sampler and pruner.

A study file is YAML validated by pydantic (unknown keys are errors). Its `space` maps dotted
paths into `RunConfig` (`optim.lr`, `model.n_layer`, `meta.fault`) to distributions; every
sampled config is built from `base` + `data` + `fixed` + the sampled values + the trial cap, then
validated and estimated before it may run (`build_trial_config`, `infeasible`).

`budgetlm schema study` prints the JSON Schema of this file (`study_json_schema`).
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from budgetlm.config import (
    PRESETS,
    DataConfig,
    RunConfig,
    _check_path,
    load_config,
    parse_override,
    read_yaml,
    set_path,
    validate,
)
from budgetlm.errors import UserError

Objective = Literal["val_bpb", "val_loss", "cost", "flops", "params", "seconds", "tokens", "memory"]
OBJECTIVES: tuple[str, ...] = Objective.__args__  # type: ignore[attr-defined]
SamplerName = Literal["tpe", "random", "cmaes", "gp", "nsga2"]
PrunerName = Literal["median", "sha", "hyperband", "none"]
CapKind = Literal["time", "tokens", "flops", "steps"]
CAP_KINDS: tuple[str, ...] = CapKind.__args__  # type: ignore[attr-defined]
CAP_FIELDS = {
    "time": "max_time", "tokens": "max_tokens", "flops": "max_flops", "steps": "max_steps"
}
# Intermediate values are reported on an integer axis: elapsed milliseconds, tokens, MFLOPs, steps.
AXIS_SCALE = {"time": 1000.0, "tokens": 1.0, "flops": 1e-6, "steps": 1.0}
AXIS_UNIT = {"time": "ms", "tokens": "tokens", "flops": "MFLOP", "steps": "steps"}
_STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------
# Distributions


class FloatParam(_Strict):
    """A float in [low, high], optionally log-uniform or on a grid of `step`."""

    type: Literal["float"]
    low: float = Field(description="lowest value")
    high: float = Field(description="highest value")
    log: bool = Field(False, description="sample log-uniformly (low must be > 0)")
    step: float | None = Field(None, gt=0.0, description="grid spacing (not with log)")

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: low ({self.low}) must be > 0")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot both be set")
        return self


class IntParam(_Strict):
    """An integer in [low, high], optionally log-uniform or on a grid of `step`."""

    type: Literal["int"]
    low: int = Field(description="lowest value")
    high: int = Field(description="highest value")
    log: bool = Field(False, description="sample log-uniformly (low must be >= 1)")
    step: int = Field(1, ge=1, description="grid spacing")

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low < 1:
            raise ValueError(f"log: low ({self.low}) must be >= 1")
        if self.log and self.step != 1:
            raise ValueError("step and log cannot both be set")
        return self


Scalar = None | bool | int | float | str


class CategoricalParam(_Strict):
    """One of a list of choices."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1, description="the values to choose from")

    @field_validator("choices")
    @classmethod
    def _unique(cls, v: list[Scalar]) -> list[Scalar]:
        seen: list[str] = []
        for c in v:
            key = json.dumps(c)
            if key in seen:
                raise ValueError(f"duplicate choice {c!r}")
            seen.append(key)
        return v


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


# ---------------------------------------------------------------------------------------------
# Caps, budget, sampler, pruner


class TrialCap(_Strict):
    """The hard cap of one trial: exactly one of time, tokens, flops or steps. It is also the
    resource axis that intermediate values are reported on (so pruners act on the budget)."""

    time: float | None = Field(None, gt=0.0, description="wall seconds of training per trial")
    tokens: int | None = Field(None, ge=1, description="training tokens per trial")
    flops: float | None = Field(None, gt=0.0, description="training FLOPs per trial (estimated)")
    steps: int | None = Field(None, ge=1, description="optimizer steps per trial")
    grace: float | None = Field(
        None, ge=0.0,
        description="seconds past cap x 1.1 before the tuner kills a time-capped trial "
        "(default 5 + 10% of the cap; covers the final eval and checkpoint)",
    )
    startup: float = Field(
        300.0, gt=0.0, description="seconds a trial may take to start training before it is killed"
    )
    stall: float = Field(
        600.0, gt=0.0,
        description="seconds without a new metrics line (after training starts) before a trial "
        "counts as hung and is killed",
    )

    @model_validator(mode="after")
    def _one_cap(self) -> TrialCap:
        given = [k for k in CAP_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of time, tokens, flops or steps"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in CAP_KINDS if getattr(self, k) is not None)

    @property
    def value(self) -> float:
        return float(getattr(self, self.kind))

    @property
    def grace_seconds(self) -> float:
        return 5.0 + 0.1 * self.value if self.grace is None else self.grace

    @property
    def axis_max(self) -> int:
        """The cap on the integer reporting axis."""
        return max(1, int(round(self.value * AXIS_SCALE[self.kind])))

    def describe(self) -> str:
        v = self.value
        if self.kind == "time":
            return f"{v:g} s"
        if self.kind == "flops":
            return f"{v:.3g} FLOPs"
        return f"{int(v):,} {self.kind}"


class BudgetSpec(_Strict):
    """The study's budget: whichever comes first."""

    time: float | None = Field(
        None, gt=0.0,
        description="wall seconds of this invocation; no trial starts that the median trial "
        "time would carry past it",
    )
    trials: int | None = Field(
        None, ge=1, description="trials in the study, finished or running (trials of a killed or "
        "interrupted tuner do not count: they run again)"
    )

    @model_validator(mode="after")
    def _some(self) -> BudgetSpec:
        if self.time is None and self.trials is None:
            raise ValueError("give time and/or trials")
        return self


class SamplerSpec(_Strict):
    type: SamplerName = Field("tpe", description="tpe | random | cmaes | gp | nsga2")
    n_startup_trials: int | None = Field(
        None, ge=0, description="random trials before the model-based sampler takes over"
    )


class PrunerSpec(_Strict):
    type: PrunerName = Field("median", description="median | sha | hyperband | none")
    min_resource: float | None = Field(
        None, gt=0.0,
        description="sha/hyperband: first rung, in cap units (seconds, tokens, FLOPs, steps); "
        "default cap / 9",
    )
    reduction_factor: int = Field(3, ge=2, description="sha/hyperband: keep 1/reduction_factor")
    n_startup_trials: int = Field(
        3, ge=0, description="median: trials that finish before pruning starts"
    )
    warmup: float = Field(
        0.0, ge=0.0, description="median: resource (cap units) before a trial may be pruned"
    )


def _shorthand(v: Any) -> Any:
    return {"type": v} if isinstance(v, str) else v


# ---------------------------------------------------------------------------------------------
# The study file


class StudySpec(_Strict):
    """A tuning study: search space over a base RunConfig, trial cap, budget, sampler, pruner."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="study name (also the output folder runs/<name>)",
    )
    storage: str | None = Field(
        None,
        description="sqlite:///PATH, journal:PATH or an RDB URL (postgresql://…, mysql://…); "
        "default sqlite:///runs/<name>/study.db",
    )
    base: str = Field(description="preset name or RunConfig YAML (relative to the study file)")
    data: dict[str, Any] | None = Field(
        None, description="DataConfig fields merged over the base config's data"
    )
    fixed: dict[str, Any] = Field(
        default_factory=dict, description="dotted RunConfig path -> value, applied to every trial"
    )
    objective: Objective | list[Objective] = Field(
        "val_bpb",
        description="what to minimize: val_bpb, val_loss, cost (training FLOPs spent), flops, "
        "params, seconds, tokens, memory (estimated bytes); a list makes a Pareto study",
    )
    trial_cap: TrialCap = Field(description="hard cap of each trial (and the pruning axis)")
    budget: BudgetSpec = Field(description="study budget: {time: seconds, trials: N}")
    sampler: SamplerSpec = Field(default_factory=SamplerSpec, description="sampler (or its name)")
    pruner: PrunerSpec = Field(default_factory=PrunerSpec, description="pruner (or its name)")
    seed: int = Field(0, description="sampler seed")
    workers: int = Field(1, ge=1, description="trials run at once on this machine (--workers)")
    threads: int | None = Field(
        None, ge=1,
        description="torch CPU threads per trial, written to train.threads (default: the "
        "config's train.threads, else CPU cores / workers)",
    )
    launcher: Literal["fork", "spawn"] = Field(
        "fork",
        description="fork: trials are forked from a server that imported torch once (Linux; "
        "saves seconds per trial); spawn: a fresh `python -m budgetlm.runner.child` per trial",
    )
    evals: int | None = Field(
        10, ge=1,
        description="evaluations per trial, spread over the cap (the pruner's checkpoints); "
        "null keeps the base config's eval_interval",
    )
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list,
        description="parameter sets to try first (e.g. the base config's own values)",
    )
    space: dict[str, Param] = Field(
        min_length=1, description="dotted RunConfig path -> distribution"
    )

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _name_only(cls, v: Any) -> Any:
        return _shorthand(v)

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, v: Any) -> Any:
        items = v if isinstance(v, list) else [v]
        if not items:
            raise ValueError("give at least one objective")
        for item in items:
            if item not in OBJECTIVES:
                raise ValueError(f"unknown objective {item!r}; one of {', '.join(OBJECTIVES)}")
        if len(set(items)) != len(items):
            raise ValueError("objectives repeat")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is not None:
            check_storage_url(v)
        return v

    @field_validator("data")
    @classmethod
    def _data(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        for key in v or {}:
            if key not in DataConfig.model_fields:
                hint = difflib.get_close_matches(key, list(DataConfig.model_fields), n=1)
                did = f" (did you mean data.{hint[0]}?)" if hint else ""
                raise _at(key, f"unknown key{did}")
        return v

    @field_validator("fixed")
    @classmethod
    def _fixed(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            _check_param_path(key, "fixed")
        return v

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            _check_param_path(key, "space")
        return v

    @model_validator(mode="after")
    def _cross(self) -> StudySpec:
        for i, params in enumerate(self.enqueue):
            for key, value in params.items():
                if key not in self.space:
                    raise _at(f"enqueue[{i}].{key}", "not a parameter of the space")
                dist = self.space[key]
                if isinstance(dist, CategoricalParam) and value not in dist.choices:
                    raise _at(f"enqueue[{i}].{key}", f"{value!r} is not one of the choices")
        if len(self.objectives) > 1 and self.sampler.type == "cmaes":
            raise _at("sampler", "cmaes is single-objective; use tpe, nsga2 or gp")
        return self

    # -- derived ---------------------------------------------------------------------------
    @property
    def objectives(self) -> list[str]:
        return list(self.objective) if isinstance(self.objective, list) else [self.objective]

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1


def _check_param_path(key: str, where: str) -> None:
    parts = key.split(".")
    if any(not p for p in parts):
        raise _at(key, "empty path component")
    try:
        _check_path(parts)
    except UserError as exc:
        msg = str(exc)
        hint = msg[msg.index("(did you mean"):] if "(did you mean" in msg else ""
        raise _at(key, f"unknown parameter path {hint}".strip()) from None
    if not _is_leaf(parts):
        raise _at(key, "not a single field (expected e.g. optim.lr)")
    if parts[0] == "train" and len(parts) == 2 and parts[1] in CAP_FIELDS.values():
        raise _at(key, "caps are set by trial_cap")


def _is_leaf(parts: list[str]) -> bool:
    """True when `parts` names one field (not a section, nothing below a scalar)."""
    cls: Any = RunConfig
    for i, part in enumerate(parts):
        if cls is None:
            return False
        if part == "meta" and i == 0:
            return len(parts) > 1
        ann = cls.model_fields[part].annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return cls is None


def check_storage_url(url: str) -> None:
    """Reject what optuna cannot open, with the accepted forms in the message."""
    accepted = "expected sqlite:///PATH, journal:PATH, postgresql://… or mysql://…"
    if url.startswith("journal:"):
        if not url[len("journal:"):].strip():
            raise ValueError(f"journal: needs a file path ({accepted})")
        return
    m = re.match(r"^([a-z][a-z0-9]*)(\+[a-z0-9_]+)?://(.*)$", url)
    if not m or m.group(1) not in _STORAGE_SCHEMES:
        raise ValueError(f"unsupported storage URL {url!r}; {accepted}")
    if m.group(1) == "sqlite":
        path = m.group(3)
        if not path.startswith("/") or len(path) < 2 or path in ("/:memory:",):
            raise ValueError(
                f"{url!r}: sqlite needs a file: sqlite:///relative/path.db or sqlite:////abs.db"
            )
    elif not m.group(3):
        raise ValueError(f"{url!r}: missing host/database")


def _at(sub: str, msg: str) -> ValueError:
    """A validation error about `sub` below the field being validated (see format_study_error)."""
    return ValueError(f"@{sub}@{msg}")


def format_study_error(exc: ValidationError) -> str:
    """One line naming each field: `space.optim.lr: low (0.1) must not exceed high (0.01)`."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        if len(loc) >= 3 and loc[0] == "space" and loc[2] in ("float", "int", "categorical"):
            del loc[2]  # the distribution's tag
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key"
        m = re.match(r"^@(.*?)@(.*)$", msg, re.S)
        if m:
            loc.append(m.group(1))
            msg = m.group(2)
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "; ".join(parts)


def study_json_schema() -> str:
    schema = StudySpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "budgetlm StudySpec"
    return json.dumps(schema, indent=2)


# ---------------------------------------------------------------------------------------------
# Loading a study file (+ --set overrides)


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
                if value is None:
                    space.pop(whole, None)
                else:
                    space[whole] = value
            elif len(path) >= 3:
                space.setdefault(".".join(path[1:-1]), {})[path[-1]] = value
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
                _set(out, path, value)
        elif head in RunConfig.model_fields:
            out.setdefault("fixed", {})[".".join(path)] = value
        else:
            known = list(StudySpec.model_fields) + list(RunConfig.model_fields)
            hint = difflib.get_close_matches(head, known, n=1)
            did = f" (did you mean {hint[0]}?)" if hint else ""
            raise UserError(f"--set {item}: unknown key {head!r}{did}")
    return out


def _set(node: dict[str, Any], path: list[str], value: Any) -> None:
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


def load_study(
    path: str | Path, overrides: list[str] | None = None, storage: str | None = None
) -> Study:
    """Read, override and validate a study file; resolve its base config. UserError on any
    mistake, naming the field."""
    p = Path(path)
    raw = read_yaml(p)
    raw = apply_study_overrides(raw, overrides)
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{p}: {format_study_error(exc)}") from None
    if storage is not None:
        try:
            check_storage_url(storage)
        except ValueError as exc:
            raise UserError(f"--storage: {exc}") from None
    base_spec = _resolve_base(spec.base, p.parent)
    try:
        base_cfg = load_config(base_spec)
    except UserError as exc:
        raise UserError(f"{p}: base: {exc}") from None
    base = base_cfg.model_dump(mode="json")
    if spec.data:
        base["data"].update(copy.deepcopy(spec.data))
    for key, value in spec.fixed.items():
        set_path(base, key, copy.deepcopy(value))
    try:
        validate(base, source="data/fixed")
    except UserError as exc:
        raise UserError(f"{p}: {exc}") from None
    return Study(spec, p, base, base_spec, storage_override=storage)
