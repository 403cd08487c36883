"""The local scheduler: resume after crashes, failures isolated, 2 CPU workers, inline mode."""

from __future__ import annotations

from collections import Counter

import pytest

from shallowkern.sweep import lenet_grid, read_records, run_sweep

from ._helpers import crash_once_trial, fast_trial, raising_trial, slow_trial

GRID = lenet_grid((4, 8, 16, 32), (2.8,), (0, 1), dataset="synthetic", recipe="quick")


def _ids(path) -> Counter:
    return Counter(r["trial_id"] for r in read_records(path, dedupe=False))


def test_killed_worker_then_rerun_gives_every_trial_exactly_once(tmp_path):
    """A worker dies (os._exit) mid-sweep on d1=8: its trials are reported failed, the others
    finish on a replacement worker; the rerun completes the rest without duplicates."""
    results = tmp_path / "r.jsonl"
    first = run_sweep(GRID, results, workers=2, trial_fn=crash_once_trial,
                      data_root=str(tmp_path), progress=False)
    crashed = {c.trial_id for c in GRID if c.d1 == 8}
    assert set(first.failed) == crashed
    assert "exited with code 3" in next(iter(first.failed.values()))
    assert len(first.completed) == len(GRID) - len(crashed)
    assert set(_ids(results)) == {c.trial_id for c in GRID} - crashed

    second = run_sweep(GRID, results, workers=2, trial_fn=crash_once_trial,
                       data_root=str(tmp_path), progress=False)
    assert second.ok and second.skipped == len(GRID) - len(crashed)
    assert set(second.completed) == crashed
    counts = _ids(results)
    assert set(counts) == {c.trial_id for c in GRID} and set(counts.values()) == {1}

    third = run_sweep(GRID, results, workers=2, trial_fn=fast_trial, progress=False)
    assert third.skipped == len(GRID) and not third.completed  # nothing left to do


def test_a_raising_trial_is_reported_and_the_rest_run_inline(tmp_path):
    results = tmp_path / "r.jsonl"
    summary = run_sweep(GRID, results, workers=0, trial_fn=raising_trial, progress=False)
    assert {GRID[i].trial_id for i in (2, 3)} == set(summary.failed)
    assert "boom for d1=8" in summary.failed[GRID[2].trial_id]
    assert "FAILED" in summary.describe()
    assert len(read_records(results)) == len(GRID) - 2


def test_duplicate_configs_run_once_and_bad_arguments_are_errors(tmp_path):
    results = tmp_path / "r.jsonl"
    summary = run_sweep(GRID[:2] * 3, results, workers=0, trial_fn=fast_trial, progress=False)
    assert summary.total == 2 and len(read_records(results)) == 2
    with pytest.raises(ValueError, match="backend"):
        run_sweep(GRID[2:3], results, backend="kubernetes", trial_fn=fast_trial)
    with pytest.raises(ValueError, match="workers"):
        run_sweep(GRID[2:3], results, workers=-1, trial_fn=fast_trial)


def test_a_hanging_trial_times_out_and_the_rest_finish(tmp_path):
    """trial_timeout kills the worker of a trial that hangs; the others finish on a replacement
    and nothing of the hung trial reaches the file (the next run retries it)."""
    results = tmp_path / "r.jsonl"
    summary = run_sweep(GRID, results, workers=2, trial_fn=slow_trial, progress=False,
                        trial_timeout=5)
    hung = {c.trial_id for c in GRID if c.d1 == 8}
    assert set(summary.failed) == hung
    assert all("timed out after 5 s" in why for why in summary.failed.values())
    assert set(_ids(results)) == {c.trial_id for c in GRID} - hung
    assert set(_ids(results).values()) == {1}
    rerun = run_sweep(GRID, results, workers=1, trial_fn=fast_trial, progress=False,
                      trial_timeout=60)
    assert rerun.ok and set(rerun.completed) == hung


def test_trial_timeout_bad_values(tmp_path):
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="trial_timeout must be a positive"):
            run_sweep(GRID[:1], tmp_path / "r.jsonl", trial_fn=fast_trial, trial_timeout=bad)
    with pytest.raises(ValueError, match="trial_timeout needs the local backend"):
        run_sweep(GRID[:1], tmp_path / "r.jsonl", workers=0, trial_fn=fast_trial,
                  trial_timeout=10)


@pytest.mark.slow
def test_run_trial_through_two_spawned_workers(tmp_path):
    """The real trial function (tiny synthetic data, 1 epoch) in 2 spawned CPU workers."""
    grid = lenet_grid((2, 3), (2.8,), (0,), dataset="synthetic", recipe="quick",
                      overrides={"epochs": 1, "val_size": 100}, train_subset=200)
    summary = run_sweep(grid, tmp_path / "r.jsonl", workers=2, progress=False)
    assert summary.ok, summary.describe()
    recs = read_records(tmp_path / "r.jsonl")
    assert sorted(r["model"]["d1"] for r in recs) == [2, 3]
    assert all(r["machine"]["torch_threads"] == 1 for r in recs)  # 2 cores split over 2 workers
