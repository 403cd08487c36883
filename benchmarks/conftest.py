"""Benchmark fixtures and hooks. With --benchmark-disable (the CI smoke run) each benchmark file
runs its first case once, so `pytest benchmarks/` doubles as a smoke test on a CPU-only machine.
At the end of a session every benchmark's JSON entry gains ``extra_info["speedup_vs"]`` (see
benchmarks/common.py)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The law benchmark trains on CIFAR-10 from ../shared/datasets unless the user points elsewhere.
_shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")
if "SHALLOWKERN_DATA" not in os.environ and os.path.isdir(_shared):
    os.environ["SHALLOWKERN_DATA"] = os.path.abspath(_shared)

from benchmarks.common import add_speedups, device  # noqa: E402

try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # e.g. the GPU machine: a stand-in fixture, rows still written
    from benchmarks._minibench import MiniBenchmark

    def pytest_configure(config):
        config.addinivalue_line("markers", "benchmark(**kwargs): pytest-benchmark options")

    @pytest.fixture
    def benchmark(request):
        return MiniBenchmark(request.node)
else:
    def pytest_benchmark_update_json(config, benchmarks, output_json):
        add_speedups(output_json.get("benchmarks", []))


@pytest.fixture
def smoke(request) -> bool:
    """True in the CI smoke run (--benchmark-disable): run one shape per case, once."""
    return bool(request.config.getoption("benchmark_disable", default=False))


@pytest.fixture(scope="session")
def dev() -> torch.device:
    return device()


def pytest_sessionfinish(session, exitstatus):
    """SHALLOWKERN_BENCH_DUMP_CONFIGS=path: save the Triton configs autotuning chose (the fixed
    table a reproducible run reads through SHALLOWKERN_TRITON_FIXED_CONFIGS)."""
    path = os.environ.get("SHALLOWKERN_BENCH_DUMP_CONFIGS")
    if path and "shallowkern.triton._utils" in __import__("sys").modules:
        from shallowkern.triton._utils import dump_config_table

        dump_config_table(path)
