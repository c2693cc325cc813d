"""The recipe: a priced candidate -> a runnable RunConfig, and a tuner trial -> a RunConfig.

`run_config` is the one place a candidate becomes a config: the planner's exported run and
calibrate's pilots both come from it (the pilots differ only in name, evaluation cadence,
checkpoints, device and meta). AdamW as in DeepSeek LLM (0.9, 0.95, wd 0.1); a WSD schedule
(Hägele et al. 2024) to zero, driven by the binding cap so the run ends annealed.
`trial_config` builds a tuner trial's config from a base, sampled parameters and the trial cap.
Under µP (`parametrization` mup) the model is µP relative to `laws.mup_lr_prior`'s base width
and the lr is that prior's (Dey et al. 2023), not DeepSeek's; `check_parametrization` refuses
what µP has no rule for.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

from budgetlm import laws
from budgetlm.config import (
    DataConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    set_path,
    validate,
)
from budgetlm.config.kinds import NO_MUP_RULE
from budgetlm.errors import UserError
from budgetlm.estimate import training_flops_per_token
from budgetlm.plan.arch import MOE_LOSS_RULE
from budgetlm.plan.budget import Budget, Target
from budgetlm.plan.data_limited import dropout_for, patience_for
from budgetlm.plan.precision import ESTIMATE_ONLY
from budgetlm.plan.pricing import TIME_EVALS, Candidate, model_config

SMALL_BATCH_TOKENS = 16384  # below this many tokens per step, AdamW beta2 = 0.99
PARAMETRIZATIONS = ("standard", "mup")


def check_parametrization(parametrization: str, optimizer: str = "adamw",
                          family: str = "gpt") -> None:
    """--parametrization: standard or mup; µP needs an optimizer with a width rule (not
    adafactor or lamb, `config.kinds.NO_MUP_RULE`) and a gpt or bert model (not t5). UserError
    in one line otherwise."""
    if parametrization not in PARAMETRIZATIONS:
        raise UserError(f"--parametrization: expected standard or mup, got {parametrization!r}")
    if parametrization != "mup":
        return
    if optimizer in NO_MUP_RULE:
        raise UserError(f"--parametrization mup: {optimizer} has no µP rule "
                        f"({NO_MUP_RULE[optimizer]}); plan it with adamw")
    if family == "t5":
        raise UserError("--parametrization mup: applies to gpt and bert, not t5 (t5 scales its "
                        "own logits)")


def parametrization_fields(c: Candidate) -> dict[str, Any]:
    """The model fields of candidate `c`'s parametrization: under mup, µP relative to the lr
    prior's base width (`laws.mup_lr_prior`); none under the standard one (its defaults)."""
    if c.parametrization != "mup":
        return {}
    return {"parametrization": "mup", "mup_base_width": laws.mup_lr_prior()[1]}


def schedule_config(c: Candidate, schedule: str) -> ScheduleConfig:
    """Warm-up of up to 5% (2000 steps at most), then `schedule` (wsd decays to zero)."""
    warmup = min(0.05, 2000 / max(c.steps, 1))
    return ScheduleConfig(
        name=schedule, warmup_fraction=round(max(warmup, 0.002), 4),
        min_lr_ratio=0.0 if schedule == "wsd" else 0.1, decay_fraction=0.2, driver="auto",
    )


def optim_config(c: Candidate, optimizer: str) -> OptimConfig:
    """AdamW as in DeepSeek LLM (0.9, 0.95, wd 0.1) at the candidate's prior lr; beta2 0.99 for
    small batches, as nanoGPT does "because the number of tokens per iter is small"
    (config/train_shakespeare_char)."""
    beta2 = 0.99 if c.batch_tokens < SMALL_BATCH_TOKENS else 0.95
    return OptimConfig(name=optimizer, lr=float(f"{c.lr:.3g}"), beta1=0.9, beta2=beta2,
                       weight_decay=0.1, grad_clip=1.0)


def train_config(c: Candidate, target: Target, *, eval_interval: int | None = None,
                 eval_tokens: int | None = None, checkpoints: bool = True,
                 keep_last: int | None = None, device: str | None = None) -> TrainConfig:
    """Precision, batching and the cap of the budget: wall time on this machine (evaluated
    TIME_EVALS times by the clock), else the candidate's tokens. The keyword arguments replace
    the recipe's evaluation cadence, evaluation tokens, periodic checkpoints, kept checkpoints
    and device."""
    train: dict[str, Any] = {
        "precision": c.precision,
        "micro_batch": c.micro_batch,
        "grad_accum": c.grad_accum * c.devices,  # the trainer splits micro-steps over ranks
        "activation_checkpointing": c.checkpointing,
        "device": target.device if target.kind == "time" else "auto",
        "log_interval": max(1, min(10, c.steps // 50)),
    }
    if target.kind == "time":
        train["max_time"] = float(target.wall_seconds)  # type: ignore[arg-type]
        # a run the repetition cap ends early: its tokens as a second cap, evaluated as often
        span = float(c.seconds if c.capped and c.seconds else target.wall_seconds)  # type: ignore
        train["eval_time_interval"] = span / TIME_EVALS
        train["eval_interval"] = max(1, c.steps)
        train["eval_tokens"] = c.eval_tokens
        if c.capped:
            train["max_tokens"] = int(c.tokens)
    else:
        train["max_tokens"] = int(c.tokens)
        train["eval_interval"] = max(1, c.steps // 20)
        if c.steps >= 2000 and checkpoints:
            train["checkpoint_interval"] = max(1, c.steps // 10)
    train["patience"] = patience_for(c.epochs)  # early stopping when the data repeats
    if c.parallel is not None:  # several GPUs: the layout the plan priced
        train["parallel"] = c.parallel
        if c.reshard_after_forward is not None:
            train["reshard_after_forward"] = c.reshard_after_forward
    given = {"eval_interval": eval_interval, "eval_tokens": eval_tokens,
             "keep_last": keep_last, "device": device}
    train.update({k: v for k, v in given.items() if v is not None})
    return TrainConfig(**train)


def predicted(c: Candidate, *, law: laws.LossLaw, unique_tokens: int | None,
              target: Target) -> dict[str, Any]:
    """What the plan predicts for candidate `c` (a run's `meta.predicted`)."""
    fitted = law.kind == "fit"
    out: dict[str, Any] = {
        "loss": c.loss,
        "loss_kind": law.kind,
        "loss_unit": "nats/token (this corpus and tokenizer; fitted law)" if fitted else
                     f"nats/token ({law.name} {law.kind}; its own data and tokenizer)",
        "law": law.name,
        "loss_law": c.loss_law,
        "context_adjustment": c.context_adjustment,
        "extrapolated": c.extrapolated,
        "params": c.params,
        "arch": c.shape.arch,
        "tokens": c.tokens,
        "epochs": c.epochs,
        "unique_tokens": unique_tokens,
        "flops": c.flops,
        "step_seconds": (c.batch_tokens / c.tokens_per_s) if c.tokens_per_s else None,
        "seconds": c.seconds,
        "tokens_per_s": c.tokens_per_s,
        "time_source": c.time_source,
        "memory_bytes": c.memory_bytes,
        "budget_source": target.source,
    }
    if c.active_params != c.params:
        out["active_params"] = c.active_params
        out["loss_rule"] = dict(MOE_LOSS_RULE)
    if c.step is not None:  # several GPUs: the step's compute and communication
        out["layout"] = c.step_model.layout.label
        out.update(c.step.to_dict())
    if c.loss_lo is not None:
        out["loss_lo"], out["loss_hi"] = c.loss_lo, c.loss_hi
        out["interval_level"] = float(law.extra.get("interval_level", 0.9))
    bpn = law.extra.get("bpb_per_nat") if fitted else None
    if bpn:
        out["bpb_per_nat"] = bpn
        for k in ("", "_lo", "_hi"):
            v = out.get(f"loss{k}")
            if v is not None:
                out[f"bpb{k}"] = v * bpn
    return out


def run_config(
    c: Candidate, *, target: Target, law: laws.LossLaw, data: DataConfig,
    unique_tokens: int | None, optimizer: str, schedule: str, family: str, seed: int,
    budget: Budget | None = None, name: str | None = None, meta: dict[str, Any] | None = None,
    **train_options: Any,
) -> RunConfig:
    """Candidate `c` as a runnable RunConfig: model (µP when `c.parametrization` is mup),
    AdamW at `c.lr`, schedule, caps, evaluation, and `meta` (default: the plan's provenance and
    `predicted`, which needs `budget`).

    name: default `plan-<shape>`; train_options: `train_config`'s keyword arguments.
    An estimate-only candidate (fp8) has no config: UserError.
    """
    if c.estimate_only:
        raise UserError(f"{c.name}: an estimate only ({ESTIMATE_ONLY[c.precision]}); the "
                        "trainer cannot run it")
    if meta is None:
        if budget is None:
            raise ValueError("run_config: a plan's meta needs the budget")
        meta = {
            "planned_by": "budgetlm plan",
            "budget": budget.to_dict(),
            "interpretation": target.first_line,
            "predicted": predicted(c, law=law, unique_tokens=unique_tokens, target=target),
        }
    model = model_config(c.shape, c.seq_len, c.vocab_size, family).model_copy(
        update={"dropout": dropout_for(c.epochs),  # regularized when the data repeats
                **parametrization_fields(c)})
    if c.vocab_chosen and data.tokenizer == "bpe":  # the BPE trained at the planned size
        data = data.model_copy(update={"bpe_vocab_size": c.vocab_size})
    return RunConfig(
        name=name or f"plan-{c.shape.name}" + ("" if c.shape.arch == "gpt2"
                                                else f"-{c.shape.arch}"),
        seed=seed, model=model,
        optim=optim_config(c, optimizer), schedule=schedule_config(c, schedule), data=data,
        train=plateau_config(train_config(c, target, **train_options), schedule), meta=meta,
    )


def plateau_config(train: TrainConfig, schedule: str) -> TrainConfig:
    """A wsd run that stops early cools down first: patience running out starts the cooldown
    (train.on_plateau), so the best checkpoint is an annealed one."""
    if schedule != "wsd" or train.patience is None:
        return train
    return train.model_copy(update={"on_plateau": "cooldown"})


def trial_config(base: dict[str, Any], params: dict[str, Any], *, name: str,
                 cap_field: str, cap_value: float, cap_fields: Iterable[str],
                 meta: dict[str, Any], source: str) -> RunConfig:
    """base + params (dotted paths) + one cap -> a validated RunConfig (UserError if invalid).

    Every field of `cap_fields` is cleared and `cap_field` set to `cap_value`; one checkpoint is
    kept; `meta` is added to the base's meta."""
    d = copy.deepcopy(base)
    for key, value in params.items():
        set_path(d, key, value)
    for f in cap_fields:
        set_path(d, f"train.{f}", None)
    set_path(d, f"train.{cap_field}", cap_value)
    set_path(d, "train.keep_last", 1)
    d["name"] = name
    d["meta"] = {**(d.get("meta") or {}), **meta}
    return validate(d, source=source)


def with_eval_cadence(cfg: RunConfig, cap_kind: str, cap_value: float, evals: int) -> RunConfig:
    """`evals` evaluations spread over a cap of `cap_kind` ("time", "steps", "tokens" or
    "flops") and `cap_value`: by the clock under a time cap, else every so many steps (left as
    it is while the micro-batch is "auto")."""
    if cap_kind == "time":
        update: dict[str, Any] = {"eval_time_interval": cap_value / evals,
                                  "eval_interval": 10**9}
    else:
        if cfg.train.micro_batch == "auto":
            return cfg
        if cap_kind == "steps":
            steps = cap_value
        elif cap_kind == "tokens":
            steps = cap_value / cfg.tokens_per_step
        else:
            steps = cap_value / (training_flops_per_token(cfg).model * cfg.tokens_per_step)
        update = {"eval_interval": max(1, int(math.ceil(steps / evals))),
                  "eval_time_interval": None}
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=update)})
