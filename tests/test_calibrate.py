"""budgetlm calibrate: pilots on IsoFLOP profiles, resume after an interruption, fit.json, plans
and runs that carry the fit's prediction."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from budgetlm import laws
from budgetlm.calibrate import (
    EXIT_RESERVE_S,
    calibrate,
    plan_path,
    plan_rest,
    read_records,
    state_dir,
)
from budgetlm.cli import app
from budgetlm.config import DataConfig
from budgetlm.plan import Budget, plan
from budgetlm.train.result import check_prediction

DATA = DataConfig(source="builtin:pystdlib", tokenizer="byte")
# a FLOP budget small enough that nine pilots take seconds on one thread
BUDGET = ["--flops", "3e11", "--seq-len", "32", "--bootstrap", "20"]


def _cli_args(out: Path) -> list[str]:
    return ["calibrate", "--data", "builtin:pystdlib", "--tokenizer", "byte", *BUDGET,
            "-o", str(out), "--quiet"]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A calibration interrupted (SIGINT to the real console script) after two pilots, then run
    again to the end in-process: what both runs did."""
    old_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the pilots' (forked) trainers
    root = tmp_path_factory.mktemp("cal")
    out = root / "fit.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    exe = Path(sys.executable).with_name("budgetlm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "budgetlm"]
    proc = subprocess.Popen(cmd + _cli_args(out), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    records = state_dir(out) / "pilots.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if records.exists() and len(records.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    kept = {k for k, r in read_records(records).items() if r["state"] == "complete"}
    t0 = time.perf_counter()
    res = calibrate(Budget(flops=3e11), DATA, out, seq_len=32, bootstrap=20)
    yield {"rc": proc.returncode, "stderr": err, "kept": kept, "res": res, "out": out,
           "seconds": time.perf_counter() - t0}
    if old_threads is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old_threads


def test_interrupt_keeps_finished_pilots_and_rerun_reuses_them(calibrated: dict) -> None:
    assert calibrated["rc"] == 130, calibrated["stderr"]
    assert "run the same command again to continue" in calibrated["stderr"]
    assert "Traceback" not in calibrated["stderr"]
    res = calibrated["res"]
    assert len(calibrated["kept"]) >= 2
    assert res.reused == len(calibrated["kept"])
    assert res.ran == 9 - res.reused
    # the finished pilots were not run again: one record each
    lines = (state_dir(calibrated["out"]) / "pilots.jsonl").read_text().splitlines()
    keys = [json.loads(x)["key"] for x in lines]
    for k in calibrated["kept"]:
        assert keys.count(k) == 1


def test_isoflop_design_and_fit_file(calibrated: dict) -> None:
    fit = json.loads(calibrated["out"].read_text())
    assert fit["kind"] == "budgetlm-fit"
    assert len(fit["levels"]) == 3
    assert fit["levels"][1] == pytest.approx(3 * fit["levels"][0])
    pilots = fit["pilots"]
    assert len(pilots) == 9 and all(p["state"] == "complete" for p in pilots)
    for level in range(3):
        mine = [p for p in pilots if p["level"] == level]
        assert len({p["name"] for p in mine}) == 3  # three distinct sizes per level
        for p in mine:  # IsoFLOP: every pilot of a level trains for the level's FLOPs
            assert p["flops"] == pytest.approx(p["level_flops"], rel=0.1)
            assert p["val_loss"] > 0 and math.isfinite(p["fitted_loss"])
    # pilots use at most the stated share of the FLOP budget
    assert sum(p["flops"] for p in pilots) <= 0.2 * 3e11 * 1.1
    law = fit["law"]
    assert all(law[k] > 0 for k in ("E", "A", "B", "alpha", "beta"))
    assert len(fit["bootstrap"]) >= 10
    # E no higher than the validation tokens' best compression rate; the Kaplan form beside it
    ceiling = fit["e_ceiling"]
    assert ceiling["value"] == min(ceiling["rates"].values())
    assert law["E"] <= ceiling["value"] * (1 + 1e-9)
    kap = fit["forms"]["kaplan"]
    assert kap["law"]["form"] == "kaplan" and len(kap["bootstrap"]) >= 10
    assert all(math.isfinite(p["fitted_loss_kaplan"]) for p in pilots)
    both = laws.law_from_fit(fit)
    assert both.form == "mean"
    assert fit["seq_len"] == 32 and fit["precision"] == "fp32"
    assert fit["bpb_per_nat"] == pytest.approx(1 / math.log(2))  # byte tokens
    # the rest of the budget was planned from the fit, with an interval
    plan_yaml = plan_path(calibrated["out"])
    assert plan_yaml.exists()
    p = fit["plan"]
    assert p["loss_lo"] < p["loss"] < p["loss_hi"]
    point, lo, hi = both.interval(p["params"], p["tokens"], fit["unique_tokens"])
    assert p["loss"] == pytest.approx(point, rel=1e-6)  # the plan predicts with both forms
    assert (p["loss_lo"], p["loss_hi"]) == pytest.approx((lo, hi), rel=1e-6)
    assert p["flops"] <= 3e11 * 0.8 * 1.05


@pytest.fixture(scope="module")
def rerun(calibrated: dict) -> dict:
    """The same calibration once more, after it completed: what it did and how long it took."""
    records = read_records(state_dir(calibrated["out"]) / "pilots.jsonl")
    design = json.loads((state_dir(calibrated["out"]) / "design.json").read_text())
    earlier = float(design["design_seconds"]) + sum(
        float(r.get("wall_seconds") or 0.0) for r in records.values())
    t0 = time.perf_counter()
    res = calibrate(Budget(flops=3e11), DATA, calibrated["out"], seq_len=32, bootstrap=20,
                    write_plan=False)
    return {"res": res, "seconds": time.perf_counter() - t0, "earlier": earlier}


def test_rerun_after_completion_runs_nothing(rerun: dict) -> None:
    res = rerun["res"]
    assert res.ran == 0 and res.reused == 9
    assert rerun["seconds"] < 30


def test_reused_calibrate_reports_reused_seconds(rerun: dict, calibrated: dict) -> None:
    res = rerun["res"]
    # what earlier invocations spent is reported as reused, apart from what this one spent
    assert res.seconds_reused == pytest.approx(rerun["earlier"], rel=1e-6)
    assert 0 < res.seconds_now <= rerun["seconds"]
    assert res.pilot_seconds == pytest.approx(res.seconds_reused + res.fit["pilot_seconds"]
                                              - rerun["earlier"], abs=1e-3)
    line = res.spent_line()
    assert line.startswith("pilots: 0 run, 9 reused; ")
    assert f"{res.seconds_now:.0f} s now" in line
    assert f"{res.seconds_reused:.0f} s of it by earlier invocations (reused)" in line
    fit = json.loads(calibrated["out"].read_text())
    assert fit["reused_seconds"] == pytest.approx(rerun["earlier"], abs=1e-3)
    assert fit["calibrate_seconds"] <= rerun["seconds"]
    assert any("spent by earlier invocations" in n and "9 finished pilot(s) reused" in n
               for n in res.notes)
    # the interrupted run's pilots were reused by the run that completed them
    first = calibrated["res"]
    assert first.seconds_reused > 0 and first.seconds_now <= calibrated["seconds"]


def test_other_options_refuse_the_state_dir(calibrated: dict) -> None:
    r = CliRunner().invoke(app, ["calibrate", "--data", "builtin:pystdlib", "--tokenizer", "byte",
                                 "--flops", "5e11", "--seq-len", "32", "-o",
                                 str(calibrated["out"])])
    assert r.exit_code == 2
    assert "different calibration" in r.output


def test_plan_fit_and_train_record_predicted_vs_actual(calibrated: dict, tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    r = CliRunner().invoke(app, ["plan", "--flops", "1e11", "--data", "builtin:pystdlib",
                                 "--tokenizer", "byte", "--fit", str(calibrated["out"]),
                                 "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "90% interval" in r.output and "fitted on 9 pilot runs" in r.output
    r = CliRunner().invoke(app, ["train", str(out), "--run-dir", str(tmp_path / "run"),
                                 "--set", "train.max_tokens=4096", "--set", "train.threads=1"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    pred = res["prediction"]
    assert pred["actual_loss"] == pytest.approx(res["val_loss"])
    assert pred["error"] == pytest.approx((res["val_loss"] - pred["predicted_loss"])
                                         / pred["predicted_loss"])
    assert pred["inside"] == (pred["loss_lo"] <= res["val_loss"] <= pred["loss_hi"])


def test_time_plan_gives_the_run_what_planning_left(calibrated: dict) -> None:
    from budgetlm import hardware

    fit = json.loads(calibrated["out"].read_text())
    t0 = time.perf_counter()
    p, note = plan_rest(Budget(seconds=120), DATA, fit, 10.0,
                        hardware.cached_profile() or hardware.load_profile())
    took = time.perf_counter() - t0
    assert note is None and p is not None
    given = float(p.target.wall_seconds)
    # the run gets what is left once the planning (which timed real steps) is done
    assert 120 - 10 - EXIT_RESERVE_S - took - 0.5 <= given < 120 - 10 - EXIT_RESERVE_S
    assert p.top.seconds <= given * 1.001
    assert p.config(0).train.max_time == pytest.approx(given)


def test_report_fit_writes_png(calibrated: dict, tmp_path: Path) -> None:
    png = tmp_path / "f.png"
    r = CliRunner().invoke(app, ["report", str(calibrated["out"]), "--png", str(png)])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "IsoFLOP" in r.output or "pilots" in r.output
    assert "E held at or below" in r.output and "Kaplan form fitted" in r.output


# ---------------------------------------------------------------------------------------------
# fast checks


def _fit_dict() -> dict:
    return {"E": 1.0, "A": 30.0, "B": 300.0, "alpha": 0.3, "beta": 0.3,
            "bootstrap": [[1.0, 30.0, 300.0, 0.3, 0.3], [1.05, 28.0, 310.0, 0.31, 0.29],
                          [0.95, 33.0, 290.0, 0.29, 0.31]],
            "residual_std": 0.01, "interval_level": 0.9, "seq_len": 64, "precision": "fp32",
            "bpb_per_nat": 1.5}


def test_plan_from_a_fit_carries_intervals_and_the_fit_sequence_length() -> None:
    p = plan(Budget(flops=1e13), tokens=10**8, fit=_fit_dict())
    assert p.law.kind == "fit"
    assert {c.seq_len for c in p.candidates} == {64}
    assert {c.precision for c in p.candidates} == {"fp32"}
    for c in p.candidates[:5]:
        assert c.loss_lo is not None and c.loss_lo < c.loss < c.loss_hi
    pred = p.predicted(0)
    assert pred["loss_kind"] == "fit"
    assert pred["bpb"] == pytest.approx(1.5 * pred["loss"])


def test_interval_combines_bootstrap_and_scatter() -> None:
    law = laws.law_from_fit(_fit_dict())
    point, lo, hi = law.interval(1e6, 1e8)
    assert point == pytest.approx(law.loss(1e6, 1e8))
    no_noise = laws.law_from_fit({**_fit_dict(), "residual_std": 0.0})
    _, lo0, hi0 = no_noise.interval(1e6, 1e8)
    assert lo < lo0 <= point <= hi0 < hi
    _, lo50, hi50 = law.interval(1e6, 1e8, level=0.5)
    assert lo < lo50 < point < hi50 < hi


def test_check_prediction() -> None:
    pred = {"loss_kind": "fit", "loss": 2.0, "loss_lo": 1.9, "loss_hi": 2.1, "bpb": 3.0}
    got = check_prediction(pred, 2.05, 3.07)
    assert got is not None and got["inside"] and got["error"] == pytest.approx(0.025)
    assert check_prediction(pred, 2.2, None)["inside"] is False  # type: ignore[index]
    assert check_prediction({**pred, "loss_kind": "prior"}, 2.0, 3.0) is None
    assert check_prediction(pred, None, None) is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pilot-fraction", "0.9"], "--pilot-fraction"),
        (["--levels", "2"], "--levels"),
        (["--sizes", "1"], "--sizes"),
        (["-o", "fit.yaml"], "-o"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    base = ["calibrate", "--data", "builtin:pystdlib", "--flops", "1e12"]
    if "-o" not in args:
        args = [*args, "-o", str(tmp_path / "f.json")]
    r = CliRunner().invoke(app, base + args)
    assert r.exit_code == 2, r.output
    assert message in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_hours_need_a_gpu_here(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["calibrate", "--data", "builtin:pystdlib", "--gpu-hours", "1",
                                 "-o", str(tmp_path / "f.json")])
    assert r.exit_code == 2
    assert "--gpu-hours" in r.output and "no GPU" in r.output


@pytest.mark.parametrize("content", [None, "not json", '{"kind": "study"}'])
def test_bad_fit_files_exit_2_with_one_line(content: str | None, tmp_path: Path) -> None:
    path = tmp_path / "fit.json"
    if content is not None:
        path.write_text(content)
    for args in (["plan", "--flops", "1e18", "--fit", str(path)], ["report", str(path)]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2, r.output
        assert str(path.name) in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1


def _fake_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as a fixed measured CPU profile (nothing measured)."""
    from budgetlm import hardware

    gib = 2**30
    prof = hardware.HardwareProfile(
        cpu_model="fake CPU", cpu_cores=2, memory_bytes=16 * gib, gpus=[], device="cpu",
        matmul_flops={"fp32": 5e10}, bandwidth_bytes_per_s=None, measured=True, datasheet=None,
        device_memory_bytes=16 * gib, gpu_count=0, created_at="2024-01-01T00:00:00Z",
        torch_version=None, python_version="3.11",
    )
    monkeypatch.setattr(hardware, "cached_profile", lambda: prof)
    monkeypatch.setattr(hardware, "load_profile", lambda *a, **k: prof)


@pytest.mark.parametrize("budget", [["--time", "5s"], ["--flops", "1e6"]], ids=["time", "flops"])
def test_failed_calibrate_leaves_no_empty_pilot_dir(
    budget: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_cpu(monkeypatch)
    out = tmp_path / "fit.json"
    r = CliRunner().invoke(app, ["calibrate", "--data", "builtin:pystdlib", "--tokenizer", "byte",
                                 *budget, "--seq-len", "32", "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert "too small" in r.output and len(r.output.strip().splitlines()) == 1
    assert not state_dir(out).exists() and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_pilot_dir_that_is_a_file_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "fit.json"
    state_dir(out).write_text("not a directory")
    r = CliRunner().invoke(app, ["calibrate", "--data", "builtin:pystdlib", "--flops", "1e12",
                                 "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert "is not a directory" in r.output and "Traceback" not in r.output


def test_plan_rest_with_no_budget_left_keeps_the_fit() -> None:
    fit = {**_fit_dict(), "pilots": []}
    for budget, used in ((Budget(seconds=10), 30.0), (Budget(gpu_hours=0.001), 3600.0)):
        p, note = plan_rest(budget, DATA, fit, used, None)
        assert p is None and note == "no budget left after the pilots: nothing planned"
