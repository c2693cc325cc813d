"""What this machine can do: datasheet peaks, detected devices, measured throughput, and a cache.

Three sources of FLOP/s, kept apart so a plan can say which one it used:

* `GPU_SPECS` (`datasheet`): vendor datasheet rows, each with its citation.
  `reference_profile("h100")` plans for a GPU you do not have from these.
* `measure()` (`bench`): micro-benchmarks on this machine, matmuls per dtype and a tensor copy.
* `load_profile()` (`cache`): `measure()` once, then a JSON cache keyed by hostname, CPU model,
  GPU names and torch version, so `budgetlm plan` answers without importing torch.

`fabric()` (`interconnect`): the link inside a node and the network between nodes for a GPU,
GPU count, node count and network name, each bandwidth with its source.

A CPU has no datasheet row: its numbers are always measured (DESIGN §6).

Nothing heavy is imported at import time: torch is imported inside `measure()`, pynvml inside
`detect_gpus()`.
"""

from budgetlm.hardware.bench import DEFAULT_SECONDS, measure
from budgetlm.hardware.cache import (
    CACHE_VERSION,
    cache_key,
    cache_path,
    cached_profile,
    load_profile,
    save_profile,
)
from budgetlm.hardware.datasheet import (
    DTYPE_KEYS,
    FP8_KEY,
    GPU_SPECS,
    PEAK_KEYS,
    GpuSpec,
    lookup_gpu,
    match_gpu,
)
from budgetlm.hardware.detect import GpuInfo, detect_cpu, detect_gpus
from budgetlm.hardware.interconnect import (
    LINKS,
    NETWORKS,
    Fabric,
    Link,
    Network,
    fabric,
    lookup_network,
)
from budgetlm.hardware.profile import HardwareProfile, reference_profile

__all__ = [
    "CACHE_VERSION",
    "DEFAULT_SECONDS",
    "DTYPE_KEYS",
    "FP8_KEY",
    "Fabric",
    "GPU_SPECS",
    "GpuInfo",
    "GpuSpec",
    "HardwareProfile",
    "LINKS",
    "Link",
    "NETWORKS",
    "Network",
    "PEAK_KEYS",
    "cache_key",
    "cache_path",
    "cached_profile",
    "detect_cpu",
    "detect_gpus",
    "fabric",
    "load_profile",
    "lookup_gpu",
    "lookup_network",
    "match_gpu",
    "measure",
    "reference_profile",
    "save_profile",
]
