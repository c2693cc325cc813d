"""What a fine-tune trains: the Linear modules low-rank adapters attach to (no torch import).

`lora_targets` is the one resolution of `finetune.lora.target` to module names: the trainer hands
exactly these names to `peft`, and the estimator counts adapter parameters, FLOPs and memory from
the same list.
"""

from __future__ import annotations

from dataclasses import dataclass

from budgetlm.config import LoraConfig, ModelConfig
from budgetlm.errors import UserError
from budgetlm.estimate.params import param_specs

ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class LoraTarget:
    """One adapted Linear: its module name in the model and its input and output widths."""

    module: str
    d_in: int
    d_out: int

    @property
    def adapter_params(self) -> int:
        """lora_A (rank x d_in) + lora_B (d_out x rank) per unit of rank."""
        return self.d_in + self.d_out


def _block_linears(m: ModelConfig) -> list[LoraTarget]:
    """Every Linear inside the transformer blocks except an MoE router (a routing decision, not
    a projection: `peft`'s all-linear leaves it alone too), in `named_parameters()` order."""
    out = []
    for s in param_specs(m):
        if s.role != "matrix" or not s.name.endswith(".weight"):
            continue
        module = s.name[: -len(".weight")]
        if module.endswith(".router"):
            continue
        d_out, d_in = s.shape
        out.append(LoraTarget(module, d_in, d_out))
    return out


def lora_targets(m: ModelConfig, lora: LoraConfig) -> list[LoraTarget]:
    """The Linear modules `lora.target` names: all-linear, or those whose last name component is
    one of the targets. A target that matches nothing is a UserError naming it."""
    linears = _block_linears(m)
    wanted = set(lora.target)
    if ALL_LINEAR in wanted:
        return linears
    chosen = [t for t in linears if t.module.rsplit(".", 1)[-1] in wanted]
    found = {t.module.rsplit(".", 1)[-1] for t in chosen}
    missing = sorted(wanted - found)
    if missing:
        names = sorted({t.module.rsplit(".", 1)[-1] for t in linears})
        raise UserError(
            f"finetune.lora.target: {', '.join(missing)} matches no Linear of this model "
            f"(its names: {', '.join(names)}, or {ALL_LINEAR})"
        )
    return chosen
