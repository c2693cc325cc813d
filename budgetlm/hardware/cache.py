"""This machine's profile, measured once and then read from a JSON cache.

`load_profile()` runs `measure()` the first time and keeps the result in `cache_path()`, keyed by
hostname, CPU model, GPU names and torch version (`cache_key()`), so that `budgetlm plan`
answers later without importing torch. `cached_profile()` only reads: it never measures.
"""

from __future__ import annotations

import json
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


def _read_cache_file(path: Path) -> dict[str, Any]:
    """The cached profiles by key; {} for a missing, unreadable or older-version file."""
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
    return _cached(cache_key())


def save_profile(profile: HardwareProfile, key: str) -> Path:
    """Add `profile` under `key` to the cache file (written whole); return the file's path."""
    path = cache_path()
    profiles = _read_cache_file(path)
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
