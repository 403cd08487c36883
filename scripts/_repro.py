"""Pieces the reproduction and measuring scripts (scripts/repro_*.py, measure_step_times.py)
share: a resumable per-run JSON record store (one file per run, written atomically, so a killed
script loses only the run in progress), accuracy over a split, the machine/threads/load fields
every record carries, and a warm-up-then-time loop."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def load_record(path: str) -> dict[str, Any] | None:
    """The record of a finished run, or None if it has not run yet."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def save_record(path: str, rec: dict[str, Any]) -> dict[str, Any]:
    """Write ``rec`` to ``path`` atomically (a temporary file, then a rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(rec, f, indent=1)
    os.replace(path + ".tmp", path)
    return rec


def read_records(out_dir: str) -> list[dict[str, Any]]:
    """Every finished run's record in ``out_dir``, in file-name order (other JSON files there,
    e.g. a benchmark's output, are skipped)."""
    recs = []
    for fn in sorted(os.listdir(out_dir)):
        if fn.endswith(".json"):
            with open(os.path.join(out_dir, fn)) as f:
                rec = json.load(f)
            if isinstance(rec, dict) and "seed" in rec:
                recs.append(rec)
    return recs


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy in % of ``model`` on ``(x, y)``, in eval mode, batch by batch."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    model.train()
    return 100.0 * correct / max(x.shape[0], 1)


def machine_fields() -> dict[str, Any]:
    """Where and how a run ran: machine, torch threads and version, 1-minute load average."""
    return {"threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_avg_1min": os.getloadavg()[0],
            "machine": f"{platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} cpus (shared)"}


def mean_sd(vals: list[float]) -> str:
    """``mean ± sd`` with two decimals (sd nan for a single value)."""
    sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
    return f"{statistics.mean(vals):.2f} ± {sd:.2f}"


def call_times(fn: Callable[[], object], reps: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn`` after ``warmup`` untimed ones (callers take the
    minimum on a busy machine, where contention only adds time, or the median on an idle one)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times
