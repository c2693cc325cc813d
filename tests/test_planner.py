from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fakes import fake_cpu_profile, use_profile
from typer.testing import CliRunner

from budgetlm import hardware, laws, units
from budgetlm import plan as planner
from budgetlm.cli import app
from budgetlm.config import DataConfig, load_config
from budgetlm.errors import UserError
from budgetlm.plan import Budget, plan

runner = CliRunner()
GiB = 2**30



@pytest.fixture
def cpu_machine(monkeypatch: pytest.MonkeyPatch) -> hardware.HardwareProfile:
    """This machine, as a fake measured CPU profile (no measuring, no torch on the plan path)."""
    return use_profile(monkeypatch, fake_cpu_profile())


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


def _cli_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("budgetlm")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "budgetlm"]


# ---------------------------------------------------------------------------------------------
# GPU-hours


def test_gpu_hours_on_h100_fits_and_spends_the_budget() -> None:
    p = plan(Budget(gpu_hours=8, gpu="h100-sxm"))
    top = p.top
    assert p.target.source == "datasheet" and "unmeasured" in p.first_line
    assert top.memory_bytes is not None and top.memory_bytes <= 80e9
    assert top.precision == "bf16"
    peak = hardware.GPU_SPECS["h100-sxm"].peak_flops["bf16"]
    available = 8 * 3600 * peak * top.mfu  # seconds x peak x assumed MFU
    attention = 12 * top.shape.n_layer * top.seq_len * top.shape.d_model  # per token, fwd+bwd
    lookup = top.vocab_size * top.shape.d_model if p.arch != "gpt2" else 0  # untied input table
    model_flops = (6 * (top.params - lookup) + attention) * top.tokens
    assert model_flops == pytest.approx(available, rel=0.10)
    assert top.flops == pytest.approx(available, rel=0.02)
    # lr and batch from the DeepSeek priors for the run's compute
    assert top.lr == pytest.approx(laws.lr_prior(top.flops), rel=0.01)
    assert top.batch_tokens == pytest.approx(laws.deepseek_batch_tokens(top.flops), rel=0.35)


def test_bare_gpu_hours_plans_for_a_reference_h100_and_says_so() -> None:
    # the test cache has no profile of this machine: no GPU is known here
    p = plan(Budget(gpu_hours=8))
    assert "reference" in p.first_line and "H100" in p.first_line
    res = runner.invoke(app, ["plan", "--gpu-hours", "8"])
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    assert "reference" in first and "H100" in first and "8 GPU-hours" in first


def test_cost_is_gpu_hours_at_a_price() -> None:
    a = plan(Budget(cost=20, price=2.5, gpu="h100-sxm")).top
    b = plan(Budget(gpu_hours=8, gpu="h100-sxm")).top
    assert a.name == b.name and a.tokens == b.tokens


def test_more_gpus_divide_the_wall_time() -> None:
    p = plan(Budget(gpu_hours=8, gpu="a100-80gb", gpus=4))
    assert p.target.wall_seconds == pytest.approx(2 * 3600)
    assert p.top.devices == 4
    cfg = p.config(0)
    assert cfg.train.grad_accum == p.top.grad_accum * 4  # micro-steps split over 4 ranks


def test_cli_gpu_hours_is_fast_and_torch_free() -> None:
    """Under 1.5 s with Python start: measured as the child's CPU time (what the wall time is on
    an idle machine; concurrent test runs inflate wall time), with a loose wall-time guard."""
    cpus, walls = [], []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run([*_cli_cmd(), "plan", "--gpu-hours", "8", "--gpu", "h100-sxm"],
                             capture_output=True, text=True, env=_env())
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        assert out.returncode == 0, out.stderr
        if min(walls) < 1.5:
            break
    assert min(cpus) < 1.5, (cpus, walls)
    assert min(walls) < 6.0, walls
    code = (
        "import sys; from budgetlm.plan import plan, Budget; "
        "plan(Budget(gpu_hours=8, gpu='h100-sxm')); plan(Budget(flops=1e20)); "
        "assert 'torch' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], env=_env()).returncode == 0


# ---------------------------------------------------------------------------------------------
# FLOPs: Chinchilla's compute-optimal allocation


@pytest.mark.parametrize("row", range(3), ids=["400M", "1B", "10B"])
def test_flops_budget_reproduces_chinchilla_table3(row: int) -> None:
    n_ref, c, d_ref = laws.CHINCHILLA_TABLE3[row]
    p = plan(Budget(flops=c))
    top = p.top
    assert top.params / n_ref == pytest.approx(1, abs=0.15)
    assert top.tokens / d_ref == pytest.approx(1, abs=0.15)
    assert top.flops == pytest.approx(c, rel=0.01)  # model FLOPs incl. attention = the budget
    closed = p.optimum["closed_form"]
    assert closed["params"] / n_ref == pytest.approx(1, abs=0.10)
    assert closed["tokens"] / d_ref == pytest.approx(1, abs=0.10)


def test_flops_cli_json_reports_closed_form_and_top() -> None:
    res = runner.invoke(app, ["plan", "--flops", "1.92e19", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["loss_kind"] == "prior" and d["law"]["name"] == "epoch"
    assert d["optimum"]["closed_form"]["params"] == pytest.approx(0.916 * 400e6, rel=0.01)
    assert d["top"]["params"] == pytest.approx(400e6, rel=0.15)
    assert d["candidates"][0] == d["top"]
    assert {"interpretation", "pareto", "notes", "budget"} <= set(d)


@pytest.mark.parametrize("prior", ["chinchilla", "kaplan"])
def test_other_priors(prior: str) -> None:
    p = plan(Budget(flops=1e20), prior=prior)
    assert p.law.name == prior and p.top.loss > 1.0 and p.top.feasible


def test_fit_hook_replaces_the_prior() -> None:
    fit = {"E": 1.5, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28}
    p = plan(Budget(flops=1e20), fit=fit)
    assert p.law.kind == "fit" and p.to_dict()["loss_kind"] == "fit"
    assert p.top.loss_law == pytest.approx(
        laws.law_from_fit(fit).loss(p.top.params, p.top.tokens)
    )


# ---------------------------------------------------------------------------------------------
# Data-constrained


def test_scarce_data_plans_repeated_epochs_and_reports_them() -> None:
    c, unique = 1.92e19, 1_000_000_000  # the optimum wants ~8B tokens: ~11 epochs, under the cap
    free = plan(Budget(flops=c)).top
    p = plan(Budget(flops=c), tokens=unique)
    top = p.top
    assert top.epochs > 2 and top.tokens > unique
    assert top.epochs == pytest.approx(top.tokens / unique)
    assert top.effective_tokens < top.tokens  # repeats priced below new data
    # Muennighoff et al.: compute goes to more epochs rather than more parameters
    assert top.tokens / top.params > free.tokens / free.params
    assert top.loss > free.loss
    assert any("epochs" in n and "Muennighoff" in n for n in p.notes)
    assert p.optimum["data_constrained"]["epochs"] > 1
    res = runner.invoke(app, ["plan", "--flops", "1.92e19", "--tokens", "2e8"])
    assert res.exit_code == 0, res.output
    assert "epochs" in res.output
    # 200M tokens would take ~37 epochs: capped at 16 (Muennighoff et al.), the rest of the
    # compute buys parameters
    scarce = plan(Budget(flops=c), tokens=200_000_000)
    assert scarce.max_epochs == 16 and scarce.top.epochs <= 16 * (1 + 1e-9)
    assert scarce.top.tokens / scarce.top.params < free.tokens / free.params


def test_data_is_counted_and_exported(tmp_path: Path, cpu_machine: object) -> None:
    src = tmp_path / "corpus.txt"
    src.write_text("the quick brown fox jumps over the lazy dog.\n" * 2000)
    p = plan(Budget(seconds=60), data=DataConfig(source=str(src), tokenizer="char"),
             timing=False)
    assert p.unique_tokens == pytest.approx(0.95 * 90_000, rel=0.01)
    assert p.vocab_size < 40
    assert p.top.epochs > 1  # 60 s of training is far more than 85K tokens
    cfg = p.config(0)
    assert cfg.data.source == str(src) and cfg.data.tokenizer == "char"
    assert cfg.model.vocab_size == p.vocab_size


# ---------------------------------------------------------------------------------------------
# Precision from measured throughput


@pytest.mark.parametrize(("fp32", "bf16", "expected"), [(8e10, 2e10, "fp32"), (2e10, 8e10, "bf16")])
def test_precision_follows_measured_throughput(fp32: float, bf16: float, expected: str) -> None:
    prof = fake_cpu_profile(fp32=fp32, bf16=bf16)
    p = plan(Budget(seconds=600), profile=prof, tokens=10**9, timing=False)
    assert p.top.precision == expected
    assert p.to_dict()["top"]["precision"] == expected


def test_a_dtype_without_a_measured_peak_is_not_planned() -> None:
    p = plan(Budget(seconds=60), profile=fake_cpu_profile(bf16=None), timing=False)
    assert {c.precision for c in p.candidates} == {"fp32"}


# ---------------------------------------------------------------------------------------------
# Time budgets on this machine, export, and `budgetlm train plan.yaml`


def test_time_budget_reads_durations() -> None:
    assert units.parse_duration("10m") == 600
    assert units.parse_duration("90s") == 90
    assert units.parse_duration("1h30m") == 5400
    assert units.parse_duration("45") == 45
    assert units.parse_duration("1.5h") == 5400
    for bad in ("abc", "0", "-5m", "10x", "1h30"):
        with pytest.raises(UserError, match="--time"):
            units.parse_duration(bad)


def test_time_plan_is_a_time_capped_annealed_config(cpu_machine: object) -> None:
    p = plan(Budget(seconds=600), timing=False)
    assert "measured" in p.first_line and "this machine" in p.first_line
    cfg = p.config(0)
    assert cfg.train.max_time == 600 and cfg.train.max_tokens is None
    assert cfg.train.device == "cpu"
    assert cfg.schedule.name == "wsd" and cfg.schedule.driver == "auto"
    assert cfg.schedule.min_lr_ratio == 0.0  # ends annealed at the cap
    pred = cfg.meta["predicted"]
    assert pred["loss_kind"] == "prior" and pred["tokens"] == p.top.tokens
    assert pred["memory_bytes"] == p.top.memory_bytes and pred["step_seconds"] > 0


def test_exported_plan_trains_unchanged(
    tmp_path: Path, cpu_machine: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "text.txt"
    src.write_text("".join(f"line {i}: the cat sat on the mat, then ran.\n" for i in range(3000)))
    out = tmp_path / "plan.yaml"
    res = runner.invoke(app, ["plan", "--time", "5s", "--data", str(src), "--tokenizer", "char",
                              "--no-calibrate", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists() and out.with_suffix(".json").exists()
    allc = json.loads(out.with_suffix(".json").read_text())
    assert len(allc["candidates"]) == allc["n_candidates"] > 1
    cfg = load_config(str(out))
    assert cfg.train.max_time == 5 and cfg.meta["predicted"]["law"] == "epoch"
    res = runner.invoke(app, ["train", str(out), "--run-dir", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    # the plan repeats this small corpus, so it exports early stopping: either end is the plan's
    assert (result["status"], result["stop_reason"]) == ("completed", "max_time") or (
        result["status"] == "early_stopped" and cfg.train.patience is not None
    ), result
    assert result["predicted"]["plan"]["params"] == result["params"]
    assert math.isfinite(result["val_loss"])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["n_layer"] == cfg.model.n_layer


def test_timing_times_real_steps(cpu_machine: object) -> None:
    p = plan(Budget(seconds=30), timing=True, seq_lens=[64])
    assert p.timed and p.top.time_source == "timed"
    assert p.top.tokens_per_s and p.top.tokens_per_s > 0
    assert any("timed" in n for n in p.notes)


# ---------------------------------------------------------------------------------------------
# Candidates, ladder, Pareto


def test_ladder_shapes_are_sensible() -> None:
    shapes = planner.ladder()
    sizes = [s.approx_params for s in shapes]
    assert sizes == sorted(sizes) and sizes[0] < 2e4 and sizes[-1] > 1e11
    gaps = [b / a for a, b in zip(sizes, sizes[1:], strict=False) if a >= 1e5]
    assert max(gaps) < 1.5  # close enough to snap a compute optimum within ~15%
    for s in shapes:
        assert s.d_model % s.n_head == 0
        head = s.d_model // s.n_head
        assert head == 64 if s.d_model >= 256 else head <= 32
        assert 12 <= s.d_model / s.n_layer <= 256


def test_pareto_front_is_non_dominated() -> None:
    p = plan(Budget(gpu_hours=2, gpu="a100-80gb"))
    front = p.front
    assert front and front[0].loss == p.top.loss
    for a in front:
        for b in p.candidates:
            assert not (b.loss < a.loss and (b.memory_bytes or 0) < (a.memory_bytes or 0))


def test_memory_limit_rules_out_what_does_not_fit() -> None:
    p = plan(Budget(gpu_hours=2000, gpu="t4"))  # 16 GB: large models need checkpointing or fail
    assert all(c.memory_bytes <= 0.9 * hardware.GPU_SPECS["t4"].memory_bytes
               for c in p.candidates)
    assert any(c.reason.startswith("does not fit") for c in p.infeasible)


# ---------------------------------------------------------------------------------------------
# Bad budgets: one line, exit 2


BAD = {
    "zero": (["--gpu-hours", "0"], "--gpu-hours: must be positive"),
    "negative": (["--flops", "-1e19"], "--flops: must be positive"),
    "negative_time": (["--time", "-5m"], "--time: must be positive"),
    "unknown_gpu": (["--gpu-hours", "8", "--gpu", "rtx9090"], "did you mean rtx-4090"),
    "too_small": (["--flops", "1e6"], "budget too small for the smallest model"),
    "missing_data": (["--flops", "1e19", "--data", "/no/such/corpus.txt"], "no such file"),
    "no_budget": ([], "no budget given"),
    "two_budgets": (["--gpu-hours", "8", "--flops", "1e19"], "give one budget"),
    "cost_without_price": (["--cost", "20"], "--price"),
    "bad_duration": (["--time", "soon"], "--time: cannot read"),
    "bad_number": (["--flops", "lots"], "--flops: expected a number"),
    "zero_gpus": (["--gpu-hours", "8", "--gpus", "0"], "--gpus"),
    "data_and_tokens": (["--flops", "1e19", "--data", "x.txt", "--tokens", "1e9"], "--tokens"),
    "unknown_prior": (["--flops", "1e19", "--prior", "gpt4"], "unknown prior"),
    "gpu_with_time": (["--time", "10m", "--gpu", "h100"], "--gpu"),
    "unknown_precision": (["--flops", "1e19", "--precision", "fp8"], "--precision"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_budget_exits_2_with_one_line(case: str) -> None:
    args, needle = BAD[case]
    res = runner.invoke(app, ["plan", *args])
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert needle in text, text
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text


def test_infinite_budget_says_finite() -> None:
    for args, needle in [
        (["--gpu-hours", "inf"], "--gpu-hours: must be finite"),
        (["--gpu-hours", "nan"], "--gpu-hours: must be finite"),
        (["--flops", "1e400"], "--flops: must be finite"),
        (["--time", "inf"], "--time: must be finite"),
        (["--time", "1e400"], "--time: must be finite"),
        (["--cost", "1e999", "--price", "2"], "--cost: must be finite"),
        (["--gpu-hours", "8", "--tokens", "inf"], "--tokens: must be finite"),
    ]:
        res = runner.invoke(app, ["plan", *args])
        assert res.exit_code == 2, (args, res.output)
        text = res.output.strip()
        assert needle in text and "positive" not in text, (args, text)
        assert len(text.splitlines()) == 1, text
    for kwargs in ({"gpu_hours": math.inf}, {"flops": math.nan}, {"seconds": -math.inf}):
        with pytest.raises(UserError, match="must be finite"):
            Budget(**kwargs)
    with pytest.raises(UserError, match="--gpu-hours: must be positive"):
        Budget(gpu_hours=-1.0)


def test_calibrate_budget_names_only_the_flags_calibrate_takes() -> None:
    with pytest.raises(UserError) as plan_err:
        Budget()
    assert str(plan_err.value).startswith("plan: no budget given") and "--cost" in str(
        plan_err.value)
    with pytest.raises(UserError) as cal_err:
        Budget(command="calibrate")
    text = str(cal_err.value)
    assert text.startswith("calibrate: no budget given")
    assert "--gpu-hours" in text and "--flops" in text and "--time" in text
    assert "--cost" not in text and "--price" not in text


# ---------------------------------------------------------------------------------------------
# Time budgets shorter than the timing of steps


def _no_timing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make timing steps on this machine fail loudly; the list records attempts."""
    calls: list[str] = []

    def refuse(*args: object, **kwargs: object) -> dict[str, float]:
        calls.append("timed")
        raise AssertionError("timed steps on this machine")

    monkeypatch.setattr(planner.timing, "measure_throughput", refuse)
    return calls


def test_tiny_time_budget_is_rejected_before_timing(
    cpu_machine: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _no_timing(monkeypatch)
    t0 = time.perf_counter()
    res = runner.invoke(app, ["plan", "--time", "0.05s"])
    assert res.exit_code == 2, res.output
    assert "budget too small for the smallest model" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert calls == [] and time.perf_counter() - t0 < 5


def test_time_budget_shorter_than_timing_is_planned_from_estimates(
    cpu_machine: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _no_timing(monkeypatch)
    assert planner.TIMING_SECONDS > 1
    res = runner.invoke(app, ["plan", "--time", "1s", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert calls == [] and d["timed"] == []
    assert any("(not timed: the budget is shorter than timing" in n for n in d["notes"])
    with pytest.raises(AssertionError, match="timed steps"):  # asked for: timed all the same
        plan(Budget(seconds=1), timing=True)
    assert calls == ["timed"]


# ---------------------------------------------------------------------------------------------
# More budget never plans a worse model


def _top_losses(make: object, values: list[float]) -> list[tuple[float, float, object]]:
    """(budget, top candidate's predicted loss, plan or None) of each budget; a budget too small
    for any model counts as an infinite loss (it may only come before every feasible one)."""
    out = []
    for v in values:
        try:
            p = plan(make(v))  # type: ignore[operator]
        except UserError as exc:
            assert "budget too small" in str(exc), (v, str(exc))
            out.append((v, math.inf, None))
            continue
        out.append((v, p.top.loss, p))
    return out


def _assert_non_increasing(rows: list[tuple[float, float, object]]) -> None:
    assert any(math.isfinite(loss) for _, loss, _ in rows)
    for (a, la, _), (b, lb, _) in zip(rows, rows[1:], strict=False):
        assert lb <= la + 1e-9, f"budget {b:g} plans a worse model ({lb:.4f}) than {a:g} ({la:.4f})"


# log-spaced from 1e-3 to 1e12 GPU-hours, with the values that once planned a ~1M model
GPU_HOURS = sorted({10.0 ** k for k in range(-3, 9)} | {3e5, 1e9, 1e12})


@pytest.fixture(scope="module")
def gpu_hours_sweep() -> list[tuple[float, float, object]]:
    return _top_losses(lambda h: Budget(gpu_hours=h, gpu="h100-sxm"), GPU_HOURS)


def test_more_gpu_hours_never_plan_a_worse_model(gpu_hours_sweep: list) -> None:
    _assert_non_increasing(gpu_hours_sweep)
    assert math.isfinite(gpu_hours_sweep[-1][1])


def test_more_flops_never_plan_a_worse_model() -> None:
    _assert_non_increasing(_top_losses(lambda c: Budget(flops=c),
                                       [10.0 ** k for k in range(10, 31, 2)]))
    _assert_non_increasing(_top_losses(lambda c: Budget(flops=c, gpu="h100-sxm"),
                                       [1e18, 1e21, 1e23, 1e24, 1e26, 1e30]))


def test_huge_budget_falls_back_to_largest_fitting_shape_with_note(gpu_hours_sweep: list) -> None:
    plans = {h: p for h, _, p in gpu_hours_sweep}
    limit = 0.9 * hardware.GPU_SPECS["h100-sxm"].memory_bytes
    largest_1e5 = plans[1e5].top.params  # type: ignore[union-attr]
    for hours in (1e6, 1e7, 1e12):
        p = plans[hours]
        top = p.top  # type: ignore[union-attr]
        assert top.params >= largest_1e5 > 1e9, (hours, top.name)
        assert top.memory_bytes <= limit
        note = [n for n in p.notes if n.startswith("memory:")]  # type: ignore[union-attr]
        assert note and "does not fit in one GPU" in note[0] and "sharding" in note[0]
        # nothing larger than the top candidate fits: it is the largest that does
        bigger = [c for c in p.candidates if c.shape.approx_params > top.shape.approx_params]
        assert bigger == []
    assert not any(n.startswith("memory:") for n in plans[1.0].notes)  # type: ignore[union-attr]
    res = runner.invoke(app, ["plan", "--gpu-hours", "1e6", "--gpu", "h100-sxm", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["top"]["params"] >= largest_1e5
    assert any("does not fit in one GPU" in n for n in d["notes"])
