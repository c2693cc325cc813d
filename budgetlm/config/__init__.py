"""Typed run configuration: one `RunConfig` flows from the CLI through estimate, plan, tune, train.

Every field carries its own help text (it becomes the JSON Schema description). Validation errors
name the field at fault. Presets are plain dicts merged over the defaults; `key=value` overrides
address fields by dotted path (`model.n_layer=6`, `train.precision=bf16`).
"""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from budgetlm.errors import UserError, format_validation_error

Family = Literal["gpt", "bert", "t5"]
Positions = Literal["learned", "rope", "relative"]
Norm = Literal["layernorm", "rmsnorm"]
Mlp = Literal["gelu", "relu", "swiglu"]
Attention = Literal["sdpa", "eager"]
OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop", "adafactor", "lion", "lamb", "muon"]
ScheduleName = Literal["constant", "linear", "cosine", "wsd"]
ScheduleDriver = Literal["auto", "steps", "time", "tokens", "flops"]
Precision = Literal["fp32", "bf16", "fp16"]
TokenizerName = Literal["byte", "char", "bpe"]
Device = Literal["auto", "cpu", "cuda"]

OPTIMIZERS: tuple[str, ...] = OptimizerName.__args__  # type: ignore[attr-defined]
PRECISIONS: tuple[str, ...] = Precision.__args__  # type: ignore[attr-defined]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
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
    mlp: Mlp = Field("gelu", description="gelu, relu or swiglu (gated; three matrices)")
    bias: bool = Field(True, description="biases in linear layers and norms")
    tie_embeddings: bool = Field(True, description="share the input embedding with the LM head")
    attention: Attention = Field(
        "sdpa", description="sdpa (fused scaled_dot_product_attention) or eager (explicit scores)"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability")
    mask_rate: float = Field(0.15, gt=0.0, lt=1.0, description="masked-LM mask rate (bert)")
    rope_theta: float = Field(10000.0, gt=0.0, description="rotary base (positions=rope)")
    relative_buckets: int = Field(32, ge=1, description="relative-position buckets (t5)")
    norm_eps: float = Field(1e-5, gt=0.0, description="normalization epsilon")
    init_std: float = Field(0.02, gt=0.0, description="init std; residual projections scaled")

    @model_validator(mode="after")
    def _check_shape(self) -> ModelConfig:
        if self.d_head is None and self.d_model % self.n_head != 0:
            raise ValueError(
                f"n_head ({self.n_head}) must divide d_model ({self.d_model})"
            )
        if self.n_decoder_layer is not None and self.family != "t5":
            raise ValueError("n_decoder_layer applies to family t5 only")
        if self.positions == "relative" and self.family != "t5":
            raise ValueError("positions=relative is the t5 bias; use learned or rope")
        return self

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


class OptimConfig(_Strict):
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


class ScheduleConfig(_Strict):
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


class DataConfig(_Strict):
    """Corpus and tokenizer."""

    source: str = Field(
        "builtin:pystdlib",
        description="file, directory, .jsonl, .parquet, builtin:pystdlib or "
        "synthetic:markov[:k=v,...]",
    )
    val_source: str | None = Field(None, description="explicit validation source (else a split)")
    tokenizer: TokenizerName = Field("byte", description="byte, char or bpe")
    bpe_vocab_size: int = Field(4096, ge=260, description="BPE vocabulary size")
    text_field: str = Field("text", description="field (jsonl) or column (parquet) with the text")
    val_fraction: float = Field(0.05, gt=0.0, lt=0.5, description="held-out share of the corpus")
    max_bytes: int | None = Field(None, ge=1, description="read at most this many bytes")
    cache_dir: str | None = Field(None, description="token cache directory (default user cache)")


class TrainConfig(_Strict):
    """Precision, batching, caps, evaluation and checkpointing."""

    precision: Precision = Field("fp32", description="fp32, bf16 (autocast) or fp16 (+GradScaler)")
    micro_batch: int | Literal["auto"] = Field(8, description="sequences per micro-batch, or auto")
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
    checkpoint_interval: int | None = Field(None, ge=1, description="checkpoint every N steps")
    keep_last: int = Field(2, ge=1, description="checkpoints kept besides the best")
    init_from: str | None = Field(None, description="start weights from this checkpoint")

    @property
    def has_cap(self) -> bool:
        return any(
            v is not None for v in (self.max_steps, self.max_tokens, self.max_flops, self.max_time)
        )


class RunConfig(_Strict):
    """Everything one training run needs. A file of this shape is what `budgetlm train` runs."""

    name: str = Field("run", description="run name")
    seed: int = Field(0, description="random seed (same seed + machine -> same loss curve)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    meta: dict[str, Any] = Field(
        default_factory=dict, description="free-form notes (plan predictions, provenance)"
    )

    @property
    def tokens_per_step(self) -> int:
        mb = self.train.micro_batch
        if mb == "auto":
            raise ValueError("micro_batch is auto; resolve it first")
        return mb * self.train.grad_accum * self.model.seq_len


# ---------------------------------------------------------------------------------------------
# Presets

PRESETS: dict[str, dict[str, Any]] = {
    # Trains in seconds on a CPU: a 2-layer byte-level GPT.
    "tiny": {
        "name": "tiny",
        "model": {"n_layer": 2, "n_head": 2, "d_model": 64, "vocab_size": 256, "seq_len": 64},
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_steps": 10},
        "train": {
            "micro_batch": 16, "max_steps": 500, "eval_interval": 100, "eval_tokens": 16384,
            "threads": 1,
        },
    },
    # nanoGPT's shakespeare_char CPU recipe (README "I only have a macbook"):
    # n_layer 4, n_head 4, n_embd 128, block 64, batch 12, 2000 iters, lr 1e-3 cosine to 1e-4,
    # 100 warmup iters, beta2 0.99, dropout 0.0. Vocab 65 is shakespeare's character set.
    "nanogpt-cpu": {
        "name": "nanogpt-cpu",
        "model": {
            "n_layer": 4, "n_head": 4, "d_model": 128, "vocab_size": 65, "seq_len": 64,
            "dropout": 0.0, "bias": False,
        },
        "optim": {"name": "adamw", "lr": 1e-3, "beta2": 0.99, "weight_decay": 0.1},
        "schedule": {"name": "cosine", "warmup_steps": 100, "min_lr_ratio": 0.1},
        "data": {"tokenizer": "char"},
        "train": {
            "micro_batch": 12, "max_steps": 2000, "eval_interval": 250, "eval_tokens": 64 * 12 * 20,
        },
    },
    # GPT-2 small (Radford et al. 2019): 124,439,808 parameters with the tied head.
    "gpt2-124m": {
        "name": "gpt2-124m",
        "model": {
            "n_layer": 12, "n_head": 12, "d_model": 768, "vocab_size": 50257, "seq_len": 1024,
            "positions": "learned", "bias": True, "tie_embeddings": True,
        },
        "optim": {"lr": 6e-4, "beta2": 0.95},
        "schedule": {"warmup_steps": 700},
        "data": {"tokenizer": "bpe", "bpe_vocab_size": 50257},
        "train": {"precision": "bf16", "micro_batch": 16, "grad_accum": 32},
    },
    # BERT-base (Devlin et al. 2019) as HF BertForMaskedLM.
    "bert-base": {
        "name": "bert-base",
        "model": {
            "family": "bert", "n_layer": 12, "n_head": 12, "d_model": 768, "vocab_size": 30522,
            "seq_len": 512, "positions": "learned", "bias": True, "tie_embeddings": True,
            "norm_eps": 1e-12,
        },
        "optim": {"lr": 1e-4, "beta2": 0.999, "weight_decay": 0.01},
        "schedule": {"name": "linear", "warmup_steps": 10000},
        "data": {"tokenizer": "bpe", "bpe_vocab_size": 30522},
        "train": {"precision": "bf16", "micro_batch": 32},
    },
    # T5-base (Raffel et al. 2020): 12+12 layers, relative position bias, ReLU MLP, no biases.
    "t5-base": {
        "name": "t5-base",
        "model": {
            "family": "t5", "n_layer": 12, "n_decoder_layer": 12, "n_head": 12, "d_model": 768,
            "d_ff": 3072, "d_head": 64, "vocab_size": 32128, "seq_len": 512,
            "positions": "relative", "norm": "rmsnorm", "mlp": "relu", "bias": False,
            "tie_embeddings": True, "norm_eps": 1e-6,
        },
        "data": {"tokenizer": "bpe", "bpe_vocab_size": 32128},
        "train": {"precision": "bf16", "micro_batch": 32},
    },
    # A small BERT that trains on a CPU.
    "bert-tiny": {
        "name": "bert-tiny",
        "model": {
            "family": "bert", "n_layer": 2, "n_head": 2, "d_model": 64, "vocab_size": 256,
            "seq_len": 64,
        },
        "optim": {"lr": 2e-3},
        "schedule": {"warmup_steps": 10},
        "train": {
            "micro_batch": 16, "max_steps": 150, "eval_interval": 50, "eval_tokens": 16384,
            "threads": 1,
        },
    },
}

LARGE_PRESETS = frozenset({"gpt2-124m", "bert-base", "t5-base"})


# ---------------------------------------------------------------------------------------------
# Loading, overrides, dumping


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], parsed value). Values are parsed as YAML scalars."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key=value (e.g. model.n_layer=4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise UserError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _field_names(model_cls: type[BaseModel]) -> list[str]:
    return list(model_cls.model_fields)


def _check_path(path: list[str]) -> None:
    """Reject unknown dotted paths with a close-match suggestion."""
    cls: type[BaseModel] | None = RunConfig
    for i, part in enumerate(path):
        if cls is None:
            return
        fields = cls.model_fields
        if part not in fields:
            dotted = ".".join(path[: i + 1])
            hint = difflib.get_close_matches(part, list(fields), n=1)
            suggest = f" (did you mean {'.'.join(path[:i] + hint)}?)" if hint else ""
            raise UserError(f"{dotted}: unknown key{suggest}")
        ann = fields[part].annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if part == "meta":
            return


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for item in overrides or []:
        path, value = parse_override(item)
        _check_path(path)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[path[-1]] = value
    return out


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating levels as needed."""
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def validate(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {format_validation_error(exc)}") from None


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        hint = difflib.get_close_matches(name, list(PRESETS), n=1)
        suggest = f" (did you mean {hint[0]}?)" if hint else ""
        raise UserError(
            f"unknown preset {name!r}{suggest}; presets: {', '.join(PRESETS)}"
        )
    return validate(PRESETS[name], source=f"preset {name}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if p.is_dir():
        raise UserError(f"{p}: is a directory, expected a YAML file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{p}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a text file") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{p}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def _looks_like_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml", ".json")) or "/" in spec or Path(spec).exists()


def load_config(spec: str, overrides: list[str] | None = None) -> RunConfig:
    """Load a RunConfig from a preset name or a YAML file, then apply `key=value` overrides.

    A YAML file may name `preset: NAME` at its top to start from a preset.
    """
    if _looks_like_path(spec):
        raw = read_yaml(spec)
        base_name = raw.pop("preset", None)
        if base_name is not None:
            if not isinstance(base_name, str):
                raise UserError(f"{spec}: preset: expected a preset name")
            raw = _deep_merge(preset(base_name).model_dump(), raw)
        source = str(spec)
    else:
        raw = preset(spec).model_dump()
        source = f"preset {spec}"
    for top in raw:
        if top not in RunConfig.model_fields:
            _check_path([top])
    raw = apply_overrides(raw, overrides)
    return validate(raw, source=source)


def with_overrides(cfg: RunConfig, overrides: list[str] | None) -> RunConfig:
    if not overrides:
        return cfg
    return validate(apply_overrides(cfg.model_dump(), overrides), source="--set")


def to_yaml(cfg: RunConfig) -> str:
    header = "# budgetlm RunConfig (resolved). Run it with: budgetlm train THIS_FILE\n"
    body = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    return header + body


def dump_config(cfg: RunConfig, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(to_yaml(cfg))
    return p


def json_schema() -> str:
    schema = RunConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "budgetlm RunConfig"
    return json.dumps(schema, indent=2)
