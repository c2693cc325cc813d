"""µP (Maximal Update Parametrization, Yang et al. 2022): the coordinate check, m = 1 equal to
standard parametrization bit for bit, the per-group learning rates, the refusals through the
command line, activation checkpointing, and the estimator's memory against MemTracker."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from fakes import load_memory_truth
from typer.testing import CliRunner

from budgetlm.cli import app
from budgetlm.config import ModelConfig, OptimConfig, RunConfig, load_config
from budgetlm.estimate import memory_breakdown
from budgetlm.model import build_model
from budgetlm.optim import build_optimizer, lr_factor, set_lr
from budgetlm.train import train

WIDTHS = (32, 64, 128, 256, 512)
BASE = 32


def coord_config(width: int, parametrization: str, **extra: Any) -> ModelConfig:
    return ModelConfig(**{
        "n_layer": 2, "n_head": 2, "d_model": width, "vocab_size": 256, "seq_len": 32,
        "parametrization": parametrization,
        "mup_base_width": BASE if parametrization == "mup" else None, **extra})


def rms(t: torch.Tensor) -> float:
    return float(t.float().pow(2).mean().sqrt())


def coordinates(cfg: ModelConfig, steps: int = 4, lr: float = 1e-2) -> dict[str, list[float]]:
    """RMS of every block's output and of the logits on one held-out batch, at init and after
    `steps` AdamW steps at a fixed lr on synthetic tokens (seed 0, batch 4)."""
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=lr, weight_decay=0.0),
                          width_mult=cfg.width_mult)
    data = torch.randint(256, (steps + 1, 4, 33), generator=torch.Generator().manual_seed(1))
    probe = data[steps, :, :-1]

    def measure() -> list[float]:
        seen: list[float] = []
        hooks = [b.register_forward_hook(lambda _m, _i, out: seen.append(rms(out[0])))
                 for b in model.blocks]
        with torch.no_grad():
            logits = model(probe)
        for h in hooks:
            h.remove()
        return [*seen, rms(logits)]

    init = measure()
    for t in range(steps):
        _, loss = model(data[t, :, :-1], data[t, :, 1:].contiguous())
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = measure()
    return {"init": init, "trained": trained}


def test_coordinate_check_activations_stay_put_under_mup_and_drift_under_standard() -> None:
    """Yang et al. 2022's coordinate check (widths 32-512, 2 heads throughout). Measured (seed 0;
    seeds 0-3 of gpt and bert in brackets): under µP every block output's and the logits' RMS
    after 4 AdamW steps at lr 1e-2 stays within max/min 1.57 across the widths [<= 2.06], the
    blocks' at init within 1.02; under standard parametrization width 512's logits are 8.4x width
    32's after the steps [7.7-13] and its block outputs 48-76x [37-142], 4.3-6.2x at init."""
    mup = {w: coordinates(coord_config(w, "mup")) for w in WIDTHS}
    standard = coordinates(coord_config(WIDTHS[-1], "standard"))
    base = mup[BASE]  # m = 1: standard parametrization itself

    def band(when: str, i: int) -> float:
        values = [mup[w][when][i] for w in WIDTHS]
        return max(values) / min(values)

    n = len(base["trained"])  # every block, then the logits
    trained = [band("trained", i) for i in range(n)]
    assert max(trained) < 3.0, trained
    at_init = [band("init", i) for i in range(n - 1)]
    assert max(at_init) < 1.5, at_init
    drift = [standard["trained"][i] / base["trained"][i] for i in range(n)]
    assert drift[-1] > 5.0 and min(drift[:-1]) > 20.0, drift
    assert min(standard["init"][i] / base["init"][i] for i in range(n - 1)) > 2.5


def test_attention_scale_is_one_over_head_dim_beyond_the_base_in_sdpa_and_eager() -> None:
    x = torch.randint(256, (2, 32), generator=torch.Generator().manual_seed(0))
    out = {}
    for attention in ("sdpa", "eager"):
        # m = 4, head_dim 64 (base 16); a wide init so that attention is far from uniform
        cfg = coord_config(128, "mup", attention=attention, init_std=0.5)
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        scale = model.blocks[0].attn.scale
        assert scale == pytest.approx(math.sqrt(16) / 64)
        out[attention] = model(x)
    torch.testing.assert_close(out["sdpa"], out["eager"], rtol=1e-5, atol=1e-5)
    assert build_model(coord_config(32, "mup")).blocks[0].attn.scale is None  # SDPA's 1/√d


def router_change(width: int, optim: str, lr: float, steps: int = 8) -> float:
    """RMS of the change of the last MoE block's router logits on a held-out batch over
    `steps` steps of `optim` at a fixed lr."""
    cfg = coord_config(width, "mup", n_expert=4)
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = build_optimizer(model, OptimConfig(name=optim, lr=lr, weight_decay=0.0),
                          width_mult=cfg.width_mult)
    data = torch.randint(256, (steps + 1, 4, 33), generator=torch.Generator().manual_seed(1))
    router = model.blocks[-1].mlp.router

    def logits() -> torch.Tensor:
        seen: list[torch.Tensor] = []
        hook = router.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
        with torch.no_grad():
            model(data[steps, :, :-1])
        hook.remove()
        return seen[0]

    before = logits()
    for t in range(steps):
        _, loss = model(data[t, :, :-1], data[t, :, 1:].contiguous())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rms(logits() - before)


@pytest.mark.parametrize(("optim", "lr"), [("sgd", 0.5), ("adamw", 1e-2)])
def test_router_logits_move_alike_at_every_width(optim: str, lr: float) -> None:
    """The router (width -> n_expert, no multiplier) at lr/m under sgd and adamw: its logits'
    change over 8 steps at widths 32/128/512 measured 0.14/0.16/0.12 (sgd) and 0.17/0.31/0.16
    (adamw). MuSGD's vector-like lr·m would give 36 at width 512 (sgd) and MuAdam's lr 3.3
    (adamw); sgd's hidden lr 0.79."""
    change = [router_change(w, optim, lr) for w in (32, 128, 512)]
    assert max(change) / min(change) < 3.0, change


# ---------------------------------------------------------------------------------------------
# m = 1 is standard parametrization


def losses(cfg: ModelConfig, optim: str, steps: int = 3) -> list[float]:
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = build_optimizer(model, OptimConfig(name=optim, lr=0.1 if optim == "sgd" else 1e-2),
                          width_mult=cfg.width_mult)
    data = torch.randint(cfg.vocab_size, (steps, 2, 17), generator=torch.Generator().manual_seed(2))
    out = []
    for t in range(steps):
        _, loss = model(data[t, :, :-1], data[t, :, 1:].contiguous())
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


@pytest.mark.parametrize("family", ["gpt", "bert"])
@pytest.mark.parametrize("optim", ["adamw", "sgd"])
def test_width_multiplier_one_is_standard_parametrization_bit_for_bit(family: str,
                                                                      optim: str) -> None:
    shape = {"family": family, "n_layer": 2, "n_head": 2, "d_model": 48, "vocab_size": 64,
             "seq_len": 16, "tie_embeddings": family == "gpt"}
    standard = ModelConfig(**shape)
    mup = ModelConfig(**shape, parametrization="mup", mup_base_width=48)
    assert mup.width_mult == 1.0
    assert losses(mup, optim) == losses(standard, optim)


# ---------------------------------------------------------------------------------------------
# Per-group learning rates

M = 4.0
LR, WD, MUON_LR = 1e-2, 0.1, 0.02
MOE = {"n_layer": 2, "n_head": 2, "d_model": 128, "vocab_size": 64, "seq_len": 16,
       "tie_embeddings": False, "n_expert": 4, "parametrization": "mup", "mup_base_width": 32}


def group_of(opt: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


def kind(name: str, p: torch.Tensor) -> str:
    if name.endswith("router.weight"):
        return "router"
    if p.ndim == 2 and not name.startswith(("wte", "wpe", "wtt", "lm_head", "classifier")):
        return "hidden"
    return "fixed" if name in ("lm_head.bias", "classifier.bias") else "vector"


def test_adamw_divides_hidden_lrs_by_the_width_multiplier() -> None:
    model = build_model(ModelConfig(**MOE))
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=LR, weight_decay=WD), width_mult=M)
    kinds = set()
    for name, g in group_of(opt, model).items():
        p = model.get_parameter(name)
        kinds.add(kind(name, p))
        scaled = kind(name, p) in ("hidden", "router")
        assert g["lr"] == g["base_lr"] == pytest.approx(LR / M if scaled else LR), name
        decays = p.ndim == 2 and not name.startswith(("wte", "wpe"))
        wd = WD * M if scaled else (WD if decays else 0.0)
        assert g["weight_decay"] == pytest.approx(wd), name  # lr·wd unchanged
    assert kinds == {"hidden", "router", "vector"}
    assert set_lr(opt, 0.5) == pytest.approx(0.5 * LR)  # the logged lr is optim.lr's
    assert all(g["lr"] == 0.5 * g["base_lr"] for g in opt.param_groups)


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_sgd_multiplies_vector_like_lrs_and_divides_their_decay(family: str) -> None:
    shape = {**MOE, "family": family, "n_expert": 4 if family == "gpt" else 0}
    seen = set()
    for classes in (None, 3):
        model = build_model(ModelConfig(**shape, n_classes=classes))
        opt = build_optimizer(model, OptimConfig(name="sgd", lr=LR, weight_decay=WD),
                              width_mult=M)
        for name, g in group_of(opt, model).items():
            p = model.get_parameter(name)
            k = kind(name, p)
            seen.add(k)
            mult = {"hidden": 1.0, "router": 1 / M, "vector": M, "fixed": 1.0}[k]
            assert g["lr"] == g["base_lr"] == pytest.approx(LR * mult), name
            if g["weight_decay"]:
                assert g["weight_decay"] == pytest.approx(WD / mult), name
    assert {"hidden", "vector", "fixed"} <= seen


def test_muon_keeps_its_hidden_lr_and_scales_the_router_by_root_m() -> None:
    model = build_model(ModelConfig(**MOE))
    standard = build_optimizer(model, OptimConfig(name="muon", lr=LR))
    opt = build_optimizer(model, OptimConfig(name="muon", lr=LR), width_mult=M)
    before, after = group_of(standard, model), group_of(opt, model)
    for name, g in after.items():
        assert g["use_muon"] == before[name]["use_muon"], name
        if name.endswith("router.weight"):
            assert g["lr"] == pytest.approx(MUON_LR / math.sqrt(M))
        else:
            assert (g["lr"], g["base_lr"]) == (before[name]["lr"], before[name]["base_lr"]), name
    assert any(g["use_muon"] and g["lr"] == MUON_LR for g in opt.param_groups)
    assert set_lr(opt, 1.0) == LR


def test_width_multiplier_one_gives_the_standard_groups() -> None:
    model = build_model(ModelConfig(**{**MOE, "mup_base_width": 128}))

    def summary(opt: torch.optim.Optimizer) -> list[tuple[dict[str, Any], list[int]]]:
        return [({k: v for k, v in g.items() if k != "params"}, [id(p) for p in g["params"]])
                for g in opt.param_groups]

    for name in ("adamw", "sgd", "muon", "lamb"):
        assert summary(build_optimizer(model, OptimConfig(name=name))) == summary(
            build_optimizer(model, OptimConfig(name=name), width_mult=1.0))
    with pytest.raises(ValueError, match="optim.name: lamb"):
        build_optimizer(model, OptimConfig(name="lamb"), width_mult=M)


# ---------------------------------------------------------------------------------------------
# Refusals through the command line

runner = CliRunner()


@pytest.mark.parametrize(("override", "field"), [
    ("optim.name=lamb", "optim.name"),
    ("optim.name=adafactor", "optim.name"),
    ("model.family=t5", "parametrization"),
    ("finetune.method=lora", "finetune.method"),
])
def test_mup_without_a_rule_is_a_one_line_error(override: str, field: str,
                                                tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "tiny", "--run-dir", str(tmp_path / "run"),
                              "--set", "model.parametrization=mup", "--set", override])
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert field in text and "mup" in text, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text


# ---------------------------------------------------------------------------------------------
# The trainer: width multiplier passed, activation checkpointing


def test_trainer_applies_mup_and_checkpointing_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import budgetlm.train.loop as loop

    seen: list[float] = []
    build = loop.build_optimizer

    def spy(model: torch.nn.Module, cfg: OptimConfig, fused: bool | None = None,
            width_mult: float = 1.0) -> torch.optim.Optimizer:
        seen.append(width_mult)
        return build(model, cfg, fused=fused, width_mult=width_mult)

    monkeypatch.setattr(loop, "build_optimizer", spy)
    common = [
        "data.source=synthetic:markov:order=1,vocab=16,seed=0,tokens=20000", "model.seq_len=16",
        "train.micro_batch=4", "train.max_steps=4", "train.eval_interval=4",
        "train.eval_tokens=256", "train.log_interval=1", "model.parametrization=mup",
        "model.mup_base_width=32", "model.positions=rope", "model.norm=rmsnorm",
        "model.mlp=swiglu", "model.n_kv_head=1", "model.n_expert=4",
    ]
    curves = []
    for on in (False, True):
        run = tmp_path / f"ckpt-{on}"
        res = train(load_config("tiny", [*common, f"train.activation_checkpointing={on}"]),
                    run_dir=run)
        assert res.status == "completed"
        lines = (run / "metrics.jsonl").read_text().splitlines()
        curves.append([json.loads(x)["loss"] for x in lines if '"train"' in x])
    assert seen == [2.0, 2.0]  # d_model 64 over base 32
    assert len(curves[0]) == 4 and all(math.isfinite(v) for v in curves[0])
    torch.testing.assert_close(curves[1], curves[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The estimator: µP's multipliers are elementwise, memory does not move



@pytest.mark.parametrize("spec", [(4, "fp32", False, "adamw"), (8, "bf16", True, "sgd")])
def test_memory_estimate_and_memtracker_agree_under_mup(
    spec: tuple[int, str, bool, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/memory_truth.py's training step under fake tensors, with µP (m = 4): the
    tracked peak is standard parametrization's to the byte (measured), and the estimate, which
    does not read the parametrization, stays within the 2% it keeps there."""
    pytest.importorskip("torch.distributed._tools.mem_tracker")
    import budgetlm.optim as optim

    truth = load_memory_truth()
    row = truth.Row("gpt-nano", *spec)
    standard_cfg = truth.run_config(row)

    def mup_config(r: Any) -> RunConfig:
        data = standard_cfg.model_dump()
        data["model"].update(parametrization="mup", mup_base_width=16)  # m = 64 / 16
        return RunConfig.model_validate(data)

    standard = truth.measure(row)["peak"]
    build = optim.build_optimizer
    monkeypatch.setattr(truth, "run_config", mup_config)
    monkeypatch.setattr(optim, "build_optimizer",
                        lambda model, cfg, fused=None: build(model, cfg, fused, width_mult=4.0))
    mup = truth.measure(row)["peak"]
    estimate = memory_breakdown(mup_config(row), device="cpu").tensor_peak
    assert estimate == memory_breakdown(standard_cfg, device="cpu").tensor_peak
    assert mup == standard
    assert abs(estimate - mup) <= 0.02 * mup, (estimate, mup)


def test_lr_factor_scales_every_mup_group_alike() -> None:
    model = build_model(ModelConfig(**MOE))
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=LR), width_mult=M)
    cfg = RunConfig().schedule
    f = lr_factor(cfg, 0.5, 10)
    set_lr(opt, f)
    assert all(g["lr"] == g["base_lr"] * f for g in opt.param_groups)
    assert {round(g["base_lr"] / LR, 12) for g in opt.param_groups} == {1.0, round(1 / M, 12)}
