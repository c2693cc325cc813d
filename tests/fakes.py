"""What several test files share: a fake measured CPU profile, so plans need no measuring, and
the memory-truth benchmark loaded as a module (its fake-tensor training step)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from budgetlm import hardware

GiB = 2**30


def fake_cpu_profile(fp32: float = 5e10, bf16: float | None = 5e9) -> hardware.HardwareProfile:
    """A 2-core, 16 GiB CPU measured at `fp32` (and `bf16`, unless None) matmul FLOP/s."""
    flops = {"fp32": fp32}
    if bf16 is not None:
        flops["bf16"] = bf16
    return hardware.HardwareProfile(
        cpu_model="fake CPU", cpu_cores=2, memory_bytes=16 * GiB, gpus=[], device="cpu",
        matmul_flops=flops, bandwidth_bytes_per_s=None, measured=True, datasheet=None,
        device_memory_bytes=16 * GiB, gpu_count=0, created_at="2024-01-01T00:00:00Z",
        torch_version=None, python_version="3.11",
    )


def use_profile(monkeypatch: pytest.MonkeyPatch,
                prof: hardware.HardwareProfile) -> hardware.HardwareProfile:
    """Make `prof` this machine's profile (cached and loaded) for one test."""
    monkeypatch.setattr(hardware, "cached_profile", lambda: prof)
    monkeypatch.setattr(hardware, "load_profile", lambda *a, **k: prof)
    return prof


def load_memory_truth() -> Any:
    """benchmarks/memory_truth.py as the module `memory_truth`."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_truth.py"
    spec = importlib.util.spec_from_file_location("memory_truth", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["memory_truth"] = mod
    spec.loader.exec_module(mod)
    return mod
