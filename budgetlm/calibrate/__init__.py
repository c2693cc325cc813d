"""`budgetlm calibrate`: fit this corpus's own scaling law from cheap pilots, then plan the rest.

Published laws were fitted on other people's data, tokenizers and code; their absolute losses do
not transfer. Teams that train well fit their own law on small runs first (Hoffmann et al. 2022
§3.2: IsoFLOP profiles; Yang et al. 2022, µTransfer: a 40M proxy tuned for ~7% of the cost of the
6.7B run). This module spends a stated fraction of the budget doing that:

1. Design. `levels` compute levels a factor `level_ratio` apart and `sizes` model sizes at each
   (IsoFLOP profiles: every pilot of a level trains for the same FLOPs). Sizes are rungs of the
   planner's ladder spread by `size_spread` around the prior's compute-optimal size for the
   level. Each pilot is configured by the planner's own recipe for a FLOP budget (batch and lr
   priors, AdamW, a WSD schedule driven by its token cap so it ends annealed): the pilots and the
   final run differ only in size and compute, which is what the law is about. On a time budget
   the levels are scaled so the pilots' predicted wall time (throughput timed on this machine,
   plus a per-pilot overhead) fills PLAN_SHARE of the pilot budget; before each level the rest
   are scaled down again if the pilots so far ran slower than predicted.
2. Pilots run one at a time through the tuner's trial runner (`budgetlm.runner.process`: a forked
   or spawned child per run, a hard time limit, a stall watchdog). Each finished pilot is
   appended to `pilots.jsonl` in the state directory; re-running the same command reuses them
   (the design is saved in `design.json`, so a rerun asks for exactly the same pilots).
3. Fit. L(N, D) = E + A/N^alpha + B/D^beta on (total parameters, effective tokens, final
   validation loss in nats/token): Huber loss on log-loss from many starts, bootstrap intervals
   (`budgetlm.laws.fitting.chinchilla`). Repeated epochs enter as Muennighoff et al.'s effective data D'. E is
   held at or below the best compression rate of the validation tokens (`budgetlm.laws.entropy`):
   pilots' loss curves flatten early, and a free fit reads that as a floor (E = 1.63 nats/byte
   on builtin:pystdlib, above what bz2 gets, 1.10, and what a 20-minute run then reached, 1.33).
   Kaplan et al.'s form, with no floor, is fitted to the same pilots (`budgetlm.laws.fitting.kaplan`).
4. Plan. The rest of the budget (total minus the pilots' measured wall time) is planned from the
   fitted laws at the pilots' sequence length and precision. Nine pilots cannot tell the two
   forms apart, and far beyond the pilots they disagree, so a prediction is their geometric mean
   and its interval spans both forms' intervals (bootstrap spread and single-run scatter each);
   `budgetlm train` of the plan records predicted against actual.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm import laws as scaling
from budgetlm.config import DataConfig, RunConfig, validate
from budgetlm.errors import UserError

PILOT_FRACTION = 0.2
MAX_PILOT_FRACTION = 0.5
LEVELS = 3
SIZES = 3
LEVEL_RATIO = 3.0  # compute of consecutive levels
SIZE_SPREAD = 3.0  # parameters of consecutive sizes within a level
PLAN_SHARE = 0.85  # of the pilot budget the design fills with predicted pilot time
PILOT_OVERHEAD_S = 2.5  # per pilot before any is measured: process, data, model, final eval
EXIT_RESERVE_S = 2.0  # of a --time budget: writing the plan and fit.json, the process's exit
EVAL_TOKENS = 65536  # validation tokens of every pilot and of the planned run (the same windows)
MAX_PILOT_PARAMS = 2e9


@dataclass
class Pilot:
    key: str
    level: int
    level_flops: float
    name: str
    n_layer: int
    d_model: int
    n_head: int
    params: int
    flops_per_token: float
    tokens: int
    steps: int
    tokens_per_s: float | None
    predicted_seconds: float | None
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Design:
    fingerprint: dict[str, Any]
    seq_len: int
    precision: str
    levels: list[float]
    pilots: list[Pilot]
    design_seconds: float
    pilot_seconds_budget: float | None
    pilot_flops_budget: float | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["pilots"] = [p.to_dict() for p in self.pilots]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Design:
        d = dict(d)
        d["pilots"] = [Pilot(**p) for p in d["pilots"]]
        return cls(**d)


@dataclass
class Calibration:
    fit: dict[str, Any]
    fit_path: Path
    plan_path: Path | None
    plan: Any  # planner.Plan or None
    reused: int
    ran: int
    pilot_seconds: float
    notes: list[str]


# ---------------------------------------------------------------------------------------------
# Paths and state


def state_dir(out: Path) -> Path:
    """Where pilots and the design live: `fit.json` -> `fit.pilots/`."""
    return out.with_name(out.stem + ".pilots")


def plan_path(out: Path) -> Path:
    return out.with_name(out.stem + ".plan.yaml")


def _read_records(path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(rec, dict) and "key" in rec:
            out[rec["key"]] = rec
    return out


def _append(path: Path, rec: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(rec, default=str) + "\n")
        f.flush()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Design


def _fingerprint(budget: Any, data: DataConfig, fraction: float, levels: int, sizes: int,
                 level_ratio: float, size_spread: float, seq_len: int | None,
                 seed: int, sha: str | None) -> dict[str, Any]:
    return {
        "budget": budget.to_dict(), "data": data.model_dump(mode="json"), "data_sha256": sha,
        "pilot_fraction": fraction, "levels": levels, "sizes": sizes,
        "level_ratio": level_ratio, "size_spread": size_spread, "seq_len": seq_len, "seed": seed,
    }


def _pilot_key(level: int, name: str, level_flops: float, seq_len: int) -> str:
    h = hashlib.sha1(f"{level}|{name}|{level_flops:.6e}|{seq_len}".encode()).hexdigest()[:8]
    return f"c{level}-{name}-{h}"


class _Designer:
    """Chooses pilot shapes and configs at given compute levels (the planner's recipe)."""

    def __init__(self, budget: Any, data: DataConfig, profile: Any, corpus: Any, seq_len: int,
                 precision: str, seed: int):
        from budgetlm import plan as planner

        self.pl = planner
        self.budget = budget
        self.data = data
        self.profile = profile
        self.seq_len = seq_len
        self.precision = precision
        self.seed = seed
        self.unique = int(len(corpus.train))
        self.vocab = int(corpus.tokenizer.vocab_size)
        self.val_tokens = int(len(corpus.val))
        self.prior = scaling.prior("epoch")
        self._params: dict[Any, int] = {}
        self.rungs = [s for s in planner.ladder() if s.approx_params <= MAX_PILOT_PARAMS]

    def target(self, flops: float) -> Any:
        pl = self.pl
        prof = pl._PlanProfile(self.profile)
        margin = pl.GPU_MEMORY_MARGIN if self.profile.device == "cuda" else pl.CPU_MEMORY_MARGIN
        return pl.Target(
            kind="flops", device=self.profile.device, profile=prof, flops=flops,
            memory_bytes=self.profile.device_memory_bytes,
            memory_limit=margin * self.profile.device_memory_bytes,
            source="measured" if self.profile.measured else "datasheet",
            name="this machine", first_line=f"pilot: {flops:.3g} FLOPs on this machine",
        )

    def ctx(self, flops: float) -> Any:
        return self.pl._Ctx(self.target(flops), self.prior, self.unique, self.vocab,
                            self.val_tokens, "adamw", "gpt", None)

    def total_params(self, shape: Any) -> int:
        if shape not in self._params:
            from budgetlm.estimate import count_params

            m = self.pl._model(shape, self.seq_len, self.vocab, "gpt")
            self._params[shape] = int(count_params(m).total)
        return self._params[shape]

    def shapes(self, flops: float, sizes: int, spread: float) -> list[Any]:
        """`sizes` distinct rungs spread by `spread` around the prior's optimum at `flops`."""
        n0, _ = scaling.data_constrained_optimal(self.prior, flops, self.unique)
        logs = [math.log(self.total_params(s)) for s in self.rungs]
        chosen: list[int] = []
        for j in range(sizes):
            want = math.log(n0) + (j - (sizes - 1) / 2) * math.log(spread)
            order = sorted(range(len(self.rungs)), key=lambda i: abs(logs[i] - want))
            chosen.append(next(i for i in order if i not in chosen))
        return [self.rungs[i] for i in sorted(chosen)]

    def candidate(self, shape: Any, flops: float) -> Any:
        """The planner's candidate for `shape` trained on `flops` (None: cannot run)."""
        ctx = self.ctx(flops)
        cands = self.pl._setup(shape, self.seq_len, [self.precision], ctx)
        if not cands or not cands[0].feasible:
            return None
        c = self.pl._finish(cands[0], ctx)
        return c if c.feasible else None

    def config(self, c: Any, flops: float, level: int) -> RunConfig:
        """The pilot's RunConfig: the planner's config for a FLOP budget, evaluated once at the
        end on the same validation windows as the planned run, no intermediate checkpoints."""
        pl = self.pl
        tgt = self.target(flops)
        p = pl.Plan(
            budget=pl.Budget(flops=flops), target=tgt, law=self.prior, data=self.data,
            data_given=True, unique_tokens=self.unique, vocab_size=self.vocab, candidates=[c],
            infeasible=[], front=[c], pareto_axes=("loss",), optimum={}, notes=[],
            calibrated=[], optimizer="adamw", schedule="wsd", family="gpt", seed=self.seed,
        )
        d = p.config(0).model_dump(mode="json")
        d["name"] = f"pilot-c{level}-{c.shape.name}"
        d["train"].update({
            "eval_interval": max(1, c.steps), "eval_tokens": eval_tokens(self.seq_len,
                                                                         self.val_tokens),
            "checkpoint_interval": None, "keep_last": 1, "device": self.profile.device,
        })
        d["meta"] = {"calibrate": {"level": level, "level_flops": flops}}
        return validate(d, source="pilot config")


def eval_tokens(seq_len: int, val_tokens: int) -> int:
    e = min(EVAL_TOKENS, max(seq_len, val_tokens - 1))
    return max(seq_len, e // seq_len * seq_len)


def _pilots_at(designer: _Designer, levels: list[float], sizes: int, spread: float,
               shapes: list[list[Any]] | None = None,
               first: int = 0) -> tuple[list[Pilot], list[list[Any]]]:
    """Pilots at each level, numbered from `first` (shapes chosen now unless given); a shape too
    big for its level's compute (fewer than the planner's minimum steps) gives way to the next
    smaller rung."""
    pilots: list[Pilot] = []
    chosen: list[list[Any]] = []
    for i, flops in enumerate(levels):
        k = first + i
        want = shapes[i] if shapes is not None else designer.shapes(flops, sizes, spread)
        got: list[Any] = []
        for s in want:
            c = designer.candidate(s, flops)
            i = designer.rungs.index(s) if s in designer.rungs else 0
            while c is None and i > 0:
                i -= 1
                s = designer.rungs[i]
                if s in got or s in want:
                    continue
                c = designer.candidate(s, flops)
            if c is None:
                raise UserError(
                    f"calibrate: the pilot budget is too small: {flops:.3g} FLOPs per pilot at "
                    f"level {k + 1} is too little even for {s.name} (raise the budget or "
                    "--pilot-fraction, or lower --levels/--sizes)"
                )
            got.append(s)
            cfg = designer.config(c, flops, k)
            pilots.append(Pilot(
                key=_pilot_key(k, s.name, flops, designer.seq_len), level=k, level_flops=flops,
                name=s.name, n_layer=s.n_layer, d_model=s.d_model, n_head=s.n_head,
                params=int(c.params), flops_per_token=float(c.flops_per_token),
                tokens=int(c.tokens), steps=int(c.steps), tokens_per_s=None,
                predicted_seconds=None, config=cfg.model_dump(mode="json"),
            ))
        chosen.append(got)
    return pilots, chosen


def _predicted_seconds(p: Pilot) -> float | None:
    """Training + the final eval (a forward pass: ~1/3 of a training token) + a fixed overhead."""
    if not p.tokens_per_s:
        return None
    ev = float(p.config["train"]["eval_tokens"])
    return (p.tokens + ev / 3) / p.tokens_per_s + PILOT_OVERHEAD_S


def _batch_tag(p: Pilot) -> str:
    t = p.config["train"]
    return f"{p.name}|{t['micro_batch']}|{t['grad_accum']}"


def _time_pilots(designer: _Designer, pilots: list[Pilot], cache: dict[str, float]) -> None:
    """Measured tokens/s of each pilot's (shape, micro-batch, accumulation) on this machine, each
    timed once (`cache`), and its predicted wall seconds (`_predicted_seconds`)."""
    from budgetlm import plan as pl

    todo: dict[str, Any] = {}
    for p in pilots:
        tag = _batch_tag(p)
        if tag in cache or tag in todo:
            continue
        c = designer.candidate(pl.Shape(p.n_layer, p.d_model, p.n_head), p.level_flops)
        if c is not None:
            t = p.config["train"]
            c.micro_batch, c.grad_accum = int(t["micro_batch"]), int(t["grad_accum"])
            todo[tag] = c
    ctx = designer.ctx(1.0)
    for tag, c in todo.items():
        got = pl.measure_throughput([c], ctx, steps=3)
        if got:
            cache[tag] = next(iter(got.values()))
    for p in pilots:
        p.tokens_per_s = cache.get(_batch_tag(p))
        p.predicted_seconds = _predicted_seconds(p)


def design(
    budget: Any, data: DataConfig, corpus: Any, profile: Any, fraction: float, levels: int,
    sizes: int, level_ratio: float, size_spread: float, seq_len: int, precision: str,
    seed: int, fingerprint: dict[str, Any], log: Callable[[str], None],
) -> Design:
    """Levels and pilots for the pilot budget (see the module docstring)."""
    t0 = time.perf_counter()
    designer = _Designer(budget, data, profile, corpus, seq_len, precision, seed)
    ratios = [level_ratio**k for k in range(levels)]
    notes: list[str] = []
    if budget.kind == "flops":
        pilot_flops = fraction * float(budget.flops)
        c1 = pilot_flops / (sizes * sum(ratios))
        lv = [c1 * r for r in ratios]
        pilots, _ = _pilots_at(designer, lv, sizes, size_spread)
        return Design(fingerprint, seq_len, precision, lv, pilots,
                      time.perf_counter() - t0, None, pilot_flops, notes)
    seconds = _budget_seconds(budget, profile)
    pilot_s = fraction * seconds
    peak = profile.peak(precision) or profile.peak("fp32") or 1e9
    rate = peak * (0.3 if profile.device == "cpu" else 0.4)
    avail = PLAN_SHARE * pilot_s - levels * sizes * PILOT_OVERHEAD_S
    if avail <= 0:
        raise UserError(
            f"calibrate: the pilot budget ({pilot_s:.0f} s = {fraction:g} of the budget) is too "
            f"small for {levels * sizes} pilots (each costs ~{PILOT_OVERHEAD_S:g} s of overhead "
            "alone): raise the budget or --pilot-fraction"
        )
    lv = [avail * rate / (sizes * sum(ratios)) * r for r in ratios]
    log(f"timing pilot shapes on this machine (pilot budget {pilot_s:.0f} s)")
    cache: dict[str, float] = {}
    shapes: list[list[Any]] | None = None
    pilots: list[Pilot] = []
    for _ in range(3):
        pilots, shapes = _pilots_at(designer, lv, sizes, size_spread, shapes)
        _time_pilots(designer, pilots, cache)
        spent = time.perf_counter() - t0
        train_s = sum((p.predicted_seconds or 0.0) - PILOT_OVERHEAD_S for p in pilots)
        room = PLAN_SHARE * pilot_s - spent - len(pilots) * PILOT_OVERHEAD_S
        if train_s <= 0 or room <= 0:
            break
        f = room / train_s
        if abs(f - 1) < 0.03:
            break
        lv = [c * f for c in lv]
    return Design(fingerprint, seq_len, precision, lv, pilots, time.perf_counter() - t0,
                  pilot_s, None, notes)


def _budget_seconds(budget: Any, profile: Any) -> float:
    if budget.kind == "time":
        return float(budget.seconds)
    if profile.device != "cuda":
        flag = "--gpu-hours" if budget.kind == "gpu_hours" else "--cost"
        raise UserError(
            f"{flag}: calibrate runs its pilots on this machine, which has no GPU; give --time "
            "(wall time here) or --flops"
        )
    return float(budget.device_hours) * 3600.0 / max(1, budget.gpus)  # type: ignore[arg-type]


def _rescale_rest(designer: _Designer, d: Design, level: int, spent: float,
                  slow: float) -> str | None:
    """Before `level` (none of whose pilots has run): if the pilots left (predicted x `slow`,
    the measured/predicted ratio so far) would overrun the pilot budget, scale their compute
    down to fit (to a quarter at most). Returns a note."""
    if d.pilot_seconds_budget is None:
        return None
    left = [p for p in d.pilots if p.level >= level]
    pred = sum((p.predicted_seconds or 0.0) - PILOT_OVERHEAD_S for p in left) * slow
    room = d.pilot_seconds_budget - spent - len(left) * PILOT_OVERHEAD_S * slow
    if pred <= 0 or pred <= room:
        return None
    f = max(0.25, room / pred)
    shapes = [[designer.pl.Shape(p.n_layer, p.d_model, p.n_head)
               for p in left if p.level == k] for k in range(level, len(d.levels))]
    new_levels = [c * f for c in d.levels[level:]]
    try:
        new, _ = _pilots_at(designer, new_levels, len(shapes[0]), 1.0, shapes, first=level)
    except UserError:
        return (f"the pilots from level {level + 1} on will overrun the pilot budget: they "
                "cannot be made smaller and still train")
    for p in new:
        old = next((q for q in left if q.name == p.name and q.level == p.level), None)
        p.tokens_per_s = old.tokens_per_s if old is not None else None
        p.predicted_seconds = _predicted_seconds(p)
    d.pilots = [p for p in d.pilots if p.level < level] + new
    d.levels = d.levels[:level] + new_levels
    return (f"levels {level + 1}+ scaled to {f:.2f}x their compute: the pilots so far ran "
            f"{slow:.2f}x their predicted time")


# ---------------------------------------------------------------------------------------------
# The whole calibration


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
) -> Calibration:
    """Design (or reuse) the pilots, run the missing ones, fit, write fit.json, plan the rest."""
    t_start = time.perf_counter()
    say = log or (lambda _msg: None)
    if not 0 < fraction <= MAX_PILOT_FRACTION:
        raise UserError(
            f"--pilot-fraction: expected a share of the budget in (0, {MAX_PILOT_FRACTION}], "
            f"got {fraction:g}"
        )
    if levels < 3:
        raise UserError(f"--levels: an IsoFLOP fit needs at least 3 compute levels, got {levels}")
    if sizes < 3:
        raise UserError(f"--sizes: each IsoFLOP profile needs at least 3 model sizes, got {sizes}")
    if level_ratio <= 1 or size_spread <= 1:
        raise UserError("--level-ratio and --size-spread: must be greater than 1")
    if out.suffix != ".json":
        raise UserError(f"-o {out}: expected a .json file name")
    if out.exists() and out.is_dir():
        raise UserError(f"-o {out}: is a directory")

    from budgetlm import hardware
    from budgetlm.data import load_corpus

    profile = hardware.cached_profile() or hardware.load_profile()
    corpus = load_corpus(data)
    precision = "fp32" if profile.device == "cpu" else (
        "bf16" if profile.peak("bf16") else "fp32"
    )
    fp = _fingerprint(budget, data, fraction, levels, sizes, level_ratio, size_spread, seq_len,
                      seed, corpus.info.get("sha256"))
    sdir = state_dir(out)
    sdir.mkdir(parents=True, exist_ok=True)
    dpath, rpath = sdir / "design.json", sdir / "pilots.jsonl"
    d: Design | None = None
    if dpath.exists():
        try:
            old = Design.from_dict(json.loads(dpath.read_text()))
        except (ValueError, TypeError, KeyError):
            old = None
        if old is not None and old.fingerprint == fp:
            d = old
        elif old is not None:
            raise UserError(
                f"calibrate: {sdir} holds pilots of a different calibration (budget, data or "
                "design options differ); use another -o or delete that directory"
            )
    records = _read_records(rpath)
    designed_now = d is None
    if d is None:
        T = seq_len or _default_seq_len(budget, data, profile, precision)
        d = design(budget, data, corpus, profile, fraction, levels, sizes, level_ratio,
                   size_spread, T, precision, seed, fp, say)
        _write_json(dpath, d.to_dict())
    designer = _Designer(budget, data, profile, corpus, d.seq_len, d.precision, seed)

    done = {k: r for k, r in records.items() if r.get("state") == "complete"}
    reused = sum(1 for p in d.pilots if p.key in done)
    if reused:
        say(f"reusing {reused} finished pilot(s) from {rpath}")
    spent = d.design_seconds + sum(
        float(r.get("wall_seconds") or 0.0) for r in records.values()
    )
    # wall time of earlier invocations (their design and pilots): this one is timed whole
    earlier = spent - (d.design_seconds if designed_now else 0.0)
    ran = 0
    notes = list(d.notes)
    from budgetlm.runner.launch import make_launcher, ready
    from budgetlm.runner.process import run_trial_process
    from budgetlm.tune.spec import TrialCap

    launcher = None
    try:
        for level in range(len(d.levels)):
            todo = [p for p in d.pilots if p.level == level and p.key not in done]
            if not todo:
                continue
            measured = [(float(r["wall_seconds"]), float(r["predicted_seconds"]))
                        for r in done.values() if r.get("predicted_seconds")]
            slow = (sum(a for a, _ in measured) / sum(b for _, b in measured)) if measured else 1.0
            started = any(p.key in done for p in d.pilots if p.level == level)
            note = None if started else _rescale_rest(designer, d, level, spent, max(1.0, slow))
            if note:
                notes.append(note)
                d.notes = notes
                _write_json(dpath, d.to_dict())
                say(note)
                todo = [p for p in d.pilots if p.level == level and p.key not in done]
            for p in todo:
                if launcher is None:
                    launcher = ready(make_launcher(launcher_kind))
                i = d.pilots.index(p) + 1
                say(f"pilot {i}/{len(d.pilots)}: level {p.level + 1} ({p.level_flops:.3g} FLOPs) "
                    f"{p.name} {p.params:,} params, {p.tokens:,} tokens"
                    + (f", ~{p.predicted_seconds:.0f} s" if p.predicted_seconds else ""))
                cfg = validate(p.config)
                limit = 3 * (p.predicted_seconds or 600.0) + 30.0
                outcome = run_trial_process(
                    cfg, sdir / "runs" / p.key, TrialCap(time=limit, grace=0.0),
                    launcher=launcher,
                )
                ran += 1
                a = outcome.attrs
                rec = {
                    "key": p.key, "state": outcome.state, "kind": outcome.kind,
                    "reason": outcome.reason, "val_loss": a.get("val_loss"),
                    "val_bpb": a.get("val_bpb"), "tokens": a.get("tokens"),
                    "steps": a.get("steps"), "flops": a.get("flops"),
                    "wall_seconds": a.get("wall_seconds"), "train_seconds": a.get("train_seconds"),
                    "predicted_seconds": p.predicted_seconds, "params": p.params,
                    "run_dir": a.get("run_dir"),
                }
                if outcome.kind == "interrupted":
                    raise KeyboardInterrupt
                _append(rpath, rec)
                spent += float(a.get("wall_seconds") or 0.0)
                records[p.key] = rec
                if outcome.state == "complete":
                    done[p.key] = rec
                    say(f"  val loss {float(rec['val_loss']):.4f} nats/token, "
                        f"{float(rec['wall_seconds']):.1f} s")
                else:
                    say(f"  {outcome.kind}: {outcome.reason}")
    except KeyboardInterrupt:
        finished = sum(1 for p in d.pilots if p.key in done)
        raise CalibrationInterrupted(
            f"calibrate: interrupted; {finished} of {len(d.pilots)} pilots are finished and kept "
            f"in {sdir}: run the same command again to continue"
        ) from None
    finally:
        if launcher is not None:
            launcher.close()

    t_fit = time.perf_counter()
    fit = _fit(d, records, corpus, data, budget, fraction, bootstrap, seed)
    fit_seconds = time.perf_counter() - t_fit
    # the pilots' cost: the design (timing shapes), every pilot run (earlier invocations too)
    # and the fit; not this process's start-up
    pilot_seconds = spent + fit_seconds
    fit["pilot_seconds"] = round(pilot_seconds, 3)
    fit["notes"] = notes
    the_plan = None
    ppath = None
    if write_plan:
        t_plan = time.perf_counter()
        used = max(pilot_seconds, earlier + t_plan - t_start)
        the_plan, note = _plan_rest(budget, data, fit, used, profile)
        if note:
            fit["notes"].append(note)
        if the_plan is not None:
            fit["plan_seconds"] = round(time.perf_counter() - t_plan, 3)
            ppath = plan_path(out)
            the_plan.write(ppath)
            top = the_plan.top
            fit["plan"] = {
                "name": top.name, "params": top.params, "tokens": top.tokens, "flops": top.flops,
                "loss": top.loss, "loss_lo": top.loss_lo, "loss_hi": top.loss_hi,
                "seconds": top.seconds, "budget": the_plan.budget.to_dict(), "path": str(ppath),
            }
            bpn = fit.get("bpb_per_nat")
            if bpn:
                fit["plan"].update({k.replace("loss", "bpb"): fit["plan"][k] * bpn
                                    for k in ("loss", "loss_lo", "loss_hi")
                                    if fit["plan"][k] is not None})
    fit["calibrate_seconds"] = round(time.perf_counter() - t_start, 3)
    _write_json(out, fit)
    return Calibration(fit=fit, fit_path=out, plan_path=ppath, plan=the_plan, reused=reused,
                       ran=ran, pilot_seconds=pilot_seconds, notes=fit["notes"])


class CalibrationInterrupted(KeyboardInterrupt):
    """Ctrl-C during the pilots: the message says what was kept (exit 130)."""


def _default_seq_len(budget: Any, data: DataConfig, profile: Any, precision: str) -> int:
    """The sequence length the prior plan picks for the whole budget (uncalibrated: instant)."""
    from budgetlm.plan import plan

    try:
        p = plan(budget, data=data, profile=profile if budget.kind == "time" else None,
                 calibrate=False, precisions=[precision] if budget.kind == "time" else None)
    except UserError:
        return 128 if profile.device == "cpu" else 1024
    return int(p.top.seq_len)


def _fit(d: Design, records: dict[str, dict[str, Any]], corpus: Any, data: DataConfig,
         budget: Any, fraction: float, bootstrap: int, seed: int) -> dict[str, Any]:
    from budgetlm.laws.entropy import entropy_bound
    from budgetlm.laws.fitting.chinchilla import fit_law
    from budgetlm.laws.fitting.kaplan import fit_kaplan

    unique = int(len(corpus.train))
    rows = []
    for p in d.pilots:
        r = records.get(p.key, {})
        loss = r.get("val_loss")
        ok = r.get("state") == "complete" and loss is not None and math.isfinite(float(loss))
        tokens = float(r.get("tokens") or 0.0)
        rows.append({
            "key": p.key, "name": p.name, "level": p.level, "level_flops": p.level_flops,
            "n_layer": p.n_layer, "d_model": p.d_model, "n_head": p.n_head,
            "params": p.params, "tokens": tokens if ok else p.tokens,
            "effective_tokens": scaling.effective_data(tokens, unique) if ok else None,
            "epochs": scaling.epochs(tokens, unique) if ok else None,
            "flops": r.get("flops"), "val_loss": float(loss) if ok else None,
            "val_bpb": r.get("val_bpb") if ok else None,
            "wall_seconds": r.get("wall_seconds"), "predicted_seconds": p.predicted_seconds,
            "state": "complete" if ok else (r.get("kind") or "missing"),
            "reason": None if ok else r.get("reason"),
        })
    good = [r for r in rows if r["state"] == "complete"]
    if len(good) < 5:
        bad = [f"{r['name']} ({r['reason'] or r['state']})" for r in rows if r not in good]
        raise UserError(
            f"calibrate: only {len(good)} of {len(rows)} pilots finished (a fit needs 5): "
            + "; ".join(bad[:3])
        )
    cols = ([r["params"] for r in good], [r["effective_tokens"] for r in good],
            [r["val_loss"] for r in good])
    ceiling = entropy_bound(corpus.val, int(corpus.tokenizer.vocab_size))
    lf = fit_law(*cols, bootstrap=bootstrap, seed=seed,
                 e_max=ceiling["value"] if ceiling else None)
    kf = fit_kaplan(*cols, bootstrap=bootstrap, seed=seed)
    for r, res, kres in zip(good, lf.residuals, kf.residuals, strict=True):
        r["fitted_loss"] = lf.loss(r["params"], r["effective_tokens"])
        r["residual"] = res
        r["fitted_loss_kaplan"] = kf.loss(r["params"], r["effective_tokens"])
        r["residual_kaplan"] = kres
    ratios = [r["val_bpb"] / r["val_loss"] for r in good if r.get("val_bpb") and r["val_loss"]]
    out: dict[str, Any] = {
        "kind": "budgetlm-fit", "version": 1,
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **lf.to_dict(),
        "forms": {"kaplan": kf.to_dict()},
        "prediction": "geometric mean of the Chinchilla-form law and the Kaplan-form law "
                      "fitted to the same pilots; intervals span both forms' intervals",
        "e_ceiling": ceiling,
        "fit_range": [min(r["params"] for r in good), max(r["params"] for r in good),
                      min(r["effective_tokens"] for r in good),
                      max(r["effective_tokens"] for r in good)],
        "seq_len": d.seq_len, "precision": d.precision, "optimizer": "adamw",
        "eval_tokens": eval_tokens(d.seq_len, int(len(corpus.val))),
        "unique_tokens": unique,
        "bpb_per_nat": sum(ratios) / len(ratios) if ratios else None,
        "data": {"source": data.source, "tokenizer": data.tokenizer,
                 "vocab_size": int(corpus.tokenizer.vocab_size),
                 "sha256": corpus.info.get("sha256")},
        "levels": d.levels, "pilots": rows,
        "budget": budget.to_dict(), "pilot_fraction": fraction,
        "pilot_budget_seconds": d.pilot_seconds_budget,
        "pilot_budget_flops": d.pilot_flops_budget,
        "design_seconds": round(d.design_seconds, 3),
    }
    return out


def _plan_rest(budget: Any, data: DataConfig, fit: dict[str, Any], pilot_seconds: float,
               profile: Any) -> tuple[Any, str | None]:
    """Plan what the pilots left of the budget from the fitted law. `pilot_seconds`: the wall
    time calibrate has used so far (earlier invocations' pilots included)."""
    from budgetlm.plan import Budget, plan

    if budget.kind == "flops":
        used = sum(float(p.get("flops") or 0.0) for p in fit["pilots"])
        rest = Budget(flops=max(float(budget.flops) - used, 1.0))
    elif budget.kind == "time":
        # the plan times real steps of its best candidates (spend_planning: that time, too,
        # comes out of the run's)
        rest = Budget(seconds=float(budget.seconds) - pilot_seconds - EXIT_RESERVE_S)
    else:
        hours = float(budget.device_hours) - pilot_seconds / 3600.0 * max(1, budget.gpus)
        rest = Budget(gpu_hours=hours, gpus=budget.gpus, gpu=budget.gpu)
    for v in (rest.seconds, rest.flops, rest.gpu_hours):
        if v is not None and v <= 0:
            return None, "no budget left after the pilots: nothing planned"
    try:
        p = plan(rest, data=data, fit=fit, profile=profile if rest.kind == "time" else None,
                 calibrate=rest.kind == "time", spend_planning=rest.kind == "time")
    except UserError as exc:
        return None, f"planning the rest failed: {exc}"
    return p, None


def check_prediction(predicted: dict[str, Any], val_loss: float | None,
                     val_bpb: float | None) -> dict[str, Any] | None:
    """Predicted against actual for a run planned from a fitted law (None for a prior's plan,
    whose loss is in another corpus's units)."""
    if predicted.get("loss_kind") != "fit" or val_loss is None or not math.isfinite(val_loss):
        return None
    pl = float(predicted["loss"])
    out: dict[str, Any] = {
        "predicted_loss": pl, "actual_loss": val_loss,
        "error": (val_loss - pl) / pl,
        "interval_level": predicted.get("interval_level"),
    }
    lo, hi = predicted.get("loss_lo"), predicted.get("loss_hi")
    if lo is not None and hi is not None:
        out.update({"loss_lo": lo, "loss_hi": hi, "inside": bool(lo <= val_loss <= hi)})
    if predicted.get("bpb") is not None and val_bpb is not None:
        out.update({"predicted_bpb": predicted["bpb"], "actual_bpb": val_bpb,
                    "bpb_lo": predicted.get("bpb_lo"), "bpb_hi": predicted.get("bpb_hi")})
    return out
