"""plan.json of a fine-tune plan (`plan --finetune`): what `FinetunePlan.to_dict()` returns and
`FinetunePlan.write()` writes, as pydantic models (the pretraining plan's is `files.PlanFile`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from budgetlm.plan.files import BudgetRecord, DeviceRecord, Record

if TYPE_CHECKING:
    from budgetlm.plan.finetune import FinetuneCandidate
    from budgetlm.plan.finetune_plan import FinetunePlan


class BaseModelRecord(Record):
    """The pretrained model the fine-tunes start from."""

    path: str = Field(description="the --finetune directory")
    kind: str = Field(description="hf (model.from_pretrained) or run (train.init_from)")
    name: str
    params: int = Field(description="parameters of the model")
    max_seq_len: int = Field(description="the longest context it was built for")
    vocab_size: int
    pretraining_lr: str = Field(description="the pretraining lr the lr priors scale, and why")


class FinetuneDataRecord(Record):
    """The fine-tuning corpus."""

    source: str
    tokenizer: str = Field(description="pretrained (the model's tokenizer.json), byte, ...")
    unique_tokens: int = Field(description="training tokens (one epoch)")
    val_tokens: int = Field(description="validation tokens")
    vocab_size: int = Field(description="ids the tokenizer gives")


class FinetuneCandidateRecord(Record):
    """One fine-tune priced against the budget."""

    name: str = Field(description="<method>-T<seq_len>-<precision>[+ckpt]-ep<epochs>")
    method: str = Field(description="full, lora-r<rank> or qlora-r<rank>")
    rank: int | None = Field(description="LoRA rank (null: full fine-tuning)")
    estimate_only: bool = Field(description="the trainer cannot run it (nf4 frozen weights)")
    seq_len: int
    precision: str
    params: int = Field(description="parameters of the model")
    trainable_params: int = Field(description="parameters that train")
    micro_batch: int = Field(description="sequences per micro-step per device")
    grad_accum: int = Field(description="micro-steps per device per optimizer step")
    devices: int
    global_batch_tokens: int = Field(description="tokens per optimizer step, all devices")
    checkpointing: bool = Field(description="activation checkpointing")
    lr: float = Field(description="peak learning rate")
    epochs: float = Field(description="passes over the fine-tuning data")
    tokens: int = Field(description="training tokens")
    steps: int = Field(description="optimizer steps")
    evals: int = Field(description="validation evaluations planned")
    flops_per_token: float = Field(description="training FLOPs per token (estimator)")
    flops: float = Field(description="training FLOPs of the run")
    tokens_per_s: float | None = Field(description="throughput, all devices (timed on this "
                                       "machine or estimated: time_source)")
    seconds: float | None = Field(description="predicted wall seconds, evaluations included")
    mfu: float | None = Field(description="model FLOPs utilization assumed")
    time_source: str = Field(description="where the step time comes from: timed (real steps "
                             "on this machine), estimate x R (timed steps), estimate (...)")
    memory_bytes: int | None = Field(description="peak memory per device (estimator)")
    useful_tokens: float = Field(description="the ranking score: effective tokens x the share "
                                 "of the data the trained parameters hold")
    capacity_tokens: float = Field(description="unique tokens the trained parameters can hold")
    feasible: bool
    reason: str = Field(description="why not feasible ('' when it is)")

    @classmethod
    def of(cls, c: FinetuneCandidate) -> FinetuneCandidateRecord:
        return cls(
            name=c.name, method=c.method.label, rank=c.method.rank or None,
            estimate_only=c.estimate_only, seq_len=c.seq_len, precision=c.precision,
            params=c.params, trainable_params=c.trainable_params, micro_batch=c.micro_batch,
            grad_accum=c.grad_accum, devices=c.devices, global_batch_tokens=c.batch_tokens,
            checkpointing=c.checkpointing, lr=c.lr, epochs=c.epochs, tokens=c.tokens,
            steps=c.steps, evals=c.evals, flops_per_token=c.flops_per_token, flops=c.flops,
            tokens_per_s=c.tokens_per_s, seconds=c.seconds, mfu=c.mfu,
            time_source=c.time_source, memory_bytes=c.memory_bytes,
            useful_tokens=c.useful_tokens, capacity_tokens=c.capacity_tokens,
            feasible=c.feasible, reason=c.reason,
        )


class FinetunePlanFile(Record):
    """plan.json of `plan --finetune`: every fine-tune candidate, ranked, with the base model,
    the data and the rule they are ranked by."""

    interpretation: str = Field(description="the budget interpreted, in one line")
    kind: str = Field("finetune", description="finetune (a pretraining plan has no kind)")
    base: BaseModelRecord
    budget: BudgetRecord
    device: DeviceRecord
    data: FinetuneDataRecord
    ranking: str = Field(description="how candidates are ranked (no loss is predicted)")
    top: FinetuneCandidateRecord = Field(description="the best runnable candidate (exported)")
    candidates: list[FinetuneCandidateRecord] = Field(
        description="feasible candidates, best first; estimate-only rows after runnable ones")
    n_candidates: int
    n_infeasible: int = Field(description="candidates ruled out (memory, too few steps)")
    pareto_axes: list[str] = Field(description="axes of the Pareto front")
    pareto: list[FinetuneCandidateRecord] = Field(
        description="runnable candidates no other beats on every axis")
    timed: list[str] = Field(description="candidates whose steps were timed on this machine")
    notes: list[str]
    elapsed_s: float

    @classmethod
    def of(cls, p: FinetunePlan, limit: int | None = None) -> FinetunePlanFile:
        t, b = p.target, p.base
        cands = p.candidates if limit is None else p.candidates[:limit]
        return cls(
            interpretation=p.first_line,
            base=BaseModelRecord(
                path=str(b.path), kind=b.kind, name=b.name, params=p.top.params,
                max_seq_len=b.max_seq_len, vocab_size=b.model.vocab_size,
                pretraining_lr=p.lr_source,
            ),
            budget=BudgetRecord(**p.budget.to_dict()),
            device=DeviceRecord(
                kind=t.device, name=t.name, devices=t.devices, source=t.source,
                memory_bytes=t.memory_bytes, memory_limit=t.memory_limit,
                wall_seconds=t.wall_seconds, flops=t.flops,
            ),
            data=FinetuneDataRecord(
                source=p.data.config.source, tokenizer=p.data.config.tokenizer,
                unique_tokens=p.data.unique, val_tokens=p.data.val_tokens,
                vocab_size=p.data.vocab,
            ),
            ranking=p.ranking,
            top=FinetuneCandidateRecord.of(p.top),
            candidates=[FinetuneCandidateRecord.of(c) for c in cands],
            n_candidates=len(p.candidates),
            n_infeasible=len(p.infeasible),
            pareto_axes=["-useful_tokens", "seconds", "memory_bytes"],
            pareto=[FinetuneCandidateRecord.of(c) for c in p.front],
            timed=p.timed,
            notes=p.notes,
            elapsed_s=p.elapsed_s,
        )
