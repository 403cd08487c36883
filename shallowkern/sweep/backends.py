"""Optional cluster backends: submitit (Slurm) and Ray, running the same trial function.

Both submit ``trial_fn(config_dict, data_root)`` — by default ``run_trial``, unchanged — as the
job, collect the returned records in the driver as jobs finish, and append them to the results
file there (cluster jobs may not share a file system with the results file; the driver does).
``run_sweep`` holds the results file exclusively while a cluster backend runs (``SweepBusy`` for
a second driver), since the jobs themselves take no leases.
The packages are imported only when a backend is used, and a missing one is a clear error.
"""

from __future__ import annotations

import importlib
import traceback
from pathlib import Path
from typing import Any

from .config import TrialConfig
from .store import append_record, encode_record, is_diverged

__all__ = ["BackendUnavailable", "require", "run_ray", "run_submitit"]


class BackendUnavailable(RuntimeError):
    """An optional backend's package is not installed."""


def require(package: str, backend: str) -> Any:
    """Import ``package`` or raise BackendUnavailable saying how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise BackendUnavailable(
            f"the {backend!r} sweep backend needs the {package!r} package, which is not "
            f"installed ({exc}); install it with `pip install {package}`, or use "
            f"--backend local") from None


def _collect(summary, results: Path, cfg: TrialConfig, get_record, bar,
             supersede: bool = False) -> None:
    """Append a finished job's record in the driver and book it. The store refuses a trial
    that is already done (e.g. stored meanwhile by an orphaned local worker): that trial is
    booked as done elsewhere, never stored twice."""
    try:
        rec = get_record()
        diverged = is_diverged(encode_record(rec))
        if append_record(results, rec, supersede_diverged=supersede) or (supersede and diverged):
            summary.completed.append(cfg.trial_id)  # (or retried, and diverged again)
            if diverged:
                summary.diverged.append(cfg.trial_id)
        else:
            summary.done_elsewhere.append(cfg.trial_id)
        bar.update(cfg.label())
    except Exception:
        summary.failed[cfg.trial_id] = traceback.format_exc()
        bar.update(cfg.label(), ok=False)


def run_submitit(pending: list[TrialConfig], results: Path, trial_fn, root: str | None, summary,
                 *, progress: bool = True, folder: str | None = None,
                 supersede_diverged: bool = False, **parameters: Any) -> None:
    """One Slurm job per trial through ``submitit.AutoExecutor``.

    ``folder`` holds submitit's logs (default ``<results>.submitit/``); ``parameters`` go to
    ``executor.update_parameters`` (e.g. ``slurm_partition``, ``gpus_per_node=1``,
    ``timeout_min``). Blocks until every job has finished. ``supersede_diverged``: the jobs
    retry diverged trials (``run_sweep(retry_diverged=True)``).
    """
    submitit = require("submitit", "submitit")
    from .scheduler import _Progress

    executor = submitit.AutoExecutor(folder=folder or str(results) + ".submitit")
    if parameters:
        executor.update_parameters(**parameters)
    jobs = [(cfg, executor.submit(trial_fn, cfg.to_dict(), root)) for cfg in pending]
    bar = _Progress(len(jobs), progress)
    for cfg, job in jobs:  # job.result() blocks; records are appended in submission order
        _collect(summary, results, cfg, job.result, bar, supersede_diverged)


def run_ray(pending: list[TrialConfig], results: Path, trial_fn, root: str | None, summary,
            *, progress: bool = True, num_gpus: float | None = None, num_cpus: float = 1,
            address: str | None = None, supersede_diverged: bool = False) -> None:
    """One Ray task per trial; ``num_gpus`` per task defaults to 1 if the cluster has GPUs.

    Connects to ``address`` (or starts a local Ray) unless Ray is already initialised.
    """
    ray = require("ray", "ray")
    from .scheduler import _Progress

    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True)
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    remote = ray.remote(num_gpus=num_gpus, num_cpus=num_cpus)(trial_fn)
    refs = {remote.remote(cfg.to_dict(), root): cfg for cfg in pending}
    bar = _Progress(len(refs), progress)
    waiting = list(refs)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        for ref in done:
            _collect(summary, results, refs[ref], lambda ref=ref: ray.get(ref), bar,
                     supersede_diverged)
