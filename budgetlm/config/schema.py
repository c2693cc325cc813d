"""The typed run configuration: one `RunConfig` flows from the CLI through estimate, plan, tune
and train. Every field carries its own help text (it becomes the JSON Schema description).

Derived values live here once: `tokens_per_step`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from budgetlm.config.finetune import FinetuneConfig
from budgetlm.config.kinds import (
    NO_MUP_RULE,
    Attention,
    Device,
    Family,
    Mlp,
    Monitor,
    MonitorMode,
    Norm,
    OnPlateau,
    OptimizerName,
    Parallel,
    Parametrization,
    Pooling,
    Positions,
    Precision,
    ScheduleDriver,
    ScheduleName,
    Task,
    TokenizerName,
)
from budgetlm.config.prediction import Prediction
from budgetlm.config.spans import span_corruption_lengths
from budgetlm.config.strict import MAX_INT, StrictModel, describe, describe_errors, whole_number
from budgetlm.errors import UserError


class ModelConfig(StrictModel):
    """Transformer shape and architecture choices."""

    family: Family = Field("gpt", description="gpt (causal LM), bert (masked LM) or t5 (enc-dec)")
    n_layer: int = Field(2, ge=1, description="transformer blocks (encoder blocks for t5)")
    n_decoder_layer: int | None = Field(
        None, ge=1, description="decoder blocks (t5 only; defaults to n_layer)"
    )
    n_head: int = Field(2, ge=1, description="attention heads")
    d_model: int = Field(64, ge=1, description="residual stream width")
    d_ff: int | None = Field(None, ge=1, description="MLP hidden width (default 4 * d_model)")
    d_head: int | None = Field(
        None, ge=1, description="per-head width (default d_model / n_head; t5 may differ)"
    )
    vocab_size: int = Field(256, ge=2, description="vocabulary size (set from the tokenizer)")
    seq_len: int = Field(64, ge=1, description="context length in tokens")
    positions: Positions = Field("learned", description="learned, rope or relative (t5 bias)")
    norm: Norm = Field("layernorm", description="layernorm or rmsnorm")
    mlp: Mlp = Field(
        "gelu",
        description="gelu, gelu_tanh (GPT-2's tanh approximation), relu or swiglu (gated; "
        "three matrices)",
    )
    bias: bool = Field(True, description="biases in linear layers and norms")
    tie_embeddings: bool = Field(True, description="share the input embedding with the LM head")
    attention: Attention = Field(
        "sdpa", description="sdpa (fused scaled_dot_product_attention) or eager (explicit scores)"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability")
    mask_rate: float = Field(0.15, gt=0.0, lt=1.0, description="masked-LM mask rate (bert)")
    noise_density: float = Field(
        0.15, gt=0.0, lt=1.0,
        description="t5 span corruption: share of the tokens replaced by sentinels (Raffel et "
        "al. 2020 §3.1.4)",
    )
    mean_span_length: float = Field(
        3.0, ge=1.0, description="t5 span corruption: mean length of a corrupted span"
    )
    target_len: int | None = Field(
        None, ge=1,
        description="t5 decoder length (null: what span corruption of seq_len input tokens "
        "yields; a classification run sets its longest label)",
    )
    n_classes: int | None = Field(
        None, ge=2,
        description="classification: number of labels (set from the labeled data; gpt and "
        "bert get a linear head over a pooled state, t5 generates the label words)",
    )
    pooling: Pooling = Field(
        "auto",
        description="classification pooling: cls (first position), mean (non-padding "
        "positions) or last (last non-padding position); auto: mean for bert, last for gpt",
    )
    rope_theta: float = Field(10000.0, gt=0.0, description="rotary base (positions=rope)")
    relative_buckets: int = Field(32, ge=1, description="relative-position buckets (t5)")
    norm_eps: float = Field(1e-5, gt=0.0, description="normalization epsilon")
    init_std: float = Field(0.02, gt=0.0, description="init std; residual projections scaled")
    n_kv_head: int | None = Field(
        None, ge=1,
        description="key/value heads: grouped-query attention (Ainslie et al. 2023); 1 is "
        "multi-query; default n_head",
    )
    qk_norm: bool = Field(
        False, description="RMS-normalize each head's queries and keys (Qwen3, OLMo 2)"
    )
    qkv_bias: bool | None = Field(
        None, description="biases on the q, k, v projections only (Qwen2); null: as `bias`"
    )
    sliding_window: int | None = Field(
        None, ge=1, description="attend to at most this many tokens back (Mistral); null: all"
    )
    n_expert: int = Field(0, ge=0, description="experts of each MoE MLP (0: dense MLPs)")
    n_expert_active: int = Field(2, ge=1, description="experts each token is routed to (top-k)")
    n_shared_expert: int = Field(
        0, ge=0, description="experts every token passes through besides its top-k (DeepSeekMoE)"
    )
    d_expert: int | None = Field(
        None, ge=1, description="hidden width of one expert (default: d_ff)"
    )
    n_dense_layer: int = Field(
        0, ge=0, description="the first k blocks keep a dense MLP (DeepSeek); the rest are MoE"
    )
    router_aux_coef: float = Field(
        0.01, ge=0.0,
        description="weight of the load-balancing loss (Switch Transformer, Fedus et al. 2022)",
    )
    fused_qkv: bool = Field(
        True,
        description="one Linear for q|k|v (`attn.c_attn`, GPT-2's layout) or three "
        "(`attn.q_proj`, `k_proj`, `v_proj`, Llama's layout; what LoRA adapters target)",
    )
    from_pretrained: str | None = Field(
        None,
        description="a local Hugging Face model directory (config.json + *.safetensors): its "
        "config sets the shape, its weights the start; never a network call",
    )
    parametrization: Parametrization = Field(
        "standard",
        description="standard, or mup: the Maximal Update Parametrization (Yang et al. 2022) "
        "relative to mup_base_width -- hidden init and Adam-family lr scale with the width, "
        "attention logits 1/head_dim, output logits / width multiplier; gpt and bert",
    )
    mup_base_width: int | None = Field(
        None, ge=1,
        description="mup: the d_model whose hyperparameters (lr, init_std) these are; null: "
        "d_model itself (width multiplier 1, identical to standard)",
    )

    @model_validator(mode="after")
    def _check_shape(self) -> ModelConfig:
        if self.d_head is None and self.d_model % self.n_head != 0:
            raise ValueError(
                f"n_head ({self.n_head}) must divide d_model ({self.d_model})"
            )
        if self.n_kv_head is not None and self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})")
        if self.n_expert:
            if self.family != "gpt":
                raise ValueError("n_expert (mixture of experts) applies to family gpt only")
            if self.n_expert_active > self.n_expert:
                raise ValueError(f"n_expert_active ({self.n_expert_active}) must not exceed "
                                 f"n_expert ({self.n_expert})")
            if self.n_dense_layer > self.n_layer:
                raise ValueError(f"n_dense_layer ({self.n_dense_layer}) must not exceed "
                                 f"n_layer ({self.n_layer})")
        if self.sliding_window is not None and self.family != "gpt":
            raise ValueError("sliding_window applies to causal models (family gpt) only")
        if self.n_decoder_layer is not None and self.family != "t5":
            raise ValueError("n_decoder_layer applies to family t5 only")
        if self.positions == "relative" and self.family != "t5":
            raise ValueError("positions=relative is the t5 bias; use learned or rope")
        if self.target_len is not None and self.family != "t5":
            raise ValueError("target_len applies to family t5 only")
        if self.parametrization == "mup" and self.family == "t5":
            raise ValueError("parametrization: mup applies to gpt and bert (t5 scales its own "
                             "logits)")
        if self.parametrization == "mup" and self.from_pretrained is not None:
            raise ValueError("parametrization: mup needs weights it initialises itself, not "
                             "from_pretrained")
        return self

    @property
    def width_mult(self) -> float:
        """µP width multiplier d_model / mup_base_width (1.0 under standard parametrization)."""
        if self.parametrization != "mup" or self.mup_base_width is None:
            return 1.0
        return self.d_model / self.mup_base_width

    @property
    def decoder_seq_len(self) -> int:
        """t5: tokens the decoder reads per sequence (`target_len`, else what span corruption
        of `seq_len` input tokens yields); other families: seq_len."""
        if self.family != "t5":
            return self.seq_len
        if self.target_len is not None:
            return self.target_len
        return span_corruption_lengths(self.seq_len, self.noise_density,
                                       self.mean_span_length).targets

    @property
    def pooled(self) -> str:
        """The classification pooling after defaults (auto: mean for bert, last for gpt)."""
        if self.pooling != "auto":
            return self.pooling
        return "mean" if self.family == "bert" else "last"

    @property
    def ff(self) -> int:
        """MLP hidden width after defaults."""
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.n_head

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layer if self.n_decoder_layer is not None else self.n_layer

    @property
    def kv_heads(self) -> int:
        """Key/value heads after defaults (n_head: plain multi-head attention)."""
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def expert_ff(self) -> int:
        """Hidden width of one expert after defaults."""
        return self.d_expert if self.d_expert is not None else self.ff

    @property
    def moe_layers(self) -> int:
        """Blocks whose MLP is a mixture of experts (0 for a dense model)."""
        return self.n_layer - self.n_dense_layer if self.n_expert else 0


class OptimConfig(StrictModel):
    """Optimizer and its hyperparameters."""

    name: OptimizerName = Field(
        "adamw", description="sgd|adam|adamw|rmsprop|adafactor|lion|lamb|muon"
    )
    lr: float = Field(1e-3, gt=0.0, description="peak learning rate")
    weight_decay: float = Field(0.1, ge=0.0, description="decoupled weight decay (0 disables)")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="first-moment decay")
    beta2: float = Field(0.95, ge=0.0, lt=1.0, description="second-moment decay")
    eps: float = Field(1e-8, gt=0.0, description="denominator epsilon")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="momentum (sgd, rmsprop, muon)")
    nesterov: bool = Field(False, description="Nesterov momentum (sgd, muon)")
    grad_clip: float | None = Field(1.0, gt=0.0, description="clip global grad norm (null: off)")
    decay_all: bool = Field(
        False, description="also decay norms, biases and embeddings (off by default)"
    )
    muon_lr: float | None = Field(
        None, gt=0.0, description="Muon lr for 2-D hidden weights (default 0.02)"
    )


class ScheduleConfig(StrictModel):
    """Learning-rate schedule; driven by steps or by the elapsed fraction of a cap."""

    name: ScheduleName = Field("cosine", description="constant|linear|cosine|wsd")
    warmup_steps: int = Field(0, ge=0, description="linear warmup length in optimizer steps")
    warmup_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="warmup as a fraction of run progress (either applies)"
    )
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="final lr / peak lr")
    decay_fraction: float = Field(0.2, gt=0.0, le=1.0, description="wsd: share spent decaying")
    driver: ScheduleDriver = Field(
        "auto",
        description="progress measure: steps, or elapsed fraction of the time/tokens/flops cap; "
        "auto picks the cap that binds first",
    )


class DataConfig(StrictModel):
    """Corpus and tokenizer."""

    source: str = Field(
        "builtin:pystdlib",
        description="file, directory, .jsonl, .parquet, builtin:pystdlib or "
        "synthetic:markov[:k=v,...]",
    )
    val_source: str | None = Field(None, description="explicit validation source (else a split)")
    tokenizer: TokenizerName = Field(
        "byte",
        description="byte, char, bpe, or pretrained (the tokenizer.json of model.from_pretrained)",
    )
    bpe_vocab_size: int = Field(4096, ge=260, description="BPE vocabulary size")
    text_field: str = Field("text", description="field (jsonl) or column (parquet) with the text")
    val_fraction: float = Field(0.05, gt=0.0, lt=0.5, description="held-out share of the corpus")
    max_bytes: int | None = Field(None, ge=1, description="read at most this many bytes")
    cache_dir: str | None = Field(None, description="token cache directory (default user cache)")
    label_field: str = Field(
        "label", description="classification: field (jsonl) or column (csv, parquet) with labels"
    )
    labels: list[str] | None = Field(
        None,
        description="classification: the label set in order (null: the sorted distinct labels "
        "of the data); labels are compared as strings",
    )


class TrainConfig(StrictModel):
    """Precision, batching, caps, evaluation and checkpointing."""

    precision: Precision = Field("fp32", description="fp32, bf16 (autocast) or fp16 (+GradScaler)")
    micro_batch: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        8, description="sequences per micro-batch (>= 1), or auto"
    )
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    activation_checkpointing: bool = Field(False, description="recompute each block in backward")
    compile: bool = Field(False, description="torch.compile the model")
    device: Device = Field("auto", description="auto, cpu or cuda")
    threads: int | None = Field(
        None, ge=1,
        description="CPU threads for torch (null: torch's default; tiny models often run "
        "fastest on 1, and a loaded machine punishes oversubscription)",
    )
    max_steps: int | None = Field(None, ge=1, description="cap: optimizer steps")
    max_tokens: int | None = Field(None, ge=1, description="cap: training tokens")
    max_flops: float | None = Field(None, gt=0.0, description="cap: training FLOPs (estimated)")
    max_time: float | None = Field(None, gt=0.0, description="cap: wall seconds of training")
    eval_interval: int = Field(100, ge=1, description="evaluate every N optimizer steps")
    eval_time_interval: float | None = Field(
        None, gt=0.0, description="also evaluate every N seconds"
    )
    eval_tokens: int = Field(65536, ge=1, description="tokens in the fixed validation set")
    log_interval: int = Field(10, ge=1, description="log every N optimizer steps")
    patience: int | None = Field(None, ge=1, description="early stop after N evals w/o gain")
    min_delta: float = Field(0.0, ge=0.0, description="improvement that resets patience")
    on_plateau: OnPlateau = Field(
        "stop",
        description="what running out of patience does: stop, or (schedule wsd) cooldown: start "
        "the wsd decay there, over decay_fraction of the run, and stop at its end",
    )
    monitor: Monitor = Field(
        "val_loss",
        description="what early stopping and the best checkpoint follow: val_loss, or for "
        "classification val_accuracy or val_f1 (macro-F1)",
    )
    monitor_mode: MonitorMode = Field(
        "auto", description="min or max; auto: min for val_loss, max for accuracy and F1"
    )
    checkpoint_interval: int | None = Field(None, ge=1, description="checkpoint every N steps")
    checkpoint_seconds: float | None = Field(
        300.0, gt=0.0,
        description="also checkpoint every N seconds of training, so a killed run loses at most "
        "that much (null: by steps only)",
    )
    keep_last: int = Field(2, ge=1, description="checkpoints kept besides the best")
    init_from: str | None = Field(None, description="start weights from this checkpoint")
    parallel: Parallel = Field(
        "ddp",
        description="under torchrun: ddp (replicate), fsdp (FSDP2 fully_shard per block) or "
        "hsdp (shard within a node, replicate across nodes)",
    )
    reshard_after_forward: bool = Field(
        True,
        description="fsdp/hsdp: free each block's gathered weights after forward and gather "
        "again in backward (ZeRO-3); false keeps them (ZeRO-2-like, more memory, less traffic)",
    )

    @field_validator("micro_batch", mode="before")
    @classmethod
    def _micro_batch(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, str):
            raise ValueError(f"expected a whole number >= 1 or 'auto', got {describe(v)}")
        n = whole_number(v)
        if n < 1:
            raise ValueError(f"must be >= 1 (or auto), got {n}")
        return n

    @property
    def has_cap(self) -> bool:
        return any(
            v is not None for v in (self.max_steps, self.max_tokens, self.max_flops, self.max_time)
        )


class RunConfig(StrictModel):
    """Everything one training run needs. A file of this shape is what `budgetlm train` runs."""

    name: str = Field("run", description="run name")
    task: Task = Field(
        "lm",
        description="lm: the family's self-supervised objective (next token for gpt, masked "
        "tokens for bert, corrupted spans for t5); classification: labeled text (data.source "
        "a .jsonl, .csv or .parquet with data.text_field and data.label_field)",
    )
    seed: int = Field(
        0, ge=0, le=MAX_INT, description="random seed (same seed + machine -> same loss curve)"
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    meta: dict[str, Any] = Field(
        default_factory=dict, description="free-form notes (plan predictions, provenance)"
    )

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimizer step consumes (micro_batch must be resolved, not "auto")."""
        mb = self.train.micro_batch
        if mb == "auto":
            raise ValueError("micro_batch is auto; resolve it first")
        return tokens_per_step(mb, self.train.grad_accum, self.model.seq_len)

    @property
    def prediction(self) -> Prediction | None:
        """The plan's prediction for this run (`meta.predicted`), typed; None when unplanned."""
        raw = self.meta.get("predicted")
        return Prediction.model_validate(raw) if isinstance(raw, dict) else None

    @model_validator(mode="after")
    def _check_task(self) -> RunConfig:
        if self.train.monitor != "val_loss" and self.task != "classification":
            raise ValueError(f"train.monitor: {self.train.monitor} needs task: classification")
        if self.task == "classification" and self.finetune.method == "lora":
            raise ValueError("finetune.method: lora is for task lm; classification trains full")
        if self.train.on_plateau == "cooldown" and self.schedule.name != "wsd":
            raise ValueError(f"train.on_plateau: cooldown needs schedule.name wsd "
                             f"(not {self.schedule.name})")
        return self

    @model_validator(mode="after")
    def _check_mup(self) -> RunConfig:
        if self.model.parametrization == "mup" and self.optim.name in NO_MUP_RULE:
            raise ValueError(f"optim.name: {self.optim.name} has no µP rule "
                             f"({NO_MUP_RULE[self.optim.name]}); use adamw, adam, lion, sgd, "
                             "rmsprop or muon with model.parametrization: mup")
        if self.model.parametrization == "mup" and self.finetune.method == "lora":
            raise ValueError("finetune.method: lora trains adapters on frozen weights, which "
                             "µP has no rule for; use full with model.parametrization: mup")
        return self

    @model_validator(mode="after")
    def _check_prediction(self) -> RunConfig:
        raw = self.meta.get("predicted")
        if raw is not None:
            if not isinstance(raw, dict):
                raise ValueError("meta.predicted: expected a mapping")
            try:
                Prediction.model_validate(raw)
            except ValidationError as exc:
                raise ValueError(f"meta.predicted: {describe_errors(exc)}") from None
        return self


def tokens_per_step(micro_batch: int, grad_accum: int, seq_len: int) -> int:
    """Tokens in one optimizer step: micro-batch x accumulation steps x sequence length.

    `grad_accum` counts the micro-steps of one global batch over all ranks (the trainer splits
    them over data-parallel ranks), so this is the global batch in tokens."""
    return micro_batch * grad_accum * seq_len


def validate(data: dict[str, Any], source: str = "config") -> RunConfig:
    """A RunConfig from plain data; a one-line UserError naming `source` and the field."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {describe_errors(exc)}") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply") from None
