"""Planning a classification fine-tune (`plan --task classification --finetune RUN --data FILE`).

A classification fine-tune is priced as the language-model fine-tunes of `plan.finetune` are —
memory, micro-batch, throughput from the estimator (or timed steps), epochs the budget buys —
with what differs here:

- the data is labeled rows, not a corpus: one epoch is every training row once, each row a
  sequence of `seq_len` tokens (texts are truncated or padded to it, so padding costs compute
  like text); `seq_len` is the longest training text in tokens (rounded up to a multiple of 8),
  at most the model's context;
- every weight trains (`finetune.method: full`; a fresh head is trained on the pooled state for
  gpt and bert, label words are generated for t5);
- no loss or accuracy is predicted: there is no scaling law for a downstream task's accuracy.
  The epochs follow Devlin et al. 2019 (BERT, §A.3: 2 to 4 epochs over the labeled set), ranked
  like the other fine-tunes by the tokens they can put to use, and the run stops early on the
  validation accuracy (`train.monitor: val_accuracy`, best checkpoint restored);
- learning rate: `classify_lr_fraction(family)` of the pretraining peak: 0.3 for gpt and bert
  (Devlin et al. 2019: BERT pretrained at 1e-4, fine-tuned best among 5e-5, 3e-5, 2e-5), 1 for
  t5 (Raffel et al. 2020 §3.1: fine-tuned at a constant 1e-3, about where its inverse-square-
  root pretraining schedule ends; measured in benchmarks/RESULTS.md: a t5 fine-tuned at 0.3x
  stayed at the majority class in the time a gpt or bert learned the task).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from budgetlm.config import DataConfig
from budgetlm.errors import UserError
from budgetlm.plan.finetune_base import PretrainedBase

# fine-tuning lr / pretraining peak lr, by family (see the module docstring)
CLASSIFY_LR_FRACTION = {"gpt": 0.3, "bert": 0.3, "t5": 1.0}
LR_SOURCE = {"gpt": "Devlin et al. 2019 (BERT: pretrained at 1e-4, fine-tuned best among 5e-5, "
             "3e-5, 2e-5)", "t5": "Raffel et al. 2020 (fine-tuned at a constant 1e-3, where "
             "its pretraining schedule ends)"}


def classify_lr_fraction(family: str) -> float:
    """Fine-tuning lr of a classifier / the pretraining peak lr of its `family`."""
    return CLASSIFY_LR_FRACTION[family]


def classify_lr_note(family: str, lr: float, source: str) -> str:
    """Where a classification fine-tune's lr comes from, for the plan's notes."""
    cited = LR_SOURCE.get(family, LR_SOURCE["gpt"])
    return f"lr: {lr:.2g} = {classify_lr_fraction(family):g} x {source} ({cited})"
SEQ_LEN_MULTIPLE = 8

RANKING_RULE_CLASSIFY = (
    "no loss or accuracy is predicted: there is no scaling law for a downstream task. Every "
    "weight trains (a fresh classification head; t5 generates the label words); ranked by the "
    "labeled tokens a candidate can put to use: effective tokens of its epochs (at most 4, "
    "Devlin et al. 2019 fine-tune BERT for 2 to 4 epochs), then precision, time, memory; the run "
    "stops early on validation accuracy and keeps its best checkpoint"
)


@dataclass
class LabeledCount:
    """The labeled data as the plan prices it."""

    config: DataConfig
    rows: int  # training rows
    val_rows: int
    labels: list[str]
    seq_len: int  # tokens per row (truncated or padded)
    longest: int  # the longest training text, in tokens
    label_tokens: int  # the longest label, in tokens (t5's decoder length)
    vocab: int

    @property
    def unique(self) -> int:
        """Tokens of one epoch (every row at `seq_len`)."""
        return self.rows * self.seq_len

    @property
    def val_tokens(self) -> int:
        return self.val_rows * self.seq_len

    @property
    def description(self) -> str:
        return (f"data: {self.config.source} ({self.config.tokenizer}): {self.rows:,} training "
                f"and {self.val_rows:,} validation rows, {len(self.labels)} labels "
                f"({', '.join(self.labels[:6])}{', ...' if len(self.labels) > 6 else ''}); "
                f"rows of {self.seq_len} tokens (longest text {self.longest})")


def count_labeled(source: str, base: PretrainedBase, text_field: str = "text",
                  label_field: str = "label") -> LabeledCount:
    """The labeled rows of `source`, split and tokenized as the trainer will (the base model's
    tokenizer, the trainer's seed-0 split); a UserError for data the trainer would refuse."""
    from budgetlm.data.labeled import labeled_rows, make_tokenizer

    if base.kind != "run":
        raise UserError(f"--finetune {base.path}: classification fine-tunes a budgetlm run "
                        "directory (train.init_from); a Hugging Face directory has no "
                        "classification path here")
    data = DataConfig(source=source, tokenizer=base.tokenizer,  # type: ignore[arg-type]
                      text_field=text_field, label_field=label_field)
    train, val, _how, labels = labeled_rows(data, 0, "--data")  # the trainer's split (seed 0)
    tok = make_tokenizer(data, train, val)
    lengths = [len(tok.encode(r.text)) for r in train]
    longest = max(lengths)
    most = base.max_seq_len
    seq_len = min(most, SEQ_LEN_MULTIPLE * math.ceil(longest / SEQ_LEN_MULTIPLE))
    label_tokens = max(len(tok.encode(y)) for y in labels)
    return LabeledCount(data, len(train), len(val), labels, seq_len, longest, label_tokens,
                        int(tok.vocab_size))


def classification_base(base: PretrainedBase, counted: LabeledCount) -> PretrainedBase:
    """The base model as the classifier it becomes: n_classes labels (gpt, bert: a linear
    head; t5: the longest label word as its decoder length)."""
    update: dict[str, object] = {"n_classes": len(counted.labels)}
    if base.model.family == "t5":
        update["target_len"] = counted.label_tokens
    return replace(base, model=base.model.model_copy(update=update))


def classification_data(counted: LabeledCount) -> DataConfig:
    """The data section of the exported run: the labeled source and its label set in order."""
    return counted.config.model_copy(update={"labels": counted.labels})


def seq_len_note(counted: LabeledCount, base: PretrainedBase) -> str | None:
    """A note when texts are cut to the model's context."""
    if counted.longest <= counted.seq_len:
        return None
    return (f"seq_len: the longest training text has {counted.longest} tokens; the model's "
            f"context is {base.max_seq_len}: longer texts are truncated to their first "
            f"{counted.seq_len} tokens")
