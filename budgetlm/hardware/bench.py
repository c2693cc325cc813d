"""Micro-benchmarks of this machine: matmul FLOP/s per dtype and memory-copy bandwidth.

`measure()` imports torch (inside the function) and times square matmuls per dtype
(FLOP/s = 2n³/t, best of several repetitions) and a large tensor copy (bytes read + written / t)
on the CPU or one CUDA device, within a budget of seconds, and returns a measured
`HardwareProfile`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from budgetlm.errors import UserError
from budgetlm.hardware.datasheet import GpuSpec, match_gpu
from budgetlm.hardware.detect import GpuInfo, detect_cpu, detect_gpus
from budgetlm.hardware.profile import HardwareProfile, creation_stamp
from budgetlm.units import GiB, format_si

DEFAULT_SECONDS = 8.0  # total micro-benchmark budget of `measure()`

# Share of the budget per CPU benchmark.
_CPU_SHARES = {"fp32": 0.4, "bf16": 0.2, "fp16": 0.2, "copy": 0.2}


@dataclass
class _DeviceRun:
    """What the benchmarks on one device found."""

    device: Any  # the torch.device measured
    flops: dict[str, float]
    sizes: dict[str, int]
    bandwidth: float
    device_memory: int
    gpu_count: int
    threads: int | None
    spec: GpuSpec | None
    gpus: list[GpuInfo]
    notes: list[str]


def measure(
    device: str | None = None,
    seconds: float = DEFAULT_SECONDS,
    progress: Callable[[str], None] | None = None,
) -> HardwareProfile:
    """Micro-benchmark this machine on `device` ("cpu", "cuda", "cuda:N"; None/"auto": CUDA if
    available) within about `seconds` of benchmarking (plus torch import and CUDA start-up).

    Matmul: square n×n, FLOP/s = 2n³ / best time; n grows from a small probe until one matmul
    takes about a sixth of its dtype's share of the budget (CPU <= 2048, GPU <= 8192). A dtype
    far slower than fp32 (bf16 on a CPU without native bf16 kernels) gets only a few
    repetitions, and a note. Bandwidth: one large tensor copy, bytes read + written / best time.
    `progress` is called with a short label before each phase.
    """
    if seconds <= 0:
        raise UserError(f"--seconds {seconds}: must be > 0")
    say = progress or (lambda _msg: None)
    say("importing torch")
    import torch

    t_start = time.perf_counter()
    dev = _resolve_device(torch, device)
    cpu_model, cpu_cores, ram = detect_cpu()
    gpus = detect_gpus()
    if dev.type == "cuda":
        run = _measure_cuda(torch, dev, seconds, say, gpus)
    else:
        run = _measure_cpu(torch, dev, seconds, say, ram, gpus)
    elapsed = time.perf_counter() - t_start
    spec = run.spec
    return HardwareProfile(
        cpu_model=cpu_model,
        cpu_cores=cpu_cores,
        memory_bytes=ram,
        gpus=run.gpus,
        device=run.device.type,
        matmul_flops=run.flops,
        bandwidth_bytes_per_s=run.bandwidth,
        measured=True,
        datasheet=dict(spec.peak_flops) if spec else None,
        device_memory_bytes=int(run.device_memory),
        gpu_count=run.gpu_count,
        torch_version=torch.__version__,
        notes=run.notes,
        **creation_stamp(),
        spec_key=spec.key if spec else None,
        datasheet_bandwidth_bytes_per_s=spec.bandwidth_bytes_per_s if spec else None,
        matmul_sizes=run.sizes,
        threads=run.threads,
        measure_seconds=round(elapsed, 3),
    )


def _measure_cuda(
    torch: Any, dev: Any, seconds: float, say: Callable[[str], None], gpus: list[GpuInfo]
) -> _DeviceRun:
    """Matmuls per dtype the GPU has tensor cores for, then a device-memory copy."""
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    dev = torch.device("cuda", index)
    props = torch.cuda.get_device_properties(dev)
    spec = match_gpu(props.name)
    if not gpus:  # NVML unavailable but CUDA works: describe GPUs from torch
        gpus = [_gpu_from_torch(torch, i) for i in range(torch.cuda.device_count())]
    torch.zeros(1, device=dev)
    torch.cuda.synchronize(dev)

    def sync() -> None:
        torch.cuda.synchronize(dev)

    ampere = props.major >= 8
    plan = ["fp32"] + (["tf32", "bf16"] if ampere else []) + ["fp16"]
    share = seconds / (len(plan) + 1)
    flops: dict[str, float] = {}
    sizes: dict[str, int] = {}
    notes: list[str] = []
    for key in plan:
        say(f"{key} matmul")
        with _TF32Matmuls(torch, key == "tf32"):
            flops[key], sizes[key], _slow = _bench_matmul(
                torch, dev, _torch_dtype(torch, key), share, 1024, 8192, sync, reference=None
            )
    if not ampere:
        notes.append(f"{props.name}: no bf16/tf32 tensor cores (compute capability "
                     f"{props.major}.{props.minor}); bf16 and tf32 not measured")
    say("memory bandwidth")
    free, _total = torch.cuda.mem_get_info(dev)
    bandwidth = _bench_copy(torch, dev, share, int(min(GiB, free / 8)), sync)
    torch.cuda.empty_cache()
    if spec is None:
        notes.append(f"{props.name}: no datasheet row; peaks are measured only")
    return _DeviceRun(
        device=dev, flops=flops, sizes=sizes, bandwidth=bandwidth,
        device_memory=int(props.total_memory), gpu_count=torch.cuda.device_count(),
        threads=None, spec=spec, gpus=gpus, notes=notes,
    )


def _measure_cpu(
    torch: Any,
    dev: Any,
    seconds: float,
    say: Callable[[str], None],
    ram: int,
    gpus: list[GpuInfo],
) -> _DeviceRun:
    """fp32, bf16 and fp16 matmuls (a note for each far slower than fp32), then a RAM copy."""
    flops: dict[str, float] = {}
    sizes: dict[str, int] = {}
    notes: list[str] = []
    threads = torch.get_num_threads()
    for key in ("fp32", "bf16", "fp16"):
        say(f"{key} matmul")
        f, n, slow = _bench_matmul(torch, dev, _torch_dtype(torch, key),
                                   seconds * _CPU_SHARES[key], 128, 2048, _no_sync,
                                   reference=flops.get("fp32"))
        flops[key], sizes[key] = f, n
        if slow:
            notes.append(f"{key} matmul is slow on this CPU ({format_si(f, 'FLOP/s')}, "
                         f"{f / flops['fp32']:.1%} of fp32; no native {key} kernels): "
                         "train in fp32 here")
    say("memory bandwidth")
    nbytes = int(min(256 * 1024**2, max(ram, GiB) / 16))
    bandwidth = _bench_copy(torch, dev, seconds * _CPU_SHARES["copy"], nbytes, _no_sync)
    if gpus:
        notes.append("measured on the CPU although GPUs are present")
    return _DeviceRun(
        device=dev, flops=flops, sizes=sizes, bandwidth=bandwidth, device_memory=ram,
        gpu_count=0, threads=threads, spec=None, gpus=gpus, notes=notes,
    )


def _no_sync() -> None:
    """A CPU computes synchronously: nothing to wait for."""


def _resolve_device(torch: Any, device: str | None) -> Any:
    name = (device or "auto").strip().lower()
    if name == "auto":
        with warnings.catch_warnings():  # a broken driver warns here; fall back to the CPU
            warnings.simplefilter("ignore")
            available = torch.cuda.is_available()
        return torch.device("cuda" if available else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device!r}: CUDA is not available "
                            f"(torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device!r}: only {torch.cuda.device_count()} GPU(s)")
    elif dev.type != "cpu":
        raise UserError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    return dev


def _gpu_from_torch(torch: Any, i: int) -> GpuInfo:
    props = torch.cuda.get_device_properties(i)
    spec = match_gpu(props.name)
    return GpuInfo(index=i, name=props.name, memory_bytes=int(props.total_memory),
                   spec_key=spec.key if spec else None)


def _torch_dtype(torch: Any, key: str) -> Any:
    return {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
            "fp16": torch.float16}[key]


class _TF32Matmuls:
    """Context manager: TF32 matmuls on or off, restoring the previous setting."""

    def __init__(self, torch: Any, enabled: bool) -> None:
        self.matmul = torch.backends.cuda.matmul
        self.enabled = enabled
        self.new_api = hasattr(self.matmul, "fp32_precision")
        self.saved: Any = None

    def __enter__(self) -> None:
        if self.new_api:  # torch >= 2.9; mixing it with allow_tf32 raises
            self.saved = self.matmul.fp32_precision
            self.matmul.fp32_precision = "tf32" if self.enabled else "ieee"
        else:
            self.saved = self.matmul.allow_tf32
            self.matmul.allow_tf32 = self.enabled

    def __exit__(self, *exc: object) -> None:
        if self.new_api:
            self.matmul.fp32_precision = self.saved
        else:
            self.matmul.allow_tf32 = self.saved


def _time_batch(fn: Callable[[], Any], inner: int, sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    sync()
    return (time.perf_counter() - t0) / inner


def _best_time(
    fn: Callable[[], Any],
    first: float,
    budget: float,
    sync: Callable[[], None],
    min_reps: int = 3,
    max_reps: int = 50,
) -> float:
    """Best per-call time over repetitions that fill `budget` (at least `min_reps`). Calls
    are batched so each timed batch lasts ~10 ms or more (launch overhead, timer resolution)."""
    deadline = time.perf_counter() + budget
    inner = max(1, min(1000, int(0.01 / max(first, 1e-9))))
    best = first
    reps = 0
    while reps < min_reps or (
        reps < max_reps and time.perf_counter() + first * inner < deadline
    ):
        best = min(best, _time_batch(fn, inner, sync))
        reps += 1
    return best


def _bench_matmul(
    torch: Any,
    dev: Any,
    dtype: Any,
    budget: float,
    n_start: int,
    n_max: int,
    sync: Callable[[], None],
    reference: float | None,
) -> tuple[float, int, bool]:
    """(FLOP/s, n, slow): best n×n matmul throughput within about `budget` seconds.

    `slow` is True when the first probe shows the dtype below a quarter of `reference` FLOP/s;
    then only a few repetitions are timed."""
    start = time.perf_counter()

    def setup(n: int) -> tuple[Callable[[], Any], float]:
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        c = torch.empty(n, n, device=dev, dtype=dtype)

        def fn() -> Any:
            return torch.mm(a, b, out=c)

        _time_batch(fn, 1, sync)  # warm-up: kernel selection, thread pool, clocks
        return fn, _time_batch(fn, 1, sync)

    n = n_start
    fn, t = setup(n)
    slow = reference is not None and 2 * n**3 / t < 0.25 * reference
    while n * 2 <= n_max and t * 8 <= budget / 6:
        if time.perf_counter() - start + t * 8 * 3 > budget:
            break
        n *= 2
        fn, t = setup(n)
    left = budget - (time.perf_counter() - start)
    best = _best_time(fn, t, max(left, 0.0), sync, max_reps=3 if slow else 50)
    del fn
    return 2.0 * n**3 / best, n, slow


def _bench_copy(
    torch: Any, dev: Any, budget: float, nbytes: int, sync: Callable[[], None]
) -> float:
    """Bytes/s of `dst.copy_(src)` on a buffer of `nbytes` (read + write counted)."""
    start = time.perf_counter()
    numel = max(nbytes // 4, 1024)
    src = torch.ones(numel, device=dev)
    dst = torch.empty_like(src)

    def fn() -> Any:
        return dst.copy_(src)

    _time_batch(fn, 1, sync)  # first touch of dst
    t = _time_batch(fn, 1, sync)
    left = budget - (time.perf_counter() - start)
    best = _best_time(fn, t, max(left, 0.0), sync)
    return 2.0 * numel * 4 / best
