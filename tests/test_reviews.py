"""The generated labeled tasks: reviews (negation and "but" decide the label) and stories with
one or two hops."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from budgetlm.data.labeled import read_labeled
from budgetlm.data.reviews import BAD, GOOD, LABELS, review_rows, review_text, write_reviews
from budgetlm.data.stories import ROOMS, story_rows, story_text
from budgetlm.errors import UserError

PRETRAIN_STEPS, FINETUNE_STEPS = 400, 150  # 0.987 vs 0.500 validation accuracy when written


def rule(text: str) -> str:
    """The label by the documented rule: the last clause's polarity, flipped by "not"."""
    words = re.split(r" and | but ", text.rstrip("."))[-1].split()
    positive = (words[-1] in GOOD) != ("not" in words)
    return LABELS[int(positive)]


def test_reviews_follow_the_rule_and_are_seeded_and_balanced(tmp_path: Path) -> None:
    rows = review_rows(2000, seed=1)
    assert rows[:50] == review_rows(50, seed=1) and rows != review_rows(2000, seed=2)
    assert all(rule(r["text"]) == r["label"] for r in rows)
    positive = sum(r["label"] == "positive" for r in rows)
    assert 900 < positive < 1100
    assert {w for r in rows for w in r["text"].split()} >= set(GOOD) | set(BAD) | {"not", "but"}


def test_reviews_need_context_to_read() -> None:
    """Reading one clause, or ignoring negation, stays far from the rule."""
    rows = review_rows(3000, seed=0)

    def agree(guess: object) -> float:
        return sum(guess(r["text"]) == r["label"] for r in rows) / len(rows)  # type: ignore[operator]

    first = agree(lambda t: rule(re.split(r" and | but ", t)[0] + "."))
    no_negation = agree(lambda t: LABELS[int(t.rstrip(".").split()[-1] in GOOD)])
    assert first < 0.75 and no_negation < 0.6


def test_review_text_states_the_feeling_and_files_read_back(tmp_path: Path) -> None:
    text = review_text(3000, seed=0)
    lines = text.splitlines()
    assert len(text) >= 3000 and all(re.search(r"\. so i was (happy|sad)\.$", x) for x in lines)
    for line in lines[:50]:
        review, feeling = line.rsplit(" so i was ", 1)
        assert (feeling == "happy.") == (rule(review) == "positive")
    files = write_reviews(tmp_path, n_labeled=40, n_unlabeled_bytes=500, seed=0)
    assert len(read_labeled(str(files.csv), "data.source", "text", "label")) == 40
    assert files.jsonl.read_text().count("\n") == 40 and files.txt.stat().st_size >= 500


def test_one_hop_stories_place_objects_in_rooms() -> None:
    rows = story_rows(200, seed=0, pairs=3, hops=1)
    for x in rows:
        obj = x["text"].rsplit("where is the ", 1)[1].rstrip("?")
        assert f"the {obj} is in the {x['label']}." in x["text"] and "box" not in x["text"]
    assert {r["label"] for r in rows} == set(ROOMS)
    assert story_rows(5, seed=0) == story_rows(5, seed=0, hops=2)  # the default is unchanged
    assert "so the" in story_text(500, hops=1)
    with pytest.raises(UserError, match="hops"):
        story_rows(3, hops=3)


def _gpt(source: Path, task: str, steps: int, run: Path, **more: object) -> float | None:
    from budgetlm.config import load_config, with_values
    from budgetlm.train import train

    cfg = with_values(load_config("tiny"), {
        "task": task, "data.source": str(source), "data.tokenizer": "byte",
        "model.seq_len": 64, "model.n_layer": 2, "model.d_model": 64, "model.n_head": 4,
        "optim.lr": 3e-3, "schedule.warmup_steps": 10, "train.max_steps": steps,
        "train.micro_batch": 16, "train.eval_interval": steps, "train.eval_tokens": 4096,
        "train.checkpoint_seconds": None, "train.threads": 1, **more,
    })
    return train(cfg, run_dir=run).val_accuracy


def test_pretrained_gpt_beats_scratch_at_equal_steps(tmp_path: Path) -> None:
    """Fine-tuning from a run pretrained on the unlabeled reviews beats the same classifier
    trained from random weights for the same number of steps (fixed seed)."""
    files = write_reviews(tmp_path / "data", n_labeled=1500, n_unlabeled_bytes=300_000, seed=0)
    _gpt(files.txt, "lm", PRETRAIN_STEPS, tmp_path / "pre")
    tuned = _gpt(files.jsonl, "classification", FINETUNE_STEPS, tmp_path / "ft",
                 **{"train.init_from": str(tmp_path / "pre"), "optim.lr": 9e-4})
    scratch = _gpt(files.jsonl, "classification", FINETUNE_STEPS, tmp_path / "scratch")
    assert tuned is not None and scratch is not None
    assert tuned > scratch + 0.2 and tuned > 0.8, (tuned, scratch)

