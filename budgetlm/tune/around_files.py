"""around.json as `budgetlm tune --around` writes it, as pydantic models (`AroundFile`; `budgetlm
schema around` prints its JSON schema): the plan, the proxy study, the settings the plan alone
would have used against the transferred ones, and the final run."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from budgetlm.config import RunConfig
from budgetlm.config.kinds import MUP_LR_EXPONENT
from budgetlm.plan.files import Number, Record


def hidden_lr(cfg: RunConfig) -> float | None:
    """optim.lr as it acts on the hidden (matrix) weights under the config's µP width
    multiplier m (budgetlm.optim.groups: lr/m under Adam's rule, lr under SGD's); None for
    Muon, whose hidden weights take muon_lr."""
    m = cfg.model.width_mult
    if m == 1.0:
        return cfg.optim.lr
    if cfg.optim.name == "muon":
        return None
    rule = "sgd" if cfg.optim.name == "sgd" else "adam"
    return cfg.optim.lr * m ** MUP_LR_EXPONENT[rule]["hidden"]


class SettingsRecord(Record):
    """The hyperparameters µTransfer carries, as one config has them."""

    optimizer: str = Field(description="optim.name")
    lr: float = Field(description="optim.lr (under µP: the base width's)")
    hidden_lr: float | None = Field(
        description="lr in effect on the hidden (matrix) weights: lr / width_mult under "
        "Adam's µP rule, lr under SGD's and under standard parametrization; null: muon (its "
        "hidden weights take muon_lr)")
    init_std: float = Field(description="model.init_std (under µP: the base width's)")
    micro_batch: int | str = Field(description="train.micro_batch")
    grad_accum: int = Field(description="train.grad_accum")
    batch_tokens: int | None = Field(description="tokens per optimizer step (null: auto batch)")
    schedule: str = Field(description="schedule.name")
    warmup_fraction: float = Field(description="schedule.warmup_fraction")
    decay_fraction: float | None = Field(description="schedule.decay_fraction (wsd only)")
    min_lr_ratio: float = Field(description="schedule.min_lr_ratio")
    dropout: float = Field(0.0, description="model.dropout")
    parametrization: str = Field(description="model.parametrization")
    width_mult: float = Field(description="d_model / mup_base_width (1 under standard)")

    @classmethod
    def of(cls, cfg: RunConfig) -> SettingsRecord:
        mb, ga = cfg.train.micro_batch, cfg.train.grad_accum
        return cls(
            optimizer=cfg.optim.name, lr=cfg.optim.lr, hidden_lr=hidden_lr(cfg),
            init_std=cfg.model.init_std, micro_batch=mb, grad_accum=ga,
            batch_tokens=None if mb == "auto" else cfg.tokens_per_step,
            schedule=cfg.schedule.name, warmup_fraction=cfg.schedule.warmup_fraction,
            decay_fraction=cfg.schedule.decay_fraction if cfg.schedule.name == "wsd" else None,
            min_lr_ratio=cfg.schedule.min_lr_ratio, dropout=cfg.model.dropout,
            parametrization=cfg.model.parametrization, width_mult=cfg.model.width_mult,
        )


class TrialCounts(Record):
    """The study's trials by how they ended (all of the storage's, resumed ones too)."""

    total: int
    complete: int
    pruned: int
    failed: int


class BestRecord(Record):
    """The best proxy trial: what is transferred."""

    number: int = Field(description="trial number")
    objective: str = Field(description="the (first) objective")
    value: float = Field(description="its value")
    params: dict[str, Any] = Field(description="the sampled values")


class FinalRecord(Record):
    """The transferred config's run."""

    state: str = Field(description="complete, pruned or fail")
    status: str = Field(description="completed, early_stopped, diverged, failed, crashed, oom, …")
    reason: str = Field(description="why it ended")
    val_loss: float | None = Field(description="final validation loss (nats/token)")
    val_bpb: float | None = Field(description="final validation bits per byte")
    wall_seconds: float | None = Field(description="wall seconds of the run, start-up included")
    train_seconds: Number | None = Field(description="seconds in the training loop")
    steps: int | None
    tokens: int | None
    run_dir: str


class AroundFile(Record):
    """around.json: a plan tuned through µP proxies and trained with the time left."""

    omitted_when_none = frozenset({"best", "transferred", "transferred_settings", "final",
                                   "remaining_seconds"})

    status: str = Field(
        description="trained, final run failed, transferred (not trained: --no-train or a "
        "several-GPU plan), training (under way), interrupted (the final run), no trial "
        "finished, or no time left")
    plan: str = Field(description="the plan file")
    plan_name: str = Field(description="its config's name")
    study: str = Field(description="the proxy study's name (runs/<study>/)")
    storage: str = Field(description="the study's storage URL")
    total_seconds: float = Field(description="the plan's wall time T")
    time_source: str = Field(description="train.max_time or meta.predicted.seconds")
    share: float = Field(description="share of T given to tuning")
    tuning_budget_seconds: float | None = Field(
        description="the study's time budget: share x T unless the study gives budget.time")
    tuning_seconds: float = Field(
        description="wall seconds tuning took, from the command's start to the transfer "
        "(start-up, trials and outputs)")
    tuning_fraction: float = Field(description="tuning_seconds / total_seconds")
    remaining_seconds: float | None = Field(
        None, description="T - tuning_seconds: the transferred run's train.max_time")
    d_model: int = Field(description="the planned width")
    proxy_width: int = Field(description="the proxies' d_model (µP, with the plan's base width)")
    width_mult: float = Field(description="d_model / proxy_width: the transfer's multiplier m")
    trials: TrialCounts
    best: BestRecord | None = None
    plan_settings: SettingsRecord = Field(description="what the plan alone would train with")
    transferred_settings: SettingsRecord | None = Field(
        None, description="what the transferred config trains with")
    transferred: str | None = Field(None, description="transferred.yaml (budgetlm train runs it)")
    final: FinalRecord | None = None
    notes: list[str] = Field(default_factory=list)
