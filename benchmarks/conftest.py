"""Benchmark fixtures. With --benchmark-disable (the CI smoke run) each benchmark runs its first
shape once, so `pytest benchmarks/` doubles as a smoke test on a CPU-only machine."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The law benchmark trains on CIFAR-10 from ../shared/datasets unless the user points elsewhere.
_shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")
if "SHALLOWKERN_DATA" not in os.environ and os.path.isdir(_shared):
    os.environ["SHALLOWKERN_DATA"] = os.path.abspath(_shared)

from benchmarks.common import device  # noqa: E402


@pytest.fixture
def smoke(request) -> bool:
    """True in the CI smoke run (--benchmark-disable): run one shape per case, once."""
    return bool(request.config.getoption("benchmark_disable", default=False))


@pytest.fixture(scope="session")
def dev() -> torch.device:
    return device()
