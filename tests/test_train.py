from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from budgetlm.config import OPTIMIZERS, RunConfig, load_config
from budgetlm.errors import UserError
from budgetlm.train import StopRun, TrainResult, train

MARKOV = "synthetic:markov:order=1,vocab=16,seed=0,tokens=200000"


def tiny(*overrides: str, source: str = MARKOV) -> RunConfig:
    base = [
        f"data.source={source}",
        "model.seq_len=32",
        "train.micro_batch=8",
        "train.max_steps=30",
        "train.eval_interval=10",
        "train.eval_tokens=2048",
        "train.log_interval=1",
    ]
    return load_config("tiny", base + list(overrides))


def train_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if '"train"' in x]


def curve(run_dir: Path) -> list[tuple[int, float, float]]:
    """(step, loss, lr) of each logged training step."""
    return [(r["step"], r["loss"], r["lr"]) for r in train_records(run_dir)]


def interrupted_then_resumed(cfg: RunConfig, run_dir: Path,
                             at: int) -> tuple[TrainResult, TrainResult]:
    """Train `cfg` into `run_dir`, Ctrl-C at the evaluation of step `at`, then resume it: the
    interrupted run's result and the resumed one's."""
    def interrupt(rec: dict) -> None:
        if rec["step"] == at:
            raise KeyboardInterrupt

    part = train(cfg, run_dir=run_dir, on_eval=interrupt)
    return part, train(cfg, resume=run_dir)


def test_run_directory_is_complete(tmp_path: Path) -> None:
    res = train(tiny(), run_dir=tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "env.json", "metrics.jsonl", "result.json", "tokenizer"):
        assert (run / name).exists(), name
    assert (run / "checkpoints" / "best.pt").exists()
    assert list((run / "checkpoints").glob("step_*.pt"))
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed" and result["stop_reason"] == "max_steps"
    assert result["steps"] == 30 and result["tokens"] == 30 * 8 * 32
    assert result["val_loss"] > 0 and result["val_bpb"] > 0
    assert result["tokens_per_s"] > 0
    assert "memory_bytes" in result["predicted"]
    env = json.loads((run / "env.json").read_text())
    assert env["torch"] == torch.__version__
    assert res.val_loss == pytest.approx(result["val_loss"])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_lowers_the_loss(name: str, tmp_path: Path) -> None:
    lr = {"sgd": 0.3, "lion": 3e-4, "muon": 3e-3, "adafactor": 1e-2}.get(name, 3e-3)
    res = train(tiny(f"optim.name={name}", f"optim.lr={lr}"), run_dir=tmp_path / name)
    first = train_records(tmp_path / name)[0]["loss"]
    assert res.status == "completed"
    assert res.train_loss < first - 0.1, (first, res.train_loss)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_paths(precision: str, tmp_path: Path) -> None:
    res = train(tiny(f"train.precision={precision}", "train.max_steps=6"), run_dir=tmp_path / "r")
    assert res.status == "completed"
    assert math.isfinite(res.val_loss)


def _one_step_weights(micro: int, accum: int, tmp: Path) -> tuple[float, dict]:
    cfg = tiny(f"train.micro_batch={micro}", f"train.grad_accum={accum}", "train.max_steps=1",
               "optim.grad_clip=null")
    res = train(cfg, run_dir=tmp)
    state = torch.load(tmp / "checkpoints" / "step_00000001.pt", weights_only=False)
    return res.train_loss, state["model"]


def test_gradient_accumulation_equals_large_batch(tmp_path: Path) -> None:
    loss_a, w_a = _one_step_weights(4, 4, tmp_path / "a")
    loss_b, w_b = _one_step_weights(16, 1, tmp_path / "b")
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    for k in w_a:
        assert torch.allclose(w_a[k], w_b[k], atol=1e-5), k


def test_early_stopping(tmp_path: Path) -> None:
    # lr so small the val loss cannot improve by min_delta: stops after `patience` evals
    cfg = tiny("optim.lr=1e-9", "train.patience=2", "train.min_delta=0.5", "train.max_steps=200",
               "train.eval_interval=5")
    res = train(cfg, run_dir=tmp_path / "r")
    assert res.status == "early_stopped"
    assert res.steps == 15  # evals at 5 (best), 10 and 15 (no gain twice)


def test_time_cap_is_honored(tmp_path: Path) -> None:
    cfg = tiny("train.max_steps=null", "train.max_time=3", "train.eval_interval=1000")
    res = train(cfg, run_dir=tmp_path / "r")
    assert res.stop_reason == "max_time"
    step = res.train_seconds / res.steps
    assert res.train_seconds <= 3 * 1.02 + step + 0.5  # + final eval margin
    records = train_records(tmp_path / "r")
    peak = max(r["lr"] for r in records)
    assert records[-1]["lr"] < 0.6 * peak  # the schedule followed the clock: annealed at the cap


def test_nan_loss_ends_run_as_diverged(tmp_path: Path) -> None:
    cfg = tiny("optim.name=sgd", "optim.lr=1e30", "optim.grad_clip=null", "optim.momentum=0",
               "train.max_steps=50")
    res = train(cfg, run_dir=tmp_path / "r")
    assert res.status == "diverged"
    assert res.steps < 50


def test_resume_reproduces_the_loss_curve_bit_for_bit(tmp_path: Path) -> None:
    cfg = tiny("train.max_steps=24", "train.eval_interval=6", "model.dropout=0.1")
    train(cfg, run_dir=tmp_path / "full")
    part, resumed = interrupted_then_resumed(cfg, tmp_path / "part", at=12)
    assert part.status == "interrupted" and part.steps == 12
    assert resumed.steps == 24
    assert curve(tmp_path / "full") == curve(tmp_path / "part")


def test_stop_run_from_callback(tmp_path: Path) -> None:
    def prune(rec: dict) -> None:
        raise StopRun("pruned", "median rule")

    res = train(tiny(), run_dir=tmp_path / "r", on_eval=prune)
    assert res.status == "pruned" and res.steps == 10


def test_bert_masked_lm_trains(tmp_path: Path) -> None:
    cfg = load_config(
        "bert-tiny",
        [f"data.source={MARKOV}", "model.seq_len=32", "train.max_steps=150",
         "train.eval_interval=75", "train.eval_tokens=2048", "train.log_interval=1"],
    )
    res = train(cfg, run_dir=tmp_path / "r")
    recs = train_records(tmp_path / "r")
    assert res.status == "completed"
    assert res.train_loss < recs[0]["loss"] - 0.3
    assert res.val_loss < math.log(16) + 0.1


def test_init_from_starts_with_trained_weights(tmp_path: Path) -> None:
    first = train(tiny(), run_dir=tmp_path / "a")
    cfg = tiny("train.max_steps=1", f"train.init_from={tmp_path / 'a'}", "optim.lr=1e-9")
    second = train(cfg, run_dir=tmp_path / "b")
    assert second.val_loss == pytest.approx(first.best_val_loss, abs=0.05)


def test_no_cap_is_a_user_error() -> None:
    cfg = tiny("train.max_steps=null")
    with pytest.raises(UserError, match="no cap"):
        train(cfg)


def test_activation_checkpointing_keeps_the_loss_and_lowers_the_estimate(tmp_path: Path) -> None:
    from budgetlm.estimate import memory_breakdown

    off = tiny("train.max_steps=5")
    on = tiny("train.max_steps=5", "train.activation_checkpointing=true")
    train(off, run_dir=tmp_path / "off")
    train(on, run_dir=tmp_path / "on")
    a = [r["loss"] for r in train_records(tmp_path / "off")]
    b = [r["loss"] for r in train_records(tmp_path / "on")]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5
    assert memory_breakdown(on).activations < memory_breakdown(off).activations


def test_gpt_reaches_the_markov_entropy_floor(tmp_path: Path) -> None:
    source = "synthetic:markov:order=2,vocab=8,tokens=1000000"
    cfg = load_config("tiny", [
        f"data.source={source}", "model.seq_len=64", "optim.lr=3e-3", "train.max_steps=null",
        "train.max_time=30", "train.eval_interval=100000", "train.eval_tokens=16384",
    ])
    res = train(cfg, run_dir=tmp_path / "r")
    assert res.entropy_rate is not None
    assert res.train_seconds < 60
    assert res.val_loss <= res.entropy_rate + 0.05, (res.val_loss, res.entropy_rate)


def test_token_and_flop_caps_stop_the_run(tmp_path: Path) -> None:
    res = train(tiny("train.max_steps=null", "train.max_tokens=2560"), run_dir=tmp_path / "t")
    assert res.stop_reason == "max_tokens" and res.tokens == 2560  # 10 steps of 8 x 32
    per_step = res.model_flops / res.steps
    cfg = tiny("train.max_steps=null", f"train.max_flops={per_step * 7}")
    res = train(cfg, run_dir=tmp_path / "f")
    assert res.stop_reason == "max_flops" and res.steps == 7


def test_auto_micro_batch_is_measured_and_recorded(tmp_path: Path) -> None:
    res = train(tiny("train.micro_batch=auto", "train.max_steps=3"), run_dir=tmp_path / "r")
    assert res.status == "completed"
    assert res.micro_batch in {1, 2, 4, 8, 16, 32, 64}
    saved = load_config(str(tmp_path / "r" / "config.yaml"))
    assert saved.train.micro_batch == res.micro_batch


def test_time_cap_holds_inside_a_long_accumulation(tmp_path: Path) -> None:
    cfg = tiny("train.grad_accum=1000000", "train.max_steps=null", "train.max_time=2")
    res = train(cfg, run_dir=tmp_path / "r")
    assert res.steps == 0 and res.tokens == 0
    assert res.train_seconds < 2 + 0.5, res.train_seconds
    assert res.stop_reason.startswith("max_time: not one optimizer step finished")
    assert "train.grad_accum=1000000" in res.stop_reason
    assert not list((tmp_path / "r" / "checkpoints").glob("step_*.pt"))


def test_time_cap_abandons_an_unfinished_step(tmp_path: Path) -> None:
    # a constant lr: the weights after k steps do not depend on how the run was capped
    common = ("train.grad_accum=32", "schedule.name=constant", "schedule.warmup_steps=0",
              "train.eval_interval=1000")
    timed = train(tiny(*common, "train.max_steps=null", "train.max_time=2"),
                  run_dir=tmp_path / "timed")
    assert timed.stop_reason == "max_time" and timed.steps >= 1
    step = timed.measured["step_seconds_median"]
    assert timed.train_seconds < 2 + step / 4, (timed.train_seconds, step)  # ~ one micro-step
    train(tiny(*common, f"train.max_steps={timed.steps}"), run_dir=tmp_path / "steps")
    name = f"step_{timed.steps:08d}.pt"
    a = torch.load(tmp_path / "timed" / "checkpoints" / name, weights_only=False)["model"]
    b = torch.load(tmp_path / "steps" / "checkpoints" / name, weights_only=False)["model"]
    for k in a:  # the abandoned step's gradients were dropped, never applied
        assert torch.equal(a[k], b[k]), k


def test_model_this_machine_cannot_hold_is_refused_before_it_is_built(tmp_path: Path) -> None:
    """A billion layers: one line naming what it needs and what there is, at once, and the run
    directory it would have made is not left behind."""
    cfg = tiny("model.n_layer=1000000000", "train.max_steps=2")
    with pytest.raises(UserError, match=r"needs about .* at its peak .* this cpu has"):
        train(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_failed_run_leaves_no_empty_run_dir(tmp_path: Path) -> None:
    cfg = tiny("train.max_steps=2", source=str(tmp_path / "missing.txt"))
    with pytest.raises(UserError):
        train(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_plateau_starts_the_wsd_cooldown_instead_of_stopping(tmp_path: Path) -> None:
    # as test_early_stopping, but patience running out at step 15 starts the wsd cooldown there
    # (train.on_plateau cooldown): 25 more steps (decay_fraction of 100) down to min_lr_ratio
    cfg = tiny("optim.lr=1e-9", "train.patience=2", "train.min_delta=0.5", "train.max_steps=100",
               "train.eval_interval=5", "schedule.name=wsd", "schedule.decay_fraction=0.25",
               "schedule.min_lr_ratio=0", "train.on_plateau=cooldown")
    res = train(cfg, run_dir=tmp_path / "r")
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    cooldown = [json.loads(x) for x in lines if '"cooldown"' in x]
    assert [r["step"] for r in cooldown] == [15] and cooldown[0]["progress"] == pytest.approx(0.15)
    assert res.status == "early_stopped" and res.steps == 40
    assert "cooled down from 15% of the run" in res.stop_reason
    lr = {r["step"]: r["lr"] for r in train_records(tmp_path / "r")}
    assert lr[15] == lr[16] == pytest.approx(1e-9)  # the step that starts the cooldown: still 1
    for step in range(17, 41):  # the lr of step n is set at progress (n - 1) / 100
        since = (step - 1) / 100 - 0.15
        assert lr[step] == pytest.approx(1e-9 * (1 - math.sqrt(since / 0.25)), abs=1e-15), step
    assert lr[40] < 0.1e-9

    # resumed in the middle of that cooldown: the same steps, losses and lrs
    part, resumed = interrupted_then_resumed(cfg, tmp_path / "part", at=25)
    assert part.status == "interrupted" and part.steps == 25
    assert resumed.status == "early_stopped" and resumed.steps == 40
    assert curve(tmp_path / "r") == curve(tmp_path / "part")


def test_cooldown_on_plateau_needs_wsd() -> None:
    with pytest.raises(UserError, match="train.on_plateau: cooldown needs schedule.name wsd"):
        tiny("schedule.name=cosine", "train.on_plateau=cooldown")
