"""Same answers before and after a refactor: the JSON of fixed `plan` and `estimate` calls is
compared with expectations stored in tests/golden/ (written by the code as it was when they were
recorded). Only fields documented as renamed in the README may differ, and run-dependent fields
(elapsed seconds, this machine's host description) are left out.

Regenerate deliberately with BUDGETLM_REGEN_GOLDEN=1 (then read the diff before committing)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from budgetlm.cli import app
from budgetlm.config import PRESETS

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("BUDGETLM_REGEN_GOLDEN") == "1"
# Documented in the README ("Files a script reads"): the planner's step timing is "timed", not
# "calibrated" (that word names only the pilot-fitting command). New -> old, keys and values.
RENAMED: dict[str, str] = {"timed": "calibrated"}
RENAMED_TEXT: dict[str, str] = {
    "(not timed)": "(not calibrated)",
    " (timed steps)": " (calibration)",
}
DROPPED = {"elapsed_s"}

CASES: dict[str, list[str]] = {
    "plan-gpu-hours-h100": ["plan", "--gpu-hours", "8", "--gpu", "h100-sxm"],
    "plan-flops-chinchilla": ["plan", "--flops", "1.21e20"],
    "plan-a100-x8": ["plan", "--gpu-hours", "8", "--gpu", "a100-80gb", "--gpus", "8"],
    "plan-cost": ["plan", "--cost", "200", "--price", "2.5", "--gpu", "h100"],
    "plan-tokens-limited": ["plan", "--flops", "1e19", "--tokens", "2e8", "--gpu", "a100"],
    "plan-prior-kaplan": ["plan", "--gpu-hours", "2", "--gpu", "l4", "--prior", "kaplan",
                          "--seq-len", "512", "--precision", "bf16", "--schedule", "cosine"],
    "plan-time-data": ["plan", "--time", "3m", "--data", "{corpus}", "--tokenizer", "char",
                       "--no-timing"],
    "estimate-gpt2-bf16-ckpt": ["estimate", "gpt2-124m", "--micro-batch", "8", "--precision",
                                "bf16", "--checkpointing", "--gpu", "h100"],
    "estimate-lion": ["estimate", "nanogpt-cpu", "--optimizer", "lion", "--gpu", "a100",
                      "--set", "model.n_layer=6"],
} | {f"estimate-{name}": ["estimate", name] for name in sorted(PRESETS)}


def _corpus(tmp: Path) -> Path:
    """A fixed ~60 KB text: the same bytes on every machine."""
    words = ["budget", "model", "token", "layer", "train", "loss", "batch", "plan", "fit", "time"]
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(9)) for i in range(1200)]
    path = tmp / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fixed_profile() -> None:
    """This machine's profile cache holds fixed numbers, so `--time` plans are reproducible."""
    from budgetlm.hardware import HardwareProfile, cache_key, save_profile

    profile = HardwareProfile(
        cpu_model="fixed", cpu_cores=2, memory_bytes=24 * 2**30, gpus=[], device="cpu",
        matmul_flops={"fp32": 4.0e10, "bf16": 1.0e10}, bandwidth_bytes_per_s=8.0e9,
        measured=True, datasheet=None, device_memory_bytes=24 * 2**30, gpu_count=0,
        created_at="2026-01-01T00:00:00", torch_version="fixed", python_version="3.11",
        threads=1,
    )
    save_profile(profile, cache_key())


def _normalize(obj: Any) -> Any:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key in DROPPED:
                continue
            out[RENAMED.get(key, key)] = _normalize(value)
        return out
    if isinstance(obj, list):
        return [_normalize(v) for v in obj]
    if isinstance(obj, str):
        if obj == "timed":
            return "calibrated"
        for new, old in RENAMED_TEXT.items():
            obj = obj.replace(new, old)
    return obj


@pytest.mark.parametrize("name", sorted(CASES))
def test_json_matches_stored_expectation(name: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDGETLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    _fixed_profile()
    corpus = _corpus(tmp_path)
    args = [a.replace("{corpus}", str(corpus)) for a in CASES[name]] + ["--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    got = _normalize(json.loads(result.stdout))
    text = json.dumps(got, indent=1, sort_keys=True).replace(str(tmp_path), "<tmp>")
    stored = GOLDEN / f"{name}.json"
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        stored.write_text(text + "\n")
    assert json.loads(text) == json.loads(stored.read_text())


@pytest.mark.parametrize("name", ["plan-gpu-hours-h100", "plan-time-data"])
def test_exported_run_config_matches_stored_expectation(name: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The top candidate written by `plan -o` (the Candidate -> RunConfig recipe) is unchanged."""
    monkeypatch.setenv("BUDGETLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    _fixed_profile()
    corpus = _corpus(tmp_path)
    out = tmp_path / "plan.yaml"
    args = [a.replace("{corpus}", str(corpus)) for a in CASES[name]] + ["-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = out.read_text().replace(str(tmp_path), "<tmp>")
    stored = GOLDEN / f"{name}.yaml"
    if REGEN:
        stored.write_text(text)
    assert text == stored.read_text()
