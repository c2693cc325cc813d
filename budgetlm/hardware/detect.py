"""What this machine has, read without torch: GPUs (via NVML), CPU, memory, host name.

`detect_gpus` asks the NVIDIA driver through nvidia-ml-py (imported inside the function) and
honours CUDA_VISIBLE_DEVICES. `detect_cpu` honours the affinity mask and cgroup CPU and memory
limits, so a container reports what it may use rather than what the host has.
"""

from __future__ import annotations

import math
import os
import platform
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from budgetlm.hardware.datasheet import match_gpu


@dataclass
class GpuInfo:
    """One GPU as the driver reports it."""

    index: int
    name: str
    memory_bytes: int
    sm_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None
    spec_key: str | None = None  # matching GPU_SPECS row, if any


def _visible_filter() -> Callable[[int, str], bool]:
    """A predicate honouring CUDA_VISIBLE_DEVICES (indices or GPU-UUID prefixes)."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return lambda index, uuid: True
    items = [s.strip() for s in raw.split(",") if s.strip()]
    wanted: list[str] = []
    for item in items:  # CUDA stops at the first invalid entry
        if item.isdigit() or item.startswith(("GPU-", "MIG-")):
            wanted.append(item)
        else:
            break
    if items and not wanted and not items[0].startswith("-"):
        return lambda index, uuid: True  # a form we do not parse: do not filter
    return lambda index, uuid: any(
        (w.isdigit() and int(w) == index) or (not w.isdigit() and uuid.startswith(w))
        for w in wanted
    )


def detect_gpus() -> list[GpuInfo]:
    """GPUs the NVIDIA driver reports (via NVML). No driver or library -> [] silently."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pynvml  # nvidia-ml-py
    except Exception:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []
    gpus: list[GpuInfo] = []
    try:
        visible = _visible_filter()
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = _nvml_str(_try(lambda h=handle: pynvml.nvmlDeviceGetUUID(h)) or "")
            if not visible(i, uuid):
                continue
            name = _nvml_str(pynvml.nvmlDeviceGetName(handle))
            mem = _try(lambda h=handle: int(pynvml.nvmlDeviceGetMemoryInfo(h).total)) or 0
            clock = _try(lambda h=handle: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM))
            max_clock = _try(
                lambda h=handle: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
            )
            spec = match_gpu(name)
            gpus.append(
                GpuInfo(
                    index=i,
                    name=name,
                    memory_bytes=mem,
                    sm_clock_mhz=int(clock) if clock else None,
                    max_sm_clock_mhz=int(max_clock) if max_clock else None,
                    spec_key=spec.key if spec else None,
                )
            )
    except Exception:
        return gpus
    finally:
        _try(pynvml.nvmlShutdown)
    return gpus


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return None


def _nvml_str(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _cpu_model() -> str:
    text = _read("/proc/cpuinfo")
    if text:
        for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
            m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
            if m and m.group(1).strip():
                return m.group(1).strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _cgroup_cpus() -> float | None:
    text = _read("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
    if text:
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            return int(parts[0]) / int(parts[1])
        return None
    quota = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")  # cgroup v1
    period = _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    if quota and period and int(quota) > 0:
        return int(quota) / int(period)
    return None


def _cgroup_memory() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        text = _read(path)
        if text and text.strip().isdigit():
            return int(text.strip())
    return None


def detect_cpu() -> tuple[str, int, int]:
    """(CPU model, usable cores, usable RAM bytes). Cores honour the affinity mask and a
    cgroup CPU quota; RAM is physical memory capped by a cgroup memory limit."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota = _cgroup_cpus()
    except (ValueError, ZeroDivisionError):
        quota = None
    if quota:
        cores = max(1, min(cores, math.ceil(quota)))
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        ram = 0
    limit = _cgroup_memory()
    if limit and (not ram or limit < ram):
        ram = limit
    return _cpu_model(), cores, int(ram)


def hostname() -> str:
    """This machine's network name."""
    try:
        return os.uname().nodename
    except AttributeError:  # pragma: no cover - Windows
        return platform.node()


def python_version() -> str:
    """The running Python as 'major.minor.micro'."""
    return ".".join(str(v) for v in sys.version_info[:3])


def installed_torch_version() -> str | None:
    """torch's installed version from its package metadata (the same string whether or not
    torch is imported, so a cache key built from it is stable); torch.__version__ only without
    metadata; None without torch."""
    try:
        return version("torch")
    except PackageNotFoundError:
        torch = sys.modules.get("torch")
        return str(getattr(torch, "__version__", "")) or None
