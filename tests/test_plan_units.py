"""Honest loss units: a prior's loss is shown only relative to the top candidate (its absolute
figure, with unit and provenance, stays in --json); a fit for this corpus shows its loss and
interval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import fake_cpu_profile, use_profile
from typer.testing import CliRunner

from budgetlm import hardware
from budgetlm.cli import app, root
from budgetlm.config import DataConfig
from budgetlm.plan import Budget, plan
from budgetlm.plan.loss_units import ABSOLUTE, RELATIVE, relative_cell

runner = CliRunner()




@pytest.fixture
def cpu_machine(monkeypatch: pytest.MonkeyPatch) -> hardware.HardwareProfile:
    prof = use_profile(monkeypatch, fake_cpu_profile(bf16=None))
    monkeypatch.setattr(root.console, "width", 250)  # whole rows, no cropped cells
    return prof


@pytest.fixture(scope="module")
def novel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("units") / "novel.txt"
    p.write_text("".join(f"Chapter {i}. The heron waited by the river until the fish moved; "
                         "then it struck, and the water closed again.\n" for i in range(2000)))
    return p


def _fit_file(path: Path, data: Path, tokenizer: str = "char") -> Path:
    """A fit.json as `budgetlm calibrate` writes it (its law, uncertainty and pilots)."""
    fit = {
        "kind": "budgetlm-fit", "version": 1, "created": "2024-01-01T00:00:00Z",
        "law": {"form": "chinchilla", "E": 1.1, "A": 60.0, "B": 400.0, "alpha": 0.3,
                "beta": 0.32},
        "bootstrap": [], "residuals": [0.01, -0.01], "residual_std": 0.03,
        "interval_level": 0.9, "seq_len": 64, "precision": "fp32", "optimizer": "adamw",
        "eval_tokens": 4096, "unique_tokens": 150_000, "bpb_per_nat": 1.4427,
        "fit_range": [1e3, 1e10, 1e3, 1e13],
        "data": {"source": str(data), "tokenizer": tokenizer, "vocab_size": 40, "sha256": None},
        "levels": [1e11, 3e11, 9e11],
        "pilots": [{"state": "complete", "epochs": 2.5, "tokens": 375_000}],
    }
    path.write_text(json.dumps(fit))
    return path


def _run(*args: str) -> str:
    res = runner.invoke(app, ["plan", *args])
    assert res.exit_code == 0, res.output
    return res.output


def test_relative_cell_is_the_difference_from_the_top() -> None:
    assert relative_cell(3.25, 3.0) == "+0.250"
    assert relative_cell(3.0, 3.0) == "+0.000"


def test_prior_plan_prints_no_absolute_loss(novel: Path, cpu_machine: object) -> None:
    args = ("--time", "3m", "--data", str(novel), "--tokenizer", "char", "--no-timing")
    out = json.loads(_run(*args, "--json"))
    assert out["loss_kind"] == "prior" and out["loss_shown"] == RELATIVE
    assert "epoch prior" in out["loss_unit"] and "not this corpus" in out["loss_unit"]
    text = _run(*args)
    cands = out["candidates"]
    assert len(cands) > 1
    for c in cands:  # no candidate's absolute loss (nor its interval) is printed
        assert f"{c['loss']:.3f}" not in text, c["name"]
    top = cands[0]["loss"]
    assert "Δ prior" in text and "+0.000" in text
    assert relative_cell(cands[1]["loss"], top) in text
    assert "absolute figure" in text  # the note says where the number went


def test_fit_for_this_corpus_prints_absolute_loss_with_interval(
    novel: Path, cpu_machine: object, tmp_path: Path
) -> None:
    fit = _fit_file(tmp_path / "fit.json", novel)
    args = ("--time", "3m", "--data", str(novel), "--tokenizer", "char", "--fit", str(fit),
            "--no-timing")
    out = json.loads(_run(*args, "--json"))
    assert out["loss_kind"] == "fit" and out["loss_shown"] == ABSOLUTE
    assert "fitted law" in out["loss_unit"]
    top = out["top"]
    assert top["loss_lo"] < top["loss"] < top["loss_hi"]
    text = _run(*args)
    assert f"{top['loss']:.3f} ({top['loss_lo']:.3f}–{top['loss_hi']:.3f})" in text
    assert "Δ" not in text.split("compute-optimal")[0]


def test_fit_of_another_tokenizer_is_shown_relative(novel: Path, cpu_machine: object,
                                                     tmp_path: Path) -> None:
    fit = json.loads(_fit_file(tmp_path / "fit.json", novel, tokenizer="byte").read_text())
    p = plan(Budget(seconds=180), data=DataConfig(source=str(novel), tokenizer="char"),
             fit=fit, timing=False)
    assert p.law.kind == "fit" and p.loss_shown == RELATIVE
    assert p.to_dict()["top"]["loss"] == pytest.approx(p.top.loss)  # still in the JSON
