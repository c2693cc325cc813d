"""`budgetlm tune --around PLAN.yaml`: run the proxy study (budgetlm.tune.around derives it),
transfer the best proxy trial to the planned width and train that with the time that is left.

The transfer (µTransfer, Yang et al. 2022): the best trial's values (lr, init_std, batch,
warmup/decay, optimizer, and any other parameter of the space but the proxy's shape; not the
study's `fixed` values, which are the proxies') go onto the plan's config unchanged: the proxies
are µP models anchored at the plan (budgetlm.tune.around.anchor_width), so the plan's width is
where their lr and init mean what the plan's do, and the planned model trains in the plan's own
parametrization with what the narrow proxies found best (scaled by µP's rules between the two
widths: a proxy's hidden Adam lr is lr·d_model/proxy width, the plan's lr). Its
`train.max_time` is the plan's
time T less the wall time tuning took, measured from the command's start to the transfer
(start-up, trials, outputs); its evaluation clock is scaled to keep the plan's number of
evaluations; `meta.tuned_around` records where it came from. It is written (atomically) to
runs/<study>/transferred.yaml, runnable by `budgetlm train`, then trained in its own process by
the tuner's trial launcher into runs/<study>/final (final-2, … on a rerun), after the study's
outputs and around.json are written, so a crash of the final run loses none of them.
around.json (`AroundFile`) is rewritten when the run ends.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from budgetlm.config import RunConfig, set_path, validate, with_overrides
from budgetlm.errors import UserError
from budgetlm.runner import Outcome, TrialCap, run_trial_process
from budgetlm.tune.api import run_study
from budgetlm.tune.around import WIDTH_PATHS, PlannedRun, read_plan
from budgetlm.tune.around_files import (
    AroundFile,
    BestRecord,
    FinalRecord,
    SettingsRecord,
    TrialCounts,
)
from budgetlm.tune.around_report import render_around
from budgetlm.tune.export import all_trials, best_trial, unfinished_line, write_config
from budgetlm.tune.report import render_summary
from budgetlm.tune.resources import trial_env, trial_threads
from budgetlm.tune.spec import Study
from budgetlm.units import write_json


def run_around(study: Study, workers: int | None = None, console: Any = None,
               quiet: bool = False, show: Any = None,
               started: float | None = None) -> dict[str, Any]:
    """Tune the proxies (`console`, `quiet`: as `run_study`), transfer, train; the around.json
    record. `show`: the console for the tables (None: none, e.g. --json); `started`: the
    monotonic time the command started (default now), which the tuning time counts from."""
    t0 = time.monotonic() if started is None else started
    plan = read_plan(Path(str(study.spec.around)))
    record: dict[str, Any] = {}

    def after(tuner: Any, summary: dict[str, Any]) -> None:
        if show is not None:
            render_summary(show, summary, study, unfinished=False)
        record.update(finish(study, plan, tuner, t0, show))

    run_study(study, workers=workers, console=console, quiet=quiet, after=after)
    return record


def base_record(study: Study, plan: PlannedRun, obj: Any) -> dict[str, Any]:
    """around.json's fields known once the study has run (no transfer yet)."""
    spec = study.spec
    width = int(spec.proxy_width or 0)
    states = [t.state.name for t in all_trials(obj) if t.state.name != "WAITING"]
    best = best_trial(study, obj)
    share = float(spec.share or 0.0)
    return {
        "status": "no trial finished", "plan": str(plan.path), "plan_name": plan.config.name,
        "study": spec.name, "storage": study.storage_url, "total_seconds": plan.seconds,
        "time_source": plan.time_source, "share": share,
        "tuning_budget_seconds": spec.budget.time, "tuning_seconds": 0.0,
        "tuning_fraction": 0.0, "d_model": plan.config.model.d_model, "proxy_width": width,
        "width_mult": plan.config.model.d_model / width,
        "trials": TrialCounts(total=len(states), complete=states.count("COMPLETE"),
                              pruned=states.count("PRUNED"), failed=states.count("FAIL")),
        "best": None if best is None else BestRecord(
            number=best.number, objective=spec.objectives[0], value=float(best.values[0]),
            params=dict(best.params)),
        "plan_settings": SettingsRecord.of(plan.config), "notes": [],
    }


def write_record(study: Study, record: dict[str, Any]) -> dict[str, Any]:
    """Validate `record` as around.json, write it atomically; its JSON form."""
    data = AroundFile.model_validate(record).model_dump(mode="json")
    write_json(study.outdir / "around.json", data)
    return data


def transferred_config(study: Study, plan: PlannedRun, best: Any, spent: float) -> RunConfig:
    """The plan with the best trial's values (in the plan's parametrization: the proxies' µP is
    anchored at it), capped at the plan's time less `spent`, with its provenance in
    meta.tuned_around."""
    spec = study.spec
    width = int(spec.proxy_width or 0)
    d = plan.config.model_dump(mode="json")
    for key, value in best.params.items():
        if key not in WIDTH_PATHS:  # the proxy's shape stays the proxy's
            set_path(d, key, value)
    remaining = plan.seconds - spent
    train = d["train"]
    if train.get("eval_time_interval"):  # the plan's number of evaluations, on the new clock
        train["eval_time_interval"] = round(train["eval_time_interval"] * remaining
                                            / plan.seconds, 3)
    train["max_time"] = round(remaining, 3)
    d["name"] = f"{plan.config.name}-tuned"
    meta = d.setdefault("meta", {})
    meta.pop("tune", None)
    meta["tuned_around"] = {
        "plan": str(plan.path), "study": spec.name, "storage": study.storage_url,
        "trial": best.number, "objective": spec.objectives[0], "value": float(best.values[0]),
        "params": dict(best.params), "proxy_width": width,
        "width_mult": plan.config.model.d_model / width, "share": spec.share,
        "tuning_seconds": round(spent, 1), "total_seconds": plan.seconds,
        "time_source": plan.time_source,
    }
    return validate(d, source=f"study {spec.name}: the transferred config")


def plan_gpus(plan: PlannedRun) -> int:
    """GPUs the plan trains on together (its meta.budget.gpus; 1 when it does not say)."""
    budget = plan.config.meta.get("budget")
    gpus = budget.get("gpus") if isinstance(budget, dict) else None
    return int(gpus) if isinstance(gpus, int) and gpus > 1 else 1


def finish(study: Study, plan: PlannedRun, tuner: Any, t0: float, show: Any) -> dict[str, Any]:
    """After the study: transfer its best trial, write transferred.yaml and around.json, train
    the transferred config (unless train_after is off); around.json's record."""
    spec, out = study.spec, study.outdir
    record = base_record(study, plan, tuner.obj)
    best = best_trial(study, tuner.obj)
    # the settings do not depend on the time left; taken before the clock stops (µP's lr rule
    # is the optimizer's, whose module imports torch)
    moved = None if best is None else SettingsRecord.of(
        transferred_config(study, plan, best, 0.0))
    spent = time.monotonic() - t0
    record.update(tuning_seconds=round(spent, 3), tuning_fraction=round(spent / plan.seconds, 4))
    if best is None:
        write_record(study, record)
        if not record["trials"].total:
            raise UserError(f"study {spec.name}: no trial started within the tuning budget "
                            f"({spec.budget.time or 0:g} s of the plan's {plan.seconds:g} s); "
                            "raise --share")
        raise UserError(f"study {spec.name}: {unfinished_line(all_trials(tuner.obj))}")
    if plan.seconds - spent < 0.001:
        record["status"] = "no time left"
        write_record(study, record)
        raise UserError(f"study {spec.name}: no time left for the planned run: tuning took "
                        f"{spent:.1f} s of the plan's {plan.seconds:g} s (lower --share or "
                        "--trial-time); the study is in " + str(out))
    cfg = transferred_config(study, plan, best, spent)
    path = write_config(cfg, out / "transferred.yaml",
                        f"trial {best.number} of study {spec.name} at d_model "
                        f"{cfg.model.d_model} (tuned on µP proxies of d_model "
                        f"{spec.proxy_width})",
                        flag="study output")
    record.update(status="transferred", remaining_seconds=cfg.train.max_time,
                  transferred=str(path), transferred_settings=moved)
    gpus = plan_gpus(plan)
    if gpus > 1:
        record["notes"].append(
            f"the plan trains on {gpus} GPUs together: run it with torchrun --nproc-per-node "
            f"{gpus} -m budgetlm train {path}")
    if not spec.train_after or gpus > 1:
        data = write_record(study, record)
        if show is not None:
            render_around(show, data)
        return data
    record["status"] = "training"
    write_record(study, record)
    try:
        outcome = train_final(study, cfg, tuner, show)
    except KeyboardInterrupt:
        record["status"] = "interrupted"
        write_record(study, record)
        raise
    record["final"] = final_record(outcome)
    record["status"] = "trained" if outcome.state == "complete" else "final run failed"
    data = write_record(study, record)
    if show is not None:
        render_around(show, data)
    return data


def train_final(study: Study, cfg: RunConfig, tuner: Any, show: Any) -> Outcome:
    """Train `cfg` into runs/<study>/final in its own process (the tuner's launcher), all of
    this machine's threads unless the config says otherwise; how it ended."""
    profile = tuner.profile
    threads = trial_threads(study.spec.model_copy(update={"threads": None}), cfg, profile, 1)
    run_cfg = cfg
    if threads is not None and cfg.train.threads != threads:
        run_cfg = with_overrides(cfg, [f"train.threads={threads}"])
    seconds = float(cfg.train.max_time or 0.0)
    run_dir = fresh_dir(study.outdir / "final")
    interactive = show is not None and show.is_terminal
    if show is not None:
        show.print(f"training the transferred config for {seconds:.1f} s into {run_dir}",
                   highlight=False, soft_wrap=True)
    status = show.status(f"training {cfg.name}…") if interactive else None

    def on_eval(rec: dict[str, Any]) -> None:
        if status is not None:
            loss = rec.get("val_loss")
            shown = f", val_loss {float(loss):.4f}" if loss is not None else ""
            status.update(f"training {cfg.name}: {float(rec.get('elapsed') or 0):.0f} of "
                          f"{seconds:.0f} s{shown}")

    with status if status is not None else nullcontext():
        return run_trial_process(
            run_cfg, run_dir, TrialCap(time=seconds), env=trial_env(0, threads, profile),
            launcher=tuner.current_launcher(), on_eval=on_eval,
        )


def fresh_dir(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`, … when it is taken (a rerun keeps the earlier run)."""
    n = 1
    found = path
    while found.exists():
        n += 1
        found = path.with_name(f"{path.name}-{n}")
    return found


def final_record(out: Outcome) -> FinalRecord:
    """How the final run ended, from its result (else its last metrics)."""
    res = out.result or {}
    a = out.attrs

    def pick(key: str) -> Any:
        v = res.get(key, a.get(key))
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return FinalRecord(
        state=out.state, status=out.kind, reason=out.reason, val_loss=pick("val_loss"),
        val_bpb=pick("val_bpb"), wall_seconds=a.get("wall_seconds"),
        train_seconds=pick("train_seconds"), steps=pick("steps"), tokens=pick("tokens"),
        run_dir=str(a.get("run_dir") or ""),
    )
