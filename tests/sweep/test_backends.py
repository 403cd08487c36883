"""submitit / Ray backends: a clear error when missing; the job is the trial function itself."""

from __future__ import annotations

import sys
import types

import pytest

from shallowkern.sweep import lenet_grid, read_records, run_sweep
from shallowkern.sweep.backends import BackendUnavailable

from ._helpers import fast_trial, raising_trial

GRID = lenet_grid((4, 8, 16), (2.8,), (0,), dataset="synthetic", recipe="quick")


@pytest.mark.parametrize("backend", ["submitit", "ray"])
def test_missing_backend_is_a_clear_error(tmp_path, monkeypatch, backend):
    monkeypatch.setitem(sys.modules, backend, None)  # makes `import <backend>` fail
    with pytest.raises(BackendUnavailable, match=f"pip install {backend}"):
        run_sweep(GRID, tmp_path / "r.jsonl", backend=backend, trial_fn=fast_trial)
    assert not (tmp_path / "r.jsonl").exists()


class _Ref:
    """Stands in for a Ray ObjectRef: hashable, holds the task's result."""

    def __init__(self, value):
        self.value = value


class _Job:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def result(self):
        return self.fn(*self.args)


def _fake_submitit(submitted: list, params: dict) -> types.ModuleType:
    mod = types.ModuleType("submitit")

    class AutoExecutor:
        def __init__(self, folder):
            params["folder"] = folder

        def update_parameters(self, **kw):
            params.update(kw)

        def submit(self, fn, *args):
            submitted.append((fn, args))
            return _Job(fn, args)

    mod.AutoExecutor = AutoExecutor
    return mod


def test_submitit_submits_the_trial_function_unchanged(tmp_path, monkeypatch):
    submitted, params = [], {}
    monkeypatch.setitem(sys.modules, "submitit", _fake_submitit(submitted, params))
    results = tmp_path / "r.jsonl"
    summary = run_sweep(GRID, results, backend="submitit", trial_fn=raising_trial,
                        data_root="/data", progress=False,
                        backend_options={"slurm_partition": "gpu", "timeout_min": 60})
    assert all(fn is raising_trial for fn, _ in submitted)
    assert [args for _, args in submitted] == [(c.to_dict(), "/data") for c in GRID]
    assert params["slurm_partition"] == "gpu" and params["folder"].endswith("r.jsonl.submitit")
    assert set(summary.failed) == {GRID[1].trial_id}  # d1 = 8 raises inside its job
    assert len(read_records(results)) == 2


def test_default_job_function_is_run_trial(tmp_path, monkeypatch):
    from shallowkern.sweep import run_trial

    submitted, params = [], {}
    monkeypatch.setitem(sys.modules, "submitit", _fake_submitit(submitted, params))
    # Only check what was submitted: the fake's jobs are never waited on for real work here.
    monkeypatch.setattr(_Job, "result", lambda self: (_ for _ in ()).throw(RuntimeError("x")))
    run_sweep(GRID[:1], tmp_path / "r.jsonl", backend="submitit", progress=False)
    fn = submitted[0][0]  # run_trial, checkpointing every epoch next to the results
    assert fn.func is run_trial and fn.keywords == {"results": str(tmp_path / "r.jsonl")}


def test_ray_runs_the_trial_function_as_a_remote_task(tmp_path, monkeypatch):
    wrapped, calls = [], []
    ray = types.ModuleType("ray")
    ray.is_initialized = lambda: False
    ray.init = lambda **kw: calls.append(kw)
    ray.cluster_resources = lambda: {"CPU": 2}

    class _Remote:
        def __init__(self, fn):
            self.fn = fn

        def remote(self, *args):
            return _Ref(self.fn(*args))

    def remote(**opts):
        def deco(fn):
            wrapped.append((fn, opts))
            return _Remote(fn)
        return deco

    ray.remote = remote
    ray.wait = lambda refs, num_returns: (refs[:num_returns], refs[num_returns:])
    ray.get = lambda ref: ref.value
    monkeypatch.setitem(sys.modules, "ray", ray)
    summary = run_sweep(GRID, tmp_path / "r.jsonl", backend="ray", trial_fn=fast_trial,
                        progress=False)
    assert wrapped == [(fast_trial, {"num_gpus": 0, "num_cpus": 1})] and calls
    assert summary.ok and len(read_records(tmp_path / "r.jsonl")) == 3


def test_a_cluster_backend_stores_diverged_trials_and_retries_them_when_asked(tmp_path,
                                                                             monkeypatch):
    from shallowkern.sweep.store import load_results

    from ._fault_helpers import diverging_trial

    grid = lenet_grid((4, 8), (2.8,), (0,), dataset="synthetic", recipe="quick")
    monkeypatch.setitem(sys.modules, "submitit", _fake_submitit([], {}))
    results = tmp_path / "r.jsonl"
    first = run_sweep(grid, results, backend="submitit", trial_fn=diverging_trial,
                      progress=False)
    assert first.ok and len(first.diverged) == 1 and len(load_results(results).diverged) == 1
    again = run_sweep(grid, results, backend="submitit", trial_fn=diverging_trial,
                      progress=False)
    assert again.skipped == 2 and again.skipped_diverged == 1
    (tmp_path / "healed").touch()
    healed = run_sweep(grid, results, backend="submitit", trial_fn=diverging_trial,
                       data_root=str(tmp_path), progress=False, retry_diverged=True)
    assert healed.completed == [grid[1].trial_id] and not healed.diverged
    res = load_results(results)
    assert not res.diverged and len(res.records) == 2


def test_commit_is_pinned_when_the_driver_starts(tmp_path):
    """Records name the commit whose code the driver loaded: git_commit() is cached before the
    first trial runs, so a commit made while a long in-process sweep runs does not relabel it."""
    from shallowkern.sweep import trial

    seen = []

    def probe(config, data_root=None):
        seen.append(trial.git_commit.cache_info().currsize)
        return fast_trial(config, data_root)

    trial.git_commit.cache_clear()
    run_sweep(GRID[:1], tmp_path / "r.jsonl", workers=0, trial_fn=probe)
    assert seen == [1]
