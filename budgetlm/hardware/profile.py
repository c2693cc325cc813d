"""`HardwareProfile`: what budgetlm knows about the machine it plans for.

A profile is measured on this machine (`budgetlm.hardware.bench.measure`) or built from a
datasheet row for a GPU you do not have (`reference_profile`). `peak()` says which FLOP/s to
trust per dtype and `peak_source()` where that figure comes from. A CPU has no datasheet row:
its numbers are always measured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from budgetlm.errors import UserError
from budgetlm.hardware.datasheet import DTYPE_KEYS, lookup_gpu
from budgetlm.hardware.detect import GpuInfo, detect_cpu, hostname, python_version
from budgetlm.units import GiB, format_si

_DTYPE_ALIASES = {
    "float32": "fp32", "float": "fp32", "32": "fp32",
    "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "16": "fp16",
}


@dataclass
class HardwareProfile:
    """What budgetlm knows about the machine it plans for. FLOP/s figures are per device."""

    cpu_model: str
    cpu_cores: int
    memory_bytes: int
    gpus: list[GpuInfo]
    device: str  # "cuda" when a GPU was used for measuring (or is planned for), else "cpu"
    matmul_flops: dict[str, float]  # measured FLOP/s per dtype on `device`
    bandwidth_bytes_per_s: float | None  # measured copy bandwidth, None if not measured
    measured: bool  # False for a datasheet-based reference profile
    datasheet: dict[str, float] | None  # peak FLOP/s row of the GPU in use, if known
    device_memory_bytes: int  # memory usable for training on `device` (GPU memory or host RAM)
    gpu_count: int  # GPUs of the kind in use (0 on a CPU profile)
    created_at: str
    torch_version: str | None
    python_version: str
    notes: list[str] = field(default_factory=list)
    # Extras (not needed by every caller):
    hostname: str = ""
    spec_key: str | None = None  # GPU_SPECS key of the GPU in use
    datasheet_bandwidth_bytes_per_s: float | None = None
    matmul_sizes: dict[str, int] = field(default_factory=dict)  # n of the n×n matmul per dtype
    threads: int | None = None  # torch intra-op threads during the CPU measurement
    measure_seconds: float | None = None  # wall time of the micro-benchmarks

    # -- queries ---------------------------------------------------------------------------

    def peak(self, precision: str) -> float | None:
        """FLOP/s to trust for a matmul in `precision` on one device.

        Measured when measured; on a GPU a dtype that was not measured falls back to the
        datasheet; on a CPU (no datasheet) it is None, as it is for a dtype the GPU lacks
        (bf16 on a V100 or T4).
        """
        key = _dtype_key(precision)
        if self.measured and key in self.matmul_flops:
            return self.matmul_flops[key]
        if self.device == "cpu" or not self.datasheet:
            return None
        return self.datasheet.get(key)

    def peak_source(self, precision: str) -> str | None:
        """"measured", "datasheet" or None: where `peak(precision)` comes from."""
        key = _dtype_key(precision)
        if self.measured and key in self.matmul_flops:
            return "measured"
        if self.peak(key) is not None:
            return "datasheet"
        return None

    def bandwidth(self) -> float | None:
        """Memory bandwidth in bytes/s: measured, else the datasheet figure, else None."""
        if self.bandwidth_bytes_per_s is not None:
            return self.bandwidth_bytes_per_s
        return self.datasheet_bandwidth_bytes_per_s

    @property
    def devices(self) -> int:
        """Devices a run can use in parallel: `gpu_count` on CUDA, 1 on a CPU."""
        return max(self.gpu_count, 1) if self.device == "cuda" else 1

    # -- (de)serialisation -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain dicts, lists and numbers (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HardwareProfile:
        """Inverse of `to_dict`. Unknown keys are ignored; missing required keys raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in d.items() if k in names}
        gpu_names = {f.name for f in dataclasses.fields(GpuInfo)}
        data["gpus"] = [
            GpuInfo(**{k: v for k, v in g.items() if k in gpu_names}) for g in d.get("gpus", [])
        ]
        data["matmul_flops"] = {str(k): float(v) for k, v in (d.get("matmul_flops") or {}).items()}
        if d.get("datasheet") is not None:
            data["datasheet"] = {str(k): float(v) for k, v in d["datasheet"].items()}
        data["notes"] = list(d.get("notes") or [])
        return cls(**data)

    # -- display ---------------------------------------------------------------------------

    def summary_rows(self) -> list[tuple[str, str]]:
        """(label, value) rows for a two-column table."""
        rows: list[tuple[str, str]] = []
        kind = "measured" if self.measured else "reference (datasheet, unmeasured)"
        rows.append(("Profile", f"{kind}, {self.created_at}"))
        rows.append(("CPU", f"{self.cpu_model} ({self.cpu_cores} cores)"))
        rows.append(("Host memory", _gib(self.memory_bytes)))
        if self.gpus:
            names: dict[str, int] = {}
            for g in self.gpus:
                label = f"{g.name} ({_gib(g.memory_bytes)})"
                names[label] = names.get(label, 0) + 1
            rows.append(("GPUs", "; ".join(f"{n} x {label}" for label, n in names.items())))
        else:
            rows.append(("GPUs", "none detected"))
        device = self.device
        if self.device == "cuda" and self.gpu_count > 1:
            device = f"cuda x {self.gpu_count}"
        rows.append(("Device", device))
        rows.append(("Device memory", _gib(self.device_memory_bytes)))
        for key in DTYPE_KEYS:
            flops = self.peak(key)
            if flops is None:
                continue
            src = self.peak_source(key)
            extra = ""
            if src == "measured" and key in self.matmul_sizes:
                n = self.matmul_sizes[key]
                extra = f", {n}x{n} matmul"
            if src == "measured" and self.datasheet and self.datasheet.get(key):
                extra += f", {flops / self.datasheet[key]:.0%} of datasheet"
            rows.append((f"Peak {key}", f"{format_si(flops, 'FLOP/s')} ({src}{extra})"))
        bw = self.bandwidth()
        if bw is not None:
            src = "measured copy" if self.bandwidth_bytes_per_s is not None else "datasheet"
            rows.append(("Memory bandwidth", f"{format_si(bw, 'B/s')} ({src})"))
        if self.threads:
            rows.append(("Torch threads", str(self.threads)))
        rows.append(("Torch", self.torch_version or "-"))
        rows.append(("Python", self.python_version))
        if self.measure_seconds is not None:
            rows.append(("Benchmark time", f"{self.measure_seconds:.1f} s"))
        for note in self.notes:
            rows.append(("Note", note))
        return rows


def _dtype_key(precision: str) -> str:
    p = str(precision).strip().lower().removeprefix("torch.")
    return _DTYPE_ALIASES.get(p, p)


def _dtype_key(precision: str) -> str:
    p = str(precision).strip().lower().removeprefix("torch.")
    return _DTYPE_ALIASES.get(p, p)


def _gib(n: int | float) -> str:
    return f"{n / GiB:.1f} GiB"


def creation_stamp() -> dict[str, str]:
    """The `created_at` (UTC, now), `python_version` and `hostname` fields of a new profile."""
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python_version": python_version(),
        "hostname": hostname(),
    }


def reference_profile(gpu: str, count: int = 1) -> HardwareProfile:
    """A datasheet-based profile of `count` GPUs named `gpu`, for planning on hardware you do
    not have. `measured` is False and `peak()` returns datasheet peaks. The host fields (CPU,
    RAM) describe this machine."""
    spec = lookup_gpu(gpu)
    if count < 1:
        raise UserError(f"--gpus {count}: must be at least 1")
    cpu_model, cpu_cores, ram = detect_cpu()
    return HardwareProfile(
        cpu_model=cpu_model,
        cpu_cores=cpu_cores,
        memory_bytes=ram,
        gpus=[
            GpuInfo(index=i, name=spec.name, memory_bytes=spec.memory_bytes, spec_key=spec.key)
            for i in range(count)
        ],
        device="cuda",
        matmul_flops={},
        bandwidth_bytes_per_s=None,
        measured=False,
        datasheet=dict(spec.peak_flops),
        device_memory_bytes=spec.memory_bytes,
        gpu_count=count,
        torch_version=None,
        notes=[f"unmeasured: datasheet peak ({spec.name}; {spec.source})"],
        **creation_stamp(),
        spec_key=spec.key,
        datasheet_bandwidth_bytes_per_s=spec.bandwidth_bytes_per_s,
    )
