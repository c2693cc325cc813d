"""DDP through torchrun on CPU (gloo): same global batch and seed -> same loss curve."""

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


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if '"train"' in x]


def _cmd(*prefix: str, run: Path) -> list[str]:
    args = [*prefix, "-m", "budgetlm", "train", "tiny", "--run-dir", str(run), "--quiet", "--json"]
    for s in SETS:
        args += ["--set", s]
    return args


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_two_ranks_match_single_process(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    single = subprocess.run(
        _cmd(sys.executable, run=tmp_path / "one"), capture_output=True, text=True, env=env,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run(
        _cmd("torchrun", "--standalone", "--nproc-per-node", "2", run=tmp_path / "two"),
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["world_size"] == 2
    assert json.loads(ddp.stdout)["world_size"] == 2  # only rank 0 printed
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-4
