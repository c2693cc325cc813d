"""What one trial may use of this machine: CPU threads, its GPU, its share of device memory."""

from __future__ import annotations

import math
import os
from typing import Any

from budgetlm.tune.schema import StudySpec


def trial_threads(spec: StudySpec, cfg: Any, profile: Any, workers: int) -> int | None:
    """Torch threads of a trial: the study's `threads`, else the config's train.threads,
    else (on a CPU, OMP_NUM_THREADS unset) this machine's cores shared by the workers."""
    if spec.threads is not None:
        return spec.threads
    if cfg.train.threads is not None:
        return int(cfg.train.threads)
    if "OMP_NUM_THREADS" in os.environ or profile.device != "cpu":
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1
    )
    return max(1, cores // workers)


def trial_env(worker: int, threads: int | None, profile: Any) -> dict[str, str]:
    """The environment of worker `worker`'s trial: its thread count and, with several GPUs,
    one GPU per worker in turn."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    gpus = profile.gpu_count if profile.device == "cuda" else 0
    if gpus > 1 and "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = str(worker % gpus)
    return env


def trials_per_device(profile: Any, workers: int) -> int:
    """How many trials share one device's memory."""
    if profile.device == "cuda":
        return max(1, math.ceil(workers / max(1, profile.gpu_count)))
    return workers
