"""Wall-clock latency of a forward (or forward + backward) call, median over repeats.

CUDA: each call is timed with CUDA events (device time, no host sync inside the loop) after the
warm-up calls. Elsewhere: ``torch.utils.benchmark.Timer.blocked_autorange``, which runs blocks of
calls long enough that the timer's own overhead is negligible (and synchronizes any accelerator);
``repeats`` sets its measuring time to about ``repeats`` calls, and the median is over blocks.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch.utils import benchmark


@dataclass
class LatencyStats:
    """Seconds per call. ``samples``: timed samples (calls on CUDA, blocks elsewhere);
    ``calls``: timed calls in all; ``method``: how it was timed."""

    median_s: float
    min_s: float
    max_s: float
    samples: int
    calls: int
    warmup: int
    method: str
    backward: bool

    def to_dict(self) -> dict:
        return asdict(self)


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int,
            backward: bool) -> LatencyStats:
    """Time ``fn`` (one model call, including its backward if ``backward``)."""
    warm = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return LatencyStats(statistics.median(times), min(times), max(times), len(times),
                            len(times), warmup, "CUDA events, median of calls", backward)
    # One call's cost sizes blocked_autorange's run: the fastest warm-up call, as the first calls
    # pay one-time costs and a shared CPU adds noise.
    if not warm:
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
    per_call = min(warm)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min(max(repeats * per_call, 0.01), 2.0))
    return LatencyStats(m.median, min(m.times), max(m.times), len(m.times),
                        m.number_per_run * len(m.times), warmup,
                        "torch.utils.benchmark.Timer.blocked_autorange, median of blocks",
                        backward)
