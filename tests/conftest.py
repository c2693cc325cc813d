"""Shared test setup: a private cache directory so tests never touch the user's cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tiny models on a shared 2-core machine run fastest (and steadiest) on one thread.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("budgetlm-cache")
    old = os.environ.get("BUDGETLM_CACHE_DIR")
    os.environ["BUDGETLM_CACHE_DIR"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("BUDGETLM_CACHE_DIR", None)
    else:
        os.environ["BUDGETLM_CACHE_DIR"] = old
