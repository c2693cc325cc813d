from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from budgetlm.cli import app

runner = CliRunner()


def make_inputs(t: Path) -> dict[str, tuple[list[str], str]]:
    (t / "empty.txt").write_text("")
    (t / "short.txt").write_text("ab")
    (t / "blob.bin").write_bytes(bytes(range(256)) * 64)
    (t / "bad.jsonl").write_text('{"text": "fine"}\n{not json\n')
    (t / "nockpt").mkdir()
    return {
        "missing_file": (["--data", str(t / "missing.txt")], "no such file"),
        "empty_corpus": (["--data", str(t / "empty.txt")], "empty"),
        "shorter_than_sequence": (["--data", str(t / "short.txt")], "shorter than one sequence"),
        "unknown_tokenizer": (["--tokenizer", "wordpiece"], "data.tokenizer"),
        "non_text_file": (["--data", str(t / "blob.bin")], "not a UTF-8 text file"),
        "bad_jsonl_line": (["--data", str(t / "bad.jsonl")], "line 2"),
        "negative_cap": (["--max-time", "-5"], "max-time"),
        "resume_without_checkpoint": (["--resume", str(t / "nockpt")], "no checkpoint"),
        "unknown_builtin": (["--data", "builtin:nothing"], "builtin:nothing"),
    }


CASES = [
    "missing_file", "empty_corpus", "shorter_than_sequence", "unknown_tokenizer",
    "non_text_file", "bad_jsonl_line", "negative_cap", "resume_without_checkpoint",
    "unknown_builtin",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_train_input_exits_2(case: str, tmp_path: Path) -> None:
    args, needle = make_inputs(tmp_path)[case]
    res = runner.invoke(app, ["train", "tiny", "--run-dir", str(tmp_path / "run"), *args])
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert needle in text, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text


def test_train_and_sample_through_cli(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    run = tmp_path / "run"
    res = runner.invoke(
        app,
        ["train", "tiny", "--data", str(text), "--tokenizer", "char", "--max-steps", "20",
         "--run-dir", str(run), "--json"],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["status"] == "completed" and out["val_bpb"] > 0
    res = runner.invoke(app, ["sample", str(run), "--prompt", "the ", "--tokens", "20"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("the ")


def test_console_script_trains_tiny_on_the_default_corpus(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    exe = Path(sys.executable).with_name("budgetlm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "budgetlm"]
    t0 = time.perf_counter()
    out = subprocess.run(
        [*cmd, "train", "tiny", "--run-dir", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, env={**os.environ}, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert time.perf_counter() - t0 < 60
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "completed" and result["val_bpb"] < 4.0


def _capture_train(monkeypatch: pytest.MonkeyPatch) -> list:
    """Replace the trainer with one that records the config it is given."""
    import types

    import budgetlm.train

    seen: list = []

    def fake_train(cfg, run_dir=None, resume=None, progress=False):
        seen.append(cfg)
        return types.SimpleNamespace(status="completed", to_dict=lambda: {"status": "completed"})

    monkeypatch.setattr(budgetlm.train, "train", fake_train)
    return seen


def test_max_tokens_accepts_scientific_notation(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture_train(monkeypatch)
    res = runner.invoke(app, ["train", "--max-tokens", "2e6", "--max-steps", "20k",
                              "--max-time", "10m", "--json"])
    assert res.exit_code == 0, res.output
    cfg = seen[-1]
    assert cfg.name == "tiny"  # no CONFIG: the default preset
    assert cfg.train.max_tokens == 2_000_000 and isinstance(cfg.train.max_tokens, int)
    assert cfg.train.max_steps == 20_000 and cfg.train.max_time == 600.0
    res = runner.invoke(app, ["train", "tiny", "--max-tokens", "400M", "--max-time", "90",
                              "--json"])
    assert res.exit_code == 0, res.output
    assert seen[-1].train.max_tokens == 400_000_000 and seen[-1].train.max_time == 90.0


@pytest.mark.parametrize("args, needle", [
    (["--max-tokens", "2.5"], "--max-tokens: expected a whole number"),
    (["--max-steps", "inf"], "--max-steps"),
    (["--max-steps", "1e400"], "--max-steps"),
    (["--max-tokens", "0"], "--max-tokens: must be positive"),
    (["--max-steps", "lots"], "--max-steps: expected a number"),
    (["--max-time", "10parsecs"], "--max-time"),
    (["--max-time", "0s"], "--max-time"),
])
def test_bad_cap_numbers_are_one_line_errors(args: list[str], needle: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture_train(monkeypatch)
    res = runner.invoke(app, ["train", "tiny", *args])
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert needle in text and len(text.splitlines()) == 1, text
    assert not seen


def test_train_config_argument_with_resume_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--max-steps", "2", "--set", "model.n_layer=1",
                              "--run-dir", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"] == 2
    before = (run / "config.yaml").read_text()

    res = runner.invoke(app, ["train", "nanogpt-cpu", "--resume", str(run), "--json"])
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert len(text.splitlines()) == 1 and "nanogpt-cpu" in text, text
    assert (run / "config.yaml").read_text() == before

    res = runner.invoke(app, ["train", "--resume", str(run), "--max-steps", "4", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"] == 4
    from budgetlm.config import load_config

    assert load_config(str(run / "config.yaml")).model.n_layer == 1  # the run's own config
