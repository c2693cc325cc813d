"""What a plan's numbers mean and rest on, in words; and why a budget buys nothing."""

from __future__ import annotations

from budgetlm import laws
from budgetlm.config import DataConfig
from budgetlm.plan.arch import MOE_LOSS_RULE
from budgetlm.plan.budget import Budget, Target
from budgetlm.plan.ladder import LADDER_SPAN, ladder
from budgetlm.plan.pricing import MIN_STEPS, PRIOR_MIN_STEPS, Candidate, PlanContext
from budgetlm.units import format_count


def fit_note(law: laws.LossLaw, data: DataConfig, data_given: bool) -> str:
    """What a fitted law's predictions mean, and whether they apply to this plan's data."""
    level = float(law.extra.get("interval_level", 0.9))
    out = (f"loss: fit ({law.source}); nats/token on that corpus and tokenizer, with a "
           f"{level:.0%} interval (bootstrap refits + run-to-run scatter)")
    fdata = law.extra.get("data") or {}
    if fdata and (not data_given or fdata.get("source") != data.source
                  or fdata.get("tokenizer") != data.tokenizer):
        out += (f"; the fit is for {fdata.get('source')} ({fdata.get('tokenizer')}): pass the "
                "same --data and --tokenizer for its predictions to apply (until then the table "
                "shows Δ, the difference from the top candidate)")
    return out


def _loss_note(ctx: PlanContext, data: DataConfig, data_given: bool) -> str:
    law = ctx.law
    rule = f"; MoE loss: {MOE_LOSS_RULE['text']}" if ctx.arch == "moe" else ""
    if law.kind == "fit":
        return fit_note(law, data, data_given) + rule
    return (
        f"loss: {law.kind} ({law.source}); nats/token on that law's data and tokenizer, not "
        "this corpus's, so the table shows only Δ, each candidate's loss minus the top's "
        "(the absolute figure, with its unit, is in --json; `budgetlm calibrate` fits a law "
        "for this corpus whose losses are shown as they are)"
        + ("" if ctx.ref_seq is None else
           f"; includes a context-length heuristic relative to T={ctx.ref_seq}")
        + rule
    )


def _top_notes(top: Candidate, tgt: Target) -> list[str]:
    """Memory beyond one GPU, extrapolation, repeated data, priors outside their range (the
    lr's only under the standard parametrization: µP's is `mup_note`'s)."""
    notes = []
    if not tgt.memory_strict and top.memory_bytes and tgt.memory_limit \
            and top.memory_bytes > tgt.memory_limit:
        notes.append(
            f"memory: the top candidate needs {top.memory_bytes / 2**30:.0f} GiB even at "
            f"micro-batch {top.micro_batch}{' with checkpointing' if top.checkpointing else ''}: "
            f"more than one {tgt.memory_bytes / 2**30:.0f} GiB GPU; --gpu NAME --gpus K prices "
            "it sharded over K GPUs (FSDP)"
        )
    if top.extrapolated:
        notes.append(
            f"the top candidate ({format_count(top.params)} params, {format_count(top.tokens)} "
            "tokens) lies outside the range the law was fitted on: an extrapolation"
        )
    if top.epochs > 1.0 + 1e-9:
        notes.append(
            f"data-constrained: the top candidate repeats the data {top.epochs:.2f} epochs; "
            f"priced as {format_count(top.effective_tokens)} effective tokens (Muennighoff et al. "
            "2023)" + (" — beyond ~4 epochs repeats are worth much less than new data"
                       if top.epochs > 4 else "")
        )
    c_top = top.flops
    # under µP the lr is not DeepSeek's (`mup_note`): only the batch prior is out of range
    mup = top.parametrization == "mup"
    what, priors = ("batch", "prior was") if mup else ("lr and batch", "priors were")
    if c_top < laws.DEEPSEEK_FIT_RANGE[0]:
        notes.append(
            f"{what}: {c_top:.2g} FLOPs is below the range the DeepSeek LLM 2024 {priors} "
            f"fitted on (1e17-2e19): {'' if mup else 'lr held at its 1e17 value, '}batch "
            f"extrapolated and capped to give at least {PRIOR_MIN_STEPS} steps"
        )
    elif c_top > laws.DEEPSEEK_FIT_RANGE[1]:
        notes.append(f"{what}: DeepSeek LLM 2024 {priors.split()[0]} extrapolated to "
                     f"{c_top:.2g} FLOPs (fitted on 1e17-2e19)")
    return notes


def mup_note(top: Candidate) -> str | None:
    """Which lr prior a µP plan uses, and what the exported model does with it (None under the
    standard parametrization, whose lr note is DeepSeek's)."""
    if top.parametrization != "mup":
        return None
    lr, base = laws.mup_lr_prior()
    return (
        f"lr: µP prior (Maximal Update Parametrization, Yang et al. 2022): {lr:g} at base width "
        f"{base}, the same for every width, from Dey et al. 2023 (Cerebras-GPT µP: base "
        f"d_model {base}, eta_base {lr:g}), not DeepSeek's compute-dependent prior; the "
        f"exported model is µP relative to width {base} (top: d_model {top.shape.d_model}, "
        f"hidden-matrix Adam lr x{base / top.shape.d_model:.3g}); batch from the DeepSeek LLM "
        "2024 prior"
    )


def _time_notes(top: Candidate, tgt: Target, timed: list[str], busy: str | None,
                untimed: str | None = None) -> list[str]:
    """Where the step times come from (`untimed`: why steps were not timed)."""
    if tgt.kind in ("gpu", "flops") and tgt.profile is not None:
        return [
            f"time: {tgt.source} peak x default MFU by model size "
            f"(top: MFU {top.mfu:.0%}); {'measured' if tgt.source == 'measured' else 'unmeasured'}"
            + _devices_words(top, tgt)
        ]
    if tgt.kind != "time":
        return []
    if not timed:
        return ["time: estimated from the measured matmul peak x an efficiency by model size "
                f"(not timed{': ' + untimed if untimed else ''})" + _devices_words(top, tgt)]
    notes = [f"time: timed real steps of {len(timed)} candidates on this machine; the others "
             "are scaled by the measured/estimated ratio"]
    return notes + ([busy] if busy else [])


def _devices_words(top: Candidate, tgt: Target) -> str:
    """How the step time of several GPUs is made up ('' on one)."""
    if tgt.devices <= 1:
        return ""
    if top.step is None:
        return f"; {tgt.devices} GPUs data parallel, communication not priced"
    return (f"; plus the communication of {tgt.devices} GPUs"
            + (f" in {tgt.nodes} nodes" if tgt.nodes > 1 else "") + " not hidden behind compute")


def plan_notes(top: Candidate, ctx: PlanContext, data_description: str, data: DataConfig,
               data_given: bool, timed: list[str], busy: str | None,
               untimed: str | None = None) -> list[str]:
    """The notes of a plan whose best candidate is `top`, in the order they are shown."""
    return (
        [data_description, _loss_note(ctx, data, data_given)]
        + [n for n in (mup_note(top),) if n]
        + _top_notes(top, ctx.target)
        + _time_notes(top, ctx.target, timed, busy, untimed)
    )


def size_limit_note(top: Candidate, n_optimal: float, tgt: Target, law: laws.LossLaw,
                    bad: list[Candidate], fell_back: bool) -> str | None:
    """Why the top candidate is far smaller than the compute-optimal size `n_optimal` (in the
    law's parameter count): larger models do not fit one device, or the ladder ends."""
    n_top = law.n_of(top.active_params, top.active_non_embedding_params)
    if n_optimal <= 2 * n_top:
        return None
    bigger_did_not_fit = fell_back or any(
        c.reason.startswith("does not fit") and c.shape.approx_params > top.shape.approx_params
        for c in bad
    )
    if bigger_did_not_fit and tgt.memory_limit is not None and tgt.memory_bytes:
        where, more = _larger_needs(tgt)
        return (
            f"memory: the compute-optimal model for this budget (~{format_count(n_optimal)} "
            f"params) does not fit in {where} ({tgt.memory_limit / 2**30:.0f} of "
            f"{tgt.memory_bytes / 2**30:.0f} GiB usable): planned the largest that fit "
            f"({format_count(top.params)} params) on more tokens; a larger model needs {more}"
        )
    if top.shape.approx_params * LADDER_SPAN >= ladder()[-1].approx_params:
        return (
            f"size: this budget's compute-optimal model (~{format_count(n_optimal)} params) is "
            f"beyond the largest shape planned ({ladder()[-1].name}): planned the largest ones, "
            "trained on more tokens"
        )
    return None


def _larger_needs(tgt: Target) -> tuple[str, str]:
    """(where a larger model does not fit, what it needs) for `size_limit_note`."""
    if tgt.device != "cuda":
        return "this machine's memory", "more memory"
    if tgt.fabric is not None:
        return (f"{tgt.devices} GPUs even fully sharded (fsdp with checkpointing)",
                "more GPUs, or tensor or pipeline parallelism, which budgetlm does not plan")
    if tgt.devices > 1:
        return "one GPU", "an interconnect to price sharding over the GPUs"
    return "one GPU", ("more GPUs holding the model's weights between them (sharding): "
                       "--gpus K prices FSDP over K GPUs")


def why_nothing(budget: Budget, tgt: Target, bad: list[Candidate]) -> str:
    """The message when no candidate is feasible: the budget is too small, or nothing fits."""
    small = [c for c in bad if c.reason.startswith("budget too small")]
    if small:
        c = min(small, key=lambda c: c.params)
        flag = {"time": "--time", "flops": "--flops", "gpu_hours": "--gpu-hours",
                "cost": "--cost"}[budget.kind]
        value = {"time": budget.seconds, "flops": budget.flops, "gpu_hours": budget.gpu_hours,
                 "cost": budget.cost}[budget.kind]
        return (
            f"{flag} {value:g}: budget too small for the smallest model ({c.shape.name}, "
            f"{format_count(c.params)} params): {c.tokens:,} tokens, {c.steps} optimizer steps "
            f"(at least {MIN_STEPS} needed)"
        )
    if bad:
        c = min(bad, key=lambda c: c.memory_bytes or 0)
        return f"plan: no candidate fits on {tgt.name}: {c.shape.name} {c.reason}"
    return f"plan: no candidate for this budget on {tgt.name}"
