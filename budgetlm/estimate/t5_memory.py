"""t5's backward phases: what is alive while a block of either stack is differentiated (no torch).

An encoder-decoder's backward pass differentiates the decoder's blocks, then the encoder's; the
peak can be in either stack (`budgetlm.estimate.activations.t5_moment_bytes` has what each block
keeps). This module adds the gradients that exist by then and autocast's weight copies that
block's recompute or backward holds, for the blocks where the peak can be: each stack's top
block, the one below it (the first with a summed gradient of the bias + mask and, in the
decoder, of the encoder output) and its block 0 (every gradient of the stacks above), and the
decoder's token lookup (every encoder activation still kept, and with a tied head the lookup's
dense gradient and its sum). Measured block by block against torch's MemTracker under fake
tensors (tests/test_t5.py): t5-tiny, micro-batch 1..8, fp32/bf16, checkpointing on/off, within
0.5%.

Not counted: the attention's own backward working set (the (B, H, T, T) gradients of the
scores and of the softmax, beyond the summed bias gradient). Each block is taken at its MLP's
backward, where t5-tiny (T_in = 64) peaks; once H·T_in outgrows the MLP width the attention's
backward peaks instead, and under checkpointing the estimate falls short (measured: t5-tiny
with seq_len 256, micro-batch 2, bf16, checkpointing: -5.8%).
"""

from __future__ import annotations

import math

from budgetlm.config import ModelConfig
from budgetlm.estimate.activations import t5_moment_bytes
from budgetlm.estimate.params import ParamSpec

Moment = tuple[int, int, int, int]  # (weight copies, gradients present, activations, temporaries)


def _numel(counts: list[tuple[ParamSpec, int]], prefix: str, wo: bool = True,
           matrices: bool = False) -> int:
    """Elements of the parameters whose names start with `prefix` (without the MLP's down
    projection when not `wo`; only Linear weights with `matrices`)."""
    return sum(k * s.numel for s, k in counts if s.name.startswith(prefix)
               and (wo or ".DenseReluDense.wo." not in s.name)
               and (s.role == "matrix" or not matrices))


def _block(counts: list[tuple[ParamSpec, int]], stack: str, n: int, j: int, wo: bool = True,
           matrices: bool = False) -> int:
    """Elements of block j of a stack (blocks after the first are alike but for their names)."""
    first = _numel(counts, f"{stack}.block.0.", wo, matrices)
    if j == 0:
        return first
    return (_numel(counts, f"{stack}.block.", wo, matrices) - first) // max(n - 1, 1)


def _below(counts: list[tuple[ParamSpec, int]], stack: str, n: int, j: int,
           matrices: bool = False) -> int:
    """Elements of blocks 0..j-1 of a stack."""
    if j <= 0:
        return 0
    return _block(counts, stack, n, 0, matrices=matrices) + (j - 1) * _block(
        counts, stack, n, 1, matrices=matrices)


def _missing(m: ModelConfig, counts: list[tuple[ParamSpec, int]], decoder: bool, j: int) -> int:
    """Elements without a gradient yet at the MLP backward of block j (j = -1: the decoder's
    token lookup): that block's but its down projection's, the blocks below it, the stack's
    position table and, in the decoder, the whole encoder (and, before the lookup, an untied
    token table)."""
    stack = "decoder" if decoder else "encoder"
    n = m.decoder_layers if decoder else m.n_layer
    out = _below(counts, stack, n, j) + _numel(counts, f"{stack}.embed_positions.")
    if j >= 0:
        out += _block(counts, stack, n, j, wo=False)
    if decoder:
        out += _numel(counts, "encoder.")
        out += 0 if m.tie_embeddings or j < 0 else _numel(counts, "shared.")
    return out


def t5_moments(m: ModelConfig, micro_batch: int, precision: str, device: str,
               checkpointing: bool, counts: list[tuple[ParamSpec, int]]) -> tuple[Moment, ...]:
    """The decoder's top block first (`block_backward`), then the other candidates for the
    peak (`last_block_backward`): blocks top - 1 and 0 of the decoder, then of the encoder.
    Weight copies: autocast's 16-bit copies of that block's Linear weights but the down
    projection's, whose backward is done."""
    total = sum(k * s.numel for s, k in counts)
    copies = 2 if precision != "fp32" else 0
    tokens = micro_batch * m.seq_len
    out = []
    for decoder, n in ((True, m.decoder_layers), (False, m.n_layer)):
        stack = "decoder" if decoder else "encoder"
        for j in [*sorted({n - 1, max(n - 2, 0), 0}, reverse=True), *([-1] if decoder else [])]:
            if n == 0:
                continue
            acts, temps, const = t5_moment_bytes(m, precision, device, checkpointing, decoder, j)
            w = _block(counts, stack, n, j, wo=False, matrices=True) if j >= 0 else 0
            if not checkpointing:  # autograd keeps the copies of the blocks not yet done
                w += _below(counts, stack, n, j + 1, matrices=True) - (
                    _block(counts, stack, n, j, matrices=True) if j >= 0 else 0)
                w += _numel(counts, "encoder.block.", matrices=True) if decoder else 0
            if j < 0 and m.tie_embeddings:  # the lookup's dense gradient and its sum
                temps_const = 8 * m.vocab_size * m.d_model
            else:
                temps_const = 0
            out.append((copies * w, 4 * (total - _missing(m, counts, decoder, j)),
                        int(math.ceil(tokens * acts)) + const,
                        int(math.ceil(tokens * temps)) + temps_const))
    return tuple(out)
