"""`budgetlm plan --finetune`: fine-tunes of a pretrained model priced, ranked and exported; a
study tuning a fine-tune. The models are tiny random Llamas saved with `transformers` (no
download); the machine is a fake measured CPU profile unless a test trains."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from budgetlm import hardware
from budgetlm.cli import app
from budgetlm.config import load_config, validate
from budgetlm.errors import UserError
from budgetlm.plan import Budget
from budgetlm.plan.finetune import (
    FULL_LR_FRACTION,
    LORA_LR_MULTIPLIER,
    PATIENCE,
    FinetuneContext,
    Method,
    methods_for,
    price,
    price_all,
)
from budgetlm.plan.finetune_base import load_base
from budgetlm.plan.finetune_plan import plan_finetune

runner = CliRunner()
GiB = 2**30


def _save_llama(path: Path, vocab: int = 256, **over: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
    cfg = LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **{**shape, **over})
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_llama(tmp_path_factory.mktemp("hf") / "llama")


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("data") / "notes.txt"
    p.write_text("".join(f"note {i}: the heron waits by the river, then the fish moves.\n"
                         for i in range(3000)))
    return p


def _fake_cpu() -> hardware.HardwareProfile:
    return hardware.HardwareProfile(
        cpu_model="fake CPU", cpu_cores=2, memory_bytes=16 * GiB, gpus=[], device="cpu",
        matmul_flops={"fp32": 5e10}, bandwidth_bytes_per_s=None, measured=True, datasheet=None,
        device_memory_bytes=16 * GiB, gpu_count=0, created_at="2024-01-01T00:00:00Z",
        torch_version=None, python_version="3.11",
    )


@pytest.fixture
def cpu_machine(monkeypatch: pytest.MonkeyPatch) -> hardware.HardwareProfile:
    prof = _fake_cpu()
    monkeypatch.setattr(hardware, "cached_profile", lambda: prof)
    monkeypatch.setattr(hardware, "load_profile", lambda *a, **k: prof)
    return prof


def _cpu_context(base_dir: Path) -> FinetuneContext:
    from budgetlm.plan.budget import resolve_target

    tgt = resolve_target(Budget(seconds=180), _fake_cpu())
    return FinetuneContext(tgt, load_base(base_dir), 100_000, 10_000, "adamw", 1e-4, "test")


def _plan_json(*args: str) -> dict:
    res = runner.invoke(app, ["plan", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_finetune_plan_prices_full_and_lora_rows(llama: Path, text: Path,
                                                 cpu_machine: object) -> None:
    out = _plan_json("--finetune", str(llama), "--data", str(text), "--time", "3m",
                     "--no-timing")
    assert out["kind"] == "finetune" and out["base"]["kind"] == "hf" and out["timed"] == []
    methods = {c["method"] for c in out["candidates"]}
    assert "full" in methods and {"lora-r8", "lora-r16"} <= methods
    for c in out["candidates"]:
        assert c["feasible"] and c["memory_bytes"] > 0 and c["seconds"] > 0
        assert 0 < c["epochs"] <= 4 and c["steps"] >= 10 and c["lr"] > 0
        assert c["trainable_params"] <= c["params"]
    top = out["top"]
    assert not top["estimate_only"] and top["seconds"] <= 180
    assert out["data"]["tokenizer"] == "byte" and out["data"]["unique_tokens"] > 100_000
    notes = " ".join(out["notes"])
    assert "no loss is predicted" in notes and "Schulman et al. 2025" in notes
    assert "Biderman et al. 2024" in notes and "no tokenizer.json" in notes


def test_lora_trainable_params_equal_peft_all_linear(llama: Path) -> None:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(llama),
                                peft.LoraConfig(r=8, target_modules="all-linear"))
    trainable, total = model.get_nb_trainable_parameters()
    c = price(Method("lora", 8), "fp32", 64, _cpu_context(llama))
    assert c is not None and c.trainable_params == trainable
    assert c.params == total - trainable  # the base model's own
    full = price(Method("full"), "fp32", 64, _cpu_context(llama))
    assert full is not None and full.trainable_params == full.params


@pytest.fixture
def one_thread() -> object:
    """torch on one thread while the test runs: timed steps and the trainer's steps then vary
    less when other processes share this machine's cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield None
    torch.set_num_threads(threads)


def test_timed_fine_tune_plan_predicts_what_its_training_runs_at(
        llama: Path, text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        one_thread: object) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hardware, "cached_profile", _fake_cpu)
    out = tmp_path / "plan.yaml"
    res = runner.invoke(app, ["plan", "--finetune", str(llama), "--data", str(text), "--time",
                              "3m", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "fine-tunes of llama" in res.output and "ᵗ" in res.output
    planned = json.loads(out.with_suffix(".json").read_text())
    top = planned["top"]
    assert top["time_source"] == "timed" and top["name"] in planned["timed"]
    assert top["seconds"] <= 180 * (1 + 1e-9)
    assert any("timed real optimizer steps" in n for n in planned["notes"])
    sources = {c["time_source"] for c in planned["candidates"]}
    assert sources <= {"timed"} | {s for s in sources if s.endswith("(timed steps)")}
    cfg = load_config(str(out))
    assert cfg.model.from_pretrained == str(llama.resolve()) and not cfg.model.fused_qkv
    assert cfg.data.source == str(text) and cfg.train.max_time == 180
    assert cfg.train.micro_batch == top["micro_batch"] and cfg.meta["finetune_plan"]["method"] \
        == ("full" if cfg.finetune.method == "full" else f"lora-r{cfg.finetune.lora.rank}")
    res = runner.invoke(app, ["train", str(out), "--run-dir", str(tmp_path / "run"),
                              "--max-steps", "30", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "completed" and math.isfinite(result["val_loss"])
    ratio = top["tokens_per_s"] / result["tokens_per_s"]
    assert 0.5 <= ratio <= 2.0, (top["tokens_per_s"], result["tokens_per_s"])


def _fake_timing(monkeypatch: pytest.MonkeyPatch, speed: Any) -> list[str]:
    """Timed steps run at `speed(candidate)` x the estimate; returns the steps "timed"."""
    from budgetlm.plan import finetune_timing

    timed: list[str] = []

    def measure(cands: list, tgt: object, time_one: object, deadline: object = None,
                key: Any = None) -> dict[str, float]:
        timed.extend(c.step_name for c in cands)
        return {c.step_name: speed(c) * c.estimated_tokens_per_s for c in cands}

    monkeypatch.setattr(finetune_timing, "measure_each", measure)
    return timed


def test_timing_rescales_untimed_rows_and_recomputes_epochs(
        llama: Path, text: Path, cpu_machine: object, monkeypatch: pytest.MonkeyPatch) -> None:
    est = plan_finetune(Budget(seconds=180), llama, str(text), timing=False)
    # a small model is overhead-bound: 4x slower than estimated at micro-batch 32, 8x at 8
    timed = _fake_timing(monkeypatch, _speed)
    p = plan_finetune(Budget(seconds=180), llama, str(text))
    assert timed and len(timed) == len(set(timed))  # each step timed once
    assert p.timed and set(p.timed) == {c.name for c in p.candidates if c.step_name in timed}
    for c in p.candidates:
        speed = _speed(c)
        if c.step_name in timed:
            assert c.time_source == "timed"
            assert c.tokens_per_s == pytest.approx(speed * c.estimated_tokens_per_s)
        else:
            assert c.time_source.endswith("(timed steps)")
        assert c.seconds <= 180 * (1 + 1e-9)
        if not c.capped:  # the most the budget reaches, at the rate of its own batch
            assert c.seconds >= 0.9 * 180
    most = {c.method.label: c.epochs for c in est.candidates if not c.capped}
    most_timed = {c.method.label: c.epochs for c in p.candidates if not c.capped}
    assert all(most_timed[m] < most[m] for m in most)
    assert any("timed real optimizer steps" in n for n in p.notes)


def _speed(c: Any) -> float:
    return 0.25 * (c.micro_batch / 32) ** 0.5


def test_short_budgets_and_no_timing_are_not_timed(
        llama: Path, text: Path, cpu_machine: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from budgetlm.plan.timing import TIMING_SECONDS

    timed = _fake_timing(monkeypatch, lambda c: 1.0)
    p = plan_finetune(Budget(seconds=TIMING_SECONDS / 2), llama, str(text))
    assert not timed and not p.timed
    assert any("shorter than timing steps" in n for n in p.notes)
    p = plan_finetune(Budget(seconds=180), llama, str(text), timing=False)
    assert not timed and any("not timed on this machine" in n for n in p.notes)
    p = plan_finetune(Budget(seconds=180), llama, str(text), profile=_fake_cpu())
    assert not timed and not p.timed  # a profile given: not this machine's steps
    p = plan_finetune(Budget(seconds=TIMING_SECONDS / 2), llama, str(text), timing=True)
    assert timed and p.top.time_source == "timed"


def test_a_lora_row_trains_and_its_lr_is_ten_times_full(llama: Path, text: Path, tmp_path: Path,
                                                        cpu_machine: object) -> None:
    p = plan_finetune(Budget(seconds=180), llama, str(text), timing=False)
    full = next(c for c in p.candidates if c.method.name == "full")
    lora = next(i for i, c in enumerate(p.candidates) if c.method.name == "lora")
    pretrain_lr, _ = p.base.pretraining_lr()
    assert full.lr == pytest.approx(FULL_LR_FRACTION * pretrain_lr)
    assert p.candidates[lora].lr == pytest.approx(LORA_LR_MULTIPLIER * full.lr)
    cfg = p.config(lora)
    assert cfg.finetune.method == "lora" and cfg.finetune.lora.target == ["all-linear"]
    cfg = validate({**cfg.model_dump(), "train": {**cfg.train.model_dump(), "max_steps": 2}})
    from budgetlm.train import train

    result = train(cfg, run_dir=tmp_path / "lora", progress=False)
    assert result.status == "completed" and math.isfinite(result.to_dict()["val_loss"])


def test_multi_epoch_fine_tunes_stop_early(llama: Path, text: Path,
                                           cpu_machine: object) -> None:
    p = plan_finetune(Budget(seconds=600), llama, str(text), timing=False)
    by_epochs = {c.epochs: i for i, c in enumerate(p.candidates) if c.method.name == "full"}
    assert 1.0 in by_epochs and max(by_epochs) > 1
    one, many = p.config(by_epochs[1.0]), p.config(by_epochs[max(by_epochs)])
    assert one.train.patience is None and many.train.patience == PATIENCE
    c = p.candidates[by_epochs[max(by_epochs)]]
    assert c.steps // many.train.eval_interval >= 8  # enough evaluations to stop on
    assert one.train.max_tokens == p.candidates[by_epochs[1.0]].tokens  # 1 epoch, then stop
    assert one.train.max_time == 600


def _config_only(tmp_path: Path, name: str, **over: object) -> Path:
    """A Llama-3.2-1B-shaped config.json (no weights: planning reads the config only)."""
    cfg = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
           "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
           "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "tie_word_embeddings": True, "vocab_size": 128256, "hidden_act": "silu", **over}
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _context(base_dir: Path, unique: int, gpu_hours: float) -> FinetuneContext:
    from budgetlm.plan.budget import resolve_target

    base = load_base(base_dir)
    tgt = resolve_target(Budget(gpu_hours=gpu_hours, gpu="h100-sxm"))
    return FinetuneContext(tgt, base, unique, 100_000, "adamw", 2e-5, "test")


def test_full_ranks_first_only_when_the_data_exceeds_the_adapters(tmp_path: Path) -> None:
    d = _config_only(tmp_path, "l1b")
    ctx = _context(d, 10_000_000, 100.0)  # 10M tokens: rank-256 adapters hold them
    pairs = methods_for(ctx.base.model, ["bf16"])
    ranked, _ = price_all(ctx, pairs, [2048])
    assert ranked[0].method == Method("lora", 256) and ranked[0].epochs == 4
    assert not any(c.estimate_only for c in ranked[: len(ranked) // 2])
    ctx = _context(d, 2_000_000_000, 100.0)  # 2B tokens: more than any adapter holds
    ranked, _ = price_all(ctx, pairs, [2048])
    assert ranked[0].method == Method("full")
    assert ranked[0].capacity_tokens > ranked[0].tokens / ranked[0].epochs


def test_qlora_rows_are_estimates_never_the_top(tmp_path: Path, text: Path) -> None:
    p = plan_finetune(Budget(gpu_hours=0.05, gpu="h100-sxm"), _config_only(tmp_path, "l1b"),
                      str(text))
    q = [i for i, c in enumerate(p.candidates) if c.estimate_only]
    assert q and min(q) > max(i for i, c in enumerate(p.candidates) if not c.estimate_only)
    assert all(p.candidates[i].method.quantize == "nf4" for i in q)
    with pytest.raises(UserError, match="estimate only"):
        p.config(q[0])
    assert any("qlora rows" in n for n in p.notes)
    assert p.top.precision == "bf16" and not p.top.estimate_only


def test_tokenizer_json_of_the_model_is_used(llama: Path, text: Path, tmp_path: Path,
                                             cpu_machine: object) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    d = tmp_path / "with_tok"
    shutil.copytree(llama, d)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train([str(text)], trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"]))
    tok.save(str(d / "tokenizer.json"))
    p = plan_finetune(Budget(seconds=180), d, str(text), timing=False)
    assert p.data.config.tokenizer == "pretrained" and p.data.vocab <= 256
    assert not any("no tokenizer.json" in n for n in p.notes)
    cfg = p.config(0)
    assert cfg.data.tokenizer == "pretrained"
    cfg = validate({**cfg.model_dump(), "train": {**cfg.train.model_dump(), "max_steps": 2}})
    from budgetlm.train import train

    assert train(cfg, run_dir=tmp_path / "run", progress=False).status == "completed"


def test_a_budgetlm_run_is_fine_tuned_from_its_checkpoint(text: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["train", "tiny", "--data", str(text), "--max-steps", "2",
                              "--run-dir", str(tmp_path / "pre"), "--json"])
    assert res.exit_code == 0, res.output
    monkeypatch.setattr(hardware, "cached_profile", _fake_cpu)
    p = plan_finetune(Budget(seconds=180), tmp_path / "pre", str(text), timing=False)
    cfg = p.config(0)
    pre = load_config(str(tmp_path / "pre" / "config.yaml"))
    assert cfg.train.init_from == str((tmp_path / "pre").resolve())
    assert cfg.model.from_pretrained is None
    assert cfg.model.model_dump() == pre.model.model_copy(
        update={"seq_len": cfg.model.seq_len}).model_dump()
    assert p.base.pretraining_lr()[0] == pre.optim.lr
    cfg = validate({**cfg.model_dump(), "train": {**cfg.train.model_dump(), "max_steps": 2}})
    from budgetlm.train import train

    assert train(cfg, run_dir=tmp_path / "ft", progress=False).status == "completed"


def _write_study(tmp_path: Path, llama: Path, text: Path) -> Path:
    base = {"name": "ft", "model": {"from_pretrained": str(llama), "seq_len": 32},
            "data": {"source": str(text), "tokenizer": "byte"},
            "train": {"micro_batch": 4, "eval_tokens": 256, "device": "cpu"},
            "finetune": {"method": "lora", "lora": {"rank": 8}}}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(base))
    study = {"name": "ftstudy", "base": "ft.yaml", "trial_cap": {"steps": 3},
             "budget": {"trials": 2}, "sampler": "random", "pruner": "none", "threads": 1,
             "evals": 1,
             "space": {"finetune.lora.rank": {"type": "categorical", "choices": [4, 8]},
                       "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(study))
    return p


def test_a_study_tunes_lora_rank_and_lr_of_a_fine_tune(llama: Path, text: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from budgetlm.tune.spec import load_study
    from budgetlm.tune.trials import build_trial_config

    monkeypatch.chdir(tmp_path)
    path = _write_study(tmp_path, llama, text)
    cfg = build_trial_config(load_study(path), {"finetune.lora.rank": 4, "optim.lr": 1e-3}, 0)
    assert cfg.finetune.lora.rank == 4 and cfg.model.from_pretrained == str(llama)
    res = runner.invoke(app, ["tune", str(path)])
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "runs" / "ftstudy" / "trials.csv").read_text().splitlines()
    assert len(rows) == 3 and sum("COMPLETE" in r for r in rows) == 2, rows


BAD = {
    "no_config_json": (lambda d, t: ["--finetune", str(d / "empty"), "--data", t],
                       "no config.json"),
    "missing_dir": (lambda d, t: ["--finetune", str(d / "nothere"), "--data", t],
                    "no such directory"),
    "a_file": (lambda d, t: ["--finetune", t, "--data", t], "expected a directory"),
    "with_arch": (lambda d, t: ["--finetune", str(d / "llama"), "--data", t, "--arch", "llama"],
                  "--arch: does not apply to --finetune"),
    "with_tokens": (lambda d, t: ["--finetune", str(d / "llama"), "--tokens", "1e6"],
                    "--tokens: does not apply to --finetune"),
    "no_data": (lambda d, t: ["--finetune", str(d / "llama")], "--finetune: needs --data"),
    "bert": (lambda d, t: ["--finetune", str(d / "bert"), "--data", t], "model_type 'bert'"),
    "seq_len_too_long": (lambda d, t: ["--finetune", str(d / "llama"), "--data", t,
                                       "--seq-len", "4096"], "--seq-len 4096"),
    "small_vocab_no_tokenizer": (lambda d, t: ["--finetune", str(d / "small"), "--data", t],
                                 "too small for bytes"),
}


@pytest.fixture(scope="module")
def bad_dirs(llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "empty").mkdir()
    shutil.copytree(llama, d / "llama")
    (d / "bert").mkdir()
    (d / "bert" / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 128, "vocab_size": 300,
        "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu", "position_embedding_type": "absolute"}))
    _save_llama(d / "small", vocab=64)
    return d


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_finetune_input_exits_2_with_one_line(case: str, bad_dirs: Path, text: Path,
                                                  cpu_machine: object) -> None:
    args, needle = BAD[case]
    res = runner.invoke(app, ["plan", *args(bad_dirs, str(text)), "--time", "3m"])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert needle in line and len(line.splitlines()) == 1 and "Traceback" not in line, line
