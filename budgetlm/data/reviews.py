"""Generated short reviews whose sentiment takes context to read: labeled rows for
classification, and unlabeled text for pretraining (reviews of the same generator without labels,
each followed by how the writer felt: "so i was happy." / "so i was sad.").

A review is one or two clauses "the <thing> was [not] <adjective>". Its label (`positive` or
`negative`, drawn uniformly, so the classes are balanced) is the polarity of its last clause:
an adjective's own polarity, flipped by "not"; a second clause joined by "and" agrees with the
first, one joined by "but" contradicts it:

    the food was not fresh but the staff was friendly.          -> positive
    the room was not dirty and the view was lovely.             -> positive
    the music was great but the bed was not clean.              -> negative

Reading the label takes the words around an adjective (on 20,000 rows): counting positive
and negative adjectives gets 50% (negation is a coin flip), reading the first clause alone 67%,
a vote of the clauses' polarities with negation but without "but" 83%. Rows are a pure
function of (seed, index): `review_rows(n, seed)` is a prefix of `review_rows(n + k, seed)`;
the unlabeled text draws from another stream of the same seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from budgetlm.data.stories import LABEL_FIELD, TEXT_FIELD, StoryFiles, write_task

THINGS = ("food", "service", "room", "staff", "view", "price", "music", "bed", "coffee", "pool")
GOOD = ("good", "great", "nice", "lovely", "clean", "friendly", "fresh", "warm", "quiet",
        "perfect")
BAD = ("bad", "awful", "dirty", "rude", "cold", "noisy", "stale", "slow", "poor", "terrible")
LABELS = ("negative", "positive")  # the label set, index = polarity (0 negative, 1 positive)
FEELING = ("sad", "happy")


def _clause(rng: np.random.Generator, thing: str, polarity: int) -> str:
    """'the <thing> was [not] <adjective>' reading as `polarity` (1 positive)."""
    negated = bool(rng.integers(2))
    pool = GOOD if polarity != negated else BAD  # "not" flips the adjective's polarity
    return f"the {thing} was {'not ' if negated else ''}{pool[int(rng.integers(len(pool)))]}"


def _review(rng: np.random.Generator) -> tuple[str, int]:
    """(review text, its polarity: 1 positive, 0 negative)."""
    polarity = int(rng.integers(2))
    things = [THINGS[i] for i in rng.choice(len(THINGS), 2, replace=False)]
    shape = int(rng.integers(3))  # one clause, "and", "but"
    if shape == 0:
        return _clause(rng, things[0], polarity) + ".", polarity
    first = polarity if shape == 1 else 1 - polarity
    joint = " and " if shape == 1 else " but "
    return (_clause(rng, things[0], first) + joint + _clause(rng, things[1], polarity) + ".",
            polarity)


def review_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` labeled rows {"text": review, "label": positive | negative}, seeded."""
    rows = []
    for i in range(n):
        text, polarity = _review(np.random.default_rng([seed, 3, i]))
        rows.append({TEXT_FIELD: text, LABEL_FIELD: LABELS[polarity]})
    return rows


def review_text(n_bytes: int, seed: int = 0) -> str:
    """About `n_bytes` (at least one review) of unlabeled reviews, one per line, each followed
    by how its writer felt ("so i was happy."): text that states what a review implies."""
    lines, total, i = [], 0, 0
    while total < n_bytes or not lines:
        text, polarity = _review(np.random.default_rng([seed, 4, i]))
        line = f"{text} so i was {FEELING[polarity]}."
        lines.append(line)
        total += len(line) + 1
        i += 1
    return "\n".join(lines) + "\n"


def write_reviews(directory: str | Path, n_labeled: int = 4000, n_unlabeled_bytes: int = 1 << 20,
                  seed: int = 0) -> StoryFiles:
    """Write reviews.jsonl and reviews.csv (`n_labeled` rows) and unlabeled.txt (about
    `n_unlabeled_bytes`) into `directory`; their paths."""
    return write_task(directory, "reviews", review_rows(n_labeled, seed),
                      review_text(n_unlabeled_bytes, seed))
