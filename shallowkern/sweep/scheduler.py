"""The embedded scheduler: runs pending trials in worker processes and appends their records.

One worker per visible GPU (each started with ``CUDA_VISIBLE_DEVICES`` set to its GPU), or
``workers`` CPU workers (default 1) when there is none. Workers are started with the "spawn"
context: forking a parent that has touched CUDA or OpenMP thread pools is undefined behaviour,
and spawn behaves the same on Linux and macOS. Each worker runs one trial at a time, appends
the record to the results file itself (so a finished trial survives a crash of the parent), and
reports back over its own pipe, so the parent always knows which trial a dead worker held.

No trial is run twice, and none is lost, whoever is killed when:

* **Leases.** The process that runs a trial (a worker, or the driver with ``workers=0``) first
  takes an exclusive ``flock`` on ``<results>.leases/<trial_id>.lease`` and holds it until the
  record is appended. The kernel drops the lock when that process dies, however it dies
  (SIGKILL included), so a lease is held exactly as long as someone may still append the trial.
  A trial whose lease is taken is deferred and retried later; a trial found done once its
  lease is taken is not run again. So two drivers on one results file **cooperate**: each runs
  the trials the other has not leased, and both return when every trial is done.
* **Workers die with their driver.** A worker asks the kernel for SIGKILL when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``, Linux) and checks its parent's pid before every trial
  elsewhere; it also ignores SIGINT (Ctrl-C goes to the driver, which stops its workers).
* **The store never holds a trial twice.** ``append_record`` checks the done ids under an
  exclusive ``flock`` of the results file and does not write a trial that is already there.
* Cluster backends (submitit, Ray) collect records in the driver and take the results file
  for themselves: a second driver on the same file, local or not, is refused with one line
  (``SweepBusy``) while one of them runs.

Leases and the driver lock live in ``<results>.leases/`` (lease files are removed when
released; the directory and its ``driver.lock`` stay). They need a local file system with
``flock`` (not all network file systems honour it).
"""

from __future__ import annotations

import fcntl
import functools
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from multiprocessing import connection
from pathlib import Path
from typing import Any

from .config import TrialConfig, trial_id
from .store import append_record, completed_ids, diverged_ids, encode_record, is_diverged

__all__ = ["SweepBusy", "SweepSummary", "TrialFn", "lease_dir", "run_sweep", "visible_gpus"]

# run_trial's signature: (config dict, data_root) -> record dict with a "trial_id".
TrialFn = Callable[[dict[str, Any], "str | None"], dict[str, Any]]


@dataclass
class SweepSummary:
    """What one call of ``run_sweep`` did."""

    results: Path
    total: int  # distinct trials asked for
    skipped: int  # already done in the results file when the sweep started
    completed: list[str] = field(default_factory=list)  # run and stored by this call
    failed: dict[str, str] = field(default_factory=dict)  # trial id -> why (traceback)
    wall_time: float = 0.0
    diverged: list[str] = field(default_factory=list)  # of completed: stored as diverged
    done_elsewhere: list[str] = field(default_factory=list)  # finished by another driver
    skipped_diverged: int = 0  # of skipped: diverged trials not retried (retry_diverged=False)

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        s = (f"{len(self.completed)} trial(s) run"
             + (f" ({len(self.diverged)} diverged)" if self.diverged else "")
             + f", {self.skipped} already in {self.results}"
             + (f" ({self.skipped_diverged} diverged, not retried)" if self.skipped_diverged
                else "")
             + (f", {len(self.done_elsewhere)} run by another driver" if self.done_elsewhere
                else "")
             + f", {len(self.failed)} failed, in {self.wall_time:.1f} s")
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
    """The sweep's progress bar (tqdm on stderr): trials done, failed, elapsed and ETA.

    On a terminal tqdm redraws one line; in a log file it prints a line per update at most every
    30 s, so long sweeps leave a readable log.
    """

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: Ctrl-C must reach the driver's main thread
        self.total, self.done, self.failed = total, 0, 0
        self.enabled = enabled and total > 0
        self.bar = tqdm(total=total, desc="[sweep]", unit="trial", file=sys.stderr,
                        disable=not self.enabled, dynamic_ncols=True,
                        mininterval=0.5 if sys.stderr.isatty() else 30.0)

    def update(self, what: str, ok: bool = True) -> None:
        self.done += 1
        self.failed += not ok
        self.bar.set_postfix_str(f"{self.failed} failed | {'done' if ok else 'FAILED'} {what}",
                                 refresh=False)
        self.bar.update(1)
        if self.done == self.total:
            self.bar.close()


class SweepBusy(RuntimeError):
    """The results file is in use by another sweep driver that does not share it."""


def lease_dir(results: str | os.PathLike[str]) -> Path:
    """Where the leases and the driver lock of ``results`` live: ``<results>.leases/``."""
    return Path(str(results) + ".leases")


def _try_lease(results: Path, tid: str) -> int | None:
    """An fd holding the exclusive lease of trial ``tid``, or None if a live process holds it.

    Lease files are unlinked on release, so after taking the lock the fd must still be the
    file at the path (else a releaser removed it between our open and flock: try again).
    """
    path = lease_dir(results) / f"{tid}.lease"
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the directory was removed under us
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)  # a stale file of a dead holder may be reused
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for a human looking at the folder
            return fd
        os.close(fd)


def _release(results: Path, tid: str, fd: int) -> None:
    try:
        os.unlink(lease_dir(results) / f"{tid}.lease")  # still holding the lock: see _try_lease
    except FileNotFoundError:
        pass
    os.close(fd)


def _clear_stale_leases(results: Path) -> None:
    """Remove lease files left by processes that died holding them (the kernel dropped their
    locks; the files stay). Only files whose lock we can take are removed."""
    d = lease_dir(results)
    try:
        names = [n for n in os.listdir(d) if n.endswith(".lease")]
    except FileNotFoundError:
        return
    for name in names:
        fd = _try_lease(results, name.removesuffix(".lease"))
        if fd is not None:
            _release(results, name.removesuffix(".lease"), fd)


def _driver_lock(results: Path, exclusive: bool) -> int:
    """Shared (local backend) or exclusive (cluster backends) lock of the results file, held
    by the driver for the whole sweep; a conflict is SweepBusy with one line."""
    d = lease_dir(results)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / "driver.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SweepBusy(
            f"results file {results} is in use by another sweep driver"
            + (" (a cluster backend collects records in one driver: wait for the other to "
               "finish, or use another --results file)" if exclusive else
               " with a cluster backend, which does not share it: wait for it to finish, or "
               "use another --results file")) from None
    return fd


def _run_one(cfg: dict[str, Any], results: Path, trial_fn: TrialFn, root: str | None,
             supersede: bool) -> tuple[str, str]:
    """Lease, run and store one trial in this process: ``(kind, why)``, kind one of "done",
    "diverged", "leased" (another live process holds it), "skipped" (found done once leased),
    "error" (``why`` is the traceback)."""
    tid = trial_id(cfg)
    fd = _try_lease(results, tid)
    if fd is None:
        return "leased", ""
    try:
        done = completed_ids(results) - (diverged_ids(results) if supersede else set())
        if tid in done:
            return "skipped", ""
        try:
            rec = trial_fn(cfg, root)
            if rec.get("trial_id") != tid:
                raise RuntimeError(f"trial function returned trial_id {rec.get('trial_id')!r}, "
                                   f"expected {tid!r}")
            diverged = is_diverged(encode_record(rec))
            if not append_record(results, rec, supersede_diverged=supersede):
                # done meanwhile (cannot happen while we hold the lease, unless a process that
                # ignores leases wrote it), or retried and diverged again: nothing new to store
                return ("diverged" if supersede and diverged else "skipped"), ""
            return ("diverged" if diverged else "done"), ""
        except Exception:  # noqa: BLE001 - any bug in a trial fails that trial only
            return "error", traceback.format_exc()
    finally:
        _release(results, tid, fd)


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
    retry_diverged: bool = False,
) -> SweepSummary:
    """Run every trial of ``configs`` that is not yet done in ``results`` (JSONL).

    Rerunning the same call after a crash resumes: done trials are skipped, the rest run, and
    no trial is run or stored twice (see the module docstring: leases, workers that die with
    their driver, a store that refuses duplicates). Two local drivers on one results file
    share the work. A trial that raises, or whose worker dies, is reported in
    ``SweepSummary.failed`` and left out of the file, so the next run retries it; the other
    trials carry on. A diverged trial (non-finite loss) is stored, marked ``diverged``, and
    counts as done.

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
        retry_diverged: also run again the trials whose stored records are all diverged; a
            new non-diverged record then supersedes them (``store.load_results``).

    Raises:
        SweepBusy: a cluster-backend driver holds ``results`` (or, for a cluster backend, any
            other driver does).
    """
    if trial_timeout is not None:
        if not trial_timeout > 0:
            raise ValueError(f"trial_timeout must be a positive number of seconds, got "
                             f"{trial_timeout!r}")
        if backend != "local" or workers == 0:
            raise ValueError("trial_timeout needs the local backend with worker processes "
                             "(workers >= 1): a trial running in this process cannot be "
                             "stopped; cluster backends take their own limit in backend_options")
    if backend not in ("local", "submitit", "ray"):
        raise ValueError(f"backend must be 'local', 'submitit' or 'ray', got {backend!r}")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    from .trial import git_commit
    git_commit()  # pinned at driver start (in-process trials run the code loaded now)
    t0 = time.perf_counter()
    results = Path(results)
    if results.is_dir():
        raise IsADirectoryError(f"results {results} is a directory; give the path of a .jsonl "
                                "file (created if missing)")
    results.parent.mkdir(parents=True, exist_ok=True)
    if trial_fn is None:  # the default trial checkpoints every epoch next to the results
        from .trial import run_trial

        trial_fn = functools.partial(run_trial, results=str(results))
    cfgs = _as_configs(configs)
    lock = _driver_lock(results, exclusive=backend != "local")
    try:
        pending, summary = _pending(cfgs, results, retry_diverged)
        root = None if data_root is None else str(data_root)
        if pending:
            if backend == "local":
                _run_local(pending, results, trial_fn, root, workers, summary, progress,
                           trial_timeout, retry_diverged)
            else:
                from . import backends

                run = backends.run_submitit if backend == "submitit" else backends.run_ray
                run(pending, results, trial_fn, root, summary, progress=progress,
                    supersede_diverged=retry_diverged, **dict(backend_options or {}))
        _clear_stale_leases(results)
    finally:
        os.close(lock)
    summary.wall_time = time.perf_counter() - t0
    return summary


def _pending(cfgs: list[TrialConfig], results: Path, retry_diverged: bool
             ) -> tuple[list[TrialConfig], SweepSummary]:
    """The trials of ``cfgs`` still to run (diverged ones too with ``retry_diverged``) and the
    sweep's summary counting the rest as skipped (run_sweep and the packed sweep share it)."""
    done = completed_ids(results)
    div = diverged_ids(results) & done
    if retry_diverged:
        done -= div
    pending = [c for c in cfgs if c.trial_id not in done]
    summary = SweepSummary(results=results, total=len(cfgs), skipped=len(cfgs) - len(pending))
    summary.skipped_diverged = 0 if retry_diverged else sum(c.trial_id in div for c in cfgs)
    return pending, summary


def _record(summary: SweepSummary, cfg: TrialConfig, kind: str, why: str, bar) -> bool:
    """Book one finished attempt; False if the trial must be retried later ("leased")."""
    tid = cfg.trial_id
    if kind == "leased":
        return False
    if kind in ("done", "diverged"):
        summary.completed.append(tid)
        if kind == "diverged":
            summary.diverged.append(tid)
    elif kind == "skipped":
        summary.done_elsewhere.append(tid)
    else:
        summary.failed[tid] = why
    bar.update(cfg.label(), ok=kind != "error")
    return True


# A trial leased by another live process is tried again after this many seconds.
LEASE_RETRY_S = 0.5


def _run_inline(pending, results, trial_fn, root, summary, bar, supersede) -> None:
    queue, misses = deque(pending), 0
    while queue:
        cfg = queue.popleft()
        kind, why = _run_one(cfg.to_dict(), results, trial_fn, root, supersede)
        if _record(summary, cfg, kind, why, bar):
            misses = 0
        else:  # leased by another live process: try the others, then this one again
            queue.append(cfg)
            misses += 1
            if misses >= len(queue):
                time.sleep(LEASE_RETRY_S)
                misses = 0


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux), and exit now if the
    parent is already gone (it may have died before the request)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the parent-pid check below and the leases still hold
    if os.getppid() != parent:
        os._exit(0)


def _worker_main(conn, results: str, trial_fn: TrialFn, root: str | None,
                 threads: int | None, parent: int | None = None, supersede: bool = False) -> None:
    """Worker loop: receive a config dict, lease, run, append, report; None stops."""
    if parent is not None:
        _die_with_parent(parent)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        conn.send(("ready", "", ""))  # start-up (imports) does not count against trial_timeout
    except OSError:
        return
    while True:
        try:
            cfg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):  # parent gone: stop quietly
            return
        if cfg is None:
            return
        if parent is not None and os.getppid() != parent:  # orphaned (no PDEATHSIG here)
            return
        kind, why = _run_one(cfg, Path(results), trial_fn, root, supersede)
        try:
            conn.send((kind, trial_id(cfg), why))
        except OSError:  # parent gone
            return


class _Worker:
    def __init__(self, ctx, results: Path, trial_fn: TrialFn, root: str | None,
                 env: dict[str, str], threads: int | None, supersede: bool = False):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, str(results), trial_fn, root,
                                                           threads, os.getpid(), supersede),
                                daemon=True)
        # A spawned child inherits os.environ as it is at start(): set its GPU there, so CUDA
        # in the child never sees the other devices.
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        # Children start with SIGINT ignored (kept across exec, and Python then installs no
        # handler): Ctrl-C reaches the whole process group, and a worker interrupted while
        # importing torch would print a 30-line traceback. The driver stops its workers.
        # SIGINT is also *blocked* meanwhile, so a Ctrl-C arriving while start() runs stays
        # pending (Linux never discards a blocked signal) and interrupts the driver right after,
        # instead of being ignored (a start under load can take a second).
        main = threading.current_thread() is threading.main_thread()
        if main:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.proc.start()
        finally:
            if main:
                signal.signal(signal.SIGINT, old)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self.env, self.threads, self.supersede = env, threads, supersede
        self.current: TrialConfig | None = None
        self.ready = False  # the worker has started up (sent "ready")
        self.started = 0.0  # perf_counter() when the current trial was sent (or it got ready)

    def timing(self) -> bool:
        """Whether a trial is running on this worker (its trial_timeout clock is on)."""
        return self.ready and self.current is not None

    def assign(self, cfg: TrialConfig) -> None:
        self.current, self.started = cfg, time.perf_counter()
        try:
            self.conn.send(cfg.to_dict())
        except OSError:  # died while idle: its sentinel reports it, with this trial as failed
            pass

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
               trial_timeout: float | None = None, supersede: bool = False) -> None:
    import multiprocessing as mp

    bar = _Progress(len(pending), progress)
    if workers == 0:
        _run_inline(pending, results, trial_fn, root, summary, bar, supersede)
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
    deferred: deque[tuple[float, TrialConfig]] = deque()  # (retry at, config): leased elsewhere
    active: list[_Worker] = []
    idle: list[_Worker] = []  # alive, waiting for a deferred trial to become free

    def next_cfg() -> TrialConfig | None:
        if queue:
            return queue.popleft()
        if deferred and deferred[0][0] <= time.perf_counter():
            return deferred.popleft()[1]
        return None

    def feed(w: _Worker) -> None:
        """Give ``w`` a trial, park it while only deferred trials remain, or stop it."""
        cfg = next_cfg()
        if cfg is not None:
            w.assign(cfg)
        elif deferred:
            w.current = None
            active.remove(w)
            idle.append(w)
        else:
            w.stop()
            active.remove(w)

    def replace(dead: _Worker) -> None:
        """A new worker in a dead one's slot, if trials are left (each death consumes one
        trial, so this terminates)."""
        if queue or deferred:
            nw = _Worker(ctx, results, trial_fn, root, dead.env, dead.threads, supersede)
            active.append(nw)
            cfg = next_cfg()
            if cfg is not None:
                nw.assign(cfg)
            else:
                active.remove(nw)
                idle.append(nw)

    try:
        for env in slots[: len(queue)]:
            w = _Worker(ctx, results, trial_fn, root, env, threads, supersede)
            w.assign(queue.popleft())
            active.append(w)
        while active or idle:
            while idle and deferred and deferred[0][0] <= time.perf_counter():
                w = idle.pop()
                active.append(w)
                w.assign(deferred.popleft()[1])
            if not active:  # only deferred trials, every worker waiting for them
                time.sleep(max(0.0, deferred[0][0] - time.perf_counter()) if deferred else 0)
                if not deferred:
                    for w in idle:
                        w.stop()
                    idle.clear()
                continue
            now = time.perf_counter()
            waits = [w.started + trial_timeout - now for w in active
                     if trial_timeout is not None and w.timing()]
            if idle and deferred:
                waits.append(deferred[0][0] - now)
            wait_s = max(0.0, min(waits)) if waits else None
            ready = connection.wait([w.conn for w in active] + [w.proc.sentinel for w in active],
                                    timeout=wait_s)
            for w in list(active):
                if (trial_timeout is not None and w.timing() and not w.conn.poll()
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
                        if kind == "ready":
                            w.ready, w.started = True, time.perf_counter()
                            continue
                        cfg, w.current = w.current, None
                        if not _record(summary, cfg, kind, why, bar):
                            deferred.append((time.perf_counter() + LEASE_RETRY_S, cfg))
                        feed(w)
                        continue
                if w.proc.sentinel in ready or not w.proc.is_alive():
                    w.proc.join()
                    active.remove(w)
                    if w.current is not None:
                        cfg = w.current
                        # It may have stored its record just before dying: then it is done.
                        if cfg.trial_id in completed_ids(results):
                            summary.completed.append(cfg.trial_id)
                            bar.update(cfg.label())
                        else:
                            summary.failed[cfg.trial_id] = (
                                f"worker process exited with code {w.proc.exitcode} while "
                                f"running {cfg.label()} ({cfg.trial_id})")
                            bar.update(cfg.label(), ok=False)
                    replace(w)
    except BaseException:
        for w in active + idle:  # only our own children, by handle
            if w.proc.is_alive():
                w.proc.terminate()
            w.proc.join()
        raise
