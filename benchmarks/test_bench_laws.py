"""The law benchmark: a small LeNet width sweep whose records and fitted power law land in
pytest-benchmark's extra_info (error, FLOPs, latency per width; rho with its bootstrap CI).

Full run: CIFAR-10 from SHALLOWKERN_DATA with the quick recipe (a training subset, a few
epochs). Smoke run (--benchmark-disable) or no data: the synthetic dataset, one epoch.
"""

from __future__ import annotations

import os

import numpy as np

from shallowkern.laws import bootstrap_ci
from shallowkern.sweep import lenet_grid, read_records, run_sweep


def test_lenet_width_law(benchmark, tmp_path, smoke):
    real = not smoke and os.path.isdir(os.environ.get("SHALLOWKERN_DATA", "/nonexistent"))
    if real:
        configs = lenet_grid((4, 8, 16), seeds=(0, 1), recipe="quick", overrides={"epochs": 2})
    else:
        configs = lenet_grid((2, 4, 8), seeds=(0, 1), dataset="synthetic", recipe="quick",
                             overrides={"epochs": 1, "val_size": 50}, train_subset=300)
    results = tmp_path / "law.jsonl"

    def sweep():
        return run_sweep(configs, results, workers=0, progress=False)

    summary = benchmark.pedantic(sweep, rounds=1, iterations=1)
    assert not summary.failed
    records = read_records(results)
    assert len(records) == len(configs)
    d1 = np.array([r["config"]["d1"] for r in records], dtype=float)
    err = np.array([r["test_error"] for r in records])
    seeds = np.array([r["seed"] for r in records])
    ci = bootstrap_ci(d1, err, seeds, n_boot=200, rng=0)
    fit = ci.fit
    benchmark.extra_info.update(
        dataset=configs[0].dataset,
        records=[{k: r[k] for k in ("config", "seed", "test_error", "val_error", "flops", "macs",
                                     "params", "latency", "wall_time") if k in r} for r in records],
        rho=fit.rho, A=fit.A, r2=fit.r2, rho_ci=list(ci.ci["rho"]), ci_level=ci.level)
    assert np.isfinite(fit.rho)
