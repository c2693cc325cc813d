"""Studies that run real trials (a tiny GPT on a synthetic Markov source, 2 s caps).

Each trial is a child process (`python -m budgetlm.runner.child`), so these tests cost a few
seconds each; they share one hardware profile and one token cache (the session cache dir).
Faults are injected through the child's test hook (`meta.fault`, see budgetlm/runner/child.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from budgetlm.cli import app
from budgetlm.config import load_config

runner = CliRunner()
DATA = "synthetic:markov:order=1,vocab=16,tokens=100000"
CAP = 2.0
GRACE = 2.0


@pytest.fixture(scope="module", autouse=True)
def _profile() -> None:
    """Measure the hardware profile once, before any tuner or trial needs it."""
    from budgetlm.hardware import load_profile

    load_profile()


def study_file(tmp_path: Path, name: str, **over) -> Path:
    d = {
        "name": name,
        "base": "tiny",
        "data": {"source": DATA},
        "fixed": {"train.eval_tokens": 2048},
        "trial_cap": {"time": CAP, "grace": GRACE},
        "budget": {"trials": 3},
        "sampler": "random",
        "pruner": "none",
        "threads": 1,
        "evals": 5,
        "space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
    }
    d.update(over)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def load(name: str, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///runs/{name}/study.db")


def by_number(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    return {t.number: t for t in study.trials}


def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return True  # a zombie: dead, waiting for init to reap it
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------------------------------------


def test_pruning_on_the_time_axis_saves_trial_seconds_and_writes_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = study_file(
        tmp_path, "prune",
        pruner={"type": "median", "n_startup_trials": 1},
        space={"optim.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
        enqueue=[{"optim.lr": 3e-3}, {"optim.lr": 1e-5}, {"optim.lr": 1.5e-5}],
    )
    res = runner.invoke(app, ["tune", str(path), "--workers", "1"])
    assert res.exit_code == 0, res.output
    trials = by_number(load("prune"))
    assert [trials[i].state.name for i in range(3)] == ["COMPLETE", "PRUNED", "PRUNED"]
    done = trials[0].user_attrs
    for t in (trials[1], trials[2]):
        a = t.user_attrs
        assert a["outcome"] == "pruned" and a["reason"].startswith("pruned by median at")
        assert a["pruned_at"] < CAP and a["saved_seconds"] > 0.5
        assert a["wall_seconds"] < done["wall_seconds"]
        assert max(t.intermediate_values) < CAP * 1000  # steps are elapsed milliseconds
    assert "saved ~" in res.output and "trial-seconds" in res.output

    # The trainer stops itself at the cap (+10%); the parent's clock agrees.
    assert done["train_seconds"] <= CAP * 1.1
    assert done["wall_seconds"] - done["startup_seconds"] <= CAP * 1.1 + GRACE

    out = tmp_path / "runs" / "prune"
    csv = pd.read_csv(out / "trials.csv")
    assert {"number", "state", "params_optim.lr", "tokens", "wall_seconds", "reason",
            "value_val_bpb", "duration"} <= set(csv.columns)
    assert len(pd.read_parquet(out / "trials.parquet")) == 3
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 4 and "Pareto" in html and "saved" in html
    best = load_config(str(out / "best.yaml"))
    assert best.optim.lr == pytest.approx(3e-3)
    assert best.train.max_time is None and best.train.max_tokens == done["tokens"]

    rep = runner.invoke(app, ["report", str(path), "--json"])
    assert rep.exit_code == 0, rep.output
    summary = json.loads(rep.output)
    assert summary["pruned_by_pruner"] == 2 and summary["saved_seconds"] > 1.0
    assert summary["best"]["number"] == 0


FAULTS = {  # enqueued in this order; the hang first, so it overlaps the others
    0: ({"meta.fault": "hang"}, "FAIL", "hung", "hung: still running"),
    1: ({"meta.fault": "raise"}, "FAIL", "failed", "RuntimeError: injected fault"),
    2: ({"meta.fault": "exit"}, "FAIL", "failed", "exit 3"),
    3: ({"meta.fault": "segv"}, "FAIL", "crashed", "SIGSEGV"),
    4: ({"meta.fault": "nan"}, "PRUNED", "diverged", "non-finite loss"),
    5: ({"model.n_layer": 64, "model.d_model": 8192}, "PRUNED", "infeasible",
        "too big for memory"),
    6: ({"model.n_head": 3}, "PRUNED", "invalid", "n_head (3) must divide d_model (64)"),
}


def test_faults_are_recorded_with_their_reason_and_the_study_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    plain = {"meta.fault": "none", "model.n_layer": 2, "model.d_model": 64, "model.n_head": 2}
    path = study_file(
        tmp_path, "faults",
        budget={"trials": len(FAULTS)},
        space={
            "meta.fault": {"type": "categorical",
                           "choices": ["none", "raise", "exit", "segv", "hang", "nan"]},
            "model.n_layer": {"type": "int", "low": 1, "high": 64},
            "model.d_model": {"type": "categorical", "choices": [64, 8192]},
            "model.n_head": {"type": "categorical", "choices": [2, 3]},
        },
        enqueue=[{**plain, **FAULTS[i][0]} for i in range(len(FAULTS))],
    )
    res = runner.invoke(app, ["tune", str(path), "--workers", "2"])
    assert res.exit_code == 2, res.output  # no trial finished: said as the last line
    assert res.stderr.strip().splitlines()[-1] == (
        "error: no trial finished: 1 hung, 2 failed, 1 crashed, 1 diverged, 1 infeasible, "
        "1 invalid"
    ), res.stderr
    trials = by_number(load("faults"))
    assert len(trials) == len(FAULTS)
    for i, (_, state, outcome, needle) in FAULTS.items():
        t = trials[i]
        assert (t.state.name, t.user_attrs["outcome"]) == (state, outcome), (i, t.user_attrs)
        assert needle in t.user_attrs["reason"], (i, t.user_attrs["reason"])
    hung = trials[0].user_attrs
    assert hung["wall_seconds"] - hung["startup_seconds"] <= CAP * 1.1 + GRACE + 1.0
    for i in (5, 6):  # never launched
        assert not (tmp_path / "runs" / "faults" / "trials" / str(i)).exists()
    assert "pruning stopped no trial early" in res.output and "0 complete" not in res.output
    leftovers = [p for p in children_of(os.getpid())
                 if b"budgetlm.runner.child" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert not leftovers


def test_kill_9_and_ctrl_c_keep_the_storage_consistent_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = study_file(tmp_path, "resume", budget={"trials": 3})
    cmd = [sys.executable, "-m", "budgetlm", "tune", str(path), "--quiet"]
    runs = tmp_path / "runs" / "resume" / "trials"

    def wait_training(number: int, proc: subprocess.Popen[bytes]) -> int:
        deadline = time.monotonic() + 120
        while not (runs / str(number) / "config.yaml").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        return int(by_number(load("resume"))[number].user_attrs["trainer_pid"])

    # kill -9 while trial 1 trains: its trainer dies with the tuner.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    trainer = wait_training(1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert gone(trainer, 5.0), "orphan trainer survived kill -9 of the tuner"
    trials = by_number(load("resume"))
    assert trials[0].state.name == "COMPLETE" and trials[1].state.name == "RUNNING"

    # Ctrl-C while the next trial (trial 1 again) trains: failed, exit 130, nothing RUNNING.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    trainer = wait_training(2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert gone(trainer, 5.0)
    trials = by_number(load("resume"))
    assert trials[1].state.name == "FAIL" and trials[1].user_attrs["outcome"] == "stale"
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].params == trials[1].params
    assert trials[2].state.name == "FAIL" and trials[2].user_attrs["outcome"] == "interrupted"
    assert not [t for t in trials.values() if t.state.name == "RUNNING"]

    # The same command finishes the study: 3 trials that count, the lost ones rerun.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    study = load("resume")
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and "WAITING" not in states
    counted = [t for t in study.trials
               if t.user_attrs.get("outcome") not in ("stale", "interrupted")]
    assert len(counted) == 3 and all(t.state.name == "COMPLETE" for t in counted)
    assert study.trials[0].state.name == "COMPLETE"  # the first completed trial is kept
    retried = {t.user_attrs.get("retry_of"): t for t in counted if "retry_of" in t.user_attrs}
    assert set(retried) == {2} and retried[2].params == study.trials[1].params


def test_pareto_study_with_two_workers_on_a_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = study_file(
        tmp_path, "front",
        launcher="spawn",  # a fresh `python -m budgetlm.runner.child` per trial
        storage="journal:runs/front/journal.log",
        objective=["val_bpb", "cost"],
        trial_cap={"tokens": 20480},
        budget={"trials": 4},
        space={"model.d_model": {"type": "categorical", "choices": [32, 64, 96, 128]},
               "optim.lr": {"type": "float", "low": 2e-3, "high": 5e-3, "log": True}},
        enqueue=[{"model.d_model": d, "optim.lr": 3e-3} for d in (32, 64, 96, 128)],
    )
    res = runner.invoke(app, ["tune", str(path), "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "Pareto front" in res.output and "locked" not in res.output
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(
        study_name="front",
        storage=JournalStorage(JournalFileBackend("runs/front/journal.log")),
    )
    assert study.metric_names == ["val_bpb", "cost"]
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert {t.user_attrs["launcher"] for t in study.trials} == {"spawn"}
    costs = sorted(t.values[1] for t in study.trials)
    assert costs[0] < costs[-1]  # wider models spend more FLOPs on the same tokens
    assert study.best_trials  # optuna's own Pareto front
    summary = json.loads(runner.invoke(app, ["report", str(path), "--json"]).output)
    assert len(summary["pareto_front"]) == len(study.best_trials)
    assert "Pareto front" in (tmp_path / "runs" / "front" / "report.html").read_text()


def test_two_processes_with_two_workers_share_one_sqlite_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = study_file(tmp_path, "shared", budget={"trials": 5}, trial_cap={"time": 1.5})
    cmd = [sys.executable, "-m", "budgetlm", "tune", str(path), "--workers", "2", "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "locked" not in out + err, err
    study = load("shared")
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(5))
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    dirs = {t.user_attrs["run_dir"] for t in study.trials}
    assert len(dirs) == 5
    assert len({t.user_attrs["worker_pid"] for t in study.trials}) == 2  # both processes worked


def test_all_trials_diverged_says_so_at_the_end_of_tune(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUDGETLM_TUNE_FAULT", "nan@2")  # every trial's loss turns NaN
    path = study_file(tmp_path, "diverge", budget={"trials": 3})
    res = runner.invoke(app, ["tune", str(path), "--workers", "2"])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().splitlines()[-1] == "error: no trial finished: 3 diverged"
    assert "best:" not in res.stdout
    trials = load("diverge").trials
    assert [(t.state.name, t.user_attrs["outcome"]) for t in trials] == [
        ("PRUNED", "diverged")] * 3
    out = tmp_path / "runs" / "diverge"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"] is None and summary["unfinished"] == "no trial finished: 3 diverged"
    assert len(pd.read_csv(out / "trials.csv")) == 3 and (out / "report.html").exists()
    assert not (out / "best.yaml").exists()
