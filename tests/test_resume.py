"""Nothing lost: periodic checkpoints, resume from the newest loadable one after a kill, run
directories that are never overwritten, torn metrics lines, configs that no longer match."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from budgetlm.cli import app
from budgetlm.config import RunConfig, load_config
from budgetlm.errors import UserError
from budgetlm.train import resolve_train_config, train
from budgetlm.train.rundir import RunDir

MARKOV = "synthetic:markov:order=1,vocab=16,seed=0,tokens=200000"
RESUMED = re.compile(r"resume .*: continuing from step (\d+) \((\S+)\)")


def tiny(*overrides: str) -> RunConfig:
    base = [
        f"data.source={MARKOV}", "model.seq_len=32", "train.micro_batch=8", "train.max_steps=20",
        "train.eval_interval=1000", "train.eval_tokens=2048", "train.log_interval=1",
        "train.checkpoint_interval=5", "train.keep_last=10",
    ]
    return load_config("tiny", base + list(overrides))


def interrupted_run(run: Path, at_step: int, *overrides: str) -> RunConfig:
    """A run stopped (as Ctrl-C would) at the eval of `at_step`; its config."""
    cfg = tiny(f"train.eval_interval={at_step}", *overrides)

    def stop(rec: dict) -> None:
        raise KeyboardInterrupt

    res = train(cfg, run_dir=run, on_eval=stop)
    assert res.status == "interrupted" and res.steps == at_step
    return cfg


def train_steps(run: Path) -> list[int]:
    return [r["step"] for r in RunDir(run).read_metrics() if r.get("kind") == "train"]


def one_line_error(output: str, needle: str) -> None:
    text = output.strip()
    assert needle in text, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text


def truncate(path: Path, keep: int = 200) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_checkpoints_are_written_by_training_time(tmp_path: Path) -> None:
    cfg = tiny("train.checkpoint_interval=null", "train.checkpoint_seconds=0.2",
               "train.max_steps=null", "train.max_time=1.5", "train.keep_last=100")
    res = train(cfg, run_dir=tmp_path / "r")
    steps = sorted(int(p.stem[5:]) for p in (tmp_path / "r" / "checkpoints").glob("step_*.pt"))
    assert len(steps) >= 4, steps  # about every 0.2 s of 1.5 s, and the last
    assert steps[-1] == res.steps
    assert steps[0] < res.steps / 2, steps  # the first came early, not only at the end


def test_default_config_checkpoints_by_time() -> None:
    t = load_config("tiny").train
    assert t.checkpoint_seconds is not None and 0 < t.checkpoint_seconds <= 600


def test_resume_falls_back_when_newest_checkpoint_is_truncated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "r"
    cfg = interrupted_run(run, 15)
    ckpts = run / "checkpoints"
    (ckpts / "best.pt").unlink()
    truncate(ckpts / "step_00000015.pt")
    capsys.readouterr()
    res = train(cfg, resume=run)
    note = capsys.readouterr().err
    m = RESUMED.search(note)
    assert m and m.group(1) == "10" and m.group(2) == "step_00000010.pt", note
    assert "step_00000015.pt is unreadable" in note, note
    assert res.status == "completed" and res.steps == 20
    assert train_steps(run) == list(range(1, 21))
    assert (ckpts / "step_00000015.pt.unreadable").exists()  # set aside, not deleted
    assert RunDir(run).checkpoints()[0].name in ("step_00000020.pt", "best.pt")


def test_resume_falls_back_to_best_when_every_step_checkpoint_is_truncated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "r"
    cfg = interrupted_run(run, 10)
    ckpts = run / "checkpoints"
    for p in ckpts.glob("step_*.pt"):
        truncate(p, keep=0)
    capsys.readouterr()
    res = train(cfg, resume=run)
    m = RESUMED.search(capsys.readouterr().err)
    assert m and m.group(2) == "best.pt" and m.group(1) == "10"
    assert res.steps == 20 and train_steps(run) == list(range(1, 21))


def test_resume_with_no_loadable_checkpoint_is_one_line_error(tmp_path: Path) -> None:
    run = tmp_path / "r"
    cfg = interrupted_run(run, 10)
    for p in (run / "checkpoints").glob("*.pt"):
        truncate(p, keep=10)
    metrics = (run / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match="no loadable checkpoint") as info:
        train(cfg, resume=run)
    assert "\n" not in str(info.value)
    assert (run / "metrics.jsonl").read_text() == metrics  # nothing thrown away


def test_run_killed_before_its_first_checkpoint_resumes_from_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "r"
    cfg = tiny("train.max_steps=8")
    train(cfg, run_dir=run)
    shutil.rmtree(run / "checkpoints")  # as if killed before the first one was written
    (run / "result.json").unlink()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "st')
    capsys.readouterr()
    again = resolve_train_config(None, resume=run)
    res = train(again, resume=run)
    assert "no checkpoint yet; starting again from step 0" in capsys.readouterr().err
    assert res.status == "completed" and res.steps == 8
    assert train_steps(run) == list(range(1, 9))


def test_resume_of_a_directory_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run directory"):
        resolve_train_config(None, resume=tmp_path / "empty")
    with pytest.raises(UserError, match="no such run directory"):
        resolve_train_config(None, resume=tmp_path / "missing")


def test_torn_metrics_line_is_dropped_on_resume(tmp_path: Path) -> None:
    run = tmp_path / "r"
    cfg = interrupted_run(run, 10)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "step": 11, "loss": 2.7')  # torn by a kill or a full disk
    assert train_steps(run) == list(range(1, 11))  # read_metrics skips it
    res = train(cfg, resume=run)
    assert res.steps == 20
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(x), dict) for x in lines)
    assert train_steps(run) == list(range(1, 21))


def test_existing_run_dir_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "r"
    train(tiny("train.max_steps=3"), run_dir=run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="already holds a run; use --resume") as info:
        train(tiny("train.max_steps=4", "model.n_layer=1"), run_dir=run)
    assert str(run) in str(info.value) and "\n" not in str(info.value)
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_existing_run_dir_is_refused_by_the_cli(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    res = CliRunner().invoke(app, ["train", "--max-steps", "2", "--run-dir", str(run)])
    assert res.exit_code == 2
    one_line_error(res.output, "already holds a run")


def test_run_dir_naming_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("not a directory")
    with pytest.raises(UserError, match="is a file, not a directory"):
        train(tiny(), run_dir=f)
    with pytest.raises(UserError, match="not a directory"):
        train(tiny(), run_dir=f / "sub")
    assert f.read_text() == "not a directory"


def test_unwritable_run_dir_parent_is_one_line_error(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not available to drop the root capabilities")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps=-all"]
    res = subprocess.run(
        [*drop, sys.executable, "-m", "budgetlm", "train", "--max-steps", "2", "--quiet",
         "--run-dir", str(parent / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    one_line_error(res.stderr + res.stdout, "permission denied")
    assert not (parent / "run").exists()


def test_resume_with_changed_shape_is_one_line_error(tmp_path: Path) -> None:
    run = tmp_path / "r"
    interrupted_run(run, 5)
    path = run / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data["model"]["n_layer"] = 3
    path.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(app, ["train", "--resume", str(run), "--quiet"])
    assert res.exit_code == 2
    needle = "config.yaml no longer matches the checkpoint (model.n_layer: 2 -> 3)"
    one_line_error(res.output, needle)


def test_resume_with_a_config_argument_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "r"
    interrupted_run(run, 5)
    with pytest.raises(UserError, match="--resume continues .* own config; drop CONFIG"):
        resolve_train_config("nanogpt-cpu", resume=run)
    assert resolve_train_config(None).name == "tiny"
    resumed = resolve_train_config(None, resume=run, overrides=["train.max_steps=7"])
    assert resumed.train.max_steps == 7 and resumed.model.seq_len == 32
    with pytest.raises(UserError, match="drop --run-dir"):
        train(resumed, run_dir=tmp_path / "other", resume=run)


def _wait_for_progress(proc: subprocess.Popen[str], run: Path, past: int, limit: float) -> None:
    """Until the process logs a training step beyond `past` (or ends, or `limit` passes)."""
    end = time.monotonic() + limit
    while time.monotonic() < end and proc.poll() is None:
        steps = train_steps(run) if (run / "metrics.jsonl").exists() else []
        if steps and steps[-1] > past:
            return
        time.sleep(0.05)


def test_kill_9_at_random_moments_loses_at_most_one_checkpoint_interval(tmp_path: Path) -> None:
    run, interval, total = tmp_path / "run", 10, 150
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    base = ["train", "--max-steps", str(total), "--quiet",
            "--set", f"train.checkpoint_interval={interval}", "--set", "train.log_interval=1"]
    logged, resumed_at = 0, []
    for kill in range(6):
        args = [*base, "--run-dir", str(run)] if kill == 0 else [*base, "--resume", str(run)]
        err = tmp_path / f"stderr{kill}.txt"
        with err.open("w") as ef:
            proc = subprocess.Popen([sys.executable, "-m", "budgetlm", *args], text=True,
                                    stdout=subprocess.DEVNULL, stderr=ef)
            if kill < 5:
                _wait_for_progress(proc, run, logged, limit=60)
                time.sleep(rng.uniform(0.0, 0.6))
                proc.send_signal(signal.SIGKILL)
            rc = proc.wait(timeout=120)
        note = err.read_text()
        if kill > 0:
            m = RESUMED.search(note)
            start = int(m.group(1)) if m else 0
            assert m or "starting again from step 0" in note, (seed, note)
            assert logged - start <= interval, (seed, kill, logged, start, note)
            resumed_at.append(start)
        if kill == 5:
            assert rc == 0, (seed, note[-2000:])
        steps = train_steps(run) if (run / "metrics.jsonl").exists() else []
        logged = max([logged, *steps]) if kill < 5 else logged
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed" and result["steps"] == total, seed
    assert train_steps(run) == list(range(1, total + 1)), seed
    assert max(resumed_at) > 0, (seed, resumed_at)  # the kills came during training
    assert os.path.exists(run / "checkpoints" / f"step_{total:08d}.pt")
