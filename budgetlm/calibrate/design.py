"""Pilot design: compute levels, model sizes at each (IsoFLOP profiles), and their configs.

Sizes are rungs of the planner's ladder spread by `size_spread` around the prior's
compute-optimal size for the level; each pilot is the planner's candidate for a FLOP budget,
configured by the planner's recipe (`budgetlm.plan.run_config`), in the calibration's
parametrization (standard, or µP at the µP lr prior). On a time budget the levels are
scaled so the pilots' predicted wall time (throughput timed on this machine, plus a per-pilot
overhead) fills PLAN_SHARE of the pilot budget.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from budgetlm import laws
from budgetlm.config import DataConfig, RunConfig
from budgetlm.errors import UserError
from budgetlm.estimate import count_params
from budgetlm.plan import (
    Candidate,
    PlanContext,
    Shape,
    Target,
    finish_candidate,
    ladder,
    local_flops_target,
    measure_throughput,
    model_config,
    price_candidates,
    run_config,
)
from budgetlm.plan.data_limited import pilots_epochs_note
from budgetlm.plan.pricing import whole_eval_windows

PLAN_SHARE = 0.85  # of the pilot budget the design fills with predicted pilot time
PILOT_OVERHEAD_S = 2.5  # per pilot before any is measured: process, data, model, final eval
EVAL_TOKENS = 65536  # validation tokens of every pilot and of the planned run (the same windows)
MAX_PILOT_PARAMS = 2e9


@dataclass
class Pilot:
    """One pilot run of the design: its level, shape, tokens, predicted time and config."""

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

    @property
    def shape(self) -> Shape:
        return Shape(self.n_layer, self.d_model, self.n_head)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Design:
    """The pilots of a calibration (design.json): levels, pilots and the pilot budget."""

    fingerprint: dict[str, Any]
    seq_len: int
    precision: str
    levels: list[float]
    pilots: list[Pilot]
    design_seconds: float
    pilot_seconds_budget: float | None
    pilot_flops_budget: float | None
    notes: list[str] = field(default_factory=list)
    parametrization: str = "standard"  # of every pilot (`budgetlm.plan.recipe`)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["pilots"] = [p.to_dict() for p in self.pilots]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Design:
        d = dict(d)
        d["pilots"] = [Pilot(**p) for p in d["pilots"]]
        return cls(**d)


@dataclass(frozen=True)
class DesignOptions:
    """How the pilot budget is split: its share of the budget, levels and sizes."""

    fraction: float
    levels: int
    sizes: int
    level_ratio: float
    size_spread: float


def fingerprint(budget: Any, data: DataConfig, options: DesignOptions, seq_len: int | None,
                seed: int, sha: str | None, parametrization: str = "standard") -> dict[str, Any]:
    """What a design depends on: a saved design is reused only when this is unchanged (the
    parametrization is there only when it is mup, so standard designs keep their
    fingerprint)."""
    fp = {
        "budget": budget.to_dict(), "data": data.model_dump(mode="json"), "data_sha256": sha,
        "pilot_fraction": options.fraction, "levels": options.levels, "sizes": options.sizes,
        "level_ratio": options.level_ratio, "size_spread": options.size_spread,
        "seq_len": seq_len, "seed": seed,
    }
    return fp | ({"parametrization": parametrization} if parametrization != "standard" else {})


def pilot_key(level: int, name: str, level_flops: float, seq_len: int) -> str:
    """A pilot's key in pilots.jsonl: level, shape and a hash of its compute and context."""
    h = hashlib.sha1(f"{level}|{name}|{level_flops:.6e}|{seq_len}".encode()).hexdigest()[:8]
    return f"c{level}-{name}-{h}"


def eval_tokens(seq_len: int, val_tokens: int) -> int:
    """Validation tokens of every pilot: EVAL_TOKENS in whole windows, within the split."""
    return whole_eval_windows(EVAL_TOKENS, seq_len, val_tokens)


class PilotDesigner:
    """Chooses pilot shapes and configs at given compute levels (the planner's recipe)."""

    def __init__(self, data: DataConfig, profile: Any, corpus: Any, seq_len: int,
                 precision: str, seed: int, parametrization: str = "standard"):
        self.data = data
        self.parametrization = parametrization
        self.profile = profile
        self.seq_len = seq_len
        self.precision = precision
        self.seed = seed
        self.unique = int(len(corpus.train))
        self.vocab = int(corpus.tokenizer.vocab_size)
        self.val_tokens = int(len(corpus.val))
        self.prior = laws.prior("epoch")
        self._params: dict[Shape, int] = {}
        self.rungs = [s for s in ladder() if s.approx_params <= MAX_PILOT_PARAMS]

    def target(self, flops: float) -> Target:
        """`flops` of training on this machine."""
        return local_flops_target(self.profile, flops, name="this machine",
                                  first_line=f"pilot: {flops:.3g} FLOPs on this machine")

    def context(self, flops: float) -> PlanContext:
        """The planner's pricing context of a pilot of `flops`."""
        return PlanContext(self.target(flops), self.prior, self.unique, self.vocab,
                           self.val_tokens, "adamw", "gpt", None,
                           parametrization=self.parametrization)

    def total_params(self, shape: Shape) -> int:
        if shape not in self._params:
            m = model_config(shape, self.seq_len, self.vocab, "gpt")
            self._params[shape] = int(count_params(m).total)
        return self._params[shape]

    def shapes(self, flops: float, sizes: int, spread: float) -> list[Shape]:
        """`sizes` distinct rungs spread by `spread` around the prior's optimum at `flops`."""
        n0, _ = laws.data_constrained_optimal(self.prior, flops, self.unique)
        logs = [math.log(self.total_params(s)) for s in self.rungs]
        chosen: list[int] = []
        for j in range(sizes):
            want = math.log(n0) + (j - (sizes - 1) / 2) * math.log(spread)
            order = sorted(range(len(self.rungs)), key=lambda i: abs(logs[i] - want))
            chosen.append(next(i for i in order if i not in chosen))
        return [self.rungs[i] for i in sorted(chosen)]

    def candidate(self, shape: Shape, flops: float) -> Candidate | None:
        """The planner's candidate for `shape` trained on `flops` (None: cannot run)."""
        ctx = self.context(flops)
        cands = price_candidates(shape, self.seq_len, [self.precision], ctx)
        if not cands or not cands[0].feasible:
            return None
        c = finish_candidate(cands[0], ctx)
        return c if c.feasible else None

    def config(self, c: Candidate, flops: float, level: int) -> RunConfig:
        """The pilot's RunConfig: the planner's config for a FLOP budget, evaluated once at the
        end on the same validation windows as the planned run, no intermediate checkpoints."""
        return run_config(
            c, target=self.target(flops), law=self.prior, data=self.data,
            unique_tokens=self.unique, optimizer="adamw", schedule="wsd", family="gpt",
            seed=self.seed, name=f"pilot-c{level}-{c.shape.name}",
            meta={"calibrate": {"level": level, "level_flops": flops}},
            eval_interval=max(1, c.steps), eval_tokens=eval_tokens(self.seq_len, self.val_tokens),
            checkpoints=False, keep_last=1, device=self.profile.device,
        )

    def fitting_candidate(self, s: Shape, flops: float, avoid: list[Shape],
                          level: int) -> tuple[Shape, Candidate]:
        """`s`'s candidate at `flops`, or the next smaller rung's (not in `avoid`) when `s` is
        too big for that compute (fewer than the planner's minimum steps)."""
        c = self.candidate(s, flops)
        i = self.rungs.index(s) if s in self.rungs else 0
        while c is None and i > 0:
            i -= 1
            s = self.rungs[i]
            if s in avoid:
                continue
            c = self.candidate(s, flops)
        if c is None:
            raise UserError(
                f"calibrate: the pilot budget is too small: {flops:.3g} FLOPs per pilot at "
                f"level {level + 1} is too little even for {s.name} (raise the budget or "
                "--pilot-fraction, or lower --levels/--sizes)"
            )
        return s, c


def pilots_at(designer: PilotDesigner, levels: list[float], sizes: int, spread: float,
              shapes: list[list[Shape]] | None = None,
              first: int = 0) -> tuple[list[Pilot], list[list[Shape]]]:
    """Pilots at each level, numbered from `first` (shapes chosen now unless given); a shape too
    big for its level's compute gives way to the next smaller rung."""
    pilots: list[Pilot] = []
    chosen: list[list[Shape]] = []
    for i, flops in enumerate(levels):
        k = first + i
        want = shapes[i] if shapes is not None else designer.shapes(flops, sizes, spread)
        got: list[Shape] = []
        for s in want:
            s, c = designer.fitting_candidate(s, flops, got + want, k)
            got.append(s)
            cfg = designer.config(c, flops, k)
            pilots.append(Pilot(
                key=pilot_key(k, s.name, flops, designer.seq_len), level=k, level_flops=flops,
                name=s.name, n_layer=s.n_layer, d_model=s.d_model, n_head=s.n_head,
                params=int(c.params), flops_per_token=float(c.flops_per_token),
                tokens=int(c.tokens), steps=int(c.steps), tokens_per_s=None,
                predicted_seconds=None, config=cfg.model_dump(mode="json"),
            ))
        chosen.append(got)
    return pilots, chosen


def predicted_seconds(p: Pilot) -> float | None:
    """Training + the final eval (a forward pass: ~1/3 of a training token) + a fixed overhead."""
    if not p.tokens_per_s:
        return None
    ev = float(p.config["train"]["eval_tokens"])
    return (p.tokens + ev / 3) / p.tokens_per_s + PILOT_OVERHEAD_S


def _batch_tag(p: Pilot) -> str:
    t = p.config["train"]
    return f"{p.name}|{t['micro_batch']}|{t['grad_accum']}"


def time_pilots(designer: PilotDesigner, pilots: list[Pilot], cache: dict[str, float]) -> None:
    """Measured tokens/s of each pilot's (shape, micro-batch, accumulation) on this machine, each
    timed once (`cache`), and its predicted wall seconds (`predicted_seconds`)."""
    todo: dict[str, Candidate] = {}
    for p in pilots:
        tag = _batch_tag(p)
        if tag in cache or tag in todo:
            continue
        c = designer.candidate(p.shape, p.level_flops)
        if c is not None:
            t = p.config["train"]
            c.micro_batch, c.grad_accum = int(t["micro_batch"]), int(t["grad_accum"])
            todo[tag] = c
    ctx = designer.context(1.0)
    for tag, c in todo.items():
        got = measure_throughput([c], ctx, steps=3)
        if got:
            cache[tag] = next(iter(got.values()))
    for p in pilots:
        p.tokens_per_s = cache.get(_batch_tag(p))
        p.predicted_seconds = predicted_seconds(p)


def budget_seconds(budget: Any, profile: Any) -> float:
    """Wall seconds of a time or GPU-hours budget on this machine (UserError without a GPU)."""
    if budget.kind == "time":
        return float(budget.seconds)
    if profile.device != "cuda":
        flag = "--gpu-hours" if budget.kind == "gpu_hours" else "--cost"
        raise UserError(
            f"{flag}: calibrate runs its pilots on this machine, which has no GPU; give --time "
            "(wall time here) or --flops"
        )
    return float(budget.device_hours) * 3600.0 / max(1, budget.gpus)  # type: ignore[arg-type]


def design(
    budget: Any, data: DataConfig, corpus: Any, profile: Any, options: DesignOptions,
    seq_len: int, precision: str, seed: int, fp: dict[str, Any], log: Callable[[str], None],
    parametrization: str = "standard",
) -> Design:
    """Levels and pilots for the pilot budget (see the module docstring), every pilot in
    `parametrization`."""
    t0 = time.perf_counter()
    designer = PilotDesigner(data, profile, corpus, seq_len, precision, seed, parametrization)
    notes = [n for n in (mup_note(parametrization),) if n]
    ratios = [options.level_ratio**k for k in range(options.levels)]
    sizes, spread = options.sizes, options.size_spread
    if budget.kind == "flops":
        pilot_flops = options.fraction * float(budget.flops)
        c1 = pilot_flops / (sizes * sum(ratios))
        lv = [c1 * r for r in ratios]
        pilots, _ = pilots_at(designer, lv, sizes, spread)
        return Design(fp, seq_len, precision, lv, pilots, time.perf_counter() - t0, None,
                      pilot_flops, [_epochs_note(pilots, designer), *notes], parametrization)
    pilot_s = options.fraction * budget_seconds(budget, profile)
    peak = profile.peak(precision) or profile.peak("fp32") or 1e9
    rate = peak * (0.3 if profile.device == "cpu" else 0.4)
    avail = PLAN_SHARE * pilot_s - options.levels * sizes * PILOT_OVERHEAD_S
    if avail <= 0:
        raise UserError(
            f"calibrate: the pilot budget ({pilot_s:.0f} s = {options.fraction:g} of the budget) "
            f"is too small for {options.levels * sizes} pilots (each costs "
            f"~{PILOT_OVERHEAD_S:g} s of overhead alone): raise the budget or --pilot-fraction"
        )
    lv = [avail * rate / (sizes * sum(ratios)) * r for r in ratios]
    log(f"timing pilot shapes on this machine (pilot budget {pilot_s:.0f} s)")
    cache: dict[str, float] = {}
    shapes: list[list[Shape]] | None = None
    pilots: list[Pilot] = []
    for _ in range(3):
        pilots, shapes = pilots_at(designer, lv, sizes, spread, shapes)
        time_pilots(designer, pilots, cache)
        spent = time.perf_counter() - t0
        train_s = sum((p.predicted_seconds or 0.0) - PILOT_OVERHEAD_S for p in pilots)
        room = PLAN_SHARE * pilot_s - spent - len(pilots) * PILOT_OVERHEAD_S
        if train_s <= 0 or room <= 0:
            break
        f = room / train_s
        if abs(f - 1) < 0.03:
            break
        lv = [c * f for c in lv]
    return Design(fp, seq_len, precision, lv, pilots, time.perf_counter() - t0, pilot_s, None,
                  [_epochs_note(pilots, designer), *notes], parametrization)


def mup_note(parametrization: str) -> str | None:
    """What µP pilots are (None for standard ones): the lr prior they train at, cited."""
    if parametrization != "mup":
        return None
    lr, base = laws.mup_lr_prior()
    return (f"pilots: µP relative to width {base} at the µP lr prior {lr:g} (Dey et al. 2023, "
            "Cerebras-GPT), the same at every width; the fit is for µP runs, and plans from it "
            "are µP")


def _epochs_note(pilots: list[Pilot], designer: PilotDesigner) -> str:
    """How far the pilots repeat the data, so how far a plan from their fit may
    (`plan.data_limited`)."""
    return pilots_epochs_note([p.tokens / max(designer.unique, 1) for p in pilots])


def rescale_rest(designer: PilotDesigner, d: Design, level: int, spent: float,
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
    shapes = [[p.shape for p in left if p.level == k] for k in range(level, len(d.levels))]
    new_levels = [c * f for c in d.levels[level:]]
    try:
        new, _ = pilots_at(designer, new_levels, len(shapes[0]), 1.0, shapes, first=level)
    except UserError:
        return (f"the pilots from level {level + 1} on will overrun the pilot budget: they "
                "cannot be made smaller and still train")
    for p in new:
        old = next((q for q in left if q.name == p.name and q.level == p.level), None)
        p.tokens_per_s = old.tokens_per_s if old is not None else None
        p.predicted_seconds = predicted_seconds(p)
    d.pilots = [p for p in d.pilots if p.level < level] + new
    d.levels = d.levels[:level] + new_levels
    return (f"levels {level + 1}+ scaled to {f:.2f}x their compute: the pilots so far ran "
            f"{slow:.2f}x their predicted time")
