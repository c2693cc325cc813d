"""Hostile input, generated: every config file and command line ends in exit 0 or a one-line
error with exit 2 — never a traceback, never a hang. (hypothesis; bounded for CI.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from budgetlm.cli import app
from budgetlm.config import RunConfig

runner = CliRunner()
SECONDS_PER_CALL = 10.0

# Real paths of the RunConfig, so many generated files get past the unknown-key check and
# reach the validators and the estimator.
FIELDS = [f"{section}.{name}" for section, model in (
    ("model", RunConfig.model_fields["model"].annotation),
    ("optim", RunConfig.model_fields["optim"].annotation),
    ("schedule", RunConfig.model_fields["schedule"].annotation),
    ("data", RunConfig.model_fields["data"].annotation),
    ("train", RunConfig.model_fields["train"].annotation),
) for name in model.model_fields]  # type: ignore[union-attr]

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2, 64, 1e-12, 1e300, 1e400, 2**63, float("nan")]),
)
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=12),
                    st.sampled_from(["auto", "gpt", "bert", "bf16", "adamw", "wsd", "rope", ""]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


@st.composite
def config_documents(draw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["preset"] = draw(st.sampled_from(["tiny", "bert-tiny", "nanogpt-cpu", "nope", 3]))
    for path in draw(st.lists(st.sampled_from(FIELDS), max_size=5)):
        section, name = path.split(".")
        node = doc.setdefault(section, {})
        if isinstance(node, dict):
            node[name] = draw(values)
    for _ in range(draw(st.integers(0, 2))):
        doc[draw(st.text(min_size=1, max_size=8))] = draw(values)
    return doc


def _check(result: Any, started: float) -> None:
    assert time.perf_counter() - started < SECONDS_PER_CALL, "took too long"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback: {result.exception!r}") from result.exception
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr


def _yaml_text(doc: dict[str, Any]) -> str:
    def clean(v: Any) -> Any:  # YAML has .nan/.inf; python floats dump fine
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return yaml.safe_dump(clean(doc), sort_keys=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(doc=config_documents())
def test_any_config_file_is_estimated_or_refused_in_one_line(doc: dict[str, Any],
                                                             tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(_yaml_text(doc))
    started = time.perf_counter()
    _check(runner.invoke(app, ["estimate", str(path), "--json"]), started)


FLAG_VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1", "8", "1e19", "1e400", "inf", "nan", "-inf", "8B", "1h30m",
                     "10m", "x", "", "1e-300", "2.5", "999999999999999999999"]),
    st.text(max_size=6),
)
PLAN_FLAGS = ["--gpu-hours", "--flops", "--time", "--cost", "--price", "--gpus", "--tokens",
              "--gpu", "--prior", "--seq-len", "--precision", "--schedule", "--top"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flags=st.lists(st.tuples(st.sampled_from(PLAN_FLAGS), FLAG_VALUES), min_size=1,
                      max_size=4))
def test_any_plan_command_line_answers_or_refuses_in_one_line(
        flags: list[tuple[str, str]]) -> None:
    args = ["plan", "--json", "--no-timing"]
    for flag, value in flags:
        args += [flag, value]
    started = time.perf_counter()
    _check(runner.invoke(app, args), started)


@settings(max_examples=60, deadline=None)
@given(flags=st.lists(st.tuples(st.sampled_from(
    ["--micro-batch", "--precision", "--optimizer", "--gpu", "--set"]), FLAG_VALUES),
    max_size=3), preset=st.sampled_from(["tiny", "gpt2-124m", "bert-base", "t5-base", "nope"]))
def test_any_estimate_command_line_answers_or_refuses_in_one_line(
        flags: list[tuple[str, str]], preset: str) -> None:
    args = ["estimate", preset, "--json"]
    for flag, value in flags:
        args += [flag, f"model.n_layer={value}" if flag == "--set" else value]
    started = time.perf_counter()
    _check(runner.invoke(app, args), started)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(low=st.floats(min_value=-3, max_value=12), factor=st.floats(min_value=0.05, max_value=6),
       gpu=st.sampled_from(["h100-sxm", "a100-80gb", "l4"]))
def test_more_gpu_hours_never_plan_worse_for_any_budget(low: float, factor: float,
                                                       gpu: str) -> None:
    """Property: of two budgets on the same GPU, the larger plans a predicted loss no higher."""
    import json

    losses = []
    for exponent in (low, low + factor):
        result = runner.invoke(app, ["plan", "--gpu-hours", f"{10**exponent:.6g}", "--gpu", gpu,
                                     "--json"])
        assert result.exit_code == 0, result.output
        losses.append(json.loads(result.stdout)["top"]["loss"])
    assert losses[1] <= losses[0] * (1 + 1e-9), (low, factor, gpu, losses)
