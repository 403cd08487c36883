"""Benchmark helpers: timing and device facts recorded with every result.

GPU timings use triton.testing.do_bench (median, synchronized, L2 flushed between runs); CPU
timings use torch.utils.benchmark (median of blocked_autorange).
"""

from __future__ import annotations

import platform

import torch
import torch.utils.benchmark as tbench

import shallowkern


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def median_seconds(fn, dev: torch.device) -> float:
    """Median wall time of ``fn()`` on ``dev`` (seconds), warm-up included."""
    if dev.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3
    fn()  # warm-up (and first-call compilation)
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=0.3).median


def device_info(dev: torch.device) -> dict:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return dict(device=name, threads=torch.get_num_threads(), torch=torch.__version__,
                triton=_version("triton"), shallowkern=shallowkern.__version__,
                native_ext=shallowkern._ext.available())


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except ImportError:
        return None


