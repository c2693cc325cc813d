"""budgetlm.calibrate.report: reading fit.json, the summary rows, the rich tables and the PNG."""

from __future__ import annotations

import io
import json
import random
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from budgetlm import laws
from budgetlm.calibrate import report as fitreport
from budgetlm.errors import UserError

LAW = {"form": "chinchilla", "E": 1.1, "A": 50.0, "B": 90.0, "alpha": 0.34, "beta": 0.3}
LEVELS = [1e12, 4e12, 1.6e13]
PLAN_FLOPS = 2e14


def _law() -> laws.LossLaw:
    return laws.law_from_fit(LAW)


def synthetic_fit(bootstrap: bool = True, plan: bool = True) -> dict[str, Any]:
    """3 levels x 3 sizes from a known law (+ small noise), one failed pilot, a bootstrap."""
    law = _law()
    rng = random.Random(0)
    pilots: list[dict[str, Any]] = []
    for i, c in enumerate(LEVELS):
        n_opt = law.optimal(c)[0]
        for k, f in enumerate((0.3, 1.0, 3.0)):
            n = n_opt * f
            d = c / (6 * n)
            fitted = law.loss(n, d)
            val = fitted * (1 + rng.uniform(-0.004, 0.004))
            pilots.append({
                "name": f"L{2 + k}-d{64 * (k + 1)}", "level": i, "level_flops": c,
                "n_layer": 2 + k, "d_model": 64 * (k + 1), "params": n, "tokens": d,
                "effective_tokens": d, "flops": c, "val_loss": val, "val_bpb": val * 1.4427,
                "fitted_loss": fitted, "residual": (val - fitted) / fitted,
                "wall_seconds": 10.0 + k, "state": "complete",
            })
    pilots.append({"name": "L8-d512", "level": 1, "level_flops": LEVELS[1], "n_layer": 8,
                   "d_model": 512, "params": 2.6e7, "tokens": LEVELS[1] / (6 * 2.6e7),
                   "flops": LEVELS[1], "wall_seconds": 3.0, "state": "failed"})
    fit: dict[str, Any] = {
        "kind": "budgetlm-fit", "version": 1, "created": "2026-11-24T10:00:00Z",
        "law": dict(LAW),
        "interval_level": 0.9, "residual_std": 0.003,
        "residuals": [p["residual"] for p in pilots if "residual" in p],
        "fit": {"objective": 0.01, "huber_delta": 0.001, "n_init": 64, "n_points": 9,
                "n_bootstrap": 40},
        "fit_range": [min(p["params"] for p in pilots[:9]), max(p["params"] for p in pilots[:9]),
                      min(p["tokens"] for p in pilots[:9]), max(p["tokens"] for p in pilots[:9])],
        "seq_len": 64, "unique_tokens": None, "bpb_per_nat": 1.4427,
        "data": {"source": "builtin:pystdlib", "tokenizer": "byte", "vocab_size": 256},
        "levels": list(LEVELS), "pilots": pilots,
        "budget": {"kind": "time", "seconds": 1200}, "pilot_fraction": 0.2,
        "pilot_seconds": 230.0,
    }
    if bootstrap:
        boot = []
        for _ in range(40):
            boot.append([LAW[k] * (1 + rng.uniform(-0.03, 0.03)) for k in fitreport.LAW_KEYS])
        fit["bootstrap"] = boot
        fit["intervals"] = {k: [LAW[k] * 0.97, LAW[k] * 1.03] for k in fitreport.LAW_KEYS}
    if plan:
        n, d = _law().optimal(PLAN_FLOPS)
        loss = _law().loss(n * 0.8, d / 0.8)
        fit["plan"] = {"params": n * 0.8, "tokens": d / 0.8, "flops": PLAN_FLOPS,
                       "loss": loss, "loss_lo": loss * 0.97, "loss_hi": loss * 1.03,
                       "name": "L4-d96-T64"}
    return fit


def _write(tmp_path: Path, fit: Any, name: str = "fit.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(fit) if not isinstance(fit, str) else fit)
    return p


def _png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    assert raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def test_report_fit_writes_a_png_next_to_the_file(tmp_path: Path) -> None:
    import matplotlib
    import matplotlib.image

    backend = matplotlib.get_backend()
    path = _write(tmp_path, synthetic_fit())
    console = Console(file=io.StringIO(), width=160)
    out = fitreport.report_fit(path, console=console)
    png = Path(out["png"])
    assert png == tmp_path / "fit.png"
    assert png.stat().st_size > 20_000
    w, h = _png_size(png)
    assert 1000 <= w <= 2000 and 500 <= h <= 1200 and w > h
    img = matplotlib.image.imread(png)
    assert img.shape[:2] == (h, w)
    assert img[..., :3].std() > 0.05  # something was drawn
    assert matplotlib.get_backend() == backend  # no global backend switch
    assert set(out["rows"]) == {"parameters", "pilots", "optimal"}
    json.dumps(out)  # plain data
    assert "wrote" in console.file.getvalue()  # type: ignore[attr-defined]


def test_explicit_png_path_and_minimal_file(tmp_path: Path) -> None:
    fit = synthetic_fit(bootstrap=False, plan=False)
    for key in ("levels", "fit_range", "residual_std", "budget", "created", "data"):
        fit.pop(key)
    for q in fit["pilots"]:
        q.pop("fitted_loss", None)
    path = _write(tmp_path, fit)
    out = fitreport.report_fit(path, png=tmp_path / "sub.png")
    assert out["png"] == str(tmp_path / "sub.png")
    assert _png_size(tmp_path / "sub.png")[0] > 0
    rows = out["rows"]
    # levels recovered from the pilots' level_flops; no bootstrap -> no interval
    assert [r["flops"] for r in rows["optimal"]] == LEVELS
    assert all(r["n_opt_lo"] is None for r in rows["optimal"])
    # fitted loss filled in from the law when absent
    done = [r for r in rows["pilots"] if r["state"] == "complete"]
    assert done[0]["fitted_loss"] == pytest.approx(_law().loss(done[0]["params"],
                                                               done[0]["tokens"]))


def test_summary_rows_hold_the_laws_optimum(tmp_path: Path) -> None:
    fit = synthetic_fit()
    rows = fitreport.summary_rows(fit)
    law = _law()

    params = {r["name"]: r for r in rows["parameters"]}
    assert params["alpha"]["value"] == pytest.approx(0.34)
    assert params["E"]["lo"] == pytest.approx(1.1 * 0.97)
    assert params["a"]["value"] == pytest.approx(0.3 / 0.64)
    assert params["a"]["lo"] < params["a"]["value"] < params["a"]["hi"]

    assert len(rows["pilots"]) == 10
    failed = [r for r in rows["pilots"] if r["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["val_loss"] is None and failed[0]["level"] == 1
    assert [r["level"] for r in rows["pilots"]] == sorted(r["level"] for r in rows["pilots"])
    for r in rows["pilots"]:
        if r["state"] == "complete":
            assert r["residual_pct"] == pytest.approx(100 * (r["val_loss"] / r["fitted_loss"] - 1))
            assert abs(r["residual_pct"]) < 0.5

    opt = rows["optimal"]
    assert [r["at"] for r in opt] == ["level 0", "level 1", "level 2", "plan"]
    for r, c in zip(opt, [*LEVELS, PLAN_FLOPS], strict=True):
        n, d = law.optimal(c)
        assert r["flops"] == c
        assert r["n_opt"] == pytest.approx(n, rel=1e-12)
        assert r["d_opt"] == pytest.approx(d, rel=1e-12)
        assert r["tokens_per_param"] == pytest.approx(d / n)
        assert r["loss"] == pytest.approx(law.loss(n, d))
        assert r["n_opt_lo"] < n < r["n_opt_hi"]
    # the middle size of each level was placed at the optimum, and is the level's best pilot
    assert opt[0]["best_params"] == pytest.approx(opt[0]["n_opt"])
    assert opt[3]["plan_name"] == "L4-d96-T64"
    assert opt[3]["plan_params"] == pytest.approx(0.8 * opt[3]["n_opt"])


def test_render_fit_prints_the_tables() -> None:
    buf = io.StringIO()
    fitreport.render_fit(Console(file=buf, width=160), synthetic_fit())
    text = buf.getvalue()
    first = text.splitlines()[0]
    assert "nats/token" in first and "builtin:pystdlib" in first and "9 pilots" in first
    assert "(1 failed)" in first and "bpb = nats × 1.443" in first
    assert "failed" in text and "L8-d512" in text
    assert "planned run L4-d96-T64" in text
    assert "compute-optimal" in text and "level 2" in text


def test_law_of_carries_range_and_bootstrap() -> None:
    fit = synthetic_fit()
    law = fitreport.law_of(fit)
    assert law.kind == "fit" and law.alpha == pytest.approx(0.34)
    assert law.fit_range == tuple(fit["fit_range"])
    assert len(law.extra["bootstrap"]) == 40 and law.extra["residual_std"] == 0.003


def test_repeated_data_and_calibrate_style_failures(tmp_path: Path) -> None:
    """As `budgetlm calibrate` writes it: unique_tokens set, a failure kind as the state with a
    reason and no flops, notes, a FLOP budget."""
    fit = synthetic_fit()
    fit["unique_tokens"] = 5e6
    for q in fit["pilots"]:
        q["effective_tokens"] = laws.effective_data(q["tokens"], 5e6)
    bad = fit["pilots"][-1]
    bad.update({"state": "timeout", "reason": "wall-time cap reached", "flops": None,
                "effective_tokens": None, "val_loss": float("nan")})
    fit["notes"] = ["levels 2+ scaled to 0.80x their compute"]
    fit["budget"] = {"kind": "flops", "flops": 1e15, "gpus": 1}
    path = _write(tmp_path, fit)
    buf = io.StringIO()
    out = fitreport.report_fit(path, console=Console(file=buf, width=200))
    text = buf.getvalue()
    assert "timeout" in text and "wall-time cap reached" in text
    assert "levels 2+ scaled" in text and "1e15 FLOPs budget" in text
    assert "loss (D')" in text
    rows = out["rows"]
    bad_row = next(r for r in rows["pilots"] if r["name"] == "L8-d512")
    assert bad_row["state"] == "timeout" and bad_row["val_loss"] is None
    plan = rows["optimal"][-1]
    assert plan["epochs"] == pytest.approx(plan["d_opt"] / 5e6)
    assert plan["loss_repeated"] > plan["loss"]
    assert _png_size(Path(out["png"]))[0] > 0


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such file"),
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"kind": "budgetlm-study", "law": LAW}, "kind"),
        ({"kind": "budgetlm-fit"}, "law: missing"),
        ({"kind": "budgetlm-fit", "law": {"E": 1, "A": 2, "B": 3, "alpha": 0.3}},
         "missing beta"),
        ({"kind": "budgetlm-fit", "law": {**LAW, "A": "big"}}, "A must be finite numbers"),
        ({"kind": "budgetlm-fit", "law": {**LAW, "alpha": -0.3}}, "must be positive"),
        ({"kind": "budgetlm-fit", "law": LAW, "pilots": {"a": 1}}, "pilots: expected a list"),
        ({"kind": "budgetlm-fit", "version": 7, "law": LAW}, "version 7"),
    ],
)
def test_malformed_files_are_user_errors_naming_the_file(
    tmp_path: Path, content: Any, needle: str
) -> None:
    path = tmp_path / "broken-fit.json"
    if content is not None:
        _write(tmp_path, content, path.name)
    with pytest.raises(UserError) as info:
        fitreport.load_fit(path)
    msg = str(info.value)
    assert str(path) in msg and needle in msg
    assert "\n" not in msg


def test_png_without_matplotlib_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(UserError, match=r"pip install 'budgetlm\[plot\]'"):
        fitreport.write_fit_png(synthetic_fit(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
