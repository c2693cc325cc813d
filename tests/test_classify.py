"""Classification: labeled sources, splits, errors, metrics, padding, heads, training, T5 text to
text, pretrained backbones and monitored early stopping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from budgetlm import estimate as est
from budgetlm.cli import app
from budgetlm.config import DataConfig, ModelConfig, RunConfig, load_config, with_values
from budgetlm.data.labeled import load_labeled, read_labeled, split_rows
from budgetlm.data.stories import ROOMS, story_rows, story_text, write_stories
from budgetlm.model import PAD_ID, build_model
from budgetlm.train import batches as train_batches
from budgetlm.train import train
from budgetlm.train.classify import (
    batch_rows,
    init_backbone,
    judge,
    macro_f1,
    t5_label_scores,
)
from budgetlm.train.rundir import RunDir, load_checkpoint

runner = CliRunner()
ROWS = [("good day", "pos"), ("bad day", "neg"), ("fine day", 1), ("grim day", "neg"),
        ("nice day", "pos"), ("sad day", 1)]


def write_all(d: Path) -> dict[str, Path]:
    """The same rows as .jsonl, .csv and .parquet."""
    import pandas as pd

    rows = [{"text": t, "label": y} for t, y in ROWS]
    out = {"jsonl": d / "r.jsonl", "csv": d / "r.csv", "parquet": d / "r.parquet"}
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    out["csv"].write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in ROWS))
    pd.DataFrame({"text": [t for t, _ in ROWS], "label": [str(y) for _, y in ROWS]}).to_parquet(
        out["parquet"]
    )
    return out


def test_three_formats_read_alike(tmp_path: Path) -> None:
    files = write_all(tmp_path)
    want = [(t, str(y)) for t, y in ROWS]
    for path in files.values():
        rows = read_labeled(str(path), "data.source", "text", "label")
        assert [(r.text, r.label) for r in rows] == want, path
    data = load_labeled(DataConfig(source=str(files["csv"]), val_fraction=0.34), 16, PAD_ID, 0)
    assert data.labels == ["1", "neg", "pos"]  # sorted, ints compared as strings
    assert data.train.tokens.shape == (3, 16) and len(data.val) == 3
    row = data.train.tokens[0]
    n = int(data.train.lengths[0])
    assert (row[n:] == PAD_ID).all() and (row[:n] >= 0).all()
    given = load_labeled(DataConfig(source=str(files["jsonl"]), labels=["pos", "neg", "1"],
                                    val_fraction=0.34), 4, PAD_ID, 0)
    assert given.labels == ["pos", "neg", "1"] and given.train.tokens.shape[1] == 4  # truncated
    assert given.info["truncated_rows"] == 6


def test_splits_stratified_shuffled_and_val_source(tmp_path: Path) -> None:
    rows = read_labeled(str(write_all(tmp_path)["jsonl"]), "data.source", "text", "label")
    big = rows * 10  # 20 rows per label
    train_rows, val_rows, how = split_rows(big, 0.25, seed=3)
    assert how.startswith("stratified")
    assert sorted(r.label for r in val_rows) == sorted(["1", "neg", "pos"] * 5)
    assert len(train_rows) == 45
    again = split_rows(big, 0.25, seed=3)[1]
    assert [r.where for r in again] == [r.where for r in val_rows]  # seeded
    lonely = [*big, rows[0].__class__("odd one", "rare", "x")]
    _, val2, how2 = split_rows(lonely, 0.25, seed=0)
    assert how2.startswith("shuffled") and len(val2) == round(61 * 0.25)
    files = write_all(tmp_path)
    data = load_labeled(DataConfig(source=str(files["jsonl"]), val_source=str(files["csv"])),
                        16, PAD_ID, 0)
    assert len(data.train) == len(data.val) == 6 and data.info["split"] == "data.val_source"


def bad_inputs(t: Path) -> dict[str, tuple[list[str], str]]:
    ok = t / "ok.jsonl"
    ok.write_text("".join(json.dumps({"text": f"x{i}", "label": "ab"[i % 2]}) + "\n"
                          for i in range(20)))

    def jsonl(name: str, *recs: Any) -> str:
        (t / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
        return str(t / name)

    (t / "head.csv").write_text("text,label\n")
    (t / "empty.jsonl").write_text("")
    (t / "junk.parquet").write_bytes(b"not parquet at all")
    (t / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{oops\n')
    return {
        "no_label": (["--data", jsonl("a.jsonl", {"text": "a"})], "no label field 'label'"),
        "no_text": (["--data", jsonl("b.jsonl", {"body": "a", "label": 1})],
                    "no text field 'text'"),
        "one_class": (["--data", jsonl("c.jsonl", *[{"text": "a", "label": "x"}] * 9)],
                      "at least 2 labels"),
        "empty_train": (["--data", str(t / "head.csv")], "empty training split"),
        "empty_val": (["--data", str(ok), "--val-data", str(t / "head.csv")],
                      "empty validation split"),
        "number_text": (["--data", jsonl("d.jsonl", {"text": 5, "label": "x"})],
                        "is not a string (got int)"),
        "list_text": (["--data", jsonl("e.jsonl", {"text": ["a"], "label": "x"})],
                      "is not a string (got list)"),
        "empty_file": (["--data", str(t / "empty.jsonl")], "is empty"),
        "junk_parquet": (["--data", str(t / "junk.parquet")], "not a readable parquet file"),
        "bad_json": (["--data", str(t / "bad.jsonl")], "line 2: invalid JSON"),
        "unseen_val_label": (
            ["--data", str(ok), "--val-data", jsonl("v.jsonl", {"text": "q", "label": "zz"})],
            "does not occur in the training split"),
        "not_in_labels": (["--data", str(ok), "--set", "data.labels=[a,c]"],
                          "is not in data.labels"),
        "text_file": (["--data", jsonl("f.txt", {"text": "a", "label": 1})], ".jsonl, .csv"),
    }


@pytest.mark.parametrize("case", [
    "no_label", "no_text", "one_class", "empty_train", "empty_val", "number_text", "list_text",
    "empty_file", "junk_parquet", "bad_json", "unseen_val_label", "not_in_labels", "text_file",
])
def test_bad_labeled_input_exits_2(case: str, tmp_path: Path) -> None:
    args, needle = bad_inputs(tmp_path)[case]
    res = runner.invoke(app, ["train", "tiny", "--run-dir", str(tmp_path / "run"), "--max-steps",
                              "1", "--set", "task=classification", *args])
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert needle in text and ("data.source" in text or "data.val_source" in text
                               or "data.labels" in text), text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    assert not (tmp_path / "run").exists()


def test_metrics_against_hand_computed() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    # class 0: tp 2 fp 0 fn 1 -> 4/5; class 1: tp 1 fp 1 fn 1 -> 2/4; class 2: tp 1 fp 1 fn 0
    # -> 2/3; macro = (0.8 + 0.5 + 0.6667) / 3
    assert macro_f1(y_true, y_pred, 4) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert macro_f1(np.array([1, 1]), np.array([1, 1]), 3) == 1.0  # absent classes skipped
    t = RunConfig(task="classification").train
    acc = with_values(RunConfig(task="classification"), {"train.monitor": "val_accuracy",
                                                         "train.min_delta": 0.05}).train
    assert judge(t, 1.0, 2.0) == (True, True) and judge(t, 2.5, 2.0) == (False, False)
    assert judge(acc, 0.62, 0.6) == (False, True)  # better, but within min_delta
    assert judge(acc, 0.7, 0.6) == (True, True) and judge(acc, float("nan"), None)[1] is False


@pytest.mark.parametrize("family", ["gpt", "bert"])
@pytest.mark.parametrize("extra", [{}, {"attention": "eager", "positions": "rope",
                                        "n_head": 4, "n_kv_head": 2}])
def test_padding_changes_no_logits(family: str, extra: dict[str, Any]) -> None:
    torch.manual_seed(0)
    for pooling in ("auto", "cls", "mean", "last"):
        m = build_model(ModelConfig(family=family, n_classes=3, seq_len=12, pooling=pooling,
                                    **extra)).eval()
        x = torch.randint(0, 256, (2, 12))
        short = x[:1, :7]
        padded = x.clone()
        padded[0, 7:] = PAD_ID
        more = padded.clone()
        more[1, 9:] = PAD_ID  # another row's padding changes nothing in row 0 either
        with torch.no_grad():
            alone, a, b = m(short)[0], m(padded)[0], m(more)[0]
        assert torch.allclose(alone, a, atol=1e-5) and torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt", "bert"])
@pytest.mark.parametrize("extra", [{}, {"tie_embeddings": False, "bias": False},
                                   {"mlp": "swiglu", "norm": "rmsnorm"}])
def test_classifier_names_match_estimator(family: str, extra: dict[str, Any]) -> None:
    m = ModelConfig(family=family, n_classes=5, **extra)
    model = build_model(m)
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == est.param_shapes(m)
    assert est.count_params(m).total == sum(p.numel() for p in model.parameters())
    assert "lm_head.weight" not in dict(model.named_parameters())


def test_stories_are_seeded_balanced_and_written(tmp_path: Path) -> None:
    rows = story_rows(400, seed=1)
    assert rows[:50] == story_rows(50, seed=1) and rows != story_rows(400, seed=2)
    counts = {r: sum(x["label"] == r for x in rows) for r in ROOMS}
    assert min(counts.values()) > 70  # ~100 each
    for x in rows[:20]:  # the answer: the asked object's box's room
        facts = x["text"].split(". ")
        obj = x["text"].rsplit("where is the ", 1)[1].rstrip("?")
        box = next(f.split(" is in the ")[1].rstrip(".") for f in facts
                   if f.startswith(f"the {obj} is in"))
        room = next(f.split(" is in the ")[1].rstrip(".") for f in facts
                    if f.startswith(f"the {box} is in"))
        assert room == x["label"]
    assert "where" not in story_text(2000) and len(story_text(2000)) >= 2000
    files = write_stories(tmp_path, n_labeled=30, n_unlabeled_bytes=500, seed=0)
    assert len(read_labeled(str(files.csv), "data.source", "text", "label")) == 30
    assert files.jsonl.read_text().count("\n") == 30 and files.txt.stat().st_size >= 500


def tiny_cfg(source: Path, family: str, steps: int, **more: Any) -> RunConfig:
    values = {
        "task": "classification", "data.source": str(source), "data.tokenizer": "char",
        "data.val_fraction": 0.15, "model.family": family, "model.seq_len": 80,
        "model.n_layer": 2, "model.d_model": 32, "train.max_steps": steps,
        "train.eval_interval": 40, "train.micro_batch": 16, "train.threads": 1,
        "optim.lr": 3e-3, "train.checkpoint_seconds": None, "schedule.warmup_steps": 10,
    }
    return with_values(load_config("tiny"), {**values, **more})


@pytest.fixture(scope="module")
def stories(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return write_stories(tmp_path_factory.mktemp("stories"), n_labeled=1200,
                         n_unlabeled_bytes=40_000, seed=0, pairs=1)


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_tiny_models_beat_the_majority_baseline(family: str, stories: Any,
                                                tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = train(tiny_cfg(stories.jsonl, family, 80), run_dir=run)
    result = json.loads((run / "result.json").read_text())
    assert r.status == "completed" and r.labels == sorted(ROOMS)
    evals = [m for m in RunDir(run).read_metrics() if m["kind"] == "eval"]
    assert {"val_loss", "val_accuracy", "val_f1"} <= evals[-1].keys()
    saved = load_config(str(run / "config.yaml"))
    assert saved.data.labels == sorted(ROOMS) and saved.model.n_classes == 4
    base = load_labeled(saved.data, 80, PAD_ID, saved.seed).info["majority_val_accuracy"]
    assert r.val_accuracy is not None and r.val_accuracy > base + 0.2, (r.val_accuracy, base)
    assert result["best_eval"]["step"] in {e["step"] for e in evals}


def test_batches_cover_each_epoch_once() -> None:
    n, mb = 10, 4
    seen = np.concatenate([batch_rows(n, mb, 1, 0, step, 0) for step in range(5)])  # 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert list(seen[:10]) != list(seen[10:20])  # reshuffled
    assert (batch_rows(n, mb, 2, 0, 1, 1) == seen.reshape(-1)[12:16]).all()  # (step·accum+m)


def test_t5_text_to_text(stories: Any, tmp_path: Path) -> None:
    r = train(tiny_cfg(stories.jsonl, "t5", 40, **{"model.positions": "relative",
                                                     "train.eval_interval": 20}),
              run_dir=tmp_path / "run")
    cfg = load_config(str(tmp_path / "run" / "config.yaml"))
    assert r.status == "completed" and r.val_accuracy is not None and r.val_f1 is not None
    assert cfg.model.target_len == max(len(y) for y in ROOMS)  # char tokens of the longest
    model = build_model(cfg.model).eval()
    x = torch.randint(0, 20, (3, 10))
    x[1, 6:] = PAD_ID
    targets = torch.tensor([[3, 4, -100], [5, -100, -100]])
    with torch.no_grad():
        scores = t5_label_scores(model, x, targets)
        for k in range(2):  # total log-likelihood = -(mean loss) x tokens, label by label
            _, loss = model(x[1:2], targets[k : k + 1])
            assert scores[1, k].item() == pytest.approx(-loss.item() * (k == 0 and 2 or 1),
                                                         rel=1e-5)


def pretrain(source: Path, family: str, run: Path, **more: Any) -> Path:
    cfg = with_values(load_config("tiny"), {
        "data.source": str(source), "data.tokenizer": "char", "model.family": family,
        "model.seq_len": 80, "model.n_layer": 2, "model.d_model": 32, "train.max_steps": 3,
        "train.micro_batch": 4, "train.eval_tokens": 320, "train.checkpoint_seconds": None,
        **more,
    })
    train(cfg, run_dir=run)
    return run


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_init_from_a_pretrained_run(family: str, stories: Any, tmp_path: Path) -> None:
    more = {"model.positions": "relative"} if family == "t5" else {}
    run = pretrain(stories.txt, family, tmp_path / "pre", **more)
    cfg = tiny_cfg(stories.jsonl, family, 2, **{"train.init_from": str(run),
                                                "data.tokenizer": "byte", **more})
    r = train(cfg, run_dir=tmp_path / "cls")
    assert r.status == "completed"
    pre = load_checkpoint(run)["model"]
    done = load_config(str(tmp_path / "cls" / "config.yaml"))
    assert done.model.vocab_size == pre[next(k for k in pre if k in ("wte.weight",
                                                                      "shared.weight"))].shape[0]
    model = build_model(done.model)
    init_backbone(model, done, str(run))
    own = model.state_dict()
    for k, v in pre.items():
        if not k.startswith(("lm_head.", "head.")) or family == "t5":
            assert torch.equal(own[k], v), k
    assert "classifier.weight" in own or family == "t5"


def test_init_from_another_family_exits_2(stories: Any, tmp_path: Path) -> None:
    run = pretrain(stories.txt, "bert", tmp_path / "pre")
    res = runner.invoke(app, [
        "train", "tiny", "--run-dir", str(tmp_path / "run"), "--max-steps", "1",
        "--data", str(stories.jsonl), "--set", "task=classification",
        "--set", f"train.init_from={run}", "--set", "model.seq_len=80",
    ])
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert "train.init_from" in text and "bert" in text and len(text.splitlines()) == 1, text
    shaped = runner.invoke(app, [
        "train", "tiny", "--run-dir", str(tmp_path / "run2"), "--max-steps", "1",
        "--data", str(stories.jsonl), "--set", "task=classification", "--set",
        "model.family=bert", "--set", f"train.init_from={run}", "--set", "model.seq_len=80",
        "--set", "model.d_model=48",
    ])
    assert shaped.exit_code == 2 and "does not match" in shaped.output, shaped.output
    assert len(shaped.output.strip().splitlines()) == 1


def test_early_stopping_on_accuracy_restores_best(stories: Any, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    script = iter([0.3, 0.6, 0.5, 0.4, 0.2, 0.1])
    weights: dict[int, dict[str, torch.Tensor]] = {}

    def scripted(s: Any, model: Any, mb: int) -> dict[str, float | None]:
        weights[len(weights)] = {k: v.clone() for k, v in model.state_dict().items()}
        acc = next(script)
        return {"val_loss": 1.0 - acc, "val_bpb": None, "val_accuracy": acc, "val_f1": acc}

    monkeypatch.setattr(train_batches, "evaluate_classifier", scripted)
    cfg = tiny_cfg(stories.jsonl, "gpt", 100, **{
        "train.eval_interval": 5, "train.patience": 2, "train.monitor": "val_accuracy",
        "model.n_layer": 1})
    r = train(cfg, run_dir=tmp_path / "run")
    assert r.status == "early_stopped" and r.steps == 20 and "val_accuracy" in r.stop_reason
    assert r.best_eval is not None and r.best_eval["step"] == 10
    assert r.best_eval["val_accuracy"] == 0.6 and r.restored_best and r.val_accuracy == 0.4
    run = RunDir(tmp_path / "run")
    last = run.latest_checkpoint()
    assert last is not None and last.name == "step_00000020.pt"
    final = load_checkpoint(last)["model"]
    for k, v in final.items():
        assert torch.equal(v, weights[1][k]), k  # the weights evaluated at step 10
    assert any(not torch.equal(final[k], weights[3][k]) for k in final)  # not step 20's


def test_resume_a_classification_run(stories: Any, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_cfg(stories.jsonl, "bert", 6, **{"train.eval_interval": 3, "model.n_layer": 1,
                                                "data.labels": ["hall", "kitchen", "garden",
                                                                "bedroom"]})
    first = train(cfg, run_dir=run)
    assert first.labels == ["hall", "kitchen", "garden", "bedroom"]  # data.labels' order kept
    again = with_values(load_config(str(run / "config.yaml")), {"train.max_steps": 9})
    r = train(again, resume=run)
    assert r.steps == 9 and r.labels == first.labels
    steps = [m["step"] for m in RunDir(run).read_metrics() if m["kind"] == "eval"]
    assert steps == [3, 6, 9]


@pytest.mark.parametrize("sets, needle", [
    (["train.monitor=val_accuracy"], "train.monitor: val_accuracy needs task: classification"),
    (["model.target_len=4"], "target_len applies to family t5 only"),
    (["task=classification", "finetune.method=lora"], "classification trains full"),
    (["task=regression"], "task"),
    (["model.pooling=max"], "model.pooling"),
    (["train.monitor_mode=up"], "train.monitor_mode"),
])
def test_bad_task_settings_exit_2_with_one_line(sets: list[str], needle: str,
                                                tmp_path: Path) -> None:
    args = [a for s in sets for a in ("--set", s)]
    res = runner.invoke(app, ["train", "tiny", "--max-steps", "1", "--run-dir",
                              str(tmp_path / "run"), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output and len(res.output.strip().splitlines()) == 1, res.output
