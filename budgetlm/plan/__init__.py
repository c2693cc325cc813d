"""Budget -> candidates -> feasibility -> ranking -> Plan (runnable configs).

`plan(Budget(...))` answers: with this budget, which GPT shape, sequence length, precision,
micro-batch x accumulation, learning rate and schedule give the lowest predicted loss, and will it
fit and finish. The steps:

1. Interpret the budget (DESIGN §3; `budget`). `--time` is wall time on this machine, priced with
   its measured profile; `--gpu-hours` / `--cost` are device-hours of a GPU (this machine's if it
   has one, else the named or a reference H100 SXM from the datasheet table, "unmeasured");
   `--flops` is model FLOPs (6·N·D plus attention) with no device unless `--gpu` names one.
2. Candidates: shapes from a size ladder (`ladder`: geometric in non-embedding parameters,
   width/depth growing from ~32 for tiny models to ~128 for large ones, heads of 32 below
   width 256 and 64 above) built in one recipe (`arch`: gpt2, llama — the default on a GPU —
   or moe, priced by active FLOPs and all parameters in memory) x sequence length x precision
   (only those with a peak on the device; never assumed faster: each is priced with
   `profile.peak(precision)`).
3. Feasibility (`pricing`): the largest power-of-two micro-batch that fits in memory (estimator,
   with a margin), activation checkpointing only when even micro-batch 1 does not fit; step time
   from the estimator (measured peak on this machine, datasheet peak x default MFU elsewhere;
   optionally corrected by timing real steps, `timing`); tokens reachable in the budget. On
   several GPUs with an interconnect (`--gpus K --nodes M --interconnect NAME`, `parallel`):
   per candidate the layout (ddp, fsdp with or without resharding after forward, hsdp across
   nodes) and checkpointing that fit memory per GPU (`estimate.rank_memory`) with the shortest
   step, compute plus the communication not hidden behind it (`estimate.comm_time`). fp8 is
   priced from the datasheet when asked for (`precision`), as an estimate only.
4. Batch and learning rate from the DeepSeek LLM 2024 priors for the run's compute (below their
   fitted range the lr is held at its 1e17-FLOP value and the batch is capped so a short run
   still takes PRIOR_MIN_STEPS steps); under µP (`parametrization="mup"`) the lr is instead
   `laws.mup_lr_prior`'s, the same at every width (Cerebras-GPT's base lr 6e-3 at width 256),
   and the exported model is µP relative to that width; AdamW (0.9, 0.95 — 0.99 for small
   batches, as nanoGPT); a WSD schedule (Hägele et al. 2024) to zero, driven by the binding cap
   so the run ends annealed (`recipe`).
5. Prediction: L(N, D) of the chosen prior (`budgetlm.laws`), with repeated epochs priced by
   Muennighoff et al. 2023, plus a small labelled context-length heuristic; ranked lowest first
   (`planner`), with the Pareto front (`pareto`) and plan.json (`files`).

Nothing here imports torch at load: only timing real steps (--time budgets on this machine, when
asked) and measuring a missing profile for `--time` do.
"""

from budgetlm.plan.budget import (
    CPU_MEMORY_MARGIN,
    GPU_MEMORY_MARGIN,
    REFERENCE_GPU,
    Budget,
    PlanProfile,
    Target,
    local_flops_target,
    resolve_target,
)
from budgetlm.plan.files import CandidateRecord, PlanFile
from budgetlm.plan.ladder import (
    LADDER_RATIO,
    LADDER_SPAN,
    Shape,
    head_dim_for,
    ladder,
    target_aspect,
)
from budgetlm.plan.pareto import pareto
from budgetlm.plan.planner import DEFAULT_GPU_VOCAB, Plan, plan
from budgetlm.plan.pricing import (
    CPU_MICRO_BATCH_CAP,
    GPU_MICRO_BATCH_CAP,
    MIN_BATCH_SEQS,
    MIN_STEPS,
    PRIOR_MIN_STEPS,
    TIME_EVAL_SHARE,
    TIME_EVALS,
    AffineMemory,
    Candidate,
    PlanContext,
    finish_candidate,
    model_config,
    price_candidates,
)
from budgetlm.plan.recipe import (
    SMALL_BATCH_TOKENS,
    predicted,
    run_config,
    trial_config,
    with_eval_cadence,
)
from budgetlm.plan.timing import (
    TIMED,
    TIMING_PROBES,
    TIMING_SECONDS,
    measure_throughput,
    time_and_rescale,
)

__all__ = [
    "CPU_MEMORY_MARGIN",
    "CPU_MICRO_BATCH_CAP",
    "DEFAULT_GPU_VOCAB",
    "GPU_MEMORY_MARGIN",
    "GPU_MICRO_BATCH_CAP",
    "LADDER_RATIO",
    "LADDER_SPAN",
    "MIN_BATCH_SEQS",
    "MIN_STEPS",
    "PRIOR_MIN_STEPS",
    "REFERENCE_GPU",
    "SMALL_BATCH_TOKENS",
    "TIMED",
    "TIMING_PROBES",
    "TIMING_SECONDS",
    "TIME_EVALS",
    "TIME_EVAL_SHARE",
    "AffineMemory",
    "Budget",
    "Candidate",
    "CandidateRecord",
    "Plan",
    "PlanContext",
    "PlanFile",
    "PlanProfile",
    "Shape",
    "Target",
    "finish_candidate",
    "head_dim_for",
    "ladder",
    "local_flops_target",
    "measure_throughput",
    "model_config",
    "pareto",
    "plan",
    "predicted",
    "price_candidates",
    "resolve_target",
    "run_config",
    "target_aspect",
    "time_and_rescale",
    "trial_config",
    "with_eval_cadence",
]
