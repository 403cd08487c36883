"""The local scheduler: resume after crashes, failures isolated, 2 CPU workers, inline mode,
diverged trials, leases and the driver lock (the SIGKILL tests are in test_fault_injection)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import pytest

from shallowkern.sweep import append_record, lenet_grid, read_records, run_sweep
from shallowkern.sweep.scheduler import SweepBusy, lease_dir
from shallowkern.sweep.store import load_results

from ._fault_helpers import diverging_trial
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


# ------------------------------------------------------------------ issue 9 items 3 and 4


def test_a_diverged_trial_is_stored_counted_and_not_retried_unless_asked(tmp_path):
    """Issue 9 item 3: a NaN in the history made the trial fail and be retried on every
    resume. Now it is stored (diverged), counted, skipped on resume; retry_diverged reruns it
    and a healthy result supersedes the diverged record."""
    results = tmp_path / "r.jsonl"
    first = run_sweep(GRID, results, workers=0, trial_fn=diverging_trial, progress=False)
    div = {c.trial_id for c in GRID if c.d1 == 8}
    assert first.ok and set(first.diverged) == div and len(first.completed) == len(GRID)
    assert "(2 diverged)" in first.describe()
    res = load_results(results)
    assert {r["trial_id"] for r in res.diverged} == div and not res.problems

    again = run_sweep(GRID, results, workers=0, trial_fn=diverging_trial, progress=False)
    assert again.skipped == len(GRID) and again.skipped_diverged == 2 and not again.completed
    assert "2 diverged, not retried" in again.describe()

    still = run_sweep(GRID, results, workers=0, trial_fn=diverging_trial, progress=False,
                      retry_diverged=True)  # diverges again: nothing new is stored
    assert set(still.completed) == div and set(still.diverged) == div
    assert len(results.read_text().splitlines()) == len(GRID)

    (tmp_path / "healed").touch()
    healed = run_sweep(GRID, results, workers=1, trial_fn=diverging_trial, progress=False,
                       retry_diverged=True, data_root=str(tmp_path))
    assert set(healed.completed) == div and not healed.diverged
    res = load_results(results)
    assert not res.diverged and len(res.ok) == len(GRID)
    assert len(res.records) == len(GRID) and len(res.duplicates) == 2  # superseded, kept
    assert len(results.read_text().splitlines()) == len(GRID) + 2  # append-only: history stays


def test_a_cluster_backend_driver_holds_the_file_alone(tmp_path):
    """A cluster backend collects records in its driver, so it shares the results file with
    no other driver: the second one is refused with one line."""
    from shallowkern.sweep.scheduler import _driver_lock

    results = tmp_path / "r.jsonl"
    fd = _driver_lock(results, exclusive=True)  # as a running submitit/ray driver holds it
    try:
        with pytest.raises(SweepBusy, match=r"r\.jsonl is in use by another sweep driver"):
            run_sweep(GRID, results, workers=0, trial_fn=fast_trial, progress=False)
    finally:
        os.close(fd)
    fd = _driver_lock(results, exclusive=False)  # a local driver is running
    try:
        with pytest.raises(SweepBusy, match="in use by another sweep driver"):
            run_sweep(GRID, results, backend="ray", trial_fn=fast_trial, progress=False)
        run_sweep(GRID[:1], results, workers=0, trial_fn=fast_trial, progress=False)  # shares
    finally:
        os.close(fd)


def test_a_leased_trial_waits_for_its_holder_and_is_not_run_twice(tmp_path):
    """A trial leased by a live process (another driver's worker) is deferred, not run; once
    the holder stores it and lets go, this driver books it as done elsewhere."""
    from shallowkern.sweep.scheduler import _release, _try_lease

    results = tmp_path / "r.jsonl"
    held = GRID[0]
    fd = _try_lease(results, held.trial_id)
    assert fd is not None and _try_lease(results, held.trial_id) is None

    def holder():
        time.sleep(1.0)
        append_record(results, fast_trial(held.to_dict()))
        _release(results, held.trial_id, fd)

    t = threading.Thread(target=holder)
    t.start()
    summary = run_sweep(GRID, results, workers=0, trial_fn=fast_trial, progress=False)
    t.join()
    assert summary.ok and summary.done_elsewhere == [held.trial_id]
    assert set(summary.completed) == {c.trial_id for c in GRID[1:]}
    assert set(_ids(results).values()) == {1}
    assert [p.name for p in lease_dir(results).iterdir()] == ["driver.lock"]  # leases cleaned


def test_results_that_is_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        run_sweep(GRID, tmp_path, workers=0, trial_fn=fast_trial)


def test_a_worker_asks_to_die_with_its_parent(tmp_path):
    """The worker's first act: PR_SET_PDEATHSIG, then exit at once if already orphaned."""
    import subprocess
    import sys

    code = ("import os, sys; from shallowkern.sweep.scheduler import _die_with_parent; "
            "_die_with_parent(os.getppid() + 1 if os.getppid() > 1 else 2); print('alive')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0 and "alive" not in out.stdout  # "orphaned": exited quietly
