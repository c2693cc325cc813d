"""plan.json: what `Plan.to_dict()` returns and `Plan.write()` writes, as pydantic models.

`PlanFile` is the file; `budgetlm schema plan` prints its JSON schema. Numbers typed `Number`
stay as computed (an integer count stays an integer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_serializer

if TYPE_CHECKING:
    from budgetlm.plan.planner import Plan
    from budgetlm.plan.pricing import Candidate

Number = int | float


class Record(BaseModel):
    """A block of a budgetlm JSON file: its fields in file order, nothing else. Fields named in
    `omitted_when_none` are left out of the file when they have no value (instead of null)."""

    model_config = ConfigDict(extra="forbid")
    omitted_when_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        if not self.omitted_when_none:
            return out
        return {k: v for k, v in out.items() if v is not None or k not in self.omitted_when_none}


class BudgetRecord(Record):
    """The budget as given (only the values that were set)."""

    omitted_when_none = frozenset({"gpu_hours", "flops", "seconds", "cost", "price", "gpu",
                                   "nodes", "interconnect"})

    kind: str = Field(description="gpu_hours, flops, time or cost")
    gpu_hours: float | None = Field(None, description="GPU-hours (--gpu-hours)")
    flops: float | None = Field(None, description="model FLOPs of training (--flops)")
    seconds: float | None = Field(None, description="wall seconds on this machine (--time)")
    cost: float | None = Field(None, description="money to spend (--cost)")
    price: float | None = Field(None, description="price per GPU-hour (--price)")
    gpu: str | None = Field(None, description="GPU named with --gpu")
    gpus: int = Field(description="GPUs used together (data parallel)")
    nodes: int | None = Field(None, description="nodes the GPUs are in (--nodes; left out: 1)")
    interconnect: str | None = Field(None, description="network between the nodes "
                                     "(--interconnect; left out: the GPU's usual one)")


class DeviceRecord(Record):
    """Where the budget is spent."""

    omitted_when_none = frozenset({"nodes", "interconnect"})

    kind: str = Field(description="cpu, cuda or none (a FLOP budget with no --gpu)")
    name: str = Field(description="the device in words, e.g. '8 x NVIDIA A100 80GB'")
    devices: int = Field(description="devices used together")
    source: str = Field(description="measured, datasheet or none: where its speed comes from")
    memory_bytes: Number | None = Field(description="memory of one device")
    memory_limit: float | None = Field(description="memory a plan may use per device")
    wall_seconds: float | None = Field(description="wall seconds available")
    flops: float | None = Field(description="model FLOPs available (FLOP budgets)")
    nodes: int | None = Field(None, description="nodes of several GPUs (left out: one GPU or "
                              "no interconnect priced)")
    interconnect: str | None = Field(None, description="the GPUs' links and network, in words, "
                                     "with bandwidths (several GPUs)")


class DataRecord(Record):
    """The corpus planned for."""

    source: str | None = Field(description="--data source (null when not given)")
    tokenizer: str = Field(description="tokenizer of the exported config")
    unique_tokens: int | None = Field(description="unique training tokens (null: unlimited)")
    vocab_size: int = Field(description="vocabulary size the models are priced with")


class ClosedFormOptimum(Record):
    """The law's compute-optimal allocation at the top candidate's compute."""

    params: Number = Field(description="optimal parameter count")
    tokens: Number = Field(description="optimal training tokens")
    method: str = Field(description="how it was found")


class ParamsTokens(Record):
    """A model size and its training tokens."""

    params: Number = Field(description="parameters (as the law counts them)")
    tokens: Number = Field(description="training tokens")


class DataConstrainedOptimum(ParamsTokens):
    """The optimum when the unique data is limited (repeated epochs priced)."""

    epochs: float = Field(description="passes over the unique data")


class OptimumRecord(Record):
    """Compute-optimal allocations next to the top candidate's."""

    omitted_when_none = frozenset({"data_constrained"})

    flops: float = Field(description="the top candidate's model FLOPs")
    closed_form: ClosedFormOptimum
    top_candidate: ParamsTokens
    data_constrained: DataConstrainedOptimum | None = Field(
        None, description="present when the unique tokens are known"
    )


class CandidateRecord(Record):
    """One configuration priced against the budget. The layout and step fields are there on
    several GPUs with an interconnect; estimate_only only when true."""

    omitted_when_none = frozenset({
        "parallel", "reshard_after_forward", "layout", "step_seconds", "compute_seconds",
        "comm_seconds", "comm_total_seconds", "comm_share", "comm_bytes", "bottleneck",
        "estimate_only",
    })

    name: str = Field(description="L<layers>-d<width>-T<seq_len>-<precision>")
    arch: str = Field(description="recipe: gpt2, llama or moe")
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int = Field(description="key/value heads (n_head: multi-head attention)")
    d_ff: int = Field(description="MLP hidden width (of the dense blocks)")
    n_expert: int = Field(description="routed experts per MoE block (0: dense)")
    n_expert_active: int = Field(description="routed experts per token (top-k; 0: dense)")
    n_shared_expert: int = Field(description="shared experts per MoE block")
    d_expert: int = Field(description="hidden width of one expert (0: dense)")
    seq_len: int
    vocab_size: int
    params: int = Field(description="total parameters")
    non_embedding_params: int
    active_params: int = Field(description="parameters a token passes through (MoE: top-k + "
                               "shared experts; the rest: params)")
    precision: str
    micro_batch: int = Field(description="sequences per micro-step per device")
    grad_accum: int = Field(description="micro-steps per device per optimizer step")
    devices: int
    global_batch_tokens: int = Field(description="tokens per optimizer step, all devices")
    checkpointing: bool = Field(description="activation checkpointing")
    lr: float = Field(description="peak learning rate")
    tokens: int = Field(description="training tokens")
    steps: int = Field(description="optimizer steps")
    epochs: float = Field(description="passes over the unique data")
    effective_tokens: Number = Field(description="tokens as worth fresh data (Muennighoff)")
    flops: float = Field(description="model FLOPs of the run")
    flops_per_token: float = Field(description="model FLOPs per token (forward + backward)")
    tokens_per_s: float | None = Field(description="throughput, all devices")
    seconds: float | None = Field(description="predicted wall seconds")
    mfu: float | None = Field(description="model FLOPs utilization")
    time_source: str = Field(description="where the step time comes from")
    memory_bytes: int | None = Field(description="peak memory per device")
    loss: float = Field(description="predicted loss (nats/token), context adjustment included")
    loss_lo: float | None = Field(description="lower end of the prediction interval")
    loss_hi: float | None = Field(description="upper end of the prediction interval")
    loss_law: float = Field(description="the law's loss, before the context adjustment")
    context_adjustment: float = Field(description="context-length heuristic (nats/token)")
    extrapolated: bool = Field(description="outside the range the law was fitted on")
    feasible: bool
    reason: str = Field(description="why not feasible ('' when it is)")
    parallel: str | None = Field(None, description="train.parallel: ddp, fsdp or hsdp")
    reshard_after_forward: bool | None = Field(
        None, description="train.reshard_after_forward (fsdp/hsdp; true: ZeRO-3, false: ZeRO-2)")
    layout: str | None = Field(None, description="ddp, fsdp, fsdp-z2, hsdp or hsdp-z2 (the "
                               "table's par column)")
    step_seconds: float | None = Field(None, description="seconds of an optimizer step: "
                                       "compute + communication not hidden")
    compute_seconds: float | None = Field(None, description="compute of an optimizer step")
    comm_seconds: float | None = Field(None, description="communication not hidden behind "
                                       "compute, per optimizer step")
    comm_total_seconds: float | None = Field(None, description="all communication of a step, "
                                             "hidden or not")
    comm_share: float | None = Field(None, description="comm_seconds / step_seconds")
    comm_bytes: int | None = Field(None, description="bytes one GPU sends per optimizer step")
    bottleneck: str | None = Field(None, description="the link that bounds the most bytes")
    estimate_only: bool | None = Field(None, description="true: priced (fp8 from the "
                                       "datasheet) but the trainer cannot run it")

    @classmethod
    def of(cls, c: Candidate) -> CandidateRecord:
        """The record of candidate `c`."""
        m = c.model
        moe = m.n_expert > 0
        step = c.step.to_dict() if c.step is not None else {}
        layout = c.step_model.layout.label if c.step_model is not None else None
        return cls(
            name=c.name, arch=c.shape.arch, n_layer=c.shape.n_layer, d_model=c.shape.d_model,
            n_head=c.shape.n_head, n_kv_head=m.kv_heads, d_ff=m.ff, n_expert=m.n_expert,
            n_expert_active=m.n_expert_active if moe else 0, n_shared_expert=m.n_shared_expert,
            d_expert=m.expert_ff if moe else 0, seq_len=c.seq_len, vocab_size=c.vocab_size,
            params=c.params, non_embedding_params=c.non_embedding_params,
            active_params=c.active_params, precision=c.precision,
            micro_batch=c.micro_batch, grad_accum=c.grad_accum, devices=c.devices,
            global_batch_tokens=c.batch_tokens, checkpointing=c.checkpointing, lr=c.lr,
            tokens=c.tokens, steps=c.steps, epochs=c.epochs, effective_tokens=c.effective_tokens,
            flops=c.flops, flops_per_token=c.flops_per_token, tokens_per_s=c.tokens_per_s,
            seconds=c.seconds, mfu=c.mfu, time_source=c.time_source,
            memory_bytes=c.memory_bytes, loss=c.loss, loss_lo=c.loss_lo, loss_hi=c.loss_hi,
            loss_law=c.loss_law, context_adjustment=c.context_adjustment,
            extrapolated=c.extrapolated, feasible=c.feasible, reason=c.reason,
            parallel=c.parallel, reshard_after_forward=c.reshard_after_forward, layout=layout,
            estimate_only=True if c.estimate_only else None, **step,
        )


class MarginalRecord(Record):
    """The best predicted loss at `scale` x the plan's compute (`plan.marginal`: the law's
    compute-optimal frontier, not a re-plan)."""

    omitted_when_none = frozenset({"loss_lo", "loss_hi"})

    scale: float = Field(description="multiple of the top candidate's compute (0.5, 1, 2, 4)")
    budget: float = Field(description="the budget scaled, in its own unit (budget.kind)")
    flops: float = Field(description="model FLOPs at this scale")
    params: float = Field(description="parameters the frontier picks (as the law counts them)")
    tokens: float = Field(description="training tokens it picks")
    epochs: float = Field(description="passes over the unique data")
    loss: float = Field(description="predicted loss, the top's context heuristic included")
    loss_lo: float | None = Field(None, description="lower end of a fit's interval")
    loss_hi: float | None = Field(None, description="upper end of a fit's interval")
    gain: float = Field(description="loss at 1x minus loss here (positive: better)")


class LifetimeRow(Record):
    """One candidate's training and inference cost (`plan.lifetime`)."""

    name: str
    params: float = Field(description="parameters (as the law counts them)")
    tokens: int = Field(description="training tokens")
    tokens_per_param: float
    loss: float = Field(description="predicted loss")
    training_flops: float
    inference_flops: float = Field(description="forward model FLOPs x inference tokens")
    training_gpu_hours: float | None = Field(description="device-hours of training")
    inference_gpu_hours: float | None = Field(description="device-hours of inference (at the "
                                              "training MFU on the inference GPU)")
    training_cost: float | None = Field(description="training_gpu_hours x training price")
    inference_cost: float | None = Field(description="inference_gpu_hours x inference price")
    lifetime: float = Field(description="training + inference, in the record's unit")


class LifetimeRecord(Record):
    """Training + inference cost at the training-only top's loss (Sardana et al. 2024)."""

    source: str
    inference_tokens: float = Field(description="tokens served over the model's life")
    inference_gpu: str | None = Field(description="GPU inference is priced on (null: the "
                                      "training device)")
    training_price: float | None = Field(description="price per GPU-hour of training")
    inference_price: float | None = Field(description="price per GPU-hour of inference")
    unit: str = Field(description="FLOPs, GPU-hours or cost: what `lifetime` is counted in")
    target_loss: float = Field(description="the training-only top's predicted loss")
    chosen: LifetimeRow = Field(description="the candidate of lowest lifetime cost (the top)")
    training_only: LifetimeRow = Field(description="the training-only top candidate")
    saving: float = Field(description="1 - chosen.lifetime / training_only.lifetime")
    law_optimum: dict[str, float] = Field(description="the law's continuous lifetime optimum "
                                          "(params, tokens, tokens_per_param) and the "
                                          "training-only top's params and tokens")


class PlanFile(Record):
    """plan.json: every candidate of a plan, ranked, with the budget and the law behind it."""

    omitted_when_none = frozenset({"lifetime", "parametrization"})

    interpretation: str = Field(description="the budget interpreted, in one line")
    arch: str = Field(description="recipe of the candidates: gpt2, llama or moe")
    parametrization: str | None = Field(
        None, description="mup: the configs are µP (model.parametrization mup, "
        "model.mup_base_width the lr prior's base width) and every lr is the µP prior's "
        "(Dey et al. 2023, Cerebras-GPT), not DeepSeek's; left out: standard")
    budget: BudgetRecord
    device: DeviceRecord
    law: dict[str, Any] = Field(description="the loss law the candidates are ranked by")
    loss_kind: str = Field(description="prior or fit: whose nats/token the losses are in")
    loss_unit: str = Field("", description="whose nats/token `loss` is in, and from which law")
    loss_shown: str = Field("relative", description="absolute (a fit for this corpus and "
                            "tokenizer: the table shows the loss) or relative (the table shows "
                            "only the difference from the top candidate)")
    max_epochs: float | None = Field(None, description="the most passes over the unique data "
                                     "a candidate may take (null: unlimited data)")
    loss_rule: dict[str, Any] | None = Field(
        None, description="moe: how an MoE's loss comes from the dense law (kind: rule, not a "
        "fit; params: the parameter count the law is evaluated at)")
    data: DataRecord
    optimum: OptimumRecord
    top: CandidateRecord = Field(description="the best candidate (the exported config)")
    candidates: list[CandidateRecord] = Field(description="feasible candidates, best first")
    n_candidates: int = Field(description="feasible candidates in all")
    n_infeasible: int = Field(description="candidates ruled out (memory, too few steps)")
    pareto_axes: list[str] = Field(description="axes of the Pareto front (lower is better)")
    pareto: list[CandidateRecord] = Field(description="candidates no other beats on every axis")
    timed: list[str] = Field(description="candidates whose steps were timed on this machine")
    notes: list[str] = Field(description="what the numbers mean and rest on")
    marginal: list[MarginalRecord] = Field(
        default_factory=list, description="best predicted loss at 0.5x, 1x, 2x and 4x the "
        "compute, with the shape each would pick (the law's compute-optimal frontier)")
    lifetime: LifetimeRecord | None = Field(None, description="training + inference cost "
                                            "(--inference-tokens; left out without)")
    elapsed_s: float = Field(description="seconds the planning took")

    @classmethod
    def of(cls, p: Plan, limit: int | None = None) -> PlanFile:
        """The file of plan `p` (its first `limit` candidates; all when None)."""
        t = p.target
        cands = p.candidates if limit is None else p.candidates[:limit]
        return cls(
            interpretation=p.first_line,
            arch=p.arch,
            parametrization=p.parametrization if p.parametrization != "standard" else None,
            budget=BudgetRecord(**p.budget.to_dict()),
            device=DeviceRecord(
                kind=t.device, name=t.name, devices=t.devices, source=t.source,
                memory_bytes=t.memory_bytes, memory_limit=t.memory_limit,
                wall_seconds=t.wall_seconds, flops=t.flops,
                nodes=t.nodes if t.fabric is not None else None,
                interconnect=t.fabric.describe() if t.fabric is not None else None,
            ),
            law=p.law.to_dict(),
            loss_kind=p.law.kind,
            loss_unit=p.loss_unit,
            loss_shown=p.loss_shown,
            max_epochs=p.max_epochs,
            loss_rule=p.loss_rule,
            data=DataRecord(
                source=p.data.source if p.data_given else None, tokenizer=p.data.tokenizer,
                unique_tokens=p.unique_tokens, vocab_size=p.vocab_size,
            ),
            optimum=OptimumRecord(**p.optimum),
            top=CandidateRecord.of(p.top),
            candidates=[CandidateRecord.of(c) for c in cands],
            n_candidates=len(p.candidates),
            n_infeasible=len(p.infeasible),
            pareto_axes=list(p.pareto_axes),
            pareto=[CandidateRecord.of(c) for c in p.front],
            timed=p.timed,
            notes=p.notes,
            marginal=[MarginalRecord(**r) for r in p.marginal],
            lifetime=LifetimeRecord(**p.lifetime) if p.lifetime else None,
            elapsed_s=p.elapsed_s,
        )
