"""Opt-in GPU checks: collected everywhere, run only with ``HEADCAST_GPU_TESTS=1`` on CUDA.

Every test in this folder is marked ``gpu`` and skipped unless the variable is set and a
CUDA device is present, so CI (CPU only) reports them as skipped. Timing is never asserted.
"""

from __future__ import annotations

import os

import pytest
import torch

GPU_TESTS_ENV = "HEADCAST_GPU_TESTS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    enabled = os.environ.get(GPU_TESTS_ENV) == "1"
    reason = (
        f"GPU checks are opt-in: set {GPU_TESTS_ENV}=1 on a CUDA machine"
        if not enabled
        else "no CUDA device"
    )
    skip = not enabled or not torch.cuda.is_available()
    for item in items:
        if "tests/gpu/" not in str(item.path).replace(os.sep, "/"):
            continue
        item.add_marker(pytest.mark.gpu)
        if skip:
            item.add_marker(pytest.mark.skip(reason=reason))
