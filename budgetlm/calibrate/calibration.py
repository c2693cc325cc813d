"""The whole calibration: design (or reuse) the pilots, run the missing ones, fit, write
fit.json, and plan the rest of the budget from the fitted law."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budgetlm import hardware
from budgetlm.calibrate.design import Design, DesignOptions, PilotDesigner, design, fingerprint
from budgetlm.calibrate.files import FitFile
from budgetlm.calibrate.fit import fit_pilots
from budgetlm.calibrate.run import PilotRunner, read_records
from budgetlm.config import DataConfig
from budgetlm.data import load_corpus
from budgetlm.errors import UserError
from budgetlm.plan import TIMING_SECONDS, Budget, Plan, plan
from budgetlm.plan.recipe import check_parametrization
from budgetlm.units import require_finite, write_json

PILOT_FRACTION = 0.2
MAX_PILOT_FRACTION = 0.5
LEVELS = 3
SIZES = 3
LEVEL_RATIO = 3.0  # compute of consecutive levels
SIZE_SPREAD = 3.0  # parameters of consecutive sizes within a level
EXIT_RESERVE_S = 2.0  # of a --time budget: writing the plan and fit.json, the process's exit


@dataclass
class Calibration:
    """What a calibration did: the fit (fit.json's content), the plan of the rest, the pilots."""

    fit: dict[str, Any]
    fit_path: Path
    plan_path: Path | None
    plan: Plan | None
    reused: int
    ran: int
    pilot_seconds: float  # design, pilots and fit: earlier invocations' included
    notes: list[str]
    seconds_now: float = 0.0  # wall seconds of this invocation
    seconds_reused: float = 0.0  # wall seconds of earlier invocations' design and pilots reused

    def spent_line(self) -> str:
        """What the pilots cost, this invocation's seconds apart from those reused."""
        total = self.fit.get("budget", {}).get("seconds")
        share = f" ({self.pilot_seconds / float(total):.0%} of the budget)" if total else ""
        reused = (f", {self.seconds_reused:.0f} s of it by earlier invocations (reused)"
                  if self.seconds_reused > 0 else "")
        return (f"pilots: {self.ran} run, {self.reused} reused; {self.seconds_now:.0f} s now"
                f"{reused}; {self.pilot_seconds:.0f} s in all{share}")


def state_dir(out: Path) -> Path:
    """Where pilots and the design live: `fit.json` -> `fit.pilots/`."""
    return out.with_name(out.stem + ".pilots")


def plan_path(out: Path) -> Path:
    """The runnable plan of the rest: `fit.json` -> `fit.plan.yaml`."""
    return out.with_name(out.stem + ".plan.yaml")


def check_options(options: DesignOptions, out: Path) -> None:
    """UserError for a design no IsoFLOP fit can come from, or an unusable output path."""
    for flag, value in (("--pilot-fraction", options.fraction),
                        ("--level-ratio", options.level_ratio),
                        ("--size-spread", options.size_spread)):
        require_finite(value, flag)
    if not 0 < options.fraction <= MAX_PILOT_FRACTION:
        raise UserError(
            f"--pilot-fraction: expected a share of the budget in (0, {MAX_PILOT_FRACTION}], "
            f"got {options.fraction:g}"
        )
    if options.levels < 3:
        raise UserError("--levels: an IsoFLOP fit needs at least 3 compute levels, got "
                        f"{options.levels}")
    if options.sizes < 3:
        raise UserError("--sizes: each IsoFLOP profile needs at least 3 model sizes, got "
                        f"{options.sizes}")
    if options.level_ratio <= 1 or options.size_spread <= 1:
        raise UserError("--level-ratio and --size-spread: must be greater than 1")
    if out.suffix != ".json":
        raise UserError(f"-o {out}: expected a .json file name")
    if out.exists() and out.is_dir():
        raise UserError(f"-o {out}: is a directory")
    state = state_dir(out)
    if state.exists() and not state.is_dir():
        raise UserError(f"-o {out}: {state} (where the pilots are kept) is not a directory")


def saved_design(path: Path, fp: dict[str, Any]) -> Design | None:
    """The design saved at `path` when it was made for `fp` (UserError when it was made for
    another calibration; None when there is none, or it cannot be read)."""
    if not path.exists():
        return None
    try:
        old = Design.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError):
        return None
    if old.fingerprint != fp:
        raise UserError(
            f"calibrate: {path.parent} holds pilots of a different calibration (budget, data or "
            "design options differ); use another -o or delete that directory"
        )
    return old


def default_seq_len(budget: Any, data: DataConfig, profile: Any, precision: str) -> int:
    """The sequence length the prior plan picks for the whole budget (untimed: instant)."""
    try:
        p = plan(budget, data=data, profile=profile if budget.kind == "time" else None,
                 timing=False, precisions=[precision] if budget.kind == "time" else None)
    except UserError:
        return 128 if profile.device == "cpu" else 1024
    return int(p.top.seq_len)


def plan_rest(budget: Any, data: DataConfig, fit: dict[str, Any], pilot_seconds: float,
              profile: Any) -> tuple[Plan | None, str | None]:
    """Plan what the pilots left of the budget from the fitted law. `pilot_seconds`: the wall
    time calibrate has used so far (earlier invocations' pilots included). Returns the plan, or
    None and a note saying why there is none."""
    if budget.kind == "flops":
        used = sum(float(p.get("flops") or 0.0) for p in fit["pilots"])
        left = {"flops": max(float(budget.flops) - used, 1.0)}
    elif budget.kind == "time":
        # the plan times real steps of its best candidates (spend_planning: that time, too,
        # comes out of the run's)
        left = {"seconds": float(budget.seconds) - pilot_seconds - EXIT_RESERVE_S}
    else:
        hours = float(budget.device_hours) - pilot_seconds / 3600.0 * max(1, budget.gpus)
        left = {"gpu_hours": hours}
    if next(iter(left.values())) <= 0:
        return None, "no budget left after the pilots: nothing planned"
    try:
        if budget.kind in ("flops", "time"):
            rest = Budget(**left)
        else:
            rest = Budget(**left, gpus=budget.gpus, gpu=budget.gpu)
        # timing steps is worth it only when the run is longer than the timing
        timed = rest.kind == "time" and float(rest.seconds or 0.0) >= TIMING_SECONDS
        p = plan(rest, data=data, fit=fit, profile=profile if rest.kind == "time" else None,
                 timing=timed, spend_planning=rest.kind == "time")
    except UserError as exc:
        return None, f"planning the rest failed: {exc}"
    return p, None


def plan_summary(p: Plan, path: Path, bpb_per_nat: float | None) -> dict[str, Any]:
    """fit.json's "plan": the top candidate of the plan of the rest, in bits per byte too."""
    top = p.top
    out: dict[str, Any] = {
        "name": top.name, "params": top.params, "tokens": top.tokens, "flops": top.flops,
        "loss": top.loss, "loss_lo": top.loss_lo, "loss_hi": top.loss_hi,
        "seconds": top.seconds, "budget": p.budget.to_dict(), "path": str(path),
    }
    if bpb_per_nat:
        out.update({k.replace("loss", "bpb"): out[k] * bpb_per_nat
                    for k in ("loss", "loss_lo", "loss_hi") if out[k] is not None})
    return out


def _write_plan(fit: dict[str, Any], budget: Any, data: DataConfig, used: float, profile: Any,
                out: Path) -> tuple[Plan | None, Path | None]:
    """Plan the rest, write it beside fit.json and summarize it in `fit` (or note why not)."""
    t_plan = time.perf_counter()
    the_plan, note = plan_rest(budget, data, fit, used, profile)
    if note:
        fit["notes"].append(note)
    if the_plan is None:
        return None, None
    fit["plan_seconds"] = round(time.perf_counter() - t_plan, 3)
    ppath = plan_path(out)
    the_plan.write(ppath)
    fit["plan"] = plan_summary(the_plan, ppath, fit.get("bpb_per_nat"))
    return the_plan, ppath


def _design_or_reuse(budget: Any, data: DataConfig, corpus: Any, profile: Any,
                     options: DesignOptions, seq_len: int | None, precision: str, seed: int,
                     state: Path, say: Callable[[str], None],
                     parametrization: str = "standard") -> tuple[Design, bool]:
    """The design saved in `state` for these options, or a new one (saved). Returns it and
    whether it was made now."""
    fp = fingerprint(budget, data, options, seq_len, seed, corpus.info.get("sha256"),
                     parametrization)
    dpath = state / "design.json"
    d = saved_design(dpath, fp)
    if d is not None:
        return d, False
    T = seq_len or default_seq_len(budget, data, profile, precision)
    d = design(budget, data, corpus, profile, options, T, precision, seed, fp, say,
               parametrization)
    try:  # the state directory is made here, once the design is accepted
        write_json(dpath, d.to_dict(), indent=1)
    except OSError as exc:
        raise UserError(f"calibrate: cannot write {dpath} ({exc.strerror or exc})") from None
    return d, True


def calibrate(
    budget: Any,
    data: DataConfig,
    out: Path,
    fraction: float = PILOT_FRACTION,
    levels: int = LEVELS,
    sizes: int = SIZES,
    level_ratio: float = LEVEL_RATIO,
    size_spread: float = SIZE_SPREAD,
    seq_len: int | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    write_plan: bool = True,
    log: Callable[[str], None] | None = None,
    launcher_kind: str = "fork",
    parametrization: str = "standard",
) -> Calibration:
    """Design (or reuse) the pilots, run the missing ones, fit, write fit.json, plan the rest.
    parametrization: the pilots' (standard, or mup at the µP lr prior), and so the fit's and
    the plan's."""
    t_start = time.perf_counter()
    say = log or (lambda _msg: None)
    options = DesignOptions(fraction, levels, sizes, level_ratio, size_spread)
    check_options(options, out)
    check_parametrization(parametrization)
    profile = hardware.cached_profile() or hardware.load_profile()
    corpus = load_corpus(data)
    precision = "fp32" if profile.device == "cpu" else (
        "bf16" if profile.peak("bf16") else "fp32"
    )
    state = state_dir(out)
    records = read_records(state / "pilots.jsonl")
    d, designed_now = _design_or_reuse(budget, data, corpus, profile, options, seq_len,
                                       precision, seed, state, say, parametrization)
    reused = sum(1 for p in d.pilots if records.get(p.key, {}).get("state") == "complete")
    spent = d.design_seconds + sum(float(r.get("wall_seconds") or 0.0) for r in records.values())
    # wall time of earlier invocations (their design and pilots): this one is timed whole
    earlier = spent - (d.design_seconds if designed_now else 0.0)
    if reused:
        say(f"reusing {reused} finished pilot(s) from {state / 'pilots.jsonl'} ({earlier:.0f} s "
            "spent by earlier invocations)")
    designer = PilotDesigner(data, profile, corpus, d.seq_len, d.precision, seed,
                             d.parametrization)
    runner = PilotRunner(d, designer, state, records, spent, say, launcher_kind)
    runner.run()

    t_fit = time.perf_counter()
    fit = fit_pilots(d, records, corpus, data, budget, fraction, bootstrap, seed)
    # the pilots' cost: the design (timing shapes), every pilot run (earlier invocations too)
    # and the fit; not this process's start-up
    pilot_seconds = runner.spent + time.perf_counter() - t_fit
    fit["pilot_seconds"] = round(pilot_seconds, 3)
    fit["notes"] = runner.notes
    the_plan, ppath = None, None
    if write_plan:
        used = max(pilot_seconds, earlier + time.perf_counter() - t_start)
        the_plan, ppath = _write_plan(fit, budget, data, used, profile, out)
    if earlier > 0:
        fit["notes"].append(
            f"{earlier:.0f} s of the pilots' {pilot_seconds:.0f} s were spent by earlier "
            f"invocations ({reused} finished pilot(s) reused); this one ran {runner.ran}"
        )
    fit["reused_seconds"] = round(earlier, 3)
    fit["calibrate_seconds"] = round(time.perf_counter() - t_start, 3)
    fit = FitFile.model_validate(fit).model_dump()
    write_json(out, fit, indent=1)
    return Calibration(fit=fit, fit_path=out, plan_path=ppath, plan=the_plan, reused=reused,
                       ran=runner.ran, pilot_seconds=pilot_seconds, notes=fit["notes"],
                       seconds_now=time.perf_counter() - t_start, seconds_reused=earlier)
