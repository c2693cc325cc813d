from __future__ import annotations

import json

import pytest
import yaml

from budgetlm.config import (
    PRESETS,
    RunConfig,
    json_schema,
    load_config,
    parse_override,
    preset,
    to_yaml,
    with_overrides,
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
