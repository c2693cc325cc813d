"""The study file, trial configs, feasibility, storage URLs, exports and plots: no trials run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from budgetlm.cli import app
from budgetlm.config import load_config
from budgetlm.errors import UserError
from budgetlm.plan.pareto import non_dominated
from budgetlm.tune.pruning import axis_step
from budgetlm.tune.spec import StudySpec, check_storage_url, load_study
from budgetlm.tune.trials import build_trial_config, infeasible

runner = CliRunner()

GOOD = {
    "name": "unit",
    "base": "tiny",
    "data": {"source": "synthetic:markov:order=1,vocab=16,tokens=100000"},
    "trial_cap": {"time": 2},
    "budget": {"trials": 2},
    "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
}


def write(tmp_path: Path, changes: dict, drop: tuple[str, ...] = ()) -> Path:
    d = {**GOOD, **changes}
    for k in drop:
        d.pop(k)
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


BAD = {
    "unknown_key": ({"samplr": "tpe"}, (), "samplr: unknown key"),
    "unknown_parameter_path": (
        {"space": {"model.layers": {"type": "int", "low": 1, "high": 2}}}, (),
        "space.model.layers: unknown parameter path (did you mean model.n_layer?)",
    ),
    "low_above_high": (
        {"space": {"optim.lr": {"type": "float", "low": 0.1, "high": 0.01}}}, (),
        "space.optim.lr: low (0.1) must not exceed high (0.01)",
    ),
    "empty_choices": (
        {"space": {"model.d_model": {"type": "categorical", "choices": []}}}, (),
        "space.model.d_model.choices",
    ),
    "bad_storage_url": ({"storage": "foo://bar"}, (), "storage: unsupported storage URL"),
    "memory_sqlite": ({"storage": "sqlite://"}, (), "storage:"),
    "unknown_sampler": ({"sampler": "annealing"}, (), "sampler.type"),
    "unknown_pruner": ({"pruner": {"type": "patient"}}, (), "pruner.type"),
    "negative_cap": ({"trial_cap": {"time": -5}}, (), "trial_cap.time"),
    "two_caps": ({"trial_cap": {"time": 5, "tokens": 100}}, (), "trial_cap: give exactly one"),
    "missing_base": ({}, ("base",), "base: Field required"),
    "base_not_found": ({"base": "nothere.yaml"}, (), "base: no such file"),
    "base_typo": ({"base": "tinyy"}, (), "did you mean tiny"),
    "empty_budget": ({"budget": {}}, (), "budget: give time and/or trials"),
    "budget_type": ({"budget": {"trials": "many"}}, (), "budget.trials"),
    "enqueue_outside_space": ({"enqueue": [{"model.n_layer": 3}]}, (), "enqueue[0].model.n_layer"),
    "space_sets_cap": (
        {"space": {"train.max_time": {"type": "float", "low": 1, "high": 2}}}, (),
        "space.train.max_time: caps are set by trial_cap",
    ),
    "space_section": ({"space": {"model": {"type": "int", "low": 1, "high": 2}}}, (),
                      "space.model: not a single field"),
    "data_typo": (
        {"data": {"sourc": "x"}}, (), "data.sourc: unknown key (did you mean data.source?)"
    ),
    "fixed_invalid": ({"fixed": {"model.n_head": 5}}, (), "n_head (5) must divide d_model (64)"),
    "unknown_objective": ({"objective": "accuracy"}, (), "objective: unknown objective"),
    "cmaes_pareto": ({"objective": ["val_bpb", "cost"], "sampler": "cmaes"}, (), "sampler: cmaes"),
    "log_nonpositive": (
        {"space": {"optim.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}}, (),
        "space.optim.lr: log: low (0.0) must be > 0",
    ),
    "bad_name": ({"name": "a b/c"}, (), "name:"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_study_file_exits_2_naming_the_field(case: str, tmp_path: Path) -> None:
    changes, drop, needle = BAD[case]
    path = write(tmp_path, changes, drop)
    res = runner.invoke(app, ["tune", str(path)])
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert needle in text, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text


def test_bad_yaml_and_bad_flags_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\nspace: {a: 1\n")
    for args, needle in (
        (["tune", str(p)], "invalid YAML"),
        (["tune", str(write(tmp_path, {})), "--set", "budget.trals=3"], "budget.trals"),
        (["tune", str(write(tmp_path, {})), "--set", "nothing=3"], "unknown key 'nothing'"),
        (["tune", str(write(tmp_path, {})), "--storage", "redis://x"], "--storage"),
        (["report", str(write(tmp_path, {"storage": f"sqlite:///{tmp_path}/none.db"}))],
         "no storage"),
        (["export", str(write(tmp_path, {})), "-o", str(tmp_path / "x.yaml"), "--storage",
          f"journal:{tmp_path}/none.log"], "no storage"),
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert needle in res.output, res.output


def test_schema_study_is_json_schema() -> None:
    res = runner.invoke(app, ["schema", "study"])
    assert res.exit_code == 0, res.output
    schema = json.loads(res.output)
    assert schema["title"] == "budgetlm StudySpec"
    assert schema["additionalProperties"] is False
    # without around every derived field is required; with around none is (the plan gives them)
    assert schema["anyOf"] == [
        {"required": ["around"]},
        {"required": ["name", "base", "trial_cap", "budget", "space"]},
    ]
    assert not {"space", "trial_cap", "budget", "base", "name"} & set(schema.get("required", []))


def test_quickstart_and_examples_validate() -> None:
    root = Path(__file__).resolve().parent.parent / "studies"
    files = sorted(root.glob("*.yaml"))
    assert any(f.name == "quickstart.yaml" for f in files)
    for f in files:
        study = load_study(f)
        assert study.spec.space


def test_overrides_reach_study_space_and_fixed(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, {}), [
        "budget.trials=7", "space.optim.lr.high=0.05", "model.n_layer=3",
        "space.model.d_model={type: categorical, choices: [32, 64]}", "storage=journal:j.log",
    ])
    spec = study.spec
    assert spec.budget.trials == 7
    assert spec.space["optim.lr"].high == 0.05
    assert spec.space["model.d_model"].choices == [32, 64]
    assert spec.fixed == {"model.n_layer": 3}
    assert study.base["model"]["n_layer"] == 3
    assert study.storage_url == "journal:j.log"
    study = load_study(write(tmp_path, {"sampler": "tpe"}),
                       ["sampler.n_startup_trials=2", "seed=5", "fixed.seed=7"])
    assert study.spec.sampler.type == "tpe" and study.spec.sampler.n_startup_trials == 2
    assert study.spec.seed == 5 and study.base["seed"] == 7


def test_shorthand_sampler_and_pruner() -> None:
    spec = StudySpec.model_validate({**GOOD, "sampler": "random", "pruner": "hyperband"})
    assert spec.sampler.type == "random" and spec.pruner.type == "hyperband"
    assert spec.objectives == ["val_bpb"] and not spec.multi


def test_trial_config_sets_cap_cadence_and_params(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, {"evals": 4}))
    cfg = build_trial_config(study, {"optim.lr": 0.002}, number=3)
    t = cfg.train
    assert cfg.optim.lr == 0.002
    assert t.max_time == 2 and t.max_steps is None and t.max_tokens is None
    assert t.eval_time_interval == pytest.approx(0.5)
    assert cfg.meta["tune"] == {"study": "unit", "trial": 3, "params": {"optim.lr": 0.002}}
    assert cfg.data.source.startswith("synthetic:markov")

    study = load_study(write(tmp_path, {"trial_cap": {"tokens": 40960}, "evals": 4}))
    cfg = build_trial_config(study, {"optim.lr": 0.002}, number=0)
    assert cfg.train.max_tokens == 40960 and cfg.train.max_time is None
    assert cfg.train.eval_interval == 10  # 40 steps of 16 x 64 tokens, 4 evals


def test_invalid_combination_is_a_user_error(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, {
        "space": {"model.n_head": {"type": "categorical", "choices": [2, 3]}}}))
    with pytest.raises(UserError, match="n_head \\(3\\) must divide d_model \\(64\\)"):
        build_trial_config(study, {"model.n_head": 3}, number=0)


class _Profile:
    device = "cpu"
    measured = True
    device_memory_bytes = 8 * 2**30
    datasheet = None
    gpu_count = 0

    def peak(self, precision: str) -> float:
        return 5e10


def test_infeasible_memory_and_step_time(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, {}))
    small = build_trial_config(study, {}, number=0)
    assert infeasible(small, study.spec.trial_cap, _Profile()) is None
    huge = build_trial_config(study, {"model.n_layer": 48, "model.d_model": 8192,
                                      "model.n_head": 64}, number=1)
    why = infeasible(huge, study.spec.trial_cap, _Profile())
    assert why is not None and why.startswith("too big for memory")
    # Fits when it runs alone, not when 2000 trials share the memory.
    why = infeasible(small, study.spec.trial_cap, _Profile(), share=2000)
    assert why is not None and "per trial (2000 at once)" in why
    slow = build_trial_config(study, {"model.n_layer": 24, "model.d_model": 1024,
                                      "model.n_head": 16, "train.micro_batch": 64,
                                      "model.seq_len": 1024}, number=3)
    why = infeasible(slow, study.spec.trial_cap, type("P", (_Profile,), {
        "device_memory_bytes": 2**50})())
    assert why is not None and "cannot take one step within the cap" in why


def test_axis_step_snaps_to_a_shared_grid() -> None:
    assert axis_step(0.0, 2000, 10) == 0
    assert axis_step(205.0, 2000, 10) == 200
    assert axis_step(399.0, 2000, 10) == 200
    assert axis_step(2000.0, 2000, 10) == 2000


def test_storage_urls() -> None:
    for ok in ("sqlite:///runs/x/study.db", "sqlite:////tmp/a.db", "journal:runs/x.log",
               "postgresql://u:p@host/db", "postgresql+psycopg2://h/db", "mysql://h/db"):
        check_storage_url(ok)
    for bad in ("foo://x", "sqlite://", "sqlite:///:memory:", "journal:", "runs/x.db",
                "postgresql://"):
        with pytest.raises(ValueError):
            check_storage_url(bad)


def test_export_turns_a_time_cap_into_the_tokens_reached(tmp_path: Path, monkeypatch) -> None:
    import optuna

    from budgetlm.tune.report import export_config, write_outputs
    from budgetlm.tune.study import open_study

    monkeypatch.chdir(tmp_path)
    study = load_study(write(tmp_path, {}))
    obj, created = open_study(study)
    assert created
    cfg = build_trial_config(study, {"optim.lr": 0.002}, number=0)
    trial = obj.ask()
    trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)
    for k, v in {"config": cfg.model_dump(mode="json"), "tokens": 30720, "steps": 30,
                 "train_seconds": 2.01, "wall_seconds": 6.0, "flops": 1e10,
                 "outcome": "completed", "reason": "max_time"}.items():
        trial.set_user_attr(k, v)
    obj.tell(trial, 2.5)
    out = export_config(study, obj)
    assert out.train.max_time is None and out.train.max_tokens == 30720
    assert out.meta["tune"]["trial"] == 0 and out.meta["tune"]["values"] == [2.5]
    kept = export_config(study, obj, 0, keep_time_cap=True)
    assert kept.train.max_time == 2 and kept.train.max_tokens is None

    s = write_outputs(study, obj)
    assert s["best"]["number"] == 0
    for name in ("trials.csv", "trials.parquet", "best.yaml", "report.html", "summary.json"):
        assert (tmp_path / "runs" / "unit" / name).exists(), name
    again = load_config(str(tmp_path / "runs" / "unit" / "best.yaml"))
    assert again.train.max_tokens == 30720
    loaded = optuna.load_study(study_name="unit", storage=study.storage_url)
    assert len(loaded.trials) == 1

    res = runner.invoke(app, ["export", str(study.path), "--trial", "0", "-o", "t0.yaml",
                              "--keep-time-cap"])
    assert res.exit_code == 0, res.output
    assert load_config("t0.yaml").train.max_time == 2
    res = runner.invoke(app, ["export", str(study.path), "--trial", "9", "-o", "t9.yaml"])
    assert res.exit_code == 2 and "no such trial" in res.output


def test_plots_are_self_contained_svg() -> None:
    from budgetlm.tune import plots

    svg = plots.chart(
        [plots.Series("a", [(1, 2.0), (2, 1.5), (3, 1.7)], labels=["x", "y", "z"]),
         plots.Series("best", [(1, 2.0), (2, 1.5)], mode="steps")],
        "history", "trial", "val_bpb",
    )
    assert svg.startswith("<svg") and svg.count("<circle") == 3 and "<path" in svg
    log = plots.chart([plots.Series("c", [(1e9, 2.0), (1e11, 1.0)])], "t", "x", "y", log_x=True)
    assert "1e9" in log or "1e+09" in log or "1.0e9" in log
    empty = plots.chart([], "nothing", "x", "y")
    assert "no data yet" in empty
    bars = plots.bars([("optim.lr", 0.7), ("model.n_layer", 0.3)], "imp", "share")
    assert bars.count("<rect") == 2
    pts = [(1, 3), (2, 2), (3, 2.5), (0.5, 4), (4, 1)]
    assert non_dominated(pts) == [0, 1, 3, 4]  # (3, 2.5) is beaten by (2, 2)
    page = plots.page("t", [("h", svg)], "<p>intro</p>")
    assert "<script" not in page and page.startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("rc, result, stderr, state, kind, needle", [
    # a classification or t5 run has no val_bpb: a finite val_loss completes it
    (0, {"status": "completed", "stop_reason": "max_time", "val_loss": 2.0, "val_bpb": None}, "",
     "complete", "completed", "max_time"),
    (0, {"status": "completed", "val_loss": None}, "", "fail", "failed", "without a finite"),
    (0, {"status": "diverged", "stop_reason": "non-finite loss at step 3"}, "", "pruned",
     "diverged", "non-finite loss"),
    (1, None, "Traceback ...\ntorch.OutOfMemoryError: CUDA out of memory. Tried", "fail", "oom",
     "out of memory"),
    (1, None, "Traceback ...\nRuntimeError: boom\n", "fail", "failed",
     "exit 1: RuntimeError: boom"),
    (2, None, "error: model: n_head must divide d_model\n", "fail", "invalid", "rejected"),
    (3, None, "", "fail", "failed", "exit 3"),
    (-11, None, "", "fail", "crashed", "SIGSEGV (segmentation fault)"),
    (-9, None, "", "fail", "oom", "SIGKILL"),
    (130, None, "", "fail", "interrupted", "interrupted"),
])
def test_classify_exit(rc, result, stderr, state, kind, needle) -> None:
    from budgetlm.runner.process import classify_exit

    out = classify_exit(rc, result, stderr)
    assert (out.state, out.kind) == (state, kind)
    assert needle in out.reason


def test_stale_trials_are_recognised_by_pid_host_and_heartbeat() -> None:
    import datetime as dt
    import os
    import time

    from budgetlm.tune import storage as st

    now = time.time()
    me = st.worker_attrs()
    assert st.stale_reason(me, None) is None  # this live process
    dead = {**me, "worker_pid": 2**22 + 12345}
    assert "is gone" in st.stale_reason(dead, None)
    reused = {**me, "worker_start": "-1"}
    assert "pid reused" in st.stale_reason(reused, None)
    other = {"host": "elsewhere", "worker_pid": os.getpid(), "heartbeat": now - 5}
    assert st.stale_reason(other, None, now) is None  # another machine, beating
    other["heartbeat"] = now - st.STALE_SECONDS - 1
    assert "no heartbeat from elsewhere" in st.stale_reason(other, None, now)
    started = dt.datetime.fromtimestamp(now - st.NO_ATTRS_SECONDS - 5)
    assert "no worker recorded" in st.stale_reason({}, started, now)
    assert st.stale_reason({}, dt.datetime.fromtimestamp(now - 1), now) is None


def _study_with_trials(tmp_path: Path, ends: list[tuple[str, str, str, float | None]]):
    """A study (storage under tmp_path, the working directory) whose trials ended as `ends`:
    (state, outcome, reason, value) each; no trial runs."""
    from optuna.trial import TrialState

    from budgetlm.tune.study import open_study

    study = load_study(write(tmp_path, {}))
    obj, _ = open_study(study)
    for number, (state, outcome, reason, value) in enumerate(ends):
        cfg = build_trial_config(study, {"optim.lr": 0.002}, number=number)
        trial = obj.ask()
        trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)
        for k, v in {"config": cfg.model_dump(mode="json"), "tokens": 2048, "steps": 2,
                     "train_seconds": 1.0, "wall_seconds": 3.0, "outcome": outcome,
                     "reason": reason}.items():
            trial.set_user_attr(k, v)
        if state == "COMPLETE":
            obj.tell(trial, value)
        else:
            obj.tell(trial, state=TrialState[state])
    return study


def _one_line(res, code: int = 2) -> str:
    assert res.exit_code == code, res.output
    text = res.output.strip()
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    return text


def test_export_of_failed_trial_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    study = _study_with_trials(tmp_path, [
        ("COMPLETE", "completed", "max_time", 2.5),
        ("FAIL", "failed", "RuntimeError: injected fault", None),
        ("PRUNED", "diverged", "diverged: non-finite loss at step 3", None),
        ("PRUNED", "pruned", "pruned by median at 1200 ms", None),
    ])
    path = str(study.path)
    for number, why in ((1, "(failed: RuntimeError: injected fault)"),
                        (2, "(diverged: non-finite loss at step 3)"),
                        (3, "(pruned by median at 1200 ms)")):
        out = tmp_path / f"t{number}.yaml"
        res = runner.invoke(app, ["export", path, "--trial", str(number), "-o", str(out)])
        text = _one_line(res)
        assert f"--trial {number}: trial {number} did not finish {why}" in text, text
        assert not out.exists()
    res = runner.invoke(app, ["export", path, "--trial", "0", "-o", str(tmp_path / "t0.yaml")])
    assert res.exit_code == 0, res.output
    assert load_config(str(tmp_path / "t0.yaml")).meta["tune"]["trial"] == 0


def test_all_trials_diverged_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    study = _study_with_trials(tmp_path, [
        ("PRUNED", "diverged", f"diverged: non-finite loss at step {i}", None) for i in (3, 4, 5)
    ])
    path = str(study.path)
    res = runner.invoke(app, ["report", path])
    assert res.exit_code == 0, res.output
    assert "no trial finished: 3 diverged" in res.output
    assert "best:" not in res.output
    res = runner.invoke(app, ["report", path, "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["best"] is None and summary["unfinished"] == "no trial finished: 3 diverged"
    assert not (tmp_path / "runs" / "unit" / "best.yaml").exists()
    assert (tmp_path / "runs" / "unit" / "trials.csv").exists()
    text = _one_line(runner.invoke(app, ["export", path, "-o", str(tmp_path / "best.yaml")]))
    assert text == "error: study unit: no trial finished: 3 diverged"


def test_export_to_directory_is_one_line_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    study = _study_with_trials(tmp_path, [("COMPLETE", "completed", "max_time", 2.5)])
    (tmp_path / "afile").write_text("")
    for output, needle in ((tmp_path, "is a directory"),
                           (tmp_path / "afile" / "x.yaml", "is not a directory")):
        text = _one_line(runner.invoke(app, ["export", str(study.path), "-o", str(output)]))
        assert text.startswith(f"error: --output {output}: ") and needle in text, text
    assert (tmp_path / "afile").read_text() == ""


def _drop_file_capabilities() -> list[str]:
    """A command prefix that runs without the capabilities that let root ignore permissions."""
    import shutil
    import subprocess

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is not installed: cannot drop root's file capabilities")
    prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps=-all"]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here")
    return prefix


def test_uncreatable_sqlite_storage_is_one_line_error(tmp_path: Path, monkeypatch) -> None:
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, {})
    (tmp_path / "afile").write_text("")
    for url, needle in ((f"sqlite:///{tmp_path}/afile/study.db", "afile is not a folder"),
                        (f"journal:{tmp_path}/afile/study.log", "afile is not a folder"),
                        (f"sqlite:///{tmp_path}", "is a directory")):
        text = _one_line(runner.invoke(app, ["tune", str(path), "--storage", url, "-q"]))
        assert text.startswith(f"error: storage {url}: ") and needle in text, text

    prefix = _drop_file_capabilities()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    for url, needle in ((f"sqlite:///{locked}/sub/study.db", "permission denied"),
                        (f"sqlite:///{locked}/study.db", "unable to open database file")):
        out = subprocess.run(
            [*prefix, sys.executable, "-m", "budgetlm", "tune", str(path), "--storage", url,
             "-q"], capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 2, out.stderr
        text = out.stderr.strip()
        assert len(text.splitlines()) == 1 and url in text and needle in text, text
    assert list(locked.iterdir()) == []
