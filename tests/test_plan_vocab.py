"""The vocabulary as a plan dimension (Tao et al. 2024): a BPE's size grows with compute, each
candidate is priced with its own embedding and head, and the exported plan trains its tokenizer
at that size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import fake_cpu_profile, use_profile
from typer.testing import CliRunner

from budgetlm.cli import app
from budgetlm.config import load_config
from budgetlm.estimate import count_params, model_flops_per_token
from budgetlm.laws.vocabulary import (
    MIN_VOCAB,
    VOCAB_MULTIPLE,
    optimal_vocab,
    optimal_vocab_params,
)
from budgetlm.plan import Budget, plan

runner = CliRunner()


def test_tao_relation_exact() -> None:
    # approach 2 of Tao et al. 2024: N_v = 3,145,728 (N_nv / 33M)^0.8354
    assert optimal_vocab_params(33e6) == pytest.approx(3_145_728)
    assert optimal_vocab_params(66e6) == pytest.approx(3_145_728 * 2**0.8354)
    v = optimal_vocab(7e9, 4096)  # a Llama-2-7B-like model: ~67K (their Fig. 1 scale)
    assert v % VOCAB_MULTIPLE == 0
    assert v == pytest.approx(3_145_728 * (7e9 / 33e6) ** 0.8354 / 4096, abs=VOCAB_MULTIPLE / 2)
    assert 60_000 < v < 75_000
    assert optimal_vocab(1e4, 64) == MIN_VOCAB  # never below a byte BPE's floor


def test_planned_vocabulary_grows_with_compute() -> None:
    small, large = plan(Budget(flops=1e17)), plan(Budget(flops=1e21))
    assert small.data.tokenizer == "bpe"
    assert large.top.vocab_size > 2 * small.top.vocab_size
    for p in (small, large):
        top = p.top
        assert top.vocab_chosen and p.vocab_size == top.vocab_size
        cfg = p.config(0)
        assert cfg.data.bpe_vocab_size == top.vocab_size == cfg.model.vocab_size
        # the embedding and head of that vocabulary are in the parameters and FLOPs priced
        assert top.params == count_params(cfg.model).total
        assert top.flops_per_token == pytest.approx(model_flops_per_token(cfg.model))
        assert top.vocab_size == optimal_vocab(top.non_embedding_params, top.shape.d_model)
        assert any("Tao et al. 2024" in n for n in p.notes)
        assert p.to_dict()["data"]["vocab_size"] == top.vocab_size


def test_fit_and_char_plans_keep_their_vocabulary() -> None:
    fit = {"E": 1.5, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28}
    p = plan(Budget(flops=1e19), fit=fit)  # a fit is for its pilots' tokenizer as it was
    assert not p.top.vocab_chosen and p.top.vocab_size == 32768




def test_plan_with_chosen_vocabulary_trains_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_profile(monkeypatch, fake_cpu_profile(bf16=None))
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "text.txt"
    src.write_text("".join(f"line {i}: the cat sat on the mat, then it ran off again.\n"
                           for i in range(3000)))
    out = tmp_path / "plan.yaml"
    res = runner.invoke(app, ["plan", "--time", "5s", "--data", str(src), "--tokenizer", "bpe",
                              "--no-timing", "-o", str(out)])
    assert res.exit_code == 0, res.output
    cfg = load_config(str(out))
    planned = json.loads(out.with_suffix(".json").read_text())["top"]
    assert cfg.data.tokenizer == "bpe"
    assert cfg.data.bpe_vocab_size == planned["vocab_size"] != 4096  # not the default size
    res = runner.invoke(app, ["train", str(out), "--run-dir", str(tmp_path / "run"),
                              "--set", "train.max_steps=3", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "completed"
    assert result["params"] <= planned["params"]  # the BPE has at most the planned vocabulary
