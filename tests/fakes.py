"""What several test files share: a fake measured CPU profile, so plans need no measuring."""

from __future__ import annotations

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
