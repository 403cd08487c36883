"""Benchmark helpers: timing and device facts recorded with every result.

GPU timings use triton.testing.do_bench (median, synchronized, L2 flushed between runs); CPU
timings use shallowkern.profile's timer (torch.utils.benchmark, median of blocked_autorange).
"""

from __future__ import annotations

import platform
import time

import torch

import shallowkern
from shallowkern.profile import latency, roofline


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def once_seconds(fn, dev: torch.device) -> float:
    """One call's wall time: the smoke run checks that every provider runs, not how fast."""
    t0 = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0


def median_seconds(fn, dev: torch.device) -> float:
    """Median wall time of ``fn()`` on ``dev`` (seconds), warm-up included."""
    if dev.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3
    return latency.measure(fn, dev, warmup=2, repeats=20, backward=False).median_s


def device_info(dev: torch.device) -> dict:
    return dict(device=roofline.device_name(dev), host=platform.node(), threads=torch.get_num_threads(), torch=torch.__version__,
                triton=_version("triton"), shallowkern=shallowkern.__version__,
                native_ext=shallowkern._ext.available())


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except ImportError:
        return None




def roofline_for(dev: torch.device, dtype: torch.dtype, tf32: bool) -> "roofline.Roofline":
    """Peaks for the roofline floor. fp32 with TF32 runs on tensor cores at half the bf16 dense
    rate on Hopper (the datasheet ratio, applied to the bf16 rate measured here)."""
    roof, note = roofline.for_device(dev, dtype)
    if roof is None:
        raise RuntimeError(note)
    if tf32 and dev.type == "cuda":
        bf16, _ = roofline.for_device(dev, torch.bfloat16)
        return roofline.Roofline(bf16.flops_per_s / 2, roof.bytes_per_s, roof.name, "tf32",
                                 "bf16 rate / 2 (TF32 dense rate, datasheet ratio)")
    return roof
