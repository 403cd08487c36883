"""The embedded scheduler: runs pending trials in worker processes and appends their records.

One worker per visible GPU (each started with ``CUDA_VISIBLE_DEVICES`` set to its GPU), or
``workers`` CPU workers (default 1) when there is none. Workers are started with the "spawn"
context: forking a parent that has touched CUDA or OpenMP thread pools is undefined behaviour,
and spawn behaves the same on Linux and macOS. Each worker runs one trial at a time, appends
the record to the results file itself (so a finished trial survives a crash of the parent), and
reports back over its own pipe, so the parent always knows which trial a dead worker held.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from multiprocessing import connection
from pathlib import Path
from typing import Any

from .config import TrialConfig, trial_id
from .store import append_record, completed_ids

__all__ = ["SweepSummary", "TrialFn", "run_sweep", "visible_gpus"]

# run_trial's signature: (config dict, data_root) -> record dict with a "trial_id".
TrialFn = Callable[[dict[str, Any], "str | None"], dict[str, Any]]


@dataclass
class SweepSummary:
    """What one call of ``run_sweep`` did."""

    results: Path
    total: int  # distinct trials asked for
    skipped: int  # already in the results file
    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # trial id -> why (traceback)
    wall_time: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        s = (f"{len(self.completed)} trial(s) run, {self.skipped} already in {self.results}, "
             f"{len(self.failed)} failed, in {self.wall_time:.1f} s")
        for tid, why in self.failed.items():
            s += f"\n  FAILED {tid}: {why.strip().splitlines()[-1] if why.strip() else why}"
        return s


def visible_gpus() -> list[str]:
    """Ids of the GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # a broken driver is "no GPU" for scheduling purposes
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s.strip() for s in env.split(",") if s.strip()] if env else [str(i) for i in range(n)]
    return ids[:n]


class _Progress:
    """A one-line text progress report on stderr (tqdm is not a dependency)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.failed = total, 0, 0
        self.enabled = enabled and total > 0
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, what: str, ok: bool = True) -> None:
        self.done += 1
        self.failed += not ok
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        line = (f"[sweep] {self.done}/{self.total} ({self.failed} failed) "
                f"{elapsed:6.0f}s elapsed, ~{eta:.0f}s left | {'done' if ok else 'FAILED'} {what}")
        # On a terminal redraw one line; in a log file print one line per trial.
        sys.stderr.write(("\r\033[K" + line) if self.tty else line + "\n")
        if self.tty and self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _as_configs(configs: Iterable[TrialConfig | Mapping[str, Any]]) -> list[TrialConfig]:
    out, seen = [], set()
    for c in configs:
        cfg = c if isinstance(c, TrialConfig) else TrialConfig.from_dict(c)
        if cfg.trial_id not in seen:  # the same trial listed twice runs once
            seen.add(cfg.trial_id)
            out.append(cfg)
    return out


def run_sweep(
    configs: Iterable[TrialConfig | Mapping[str, Any]],
    results: str | os.PathLike[str],
    *,
    workers: int | None = None,
    backend: str = "local",
    data_root: str | os.PathLike[str] | None = None,
    trial_fn: TrialFn | None = None,
    progress: bool = True,
    backend_options: Mapping[str, Any] | None = None,
    trial_timeout: float | None = None,
) -> SweepSummary:
    """Run every trial of ``configs`` whose id is not yet in ``results`` (JSONL).

    Rerunning the same call after a crash resumes: finished trials are skipped, the rest run.
    A trial that raises, or whose worker dies, is reported in ``SweepSummary.failed`` and left
    out of the file, so the next run retries it; the other trials carry on.

    Args:
        workers: CPU worker processes when no GPU is visible (default 1; 0 runs the trials in
            this process, which is handy under a debugger). With GPUs: one worker per GPU,
            at most ``workers`` if given.
        backend: "local" (this scheduler), "submitit" (Slurm) or "ray"; the last two need
            those packages and take ``backend_options`` (see ``shallowkern.sweep.backends``).
        trial_fn: the trial function, default ``shallowkern.sweep.trial.run_trial``; it must be
            importable by name (top-level in a module), since spawned workers unpickle it.
        trial_timeout: seconds one trial may run in a worker (local backend, workers >= 1):
            a trial past it has its worker killed, is reported failed ("timed out") and is
            retried by the next run; the other trials carry on. Cluster backends take their
            own limit in ``backend_options`` (submitit: ``timeout_min``).
    """
    if trial_timeout is not None:
        if not trial_timeout > 0:
            raise ValueError(f"trial_timeout must be a positive number of seconds, got "
                             f"{trial_timeout!r}")
        if backend != "local" or workers == 0:
            raise ValueError("trial_timeout needs the local backend with worker processes "
                             "(workers >= 1): a trial running in this process cannot be "
                             "stopped; cluster backends take their own limit in backend_options")
    t0 = time.perf_counter()
    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    if trial_fn is None:
        from .trial import run_trial as trial_fn
    cfgs = _as_configs(configs)
    done = completed_ids(results)
    pending = [c for c in cfgs if c.trial_id not in done]
    summary = SweepSummary(results=results, total=len(cfgs), skipped=len(cfgs) - len(pending))
    root = None if data_root is None else str(data_root)
    if pending:
        if backend == "local":
            _run_local(pending, results, trial_fn, root, workers, summary, progress,
                       trial_timeout)
        elif backend in ("submitit", "ray"):
            from . import backends

            run = backends.run_submitit if backend == "submitit" else backends.run_ray
            run(pending, results, trial_fn, root, summary, progress=progress,
                **dict(backend_options or {}))
        else:
            raise ValueError(f"backend must be 'local', 'submitit' or 'ray', got {backend!r}")
    summary.wall_time = time.perf_counter() - t0
    return summary


def _run_inline(pending, results, trial_fn, root, summary, bar) -> None:
    for cfg in pending:
        try:
            rec = trial_fn(cfg.to_dict(), root)
            append_record(results, rec)
            summary.completed.append(cfg.trial_id)
            bar.update(cfg.label())
        except Exception:
            summary.failed[cfg.trial_id] = traceback.format_exc()
            bar.update(cfg.label(), ok=False)


def _worker_main(conn, results: str, trial_fn: TrialFn, root: str | None,
                 threads: int | None) -> None:
    """Worker loop: receive a config dict, run it, append the record, report; None stops."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    while True:
        try:
            cfg = conn.recv()
        except (EOFError, KeyboardInterrupt):  # parent gone or interrupted: stop quietly
            return
        if cfg is None:
            return
        tid = trial_id(cfg)
        try:
            rec = trial_fn(cfg, root)
            if rec.get("trial_id") != tid:
                raise RuntimeError(f"trial function returned trial_id {rec.get('trial_id')!r}, "
                                   f"expected {tid!r}")
            append_record(results, rec)
            conn.send(("done", tid, ""))
        except Exception:
            conn.send(("error", tid, traceback.format_exc()))


class _Worker:
    def __init__(self, ctx, results: Path, trial_fn: TrialFn, root: str | None,
                 env: dict[str, str], threads: int | None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, str(results), trial_fn, root,
                                                           threads), daemon=True)
        # A spawned child inherits os.environ as it is at start(): set its GPU there, so CUDA
        # in the child never sees the other devices.
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            self.proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self.env, self.threads = env, threads
        self.current: TrialConfig | None = None
        self.started = 0.0  # perf_counter() when the current trial was sent

    def assign(self, cfg: TrialConfig) -> None:
        self.current, self.started = cfg, time.perf_counter()
        self.conn.send(cfg.to_dict())

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()


def _run_local(pending: list[TrialConfig], results: Path, trial_fn: TrialFn, root: str | None,
               workers: int | None, summary: SweepSummary, progress: bool,
               trial_timeout: float | None = None) -> None:
    import multiprocessing as mp

    bar = _Progress(len(pending), progress)
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        _run_inline(pending, results, trial_fn, root, summary, bar)
        return
    gpus = visible_gpus()
    # Silence the per-process "extension not built" warning: the parent has shown it once.
    quiet = {"PYTHONWARNINGS": "ignore:shallowkern._C is not available"}
    if gpus:
        slots = [dict(quiet, CUDA_VISIBLE_DEVICES=g) for g in gpus][: workers or len(gpus)]
        threads = None
    else:
        n = workers or 1
        slots = [dict(quiet)] * n
        # Split the cores so that n workers do not oversubscribe them (n x all cores threads).
        threads = max(1, (os.cpu_count() or 1) // n)
    ctx = mp.get_context("spawn")
    queue = deque(pending)
    active: list[_Worker] = []

    def replace(dead: _Worker) -> None:
        """A new worker in a dead one's slot, if trials are left (each death consumes one
        trial, so this terminates)."""
        if queue:
            nw = _Worker(ctx, results, trial_fn, root, dead.env, dead.threads)
            nw.assign(queue.popleft())
            active.append(nw)

    try:
        for env in slots[: len(queue)]:
            w = _Worker(ctx, results, trial_fn, root, env, threads)
            w.assign(queue.popleft())
            active.append(w)
        while active:
            wait_s = None
            if trial_timeout is not None:
                now = time.perf_counter()
                wait_s = max(0.0, min(w.started + trial_timeout - now for w in active))
            ready = connection.wait([w.conn for w in active] + [w.proc.sentinel for w in active],
                                    timeout=wait_s)
            for w in list(active):
                if (trial_timeout is not None and w.current is not None and not w.conn.poll()
                        and time.perf_counter() - w.started > trial_timeout):
                    # Over its time (and no answer waiting): kill the worker, replace it.
                    w.proc.kill()
                    w.proc.join()
                    active.remove(w)
                    cfg = w.current
                    # It may have appended its record just before the kill: then it is done.
                    ok = cfg.trial_id in completed_ids(results)
                    if ok:
                        summary.completed.append(cfg.trial_id)
                    else:
                        summary.failed[cfg.trial_id] = (
                            f"timed out after {trial_timeout:g} s (trial_timeout): worker killed "
                            f"while running {cfg.label()} ({cfg.trial_id})")
                    bar.update(cfg.label(), ok=ok)
                    replace(w)
                    continue
                if w.conn in ready or w.conn.poll():
                    try:
                        kind, tid, why = w.conn.recv()
                    except (EOFError, OSError):
                        kind = None  # died: handled below through its sentinel
                    else:
                        cfg, w.current = w.current, None
                        if kind == "done":
                            summary.completed.append(tid)
                        else:
                            summary.failed[tid] = why
                        bar.update(cfg.label() if cfg else tid, ok=kind == "done")
                        if queue:
                            w.assign(queue.popleft())
                        else:
                            w.stop()
                            active.remove(w)
                        continue
                if w.proc.sentinel in ready or not w.proc.is_alive():
                    w.proc.join()
                    active.remove(w)
                    if w.current is not None:
                        cfg = w.current
                        summary.failed[cfg.trial_id] = (
                            f"worker process exited with code {w.proc.exitcode} while running "
                            f"{cfg.label()} ({cfg.trial_id})")
                        bar.update(cfg.label(), ok=False)
                    replace(w)
    except BaseException:
        for w in active:  # only our own children, by handle
            if w.proc.is_alive():
                w.proc.terminate()
            w.proc.join()
        raise
