"""`budgetlm tune --around PLAN.yaml`: the derived proxy study, the transfer to the planned width,
the final run, around.json, and bad inputs (exit 2, one line).

One end-to-end run (two 1-second proxy trials and a ~8-second final run of a d_model-128 plan on
a synthetic Markov source) and one `budgetlm train` of the transferred config; the rest runs no
trials. The module uses its own cache directory holding a fixed hardware profile, so nothing is
measured.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from budgetlm.cli import app
from budgetlm.config import RunConfig, load_config, validate
from budgetlm.config.schema import ModelConfig
from budgetlm.errors import UserError
from budgetlm.tune.around import AroundOptions, proxy_width, read_plan
from budgetlm.tune.around_files import AroundFile
from budgetlm.tune.around_report import render_around
from budgetlm.tune.spec import around_study, load_study

runner = CliRunner()
DATA = "synthetic:markov:order=1,vocab=16,tokens=100000"
PLAN_SECONDS = 16.0


@pytest.fixture(scope="module", autouse=True)
def _fixed_profile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A private cache holding a fixed CPU profile (the trials' processes read it too)."""
    from budgetlm.hardware import HardwareProfile, cache_key, save_profile

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BUDGETLM_CACHE_DIR", str(tmp_path_factory.mktemp("around-cache")))
        save_profile(HardwareProfile(
            cpu_model="fixed", cpu_cores=2, memory_bytes=16 * 2**30, gpus=[], device="cpu",
            matmul_flops={"fp32": 4.0e10}, bandwidth_bytes_per_s=8.0e9, measured=True,
            datasheet=None, device_memory_bytes=16 * 2**30, gpu_count=0,
            created_at="2026-01-01T00:00:00", torch_version="fixed", python_version="3.11",
            threads=1,
        ), cache_key())
        yield


def plan_config(**over: Any) -> dict[str, Any]:
    """A small planned run: d_model 128 (proxy 32), wsd, AdamW, 20 s, as `plan -o` writes."""
    cfg = RunConfig(
        name="plan-L1-d128",
        model=ModelConfig(n_layer=1, n_head=4, d_model=128, d_ff=512, seq_len=32, vocab_size=16),
        optim={"name": "adamw", "lr": 3e-3},
        schedule={"name": "wsd", "warmup_fraction": 0.05, "decay_fraction": 0.2,
                  "min_lr_ratio": 0.0},
        data={"source": DATA},
        train={"micro_batch": 8, "grad_accum": 2, "max_time": PLAN_SECONDS, "threads": 1,
               "eval_time_interval": PLAN_SECONDS / 8, "eval_interval": 10**6,
               "eval_tokens": 2048, "device": "cpu"},
        meta={"planned_by": "budgetlm plan", "predicted": {"loss": 3.0, "loss_kind": "prior",
                                                           "seconds": PLAN_SECONDS}},
    ).model_dump(mode="json")
    for key, value in over.items():
        section, _, field = key.partition(".")
        if field:
            cfg[section][field] = value
        else:
            cfg[section] = value
    return cfg


def write_plan(tmp_path: Path, name: str = "plan.yaml", **over: Any) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(plan_config(**over), sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------
# The derived study


def test_derived_study_is_the_documented_one(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    study = around_study(plan, options=AroundOptions(share=0.5))
    spec = study.spec
    assert spec.name == "plan-L1-d128-around" and spec.around == str(plan)
    assert (spec.share, spec.proxy_width, spec.train_after) == (0.5, 32, True)
    # the proxy: d_model / 4 (a multiple of 2·n_head), d_ff scaled alike, µP anchored at the
    # plan's width (so its multiplier is 1/4)
    m = study.base["model"]
    assert (m["d_model"], m["d_ff"], m["n_head"], m["n_layer"], m["seq_len"]) == (32, 128, 4, 1, 32)
    assert (m["parametrization"], m["mup_base_width"]) == ("mup", 128)
    assert study.base["meta"]["predicted"] is None  # the planned width's prediction is dropped
    assert study.base["data"]["source"] == DATA
    # caps and budget: share·T, trials a third of it on the time axis, median pruner
    assert spec.budget.time == pytest.approx(0.5 * PLAN_SECONDS)
    assert spec.trial_cap.kind == "time"
    assert spec.trial_cap.value == pytest.approx(0.5 * PLAN_SECONDS / 3, abs=1e-3)
    # the median pruner waits for a third of a trial's cap (the loss's first fall looks alike)
    assert spec.pruner.type == "median"
    assert spec.pruner.warmup == pytest.approx(0.5 * PLAN_SECONDS / 9, abs=1e-3)
    space = {k: v.model_dump() for k, v in spec.space.items()}
    lr = space["optim.lr"]
    # a neighbourhood of the plan: lr / 16 (Lion is a choice) to x 4, init_std / 3 to x 3
    assert lr["log"] and (lr["low"], lr["high"]) == (0.000188, 0.012)  # 3 significant digits
    assert (space["model.init_std"]["low"], space["model.init_std"]["high"]) == (0.00667, 0.06)
    assert space["train.grad_accum"]["choices"] == [1, 2, 4]
    assert (space["schedule.warmup_fraction"]["low"],
            space["schedule.warmup_fraction"]["high"]) == (0.0, 0.1)
    assert (space["schedule.decay_fraction"]["low"],
            space["schedule.decay_fraction"]["high"]) == (0.1, 0.5)
    assert space["optim.name"]["choices"] == ["adamw", "lion"]
    # first the plan's own values, then the plan with one value moved: lr x2, lr /2, the next
    # larger batch (no dropout to turn off)
    plan_values = {"optim.lr": 3e-3, "model.init_std": 0.02, "train.grad_accum": 2,
                   "schedule.warmup_fraction": 0.05, "schedule.decay_fraction": 0.2,
                   "optim.name": "adamw"}
    assert spec.enqueue == [plan_values, {**plan_values, "optim.lr": 0.006},
                            {**plan_values, "optim.lr": 0.0015},
                            {**plan_values, "train.grad_accum": 4}]


def test_space_follows_the_plan_and_overrides_win(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, **{"optim.name": "lion", "optim.lr": 3e-4, "train.grad_accum": 1,
                                   "schedule.name": "cosine", "schedule.min_lr_ratio": 0.1,
                                   "model.dropout": 0.1})
    spec = around_study(plan, ["space.optim.lr.high=0.01", "space.schedule.min_lr_ratio=null",
                               "budget.trials=3"],
                        options=AroundOptions(proxy_width=64, trial_time=2.5)).spec
    assert "optim.name" not in spec.space  # lion only: nothing to choose
    assert spec.space["optim.lr"].low == pytest.approx(7.5e-5)  # lr / 4 without another optimizer
    assert spec.space["optim.lr"].high == 0.01  # --set wins over the derived range
    assert "schedule.min_lr_ratio" not in spec.space  # and null removes a parameter
    # grad_accum 1: the micro-batch, x1/2 to x4
    assert spec.space["train.micro_batch"].choices == [4, 8, 16, 32]
    # the plan's dropout, or none
    assert spec.space["model.dropout"].choices == [0.0, 0.1]
    # the plan's values, then one moved at a time: dropout off, lr x2, lr /2, the next larger
    # micro-batch
    assert [{k: v for k, v in e.items() if e[k] != spec.enqueue[0][k]}
            for e in spec.enqueue[1:]] == [{"model.dropout": 0.0}, {"optim.lr": 6e-4},
                                           {"optim.lr": 1.5e-4}, {"train.micro_batch": 16}]
    # a move the space cannot take is not made: lr x2 past a given high end; dropout removed
    capped = around_study(plan, ["space.optim.lr.high=0.0005", "space.model.dropout=null"]).spec
    assert "model.dropout" not in capped.space and "model.dropout" not in capped.enqueue[0]
    assert [e["optim.lr"] for e in capped.enqueue] == [3e-4, 1.5e-4, 3e-4]
    assert spec.proxy_width == 64 and spec.trial_cap.value == 2.5
    assert spec.budget.trials == 3 and spec.budget.time == pytest.approx(0.2 * PLAN_SECONDS)
    assert "schedule.min_lr_ratio" not in spec.enqueue[0]


def test_proxies_are_the_plan_narrowed_under_mup_anchored_at_the_plan(tmp_path: Path) -> None:
    """A standard plan anchors µP at its own width: the plan's values in a proxy give its hidden
    matrices Adam lr x d_model/proxy (and the readout its multiplier), the plan's run narrowed;
    a µP plan keeps its base width, and the transferred config its parametrization."""
    from budgetlm.model import build_model
    from budgetlm.optim import build_optimizer
    from budgetlm.tune.around_run import transferred_config

    def hidden_lr(cfg: RunConfig) -> float:
        opt = build_optimizer(build_model(cfg.model), cfg.optim,
                              width_mult=cfg.model.width_mult)
        return max(g["lr"] for g in opt.param_groups)

    for over, base in (({}, 128), ({"model.parametrization": "mup",
                                    "model.mup_base_width": 64}, 64)):
        plan = write_plan(tmp_path, **over)
        study = around_study(plan)
        proxy = validate(study.base, source="proxy")
        assert (proxy.model.d_model, proxy.model.mup_base_width) == (32, base)
        assert proxy.model.width_mult == 32 / base
        assert hidden_lr(proxy) == pytest.approx(3e-3 * base / 32)
        best = type("Best", (), {"params": dict(study.spec.enqueue[0]), "number": 0,
                                 "values": [1.0]})()
        moved = transferred_config(study, read_plan(plan), best, 1.0)
        planned = load_config(str(plan))
        assert moved.model == planned.model  # the plan's own values: the plan's own model
        assert moved.optim == planned.optim and moved.train.max_time == PLAN_SECONDS - 1.0


@pytest.mark.parametrize(("micro_batch", "grad_accum", "want"), [
    (15, 1, ("train.micro_batch", [8, 15, 30, 60])),  # no accumulation: x1/2 (rounded) to x4
    (1, 1, ("train.micro_batch", [1, 2, 4])),
    (8, 2, ("train.grad_accum", [1, 2, 4])),  # memory-bound plans keep their micro-batch
    (8, 3, ("train.grad_accum", [3, 6])),
    ("auto", 1, ("train.grad_accum", [1, 2])),
])
def test_batch_choices(micro_batch: int | str, grad_accum: int,
                       want: tuple[str, list[int]]) -> None:
    from budgetlm.config.schema import TrainConfig
    from budgetlm.tune.around import batch_param

    assert batch_param(TrainConfig(micro_batch=micro_batch, grad_accum=grad_accum)) == want


def test_study_file_with_around_resolves_the_plan_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "studies"
    folder.mkdir()
    write_plan(folder)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({
        "name": "filed", "around": "plan.yaml", "share": 0.4, "budget": {"trials": 3},
        "fixed": {"train.eval_tokens": 1024}, "train_after": False,
    }))
    monkeypatch.chdir(tmp_path)
    study = load_study(path)
    spec = study.spec
    assert spec.name == "filed" and Path(str(spec.around)) == folder / "plan.yaml"
    assert spec.budget.trials == 3 and spec.budget.time == pytest.approx(0.4 * PLAN_SECONDS)
    assert study.base["train"]["eval_tokens"] == 1024 and study.base["model"]["d_model"] == 32
    assert spec.train_after is False


@pytest.mark.parametrize(("d_model", "n_head", "n_kv_head", "want"), [
    (128, 4, None, 32), (64, 2, None, 32), (768, 12, None, 192), (1000, 10, None, 240),
    (512, 8, 2, 128), (96, 4, None, 32),
])
def test_proxy_width_rule(d_model: int, n_head: int, n_kv_head: int | None, want: int) -> None:
    model = ModelConfig(d_model=d_model, n_head=n_head, n_kv_head=n_kv_head)
    width = proxy_width(model, None, "--proxy-width", Path("plan.yaml"))
    assert width == want and width % (2 * n_head) == 0 and 32 <= width < d_model


def test_no_proxy_width_below_a_small_model() -> None:
    with pytest.raises(UserError, match="pass --proxy-width"):
        proxy_width(ModelConfig(d_model=32, n_head=2), None, "--proxy-width", Path("p.yaml"))


# ---------------------------------------------------------------------------------------------
# End to end


def test_tune_around_transfers_trains_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    plan = write_plan(tmp_path)
    res = runner.invoke(app, [
        "tune", "--around", str(plan), "--share", "0.5", "--trial-time", "1", "--name", "e2e",
        "--set", "budget.trials=2", "--set", "budget.time=60", "--json",
    ])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    out = tmp_path / "runs" / "e2e"
    assert json.loads((out / "around.json").read_text()) == record
    AroundFile.model_validate(record)
    assert record["status"] == "trained" and record["trials"]["total"] >= 2
    assert record["trials"]["complete"] + record["trials"]["pruned"] >= 2
    assert (record["proxy_width"], record["d_model"], record["width_mult"]) == (32, 128, 4.0)
    spent = record["tuning_seconds"]
    assert 0 < spent < PLAN_SECONDS and record["tuning_fraction"] == pytest.approx(
        spent / PLAN_SECONDS, abs=1e-3)

    cfg = load_config(str(out / "transferred.yaml"))
    best = record["best"]
    # the plan's own parametrization at the plan's width: the proxies' µP is anchored there
    assert (cfg.model.parametrization, cfg.model.width_mult, cfg.model.d_model) == (
        "standard", 1.0, 128)
    assert cfg.optim.lr == pytest.approx(best["params"]["optim.lr"])
    assert cfg.optim.name == best["params"]["optim.name"]
    assert cfg.train.max_time == pytest.approx(PLAN_SECONDS - spent, abs=0.01)
    tuned = cfg.meta["tuned_around"]
    assert (tuned["trial"], tuned["proxy_width"], tuned["share"]) == (best["number"], 32, 0.5)
    moved = record["transferred_settings"]
    assert moved["hidden_lr"] == pytest.approx(cfg.optim.lr)
    assert record["plan_settings"]["lr"] == 3e-3 and record["plan_settings"]["width_mult"] == 1

    final = record["final"]
    assert final["state"] == "complete" and math.isfinite(final["val_loss"]), final
    assert final["val_bpb"] > 0 and final["wall_seconds"] > 0
    result = json.loads((Path(final["run_dir"]) / "result.json").read_text())
    assert result["train_seconds"] <= cfg.train.max_time * 1.1 + 1.0
    saved = yaml.safe_load((Path(final["run_dir"]) / "config.yaml").read_text())
    assert saved["model"]["parametrization"] == "standard" and saved["model"]["d_model"] == 128
    assert (out / "summary.json").exists() and (out / "best.yaml").exists()

    console = Console(record=True, width=140)
    render_around(console, record)
    text = console.export_text()
    assert "plan alone" in text and "transferred" in text and "final run" in text
    assert "(m = 4)" in text and "trials 2" in text

    # the transferred config runs as it is
    again = runner.invoke(app, ["train", str(out / "transferred.yaml"), "--run-dir",
                                str(tmp_path / "again"), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again" / "result.json").read_text())["status"] in (
        "completed", "early_stopped")


def test_a_crashing_final_run_keeps_the_study_and_the_transfer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from budgetlm.tune import around_run

    moved = around_run.transferred_config

    def segfaulting(*args: Any) -> RunConfig:  # the final run's process kills itself (SIGSEGV)
        cfg = moved(*args)
        return cfg.model_copy(update={"meta": {**cfg.meta, "fault": "segv"}})

    monkeypatch.setattr(around_run, "transferred_config", segfaulting)
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["tune", "--around", str(write_plan(tmp_path)), "--trial-time", "1",
                              "--name", "crash", "--set", "budget.trials=1", "--set",
                              "budget.time=60", "--quiet"])
    assert res.exit_code == 2, res.output
    last = res.stderr.strip().splitlines()[-1]
    assert "the transferred run ended crashed" in last and "runs/crash/final" in last, last
    out = tmp_path / "runs" / "crash"
    record = json.loads((out / "around.json").read_text())
    assert record["status"] == "final run failed" and record["final"]["status"] == "crashed"
    assert record["trials"]["complete"] == 1
    assert json.loads((out / "summary.json").read_text())["best"]["number"] == 0
    assert load_config(str(out / "transferred.yaml")).model.d_model == 128


def test_no_time_left_is_recorded_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    plan = write_plan(tmp_path, **{"train.max_time": 2.0})  # less than the tuner's start-up
    res = runner.invoke(app, ["tune", "--around", str(plan), "--share", "0.5", "--trial-time",
                              "0.5", "--name", "late", "--set", "budget.trials=1", "--set",
                              "budget.time=60", "--quiet"])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().splitlines()[-1].startswith(
        "error: study late: no time left for the planned run: tuning took"), res.stderr
    record = json.loads((tmp_path / "runs" / "late" / "around.json").read_text())
    assert record["status"] == "no time left" and record["tuning_seconds"] > 2.0
    assert "transferred" not in record and "final" not in record
    assert not (tmp_path / "runs" / "late" / "transferred.yaml").exists()


# ---------------------------------------------------------------------------------------------
# Bad inputs


def _bad_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    plan = str(write_plan(tmp_path))
    (tmp_path / "nomodel.yaml").write_text(yaml.safe_dump({"train": {"max_time": 10}}))
    notime = write_plan(tmp_path, "notime.yaml", meta={},
                        **{"train.max_time": None, "train.max_steps": 100})
    lamb = write_plan(tmp_path, "lamb.yaml", **{"optim.name": "lamb"})
    small = write_plan(tmp_path, "small.yaml", model=ModelConfig(d_model=32, n_head=2)
                       .model_dump(mode="json"))
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "plain", "base": "tiny", "trial_cap": {"time": 1}, "budget": {"trials": 1},
        "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    }))
    return {
        "share_0": (["--around", plan, "--share", "0"], "--share: must be a number > 0 and < 1"),
        "share_1": (["--around", plan, "--share", "1"], "--share: must be a number > 0 and < 1"),
        "share_1.5": (["--around", plan, "--share", "1.5"], "got 1.5"),
        "no_model": (["--around", str(tmp_path / "nomodel.yaml")], "nomodel.yaml: no model"),
        "no_time": (["--around", str(notime)], "notime.yaml: no time to divide"),
        "missing": (["--around", str(tmp_path / "nothere.yaml")], "nothere.yaml: no such file"),
        "both": ([str(study), "--around", plan], "not both"),
        "neither": ([], "give a study file or --around PLAN.yaml"),
        "lamb": (["--around", str(lamb)], "lamb has no µP rule"),
        "too_small": (["--around", str(small)], "pass --proxy-width"),
        "width_too_big": (["--around", plan, "--proxy-width", "128"], "--proxy-width: 128 must"),
        "share_without_around": ([str(study), "--share", "0.3"], "--share: only with --around"),
    }


CASES = ["share_0", "share_1", "share_1.5", "no_model", "no_time", "missing", "both", "neither",
         "lamb", "too_small", "width_too_big", "share_without_around"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_in_one_line(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args, needle = _bad_cases(tmp_path)[case]
    res = runner.invoke(app, ["tune", *args])
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert needle in text, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    assert not (tmp_path / "runs").exists()  # refused before anything ran


def test_schema_around_is_the_file_model() -> None:
    res = runner.invoke(app, ["schema", "around"])
    assert res.exit_code == 0, res.output
    schema = json.loads(res.stdout)
    assert {k: v for k, v in schema.items() if k != "$schema"} == AroundFile.model_json_schema()
    assert {"plan_settings", "transferred_settings", "final", "tuning_seconds"} <= set(
        schema["properties"])
