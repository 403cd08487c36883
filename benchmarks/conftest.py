"""Benchmark fixtures. With --benchmark-disable (the CI smoke run) each benchmark runs its first
shape once, so `pytest benchmarks/` doubles as a smoke test on a CPU-only machine."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from benchmarks.common import device  # noqa: E402


@pytest.fixture
def smoke(request) -> bool:
    """True in the CI smoke run (--benchmark-disable): run one shape per case, once."""
    return bool(request.config.getoption("benchmark_disable", default=False))


@pytest.fixture(scope="session")
def dev() -> torch.device:
    return device()
