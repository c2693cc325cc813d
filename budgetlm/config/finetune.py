"""What a run trains: every weight, or low-rank adapters (`FinetuneConfig`, `LoraConfig`)."""

from __future__ import annotations

from pydantic import Field, model_validator

from budgetlm.config.kinds import FinetuneMethod, FrozenQuant
from budgetlm.config.strict import StrictModel


class LoraConfig(StrictModel):
    """Low-rank adapters (Hu et al. 2021) through `peft`: W x + (alpha / rank) B A x."""

    rank: int = Field(8, ge=1, description="adapter rank r")
    alpha: float = Field(16.0, gt=0.0, description="scaling numerator: updates scale by alpha/r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        description="module names to adapt (last name component, e.g. q_proj, v_proj, c_attn, "
        "w1) or all-linear (every Linear of the blocks; not the LM head)",
    )
    train_norms: bool = Field(False, description="also train the norm weights")
    train_head: bool = Field(False, description="also train the LM head (and a tied embedding)")


class FinetuneConfig(StrictModel):
    """What trains: every weight (full; pretraining is a full run from random init) or
    low-rank adapters on frozen weights (lora)."""

    method: FinetuneMethod = Field(
        "full",
        description="full (every weight trains) or lora (adapters train; the frozen weights "
        "are held in the training precision: bf16/fp16 runs keep them in 16 bits)",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    quantize: FrozenQuant = Field(
        "none",
        description="nf4: QLoRA-style 4-bit frozen weights (Dettmers et al. 2023) -- an "
        "estimate for plans only; the trainer does not quantize",
    )

    @model_validator(mode="after")
    def _check_quantize(self) -> FinetuneConfig:
        if self.quantize != "none" and self.method != "lora":
            raise ValueError("quantize applies to method lora only")
        return self
