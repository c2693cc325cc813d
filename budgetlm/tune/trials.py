"""Trial configs: base + sampled parameters + the trial cap, validated and estimated.

`build_trial_config` turns a study and one trial's parameters into a RunConfig (UserError when
the combination is invalid, e.g. n_head not dividing d_model); `infeasible` says why a config
cannot run under the cap on this machine (memory, or one step longer than the cap), from the
estimate alone, before anything is launched.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from budgetlm.config import RunConfig, set_path, validate
from budgetlm.tune.spec import CAP_FIELDS, Study, StudySpec, TrialCap

# ---------------------------------------------------------------------------------------------
# Trial configs


def build_trial_config(study: Study, params: dict[str, Any], number: int) -> RunConfig:
    """base + params + trial cap + eval cadence -> a validated RunConfig (UserError if invalid)."""
    spec = study.spec
    d = copy.deepcopy(study.base)
    for key, value in params.items():
        set_path(d, key, value)
    train = d["train"]
    for f in CAP_FIELDS.values():
        train[f] = None
    cap = spec.trial_cap
    train[CAP_FIELDS[cap.kind]] = int(cap.value) if cap.kind in ("tokens", "steps") else cap.value
    train["keep_last"] = 1
    d["name"] = f"{spec.name}-trial{number}"
    meta = dict(d.get("meta") or {})
    meta["tune"] = {"study": spec.name, "trial": number, "params": params}
    d["meta"] = meta
    cfg = validate(d, source=f"trial {number}")
    if spec.evals:
        cfg = _with_eval_cadence(cfg, spec)
    return cfg


def _with_eval_cadence(cfg: RunConfig, spec: StudySpec) -> RunConfig:
    """Spread `spec.evals` evaluations over the cap (the pruner's reporting points)."""
    cap = spec.trial_cap
    t = cfg.train
    d = cfg.model_dump(mode="json")
    if cap.kind == "time":
        d["train"]["eval_time_interval"] = cap.value / spec.evals
        d["train"]["eval_interval"] = 10**9
    else:
        mb = t.micro_batch
        if mb == "auto":
            return cfg
        tokens_per_step = mb * t.grad_accum * cfg.model.seq_len
        if cap.kind == "steps":
            steps = cap.value
        elif cap.kind == "tokens":
            steps = cap.value / tokens_per_step
        else:
            from budgetlm.estimate import flops_per_token

            f = flops_per_token(cfg.model, False)
            steps = cap.value / ((f.forward + f.backward) * tokens_per_step)
        d["train"]["eval_interval"] = max(1, int(math.ceil(steps / spec.evals)))
        d["train"]["eval_time_interval"] = None
    return RunConfig.model_validate(d)


def infeasible(cfg: RunConfig, cap: TrialCap, profile: Any, share: int = 1) -> str | None:
    """Why `cfg` cannot run under `cap` on `profile` (None when it can): the estimate's memory
    exceeds 90% of the device memory available to one trial, or one step does not fit the cap."""
    from budgetlm.estimate import estimate, flops_per_token

    est = estimate(cfg, profile)
    if profile is not None and getattr(profile, "device_memory_bytes", 0):
        limit = 0.9 * profile.device_memory_bytes / max(1, share)
        if est.memory.total > limit:
            gib = 2**30
            per = f" per trial ({share} at once)" if share > 1 else ""
            return (
                f"too big for memory: needs ~{est.memory.total / gib:.2f} GiB (estimate), "
                f"{limit / gib:.2f} GiB available{per}"
            )
    mb = cfg.train.micro_batch
    tokens_per_step = (1 if mb == "auto" else mb) * cfg.train.grad_accum * cfg.model.seq_len
    if cap.kind == "time" and est.step is not None and est.step.seconds > cap.value:
        return (
            f"cannot take one step within the cap: ~{est.step.seconds:.3g} s per step "
            f"(estimate) > {cap.value:g} s"
        )
    if cap.kind == "tokens" and tokens_per_step > cap.value:
        return f"cannot take one step within the cap: {tokens_per_step} tokens per step > cap"
    if cap.kind == "flops":
        f = flops_per_token(cfg.model, False)
        per_step = (f.forward + f.backward) * tokens_per_step
        if per_step > cap.value:
            return f"cannot take one step within the cap: {per_step:.3g} FLOPs per step > cap"
    return None


def short_params(params: dict[str, Any]) -> str:
    """`lr=3e-3 n_layer=4` for tables."""
    parts = []
    for k, v in params.items():
        bits = k.split(".")
        name = bits[-2] if bits[-1] == "name" and len(bits) > 1 else bits[-1]
        if isinstance(v, float):
            parts.append(f"{name}={v:.3g}")
        else:
            parts.append(f"{name}={v}")
    return " ".join(parts)
