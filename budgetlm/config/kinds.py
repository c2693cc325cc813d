"""The closed sets of choices a RunConfig field takes (families, optimizers, precisions, …)."""

from __future__ import annotations

from typing import Literal

Family = Literal["gpt", "bert", "t5"]
Positions = Literal["learned", "rope", "relative"]
Norm = Literal["layernorm", "rmsnorm"]
Mlp = Literal["gelu", "gelu_tanh", "relu", "swiglu"]
Attention = Literal["sdpa", "eager"]
OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop", "adafactor", "lion", "lamb", "muon"]
ScheduleName = Literal["constant", "linear", "cosine", "wsd"]
ScheduleDriver = Literal["auto", "steps", "time", "tokens", "flops"]
Precision = Literal["fp32", "bf16", "fp16"]
TokenizerName = Literal["byte", "char", "bpe", "pretrained"]
Device = Literal["auto", "cpu", "cuda"]
FinetuneMethod = Literal["full", "lora"]
FrozenQuant = Literal["none", "nf4"]
Parallel = Literal["ddp", "fsdp", "hsdp"]
Task = Literal["lm", "classification"]
Pooling = Literal["auto", "cls", "mean", "last"]
Parametrization = Literal["standard", "mup"]
Monitor = Literal["val_loss", "val_accuracy", "val_f1"]
MonitorMode = Literal["auto", "min", "max"]
OnPlateau = Literal["stop", "cooldown"]

# Optimizers whose update has no width rule under µP (Yang et al. 2022 give Adam's and SGD's).
NO_MUP_RULE = {
    "adafactor": "its relative step follows each tensor's own scale",
    "lamb": "its layer-wise trust ratio rescales every update to the weight's norm",
}

OPTIMIZERS: tuple[str, ...] = OptimizerName.__args__  # type: ignore[attr-defined]
PRECISIONS: tuple[str, ...] = Precision.__args__  # type: ignore[attr-defined]

# µP lr multiplier m**e per parameter class, by the rule an optimizer follows
# (budgetlm.optim.groups explains each).
MUP_LR_EXPONENT: dict[str, dict[str, float]] = {
    "adam": {"hidden": -1.0, "router": -1.0, "vector": 0.0, "fixed": 0.0},
    "sgd": {"hidden": 0.0, "router": -1.0, "vector": 1.0, "fixed": 0.0},
    "muon": {"hidden": 0.0, "router": -0.5},
}
