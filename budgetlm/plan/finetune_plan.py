"""`plan_finetune(budget, PATH, data)`: ranked fine-tunes of a pretrained model; `FinetunePlan`
holds the answer, its notes, its runnable configs and plan.json (see `plan.finetune`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm.config import DataConfig, RunConfig, dump_config
from budgetlm.errors import UserError
from budgetlm.plan.budget import Budget, Target, resolve_target
from budgetlm.plan.finetune import (
    ADAPTER_BITS_PER_PARAM,
    DATA_BITS_PER_TOKEN,
    EVALS_PER_EPOCH,
    FULL_LR_FRACTION,
    LORA_ALPHA,
    LORA_LR_MULTIPLIER,
    MAX_EPOCHS,
    PATIENCE,
    FinetuneCandidate,
    FinetuneContext,
    Rates,
    describe,
    finish_all,
    front,
    methods_for,
    price_setups,
    resolve_seq_lens,
)
from budgetlm.plan.finetune_base import PretrainedBase, load_base
from budgetlm.plan.finetune_classify import (
    RANKING_RULE_CLASSIFY,
    classification_base,
    classification_data,
    classify_lr_fraction,
    classify_lr_note,
    count_labeled,
    seq_len_note,
)
from budgetlm.plan.pricing import precisions_for
from budgetlm.plan.recipe import optim_config, plateau_config, schedule_config, train_config
from budgetlm.plan.timing import SHORT_BUDGET, TIMED, busy_note, timing_default
from budgetlm.units import format_count, short_bytes, write_json

RANKING_RULE = (
    "no loss is predicted: there is no scaling law for fine-tuning loss. Ranked by the tokens a "
    "candidate can put to use: effective tokens of its epochs (Muennighoff et al. 2023; at most "
    f"{MAX_EPOCHS:g} epochs) x the share of the unique data its trained parameters can hold "
    f"({ADAPTER_BITS_PER_PARAM:g} bits per parameter, Allen-Zhu & Li 2024, against an assumed "
    f"{DATA_BITS_PER_TOKEN:g} bit per token: LoRA tracks full fine-tuning until the data exceeds "
    "the adapter's capacity, Schulman et al. 2025); ties go to LoRA at the highest rank (it "
    "forgets less, Biderman et al. 2024), then precision, time, memory. Full fine-tuning ranks "
    "first when it fits and the data is larger than the adapters hold"
)


@dataclass
class DataCount:
    """The fine-tuning corpus: its config and token counts."""

    config: DataConfig
    unique: int
    val_tokens: int
    vocab: int
    description: str


def count_data(source: str, tokenizer: str | None, base: PretrainedBase) -> DataCount:
    """The corpus `source`, tokenized as the base model was pretrained (or with `tokenizer`),
    counted through the token cache."""
    from budgetlm.data import load_corpus

    data = base.data(source)
    if tokenizer is not None:
        data = data.model_copy(update={"tokenizer": tokenizer})
    pretrained = str(base.path) if base.kind == "hf" else None
    corpus = load_corpus(data, pretrained=pretrained)
    vocab = int(corpus.tokenizer.vocab_size)
    if vocab > base.model.vocab_size:
        raise UserError(f"--tokenizer {data.tokenizer}: {vocab:,} ids, more than the model's "
                        f"vocabulary ({base.model.vocab_size:,})")
    unique, val = int(len(corpus.train)), int(len(corpus.val))
    cached = "cached" if corpus.info.get("cached") else "tokenized now, cached"
    desc = (f"data: {source} ({data.tokenizer}, vocab {vocab:,}): {unique:,} training and "
            f"{val:,} validation tokens ({cached})")
    return DataCount(data, unique, val, vocab, desc)


@dataclass
class FinetunePlan:
    """Ranked fine-tunes of `base` on `data` for a budget, and the notes behind them."""

    budget: Budget
    target: Target
    base: PretrainedBase
    data: DataCount
    candidates: list[FinetuneCandidate]  # runnable first, best first (then estimate-only)
    infeasible: list[FinetuneCandidate]
    front: list[FinetuneCandidate]
    notes: list[str]
    optimizer: str
    schedule: str
    lr_source: str
    seed: int = 0
    elapsed_s: float = 0.0
    timed: list[str] = field(default_factory=list)  # candidates whose steps were timed here
    task: str = "lm"  # lm (a corpus) or classification (labeled rows)
    ranking: str = RANKING_RULE

    @property
    def top(self) -> FinetuneCandidate:
        return self.candidates[0]

    @property
    def first_line(self) -> str:
        return self.target.first_line

    def config(self, index: int = 0) -> RunConfig:
        """Candidate `index` as a runnable RunConfig (UserError for an estimate-only row)."""
        c = self.candidates[index]
        if c.estimate_only:
            raise UserError(f"plan: {c.name} is an estimate only (the trainer does not "
                            "quantize); it has no runnable config")
        return finetune_run_config(c, self)

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        """plan.json of a fine-tune plan (`FinetunePlanFile`)."""
        from budgetlm.plan.finetune_files import FinetunePlanFile

        return FinetunePlanFile.of(self, limit).model_dump()

    def write(self, path: str | Path) -> tuple[Path, Path]:
        """The top candidate as a runnable YAML at `path`; every candidate in `<stem>.json`."""
        p = Path(path)
        if p.suffix not in (".yaml", ".yml"):
            raise UserError(f"-o {p}: expected a .yaml file name")
        if p.exists() and p.is_dir():
            raise UserError(f"-o {p}: is a directory")
        try:
            dump_config(self.config(0), p)
            j = write_json(p.with_suffix(".json"), self.to_dict(), indent=1)
        except OSError as exc:
            raise UserError(f"-o {p}: cannot write ({exc.strerror or exc})") from None
        return p, j


def finetune_run_config(c: FinetuneCandidate, p: FinetunePlan) -> RunConfig:
    """Candidate `c` as a runnable RunConfig (`candidate_config`) with the plan in meta."""
    meta = {
        "planned_by": "budgetlm plan --finetune",
        "budget": p.budget.to_dict(),
        "interpretation": p.first_line,
        "finetune_plan": {**describe(c), "base": str(p.base.path),
                          "unique_tokens": p.data.unique, "ranking": p.ranking},
    }
    return candidate_config(c, p.target, p.base, p.data.config, p.optimizer, p.schedule,
                            p.seed, meta, p.task)


def candidate_config(c: FinetuneCandidate, tgt: Target, base: PretrainedBase, data: DataConfig,
                     optimizer: str, schedule: str, seed: int,
                     meta: dict[str, Any] | None = None, task: str = "lm") -> RunConfig:
    """Candidate `c` as a RunConfig: the base's model at the candidate's context, the recipe's
    AdamW, schedule and training section (`recipe`), the epoch cap, evaluations per epoch, early
    stopping for multi-epoch runs (every classification run: on validation accuracy, the best
    checkpoint restored), the finetune section (what timing its steps runs too)."""
    train = train_config(c, tgt)  # type: ignore[arg-type]  # the shared batch/precision fields
    classify = task == "classification"
    update: dict[str, Any] = {
        "eval_interval": max(1, c.steps // c.evals),
        "eval_tokens": c.eval_tokens,
        "patience": PATIENCE if c.epochs > 1 or classify else None,
        "init_from": str(base.path.resolve()) if base.kind == "run" else None,
    }
    if classify:
        update["monitor"] = "val_accuracy"
    if tgt.kind == "time":  # the clock ends the run unless the epochs end it first
        wall = float(tgt.wall_seconds or 0.0)
        update["max_tokens"] = int(c.tokens) if c.capped else None
        update["eval_time_interval"] = None if c.capped else wall / c.evals
    return RunConfig(
        name=f"{'classify' if classify else 'finetune'}-{base.name}-{c.method.label}",
        seed=seed,
        task=task,  # type: ignore[arg-type]
        model=base.model_at(c.seq_len),
        optim=optim_config(c, optimizer),  # type: ignore[arg-type]
        schedule=schedule_config(c, schedule),  # type: ignore[arg-type]
        data=data,
        train=plateau_config(train.model_copy(update=update), schedule),
        finetune=c.method.finetune(),
        meta=meta or {},
    )


def _lr_note(ctx: FinetuneContext, task: str = "lm") -> str:
    if task == "classification":
        return classify_lr_note(ctx.base.model.family, ctx.lr_full, ctx.lr_source)
    return (
        f"lr: full fine-tuning {ctx.lr_full:.2g} = {FULL_LR_FRACTION:g} x {ctx.lr_source} "
        "(Llama 2 7B: pretrained at 3e-4, Touvron et al. 2023; best fully fine-tuned near "
        "1e-5-2e-5, Biderman et al. 2024); LoRA "
        f"{LORA_LR_MULTIPLIER * ctx.lr_full:.2g} = {LORA_LR_MULTIPLIER:g}x that, alpha "
        f"{LORA_ALPHA:g} on every Linear (Schulman et al. 2025, \"LoRA Without Regret\": LoRA's "
        "best lr is ~10x full fine-tuning's, about independent of rank; Biderman et al. 2024, "
        "App. B; Hu et al. 2021)"
    )


def _top_notes(top: FinetuneCandidate, cands: list[FinetuneCandidate],
               bad: list[FinetuneCandidate], unique: int, task: str = "lm") -> list[str]:
    notes = [
        f"top: {top.method.label} trains {format_count(top.trainable_params)} of "
        f"{format_count(top.params)} params, room for ~{format_count(top.capacity_tokens)} "
        f"tokens against {format_count(unique)} unique; {top.epochs:.3g} epochs, "
        f"{format_count(top.tokens)} tokens, {top.steps} steps"
    ]
    if top.epochs > 1 or task == "classification":
        what = "accuracy (the best checkpoint restored)" if task == "classification" else "loss"
        notes.append(
            f"early stopping: {top.evals} evaluations ({EVALS_PER_EPOCH} per epoch); the run "
            f"stops after {PATIENCE} without a new best validation {what} (train.patience)")
    full_bad = [c for c in bad if c.method.name == "full" and c.reason.startswith("does not")]
    if full_bad and not any(c.method.name == "full" for c in cands):
        notes.append(f"full fine-tuning {full_bad[0].reason}: LoRA keeps the frozen weights "
                     "without gradients or optimizer state")
    if any(c.estimate_only for c in cands):
        notes.append("qlora rows: nf4 frozen weights (Dettmers et al. 2023) are a memory "
                     "estimate only (the trainer does not quantize; dequantization time is not "
                     "priced): ranked after every runnable row, never exported")
    return notes


def _time_notes(tgt: Target, timed: list[str] | None, busy: str | None,
                short: bool) -> list[str]:
    """Where the step times come from (`timed`: the steps timed, None when not timing)."""
    out = []
    if tgt.kind == "flops":
        out.append("flops: a fine-tune's FLOPs are what its training executes, as the estimator "
                   "counts them (a LoRA token ~4N plus the adapters', not 6N)")
    if tgt.profile is None:
        return [*out, "time: no device named: no time estimate"]
    if timed:
        return [*out, f"time: timed real optimizer steps of {len(timed)} fine-tune "
                "configurations (method, precision, micro-batch x accumulation) on this machine "
                "as the trainer runs them (time source timed, ᵗ in the table); the others are "
                "the estimate x the measured/estimated ratio interpolated in FLOPs per "
                "micro-step", *([busy] if busy else [])]
    why = "not timed: " + SHORT_BUDGET if short else "not timed on this machine"
    return [*out, f"time: estimated from the {tgt.source} matmul peak x default MFU by model "
            f"size with the fine-tune's training FLOPs (the estimator's); {why}"]


def _why_nothing(tgt: Target, bad: list[FinetuneCandidate]) -> str:
    runnable = [c for c in bad if not c.estimate_only]
    small = [c for c in runnable if c.reason.startswith("budget too small")]
    if small:
        c = max(small, key=lambda c: c.steps)
        return f"plan: no fine-tune fits the budget: {c.method.label} {c.reason}"
    if runnable:
        c = min(runnable, key=lambda c: c.memory_bytes or 0)
        return f"plan: no fine-tune fits on {tgt.name}: {c.method.label} {c.reason}"
    return f"plan: no fine-tune for this budget on {tgt.name}"


def plan_finetune(
    budget: Budget,
    base_path: str | Path,
    data: str,
    tokenizer: str | None = None,
    seq_lens: list[int] | None = None,
    precisions: list[str] | None = None,
    optimizer: str = "adamw",
    schedule: str = "wsd",
    seed: int = 0,
    profile: Any = None,
    timing: bool | None = None,
    timing_top: int = 3,
    task: str = "lm",
) -> FinetunePlan:
    """Rank fine-tunes of the model at `base_path` on corpus `data` for `budget` (see
    `plan.finetune`). tokenizer: instead of the model's own (tokenizer.json, else bytes);
    profile: a HardwareProfile to plan on instead of this machine's / the named GPU's.
    timing: time real steps of the best few fine-tunes (`plan.finetune_timing`; --time budgets
    only, by default when this machine's profile is used and the budget is longer than the
    timing, as the pretraining planner: `timing.timing_default`; a budget the estimates say buys
    nothing is refused before any timing); timing_top: how many are timed exactly.
    task: lm (a corpus) or classification (labeled rows, `plan.finetune_classify`)."""
    t0 = time.perf_counter()
    if schedule not in ("wsd", "cosine"):
        raise UserError(f"--schedule: expected wsd or cosine, got {schedule!r}")
    if task not in ("lm", "classification"):
        raise UserError(f"--task: expected lm or classification, got {task!r}")
    base = load_base(base_path)
    tgt = resolve_target(budget, profile)
    precs = precisions_for(tgt, precisions)
    if not precs:
        raise UserError(f"plan: no precision has a peak FLOP/s on {tgt.name}")
    lr_pre, lr_source = base.pretraining_lr()
    extra: list[str] = []
    if task == "classification":
        if tokenizer is not None or seq_lens:
            raise UserError("--tokenizer/--seq-len: a classification plan uses the run's "
                            "tokenizer and its longest training text")
        base, counted, lens, extra = _classification_setup(base, data)
        lr_full = classify_lr_fraction(base.model.family) * lr_pre
        pairs = [(m, p) for m, p in methods_for(base.model, precs) if m.name == "full"]
    else:
        counted = count_data(data, tokenizer, base)
        lr_full = FULL_LR_FRACTION * lr_pre
        lens = resolve_seq_lens(base, tgt, seq_lens, counted.unique, counted.val_tokens)
        pairs = methods_for(base.model, precs)
    ctx = FinetuneContext(tgt, base, counted.unique, counted.val_tokens, optimizer,
                          lr_full, lr_source)
    setups, no_fit = price_setups(ctx, pairs, lens)
    ranked, bad = _ranked(setups, no_fit, ctx)
    timing, short = timing_default(timing, tgt, profile)
    timed: list[str] | None = None
    busy = None
    if timing and tgt.kind == "time":
        from budgetlm.plan.finetune_timing import time_finetunes

        timed, rates = time_finetunes(
            setups, ranked, ctx, timing_top,
            lambda c: candidate_config(c, tgt, base, counted.config, optimizer, schedule, seed,
                                       task=task))
        ranked, bad = _ranked(setups, no_fit, ctx, rates)
        busy = busy_note(tgt)
    ranking = RANKING_RULE_CLASSIFY if task == "classification" else RANKING_RULE
    notes = [*tgt.notes, *base.notes, counted.description, *extra, ranking,
             *_top_notes(ranked[0], ranked, bad, counted.unique, task),
             _lr_note(ctx, task), *_time_notes(tgt, timed, busy, short)]
    if ranked[0].memory_bytes is not None and tgt.memory_limit is not None:
        notes.append(f"memory: top {short_bytes(ranked[0].memory_bytes)} of "
                     f"{short_bytes(int(tgt.memory_limit))} usable (estimator)")
    return FinetunePlan(
        budget=budget, target=tgt, base=base, data=counted, candidates=ranked, infeasible=bad,
        front=front(ranked), notes=notes, optimizer=optimizer, schedule=schedule,
        lr_source=lr_source, seed=seed, elapsed_s=time.perf_counter() - t0,
        timed=[c.name for c in ranked if c.time_source == TIMED], task=task, ranking=ranking,
    )


def _classification_setup(base: PretrainedBase, data: str
                          ) -> tuple[PretrainedBase, DataCount, list[int], list[str]]:
    """(the base as a classifier, the labeled rows counted, the one seq_len priced, notes) of
    a classification fine-tune (`plan.finetune_classify`)."""
    labeled = count_labeled(data, base)
    base = classification_base(base, labeled)
    counted = DataCount(classification_data(labeled), labeled.unique, labeled.val_tokens,
                        labeled.vocab, labeled.description)
    return base, counted, [labeled.seq_len], [n for n in [seq_len_note(labeled, base)] if n]


def _ranked(setups: list[FinetuneCandidate], no_fit: list[FinetuneCandidate],
            ctx: FinetuneContext, rates: Rates | None = None
            ) -> tuple[list[FinetuneCandidate], list[FinetuneCandidate]]:
    """(feasible fine-tunes ranked, infeasible ones) of priced `setups` (`finish_all`), or a
    UserError saying why no runnable one fits the budget."""
    ranked, bad = finish_all(setups, ctx, rates)
    if not ranked or ranked[0].estimate_only:
        raise UserError(_why_nothing(ctx.target, no_fit + bad + ranked))
    return ranked, no_fit + bad
