"""`plan --plot`: what is drawn (plot_series) and the files (PNG, HTML)."""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from budgetlm.cli import app
from budgetlm.errors import UserError
from budgetlm.plan import Budget, plan
from budgetlm.plan.plot import plot_series, write_plot

runner = CliRunner()


def _front_ok(s: dict) -> None:
    """Every candidate is matched or beaten by a front point on both axes, and no front point
    beats another on both."""
    for c in s["candidates"]:
        assert any(f["x"] <= c["x"] * (1 + 1e-9) and f["loss"] <= c["loss"] + 1e-12
                   for f in s["front"])
    for a in s["front"]:
        assert not any(b is not a and b["x"] < a["x"] and b["loss"] < a["loss"]
                       for b in s["front"])


def test_series_of_a_flop_budget() -> None:
    p = plan(Budget(flops=1e20), prior="chinchilla")
    s = plot_series(p)
    assert s["x_axis"] == "flops" and len(s["candidates"]) == len(p.candidates)
    assert s["top"]["name"] == p.top.name and s["top"]["x"] == pytest.approx(p.top.flops)
    _front_ok(s)
    off = s["offset"]  # a prior's losses are drawn relative to the top's
    assert off in (0.0, p.top.loss) and s["top"]["loss"] == pytest.approx(p.top.loss - off)
    by = {r["scale"]: r for r in p.marginal}
    assert s["optimum"]["loss"] == pytest.approx(by[1.0]["loss"] - off)
    assert [(r["scale"], r["x"], r["loss"]) for r in s["scaled"]] == [
        (k, k * p.top.flops, pytest.approx(by[k]["loss"] - off)) for k in (0.5, 2.0)]
    assert [(r["scale"], r["loss"]) for r in s["frontier"]] == [
        (r["scale"], pytest.approx(r["loss"] - off)) for r in p.marginal]


def test_series_of_time_and_cost_budgets() -> None:
    p = plan(Budget(gpu_hours=8, gpu="h100-sxm"))
    s = plot_series(p)
    assert s["x_axis"] == "seconds" and s["top"]["x"] == pytest.approx(p.top.seconds)
    p = plan(Budget(cost=100, price=2.5, gpu="h100-sxm"))
    s = plot_series(p)
    c = p.candidates[1]
    assert s["x_axis"] == "cost"
    assert s["candidates"][1]["x"] == pytest.approx(c.seconds * c.devices / 3600 * 2.5)
    assert s["top"]["x"] == pytest.approx(100, rel=0.05)
    _front_ok(s)


def test_png_and_html_files(tmp_path: Path) -> None:
    p = plan(Budget(gpu_hours=2, gpu="a100-80gb"))
    png = write_plot(p, tmp_path / "plan.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    page = write_plot(p, tmp_path / "plan.html").read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "<polyline" in page
    data = json.loads(html.unescape(re.search(r'<pre id="series">(.*)</pre>', page, re.S)[1]))
    assert data == json.loads(json.dumps(plot_series(p)))
    assert page.count('r="3"') == len(p.candidates)  # one dot per candidate
    with pytest.raises(UserError, match="--plot"):
        write_plot(p, tmp_path / "plan.pdf")


def test_missing_matplotlib_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    res = runner.invoke(app, ["plan", "--flops", "1e19", "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 2 and "matplotlib" in res.output and "Traceback" not in res.output


def test_cli_plot_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "plan.html"
    res = runner.invoke(app, ["plan", "--flops", "1e19", "--plot", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists() and "compute-optimal" in out.read_text()


def test_a_plot_name_without_png_or_html_is_one_line(tmp_path: Path) -> None:
    res = runner.invoke(app, ["plan", "--flops", "1e19", "--plot", str(tmp_path / "plan.txt")])
    assert res.exit_code == 2 and "expected a .png or .html file name" in res.output
    assert len(res.output.strip().splitlines()) == 1
