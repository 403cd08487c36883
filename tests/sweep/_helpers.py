"""Shared helpers for the sweep and CLI tests: fabricated records and fast trial functions.

The trial functions live in a module (not a test file) because spawned workers unpickle them
by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shallowkern.sweep import SCHEMA_VERSION, TrialConfig, trial_id


def lenet_macs(d1: int, d2: int) -> int:
    """Forward MACs per 32x32x3 image of a generalized LeNet (models/shallow.py docstring)."""
    return 58_800 * d1 + 2_500 * d1 * d2 + 3_000 * d2 + 10_920


def fake_record(cfg: TrialConfig, test_error: float, **extra: Any) -> dict[str, Any]:
    """A record with the shape run_trial produces, without training anything."""
    if cfg.family == "lenet":
        d2 = cfg.d2 or max(1, round(cfg.k * cfg.d1))
        model = {"family": "lenet", "d1": cfg.d1, "d2": d2, "k": d2 / cfg.d1}
        macs = lenet_macs(cfg.d1, d2)
    else:
        model = {"family": "vgg16", "width": cfg.width, "batch_norm": cfg.batch_norm,
                 "first_width": max(1, round(64 * cfg.width))}
        macs = int(313e6 * cfg.width**2)
    rec = {
        "schema_version": SCHEMA_VERSION, "trial_id": trial_id(cfg), "config": cfg.to_dict(),
        "seed": cfg.seed, "model": model, "train_error": test_error * 0.5,
        "val_error": test_error * 1.01, "test_error": test_error, "best_epoch": 1, "epochs": 1,
        "n_train": 200, "n_val": 100, "n_test": 10000, "macs": macs, "flops": 2 * macs,
        "params": 1000, "bytes": 12345, "latency": 0.001, "latency_batch": 100,
        "wall_time": 0.5, "train_time": 0.4, "images_per_s": 100.0,
        "machine": {"hostname": "test", "device_name": "cpu", "torch": "x"},
        "git_commit": None, "finished_at": "2025-01-01T00:00:00",
    }
    rec.update(extra)
    return rec


def fast_trial(config: dict[str, Any], data_root: str | None = None) -> dict[str, Any]:
    """A trial function that trains nothing: error from a known power law."""
    cfg = TrialConfig.from_dict(config)
    return fake_record(cfg, 0.8 * cfg.d1 ** -0.3 + 0.001 * cfg.seed)


def crash_once_trial(config: dict[str, Any], data_root: str | None = None) -> dict[str, Any]:
    """Kills its worker process (no exception, no cleanup) the first time it sees d1 == 8.

    ``data_root`` names a folder for the sentinel file that records the first crash.
    """
    cfg = TrialConfig.from_dict(config)
    sentinel = Path(data_root) / f"crashed-{trial_id(cfg)}"
    if cfg.d1 == 8 and not sentinel.exists():
        sentinel.touch()
        os._exit(3)
    return fast_trial(config)


def raising_trial(config: dict[str, Any], data_root: str | None = None) -> dict[str, Any]:
    """Raises for d1 == 8 (an ordinary bug in a trial), succeeds otherwise."""
    if config["d1"] == 8:
        raise RuntimeError("boom for d1=8")
    return fast_trial(config)


def slow_trial(config: dict[str, Any], data_root: str | None = None) -> dict[str, Any]:
    """Hangs (sleeps an hour) on d1 == 8; the others finish at once."""
    cfg = TrialConfig.from_dict(config)
    if cfg.d1 == 8:
        import time

        time.sleep(3600)
    return fast_trial(config, data_root)
