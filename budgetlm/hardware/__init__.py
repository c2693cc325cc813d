"""What this machine can do: datasheet peaks, detected devices, measured throughput, and a cache.

Three sources of FLOP/s, kept apart so a plan can say which one it used:

* `GPU_SPECS` — vendor datasheet rows (dense tensor-core peaks; sparsity figures halved), each
  with its citation. `reference_profile("h100")` plans for a GPU you do not have from these.
* `measure()` — micro-benchmarks on this machine: square matmuls per dtype (FLOP/s = 2n³/t,
  best of several repetitions) and a large tensor copy (bytes read + written / t).
* `load_profile()` — `measure()` once, then a JSON cache keyed by hostname, CPU model, GPU names
  and torch version, so `budgetlm plan` answers without importing torch.

A CPU has no datasheet row: its numbers are always measured (DESIGN §6).

Nothing heavy is imported at module import: torch is imported inside `measure()`, pynvml inside
`detect_gpus()`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm.errors import UserError

__all__ = [
    "GPU_SPECS",
    "GpuInfo",
    "GpuSpec",
    "HardwareProfile",
    "cache_path",
    "cached_profile",
    "detect_cpu",
    "detect_gpus",
    "load_profile",
    "lookup_gpu",
    "measure",
    "reference_profile",
]

GiB = 1024**3
CACHE_VERSION = 1
DEFAULT_SECONDS = 8.0  # total micro-benchmark budget of `measure()`
DTYPE_KEYS = ("fp32", "tf32", "bf16", "fp16")
_DTYPE_ALIASES = {
    "float32": "fp32", "float": "fp32", "32": "fp32",
    "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "16": "fp16",
}


# ---------------------------------------------------------------------------------------------
# Datasheet table


@dataclass(frozen=True)
class GpuSpec:
    """One datasheet row. Peaks are dense (no 2:4 sparsity) tensor FLOP/s, per GPU.

    `fp32` is the non-tensor (CUDA core) rate: what a matmul gets with TF32 disabled, PyTorch's
    default for matmuls. `tf32` is the TF32 tensor-core rate (Ampere and later). `bf16`/`fp16`
    are with fp32 accumulation, what PyTorch uses (GeForce cards run fp16 accumulation at 2x).
    """

    key: str
    name: str
    aliases: tuple[str, ...]
    memory_bytes: int
    peak_flops: dict[str, float]
    bandwidth_bytes_per_s: float
    source: str


def _spec(
    key: str,
    name: str,
    aliases: tuple[str, ...],
    memory_gib: float,
    peaks: dict[str, float],
    bandwidth_gb_s: float,
    source: str,
) -> GpuSpec:
    return GpuSpec(
        key=key,
        name=name,
        aliases=aliases,
        memory_bytes=int(memory_gib * GiB),
        peak_flops={k: float(v) for k, v in peaks.items()},
        bandwidth_bytes_per_s=bandwidth_gb_s * 1e9,
        source=source,
    )


_H100_DS = "NVIDIA H100 Tensor Core GPU datasheet (2023, nvidia.com/h100)"
_A100_DS = "NVIDIA A100 Tensor Core GPU datasheet (2021, nvidia.com/a100)"
_V100_DS = "NVIDIA Tesla V100 GPU datasheet (2020, nvidia.com/v100)"
_ADA_WP = "NVIDIA Ada Lovelace GPU architecture whitepaper v2.1, Appendix A, Table 2"
_GA102_WP = "NVIDIA Ampere GA102 GPU architecture whitepaper v2, Appendix A, Table 9"

_SPECS: tuple[GpuSpec, ...] = (
    _spec(
        "h100-sxm", "NVIDIA H100 SXM5 80GB",
        ("h100", "h100 sxm", "h100 sxm5", "h100 80gb hbm3", "nvidia h100 80gb hbm3"),
        80, {"fp32": 66.9e12, "tf32": 494.5e12, "bf16": 989e12, "fp16": 989e12}, 3350,
        f"{_H100_DS}, SXM column: TF32 989 / BF16 1979 / FP16 1979 TFLOPS with sparsity "
        "(halved for dense), 3.35 TB/s; FP32 66.9 TFLOPS from the NVIDIA H100 whitepaper",
    ),
    _spec(
        "h100-pcie", "NVIDIA H100 PCIe 80GB",
        ("h100 pcie", "nvidia h100 pcie", "h100 80gb pcie"),
        80, {"fp32": 51.2e12, "tf32": 378e12, "bf16": 756e12, "fp16": 756e12}, 2000,
        f"{_H100_DS}, PCIe column: FP32 51 TFLOPS, TF32 756 / BF16 1513 / FP16 1513 TFLOPS "
        "with sparsity (halved for dense), 2.0 TB/s",
    ),
    _spec(
        "h100-nvl", "NVIDIA H100 NVL 94GB",
        ("h100 nvl", "nvidia h100 nvl"),
        94, {"fp32": 60e12, "tf32": 417.5e12, "bf16": 835.5e12, "fp16": 835.5e12}, 3900,
        f"{_H100_DS}, NVL column (per GPU): FP32 60 TFLOPS, TF32 835 / BF16 1671 / FP16 1671 "
        "TFLOPS with sparsity (halved for dense), 3.9 TB/s",
    ),
    _spec(
        "h200", "NVIDIA H200 SXM 141GB",
        ("h200", "h200 sxm", "nvidia h200", "h200 141gb"),
        141, {"fp32": 67e12, "tf32": 494.5e12, "bf16": 989e12, "fp16": 989e12}, 4800,
        "NVIDIA H200 Tensor Core GPU datasheet (2024, nvidia.com/h200), SXM column: FP32 67, "
        "TF32 989 / BF16 1979 / FP16 1979 TFLOPS with sparsity (halved for dense), 4.8 TB/s",
    ),
    _spec(
        "a100-80gb", "NVIDIA A100 80GB",
        ("a100", "a100 80gb", "a100 sxm4 80gb", "a100 80gb pcie", "a100 sxm 80gb"),
        80, {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12}, 2039,
        f"{_A100_DS}: FP32 19.5, TF32 156, BF16 312, FP16 312 TFLOPS dense; "
        "2,039 GB/s (SXM; PCIe 1,935 GB/s)",
    ),
    _spec(
        "a100-40gb", "NVIDIA A100 40GB",
        ("a100 40gb", "a100 sxm4 40gb", "a100 pcie 40gb", "a100 sxm 40gb"),
        40, {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12}, 1555,
        f"{_A100_DS}: FP32 19.5, TF32 156, BF16 312, FP16 312 TFLOPS dense; 1,555 GB/s",
    ),
    _spec(
        "v100", "NVIDIA V100 SXM2 32GB",
        ("v100", "tesla v100", "v100 sxm2", "v100 32gb", "v100 sxm2 32gb"),
        32, {"fp32": 15.7e12, "fp16": 125e12}, 900,
        f"{_V100_DS}, SXM2 column: FP32 15.7, Tensor (FP16) 125 TFLOPS, 900 GB/s; "
        "no bf16/tf32 (Volta)",
    ),
    _spec(
        "v100-16gb", "NVIDIA V100 SXM2 16GB",
        ("v100 16gb", "v100 sxm2 16gb"),
        16, {"fp32": 15.7e12, "fp16": 125e12}, 900,
        f"{_V100_DS}, SXM2 column: FP32 15.7, Tensor (FP16) 125 TFLOPS, 900 GB/s",
    ),
    _spec(
        "l4", "NVIDIA L4 24GB",
        ("l4", "nvidia l4"),
        24, {"fp32": 30.3e12, "tf32": 60e12, "bf16": 121e12, "fp16": 121e12}, 300,
        "NVIDIA L4 Tensor Core GPU datasheet (2023): FP32 30.3, TF32 120 / BF16 242 / FP16 242 "
        "TFLOPS with sparsity (halved for dense), 300 GB/s",
    ),
    _spec(
        "t4", "NVIDIA T4 16GB",
        ("t4", "tesla t4"),
        16, {"fp32": 8.1e12, "fp16": 65e12}, 320,
        "NVIDIA T4 Tensor Core GPU datasheet (2019): FP32 8.1, mixed FP16/FP32 65 TFLOPS, "
        "320 GB/s; no bf16/tf32 (Turing)",
    ),
    _spec(
        "rtx-4090", "NVIDIA GeForce RTX 4090 24GB",
        ("rtx 4090", "4090", "geforce rtx 4090"),
        24, {"fp32": 82.6e12, "tf32": 82.6e12, "bf16": 165.2e12, "fp16": 165.2e12}, 1008,
        f"{_ADA_WP}: FP32 82.6, TF32 82.6, BF16/FP16 with FP32 accumulate 165.2 TFLOPS dense "
        "(FP16 accumulate 330.3), 1,008 GB/s",
    ),
    _spec(
        "rtx-3090", "NVIDIA GeForce RTX 3090 24GB",
        ("rtx 3090", "3090", "geforce rtx 3090"),
        24, {"fp32": 35.6e12, "tf32": 35.6e12, "bf16": 71e12, "fp16": 71e12}, 936,
        f"{_GA102_WP}: FP32 35.6, TF32 35.6, BF16/FP16 with FP32 accumulate 71 TFLOPS dense "
        "(FP16 accumulate 142), 936 GB/s",
    ),
    _spec(
        "a10g", "NVIDIA A10G 24GB (AWS G5)",
        ("a10g", "nvidia a10g"),
        24, {"fp32": 35e12, "tf32": 35e12, "bf16": 70e12, "fp16": 70e12}, 600,
        "No public NVIDIA datasheet (AWS-only part); AWS/NVIDIA G5 figures as compiled in "
        "Baseten, 'NVIDIA A10 vs A10G for ML model inference' (2023): FP32 35, TF32 35, "
        "BF16/FP16 70 TFLOPS dense, 600 GB/s",
    ),
    _spec(
        "a10", "NVIDIA A10 24GB",
        ("a10", "nvidia a10"),
        24, {"fp32": 31.2e12, "tf32": 62.5e12, "bf16": 125e12, "fp16": 125e12}, 600,
        "NVIDIA A10 Tensor Core GPU datasheet (2021): FP32 31.2, TF32 62.5, BF16 125, FP16 125 "
        "TFLOPS dense, 600 GB/s",
    ),
    _spec(
        "l40s", "NVIDIA L40S 48GB",
        ("l40s", "nvidia l40s"),
        48, {"fp32": 91.6e12, "tf32": 183e12, "bf16": 362.05e12, "fp16": 362.05e12}, 864,
        "NVIDIA L40S GPU datasheet (2023): FP32 91.6, TF32 183, BF16 362.05, FP16 362.05 "
        "TFLOPS dense (twice with sparsity), 864 GB/s",
    ),
    _spec(
        "l40", "NVIDIA L40 48GB",
        ("l40", "nvidia l40"),
        48, {"fp32": 90.5e12, "tf32": 90.5e12, "bf16": 181.05e12, "fp16": 181.05e12}, 864,
        "NVIDIA L40 GPU datasheet (2022): FP32 90.5, TF32 90.5, BF16 181.05, FP16 181.05 "
        "TFLOPS dense (twice with sparsity), 864 GB/s",
    ),
)

GPU_SPECS: dict[str, GpuSpec] = {s.key: s for s in _SPECS}

# Matching: a family token names the chip (`h100`), qualifiers pick the row (form, memory).
# The first key of each family is its default ("h100" -> SXM, "a100" -> 80GB, "v100" -> 32GB).
_FAMILIES: dict[str, tuple[str, ...]] = {
    "h100": ("h100-sxm", "h100-pcie", "h100-nvl"),
    "h200": ("h200",),
    "a100": ("a100-80gb", "a100-40gb"),
    "v100": ("v100", "v100-16gb"),
    "l4": ("l4",),
    "t4": ("t4",),
    "rtx4090": ("rtx-4090",),
    "4090": ("rtx-4090",),
    "rtx3090": ("rtx-3090",),
    "3090": ("rtx-3090",),
    "a10g": ("a10g",),
    "a10": ("a10",),
    "l40s": ("l40s",),
    "l40": ("l40",),
}
_FORM_OF = {"h100-sxm": "sxm", "h100-pcie": "pcie", "h100-nvl": "nvl"}
_FORM_WORDS = {"sxm": "sxm", "sxm4": "sxm", "sxm5": "sxm", "hbm3": "sxm", "pcie": "pcie",
               "nvl": "nvl"}
_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "gpu", "tensor", "core"}


def _tokens(name: str) -> list[str]:
    return [t for t in re.findall(r"[a-z0-9]+", name.lower()) if t not in _VENDOR_WORDS]


def _compact(name: str) -> str:
    return "".join(_tokens(name))


def _exact_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for spec in _SPECS:
        for alias in (spec.key, spec.name, *spec.aliases):
            index.setdefault(_compact(alias), spec.key)
    return index


_EXACT = _exact_index()


def _match_gpu(name: str) -> GpuSpec | None:
    """Best datasheet row for a user-typed or driver-reported GPU name, or None."""
    compact = _compact(name)
    if not compact:
        return None
    if compact in _EXACT:
        return GPU_SPECS[_EXACT[compact]]
    tokens = _tokens(name)
    joined = tokens + [a + b for a, b in zip(tokens, tokens[1:], strict=False)]
    family, rest = None, ""
    for tok in joined:
        for fam in _FAMILIES:
            if tok == fam or (tok.startswith(fam) and not tok[len(fam)].isdigit()):
                if family is None or len(fam) > len(family):
                    family, rest = fam, tok[len(fam):]
    if family is None:
        return None
    candidates = [GPU_SPECS[k] for k in _FAMILIES[family]]
    lower = name.lower()
    form = next((f for w, f in _FORM_WORDS.items() if w in tokens or rest.startswith(w)), None)
    if form:
        narrowed = [s for s in candidates if _FORM_OF.get(s.key) == form]
        candidates = narrowed or candidates
    mem = re.search(r"(?<![a-z0-9])(\d+)\s?gi?b", lower) or re.fullmatch(r"(\d+)gb", rest)
    if mem:
        gib = int(mem.group(1))
        narrowed = [s for s in candidates if round(s.memory_bytes / GiB) == gib]
        candidates = narrowed or candidates
    return candidates[0]


def lookup_gpu(name: str) -> GpuSpec:
    """Datasheet row for `name`: a key (`h100-sxm`), an alias (`H100`, `rtx 4090`) or a driver
    name (`NVIDIA H100 80GB HBM3`, `Tesla V100-SXM2-16GB`). Case and punctuation are ignored."""
    spec = _match_gpu(name)
    if spec is not None:
        return spec
    import difflib

    vocabulary = {}
    for s in _SPECS:
        for alias in (s.key, *s.aliases):
            vocabulary.setdefault(alias.lower(), s.key)
    close = difflib.get_close_matches(name.strip().lower(), list(vocabulary), n=3, cutoff=0.5)
    keys = list(dict.fromkeys(vocabulary[c] for c in close))
    hint = f"did you mean {' or '.join(keys)}? " if keys else ""
    raise UserError(f"--gpu {name!r}: unknown GPU; {hint}known: {', '.join(GPU_SPECS)}")


# ---------------------------------------------------------------------------------------------
# Profiles


@dataclass
class GpuInfo:
    """One GPU as the driver reports it."""

    index: int
    name: str
    memory_bytes: int
    sm_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None
    spec_key: str | None = None  # matching GPU_SPECS row, if any


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
        rows.append(("Host memory", _fmt_bytes(self.memory_bytes)))
        if self.gpus:
            names: dict[str, int] = {}
            for g in self.gpus:
                label = f"{g.name} ({_fmt_bytes(g.memory_bytes)})"
                names[label] = names.get(label, 0) + 1
            rows.append(("GPUs", "; ".join(f"{n} x {label}" for label, n in names.items())))
        else:
            rows.append(("GPUs", "none detected"))
        device = self.device
        if self.device == "cuda" and self.gpu_count > 1:
            device = f"cuda x {self.gpu_count}"
        rows.append(("Device", device))
        rows.append(("Device memory", _fmt_bytes(self.device_memory_bytes)))
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
            rows.append((f"Peak {key}", f"{_fmt_si(flops, 'FLOP/s')} ({src}{extra})"))
        bw = self.bandwidth()
        if bw is not None:
            src = "measured copy" if self.bandwidth_bytes_per_s is not None else "datasheet"
            rows.append(("Memory bandwidth", f"{_fmt_si(bw, 'B/s')} ({src})"))
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


def _fmt_si(x: float, unit: str) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _fmt_bytes(n: int | float) -> str:
    return f"{n / GiB:.1f} GiB"


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def _python_version() -> str:
    return ".".join(str(v) for v in sys.version_info[:3])


def _hostname() -> str:
    try:
        return os.uname().nodename
    except AttributeError:  # pragma: no cover - Windows
        import platform

        return platform.node()


# ---------------------------------------------------------------------------------------------
# Detection (no torch)


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
            spec = _match_gpu(name)
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
    import platform

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


# ---------------------------------------------------------------------------------------------
# Measurement (imports torch)


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
    notes: list[str] = []
    flops: dict[str, float] = {}
    sizes: dict[str, int] = {}
    spec: GpuSpec | None = None

    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        dev = torch.device("cuda", index)
        props = torch.cuda.get_device_properties(dev)
        spec = _match_gpu(props.name)
        if not gpus:  # NVML unavailable but CUDA works: describe GPUs from torch
            gpus = [_gpu_from_torch(torch, i) for i in range(torch.cuda.device_count())]
        torch.zeros(1, device=dev)
        torch.cuda.synchronize(dev)

        def sync() -> None:
            torch.cuda.synchronize(dev)

        ampere = props.major >= 8
        plan = ["fp32"] + (["tf32", "bf16"] if ampere else []) + ["fp16"]
        share = seconds / (len(plan) + 1)
        n_start, n_max = 1024, 8192
        for key in plan:
            say(f"{key} matmul")
            with _tf32(torch, key == "tf32"):
                f, n, _slow = _bench_matmul(torch, dev, _torch_dtype(torch, key), share,
                                            n_start, n_max, sync, reference=None)
            flops[key], sizes[key] = f, n
        if not ampere:
            notes.append(f"{props.name}: no bf16/tf32 tensor cores (compute capability "
                         f"{props.major}.{props.minor}); bf16 and tf32 not measured")
        say("memory bandwidth")
        free, _total = torch.cuda.mem_get_info(dev)
        nbytes = int(min(GiB, free / 8))
        bandwidth = _bench_copy(torch, dev, share, nbytes, sync)
        device_memory = int(props.total_memory)
        gpu_count = torch.cuda.device_count()
        threads = None
        torch.cuda.empty_cache()
        if spec is None:
            notes.append(f"{props.name}: no datasheet row; peaks are measured only")
    else:
        def sync() -> None:
            return None

        threads = torch.get_num_threads()
        shares = {"fp32": 0.4, "bf16": 0.2, "fp16": 0.2, "copy": 0.2}
        for key in ("fp32", "bf16", "fp16"):
            say(f"{key} matmul")
            f, n, slow = _bench_matmul(torch, dev, _torch_dtype(torch, key),
                                       seconds * shares[key], 128, 2048, sync,
                                       reference=flops.get("fp32"))
            flops[key], sizes[key] = f, n
            if slow:
                notes.append(f"{key} matmul is slow on this CPU ({_fmt_si(f, 'FLOP/s')}, "
                             f"{f / flops['fp32']:.1%} of fp32; no native {key} kernels): "
                             "train in fp32 here")
        say("memory bandwidth")
        nbytes = int(min(256 * 1024**2, max(ram, GiB) / 16))
        bandwidth = _bench_copy(torch, dev, seconds * shares["copy"], nbytes, sync)
        device_memory = ram
        gpu_count = 0
        if gpus:
            notes.append("measured on the CPU although GPUs are present")

    elapsed = time.perf_counter() - t_start
    return HardwareProfile(
        cpu_model=cpu_model,
        cpu_cores=cpu_cores,
        memory_bytes=ram,
        gpus=gpus,
        device=dev.type,
        matmul_flops=flops,
        bandwidth_bytes_per_s=bandwidth,
        measured=True,
        datasheet=dict(spec.peak_flops) if spec else None,
        device_memory_bytes=int(device_memory),
        gpu_count=gpu_count,
        created_at=_now(),
        torch_version=torch.__version__,
        python_version=_python_version(),
        notes=notes,
        hostname=_hostname(),
        spec_key=spec.key if spec else None,
        datasheet_bandwidth_bytes_per_s=spec.bandwidth_bytes_per_s if spec else None,
        matmul_sizes=sizes,
        threads=threads,
        measure_seconds=round(elapsed, 3),
    )


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
    spec = _match_gpu(props.name)
    return GpuInfo(index=i, name=props.name, memory_bytes=int(props.total_memory),
                   spec_key=spec.key if spec else None)


def _torch_dtype(torch: Any, key: str) -> Any:
    return {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
            "fp16": torch.float16}[key]


class _tf32:
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


# ---------------------------------------------------------------------------------------------
# Cache


def cache_path() -> Path:
    """$BUDGETLM_CACHE_DIR/profile.json, else $XDG_CACHE_HOME/budgetlm/profile.json, else
    ~/.cache/budgetlm/profile.json."""
    explicit = os.environ.get("BUDGETLM_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser() / "profile.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "budgetlm" / "profile.json"


def _torch_version_no_import() -> str | None:
    """torch's installed version from its package metadata (the same string whether or not
    torch is imported, so the cache key is stable); torch.__version__ only without metadata."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        torch = sys.modules.get("torch")
        return str(getattr(torch, "__version__", "")) or None


def _cache_key() -> str:
    """hostname | CPU model | GPU names | torch version: a change in any re-measures."""
    cpu_model, _, _ = detect_cpu()
    gpu_names = ",".join(g.name for g in detect_gpus()) or "no-gpu"
    return "|".join(
        [_hostname(), cpu_model, gpu_names, f"torch {_torch_version_no_import()}"]
    )


def _read_cache_file(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    profiles = data.get("profiles")
    return profiles if isinstance(profiles, dict) else {}


def _cached(key: str) -> HardwareProfile | None:
    entry = _read_cache_file(cache_path()).get(key)
    if not isinstance(entry, dict):
        return None
    try:
        return HardwareProfile.from_dict(entry)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def cached_profile() -> HardwareProfile | None:
    """This machine's cached profile, or None if there is none or it is stale.
    Never measures and never imports torch."""
    return _cached(_cache_key())


def _save(profile: HardwareProfile, key: str) -> Path:
    """Add `profile` under `key` to the cache file: write a temp file, then rename it."""
    import json
    import tempfile

    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    profiles = _read_cache_file(path)
    profiles[key] = profile.to_dict()
    text = json.dumps({"version": CACHE_VERSION, "profiles": profiles}, indent=2)
    fd, tmp = tempfile.mkstemp(prefix=".profile-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_profile(
    refresh: bool = False,
    seconds: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> HardwareProfile:
    """This machine's profile: from the cache unless `refresh` or stale; else `measure()` it
    (on CUDA if available) and save it. A cache that cannot be written is noted, not fatal."""
    key = _cache_key()
    if not refresh:
        cached = _cached(key)
        if cached is not None:
            return cached
    profile = measure(seconds=seconds if seconds is not None else DEFAULT_SECONDS,
                      progress=progress)
    try:
        _save(profile, key)
    except OSError as exc:
        profile.notes.append(f"profile not cached ({cache_path()}: {exc.strerror or exc})")
    return profile


# ---------------------------------------------------------------------------------------------
# Reference (datasheet) profiles


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
        created_at=_now(),
        torch_version=None,
        python_version=_python_version(),
        notes=[f"unmeasured: datasheet peak ({spec.name}; {spec.source})"],
        hostname=_hostname(),
        spec_key=spec.key,
        datasheet_bandwidth_bytes_per_s=spec.bandwidth_bytes_per_s,
    )
