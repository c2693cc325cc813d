"""DDP through torchrun on CPU (gloo): same global batch and seed -> same loss curve. The helpers
here also serve tests/test_fsdp.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SETS = [
    "data.source=synthetic:markov:order=1,vocab=16,tokens=100000",
    "model.seq_len=32", "train.micro_batch=4", "train.grad_accum=4", "train.max_steps=6",
    "train.log_interval=1", "train.eval_interval=3", "train.eval_tokens=1024",
]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
SINGLE = (sys.executable,)
TWO_RANKS = ("torchrun", "--standalone", "--nproc-per-node", "2")
needs_torchrun = pytest.mark.skipif(shutil.which("torchrun") is None, reason="no torchrun")


def losses(run: Path) -> list[float]:
    """The training loss of each logged step of a run."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if '"train"' in x]


def train_cmd(*prefix: str, run: Path, sets: list[str] = SETS, resume: bool = False) -> list[str]:
    """`budgetlm train tiny` (or `--resume`) behind `prefix` (python or torchrun)."""
    where = ["--resume", str(run)] if resume else ["tiny", "--run-dir", str(run)]
    args = [*prefix, "-m", "budgetlm", "train", *where, "--quiet", "--json"]
    for s in sets:
        args += ["--set", s]
    return args


def run_ok(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `cmd` (at most 300 s); it must succeed."""
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@needs_torchrun
def test_torchrun_two_ranks_match_single_process(tmp_path: Path) -> None:
    run_ok(train_cmd(*SINGLE, run=tmp_path / "one"))
    ddp = run_ok(train_cmd(*TWO_RANKS, run=tmp_path / "two"))
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["world_size"] == 2
    assert json.loads(ddp.stdout)["world_size"] == 2  # only rank 0 printed
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-4


def lrs(run: Path) -> list[tuple[int, float]]:
    """(step, lr) of each logged training step of a run."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["lr"]) for r in map(json.loads, lines) if r["kind"] == "train"]


@needs_torchrun
def test_torchrun_two_ranks_cool_down_on_a_plateau_together(tmp_path: Path) -> None:
    # patience runs out at step 15 (lr too small to gain min_delta): both ranks start the wsd
    # cooldown at the same step and stop together at its end, as one process does
    sets = [*SETS[:-3], "train.max_steps=40", "train.eval_interval=5", "train.log_interval=1",
            "train.eval_tokens=1024", "optim.lr=1e-9", "train.patience=2", "train.min_delta=0.5",
            "schedule.name=wsd", "schedule.decay_fraction=0.25", "train.on_plateau=cooldown"]
    run_ok(train_cmd(*SINGLE, run=tmp_path / "one", sets=sets))
    run_ok(train_cmd(*TWO_RANKS, run=tmp_path / "two", sets=sets))
    for run in ("one", "two"):
        result = json.loads((tmp_path / run / "result.json").read_text())
        assert result["status"] == "early_stopped" and result["steps"] == 25, result
    one, two = lrs(tmp_path / "one"), lrs(tmp_path / "two")
    assert one == pytest.approx(two) and len(one) == 25 and one[-1][1] < one[15][1]
