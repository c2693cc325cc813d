"""Trial configs: base + sampled parameters + the trial cap, validated and estimated.

`build_trial_config` turns a study and one trial's parameters into a RunConfig (UserError when
the combination is invalid, e.g. n_head not dividing d_model); `infeasible` says why a config
cannot run under the cap on this machine (memory, or one step longer than the cap), from the
estimate alone, before anything is launched.
"""

from __future__ import annotations

from typing import Any

from budgetlm.config import RunConfig, tokens_per_step
from budgetlm.estimate import estimate, training_flops_per_token
from budgetlm.plan.recipe import trial_config, with_eval_cadence
from budgetlm.tune.spec import CAP_FIELDS, Study, TrialCap

# ---------------------------------------------------------------------------------------------
# Trial configs


def build_trial_config(study: Study, params: dict[str, Any], number: int) -> RunConfig:
    """base + params + trial cap + eval cadence -> a validated RunConfig (UserError if invalid)."""
    spec = study.spec
    cap = spec.trial_cap
    cfg = trial_config(
        study.base, params, name=f"{spec.name}-trial{number}", cap_field=CAP_FIELDS[cap.kind],
        cap_value=int(cap.value) if cap.kind in ("tokens", "steps") else cap.value,
        cap_fields=CAP_FIELDS.values(),
        meta={"tune": {"study": spec.name, "trial": number, "params": params}},
        source=f"trial {number}",
    )
    if spec.evals:
        cfg = with_eval_cadence(cfg, cap.kind, cap.value, spec.evals)
    return cfg


def infeasible(cfg: RunConfig, cap: TrialCap, profile: Any, share: int = 1) -> str | None:
    """Why `cfg` cannot run under `cap` on `profile` (None when it can): the estimate's memory
    exceeds 90% of the device memory available to one trial, or one step does not fit the cap."""
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
    step_tokens = tokens_per_step(1 if mb == "auto" else mb, cfg.train.grad_accum,
                                  cfg.model.seq_len)
    if cap.kind == "time" and est.step is not None and est.step.seconds > cap.value:
        return (
            f"cannot take one step within the cap: ~{est.step.seconds:.3g} s per step "
            f"(estimate) > {cap.value:g} s"
        )
    if cap.kind == "tokens" and step_tokens > cap.value:
        return f"cannot take one step within the cap: {step_tokens} tokens per step > cap"
    if cap.kind == "flops":
        per_step = training_flops_per_token(cfg).model * step_tokens
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
