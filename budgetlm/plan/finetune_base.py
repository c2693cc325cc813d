"""The model a fine-tune starts from: a local Hugging Face model directory or a budgetlm run.

`load_base(PATH)` reads what planning a fine-tune needs without building the model (no torch):
the model section (a Hugging Face directory's config.json, through the same resolution as
`model.from_pretrained`; a run directory's config.yaml), the tokenizer its embeddings were trained
with, and the learning rate it was pretrained at when that is known (a budgetlm run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from budgetlm import laws
from budgetlm.config import DataConfig, ModelConfig, load_config
from budgetlm.config.hf import PRETRAINED
from budgetlm.errors import UserError
from budgetlm.units import format_count

BYTE_VOCAB = 256  # ids of the byte tokenizer
# A Hugging Face config.json does not say how long the model was pretrained: its pretraining lr
# is taken from the DeepSeek LLM prior at Chinchilla's 20 tokens per parameter (Hoffmann et al.
# 2022). Models trained longer used somewhat lower peaks: the prior falls as C^-0.125, so 100x
# more tokens lowers it by 1.8x.
ASSUMED_PRETRAIN_TOKENS_PER_PARAM = 20.0


@dataclass
class PretrainedBase:
    """What a fine-tune starts from.

    kind: "hf" (model.from_pretrained: path) or "run" (train.init_from: path, the run's model);
    tokenizer: the data tokenizer whose ids the model's embeddings were trained on;
    pretrain_lr: the peak lr it was pretrained at (a run's), else None."""

    path: Path
    kind: str
    name: str
    model: ModelConfig
    tokenizer: str
    pretrain_lr: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def max_seq_len(self) -> int:
        """The longest context the pretrained model was built for."""
        return self.model.seq_len

    def model_at(self, seq_len: int) -> ModelConfig:
        """The model section of a fine-tune with contexts of `seq_len` tokens."""
        return self.model.model_copy(update={"seq_len": seq_len})

    def data(self, source: str) -> DataConfig:
        """The fine-tuning corpus `source`, tokenized as the model was pretrained."""
        return DataConfig(source=source, tokenizer=self.tokenizer)  # type: ignore[arg-type]

    def pretraining_lr(self) -> tuple[float, str]:
        """(the peak lr the model was pretrained at, where that number comes from)."""
        if self.pretrain_lr is not None:
            return self.pretrain_lr, f"its pretraining lr ({self.pretrain_lr:.3g}, the run's)"
        n = float(cfg_params(self.model))
        compute = 6.0 * n * ASSUMED_PRETRAIN_TOKENS_PER_PARAM * n
        lr = laws.lr_prior(compute)
        return lr, (f"the DeepSeek LLM prior lr at its size pretrained on "
                    f"{ASSUMED_PRETRAIN_TOKENS_PER_PARAM:.0f} tokens per parameter ({lr:.3g}; "
                    "config.json does not give the pretraining lr)")


def _where(path: Path) -> str:
    return f"--finetune {path}"


def _hf_base(p: Path) -> PretrainedBase:
    """A Hugging Face model directory: config.json (+ tokenizer.json when it has one)."""
    try:
        cfg = load_config(str(p))  # config.json, read as model.from_pretrained reads it
    except UserError as exc:
        raise UserError(f"{_where(p)}: {exc}") from None
    mt = str(cfg.meta.get("hf_model_type", ""))
    if mt not in PRETRAINED:
        raise UserError(f"{_where(p)}: model_type {mt!r}: fine-tuning starts from the weights of "
                        f"{', '.join(PRETRAINED)} models only")
    model = cfg.model.model_copy(update={"from_pretrained": str(p.resolve())})
    notes = [f"model: {p} ({mt}, {format_count(cfg_params(model))} params) from its "
             "config.json and weights"]
    notes += [f"config.json: {n}" for n in cfg.meta.get("hf_not_described", [])]
    if (p / "tokenizer.json").is_file():
        tokenizer = "pretrained"
    elif model.vocab_size >= BYTE_VOCAB:
        tokenizer = "byte"
        notes.append(
            f"tokenizer: {p} has no tokenizer.json: the data is read as bytes (ids 0-255 of the "
            f"model's {model.vocab_size:,}-row embedding)"
            + ("" if model.vocab_size == BYTE_VOCAB else
               "; rows trained for another tokenizer's ids: add its tokenizer.json to keep them")
        )
    else:
        raise UserError(f"{_where(p)}: no tokenizer.json, and the model's vocabulary "
                        f"({model.vocab_size}) is too small for bytes ({BYTE_VOCAB})")
    return PretrainedBase(p, "hf", cfg.name, model, tokenizer, None, notes)


def cfg_params(model: ModelConfig) -> int:
    """Parameters of `model` (the estimator's count)."""
    from budgetlm.estimate import count_params

    return count_params(model).total


def _run_base(p: Path) -> PretrainedBase:
    """A budgetlm run directory: its config.yaml and checkpoints (loaded by train.init_from)."""
    try:
        cfg = load_config(str(p / "config.yaml"))
    except UserError as exc:
        raise UserError(f"{_where(p)}: {exc}") from None
    export = "export it (budgetlm export RUN --hf DIR) and fine-tune DIR"
    if cfg.data.tokenizer != "byte":
        raise UserError(f"{_where(p)}: the run's {cfg.data.tokenizer} tokenizer is not bytes; "
                        f"{export}")
    if cfg.finetune.method != "full" or cfg.model.from_pretrained is not None:
        raise UserError(f"{_where(p)}: the run is itself a fine-tune; {export}")
    notes = [f"model: the budgetlm run {p} ({format_count(cfg_params(cfg.model))} params), from "
             "its best checkpoint (train.init_from)"]
    return PretrainedBase(p, "run", cfg.name, cfg.model, "byte", cfg.optim.lr, notes)


def load_base(path: str | Path) -> PretrainedBase:
    """The model at `path`: a Hugging Face model directory (config.json) or a budgetlm run
    directory (config.yaml + checkpoints/). A one-line UserError for anything else."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{_where(p)}: no such directory")
    if not p.is_dir():
        raise UserError(f"{_where(p)}: expected a directory (a Hugging Face model directory "
                        "with config.json, or a budgetlm run directory)")
    if (p / "config.json").is_file():
        base = _hf_base(p)
    elif (p / "config.yaml").is_file() and (p / "checkpoints").is_dir():
        base = _run_base(p)
    else:
        raise UserError(f"{_where(p)}: no config.json (expected a Hugging Face model directory: "
                        "config.json + *.safetensors, or a budgetlm run directory)")
    if base.model.family != "gpt":
        raise UserError(f"{_where(p)}: a {base.model.family} model; fine-tuning plans causal "
                        "(gpt) models")
    return base
