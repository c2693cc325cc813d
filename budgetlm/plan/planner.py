"""`plan(Budget(...))`: rank candidate configurations for a budget; `Plan` holds the answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm import laws
from budgetlm.config import DataConfig, RunConfig, dump_config
from budgetlm.errors import UserError
from budgetlm.plan.arch import (
    MOE_LOSS_RULE,
    arch_ladder,
    check_arch,
    default_arch,
    describe_arch,
)
from budgetlm.plan.budget import Budget, Target, resolve_target
from budgetlm.plan.data_limited import (
    capped_optimal,
    data_limit_note,
    law_optimum,
    optimal_params,
    regularization_note,
    repetition_cap,
)
from budgetlm.plan.extrapolation import size_cap, size_cap_note
from budgetlm.plan.files import PlanFile
from budgetlm.plan.ladder import LADDER_SPAN, Shape
from budgetlm.plan.lifetime import Inference, lifetime_notes, lifetime_plan
from budgetlm.plan.loss_units import loss_shown, loss_unit
from budgetlm.plan.marginal import marginal
from budgetlm.plan.notes import plan_notes, size_limit_note, why_nothing
from budgetlm.plan.parallel import comm_notes, price_sharded
from budgetlm.plan.pareto import pareto
from budgetlm.plan.precision import ESTIMATE_ONLY, PLAN_PRECISIONS
from budgetlm.plan.pricing import (
    Candidate,
    PlanContext,
    finished_copy,
    precisions_for,
    price_candidates,
    rank_key,
    rough_compute,
    seq_lens_for,
)
from budgetlm.plan.recipe import check_parametrization, predicted, run_config
from budgetlm.plan.timing import TIMING_SECONDS, busy_note, time_and_rescale
from budgetlm.plan.vocab import vocab_note
from budgetlm.units import write_json

TIME_AND_INFERENCE = (
    "--inference-tokens: a --time budget fixes how long this machine trains, and the lifetime "
    "optimum trains longer than the training-only plan (Sardana et al. 2023); plan it with "
    "--gpu-hours, --flops or --cost")
DEFAULT_GPU_VOCAB = 32768  # a 32k BPE when no data is given (Chinchilla used a 32k vocabulary)
REFERENCE_SEQ_LEN = {"chinchilla": 2048, "epoch": 2048, "kaplan": 1024}  # of the priors' data


@dataclass
class Plan:
    """Ranked candidates for a budget, the law and data behind them, and notes."""

    budget: Budget
    target: Target
    law: laws.LossLaw
    data: DataConfig
    data_given: bool
    unique_tokens: int | None
    vocab_size: int
    candidates: list[Candidate]  # feasible, best first
    infeasible: list[Candidate]
    front: list[Candidate]
    pareto_axes: tuple[str, ...]
    optimum: dict[str, Any]
    notes: list[str]
    timed: list[str]  # candidates whose steps were timed on this machine
    optimizer: str
    schedule: str
    family: str
    seed: int = 0
    elapsed_s: float = 0.0
    arch: str = "gpt2"
    max_epochs: float | None = None  # the repetition cap (`plan.data_limited`)
    marginal: list[dict[str, Any]] = field(default_factory=list)  # `plan.marginal`
    lifetime: dict[str, Any] | None = None  # `plan.lifetime` (inference tokens given)
    parametrization: str = "standard"  # or mup: µP configs at `laws.mup_lr_prior`'s lr

    @property
    def loss_shown(self) -> str:
        """"absolute" (a fit for this corpus) or "relative" (Δ vs the top; `plan.loss_units`)."""
        return loss_shown(self.law, self.data, self.data_given)

    @property
    def loss_unit(self) -> str:
        """Whose nats/token the losses are in."""
        return loss_unit(self.law, self.data, self.data_given)

    @property
    def loss_rule(self) -> dict[str, Any] | None:
        """How an MoE's loss comes from the dense law (`arch.MOE_LOSS_RULE`); None if dense."""
        return dict(MOE_LOSS_RULE) if self.arch == "moe" else None

    @property
    def top(self) -> Candidate:
        return self.candidates[0]

    @property
    def first_line(self) -> str:
        return self.target.first_line

    def config(self, index: int = 0) -> RunConfig:
        """Candidate `index` as a runnable RunConfig (caps, schedule, eval, meta.predicted)."""
        return run_config(
            self.candidates[index], target=self.target, law=self.law, data=self.data,
            unique_tokens=self.unique_tokens, optimizer=self.optimizer, schedule=self.schedule,
            family=self.family, seed=self.seed, budget=self.budget,
        )

    def predicted(self, index: int = 0) -> dict[str, Any]:
        """What the plan predicts for candidate `index` (a run's `meta.predicted`)."""
        return predicted(self.candidates[index], law=self.law, unique_tokens=self.unique_tokens,
                         target=self.target)

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        """plan.json (`PlanFile`), with the first `limit` candidates (all when None)."""
        return PlanFile.of(self, limit).model_dump()

    def write(self, path: str | Path) -> tuple[Path, Path]:
        """The top candidate as a runnable YAML at `path`, and every candidate in a sibling
        `<stem>.json`."""
        p = Path(path)
        if p.suffix not in (".yaml", ".yml"):
            raise UserError(f"-o {p}: expected a .yaml file name")
        if p.exists() and p.is_dir():
            raise UserError(f"-o {p}: is a directory")
        if self.top.estimate_only:
            raise UserError(f"-o {p}: the top candidate ({self.top.name}) is an estimate only: "
                            f"{ESTIMATE_ONLY[self.top.precision]}")
        try:
            dump_config(self.config(0), p)
            j = write_json(p.with_suffix(".json"), self.to_dict(), indent=1)
        except OSError as exc:
            raise UserError(f"-o {p}: cannot write ({exc.strerror or exc})") from None
        return p, j


@dataclass
class DataInfo:
    """The data a plan is for: its config, whether it was given, and its counts."""

    config: DataConfig
    given: bool
    unique: int | None
    vocab: int
    val_tokens: int | None
    description: str


def data_info(data: DataConfig | None, tokens: int | None, tgt: Target) -> DataInfo:
    """The corpus (counted through the token cache), a count of unique tokens, or neither
    (unlimited data, the default corpus and vocabulary of the device)."""
    if data is not None and tokens is not None:
        raise UserError("--tokens: give --data (its tokens are counted) or --tokens, not both")
    if tokens is not None and tokens < 1:
        raise UserError(f"--tokens: must be positive, got {tokens}")
    if data is not None:
        from budgetlm.data import load_corpus

        corpus = load_corpus(data)
        unique, val = int(len(corpus.train)), int(len(corpus.val))
        vocab = int(corpus.tokenizer.vocab_size)
        cached = "cached" if corpus.info.get("cached") else "tokenized now, cached"
        desc = (f"data: {data.source} ({data.tokenizer}, vocab {vocab}): {unique:,} training "
                f"tokens ({cached})")
        return DataInfo(data, True, unique, vocab, val, desc)
    if tgt.device == "cpu":
        default, vocab = DataConfig(), 256
    else:
        default = DataConfig(tokenizer="bpe", bpe_vocab_size=DEFAULT_GPU_VOCAB)
        vocab = DEFAULT_GPU_VOCAB
    if tokens is not None:
        desc = f"data: {tokens:,} unique tokens (--tokens); vocabulary assumed {vocab}"
        return DataInfo(default, False, int(tokens), vocab, None, desc)
    desc = (f"data: not given: unlimited unique tokens assumed, vocabulary {vocab}; the exported "
            f"config trains on {default.source} (pass --data)")
    return DataInfo(default, False, None, vocab, None, desc)


def _check_options(family: str, schedule: str, seq_lens: list[int] | None,
                   precisions: list[str] | None, arch: str | None, parametrization: str | None,
                   optimizer: str) -> None:
    check_parametrization(parametrization or "standard", optimizer, family)
    check_arch(arch)
    if family != "gpt":
        raise UserError(f"--family: the planner plans gpt models only, got {family!r}")
    if schedule not in ("wsd", "cosine"):
        raise UserError(f"--schedule: expected wsd or cosine, got {schedule!r}")
    for t in seq_lens or []:
        if t < 8:
            raise UserError(f"--seq-len: must be at least 8, got {t}")
    for p in precisions or []:
        if p not in PLAN_PRECISIONS:
            raise UserError(f"--precision: unknown precision {p!r}; one of "
                            f"{', '.join(PLAN_PRECISIONS)}")


def _window(ctx: PlanContext, precs: list[str]) -> list[Shape]:
    """Rungs within LADDER_SPAN of the rough compute-optimal size, repetitions capped at
    `max_epochs`, sizes at `max_params` (held inside the ladder, so a budget beyond its ends
    prices its largest or smallest rungs)."""
    n_opt, _ = capped_optimal(ctx.law, rough_compute(ctx.target, precs), ctx.unique,
                              ctx.max_epochs)
    rungs = arch_ladder(ctx.arch)
    top = min(rungs[-1].approx_params, ctx.max_params or float("inf"))
    n = min(max(n_opt, rungs[0].approx_params), top)
    return [s for s in rungs if n / LADDER_SPAN <= s.approx_params <= min(n * LADDER_SPAN, top)]


def _price(shapes: list[Shape], precs: list[str], seq_lens: list[int] | None,
           ctx: PlanContext) -> tuple[list[Candidate], list[Candidate]]:
    """(candidates that fit in memory, those that do not) of `shapes`."""
    fit: list[Candidate] = []
    no_fit: list[Candidate] = []
    # several GPUs with an interconnect: the layout (ddp, fsdp, hsdp) is priced per candidate
    price = price_sharded if ctx.target.fabric is not None else price_candidates
    for s in shapes:
        for T in seq_lens_for(ctx.target, s.approx_params, seq_lens):
            for c in price(s, T, precs, ctx):
                (fit if c.feasible else no_fit).append(c)
    return fit, no_fit


def _largest_fitting(below: float, precs: list[str], seq_lens: list[int] | None,
                     ctx: PlanContext) -> tuple[list[Candidate], list[Candidate]]:
    """The largest rungs smaller than `below` parameters that fit in memory: from the largest
    that fits down to LADDER_SPAN below it (what a budget too large for one device buys)."""
    fit: list[Candidate] = []
    no_fit: list[Candidate] = []
    largest = None
    for s in reversed(arch_ladder(ctx.arch)):
        if s.approx_params >= below:
            continue
        if largest is not None and s.approx_params < largest / LADDER_SPAN:
            break
        ok, bad = _price([s], precs, seq_lens, ctx)
        fit += ok
        no_fit += bad
        if ok and largest is None:
            largest = s.approx_params
    return fit, no_fit


def _candidates(ctx: PlanContext, precs: list[str],
                seq_lens: list[int] | None) -> tuple[list[Candidate], list[Candidate], bool]:
    """(priced candidates that fit, those that do not, whether the window around the optimum
    held nothing that fits one device so the largest shapes that fit were priced instead).
    The smallest rung is always priced (so "too small" names the smallest model)."""
    window = _window(ctx, precs)
    setups, no_fit = _price(window, precs, seq_lens, ctx)
    fell_back = False
    if window and not setups and ctx.target.memory_strict:
        more, more_bad = _largest_fitting(window[0].approx_params, precs, seq_lens, ctx)
        setups, no_fit, fell_back = more + setups, more_bad + no_fit, bool(more)
    smallest = arch_ladder(ctx.arch)[0]
    if all(c.shape != smallest for c in setups + no_fit):
        ok, bad = _price([smallest], precs, seq_lens, ctx)
        setups, no_fit = ok + setups, bad + no_fit
    return setups, no_fit, fell_back


def _finish_all(setups: list[Candidate],
                ctx: PlanContext) -> tuple[list[Candidate], list[Candidate]]:
    """(feasible candidates ranked, infeasible ones), each finished from its priced setup."""
    ok, bad = [], []
    for c in setups:
        c2 = finished_copy(c, ctx)
        (ok if c2.feasible else bad).append(c2)
    ok.sort(key=lambda c: rank_key(c, ctx.target.device))
    runnable = next((i for i, c in enumerate(ok) if not c.estimate_only), 0)
    return ok[runnable:runnable + 1] + ok[:runnable] + ok[runnable + 1:], bad


def _finish_timed(setups: list[Candidate],
                  ctx: PlanContext) -> tuple[list[Candidate], list[Candidate], float]:
    """`_finish_all`, and the seconds it took."""
    t = time.perf_counter()
    ranked, too_small = _finish_all(setups, ctx)
    return ranked, too_small, time.perf_counter() - t


def _time_runnable(setups: list[Candidate], ranked: list[Candidate], ctx: PlanContext,
                   top: int) -> list[str]:
    """`time_and_rescale` over the candidates the trainer can run (fp8 has no trainer path)."""
    return time_and_rescale([s for s in setups if not s.estimate_only],
                            [c for c in ranked if not c.estimate_only], ctx, top)


def _rank_timed(
    setups: list[Candidate], ranked: list[Candidate], too_small: list[Candidate],
    ctx: PlanContext, timing: bool | None, profile: Any, timing_top: int,
    spent: Callable[[], float] | None,
) -> tuple[list[Candidate], list[Candidate], list[str], str | None, bool]:
    """(ranked, too small, timed, busy note, short): with `timing` (default: a --time budget on
    this machine longer than the timing), real steps of the best `timing_top` timed and every
    candidate finished again; `spent()` (planning so far) then comes out of the wall time.
    short: the budget is shorter than the timing, so it was priced untimed."""
    tgt = ctx.target
    # timing steps is not worth more than the run itself: a short budget is priced untimed
    short = (timing is None and tgt.kind == "time" and profile is None
             and float(tgt.wall_seconds or 0.0) < TIMING_SECONDS)
    if timing is None:
        timing = tgt.kind == "time" and profile is None and not short
    if not (timing and tgt.kind == "time" and ranked):
        return ranked, too_small, [], None, short
    timed = _time_runnable(setups, ranked, ctx, timing_top)
    if spent is not None and tgt.wall_seconds is not None:
        # what planning took so far, and the ranking below once more
        tgt.wall_seconds = max(1.0, tgt.wall_seconds - spent())
    ranked, too_small = _finish_all(setups, ctx)
    return ranked, too_small, timed, busy_note(tgt), short


def _context(law: laws.LossLaw, tgt: Target, info: DataInfo, optimizer: str, family: str,
             arch: str, fit: dict[str, Any] | None = None,
             parametrization: str = "standard") -> PlanContext:
    """What pricing needs besides the shapes; the law's reference sequence length included;
    the repetition cap of limited data (`plan.data_limited`, from the law and `fit`'s pilots).
    A prior plans a BPE's vocabulary per candidate (`laws.vocabulary`); a fit is for its
    pilots' tokenizer as it was. `parametrization`: the candidates' (their lr prior)."""
    ref_seq = law.extra.get("seq_len") if law.kind == "fit" else REFERENCE_SEQ_LEN.get(law.name)
    cap, why = repetition_cap(law, fit)
    return PlanContext(tgt, law, info.unique, info.vocab, info.val_tokens, optimizer, family,
                       ref_seq, arch, max_epochs=cap if info.unique is not None else None,
                       max_epochs_why=why, max_params=size_cap(law),
                       parametrization=parametrization,
                       choose_vocab=info.config.tokenizer == "bpe" and law.kind != "fit")


def _data_notes(ranked: list[Candidate], ctx: PlanContext) -> list[str | None]:
    """What the corpus limits (`plan.data_limited`) and the vocabulary chosen (`plan.vocab`)."""
    top = ranked[0]
    return [data_limit_note(top, ctx, ctx.max_epochs_why), regularization_note(top),
            vocab_note(top)]


def _notes(top: Candidate, ctx: PlanContext, info: DataInfo, timed: list[str],
           busy: str | None, short: bool, shown: list[Candidate]) -> list[str]:
    """The target's notes, then the plan's, with the recipe after the data and loss notes;
    then the communication of several GPUs and what estimate-only rows among `shown` mean."""
    untimed = (f"the budget is shorter than timing steps on this machine takes, up to "
               f"{TIMING_SECONDS:.0f} s; --timing times them anyway") if short else None
    notes = list(ctx.target.notes) + plan_notes(top, ctx, info.description, info.config,
                                                info.given, timed, busy, untimed)
    notes.insert(len(ctx.target.notes) + 2, describe_arch(ctx.arch, top.model))
    notes += comm_notes(top, ctx.target, shown)
    if any(c.estimate_only for c in shown):
        notes += [f"{p}† (estimate only): {why}; priced as the bf16 step at that peak (same MFU, "
                  "memory and communication), never the exported config"
                  for p, why in ESTIMATE_ONLY.items() if any(c.precision == p for c in shown)]
    return notes


def _fitted_defaults(
    law: laws.LossLaw, seq_lens: list[int] | None, precisions: list[str] | None,
    arch: str | None, parametrization: str | None,
) -> tuple[list[int] | None, list[str] | None, str | None, str]:
    """A fitted law is a statement about the pilots' sequence length, precision and recipe
    (calibrate's pilots are gpt2 unless the fit says otherwise) and parametrization (standard
    unless the fit says mup); a prior plans the standard parametrization unless told."""
    if parametrization is None:
        parametrization = str(law.extra.get("parametrization") or "standard")
    if law.kind == "fit":
        if seq_lens is None and law.extra.get("seq_len"):
            seq_lens = [int(law.extra["seq_len"])]
        if precisions is None and law.extra.get("precision"):
            precisions = [str(law.extra["precision"])]
        if arch is None:
            arch = str(law.extra.get("arch") or "gpt2")
    return seq_lens, precisions, arch, parametrization


def _beyond_budget(ranked: list[Candidate], setups: list[Candidate], ctx: PlanContext,
                   precs: list[str], seq_lens: list[int] | None, budget: Budget,
                   inference: Inference | None) -> tuple[list[Candidate], dict[str, Any]]:
    """The marginal value of compute at the training-only top's FLOPs (`plan.marginal`), and
    with inference tokens the candidates re-ranked by lifetime cost (`plan.lifetime`)."""
    top = ranked[0]
    if inference is not None and inference.active and ctx.target.kind == "time":
        raise UserError(TIME_AND_INFERENCE)
    extra: dict[str, Any] = {
        "marginal": marginal(ctx.law, top.flops, ctx.unique, top.context_adjustment, budget),
        "lifetime": None,
    }
    if inference is not None and inference.active:
        ranked, record = lifetime_plan(ranked, setups, ctx, inference, budget.price,
                                       lambda shapes: _price(shapes, precs, seq_lens, ctx)[0])
        extra["lifetime"] = record or None
    return ranked, extra


def plan(
    budget: Budget,
    data: DataConfig | None = None,
    tokens: int | None = None,
    prior: str = "epoch",
    fit: dict[str, Any] | None = None,
    profile: Any = None,
    timing: bool | None = None,
    seq_lens: list[int] | None = None,
    precisions: list[str] | None = None,
    optimizer: str = "adamw",
    schedule: str = "wsd",
    family: str = "gpt",
    seed: int = 0,
    timing_top: int = 3,
    spend_planning: bool = False,
    arch: str | None = None,
    inference: Inference | None = None,
    parametrization: str | None = None,
) -> Plan:
    """Rank candidate configurations for `budget`; see the package docstring.

    data / tokens: the corpus (counted through the token cache) or a count of unique tokens;
    neither means unlimited data. prior: "epoch" (default), "chinchilla" or "kaplan"; fit: a
    Chinchilla-form law fitted on this corpus ({E, A, B, alpha, beta}), which replaces the prior.
    profile: a HardwareProfile to plan on instead of this machine's / the named GPU's.
    timing: time real steps of the best few candidates (--time budgets only; default on for
    those when this machine's profile is used and the budget is longer than the timing,
    TIMING_SECONDS; a budget the estimates say buys nothing is refused before any timing);
    timing_top: how many are timed exactly. inference: tokens served, `plan.lifetime`.
    arch: the recipe of the candidates, gpt2, llama or moe (`budgetlm.plan.arch`); default llama
    on a GPU, gpt2 on a CPU and for a FLOP budget with no GPU (and the pilots' recipe for a
    fitted law). parametrization: standard or mup (`recipe.check_parametrization`): the lr
    prior (DeepSeek's or µP's, `laws.mup_lr_prior`) and the exported model; default standard,
    or the fitted law's pilots'.
    spend_planning: a --time budget that counts from now: the time this planning takes (the
    timing of steps above all) comes out of the run's wall time.
    """
    t0 = time.perf_counter()
    _check_options(family, schedule, seq_lens, precisions, arch, parametrization, optimizer)
    law = laws.law_from_fit(fit) if fit is not None else laws.prior(prior)
    seq_lens, precisions, arch, parametrization = _fitted_defaults(
        law, seq_lens, precisions, arch, parametrization)
    tgt = resolve_target(budget, profile)
    info = data_info(data, tokens, tgt)
    ctx = _context(law, tgt, info, optimizer, family, arch or default_arch(tgt.device), fit,
                   parametrization)
    arch = ctx.arch
    precs = precisions_for(tgt, precisions)
    if not precs:
        raise UserError(f"plan: no precision has a peak FLOP/s on {tgt.name}")
    setups, infeasible, fell_back = _candidates(ctx, precs, seq_lens)
    ranked, too_small, t_finish = _finish_timed(setups, ctx)
    spent = (lambda: time.perf_counter() - t0 + t_finish) if spend_planning else None
    ranked, too_small, timed, busy, short = _rank_timed(setups, ranked, too_small, ctx, timing,
                                                        profile, timing_top, spent)
    infeasible += too_small
    if not ranked:
        raise UserError(why_nothing(budget, tgt, infeasible))
    ranked, extra = _beyond_budget(ranked, setups, ctx, precs, seq_lens, budget, inference)
    axes = ("loss", "seconds", "memory_bytes") if tgt.kind == "flops" else ("loss", "memory_bytes")
    optimum = law_optimum(law, ranked[0], info.unique, ctx.max_epochs)
    notes = _notes(ranked[0], ctx, info, timed, busy, short, ranked)
    n_opt = optimal_params(optimum)
    limit = size_limit_note(ranked[0], n_opt, tgt, law, infeasible, fell_back)
    held = size_cap_note(n_opt, ctx.max_params)
    notes += [n for n in (limit, held, *_data_notes(ranked, ctx)) if n]
    return Plan(
        budget=budget, target=tgt, law=law, data=info.config, data_given=info.given,
        unique_tokens=info.unique, vocab_size=ranked[0].vocab_size, candidates=ranked,
        infeasible=infeasible, front=pareto(ranked, axes), pareto_axes=axes,
        optimum=optimum, notes=notes + lifetime_notes(extra["lifetime"]), timed=timed,
        optimizer=optimizer, schedule=schedule, family=family, seed=seed,
        elapsed_s=time.perf_counter() - t0, arch=arch, max_epochs=ctx.max_epochs,
        parametrization=parametrization, **extra,
    )
