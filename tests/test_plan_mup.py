"""`plan` and `calibrate` under µP (--parametrization mup): the exported configs and the pilots
are µP relative to the µP lr prior's base width, every lr is that prior's (Cerebras-GPT), the
standard plan is as it was, and what µP has no rule for exits 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from fakes import fake_cpu_profile, use_profile
from typer.testing import CliRunner

from budgetlm import hardware, laws
from budgetlm.calibrate import Design, state_dir
from budgetlm.calibrate.fit import fit_pilots
from budgetlm.cli import app
from budgetlm.config import DataConfig, RunConfig, load_config
from budgetlm.data import load_corpus
from budgetlm.errors import UserError
from budgetlm.plan import Budget, plan

runner = CliRunner()
MUP_LR, MUP_BASE = laws.mup_lr_prior()


@pytest.fixture
def cpu_machine(monkeypatch: pytest.MonkeyPatch) -> hardware.HardwareProfile:
    """This machine, as a fake measured CPU profile (no measuring, no torch on the plan path)."""
    return use_profile(monkeypatch, fake_cpu_profile())


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    src = tmp_path / "text.txt"
    src.write_text("".join(f"line {i}: the cat sat on the mat, then ran.\n" for i in range(3000)))
    return src


def test_mup_prior_is_cerebras_gpts_base_and_the_standard_prior_is_deepseeks() -> None:
    assert (MUP_LR, MUP_BASE) == (6e-3, 256)
    assert "Cerebras-GPT" in laws.MUP_LR_SOURCE and "Dey et al. 2023" in laws.MUP_LR_SOURCE
    # the standard prior still depends on compute (held at its 1e17 value below the fit range)
    assert laws.lr_prior(1e12) == laws.deepseek_lr(1e17)
    assert laws.lr_prior(1e19) == laws.deepseek_lr(1e19) < laws.lr_prior(1e17)


@pytest.mark.parametrize("flops", [1e15, 1e20])
def test_mup_plan_changes_only_the_lr_and_the_model_parametrization(flops: float) -> None:
    std = plan(Budget(flops=flops))
    mup = plan(Budget(flops=flops), parametrization="mup")
    assert std.parametrization == "standard" and mup.parametrization == "mup"
    # the same candidates, ranked the same (the loss laws do not see the lr)
    assert [(c.name, c.tokens, c.batch_tokens) for c in mup.candidates] == \
        [(c.name, c.tokens, c.batch_tokens) for c in std.candidates]
    for i, (s, m) in enumerate(zip(std.candidates, mup.candidates, strict=True)):
        assert m.lr == MUP_LR and s.lr == pytest.approx(laws.lr_prior(s.flops), rel=1e-4)
        cfg = mup.config(i)
        assert cfg.model.parametrization == "mup" and cfg.model.mup_base_width == MUP_BASE
        assert cfg.optim.lr == MUP_LR and cfg.optim.name == "adamw"
        assert cfg.model.width_mult == pytest.approx(cfg.model.d_model / MUP_BASE)
        scfg = std.config(i)
        assert scfg.model.parametrization == "standard" and scfg.model.mup_base_width is None
        assert scfg.optim.lr == float(f"{s.lr:.3g}")
    d = mup.to_dict()
    assert d["parametrization"] == "mup"
    assert {c["lr"] for c in d["candidates"]} == {MUP_LR} and d["top"]["lr"] == MUP_LR
    assert "parametrization" not in std.to_dict()
    note = next(n for n in mup.notes if n.startswith("lr: µP prior"))
    assert "Dey et al. 2023" in note and f"base width {MUP_BASE}" in note
    assert not any("lr held" in n or n.startswith("lr and batch") for n in mup.notes)
    assert not any(n.startswith("lr: µP") for n in std.notes)


def test_exported_mup_plan_trains_as_is(
    tmp_path: Path, cpu_machine: object, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "plan.yaml"
    res = runner.invoke(app, ["plan", "--time", "5s", "--data", str(corpus_file), "--tokenizer",
                              "char", "--no-calibrate", "--parametrization", "mup", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "µP" in res.output and "Dey et al. 2023" in res.output
    cfg = load_config(str(out))
    assert cfg.model.parametrization == "mup" and cfg.model.mup_base_width == MUP_BASE
    assert cfg.optim.lr == MUP_LR
    allc = json.loads(out.with_suffix(".json").read_text())
    assert allc["parametrization"] == "mup" and len(allc["candidates"]) > 1
    assert all(c["lr"] == MUP_LR for c in allc["candidates"])
    res = runner.invoke(app, ["train", str(out), "--run-dir", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] in ("completed", "early_stopped"), result
    assert math.isfinite(result["val_loss"])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["parametrization"] == "mup"
    assert saved["model"]["mup_base_width"] == MUP_BASE


def test_standard_cli_plan_is_unchanged_by_the_option(
    tmp_path: Path, cpu_machine: object, corpus_file: Path
) -> None:
    base = ["plan", "--time", "5s", "--data", str(corpus_file), "--tokenizer", "char",
            "--no-calibrate", "--json"]
    plain = json.loads(runner.invoke(app, base).stdout)
    told = json.loads(runner.invoke(app, [*base, "--parametrization", "standard"]).stdout)
    for d in (plain, told):  # run-dependent: the seconds, and whether the corpus was cached
        d.pop("elapsed_s"), d["notes"].pop(0)
    assert plain == told and "parametrization" not in plain
    assert plain["top"]["lr"] == pytest.approx(laws.lr_prior(plain["top"]["flops"]))


@pytest.mark.parametrize("kwargs, words", [
    ({"optimizer": "lamb"}, "lamb has no µP rule"),
    ({"optimizer": "adafactor"}, "adafactor has no µP rule"),
    ({"family": "t5"}, "not t5"),
    ({"parametrization": "ntk"}, "expected standard or mup"),
])
def test_what_mup_has_no_rule_for_is_a_one_line_user_error(kwargs: dict, words: str) -> None:
    with pytest.raises(UserError) as err:
        plan(Budget(flops=1e15), **{"parametrization": "mup", **kwargs})
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("args, words", [
    (["plan", "--flops", "1e15", "--parametrization", "ntk"], "--parametrization"),
    (["plan", "--flops", "1e15", "--parametrization", "mup", "--finetune", "run", "--data", "x"],
     "--parametrization: does not apply to --finetune"),
    (["calibrate", "--data", "x", "--flops", "1e12", "--parametrization", "ntk"],
     "--parametrization"),
])
def test_bad_cli_inputs_exit_2(args: list[str], words: str) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert words in " ".join(r.output.split()) and "Traceback" not in r.output


class _Stop(UserError):
    """Raised in place of running the pilots: the design is written by then."""


class _NoPilots:
    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def run(self) -> None:
        raise _Stop("pilots not run in this test")


def test_calibrate_pilots_and_fit_carry_the_parametrization(
    tmp_path: Path, cpu_machine: object, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("budgetlm.calibrate.calibration.PilotRunner", _NoPilots)
    out = tmp_path / "fit.json"
    r = runner.invoke(app, ["calibrate", "--data", str(corpus_file), "--tokenizer", "char",
                            "--flops", "3e11", "--seq-len", "32", "--parametrization", "mup",
                            "-o", str(out), "--quiet"])
    assert r.exit_code == 2 and "pilots not run" in r.output, r.output
    d = Design.from_dict(json.loads((state_dir(out) / "design.json").read_text()))
    assert d.parametrization == "mup" and d.fingerprint["parametrization"] == "mup"
    assert len(d.pilots) == 9 and any("µP" in n for n in d.notes)
    for p in d.pilots:  # every pilot is the planner's µP config, valid as it is
        cfg = RunConfig.model_validate(p.config)
        assert cfg.model.parametrization == "mup" and cfg.model.mup_base_width == MUP_BASE
        assert cfg.optim.lr == MUP_LR
    # a fit of those pilots (losses from a known law) says so, and plans from it are µP
    data = DataConfig(source=str(corpus_file), tokenizer="char")
    corpus = load_corpus(data)
    records = {p.key: {"state": "complete", "tokens": p.tokens, "flops": p.level_flops,
                       "val_loss": laws.EPOCH.loss(p.params, p.tokens) / 5}
               for p in d.pilots}
    fit = fit_pilots(d, records, corpus, data, Budget(flops=3e11), 0.2, 0, 0)
    assert fit["parametrization"] == "mup"
    p = plan(Budget(flops=1e12), data=data, fit=fit)
    assert p.parametrization == "mup" and p.config(0).model.parametrization == "mup"
    assert p.top.lr == MUP_LR
    assert plan(Budget(flops=1e12), data=data, fit=fit,
                parametrization="standard").config(0).model.parametrization == "standard"
    # a standard design keeps the fingerprint it always had (saved designs stay reusable)
    r = runner.invoke(app, ["calibrate", "--data", str(corpus_file), "--tokenizer", "char",
                            "--flops", "3e11", "--seq-len", "32", "-o",
                            str(tmp_path / "std.json"), "--quiet"])
    assert r.exit_code == 2, r.output
    d = Design.from_dict(json.loads((state_dir(tmp_path / "std.json") / "design.json")
                                    .read_text()))
    assert d.parametrization == "standard" and "parametrization" not in d.fingerprint
    assert all(pl.config["model"]["parametrization"] == "standard" for pl in d.pilots)
