"""Sharded training through torchrun on CPU (gloo): with the same global batch, ddp and FSDP2
(fsdp/hsdp) runs over two ranks follow the single process's loss curve; sharded checkpoints
resume in one process and single-file ones over two sharded ranks; a global batch that does not
split over the ranks is one line, exit 2."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_ddp import ENV, SINGLE, TWO_RANKS, losses, needs_torchrun, run_ok, train_cmd

from budgetlm.config import load_config
from budgetlm.errors import UserError
from budgetlm.model import build_model
from budgetlm.train.parallel import shard_model, split_global_batch
from budgetlm.train.runtime import Dist

SETS = [  # train.grad_accum stays 1: two ranks split each micro-batch of 8
    "data.source=synthetic:markov:order=1,vocab=16,tokens=100000",
    "model.seq_len=32", "train.micro_batch=8", "train.max_steps=6", "train.log_interval=1",
    "train.eval_interval=3", "train.eval_tokens=1024", "train.checkpoint_interval=3",
    "train.keep_last=10",
]
TOLERANCE = 1e-4


def same_curve(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) == 6 and max(abs(x - y) for x, y in zip(a, b, strict=True)) < TOLERANCE


def cut_back(src: Path, dst: Path, step: int) -> Path:
    """A copy of run `src` as a kill right after its checkpoint of `step` leaves it: later
    checkpoints, the best one and result.json gone (the resume drops the later metrics)."""
    shutil.copytree(src, dst)
    for p in (dst / "checkpoints").iterdir():
        if p.name.startswith("best") or int(p.name[5:13]) > step:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    (dst / "result.json").unlink()
    return dst


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process run every sharded one is compared with."""
    run = tmp_path_factory.mktemp("single") / "run"
    run_ok(train_cmd(*SINGLE, run=run, sets=SETS))
    return run


@needs_torchrun
def test_ddp_with_the_default_accumulation_matches_single_process(
    single: Path, tmp_path: Path
) -> None:
    run = tmp_path / "ddp"
    out = run_ok(train_cmd(*TWO_RANKS, run=run, sets=SETS))
    assert json.loads(out.stdout)["world_size"] == 2
    assert same_curve(losses(run), losses(single)), (losses(run), losses(single))


@needs_torchrun
def test_fsdp_matches_single_process_and_resumes_in_one_process(
    single: Path, tmp_path: Path
) -> None:
    run = tmp_path / "fsdp"
    run_ok(train_cmd(*TWO_RANKS, run=run, sets=[*SETS, "train.parallel=fsdp"]))
    ckpts = run / "checkpoints"
    assert (ckpts / "step_00000003.dcp" / ".metadata").is_file()
    assert (ckpts / "best.dcp" / "trainer.pt").is_file()
    assert not list(ckpts.glob("*.pt")) and not list(ckpts.glob(".*"))  # no temporaries left
    assert same_curve(losses(run), losses(single)), (losses(run), losses(single))

    killed = cut_back(run, tmp_path / "killed", 3)
    out = run_ok(train_cmd(*SINGLE, run=killed, sets=[], resume=True))
    assert "continuing from step 3 (step_00000003.dcp)" in out.stderr, out.stderr[-2000:]
    assert json.loads(out.stdout)["world_size"] == 1
    assert same_curve(losses(killed), losses(single)), (losses(killed), losses(single))


@needs_torchrun
def test_single_file_checkpoint_resumes_sharded_over_two_ranks(
    single: Path, tmp_path: Path
) -> None:
    killed = cut_back(single, tmp_path / "killed", 3)
    out = run_ok(train_cmd(*TWO_RANKS, run=killed, sets=["train.parallel=hsdp"], resume=True))
    assert "continuing from step 3 (step_00000003.pt)" in out.stderr, out.stderr[-2000:]
    assert (killed / "checkpoints" / "step_00000006.dcp" / ".metadata").is_file()
    assert same_curve(losses(killed), losses(single)), (losses(killed), losses(single))


def test_global_batch_that_does_not_split_over_the_ranks_is_one_line(tmp_path: Path) -> None:
    # rank 1 of 2 as torchrun starts it: refused before joining the process group
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    run = tmp_path / "r"
    done = subprocess.run(
        [sys.executable, "-m", "budgetlm", "train", "tiny", "--max-steps", "2", "--quiet",
         "--run-dir", str(run), "--set", "train.micro_batch=3"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    text = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, text[-2000:]
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert "--set train.micro_batch=4" in text and "--set train.grad_accum=2" in text, text
    assert not run.exists()


@pytest.mark.parametrize("world", [1, 2, 3, 4, 6, 8])
def test_every_sequence_of_the_global_batch_is_computed_once(world: int) -> None:
    for mb in range(1, 13):
        for ga in range(1, 7):
            if mb * ga % world:
                with pytest.raises(UserError) as info:
                    split_global_batch(mb, ga, world, 0)
                new_mb = int(re.search(r"train\.micro_batch=(\d+)", str(info.value))[1])
                new_ga = int(re.search(r"train\.grad_accum=(\d+)", str(info.value))[1])
                assert new_mb > mb and new_ga > ga
                split_global_batch(new_mb, ga, world, 0)  # what it suggests splits
                split_global_batch(mb, new_ga, world, 0)
                continue
            seen, shares = [], set()
            for rank in range(world):
                split = split_global_batch(mb, ga, world, rank)
                seen += [(m, row) for m in split.micros for row in split.piece(list(range(mb)))]
                shares.add(len(split.micros) * split.rows)
                if ga % world == 0:  # whole micro-steps, as ddp always took them
                    assert split.parts == 1
                    assert split.micros == tuple(m for m in range(ga) if m % world == rank)
            assert sorted(seen) == [(m, row) for m in range(ga) for row in range(mb)]
            assert shares == {mb * ga // world}


@pytest.mark.parametrize(("parallel", "shape"), [("hsdp", (2, 2)), ("fsdp", (4,))])
def test_sharding_layout_over_four_simulated_ranks(
    parallel: str, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes of two ranks, simulated in this process ("fake" process group): hsdp shards
    within a node and replicates across nodes; fsdp shards over all four."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import Replicate, Shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cfg = load_config("tiny", [f"train.parallel={parallel}"])
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=4)
    try:
        state = SimpleNamespace(cfg=cfg, device="cpu", dist=Dist(0, 4, 0))
        model = shard_model(build_model(cfg.model), state)
        x = torch.randint(0, cfg.model.vocab_size, (2, 16))
        _, loss = model(x, x)
        loss.backward()
    finally:
        dist.destroy_process_group()
    want = (Replicate(), Shard(0)) if parallel == "hsdp" else (Shard(0),)
    for name, p in model.named_parameters():
        assert p.device_mesh.shape == shape and tuple(p.placements) == want, name
        assert p.to_local().shape[0] == -(-p.shape[0] // shape[-1]), name
