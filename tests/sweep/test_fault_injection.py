"""Fault injection: SIGKILL sweep drivers at random moments, alone or with their whole process
group, while a second driver works on the same results file; then resume. Every trial must be
stored exactly once, none lost, and no worker may outlive its killed driver.

Drivers are forked from this (already imported) test process, so a restart costs milliseconds
and the kills land in every phase: start-up, leasing, mid-trial, mid-append, between trials.
Slot 0 runs its trials in the driver (``workers=0``); slot 1 runs them in a spawned worker, so
killing that driver alone leaves a worker that must die with it (PR_SET_PDEATHSIG) -- the
failure of issue 9 item 4, where orphaned workers appended trials that the resumed sweep ran
again.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from shallowkern.sweep import run_sweep
from shallowkern.sweep.scheduler import lease_dir
from shallowkern.sweep.store import load_results

from . import _fault_helpers as fh

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="needs Linux (fork, /proc, PR_SET_PDEATHSIG)"),
]

N_TRIALS = 600
MIN_KILLS = 22
KILL_PHASE_S = 150.0  # give up starting new drivers after this long (the test then fails)
# Stop killing once this share of the trials is stored, so the resume always has work left
# (a quiet machine once finished all the trials inside the kill phase).
STOP_AT = 0.8


def _stored(results: Path) -> int:
    """Lines appended to the results file so far (a cheap upper bound on stored trials)."""
    try:
        with open(results, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    except FileNotFoundError:
        return 0


def _fork_driver(results: Path, workers: int) -> int:
    """A sweep driver in its own process group, forked from this process."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 70
        try:
            os.setpgid(0, 0)
            summary = run_sweep(fh.grid(N_TRIALS), results, workers=workers,
                                trial_fn=fh.sleepy_trial, progress=False)
            code = 0 if summary.ok else 1
        finally:
            os._exit(code)
    try:
        os.setpgid(pid, pid)  # both sides set it: no window where a killpg misses the child
    except (PermissionError, ProcessLookupError):
        pass  # the child already did (and may have exec'd nothing: fine) or already exited
    return pid


def _live_members(pgid: int) -> list[int]:
    """Pids of the non-zombie processes of process group ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(entry))
    return out


def _kill(pid: int, group: bool) -> bool:
    """SIGKILL the driver (or its group) and reap it; False if it had already exited."""
    done, _ = os.waitpid(pid, os.WNOHANG)
    if done:
        return False
    if group:
        os.killpg(pid, signal.SIGKILL)
    else:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return True


def test_random_sigkills_then_resume_store_every_trial_exactly_once(tmp_path):
    rng = random.Random(int(os.environ.get("SHALLOWKERN_FAULT_SEED", "9")))
    results = tmp_path / "r.jsonl"
    t_end = time.monotonic() + KILL_PHASE_S
    # slot -> (workers, pid, kill at); slot 0 inline, slot 1 with a spawned worker
    slots = {0: [0, None, 0.0], 1: [1, None, 0.0]}
    kills = Counter()
    orphan_groups: list[int] = []  # groups of drivers killed alone: must empty by themselves
    while (sum(kills.values()) < MIN_KILLS and time.monotonic() < t_end
           and _stored(results) < STOP_AT * N_TRIALS):
        now = time.monotonic()
        for slot, state in slots.items():
            workers, pid, kill_at = state
            if pid is None:
                # slot 1 needs seconds to start its worker (it imports torch): let it live longer
                life = rng.uniform(0.05, 1.0) if slot == 0 else rng.uniform(1.0, 6.0)
                state[1], state[2] = _fork_driver(results, workers), now + life
            elif now >= kill_at:
                group = slot == 0 and rng.random() < 0.5
                if _kill(pid, group):
                    kills["group" if group else ("driver" if slot == 0 else "driver+worker")] += 1
                    if not group:
                        orphan_groups.append(pid)
                state[1] = None
        time.sleep(0.01)
    for state in slots.values():  # stop the last two without counting them
        if state[1] is not None:
            _kill(state[1], group=True)
    n_kills = sum(kills.values())
    assert n_kills >= MIN_KILLS, f"only {n_kills} kills in {KILL_PHASE_S} s: {dict(kills)}"
    assert kills["driver+worker"] >= 1 and kills["group"] >= 5, dict(kills)

    # Workers die with their driver: no group of a driver killed alone keeps a live process.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_live_members(g) for g in orphan_groups):
        time.sleep(0.1)
    alive = {g: _live_members(g) for g in orphan_groups if _live_members(g)}
    for pids in alive.values():  # never leave them behind, whatever the outcome
        for p in pids:
            os.kill(p, signal.SIGKILL)
    assert not alive, f"workers outlived their SIGKILLed driver: {alive}"

    before = load_results(results) if results.exists() else None
    final = run_sweep(fh.grid(N_TRIALS), results, workers=0, trial_fn=fh.sleepy_trial,
                      progress=False)
    assert final.ok, final.describe()
    # leases left by killed holders are cleared at the end of a sweep
    assert sorted(os.listdir(lease_dir(results))) == ["driver.lock"]

    res = load_results(results)
    ids = Counter(r["trial_id"] for r in res.records + res.duplicates)
    expected = {c.trial_id for c in fh.grid(N_TRIALS)}
    assert set(ids) == expected, "lost trials"
    assert max(ids.values()) == 1, f"doubled trials: {[t for t, n in ids.items() if n > 1]}"
    assert not [p for p in res.problems if p.kind != "invalid"]
    # A kill inside write(2) may leave a torn line (then the trial ran again); never more
    # torn lines than kills, and every torn line is a skipped, reported problem.
    assert len(res.problems) <= n_kills
    done_before = len(before.records) if before else 0
    print(f"{n_kills} SIGKILLs {dict(kills)}; {done_before}/{N_TRIALS} trials done before the "
          f"resume, {len(final.completed)} by it; {len(res.problems)} torn line(s)")
    assert 0 < done_before < N_TRIALS, "the kills never interrupted a sweep with work left"


def test_two_drivers_on_one_file_split_the_trials(tmp_path):
    """Issue 9 item 4: two sweeps on one results file both ran every trial. Now they lease
    trials from each other: every trial once, and both drivers return complete."""
    results = tmp_path / "r.jsonl"
    n = 40
    pids = [0, 0]
    for i in range(2):
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                s = run_sweep(fh.grid(n), results, workers=0, trial_fn=fh.sleepy_trial,
                              progress=False)
                (tmp_path / f"summary{i}").write_text(
                    f"{len(s.completed)} {s.skipped} {len(s.done_elsewhere)} {len(s.failed)}")
                code = 0
            finally:
                os._exit(code)
        pids[i] = pid
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    res = load_results(results)
    assert not res.problems and len(res.records) == n
    by = Counter(r["ran_by"]["pid"] for r in res.records)
    assert set(by) == set(pids), f"one driver ran everything: {by}"
    ran = [tuple(map(int, (tmp_path / f"summary{i}").read_text().split())) for i in range(2)]
    assert sum(r[0] for r in ran) == n and all(r[3] == 0 for r in ran)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


def test_ctrl_c_while_workers_start_prints_no_worker_traceback(tmp_path):
    """Issue 9 item 6: Ctrl-C during worker start-up printed 30-60 lines (every worker's
    KeyboardInterrupt inside its imports). Workers now start with SIGINT ignored; only the
    driver sees it (the CLI turns that into one line), and it stops its workers."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    # A terminal's process gets SIGINT with the default action; a background job of a
    # non-interactive shell (e.g. `bash .ci/run &`) starts with it ignored, and Python then
    # installs no KeyboardInterrupt handler. Restore the terminal's case in the child.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.sweep._fault_helpers", str(tmp_path / "r.jsonl"), "50",
         "2"], cwd=repo, start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_children(proc.pid)) >= 2, "the driver never started its workers"
        time.sleep(0.3)  # the workers are importing torch now
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "KeyboardInterrupt" in err  # the driver's, for the CLI to print as one line
    assert err.count("Traceback") == 1 and "spawn_main" not in err, err
    deadline = time.monotonic() + 20
    while _live_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _live_members(proc.pid), "workers outlived the interrupted driver"
