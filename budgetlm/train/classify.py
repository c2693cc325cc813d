"""Classification runs (`task: classification`): the labeled data, batches, evaluation (loss,
accuracy, macro-F1), the monitored metric of early stopping, starting from a pretrained run, and
T5's text-to-text rank classification.

Data: `budgetlm.data.labeled` reads, splits and tokenizes; the resolved label set is written into
the run's config.yaml as `data.labels` (and `model.n_classes`, for t5 `model.target_len`), so a
`--resume` or a later reader sees the same class order. With `train.init_from` the pretrained
run's saved tokenizer (RUN/tokenizer) encodes the text, so the embedding rows mean what they
meant in pretraining (BERT's [MASK] row and T5's sentinels are appended after it either way).

Batches: global example g = (step * grad_accum + micro) * micro_batch + j of the training split;
epoch g // N reads a permutation of the N rows seeded by (seed, epoch), so every row is seen
once per epoch, epochs are reshuffled, and a batch is a pure function of (seed, step, micro)
(a resumed run draws what an uninterrupted one would). Rows are padded to seq_len.

T5 (Raffel et al. 2020 §2.4, text-to-text): the targets are the label's tokens padded with
IGNORE_INDEX to `target_len` (the longest label); prediction is rank classification, the label
whose tokens have the highest total log-likelihood; val_loss is the cross-entropy of the softmax
over those K label scores, comparable with a gpt/bert head's.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from budgetlm.config import RunConfig, TrainConfig, load_config, with_values
from budgetlm.data import Tokenizer, load_tokenizer
from budgetlm.data.labeled import LabeledData, LabeledSplit, load_labeled
from budgetlm.errors import UserError
from budgetlm.model import CLASSIFIER, IGNORE_INDEX, PAD_ID
from budgetlm.train.finetune import plain_state_dict
from budgetlm.train.rundir import load_checkpoint
from budgetlm.train.runtime import autocast_ctx

# What a pretrained gpt/bert checkpoint holds that a classifier drops: the LM head, BERT's MLM
# head (dense + norm) and an earlier classifier. t5 keeps its LM head: it generates the labels.
DROPPED_HEADS = ("lm_head.", "head.", f"{CLASSIFIER}.")


# ---------------------------------------------------------------------------------------------
# Data


def pretrained_run(path: str) -> Path | None:
    """The run directory of `train.init_from` (a run directory, or a checkpoint in its
    checkpoints/), or None for a checkpoint outside a run."""
    p = Path(path)
    if (p / "config.yaml").is_file():
        return p
    if p.parent.name == "checkpoints" and (p.parent.parent / "config.yaml").is_file():
        return p.parent.parent
    return None


def _init_tokenizer(cfg: RunConfig) -> Tokenizer | None:
    """The saved tokenizer of the run `train.init_from` names (None without init_from, or for a
    checkpoint outside a run directory: then data.tokenizer is built as for a new run)."""
    if cfg.train.init_from is None:
        return None
    run = pretrained_run(cfg.train.init_from)
    if run is None:
        return None
    if not (run / "tokenizer").is_dir():
        raise UserError(f"train.init_from {cfg.train.init_from}: the run has no tokenizer/")
    return load_tokenizer(run / "tokenizer")


def load_task(cfg: RunConfig, tokenizer: Tokenizer | None = None) -> LabeledData:
    """The labeled data of a classification run (see the module docstring), tokenized by
    `tokenizer` when given (a finished run's saved one), else as the run does."""
    return load_labeled(cfg.data, cfg.model.seq_len, PAD_ID, cfg.seed,
                        tokenizer=tokenizer if tokenizer is not None else _init_tokenizer(cfg),
                        pretrained=cfg.model.from_pretrained)


def pretrained_vocab(cfg: RunConfig, vocab: int) -> int:
    """The vocabulary of a classifier: the pretrained run's (`train.init_from`) when it holds
    more ids than the tokenizer and family need here (t5's sentinels of span corruption, which
    a classification run does not use, stay, and so does the decoder start id after them), so
    the embedding keeps its pretraining shape; else `vocab`."""
    run = pretrained_run(cfg.train.init_from) if cfg.train.init_from else None
    if run is None:
        return vocab
    saved = load_config(str(run / "config.yaml"))
    if saved.model.family != cfg.model.family:
        return vocab  # init_backbone refuses it with one line
    return max(vocab, saved.model.vocab_size)


def resolved_values(cfg: RunConfig, data: LabeledData) -> dict[str, Any]:
    """The config values the data sets: data.labels, model.n_classes, t5's model.target_len."""
    values: dict[str, Any] = {"data.labels": list(data.labels), "model.n_classes": len(data.labels)}
    if cfg.model.family == "t5":
        values["model.target_len"] = max(len(ids) for ids in data.label_tokens)
    return values


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, 11, epoch % 2**32]).permutation(n)


def batch_rows(n: int, mb: int, grad_accum: int, seed: int, step: int, micro: int) -> np.ndarray:
    """Row indices of one micro-batch: epochs of seeded permutations (module docstring)."""
    start = (step * grad_accum + micro) * mb
    g = np.arange(start, start + mb)
    epochs = g // n
    rows = np.empty(mb, dtype=np.int64)
    for epoch in np.unique(epochs):
        at = epochs == epoch
        rows[at] = _permutation(n, seed, int(epoch))[g[at] % n]
    return rows


def label_targets(data: LabeledData, target_len: int) -> Any:
    """(K, target_len) long: each label's tokens, padded with IGNORE_INDEX (t5 targets)."""
    import torch

    out = torch.full((len(data.labels), target_len), IGNORE_INDEX, dtype=torch.long)
    for k, ids in enumerate(data.label_tokens):
        out[k, : len(ids)] = torch.tensor(ids[:target_len], dtype=torch.long)
    return out


def draw_labeled(s: Any, split: LabeledSplit, mb: int, step: int, micro: int) -> tuple[Any, Any]:
    """(inputs (mb, seq_len) with PAD_ID, targets): labels (mb,), or for t5 the labels' token
    targets (mb, target_len)."""
    import torch

    cfg = s.cfg
    rows = batch_rows(len(split), mb, cfg.train.grad_accum, cfg.seed, step, micro)
    x = torch.from_numpy(split.tokens[rows])
    y = torch.from_numpy(split.labels[rows])
    if cfg.model.family == "t5":
        y = label_targets(s.corpus, cfg.model.decoder_seq_len)[y]
    return x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)


# ---------------------------------------------------------------------------------------------
# Evaluation


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float((np.asarray(y_true) == np.asarray(y_pred)).mean()) if len(y_true) else math.nan


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> float:
    """Macro-F1: the mean over classes of 2·TP / (2·TP + FP + FN), over the classes that occur
    in y_true or y_pred (scikit-learn's f1_score(average="macro") without `labels`)."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    confusion = np.bincount(t * k + p, minlength=k * k).reshape(k, k)  # rows: true
    tp = np.diag(confusion).astype(np.float64)
    fp, fn = confusion.sum(axis=0) - tp, confusion.sum(axis=1) - tp
    present = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    if not present.any():
        return math.nan
    return float((2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])).mean())


def t5_label_scores(model: Any, x: Any, targets: Any) -> Any:
    """(B, K) total log-likelihood of each label's tokens `targets` (K, L) given each input of
    x (B, T): rank classification."""
    b, k = x.size(0), targets.size(0)
    enc, cross = model.encode(x)  # the inputs are encoded once for the K labels
    ti = targets.repeat(b, 1)  # (B·K, L)
    logits = model.decode(enc.repeat_interleave(k, dim=0), cross.repeat_interleave(k, dim=0),
                          ti)  # (B·K, L, V)
    logp = logits.float().log_softmax(dim=-1)
    picked = logp.gather(-1, ti.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * (ti != IGNORE_INDEX)).sum(dim=-1).view(b, k)


def class_scores(s: Any, model: Any, x: Any) -> Any:
    """(B, K) scores whose argmax is the prediction and whose softmax the class probabilities."""
    if s.cfg.model.family == "t5":
        targets = label_targets(s.corpus, s.cfg.model.decoder_seq_len).to(x.device)
        return t5_label_scores(model, x, targets)
    return model(x)


def evaluate_classifier(s: Any, model: Any, mb: int) -> dict[str, float | None]:
    """val_loss (mean cross-entropy over the classes), val_accuracy and val_f1 (macro) over the
    whole validation split; val_bpb None (no bits per byte for labels)."""
    import torch
    import torch.nn.functional as F

    val: LabeledSplit = s.corpus.val
    was_training = model.training
    model.eval()
    total, preds = 0.0, []
    with torch.no_grad():
        for i in range(0, len(val), mb):
            x = torch.from_numpy(val.tokens[i : i + mb]).to(s.device)
            y = torch.from_numpy(val.labels[i : i + mb]).to(s.device)
            with autocast_ctx(s.device, s.cfg.train.precision):
                scores = class_scores(s, model, x)
            total += float(F.cross_entropy(scores.float(), y, reduction="sum"))
            preds.append(scores.argmax(dim=-1).cpu().numpy())
    model.train(was_training)
    pred = np.concatenate(preds)
    return {
        "val_loss": total / len(val), "val_bpb": None,
        "val_accuracy": accuracy(val.labels, pred),
        "val_f1": macro_f1(val.labels, pred, len(s.corpus.labels)),
    }


# ---------------------------------------------------------------------------------------------
# Early stopping on a monitored metric


def monitor_mode(t: TrainConfig) -> str:
    """min or max: `monitor_mode`, auto: min for val_loss, max for accuracy and F1."""
    if t.monitor_mode != "auto":
        return t.monitor_mode
    return "min" if t.monitor == "val_loss" else "max"


def judge(t: TrainConfig, value: float, best: float | None) -> tuple[bool, bool]:
    """(improved: beats `best` by more than min_delta, which resets patience; better: beats it
    at all, which makes a new best checkpoint). A non-finite value is neither."""
    if not math.isfinite(value):
        return False, False
    if best is None:
        return True, True
    sign = 1.0 if monitor_mode(t) == "max" else -1.0
    gain = sign * (value - best)
    return gain > t.min_delta, gain > 0


def restore_best(run: Any, model: Any) -> bool:
    """Load the run's best checkpoint into `model` (the plain one); False when there is none."""
    path = run.best_checkpoint()
    if path is None or path.is_dir():
        return False
    model.load_state_dict(load_checkpoint(path, "best checkpoint")["model"])
    return True


# ---------------------------------------------------------------------------------------------
# Starting from a pretrained run


def init_backbone(model: Any, cfg: RunConfig, path: str) -> None:
    """Load a pretrained checkpoint of the same family into a classifier: the backbone loads,
    the LM/MLM head (and an earlier classifier) is dropped, the classifier stays fresh.
    UserError (one line) for another family or shape."""
    state = load_checkpoint(path, "train.init_from")
    saved = ((state.get("config") or {}).get("model") or {}) if isinstance(state, dict) else {}
    family = saved.get("family")
    if family is not None and family != cfg.model.family:
        raise UserError(f"train.init_from {path}: a {family} checkpoint; this run's "
                        f"model.family is {cfg.model.family}")
    drop = DROPPED_HEADS if cfg.model.family != "t5" else (f"{CLASSIFIER}.",)
    weights = {k: v for k, v in plain_state_dict(state).items() if not k.startswith(drop)}
    own = model.state_dict()
    wanted = {k for k in own if not k.startswith(f"{CLASSIFIER}.")}
    missing, extra = sorted(wanted - weights.keys()), sorted(weights.keys() - wanted)
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
              for k in sorted(wanted & weights.keys()) if weights[k].shape != own[k].shape]
    if missing or extra or shapes:
        why = "; ".join(
            part for part in (
                f"shape {', '.join(shapes[:2])}" if shapes else "",
                f"missing {', '.join(missing[:3])}" if missing else "",
                f"unexpected {', '.join(extra[:3])}" if extra else "",
            ) if part
        )
        raise UserError(f"train.init_from {path}: does not match this model ({why})")
    model.load_state_dict(weights, strict=False)


def with_task(cfg: RunConfig, data: LabeledData) -> RunConfig:
    """`cfg` with the values the labeled data resolves (see `resolved_values`)."""
    return with_values(cfg, resolved_values(cfg, data))
