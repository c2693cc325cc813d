from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from budgetlm import __version__
from budgetlm.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_version() -> None:
    res = invoke("--version")
    assert res.exit_code == 0
    assert __version__ in res.output


def test_estimate_json_gpt2() -> None:
    res = invoke("estimate", "gpt2-124m", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["params"] == 124_439_808
    assert {"params", "non_embedding_params", "flops_per_token", "memory"} <= set(d)
    mem = d["memory"]
    kinds = ("weights", "grads", "optimizer", "master", "activations", "logits", "temporaries")
    remainder = mem.get("device_remainder", mem.get("overhead", 0))
    assert mem["total"] == sum(mem.get(k, 0) for k in kinds) + remainder


def test_estimate_table_and_flags() -> None:
    res = invoke("estimate", "tiny", "-b", "4", "--precision", "bf16", "--checkpointing")
    assert res.exit_code == 0, res.output
    assert "parameters" in res.output and "memory total" in res.output


def test_schema_prints_json() -> None:
    res = invoke("schema")
    assert res.exit_code == 0
    assert json.loads(res.output)["title"] == "budgetlm RunConfig"


FILE_MODELS = {
    "plan": ("budgetlm.plan.files", "PlanFile"),
    "plan-finetune": ("budgetlm.plan.finetune_files", "FinetunePlanFile"),
    "result": ("budgetlm.train.result", "ResultFile"),
    "fit": ("budgetlm.calibrate.files", "FitFile"),
}


@pytest.mark.parametrize("name", list(FILE_MODELS))
def test_schema_of_output_files(name: str) -> None:
    module, cls = FILE_MODELS[name]
    model = getattr(importlib.import_module(module), cls)
    res = invoke("schema", name)
    assert res.exit_code == 0, res.output
    schema = json.loads(res.output)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {k: v for k, v in schema.items() if k != "$schema"} == model.model_json_schema()
    assert schema["properties"]


def test_schema_unknown_name_lists_the_valid_ones() -> None:
    res = invoke("schema", "nonsense")
    assert res.exit_code == 2
    text = res.output.strip()
    assert len(text.splitlines()) == 1, text
    assert "'nonsense'" in text
    for name in ("run", "study", "plan", "result", "fit"):
        assert name in text


def test_plan_help_shows_timing_not_the_hidden_alias() -> None:
    res = invoke("plan", "--help")
    assert res.exit_code == 0, res.output
    assert "--timing" in res.output and "--no-timing" in res.output
    assert "--calibrate" not in res.output and "--no-calibrate" not in res.output


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ([], None),
        (["--timing"], True),
        (["--no-timing"], False),
        (["--calibrate"], True),
        (["--no-calibrate"], False),
    ],
)
def test_plan_timing_flag_and_its_hidden_alias(
    flags: list[str], want: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from budgetlm.errors import UserError

    seen: dict[str, object] = {}

    def fake_plan(budget: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise UserError("stopped before planning")

    monkeypatch.setattr("budgetlm.cli.plan.run_plan", fake_plan)
    res = invoke("plan", "--flops", "1e17", *flags)
    assert res.exit_code == 2, res.output
    assert "stopped before planning" in res.output
    assert "calibrate" not in seen
    assert seen["timing"] is want


def _yaml(tmp_path: Path, text: str) -> str:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return str(p)


MALFORMED = {
    "bad_yaml": (lambda t: ["estimate", _yaml(t, "model: {n_layer: 2\n")], "invalid YAML"),
    "unknown_key": (lambda t: ["estimate", _yaml(t, "model: {layers: 2}\n")], "model.layers"),
    "wrong_type": (lambda t: ["estimate", _yaml(t, "model: {n_layer: deep}\n")], "model.n_layer"),
    "negative_width": (
        lambda t: ["estimate", _yaml(t, "model: {d_model: -64}\n")], "model.d_model"
    ),
    "heads_not_dividing": (
        lambda t: ["estimate", "tiny", "--set", "model.n_head=5"], "must divide d_model"
    ),
    "unknown_preset": (lambda t: ["estimate", "gpt5"], "unknown preset"),
    "unknown_optimizer": (lambda t: ["estimate", "tiny", "--optimizer", "adamx"], "optim.name"),
    "unknown_precision": (
        lambda t: ["estimate", "tiny", "--precision", "fp8"], "train.precision"
    ),
    "bad_set_syntax": (lambda t: ["estimate", "tiny", "--set", "model.n_layer"], "key=value"),
    "missing_file": (lambda t: ["estimate", str(t / "nope.yaml")], "no such file"),
    "top_level_list": (lambda t: ["estimate", _yaml(t, "- 1\n- 2\n")], "mapping"),
    "unknown_top_key": (lambda t: ["estimate", _yaml(t, "modle: {}\n")], "modle: unknown key"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_input_exits_2_with_one_line(case: str, tmp_path: Path) -> None:
    make_args, needle = MALFORMED[case]
    res = invoke(*make_args(tmp_path))
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert needle in text
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


def test_console_script_estimate_is_fast_and_torch_free() -> None:
    exe = Path(sys.executable).with_name("budgetlm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "budgetlm"]
    t0 = time.perf_counter()
    out = subprocess.run(
        [*cmd, "estimate", "gpt2-124m", "--json"], capture_output=True, text=True, env=_env()
    )
    wall = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["params"] == 124_439_808
    assert wall < 5.0  # the 1.5 s target is measured in benchmarks; this guards regressions
    code = "import budgetlm.cli, budgetlm.estimate, sys; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], env=_env()).returncode == 0


def test_console_script_user_error_exit_code() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "budgetlm", "estimate", "tiny", "--set", "model.n_head=7"],
        capture_output=True, text=True, env=_env(),
    )
    assert out.returncode == 2
    assert "must divide" in out.stderr
    assert "Traceback" not in out.stderr


def test_plan_command_and_planner_are_torch_free() -> None:
    code = (
        "import sys\n"
        "from budgetlm.cli import main\n"
        "sys.argv = ['budgetlm', 'plan', '--gpu-hours', '1', '--gpu', 'h100', '--json']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "assert 'torch' not in sys.modules, 'budgetlm plan imported torch'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["candidates"]
    code = "import budgetlm.plan, sys; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], env=_env()).returncode == 0


USAGE_ERRORS = {  # args, the flag or argument the one line must name
    "range_micro_batch": (["estimate", "tiny", "--micro-batch", "0"], "--micro-batch"),
    "range_tokens": (["plan", "--gpu-hours", "1", "--tokens", "0"], "--tokens"),
    "range_top": (["plan", "--gpu-hours", "1", "--top", "0"], "--top"),
    "range_workers": (["tune", "study.yaml", "--workers", "0"], "--workers"),
    "not_an_integer": (["plan", "--gpu-hours", "1", "--top", "many"], "--top"),
    "missing_argument": (["estimate"], "config"),
    "missing_option_value": (["estimate", "tiny", "--precision"], "--precision"),
    "unknown_option": (["plan", "--gpu-hours", "1", "--bogus"], "--bogus"),
    "unknown_command": (["plann"], "plann"),
    "bad_choice": (["plan", "--gpu-hours", "1", "--prior", "astrology"], "--prior"),
    "infinite_budget": (["plan", "--gpu-hours", "inf"], "--gpu-hours"),
    "overflowing_tokens": (["plan", "--gpu-hours", "1", "--tokens", "1e400"], "--tokens"),
    "infinite_gpus": (["plan", "--gpu-hours", "1", "--gpus", "inf"], "--gpus"),
    "bad_on_plateau": (["estimate", "tiny", "--set", "train.on_plateau=later"],
                       "train.on_plateau"),
    "cooldown_without_wsd": (["estimate", "tiny", "--set", "schedule.name=cosine", "--set",
                              "train.on_plateau=cooldown"], "train.on_plateau: cooldown needs"),
    "calibrate_without_budget": (["calibrate", "--data", "x.txt"], "--gpu-hours H, --flops C"),
    "calibrate_infinite_ratio": (
        ["calibrate", "--data", "x.txt", "--flops", "1e15", "--level-ratio", "inf"],
        "--level-ratio",
    ),
}


def _assert_one_error_line(text: str, needle: str) -> None:
    text = text.strip()
    assert len(text.splitlines()) == 1, text
    assert text.startswith("error: "), text
    assert needle in text, text
    assert "Traceback" not in text and "╭" not in text and "Usage:" not in text, text


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_errors_are_one_line(case: str) -> None:
    args, needle = USAGE_ERRORS[case]
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    _assert_one_error_line(res.output, needle)
    assert "--cost" not in res.output or args[0] != "calibrate"  # calibrate has no --cost


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_errors_are_one_line_from_the_console_script(case: str) -> None:
    args, needle = USAGE_ERRORS[case]
    exe = Path(sys.executable).with_name("budgetlm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "budgetlm"]
    out = subprocess.run([*cmd, *args], capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    _assert_one_error_line(out.stderr, needle)


def test_non_finite_budgets_say_finite() -> None:
    for args in (["--gpu-hours", "inf"], ["--flops", "1e400"], ["--gpu-hours", "1",
                                                                "--tokens", "inf"]):
        res = invoke("plan", *args)
        assert res.exit_code == 2, res.output
        assert "finite" in res.output, res.output


def test_help_version_and_bare_command_keep_their_exit_codes() -> None:
    for args in (["--help"], ["plan", "--help"], ["train", "--help"]):
        res = invoke(*args)
        assert res.exit_code == 0, res.output
        assert "Usage" in res.output
    res = invoke("--version")
    assert res.exit_code == 0 and res.output.strip() == f"budgetlm {__version__}"
    res = invoke()
    assert res.exit_code == 2 and "Usage" in res.output and "COMMAND" in res.output
