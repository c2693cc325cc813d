"""`budgetlm tune --around PLAN.yaml`: the study of small µP proxies of a planned model, derived
from the plan. (What runs it, transfers the best proxy and trains the planned width with the
time that is left: budgetlm.tune.around_run.)

µTransfer (Yang et al. 2022, "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot
Hyperparameter Transfer"): under the Maximal Update Parametrization the best learning rate,
initialization scale, batch size and schedule of a narrow model hold for a wider one of the same
depth, so they can be tuned on a model a fraction of the size. From the plan:

- its total wall time T: `train.max_time`, else `meta.predicted.seconds`; tuning gets `share`·T
  (default 0.2) as the study's time budget, and each trial a time cap of a third of that
  (`TRIALS_PER_BUDGET`; the median pruner acts on the time axis, as in every study): a trial
  must run past the first fast fall of the loss, where the fastest starter looks best whatever
  it does later (20 s proxies of a 600 s CPU plan, a 30th of its tokens, ranked the plan's own
  values first among 31 trials), and the median pruner acts only after a third of a trial's
  cap (`PRUNE_AFTER`), for the same reason; with the worse trials pruned then, three to five
  trials per worker start;
- the proxy: the plan with d_model = the proxy width (default d_model/4 rounded down to a
  multiple of 2·n_head, so every head keeps an even whole width; at least 32 and below d_model),
  d_ff, d_expert and d_head scaled by the same ratio when they are set, depth, heads, context,
  data and tokenizer unchanged; `parametrization: mup` anchored at the plan (`anchor_width`: the
  plan's own µP base width, else its d_model), so a proxy is the planned model narrowed with
  µP's rules (width multiplier proxy/anchor < 1: hidden Adam lr and readout multiplier x
  anchor/proxy, hidden init x sqrt(anchor/proxy)) and the plan's own values in a proxy are the
  plan's run at that width; the values transfer back unchanged, and the planned width trains
  exactly as the plan would with them (µP at multiplier 1 is standard parametrization). The
  plan's prediction is dropped (it is the planned width's);
- the space, a neighbourhood of the plan (a handful of trials cannot search wide ranges): lr
  log-uniform [lr/4, 4·lr] (from lr/16 when Lion is a choice: its lr is 3-10x smaller than
  AdamW's, Chen et al. 2023), init_std log-uniform [init_std/3, 3·init_std], the batch
  (`batch_param`: the micro-batch x1/2 to x4 without accumulation, else grad_accum x1/2 to x2),
  warmup_fraction [0, 0.1], decay_fraction [0.1, 0.5] for wsd (min_lr_ratio [0, 0.2] for
  linear and cosine), optimizer {the plan's, lion}, and dropout {0, the plan's} when the plan
  has some; each range widened to hold the plan's own value. The plan's dropout is sized for the
  epochs the plan predicts, and dropout also costs a CPU step about a third of its speed; a short
  proxy cannot show the overfitting it prevents and always ranks none first (36 s proxies of a
  600 s CPU plan ranked dropout 0 at 3.05-3.24 bpb against 3.70-3.82 with the plan's 0.1), so
  what guards the transferred run is the plan's early stopping, which in a wsd plan starts the
  cooldown where the validation loss stops improving (train.on_plateau) instead of ending the
  run unannealed, as one such run ended without it (stopped at 378 of 512 s: 2.287 held-out
  bpb against 2.252 with the plan's dropout in the same time; benchmarks/tune_vs_plan.py
  measures the whole, RESULTS.md). Not weight decay (the plan's 0.1 is kept);
- the first trials (enqueued; `first_trials`): the plan's own values, then the plan with one
  value moved at a time -- dropout off, lr x2, lr /2, the next larger batch -- before the
  sampler draws (its first draws are random, and a few random points in a space of seven
  dimensions rarely land near a good plan): a few trials are better spent as an incremental
  search from a good baseline (Google's Deep Learning Tuning Playbook, 2023): dropout first (on
  a CPU it changes the speed of a step as well as the loss), then the learning rate, the value
  loss is most sensitive to.

What a study file or `--set` gives overrides what is derived (a `space` entry whole, or one of
its attributes; a null entry removes a parameter).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budgetlm.config import (
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_config,
    read_yaml,
    validate,
)
from budgetlm.errors import UserError
from budgetlm.runner.caps import CAP_KINDS

DEFAULT_SHARE = 0.2
TRIALS_PER_BUDGET = 3  # default trial cap: the tuning budget / 3
MIN_PROXY_WIDTH = 32
LR_SPAN = 4.0  # lr from plan lr / 4 to plan lr x 4
LION_LR_SPAN = 16.0  # ... from plan lr / 16 when Lion is one of the optimizers
INIT_STD_SPAN = 3.0  # init_std from the plan's / 3 to x 3
PRUNE_AFTER = 1 / 3  # the median pruner waits for this share of a trial's cap
WARMUP_RANGE = (0.0, 0.1)
DECAY_RANGE = (0.1, 0.5)
MIN_LR_RANGE = (0.0, 0.2)
# What sets the proxy's shape: never transferred from a trial to the planned width.
WIDTH_PATHS = frozenset({"model.d_model", "model.d_ff", "model.d_expert", "model.d_head",
                         "model.parametrization", "model.mup_base_width"})


@dataclass(frozen=True)
class AroundOptions:
    """`budgetlm tune` flags that shape a study (None: not given)."""

    share: float | None = None
    proxy_width: int | None = None
    trial_time: float | None = None
    train_after: bool | None = None
    name: str | None = None


@dataclass(frozen=True)
class PlannedRun:
    """The plan a study is tuned around: its file, its config and its total wall seconds."""

    path: Path
    config: RunConfig
    seconds: float
    time_source: str  # train.max_time or meta.predicted.seconds


# ---------------------------------------------------------------------------------------------
# The plan


def resolve_plan(around: Any, study_dir: Path | None, where: str) -> Path:
    """The plan file `around` names: relative to the cwd, else to the study file's folder."""
    if not isinstance(around, str) or not around.strip():
        raise UserError(f"{where}: expected the path of a plan YAML (budgetlm plan -o)")
    p = Path(around)
    if p.is_file():
        return p
    if study_dir is not None and not p.is_absolute() and (study_dir / p).is_file():
        return study_dir / p
    if p.is_dir():
        raise UserError(f"{where} {around}: is a directory; expected a plan YAML")
    raise UserError(f"{where} {around}: no such file")


def read_plan(path: Path) -> PlannedRun:
    """The plan at `path`: a RunConfig YAML with a model and a time (`train.max_time`, else
    `meta.predicted.seconds`) that µP can train (the config's rules: an optimizer with a width
    rule, gpt or bert, not from_pretrained); UserError naming what is missing."""
    raw = read_yaml(path)
    if not isinstance(raw.get("model"), dict) and "preset" not in raw:
        raise UserError(f"{path}: no model section (tune --around needs a RunConfig YAML as "
                        "`budgetlm plan -o` writes)")
    cfg = load_config(str(path))
    seconds, source = cfg.train.max_time, "train.max_time"
    if seconds is None:
        predicted = cfg.meta.get("predicted")
        seconds = predicted.get("seconds") if isinstance(predicted, dict) else None
        source = "meta.predicted.seconds"
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"{path}: no time to divide: neither train.max_time nor "
                        "meta.predicted.seconds is set (plan with --time, or set train.max_time)")
    as_mup = cfg.model_dump(mode="json")
    as_mup["model"]["parametrization"] = "mup"  # the config's own µP rules refuse what µP can't
    validate(as_mup, source=f"{path} (tune --around trains it under µP)")
    return PlannedRun(path, cfg, float(seconds), source)


# ---------------------------------------------------------------------------------------------
# The proxy


def head_step(model: ModelConfig) -> int:
    """Proxy widths are multiples of this: 2·n_head (and 2·n_kv_head), so each head keeps an
    even whole width (rotary positions rotate pairs)."""
    return math.lcm(2 * model.n_head, 2 * model.kv_heads)


def proxy_width(model: ModelConfig, given: Any, where: str, plan: Path) -> int:
    """The proxy's d_model: `given` (checked), else d_model/4 rounded down to a multiple of
    `head_step`, at least 32, below d_model; UserError when there is none."""
    d, step = model.d_model, head_step(model)
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise UserError(f"{where}: expected a whole number >= 1, got {given!r}")
        if given >= d:
            raise UserError(f"{where}: {given} must be below the plan's d_model ({d})")
        if given % step:
            raise UserError(f"{where}: {given} is not a multiple of {step} (2·n_head: an even "
                            "whole width per head)")
        return given
    width = max(d // 4 // step * step, math.ceil(MIN_PROXY_WIDTH / step) * step)
    if width >= d:
        raise UserError(f"{plan}: no proxy width: d_model {d} has no multiple of {step} "
                        f"(2·n_head) of at least {MIN_PROXY_WIDTH} below it; pass --proxy-width")
    return width


def anchor_width(model: ModelConfig) -> int:
    """The µP base width proxies and plan share: the plan's own mup_base_width when it is a µP
    model with one, else its d_model (where µP is the plan's standard parametrization)."""
    if model.parametrization == "mup" and model.mup_base_width is not None:
        return model.mup_base_width
    return model.d_model


def proxy_fixed(model: ModelConfig, width: int, plan: Path) -> dict[str, Any]:
    """The RunConfig values that make the plan its proxy of d_model `width` (µP anchored at
    the plan: `anchor_width`)."""
    ratio = width / model.d_model
    out: dict[str, Any] = {
        "model.d_model": width, "model.parametrization": "mup",
        "model.mup_base_width": anchor_width(model),
        "meta.predicted": None,  # the plan's prediction is the planned width's
    }
    for field in ("d_ff", "d_expert"):
        value = getattr(model, field)
        if value is not None:
            out[f"model.{field}"] = max(1, round(value * ratio))
    if model.d_head is not None:
        head = model.d_head * ratio
        if abs(head - round(head)) > 1e-9 or round(head) < 1:
            raise UserError(f"{plan}: model.d_head {model.d_head} x {width}/{model.d_model} is "
                            "not a whole width; pass another --proxy-width")
        out["model.d_head"] = round(head)
    return out


# ---------------------------------------------------------------------------------------------
# The search space


def batch_param(train: TrainConfig) -> tuple[str, list[int]]:
    """The batch multiplier. Without accumulation, through the micro-batch: x1/2 (rounded), x1,
    x2, x4 -- a larger micro-batch is more tokens per second wherever memory allows (the
    planner's batch comes from a prior fitted far above small budgets), and a trial that runs
    out of memory is recorded as failed. With accumulation (the plan is memory-bound): grad_accum
    x1/2 (when whole), x1, x2."""
    mb, ga = train.micro_batch, train.grad_accum
    if ga == 1 and mb != "auto":
        return "train.micro_batch", sorted({max(1, round(mb / 2)), mb, 2 * mb, 4 * mb})
    if ga % 2 == 0:
        return "train.grad_accum", [ga // 2, ga, 2 * ga]
    return "train.grad_accum", [ga, 2 * ga]


def _float(bounds: tuple[float, float], value: float, log: bool = False) -> dict[str, Any]:
    """A float distribution over `bounds`, widened to hold the plan's `value`."""
    d: dict[str, Any] = {"type": "float", "low": min(bounds[0], value),
                         "high": max(bounds[1], value)}
    if log:
        d["log"] = True
    return d


def _sig(x: float) -> float:
    return float(f"{x:.3g}")


def default_space(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """The derived search space around the plan's values (see the module docstring)."""
    lr, opt, init = cfg.optim.lr, cfg.optim.name, cfg.model.init_std
    choices = [opt] if opt == "lion" else [opt, "lion"]
    low = lr / (LION_LR_SPAN if len(choices) > 1 else LR_SPAN)
    space: dict[str, dict[str, Any]] = {
        "optim.lr": {"type": "float", "low": min(_sig(low), lr),
                     "high": max(_sig(lr * LR_SPAN), lr), "log": True},
        "model.init_std": {"type": "float", "low": _sig(init / INIT_STD_SPAN),
                           "high": _sig(init * INIT_STD_SPAN), "log": True},
    }
    field, batches = batch_param(cfg.train)
    space[field] = {"type": "categorical", "choices": batches}
    sched = cfg.schedule
    space["schedule.warmup_fraction"] = _float(WARMUP_RANGE, sched.warmup_fraction)
    if sched.name == "wsd":
        space["schedule.decay_fraction"] = _float(DECAY_RANGE, sched.decay_fraction)
    elif sched.name in ("linear", "cosine"):
        space["schedule.min_lr_ratio"] = _float(MIN_LR_RANGE, sched.min_lr_ratio)
    if len(choices) > 1:
        space["optim.name"] = {"type": "categorical", "choices": choices}
    if cfg.model.dropout > 0:
        space["model.dropout"] = {"type": "categorical", "choices": [0.0, cfg.model.dropout]}
    return space


def value_at(data: dict[str, Any], dotted: str) -> Any:
    """`a.b.c` of a nested dict (None when absent)."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _fits(value: Any, dist: Any) -> bool:
    """Whether `value` is one the distribution (a space entry as a dict) can take."""
    if not isinstance(dist, dict):
        return False
    if dist.get("type") == "categorical":
        return value in (dist.get("choices") or [])
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    low, high = dist.get("low"), dist.get("high")
    if not isinstance(low, int | float) or not isinstance(high, int | float):
        return False
    return low <= value <= high and not (dist.get("log") and value <= 0)


def plan_values(cfg: RunConfig, space: dict[str, Any]) -> dict[str, Any]:
    """The plan's own value of each parameter of `space` that the space can take."""
    data = cfg.model_dump(mode="json")
    out = {}
    for key, dist in space.items():
        value = value_at(data, key)
        if value is not None and _fits(value, dist):
            out[key] = value
    return out


def first_trials(space: dict[str, Any], plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's values `plan` (of the parameters of `space` it has), then the plan with one
    moved at a time, each move one the space can take and that changes the value: dropout off,
    optim.lr x2 and /2, the batch to its next larger choice."""
    if not plan:
        return []
    out = [plan]

    def move(key: str, value: Any) -> None:
        if key in plan and value != plan[key] and _fits(value, space.get(key)):
            out.append({**plan, key: value})

    def dist(key: str) -> dict[str, Any]:
        d = space.get(key)
        return d if isinstance(d, dict) else {}

    move("model.dropout", 0.0)
    if isinstance(plan.get("optim.lr"), float):
        for factor in (2.0, 0.5):
            move("optim.lr", _sig(plan["optim.lr"] * factor))
    for key in ("train.micro_batch", "train.grad_accum"):
        choices = dist(key).get("choices") or []
        larger = [c for c in choices if isinstance(c, int) and c > plan.get(key, math.inf)]
        if larger:
            move(key, min(larger))
    return out


def merge_space(derived: dict[str, dict[str, Any]], given: Any) -> Any:
    """`given` (a study file's space) over the derived one: an entry with a type replaces,
    one without updates the derived entry's attributes, a null removes it."""
    if given is None:
        return derived
    if not isinstance(given, dict):
        return given  # the study's validation names it
    out: dict[str, Any] = {k: dict(v) for k, v in derived.items()}
    for key, dist in given.items():
        if dist is None:
            out.pop(key, None)
        elif isinstance(dist, dict) and "type" not in dist and key in out:
            out[key].update(dist)
        else:
            out[key] = dist
    return out


def merge_cap(base: Any, over: Any) -> Any:
    """Trial cap `over` on top of `base`: a cap kind in `over` replaces `base`'s; its other
    keys (grace, startup, stall) are merged."""
    if not isinstance(over, dict):
        return base if over is None else over
    if not isinstance(base, dict):
        return over
    if any(k in CAP_KINDS for k in over):
        base = {k: v for k, v in base.items() if k not in CAP_KINDS}
    return {**base, **over}


# ---------------------------------------------------------------------------------------------
# The study


def check_share(value: Any, where: str) -> float:
    """`value` as a share of the plan's time: a number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and 0 < value < 1
    ):
        raise UserError(f"{where}: must be a number > 0 and < 1 (the share of the plan's time "
                        f"spent tuning), got {value!r}")
    return float(value)


def with_options(raw: dict[str, Any], options: AroundOptions | None) -> dict[str, Any]:
    """The study `raw` with the command line's flags on top (each checked, naming the flag)."""
    if options is None:
        return raw
    out = dict(raw)
    around_only = {"--share": options.share, "--proxy-width": options.proxy_width,
                   "--no-train": options.train_after}
    for flag, value in around_only.items():
        if value is not None and out.get("around") is None:
            raise UserError(f"{flag}: only with --around PLAN.yaml (or a study file with around)")
    if options.share is not None:
        out["share"] = check_share(options.share, "--share")
    if options.proxy_width is not None:
        out["proxy_width"] = options.proxy_width
    if options.train_after is not None:
        out["train_after"] = options.train_after
    if options.name is not None:
        out["name"] = options.name
    if options.trial_time is not None:
        t = options.trial_time
        if not (math.isfinite(t) and t > 0):
            raise UserError(f"--trial-time: must be a finite number of seconds > 0, got {t:g}")
        out["trial_cap"] = merge_cap(out.get("trial_cap") or {}, {"time": float(t)})
    return out


def pruner_after_warmup(cap: Any) -> Any:
    """The median pruner, acting only after a trial has run PRUNE_AFTER of its cap (in the cap's
    units); None (the study's default pruner) when the cap is not a mapping with a value."""
    value = next((cap[k] for k in CAP_KINDS if k in cap), None) if isinstance(cap, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return {"type": "median", "warmup": round(value * PRUNE_AFTER, 3)}


def default_name(cfg: RunConfig) -> str:
    """`<plan name>-around`, made a valid study name."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.name).strip("-._") or "plan"
    return f"{stem}-around"


def derive_around(raw: dict[str, Any], study_dir: Path | None,
                  source: str | None) -> dict[str, Any]:
    """The study `raw` (which names `around`) with what the plan gives filled in: base, fixed
    (the proxy), trial_cap, budget, space and enqueue; what `raw` gives wins. `source`: the
    study file (None: the command line), for messages."""
    def where(field: str, flag: str) -> str:
        return f"{source}: {field}" if source is not None else flag

    plan = read_plan(resolve_plan(raw.get("around"), study_dir, where("around", "--around")))
    share = check_share(raw.get("share", DEFAULT_SHARE), where("share", "--share"))
    width = proxy_width(plan.config.model, raw.get("proxy_width"),
                        where("proxy_width", "--proxy-width"), plan.path)
    tuning = share * plan.seconds
    fixed = raw.get("fixed")
    space = merge_space(default_space(plan.config), raw.get("space"))
    out = {**raw, "around": str(plan.path), "share": share, "proxy_width": width}
    out.setdefault("name", default_name(plan.config))
    out.setdefault("base", str(plan.path))
    if fixed is None or isinstance(fixed, dict):  # else the study's validation names it
        out["fixed"] = {**proxy_fixed(plan.config.model, width, plan.path), **(fixed or {})}
    out["trial_cap"] = merge_cap({"time": round(tuning / TRIALS_PER_BUDGET, 3)},
                                 raw.get("trial_cap"))
    if "pruner" not in raw and (pruner := pruner_after_warmup(out["trial_cap"])) is not None:
        out["pruner"] = pruner
    budget = raw.get("budget")
    out["budget"] = {"time": round(tuning, 3), **budget} if isinstance(budget, dict) else (
        budget if budget is not None else {"time": round(tuning, 3)})
    out["space"] = space
    if "enqueue" not in raw and isinstance(space, dict):
        out["enqueue"] = first_trials(space, plan_values(plan.config, space))
    if "objective" not in raw and plan.config.task != "lm":
        out["objective"] = "val_loss"  # every task has one; val_bpb is the language model's
    return out
