"""Generated short stories with a question whose answer takes two facts: labeled rows for
classification, and unlabeled text for pretraining: stories of the same generator without
questions, each followed by what its facts imply ("so the key is in the kitchen.").

A story places `pairs` objects in distinct boxes and the boxes in distinct rooms, the sentences
shuffled, then asks where one of the objects is:

    the coin is in the blue box. the red box is in the kitchen. the key is in the red box.
    the blue box is in the garden. where is the key?            -> label "kitchen"

The label is one of `ROOMS` (4 classes), drawn uniformly, so the classes are balanced (a
majority baseline near 25%). Answering takes both facts (object -> box, box -> room); a model
that only notices which rooms a story names gets 1 / pairs. With `hops=1` the objects lie in
the rooms directly ("the key is in the kitchen."): the answer is one fact, found by the
object's name. Rows are a pure function of (seed, index): `story_rows(n, seed)` is a prefix of
`story_rows(n + k, seed)`. The unlabeled text draws its stories from another stream of the same
seed (no row repeats by construction).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from budgetlm.errors import UserError

OBJECTS = ("key", "coin", "ring", "book", "apple", "ball", "cup", "pen")
BOXES = ("red box", "blue box", "green box", "white box", "black box", "small bag")
ROOMS = ("kitchen", "garden", "bedroom", "hall")  # the label set
TEXT_FIELD, LABEL_FIELD = "text", "label"


@dataclass(frozen=True)
class StoryFiles:
    """What `write_stories` wrote: labeled rows as .jsonl and .csv (fields `text`, `label`)
    and unlabeled stories as .txt (one story per line)."""

    jsonl: Path
    csv: Path
    txt: Path


def _story(rng: np.random.Generator, pairs: int,
           hops: int = 2) -> tuple[list[str], str, str, list[str]]:
    """(shuffled fact sentences, the object asked about, its room, what follows from the facts:
    "so the <object> is in the <room>." for each object). `hops` 1 places the objects in the
    rooms directly (no boxes)."""
    objects = [OBJECTS[i] for i in rng.choice(len(OBJECTS), pairs, replace=False)]
    boxes = [BOXES[i] for i in rng.choice(len(BOXES), pairs, replace=False)]
    answer = int(rng.integers(len(ROOMS)))  # uniform: balanced labels
    others = [i for i in range(len(ROOMS)) if i != answer]
    rooms = [ROOMS[answer]] + [ROOMS[others[i]] for i in rng.permutation(len(others))[:pairs - 1]]
    if hops == 1:
        facts = [f"the {o} is in the {r}." for o, r in zip(objects, rooms, strict=True)]
    else:
        facts = [f"the {o} is in the {b}." for o, b in zip(objects, boxes, strict=True)]
        facts += [f"the {b} is in the {r}." for b, r in zip(boxes, rooms, strict=True)]
    order = rng.permutation(len(facts))
    so = [f"so the {o} is in the {r}." for o, r in zip(objects, rooms, strict=True)]
    return [facts[i] for i in order], objects[0], ROOMS[answer], [so[i] for i in
                                                                   rng.permutation(pairs)]


def _check(pairs: int, hops: int) -> None:
    if not 1 <= pairs <= len(ROOMS):
        raise UserError(f"pairs: expected 1..{len(ROOMS)}, got {pairs}")
    if hops not in (1, 2):
        raise UserError(f"hops: expected 1 or 2, got {hops}")


def story_rows(n: int, seed: int = 0, pairs: int = 2, hops: int = 2) -> list[dict[str, str]]:
    """`n` labeled rows {"text": story + question, "label": room}, seeded."""
    _check(pairs, hops)
    rows = []
    for i in range(n):
        facts, obj, room, _ = _story(np.random.default_rng([seed, 1, i]), pairs, hops)
        rows.append({TEXT_FIELD: " ".join([*facts, f"where is the {obj}?"]), LABEL_FIELD: room})
    return rows


def story_text(n_bytes: int, seed: int = 0, pairs: int = 2, hops: int = 2) -> str:
    """About `n_bytes` (at least one story) of unlabeled stories, one per line, no questions:
    each story's facts, then what follows from them ("so the key is in the kitchen."), as text
    that reasons states its conclusions; a language model pretrained on it learns to chain the
    two facts a question asks for."""
    _check(pairs, hops)
    lines, total, i = [], 0, 0
    while total < n_bytes or not lines:
        facts, _, _, so = _story(np.random.default_rng([seed, 2, i]), pairs, hops)
        line = " ".join([*facts, *so])
        lines.append(line)
        total += len(line) + 1
        i += 1
    return "\n".join(lines) + "\n"


def write_stories(directory: str | Path, n_labeled: int = 4000, n_unlabeled_bytes: int = 1 << 20,
                  seed: int = 0, pairs: int = 2, hops: int = 2) -> StoryFiles:
    """Write stories.jsonl and stories.csv (`n_labeled` rows) and unlabeled.txt (about
    `n_unlabeled_bytes`) into `directory`; their paths."""
    return write_task(directory, "stories", story_rows(n_labeled, seed, pairs, hops),
                      story_text(n_unlabeled_bytes, seed, pairs, hops))


def write_task(directory: str | Path, stem: str, rows: list[dict[str, str]],
               text: str) -> StoryFiles:
    """Write `rows` as STEM.jsonl and STEM.csv (fields `text`, `label`) and `text` as
    unlabeled.txt into `directory` (made when missing); their paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = StoryFiles(d / f"{stem}.jsonl", d / f"{stem}.csv", d / "unlabeled.txt")
    files.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with files.csv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[TEXT_FIELD, LABEL_FIELD])
        w.writeheader()
        w.writerows(rows)
    files.txt.write_text(text)
    return files
