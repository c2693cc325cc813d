"""`budgetlm plan --task classification --finetune RUN --data LABELED`: a classification
fine-tune of a pretrained run priced, exported and trained; a study tuning one on val_error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from budgetlm.cli import app
from budgetlm.config import load_config, validate
from budgetlm.data.stories import write_stories
from budgetlm.plan.finetune_classify import classify_lr_fraction

runner = CliRunner()


@pytest.fixture(scope="module")
def stories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("stories")
    write_stories(d, n_labeled=400, n_unlabeled_bytes=40_000, seed=1)
    return d


@pytest.fixture(scope="module")
def pretrained(stories: Path) -> Path:
    run = stories / "pre"
    res = runner.invoke(app, ["train", "tiny", "--data", str(stories / "unlabeled.txt"),
                              "--max-steps", "2", "-s", "model.seq_len=96", "-s",
                              "train.threads=1", "--run-dir", str(run), "--json"])
    assert res.exit_code == 0, res.output
    return run


def _plan(*args: str) -> dict:
    res = runner.invoke(app, ["plan", "--task", "classification", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_classification_plan_prices_full_fine_tunes_of_the_run(stories: Path,
                                                               pretrained: Path) -> None:
    out = _plan("--finetune", str(pretrained), "--data", str(stories / "stories.jsonl"),
                "--flops", "3e12")
    assert out["kind"] == "finetune"
    assert {c["method"] for c in out["candidates"]} == {"full"}
    assert out["ranking"].startswith("no loss or accuracy is predicted")
    pre = load_config(str(pretrained / "config.yaml"))
    top = out["top"]
    assert top["lr"] == pytest.approx(classify_lr_fraction("gpt") * pre.optim.lr)
    assert top["epochs"] <= 4
    rows = 400 - round(400 * 0.05)  # the seed-0 stratified split keeps ~95% for training
    assert abs(out["data"]["unique_tokens"] / top["seq_len"] - rows) <= 4
    assert top["seq_len"] == 96  # the stories are longer than the run's context


def test_the_exported_classification_plan_trains_as_is(stories: Path, pretrained: Path,
                                                       tmp_path: Path) -> None:
    out_yaml = tmp_path / "cls.yaml"
    res = runner.invoke(app, ["plan", "--task", "classification", "--finetune", str(pretrained),
                              "--data", str(stories / "stories.csv"), "--flops", "3e12",
                              "-o", str(out_yaml)])
    assert res.exit_code == 0, res.output
    cfg = load_config(str(out_yaml))
    assert cfg.task == "classification" and cfg.train.monitor == "val_accuracy"
    assert cfg.train.patience is not None
    assert cfg.train.init_from == str(pretrained.resolve())
    assert cfg.data.labels == ["bedroom", "garden", "hall", "kitchen"]
    assert cfg.model.n_classes == 4
    short = validate({**cfg.model_dump(), "train": {**cfg.train.model_dump(), "max_steps": 3,
                                                      "eval_interval": 3, "threads": 1}})
    from budgetlm.train import train

    res = train(short, run_dir=tmp_path / "ft", progress=False)
    assert res.status in ("completed", "early_stopped")
    assert res.val_accuracy is not None and 0.0 <= res.val_accuracy <= 1.0


@pytest.mark.parametrize("args, message", [
    (["--data", "X", "--flops", "1e12"], "--task classification: needs --finetune"),
    (["--finetune", "PRE", "--data", "X", "--flops", "1e12", "--tokenizer", "char"],
     "--tokenizer/--seq-len"),
    (["--finetune", "PRE", "--data", "stories.jsonl", "--flops", "1e12", "--seq-len", "32"],
     "--tokenizer/--seq-len"),
    (["--finetune", "PRE", "--data", "unlabeled.txt", "--flops", "1e12"],
     "classification reads a .jsonl, .csv or .parquet file"),
])
def test_bad_classification_plans_exit_2_with_one_line(args: list[str], message: str,
                                                       stories: Path, pretrained: Path) -> None:
    args = [str(pretrained) if a == "PRE" else a for a in args]
    args = [str(stories / a) if a in ("stories.jsonl", "unlabeled.txt") else a for a in args]
    res = runner.invoke(app, ["plan", "--task", "classification", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_unknown_task_exits_2(stories: Path) -> None:
    res = runner.invoke(app, ["plan", "--task", "ner", "--flops", "1e12"])
    assert res.exit_code == 2 and "--task: expected lm or classification" in res.output


def _study(tmp_path: Path, stories: Path, pretrained: Path, objective: str) -> Path:
    base = {"name": "cls", "task": "classification", "model": {"seq_len": 96},
            "data": {"source": str(stories / "stories.jsonl")},
            "train": {"micro_batch": 8, "device": "cpu", "init_from": str(pretrained),
                      "monitor": "val_accuracy"}}
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(base))
    study = {"name": "clsstudy", "base": "cls.yaml", "trial_cap": {"steps": 3},
             "budget": {"trials": 2}, "sampler": "random", "pruner": "none", "threads": 1,
             "evals": 1, "objective": objective,
             "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(study))
    return p


def test_a_study_tunes_a_classification_fine_tune_on_val_error(
        stories: Path, pretrained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _study(tmp_path, stories, pretrained, "val_error")
    res = runner.invoke(app, ["tune", str(path)])
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "runs" / "clsstudy" / "trials.csv").read_text().splitlines()
    assert len(rows) == 3 and sum("COMPLETE" in r for r in rows) == 2, rows


def test_val_bpb_is_refused_for_a_classification_study(
        stories: Path, pretrained: Path, tmp_path: Path) -> None:
    path = _study(tmp_path, stories, pretrained, "val_bpb")
    res = runner.invoke(app, ["tune", str(path)])
    assert res.exit_code == 2 and "val_bpb is not measured for task classification" in res.output
