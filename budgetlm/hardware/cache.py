"""This machine's profile, measured once and then read from a JSON cache.

`load_profile()` runs `measure()` the first time and keeps the result in `cache_path()`, keyed by
hostname, CPU model, GPU names and torch version (`cache_key()`), so that `budgetlm plan`
answers later without importing torch. `cached_profile()` only reads: it never measures.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from budgetlm.hardware.bench import DEFAULT_SECONDS, measure
from budgetlm.hardware.detect import detect_cpu, detect_gpus, hostname, installed_torch_version
from budgetlm.hardware.profile import HardwareProfile
from budgetlm.units import atomic_write_text, cache_dir

CACHE_VERSION = 1


def cache_path() -> Path:
    """The profile cache file: profile.json in `budgetlm.units.cache_dir()`."""
    return cache_dir() / "profile.json"


def cache_key() -> str:
    """hostname | CPU model | GPU names | torch version: a change in any re-measures."""
    cpu_model, _, _ = detect_cpu()
    gpu_names = ",".join(g.name for g in detect_gpus()) or "no-gpu"
    return "|".join([hostname(), cpu_model, gpu_names, f"torch {installed_torch_version()}"])


_REPORTED: set[str] = set()


def report_corrupt_cache(path: Path, why: str) -> None:
    """Say once per process, on stderr, that the cache file `path` is unusable and why."""
    if str(path) in _REPORTED:
        return
    _REPORTED.add(str(path))
    sys.stderr.write(
        f"note: profile cache {path} is unusable ({why}); ignoring it, the profile is measured "
        "again\n"
    )
    sys.stderr.flush()


def _read_cache_file(path: Path, report: bool = True) -> dict[str, Any]:
    """The cached profiles by key; {} for a missing, corrupt, unreadable or older-version file
    (a corrupt or unreadable one is reported once when `report`)."""
    why = None
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        data, why = None, f"cannot read it: {exc.strerror or exc}"
    except ValueError as exc:
        data, why = None, f"not valid JSON: {str(exc).splitlines()[0]}"
    if why is None and not isinstance(data, dict):
        why = "not a JSON object"
    if why is None and data.get("version") != CACHE_VERSION:
        return {}  # written by another version of budgetlm: stale, not corrupt
    profiles = data.get("profiles") if isinstance(data, dict) else None
    if why is None and not isinstance(profiles, dict):
        why = "no 'profiles' mapping"
    if why is not None:
        if report:
            report_corrupt_cache(path, why)
        return {}
    return profiles  # type: ignore[return-value]


def _checked(profile: HardwareProfile) -> HardwareProfile:
    """`profile` when its numbers are numbers (counts whole, rates finite and positive)."""
    for name in ("cpu_cores", "memory_bytes", "device_memory_bytes", "gpu_count"):
        v = getattr(profile, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} is {v!r}")
    for dtype, rate in profile.matmul_flops.items():
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"matmul_flops.{dtype} is {rate!r}")
    if not isinstance(profile.device, str) or not isinstance(profile.measured, bool):
        raise ValueError("device or measured has the wrong type")
    return profile


def _cached(key: str) -> HardwareProfile | None:
    path = cache_path()
    entry = _read_cache_file(path).get(key)
    if entry is None:
        return None
    try:
        if not isinstance(entry, dict):
            raise TypeError("not a JSON object")
        return _checked(HardwareProfile.from_dict(entry))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        report_corrupt_cache(path, f"the entry for this machine is invalid: {exc}")
        return None


def cached_profile() -> HardwareProfile | None:
    """This machine's cached profile, or None if there is none or it is stale.
    Never measures and never imports torch."""
    return _cached(cache_key())


def save_profile(profile: HardwareProfile, key: str) -> Path:
    """Add `profile` under `key` to the cache file (written whole); return the file's path."""
    path = cache_path()
    profiles = _read_cache_file(path, report=False)
    profiles[key] = profile.to_dict()
    text = json.dumps({"version": CACHE_VERSION, "profiles": profiles}, indent=2)
    return atomic_write_text(path, text)


def load_profile(
    refresh: bool = False,
    seconds: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> HardwareProfile:
    """This machine's profile: from the cache unless `refresh` or stale; else `measure()` it
    (on CUDA if available) and save it. A cache that cannot be written is noted, not fatal."""
    key = cache_key()
    if not refresh:
        cached = _cached(key)
        if cached is not None:
            return cached
    profile = measure(seconds=seconds if seconds is not None else DEFAULT_SECONDS,
                      progress=progress)
    try:
        save_profile(profile, key)
    except OSError as exc:
        profile.notes.append(f"profile not cached ({cache_path()}: {exc.strerror or exc})")
    return profile
