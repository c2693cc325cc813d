"""Batches as the trainer uses them: one micro-step's batch (BERT batches masked with a seeded
generator), the validation pass, and `micro_batch: auto`."""

from __future__ import annotations

import time
from typing import Any

from budgetlm.data import bits_per_byte, sample_batch, span_corrupt, span_lengths, val_batches
from budgetlm.errors import UserError
from budgetlm.estimate import memory_breakdown
from budgetlm.model import IGNORE_INDEX, PAD_ID, mlm_mask
from budgetlm.train.classify import draw_labeled, evaluate_classifier
from budgetlm.train.runtime import autocast_ctx
from budgetlm.train.state import RunState


def draw_batch(s: RunState, split: Any, mb: int, step: int, micro: int) -> tuple[Any, Any]:
    """The (inputs, targets) of one micro-step: labeled rows for classification, else windows
    of the corpus, corrupted as the family's objective wants with a seeded generator."""
    cfg = s.cfg
    if cfg.task == "classification":  # labeled rows, epochs of seeded permutations
        return draw_labeled(s, split, mb, step, micro)
    x, y = sample_batch(split, mb, _window(s), cfg.seed, step, micro)
    x, y = _corrupt(s, x, y, cfg.seed * 1_000_003 + step * 1009 + micro)
    return x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)


def _window(s: RunState) -> int:
    """Tokens a language-model window reads: seq_len, or for t5 the raw tokens span corruption
    turns into seq_len encoder inputs."""
    return span_lengths(s.cfg.model).raw if s.first_sentinel is not None else s.cfg.model.seq_len


def _corrupt(s: RunState, x: Any, y: Any, seed: int) -> tuple[Any, Any]:
    """(inputs, targets) of windows `x` (next-token targets `y`) under the family's objective,
    with a generator seeded by `seed`: t5 span corruption, BERT masking, GPT as they are."""
    import torch

    if s.first_sentinel is None and s.mask_id is None:
        return x, y
    g = torch.Generator().manual_seed(seed % 2**62)
    if s.first_sentinel is not None:
        return span_corrupt(x, s.cfg.model, s.first_sentinel, PAD_ID, IGNORE_INDEX, g)
    assert s.mask_id is not None
    return mlm_mask(x, s.cfg.model.mask_rate, s.mask_id, s.mask_id, g)


def evaluate(s: RunState, model: Any, mb: int) -> tuple[float, float | None]:
    """Mean val loss (nats/token) and bits per byte on the fixed validation windows. t5: nats
    per target token (sentinels and corrupted tokens) of span-corrupted windows, and no bits
    per byte (None): the targets are not a stretch of text whose bytes the loss describes."""
    import torch

    cfg = s.cfg
    t5 = s.first_sentinel is not None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i, (x, y) in enumerate(
            val_batches(s.corpus.val, mb, _window(s), cfg.train.eval_tokens)
        ):
            x, y = _corrupt(s, x, y, 1_000_003 + i)  # the same masks at every eval
            x, y = x.to(s.device), y.to(s.device)
            with autocast_ctx(s.device, cfg.train.precision):
                _, loss = model(x, y)
            n = int((y != -100).sum())
            total += float(loss) * n
            count += n
    model.train(was_training)
    loss = total / max(count, 1)
    return loss, None if t5 else bits_per_byte(loss, s.corpus.val_bytes_per_token)


def eval_metrics(s: RunState, model: Any, mb: int) -> dict[str, float | None]:
    """What an eval record reports: val_loss and val_bpb; for classification val_loss,
    val_accuracy and val_f1 over the whole validation split (`train.classify`)."""
    if s.cfg.task == "classification":
        return evaluate_classifier(s, model, mb)
    loss, bpb = evaluate(s, model, mb)
    return {"val_loss": loss, "val_bpb": bpb}


def _tokens_per_second(s: RunState, model: Any, opt: Any, mb: int) -> float | None:
    """Tokens/s of two full steps at micro-batch `mb`, or None when it runs out of memory."""
    import torch

    try:
        times = []
        for rep in range(3):
            t0 = time.perf_counter()
            x, y = draw_batch(s, s.corpus.train, mb, step=-1 - rep, micro=0)
            with autocast_ctx(s.device, s.cfg.train.precision):
                _, loss = model(x, y)
            loss.backward()
            opt.zero_grad(set_to_none=True)
            if s.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return mb * s.cfg.model.seq_len / min(times[1:])
    except torch.OutOfMemoryError:
        opt.zero_grad(set_to_none=True)
        if s.device == "cuda":
            torch.cuda.empty_cache()
        return None


def resolve_micro_batch(s: RunState, model: Any, opt: Any) -> int:
    """`micro_batch: auto`: largest that fits on a GPU (backing off on OOM), fastest on a CPU."""
    limit = None
    if s.profile is not None:
        limit = 0.9 * s.profile.device_memory_bytes
    candidates = [2**i for i in range(0, 11)]
    if limit is not None:
        fitting = [b for b in candidates if memory_breakdown(s.cfg, micro_batch=b).total <= limit]
        candidates = fitting or [1]
    if s.device == "cuda":
        for mb in reversed(candidates):
            if _tokens_per_second(s, model, opt, mb) is not None:
                return mb
        raise UserError("train.micro_batch: even micro_batch=1 does not fit in GPU memory")
    best, best_rate = 1, 0.0
    for mb in candidates[:7]:  # 1..64 on a CPU
        rate = _tokens_per_second(s, model, opt, mb)
        if rate is None:
            break
        if rate > best_rate * 1.03:
            best, best_rate = mb, rate
    return best
