"""The study file's schema (`StudySpec`): what to tune, on what budget, with which sampler and
pruner.

A study file is YAML validated by pydantic (unknown keys are errors). Its `space` maps dotted
paths into `RunConfig` (`optim.lr`, `model.n_layer`, `meta.fault`) to distributions.
`format_study_error` turns a validation error into one line naming each field;
`study_json_schema` is what `budgetlm schema study` prints.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from budgetlm.config import DataConfig, RunConfig, check_path
from budgetlm.errors import UserError
from budgetlm.runner.caps import CAP_FIELDS, TrialCap
from budgetlm.tune.params import CategoricalParam, Param, StrictModel
from budgetlm.tune.storage import check_storage_url

Objective = Literal[
    "val_bpb", "val_loss", "val_error", "cost", "flops", "params", "seconds", "tokens", "memory"
]
OBJECTIVES: tuple[str, ...] = Objective.__args__  # type: ignore[attr-defined]
SamplerName = Literal["tpe", "random", "cmaes", "gp", "nsga2"]
PrunerName = Literal["median", "sha", "hyperband", "none"]


class BudgetSpec(StrictModel):
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


class SamplerSpec(StrictModel):
    type: SamplerName = Field("tpe", description="tpe | random | cmaes | gp | nsga2")
    n_startup_trials: int | None = Field(
        None, ge=0, description="random trials before the model-based sampler takes over"
    )


class PrunerSpec(StrictModel):
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


def shorthand(v: Any) -> Any:
    """`tpe` -> `{type: tpe}`: a sampler or pruner given by its name alone."""
    return {"type": v} if isinstance(v, str) else v


# ---------------------------------------------------------------------------------------------
# The study file


class StudySpec(StrictModel):
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
        description="what to minimize: val_bpb, val_loss, val_error (classification: 1 - "
        "validation accuracy of the model the run keeps), cost (training FLOPs spent), flops, "
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
    around: str | None = Field(
        None,
        description="a planned RunConfig YAML (as `budgetlm plan -o` writes; relative to the "
        "study file): tune µP proxies of it, transfer the best to its width and train that "
        "with the rest of its time (budgetlm.tune.around); base, trial_cap, budget and space "
        "may then be omitted: they are derived from the plan",
    )
    share: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="around: share of the plan's time spent tuning (default 0.2)",
    )
    proxy_width: int | None = Field(
        None, ge=1,
        description="around: d_model of the proxies (default d_model / 4, whole even heads, "
        "at least 32)",
    )
    train_after: bool = Field(
        True, description="around: train the transferred config with the time that is left"
    )

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _name_only(cls, v: Any) -> Any:
        return shorthand(v)

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
                raise field_error(key, f"unknown key{did}")
        return v

    @field_validator("space", mode="before")
    @classmethod
    def _drop_removed(cls, v: Any) -> Any:
        """A null entry removes a parameter (`--set space.PATH=null`)."""
        return {k: d for k, d in v.items() if d is not None} if isinstance(v, dict) else v

    @field_validator("fixed", "space")
    @classmethod
    def _param_paths(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            check_param_path(key)
        return v

    @model_validator(mode="after")
    def _cross(self) -> StudySpec:
        for i, params in enumerate(self.enqueue):
            for key, value in params.items():
                if key not in self.space:
                    raise field_error(f"enqueue[{i}].{key}", "not a parameter of the space")
                dist = self.space[key]
                if isinstance(dist, CategoricalParam) and value not in dist.choices:
                    raise field_error(f"enqueue[{i}].{key}", f"{value!r} is not one of the choices")
        if self.around is None:
            for key in ("share", "proxy_width"):
                if getattr(self, key) is not None:
                    raise field_error(key, "only with around (a plan to tune around)")
            if not self.train_after:
                raise field_error("train_after", "only with around (a plan to tune around)")
        if len(self.objectives) > 1 and self.sampler.type == "cmaes":
            raise field_error("sampler", "cmaes is single-objective; use tpe, nsga2 or gp")
        return self

    # -- derived ---------------------------------------------------------------------------
    @property
    def objectives(self) -> list[str]:
        return list(self.objective) if isinstance(self.objective, list) else [self.objective]

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1


def check_param_path(key: str) -> None:
    """ValueError unless `key` names one RunConfig field a study may set (not a cap)."""
    parts = key.split(".")
    if any(not p for p in parts):
        raise field_error(key, "empty path component")
    try:
        check_path(parts)
    except UserError as exc:
        msg = str(exc)
        hint = msg[msg.index("(did you mean"):] if "(did you mean" in msg else ""
        raise field_error(key, f"unknown parameter path {hint}".strip()) from None
    if not is_leaf(parts):
        raise field_error(key, "not a single field (expected e.g. optim.lr)")
    if parts[0] == "train" and len(parts) == 2 and parts[1] in CAP_FIELDS.values():
        raise field_error(key, "caps are set by trial_cap")


def is_leaf(parts: list[str]) -> bool:
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


def field_error(sub: str, msg: str) -> ValueError:
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


# What a study file with `around` may leave out (the plan gives it).
DERIVED_FROM_AROUND = ("name", "base", "trial_cap", "budget", "space")


def study_json_schema() -> str:
    """The JSON Schema of a study file (`budgetlm schema study`). A file that names `around`
    may leave out what the plan gives (`budgetlm.tune.around.derive_around`): name, base,
    trial_cap, budget and space are required only without it."""
    schema = StudySpec.model_json_schema()
    derived = [k for k in DERIVED_FROM_AROUND if k in schema.get("required", [])]
    schema["required"] = [k for k in schema.get("required", []) if k not in derived]
    if not schema["required"]:
        del schema["required"]
    schema["anyOf"] = [{"required": ["around"]}, {"required": derived}]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "budgetlm StudySpec"
    return json.dumps(schema, indent=2)
