"""A stand-in for pytest-benchmark's ``benchmark`` fixture where the plugin is not installed.

The GPU machine has pytest but not pytest-benchmark (and no network to install it). The
harness (benchmarks/common.py) only uses ``pedantic``, ``extra_info``, ``group``, ``name``,
``disabled`` and ``stats.stats.{median,min,mean,stddev}``; this class provides exactly those
with pytest-benchmark's semantics (a round times ``iterations`` back-to-back calls with the
timer of the ``benchmark`` marker, and reports the per-call time), so the rows the harness
writes (SHALLOWKERN_BENCH_ROWS) are the same either way. ``--benchmark-json`` and
``--benchmark-compare`` need the real plugin.
"""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace


class MiniBenchmark:
    disabled = False

    def __init__(self, node):
        self.name = node.name
        self.group = None
        self.extra_info: dict = {}
        self.stats = None
        marker = node.get_closest_marker("benchmark")
        self._timer = (marker.kwargs.get("timer") if marker else None) or time.perf_counter

    def pedantic(self, target, args=(), kwargs=None, setup=None, rounds=1, warmup_rounds=0,
                 iterations=1):
        kwargs = kwargs or {}
        if iterations < 1 or rounds < 1 or warmup_rounds < 0:
            raise ValueError("pedantic: need iterations >= 1, rounds >= 1, warmup_rounds >= 0")
        for _ in range(warmup_rounds):
            for _ in range(iterations):
                target(*args, **kwargs)
        times = []
        for _ in range(rounds):
            t0 = self._timer()
            for _ in range(iterations):
                target(*args, **kwargs)
            times.append((self._timer() - t0) / iterations)
        self.stats = SimpleNamespace(stats=SimpleNamespace(
            median=statistics.median(times), min=min(times), max=max(times),
            mean=statistics.fmean(times),
            stddev=statistics.stdev(times) if len(times) > 1 else 0.0, rounds=rounds))
        return target(*args, **kwargs)

    def __call__(self, target, *args, **kwargs):
        return self.pedantic(target, args, kwargs, rounds=5, warmup_rounds=1)
