"""GPU datasheet rows and the matching of GPU names to them.

`GPU_SPECS` holds vendor datasheet rows (dense tensor-core peaks; sparsity figures halved), each
with its citation. `match_gpu` finds the row for a driver-reported or user-typed name (or None);
`lookup_gpu` does the same for a name a user asked for, with a one-line error naming close
matches when there is none.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from budgetlm.errors import UserError
from budgetlm.units import GiB

# Matmul dtypes a profile knows, in display order.
DTYPE_KEYS = ("fp32", "tf32", "bf16", "fp16")
# The dense FP8 tensor rate, in `GpuSpec.peak_flops` of the rows whose source gives it. Not one of
# DTYPE_KEYS: nothing measures it and profiles do not show it; the planner prices it from here.
FP8_KEY = "fp8"
PEAK_KEYS = (*DTYPE_KEYS, FP8_KEY)


@dataclass(frozen=True)
class GpuSpec:
    """One datasheet row. Peaks are dense (no 2:4 sparsity) tensor FLOP/s, per GPU.

    `fp32` is the non-tensor (CUDA core) rate: what a matmul gets with TF32 disabled, PyTorch's
    default for matmuls. `tf32` is the TF32 tensor-core rate (Ampere and later). `bf16`/`fp16`
    are with fp32 accumulation, what PyTorch uses (GeForce cards run fp16 accumulation at 2x).
    `fp8` (FP8_KEY, optional): the dense FP8 tensor-core rate where the source gives it.
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


def _tensor_peaks(fp32: float, tf32: float, half: float,
                  fp8: float | None = None) -> dict[str, float]:
    """Peaks of a GPU with TF32 tensor cores; bf16 and fp16 (fp32 accumulate) share one rate;
    fp8 when the source gives it."""
    peaks = {"fp32": fp32, "tf32": tf32, "bf16": half, "fp16": half}
    if fp8 is not None:
        peaks[FP8_KEY] = fp8
    return peaks


_H100_DS = "NVIDIA H100 Tensor Core GPU datasheet (2023, nvidia.com/h100)"
_A100_DS = (
    "NVIDIA A100 Tensor Core GPU datasheet (2021, nvidia.com/a100): "
    "FP32 19.5, TF32 156, BF16 312, FP16 312 TFLOPS dense"
)
_V100_SXM2_DS = (
    "NVIDIA Tesla V100 GPU datasheet (2020, nvidia.com/v100), "
    "SXM2 column: FP32 15.7, Tensor (FP16) 125 TFLOPS, 900 GB/s"
)
_ADA_WP = "NVIDIA Ada Lovelace GPU architecture whitepaper v2.1, Appendix A, Table 2"
_GA102_WP = "NVIDIA Ampere GA102 GPU architecture whitepaper v2, Appendix A, Table 9"
_BLACKWELL_SPECS = (
    "NVIDIA HGX B200 / GB200 NVL72 specifications, 'Individual Blackwell GPU Specifications' "
    "(2024-25, nvidia.com/hgx, nvidia.com/gb200-nvl72)"
)

# One chip, two memory sizes: the same peaks.
_A100_PEAKS = _tensor_peaks(19.5e12, 156e12, 312e12)
_V100_PEAKS = {"fp32": 15.7e12, "fp16": 125e12}

_SPECS: tuple[GpuSpec, ...] = (
    _spec(
        "h100-sxm", "NVIDIA H100 SXM5 80GB",
        ("h100", "h100 sxm", "h100 sxm5", "h100 80gb hbm3", "nvidia h100 80gb hbm3"),
        80, _tensor_peaks(66.9e12, 494.5e12, 989e12, 1979e12), 3350,
        f"{_H100_DS}, SXM column: TF32 989 / BF16 1979 / FP16 1979 / FP8 3958 TFLOPS with "
        "sparsity (halved for dense), 3.35 TB/s; FP32 66.9 TFLOPS from the NVIDIA H100 "
        "whitepaper",
    ),
    _spec(
        "h100-pcie", "NVIDIA H100 PCIe 80GB",
        ("h100 pcie", "nvidia h100 pcie", "h100 80gb pcie"),
        80, _tensor_peaks(51.2e12, 378e12, 756e12, 1513e12), 2000,
        f"{_H100_DS}, PCIe column: FP32 51 TFLOPS, TF32 756 / BF16 1513 / FP16 1513 / FP8 3026 "
        "TFLOPS with sparsity (halved for dense), 2.0 TB/s",
    ),
    _spec(
        "h100-nvl", "NVIDIA H100 NVL 94GB",
        ("h100 nvl", "nvidia h100 nvl"),
        94, _tensor_peaks(60e12, 417.5e12, 835.5e12), 3900,
        f"{_H100_DS}, NVL column (per GPU): FP32 60 TFLOPS, TF32 835 / BF16 1671 / FP16 1671 "
        "TFLOPS with sparsity (halved for dense), 3.9 TB/s",
    ),
    _spec(
        "h200", "NVIDIA H200 SXM 141GB",
        ("h200", "h200 sxm", "nvidia h200", "h200 141gb"),
        141, _tensor_peaks(67e12, 494.5e12, 989e12, 1979e12), 4800,
        "NVIDIA H200 Tensor Core GPU datasheet (2024, nvidia.com/h200), SXM column: FP32 67, "
        "TF32 989 / BF16 1979 / FP16 1979 / FP8 3958 TFLOPS with sparsity (halved for dense), "
        "4.8 TB/s",
    ),
    _spec(
        "a100-80gb", "NVIDIA A100 80GB",
        ("a100", "a100 80gb", "a100 sxm4 80gb", "a100 80gb pcie", "a100 sxm 80gb"),
        80, _A100_PEAKS, 2039,
        f"{_A100_DS}; 2,039 GB/s (SXM; PCIe 1,935 GB/s)",
    ),
    _spec(
        "a100-40gb", "NVIDIA A100 40GB",
        ("a100 40gb", "a100 sxm4 40gb", "a100 pcie 40gb", "a100 sxm 40gb"),
        40, _A100_PEAKS, 1555,
        f"{_A100_DS}; 1,555 GB/s",
    ),
    _spec(
        "v100", "NVIDIA V100 SXM2 32GB",
        ("v100", "tesla v100", "v100 sxm2", "v100 32gb", "v100 sxm2 32gb"),
        32, _V100_PEAKS, 900,
        f"{_V100_SXM2_DS}; no bf16/tf32 (Volta)",
    ),
    _spec(
        "v100-16gb", "NVIDIA V100 SXM2 16GB",
        ("v100 16gb", "v100 sxm2 16gb"),
        16, _V100_PEAKS, 900,
        _V100_SXM2_DS,
    ),
    _spec(
        "l4", "NVIDIA L4 24GB",
        ("l4", "nvidia l4"),
        24, _tensor_peaks(30.3e12, 60e12, 121e12, 242.5e12), 300,
        "NVIDIA L4 Tensor Core GPU datasheet (2023): FP32 30.3, TF32 120 / BF16 242 / FP16 242 "
        "/ FP8 485 TFLOPS with sparsity (halved for dense), 300 GB/s",
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
        24, _tensor_peaks(82.6e12, 82.6e12, 165.2e12), 1008,
        f"{_ADA_WP}: FP32 82.6, TF32 82.6, BF16/FP16 with FP32 accumulate 165.2 TFLOPS dense "
        "(FP16 accumulate 330.3), 1,008 GB/s",
    ),
    _spec(
        "rtx-3090", "NVIDIA GeForce RTX 3090 24GB",
        ("rtx 3090", "3090", "geforce rtx 3090"),
        24, _tensor_peaks(35.6e12, 35.6e12, 71e12), 936,
        f"{_GA102_WP}: FP32 35.6, TF32 35.6, BF16/FP16 with FP32 accumulate 71 TFLOPS dense "
        "(FP16 accumulate 142), 936 GB/s",
    ),
    _spec(
        "a10g", "NVIDIA A10G 24GB (AWS G5)",
        ("a10g", "nvidia a10g"),
        24, _tensor_peaks(35e12, 35e12, 70e12), 600,
        "No public NVIDIA datasheet (AWS-only part); AWS/NVIDIA G5 figures as compiled in "
        "Baseten, 'NVIDIA A10 vs A10G for ML model inference' (2023): FP32 35, TF32 35, "
        "BF16/FP16 70 TFLOPS dense, 600 GB/s",
    ),
    _spec(
        "a10", "NVIDIA A10 24GB",
        ("a10", "nvidia a10"),
        24, _tensor_peaks(31.2e12, 62.5e12, 125e12), 600,
        "NVIDIA A10 Tensor Core GPU datasheet (2021): FP32 31.2, TF32 62.5, BF16 125, FP16 125 "
        "TFLOPS dense, 600 GB/s",
    ),
    _spec(
        "l40s", "NVIDIA L40S 48GB",
        ("l40s", "nvidia l40s"),
        48, _tensor_peaks(91.6e12, 183e12, 362.05e12, 733e12), 864,
        "NVIDIA L40S GPU datasheet (2023): FP32 91.6, TF32 183, BF16 362.05, FP16 362.05, "
        "FP8 733 TFLOPS dense (twice with sparsity), 864 GB/s",
    ),
    _spec(
        "l40", "NVIDIA L40 48GB",
        ("l40", "nvidia l40"),
        48, _tensor_peaks(90.5e12, 90.5e12, 181.05e12), 864,
        "NVIDIA L40 GPU datasheet (2022): FP32 90.5, TF32 90.5, BF16 181.05, FP16 181.05 "
        "TFLOPS dense (twice with sparsity), 864 GB/s",
    ),
    _spec(
        "b200", "NVIDIA B200 (HGX B200) 180GB",
        ("b200", "hgx b200", "dgx b200", "nvidia b200"),
        180, _tensor_peaks(75e12, 1.1e15, 2.25e15, 4.5e15), 7700,
        f"{_BLACKWELL_SPECS}, HGX B200 column: FP32 75 TFLOPS, TF32 2.2 / FP16 and BF16 4.5 / "
        "FP8 9 PFLOPS with sparsity (halved for dense), 180 GB HBM3E, 7.7 TB/s",
    ),
    _spec(
        "gb200", "NVIDIA GB200 NVL72 (per GPU) 186GB",
        ("gb200", "gb200 nvl72", "nvidia gb200"),
        186, _tensor_peaks(80e12, 1.25e15, 2.5e15, 5e15), 8000,
        f"{_BLACKWELL_SPECS}, GB200 NVL72 column: FP32 80 TFLOPS, TF32 2.5 / FP16 and BF16 5 / "
        "FP8 10 PFLOPS with sparsity (halved for dense), 186 GB HBM3E, 8 TB/s",
    ),
    _spec(
        "h20", "NVIDIA H20 96GB",
        ("h20", "nvidia h20", "hgx h20"),
        96, _tensor_peaks(44e12, 74e12, 148e12), 4000,
        "No public NVIDIA datasheet (China-market part); NVIDIA's partner specification as "
        "reported in the press (Wccftech, Nov 2023; willitrunai.com H20 page): FP32 44, TF32 74, "
        "FP16/BF16 148 TFLOPS dense, 96 GB HBM3, 4.0 TB/s. No FP8 figure found (only INT8 296 "
        "TOPS), so none is given",
    ),
    _spec(
        "mi300x", "AMD Instinct MI300X 192GB",
        ("mi300x", "amd instinct mi300x", "instinct mi300x", "mi300x oam"),
        192, _tensor_peaks(163.4e12, 653.7e12, 1307.4e12, 2614.9e12), 5300,
        "AMD Instinct MI300X product page (2023, amd.com), footnote MI300-17: FP32 163.4, TF32 "
        "653.7, FP16 1307.4, BF16 1307.4, FP8 2614.9 TFLOPS dense (twice with structured "
        "sparsity); 192 GB HBM3, 5.3 TB/s (MI300-05A)",
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
    "b200": ("b200",),
    "gb200": ("gb200",),
    "h20": ("h20",),
    "mi300x": ("mi300x",),
}
_FORM_OF = {"h100-sxm": "sxm", "h100-pcie": "pcie", "h100-nvl": "nvl"}
_FORM_WORDS = {"sxm": "sxm", "sxm4": "sxm", "sxm5": "sxm", "hbm3": "sxm", "pcie": "pcie",
               "nvl": "nvl"}
_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "gpu", "tensor", "core", "amd", "instinct"}


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


def match_gpu(name: str) -> GpuSpec | None:
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
    spec = match_gpu(name)
    if spec is not None:
        return spec
    vocabulary = {}
    for s in _SPECS:
        for alias in (s.key, *s.aliases):
            vocabulary.setdefault(alias.lower(), s.key)
    close = difflib.get_close_matches(name.strip().lower(), list(vocabulary), n=3, cutoff=0.5)
    keys = list(dict.fromkeys(vocabulary[c] for c in close))
    hint = f"did you mean {' or '.join(keys)}? " if keys else ""
    raise UserError(f"--gpu {name!r}: unknown GPU; {hint}known: {', '.join(GPU_SPECS)}")
