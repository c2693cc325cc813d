"""`budgetlm calibrate`: fit this corpus's own scaling law from cheap pilots, then plan the rest.

Published laws were fitted on other people's data, tokenizers and code; their absolute losses do
not transfer. Teams that train well fit their own law on small runs first (Hoffmann et al. 2022
§3.2: IsoFLOP profiles; Yang et al. 2022, µTransfer: a 40M proxy tuned for ~7% of the cost of the
6.7B run). This package spends a stated fraction of the budget doing that:

1. Design (`design`). `levels` compute levels a factor `level_ratio` apart and `sizes` model sizes
   at each (IsoFLOP profiles: every pilot of a level trains for the same FLOPs). Sizes are rungs
   of the planner's ladder spread by `size_spread` around the prior's compute-optimal size for
   the level. Each pilot is configured by the planner's own recipe for a FLOP budget (batch and
   lr priors, AdamW, a WSD schedule driven by its token cap so it ends annealed): the pilots and
   the final run differ only in size and compute, which is what the law is about. On a time
   budget the levels are scaled so the pilots' predicted wall time (throughput timed on this
   machine, plus a per-pilot overhead) fills PLAN_SHARE of the pilot budget; before each level
   the rest are scaled down again if the pilots so far ran slower than predicted.
2. Pilots (`run`) run one at a time through the trial runner (`budgetlm.runner.process`: a
   forked or spawned child per run, a hard time limit, a stall watchdog). Each finished pilot is
   appended to `pilots.jsonl` in the state directory; re-running the same command reuses them
   (the design is saved in `design.json`, so a rerun asks for exactly the same pilots).
3. Fit (`fit`). L(N, D) = E + A/N^alpha + B/D^beta on (total parameters, effective tokens, final
   validation loss in nats/token): Huber loss on log-loss from many starts, bootstrap intervals
   (`budgetlm.laws.fitting.chinchilla`). Repeated epochs enter as Muennighoff et al.'s effective
   data D'. E is held at or below the best compression rate of the validation tokens
   (`budgetlm.laws.entropy`): pilots' loss curves flatten early, and a free fit reads that as a
   floor (E = 1.63 nats/byte on builtin:pystdlib, above what bz2 gets, 1.10, and what a
   20-minute run then reached, 1.33). Kaplan et al.'s form, with no floor, is fitted to the same
   pilots (`budgetlm.laws.fitting.kaplan`).
4. Plan (`calibration`). The rest of the budget (total minus the pilots' measured wall time) is
   planned from the fitted laws at the pilots' sequence length and precision. Nine pilots cannot
   tell the two forms apart, and far beyond the pilots they disagree, so a prediction is their
   geometric mean and its interval spans both forms' intervals (bootstrap spread and single-run
   scatter each); `budgetlm train` of the plan records predicted against actual. fit.json is
   described by `files.FitFile`.
"""

from budgetlm.calibrate.calibration import (
    EXIT_RESERVE_S,
    LEVEL_RATIO,
    LEVELS,
    MAX_PILOT_FRACTION,
    PILOT_FRACTION,
    SIZE_SPREAD,
    SIZES,
    Calibration,
    calibrate,
    plan_path,
    plan_rest,
    state_dir,
)
from budgetlm.calibrate.design import (
    EVAL_TOKENS,
    MAX_PILOT_PARAMS,
    PILOT_OVERHEAD_S,
    PLAN_SHARE,
    Design,
    DesignOptions,
    Pilot,
    PilotDesigner,
    design,
    eval_tokens,
)
from budgetlm.calibrate.files import FitFile
from budgetlm.calibrate.fit import fit_pilots
from budgetlm.calibrate.run import CalibrationInterrupted, read_records

__all__ = [
    "EVAL_TOKENS",
    "EXIT_RESERVE_S",
    "LEVELS",
    "LEVEL_RATIO",
    "MAX_PILOT_FRACTION",
    "MAX_PILOT_PARAMS",
    "PILOT_FRACTION",
    "PILOT_OVERHEAD_S",
    "PLAN_SHARE",
    "SIZES",
    "SIZE_SPREAD",
    "Calibration",
    "CalibrationInterrupted",
    "Design",
    "DesignOptions",
    "FitFile",
    "Pilot",
    "PilotDesigner",
    "calibrate",
    "design",
    "eval_tokens",
    "fit_pilots",
    "plan_path",
    "plan_rest",
    "read_records",
    "state_dir",
]
