"""What is alive in each phase of one training step, and so where the memory peak is (no torch).

A steady-state step of `budgetlm train` (the optimizer state already exists; gradients were set
to None by the previous step's `zero_grad`) passes through these phases; the tensor peak is the
largest of them, not the sum of each piece's own maximum:

- forward: at the loss. Saved activations, autocast's 16-bit weight copies (autograd keeps
  them for the backward pass), the (B, T, V) logits in the compute dtype, their fp32 copy under
  autocast, the fp32 log-probabilities and the final norm's fp32 output (a local of `forward`).
  Or, when larger, inside the last block: every block's saved activations and what that block
  holds in passing (`StepSizes.block_transients`).
- loss_backward: log_softmax differentiated. The logits (the training loop still holds them),
  the saved log-probabilities, the gradient from nll_loss and the one log_softmax returns — three
  fp32 (B, T, V) tensors; no parameter gradient exists yet. The usual peak.
- block_backward: the first block differentiated (recomputed first under checkpointing): every
  block's saved activations, the head's gradient and one block's backward working set.
- last_block_backward: the first block of the stack differentiated: nearly every gradient, one
  block's activations.
- embedding_backward: the token embedding differentiated. Every gradient; with a tied LM head the
  embedding's dense gradient is added to the head's one (the two and their sum are alive).
- optimizer: every gradient, the state and the update's temporaries (see `optimizer_temp_bytes`).

Measured tensor by tensor against torch.distributed._tools.mem_tracker.MemTracker under fake
tensors: benchmarks/memory_truth.py, tests/test_memory_truth.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from budgetlm.config import ModelConfig
from budgetlm.estimate.params import ParamSpec, resident_spec_counts

PHASES = (
    "forward",
    "loss_backward",
    "block_backward",
    "last_block_backward",
    "embedding_backward",
    "optimizer",
)

# Temporaries of one parameter's update, in fp32 tensors the size of the parameter, for torch's
# single-tensor (for-loop) implementations, which CPU training uses and budgetlm's Lion / LAMB /
# Muon always use: (made for the current parameter, still alive from the previous one of its
# group). AdamW/Adam: sqrt(v) and its quotient by the bias correction, whose result `denom`
# lives on into the next iteration (torch.optim._single_tensor_adamw); RMSprop: `avg`, likewise;
# Adafactor: the variance estimate / update, likewise; Lion (c) and LAMB (m_hat, v_hat) free
# theirs on return from `update`; SGD: the weight-decayed gradient copy (see
# `optimizer_temp_bytes`).
_PER_TENSOR_TEMPS = {
    "adamw": (2, 1), "adam": (2, 1), "rmsprop": (1, 1), "adafactor": (1, 1),
    "lion": (1, 0), "lamb": (2, 0),
}


@dataclass(frozen=True)
class StepSizes:
    """Bytes the phases are made of, for one micro-batch.

    params: fp32 parameters + module buffers; state: optimizer state; inputs: token ids and
    targets; copies_head/copies_block: autocast's 16-bit copies of the head's / the largest
    block's matmul weights (0 in fp32); copies_blocks: those of every block; acts_block: saved
    activations of the largest block; acts_kept: what the forward keeps of all the blocks (all
    their activations, or their inputs under checkpointing); acts_final: saved by the final
    norm and head; logits: (B, T, V) elements; c: bytes of the compute dtype; final_out: the
    final norm's fp32 output; grads_head: gradients of the head (the tied embedding's);
    grads_block: the first block's gradients; grads_all: every gradient; grads_embedding: the
    embedding tables' own gradients (not the head's); tied_embedding: fp32 bytes of the tied
    token-embedding table (0 when untied); workspace: one block's backward working set;
    opt_temps: the optimizer update's temporaries; n_blocks: blocks in the model;
    checkpointing: full recompute of each block; block_transients: what the forward of the
    last block holds beyond what it saves (0: never more than at the loss; a LoRA fine-tune's
    adapters hold fp32 casts of their input, see `budgetlm.estimate.lora_activations`).
    stack_moments: t5, (weight copies, gradients, activations, temporaries) while a block is
    differentiated (`budgetlm.estimate.t5_memory.t5_moments`): the decoder's top block (the
    block_backward phase), then the other candidates (last_block_backward); () for one stack.
    """

    params: int
    state: int
    inputs: int
    copies_head: int
    copies_block: int
    copies_blocks: int
    acts_block: int
    acts_kept: int
    acts_final: int
    logits: int
    c: int
    final_out: int
    grads_head: int
    grads_block: int
    grads_all: int
    grads_embedding: int
    tied_embedding: int
    workspace: int
    opt_temps: int
    n_blocks: int
    checkpointing: bool
    block_transients: int = 0
    stack_moments: tuple[tuple[int, int, int, int], ...] = ()


def _phase(weights: int, grads: int, optimizer: int, activations: int, logits: int,
           temporaries: int) -> dict[str, int]:
    return {"weights": weights, "grads": grads, "optimizer": optimizer,
            "activations": activations, "logits": logits, "temporaries": temporaries}


def _saved_copies(s: StepSizes) -> int:
    """Block weight copies autograd keeps from the forward (none under checkpointing: the
    recompute casts them again)."""
    return 0 if s.checkpointing else s.copies_blocks


def step_phases(s: StepSizes) -> dict[str, dict[str, int]]:
    """Each phase of `PHASES`: its bytes by kind (weights, grads, optimizer, activations, logits,
    temporaries)."""
    w_fwd = s.params + s.copies_head + _saved_copies(s)
    acts = s.inputs + s.acts_kept + s.acts_final
    fp32_copy = 4 if s.c != 4 else 0  # logits.float() under autocast
    recompute = s.acts_block if s.checkpointing else 0
    w_block = s.params + (s.copies_block if s.checkpointing else _saved_copies(s))
    last_acts = s.inputs + (s.acts_kept // s.n_blocks if s.checkpointing else 0) + s.acts_block
    after_blocks = s.grads_all - s.grads_embedding
    at_loss = _phase(w_fwd, 0, s.state, acts, s.logits * (s.c + fp32_copy + 4), s.final_out)
    in_block = _phase(w_fwd - s.copies_head, 0, s.state, s.inputs + s.acts_kept, 0,
                      s.block_transients)
    last_block = _phase(s.params + s.copies_block, after_blocks - s.grads_block, s.state,
                        last_acts, s.logits * s.c, s.workspace)
    first_block = _phase(w_block, s.grads_head, s.state, s.inputs + s.acts_kept + recompute,
                         s.logits * s.c, s.workspace)
    if s.stack_moments:  # t5: the blocks of both stacks where the backward can peak
        held = [_phase(s.params + w, g, s.state, s.inputs + a, s.logits * s.c, t)
                for w, g, a, t in s.stack_moments]
        first_block = held[0]
        last_block = max(held[1:] or held, key=lambda p: sum(p.values()))
    return {
        "forward": max(at_loss, in_block, key=lambda p: sum(p.values())),
        "loss_backward": _phase(w_fwd, 0, s.state, acts, s.logits * (s.c + 12), 0),
        "block_backward": first_block,
        "last_block_backward": last_block,
        "embedding_backward": _phase(s.params, s.grads_all, s.state, s.inputs, s.logits * s.c,
                                     2 * s.tied_embedding),
        "optimizer": _phase(s.params, s.grads_all, s.state, s.inputs, s.logits * s.c,
                            s.opt_temps),
    }


def peak_phase(phases: dict[str, dict[str, int]]) -> str:
    """The phase with the most bytes (the first of `PHASES` on a tie)."""
    return max(PHASES, key=lambda p: sum(phases[p].values()))


def _decayed(role: str, ndim: int, decay_all: bool) -> bool:
    """budgetlm.optim.param_groups: decay for tensors with ndim >= 2 that are not embeddings
    (t5's relative-bias tables are nn.Embedding weights too)."""
    return decay_all or (ndim >= 2 and role not in ("embedding", "table"))


def muon_hidden(s: ParamSpec) -> bool:
    """A 2-D hidden weight: a Linear weight that is not the LM head, or a LoRA adapter matrix
    (Muon's share)."""
    return s.role in ("matrix", "head", "adapter") and not s.name.startswith("lm_head")


def _groups(m: ModelConfig, optimizer: str, decay_all: bool, expert_shards: int = 1,
            counts: list[tuple[ParamSpec, int]] | None = None,
            ) -> list[list[tuple[ParamSpec, int]]]:
    """The optimizer's parameter groups in update order, as (spec, count) runs of `counts`
    (default: every parameter one rank holds)."""
    if counts is None:
        counts = resident_spec_counts(m, expert_shards)
    groups = []
    rest = counts
    if optimizer == "muon":
        groups.append([(s, k) for s, k in counts if muon_hidden(s)])
        rest = [(s, k) for s, k in counts if not muon_hidden(s)]
    groups.append([(s, k) for s, k in rest if _decayed(s.role, len(s.shape), decay_all)])
    groups.append([(s, k) for s, k in rest if not _decayed(s.role, len(s.shape), decay_all)])
    return [g for g in groups if g]


def _carry_peak(group: list[tuple[ParamSpec, int]], cur: Any, carry: Any) -> int:
    """max over the group's updates of cur(p) + carry(previous p): consecutive tensors in order,
    and the last tensor of a repeated block before the first one of the next block."""
    best, prev = 0, None
    repeated = [s for s, k in group if k > 1]
    for s, _k in group:
        best = max(best, cur(s) + (carry(prev) if prev is not None else 0))
        prev = s
    if len(repeated) > 0:
        best = max(best, cur(repeated[0]) + carry(repeated[-1]))
    return best


def _muon_temps(s: ParamSpec, nesterov: bool, cuda: bool) -> int:
    """Bytes of budgetlm.optim.muon's update of one matrix: x / ||x|| and the next iterate (both
    full size; bf16 on CUDA, fp32 elsewhere), the two Gram-sized products and the Nesterov
    interpolation (fp32)."""
    b = 2 if cuda else 4
    n, k = s.numel, min(s.shape)
    return 2 * b * n + 2 * b * k * k + (4 * n if nesterov else 0)


def _group_temps(group: list[tuple[ParamSpec, int]], optimizer: str, device: str,
                 weight_decay: float, nesterov: bool, decay_all: bool) -> int:
    cuda = device != "cpu"
    if optimizer == "muon" and muon_hidden(group[0][0]):
        return _carry_peak(group, lambda s: _muon_temps(s, nesterov, cuda),
                           lambda s: (2 if cuda else 4) * s.numel)
    if optimizer == "muon":
        optimizer = "adamw"  # its AdamW share
    if cuda and optimizer in ("adam", "adamw"):
        return 0  # fused kernels
    if optimizer == "sgd":
        first = group[0][0]
        decay = weight_decay > 0 and _decayed(first.role, len(first.shape), decay_all)
        if cuda:  # foreach: the decayed copies of the whole group at once
            return 4 * sum(k * s.numel for s, k in group) * decay
        return max(4 * s.numel * (decay + nesterov) for s, _k in group)
    if cuda and optimizer in ("rmsprop", "adafactor"):  # foreach: one per parameter at once
        return 4 * sum(k * s.numel for s, k in group)
    made, kept = _PER_TENSOR_TEMPS[optimizer]
    return _carry_peak(group, lambda s: 4 * made * s.numel, lambda s: 4 * kept * s.numel)


def optimizer_temp_bytes(m: ModelConfig, optimizer: str, device: str, weight_decay: float = 0.0,
                         momentum: float = 0.9, nesterov: bool = False,
                         decay_all: bool = False, expert_shards: int = 1,
                         counts: list[tuple[ParamSpec, int]] | None = None) -> int:
    """Peak bytes of the temporaries of one optimizer step, beyond gradients and state.

    Single-tensor updates (CPU, and budgetlm's own Lion / LAMB / Muon everywhere) hold the
    temporaries of one parameter, and some of the previous one (`_PER_TENSOR_TEMPS`). On CUDA,
    `build_optimizer` picks torch's fused Adam/AdamW (no temporaries) and torch's foreach SGD /
    RMSprop / Adafactor, which hold them for every parameter of a group at once: SGD's
    weight-decayed gradient copies, RMSprop's and Adafactor's one temporary per parameter.
    Groups are budgetlm.optim's: decay / no-decay (and Muon's hidden matrices). counts: the
    trainable tensors (`budgetlm.estimate.finetune.finetune_spec_counts`); default every one.
    """
    nesterov = nesterov and momentum > 0
    return max(_group_temps(g, optimizer, device, weight_decay, nesterov, decay_all)
               for g in _groups(m, optimizer, decay_all, expert_shards, counts))


def _mlp_workspace(m: ModelConfig, tokens: int, hidden_tokens: int, f: int, c: int,
                   lora: tuple[float, float] | None = None) -> int:
    if lora is not None:  # frozen MLP weights: see `block_workspace_bytes`
        per_token, per_hidden = lora
        return int(math.ceil(tokens * per_token + hidden_tokens * per_hidden * f))
    if m.mlp == "swiglu":
        return int(math.ceil(tokens * 4 * m.d_model + hidden_tokens * 2 * c * f))
    return int(math.ceil(tokens * 8 * m.d_model + hidden_tokens * c * f))


def block_workspace_bytes(m: ModelConfig, tokens: int, c: int,
                          lora: tuple[float, float] | None = None) -> int:
    """One block's backward working set, net of what it frees, at its largest: inside the MLP's
    backward, the gradient of the hidden activation and the activation function's input
    gradient, in the compute dtype, beyond the down projection's saved input they replace (two
    for SwiGLU's product rule, which needs the gradients of both factors), plus the fp32
    gradients of the residual stream (two; one for SwiGLU, whose peak comes before the second).
    Checked against MemTracker in tests/test_memory_truth.py. An MoE block differentiates one
    expert at a time: its share of the routed tokens (balanced routing), or every token in a
    shared expert, at width expert_ff.

    lora: (bytes per token, bytes per hidden element) of a LoRA fine-tune's MLP backward
    (`budgetlm.estimate.lora_activations.lora_mlp_backward_bytes`): the incoming residual gradient
    plus the hidden-width gradients alive at once, net of what is freed by then."""
    dense = _mlp_workspace(m, tokens, tokens, m.ff, c, lora)
    if not m.moe_layers:
        return dense
    routed = -(-tokens * m.n_expert_active // m.n_expert)
    moe = _mlp_workspace(m, tokens, tokens if m.n_shared_expert else routed, m.expert_ff, c,
                         lora)
    return max(moe, dense) if m.moe_layers < m.n_layer else moe
