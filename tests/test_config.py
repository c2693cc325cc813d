from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, get_args, get_origin

import pytest
import yaml
from typer.testing import CliRunner

from budgetlm.cli import app
from budgetlm.config import (
    PRESETS,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    json_schema,
    load_config,
    parse_override,
    preset,
    read_yaml,
    to_yaml,
    with_overrides,
    with_values,
)
from budgetlm.errors import UserError


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_validates(name: str) -> None:
    cfg = preset(name)
    assert cfg.name == name


def test_nanogpt_cpu_preset_is_the_published_recipe() -> None:
    cfg = preset("nanogpt-cpu")
    m, o, s, t = cfg.model, cfg.optim, cfg.schedule, cfg.train
    assert (m.n_layer, m.n_head, m.d_model, m.seq_len, m.vocab_size) == (4, 4, 128, 64, 65)
    assert (o.lr, o.beta2, s.warmup_steps, s.min_lr_ratio) == (1e-3, 0.99, 100, 0.1)
    assert (t.micro_batch, t.max_steps, m.dropout) == (12, 2000, 0.0)


def test_overrides_parse_yaml_scalars() -> None:
    cfg = load_config("tiny", ["model.n_layer=3", "train.precision=bf16", "optim.lr=1e-4"])
    assert cfg.model.n_layer == 3
    assert cfg.train.precision == "bf16"
    assert cfg.optim.lr == pytest.approx(1e-4)


def test_yaml_round_trip(tmp_path) -> None:
    cfg = load_config("gpt2-124m", ["train.max_steps=10"])
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(str(path))
    assert again == cfg


def test_yaml_file_can_start_from_a_preset(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"preset": "nanogpt-cpu", "model": {"n_layer": 2}}))
    cfg = load_config(str(path))
    assert cfg.model.n_layer == 2 and cfg.model.d_model == 128


def test_schema_is_json_with_descriptions() -> None:
    schema = json.loads(json_schema())
    assert schema["title"] == "budgetlm RunConfig"
    assert "ModelConfig" in schema["$defs"]
    assert schema["$defs"]["ModelConfig"]["properties"]["n_layer"]["description"]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model.n_head=3"], "n_head (3) must divide d_model"),
        (["model.nlayer=3"], "model.nlayer: unknown key (did you mean model.n_layer?)"),
        (["model.d_model=-5"], "model.d_model"),
        (["train.precision=fp8"], "train.precision"),
        (["optim.name=adamx"], "optim.name"),
        (["model.n_layer=two"], "model.n_layer"),
        (["nonsense"], "expected key=value"),
        (["=3"], "empty key"),
    ],
)
def test_bad_overrides_name_the_field(overrides: list[str], needle: str) -> None:
    with pytest.raises(UserError) as exc:
        load_config("tiny", overrides)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_preset_suggests() -> None:
    with pytest.raises(UserError, match="did you mean tiny"):
        load_config("tinyy")


def test_with_overrides_validates() -> None:
    cfg = RunConfig()
    assert with_overrides(cfg, ["seed=3"]).seed == 3
    with pytest.raises(UserError):
        with_overrides(cfg, ["train.grad_accum=0"])


def test_parse_override_keeps_strings() -> None:
    assert parse_override("data.source=builtin:pystdlib") == (
        ["data", "source"], "builtin:pystdlib"
    )


# --- strict values: numbers are numbers, switches are switches, floats are finite ------------


def _one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as exc:
        call(*args, **kwargs)
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text
    return text


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _fields_of(kind: type) -> list[str]:
    """Dotted paths of every config field whose annotation admits `kind` (bool, int or float)."""
    sections = {"": RunConfig, "model.": ModelConfig, "optim.": OptimConfig,
                "schedule.": ScheduleConfig, "data.": DataConfig, "train.": TrainConfig}
    out = []
    for prefix, cls in sections.items():
        for name, field in cls.model_fields.items():
            args = set(get_args(field.annotation)) | {field.annotation}
            args |= {get_args(a)[0] for a in args if get_origin(a) is Annotated}
            if kind in args:
                out.append(prefix + name)
    return out


@pytest.mark.parametrize("value", [0, -1, -16])
def test_zero_micro_batch_is_refused(tmp_path, value: int) -> None:
    text = _one_line_error(load_config, "tiny", [f"train.micro_batch={value}"])
    assert text.startswith("--set: train.micro_batch:") and ">= 1" in text
    path = _write(tmp_path, f"train:\n  micro_batch: {value}\n")
    text = _one_line_error(load_config, path)
    assert text.startswith(f"{path}: train.micro_batch:")
    _one_line_error(with_values, preset("tiny"), {"train.micro_batch": value})


def test_micro_batch_takes_auto_and_whole_numbers(tmp_path) -> None:
    assert load_config("tiny", ["train.micro_batch=auto"]).train.micro_batch == "auto"
    cfg = load_config(_write(tmp_path, "train: {micro_batch: 4.0}\n"))
    assert cfg.train.micro_batch == 4 and isinstance(cfg.train.micro_batch, int)
    assert "'auto'" in _one_line_error(load_config, "tiny", ["train.micro_batch=many"])
    assert "whole number" in _one_line_error(load_config, "tiny", ["train.micro_batch=2.5"])


def test_bool_is_not_an_int(tmp_path) -> None:
    path = _write(tmp_path, "model: {n_layer: true}\n")
    text = _one_line_error(load_config, path)
    assert text == f"{path}: model.n_layer: expected a whole number, got true"
    assert "train.grad_accum" in _one_line_error(load_config, "tiny", ["train.grad_accum=yes"])


@pytest.mark.parametrize("dotted", _fields_of(int))
def test_every_int_field_refuses_bools_fractions_and_strings(dotted: str) -> None:
    for bad in (True, 2.5, "4", float("inf")):
        assert dotted in _one_line_error(with_values, RunConfig(), {dotted: bad})


@pytest.mark.parametrize("dotted", _fields_of(bool))
def test_every_switch_takes_only_true_or_false(dotted: str) -> None:
    for bad in (1, 0, "yes", "true"):
        text = _one_line_error(with_values, RunConfig(), {dotted: bad})
        assert f"{dotted}: expected true or false" in text
    assert with_values(RunConfig(), {dotted: True}) is not None


def test_whole_float_is_an_int_but_fraction_is_not(tmp_path) -> None:
    cfg = load_config(_write(tmp_path, "train: {max_tokens: 2e6, max_steps: 1_000}\n"))
    assert cfg.train.max_tokens == 2_000_000 and isinstance(cfg.train.max_tokens, int)
    assert cfg.train.max_steps == 1000
    text = _one_line_error(load_config, _write(tmp_path, "train: {max_tokens: 2.5}\n", "f.yaml"))
    assert "train.max_tokens: expected a whole number, got 2.5" in text
    assert "too large" in _one_line_error(load_config, "tiny", [f"model.n_layer={2**70}"])


def test_yaml_exponent_numbers_are_floats(tmp_path) -> None:
    cfg = load_config(_write(tmp_path, "optim: {lr: 1e-3, eps: 1E-8}\ntrain: {max_flops: 3e15}\n"))
    assert (cfg.optim.lr, cfg.optim.eps, cfg.train.max_flops) == (1e-3, 1e-8, 3e15)
    assert load_config("tiny", ["optim.lr=5e-4"]).optim.lr == 5e-4
    assert parse_override("name=run1e3") == (["name"], "run1e3")


def test_quoted_number_is_not_a_number(tmp_path) -> None:
    text = _one_line_error(load_config, _write(tmp_path, 'optim: {lr: "1e-3"}\n'))
    assert "optim.lr: expected a number, got the string '1e-3'" in text
    assert "model.n_layer" in _one_line_error(load_config, "tiny", ["model.n_layer='4'"])


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400"])
def test_infinite_lr_is_refused(tmp_path, value: str) -> None:
    path = _write(tmp_path, f"optim:\n  lr: {value}\n")
    text = _one_line_error(load_config, path)
    assert text.startswith(f"{path}: optim.lr: must be a finite number")
    assert "optim.lr" in _one_line_error(load_config, "tiny", [f"optim.lr={value}"])


@pytest.mark.parametrize("dotted", _fields_of(float))
def test_every_float_field_must_be_finite(dotted: str) -> None:
    for bad in (math.inf, -math.inf, math.nan, 10**400):
        assert dotted in _one_line_error(with_values, RunConfig(), {dotted: bad})


def test_planned_prediction_must_be_finite() -> None:
    meta = {"predicted": {"loss": math.nan, "loss_kind": "prior"}}
    assert "meta.predicted: loss" in _one_line_error(with_values, RunConfig(), {"meta": meta})


def test_negative_seed_is_refused() -> None:
    assert "seed" in _one_line_error(load_config, "tiny", ["seed=-1"])
    assert load_config("tiny", ["seed=12345"]).seed == 12345


def test_checkpoint_seconds_defaults_to_five_minutes() -> None:
    assert RunConfig().train.checkpoint_seconds == 300.0
    assert load_config("tiny", ["train.checkpoint_seconds=null"]).train.checkpoint_seconds is None
    assert "train.checkpoint_seconds" in _one_line_error(
        load_config, "tiny", ["train.checkpoint_seconds=0"]
    )


# --- YAML files: duplicate keys, empty, nesting, unreadable ---------------------------------


def test_duplicate_yaml_key_is_refused(tmp_path) -> None:
    path = _write(tmp_path, "optim:\n  lr: 1e-3\n  beta2: 0.99\n  lr: 2e-3\n")
    assert _one_line_error(load_config, path) == (
        f"{path}: duplicate key 'lr' on line 4 (first on line 2)"
    )
    top = _write(tmp_path, "seed: 1\nmodel: {n_layer: 3}\nseed: 2\n", "top.yaml")
    assert "duplicate key 'seed' on line 3 (first on line 1)" in _one_line_error(read_yaml, top)
    text = _one_line_error(load_config, "tiny", ["meta={a: 1, a: 2}"])
    assert "--set meta: duplicate key 'a'" in text


def test_yaml_merge_keys_may_still_override(tmp_path) -> None:
    path = _write(tmp_path, "meta:\n  base: &b {k: 1, j: 2}\n  mine:\n    <<: *b\n    k: 3\n")
    assert load_config(path).meta["mine"] == {"k": 3, "j": 2}


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n", "---\n", "null\n"])
def test_empty_yaml_file_is_refused(tmp_path, text: str) -> None:
    path = _write(tmp_path, text)
    assert _one_line_error(load_config, path).startswith(f"{path} is empty")


@pytest.mark.parametrize(
    "text",
    ["{a: " * 5000 + "1" + "}" * 5000, "meta: " + "[" * 5000 + "]" * 5000,
     "".join(f"{' ' * i}a{i}:\n" for i in range(300)) + " " * 300 + "x: 1\n"],
    ids=["flow-mapping", "flow-list", "block"],
)
def test_deeply_nested_yaml_is_one_line_error(tmp_path, text: str) -> None:
    path = _write(tmp_path, text)
    assert "nested more than 100 levels deep" in _one_line_error(load_config, path)
    assert "nested more than" in _one_line_error(load_config, "tiny", ["meta=" + "[" * 5000])


def test_yaml_alias_bomb_and_cycle_are_refused(tmp_path) -> None:
    rows = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    bomb = _write(tmp_path, "meta:\n" + "".join(f"  {r}\n" for r in rows))
    assert "more than 100000 values" in _one_line_error(load_config, bomb)
    cycle = _write(tmp_path, "meta: &m {self: *m}\n", "cycle.yaml")
    assert "more than 100000 values" in _one_line_error(load_config, cycle)


def test_config_file_mistakes_name_the_file(tmp_path) -> None:
    cases = {
        "1: 2\n": "1: unknown key",
        "preset: tinyy\n": "preset: unknown preset 'tinyy' (did you mean tiny?)",
        "- 1\n- 2\n": "expected a mapping at the top level, got list",
        "model: {n_layer: [\n": "invalid YAML",
        "a: !!python/object:os.system {}\n": "invalid YAML",
        "modle: {}\n": "modle: unknown key (did you mean model?)",
        "model: {n_layer: " + "9" * 5000 + "}\n": "cannot read '999",
        "meta: {b: !!binary aGVsbG8=}\n": "unsupported value type bytes",
        "meta: !!set {a, b}\n": "unsupported value type set",
    }
    for i, (text, needle) in enumerate(cases.items()):
        path = _write(tmp_path, text, f"c{i}.yaml")
        message = _one_line_error(load_config, path)
        assert message.startswith(f"{path}") and needle in message, message
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    assert "not a text file" in _one_line_error(load_config, str(binary))
    assert "is a directory" in _one_line_error(load_config, str(tmp_path) + "/")
    assert "no such file" in _one_line_error(load_config, str(tmp_path / "missing.yaml"))


def test_yaml_dates_stay_strings(tmp_path) -> None:
    path = _write(tmp_path, "meta: {when: 2024-01-05, odd: 2024-13-45}\n")
    assert load_config(path).meta == {"when": "2024-01-05", "odd": "2024-13-45"}


def test_override_fixing_a_bad_file_is_taken_and_blame_is_right(tmp_path) -> None:
    path = _write(tmp_path, "train: {micro_batch: 0}\n")
    assert load_config(path, ["train.micro_batch=4"]).train.micro_batch == 4
    good = _write(tmp_path, "train: {micro_batch: 2}\n", "good.yaml")
    assert _one_line_error(load_config, good, ["optim.lr=0"]).startswith("--set: optim.lr")


def _without_file_permission_override(locked: Path) -> list[str] | None:
    """A command prefix under which `locked` (mode 000) cannot be read, though CI runs as root;
    None when there is none."""
    prefixes = [[]]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        prefixes.append(
            [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps=-all"]
        )
    for prefix in prefixes:
        probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(locked)!r}).read()"],
                               capture_output=True, text=True, timeout=60)
        if "PermissionError" in probe.stderr:
            return prefix
    return None


def test_unreadable_config_file_is_one_line_error(tmp_path) -> None:
    path = tmp_path / "locked.yaml"
    path.write_text("model: {n_layer: 3}\n")
    path.chmod(0)
    try:
        prefix = _without_file_permission_override(path)
        if prefix is None:
            pytest.skip("running as root and setpriv cannot drop the file-permission capability")
        res = subprocess.run([*prefix, sys.executable, "-m", "budgetlm", "estimate", str(path)],
                             capture_output=True, text=True, timeout=120)
    finally:
        path.chmod(0o644)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert lines == [f"error: {path}: permission denied (cannot read the file)"]


def test_set_zero_micro_batch_exits_2_with_one_line() -> None:
    res = CliRunner().invoke(app, ["estimate", "tiny", "--set", "train.micro_batch=0"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "train.micro_batch" in lines[0] and ">= 1" in lines[0]
