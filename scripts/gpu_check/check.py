"""The GPU device check: one call of about 7 minutes on a bare H200 that answers every GPU question.

    python3 scripts/gpu_check/check.py OUT [--plan first|followup] [--stages a,b] [--skip c]
                                           [--budget 440] [--dry-run [--simulate env=3,build=90]]
    bash scripts/gpu_check.sh OUT            (the same; what the device tool calls)

Budget. The check owns ``--budget`` seconds (default 440, inside the device tool's 480 s call)
and keeps ``RESERVE_S`` of it for bundling. Every stage has a cap; the caps of a plan's required
stages plus the reserve must fit in the budget (checked before anything runs, and in CI), so the
plan cannot overrun even if every stage hits its cap. A stage starts only if at least its
``min_s`` is left and runs for at most ``min(cap, time left)``; optional stages (racecheck, ncu)
start only if their whole cap is left. One stage runs in the background from t = 0 (the Triton
GPU tests: they need no build) and is joined (waited for, then stopped) before the benchmark
slice -- whose timings must not share the GPU -- and before bundling.

Output, written as it goes (at most 4 files, no folder): ``OUT/summary.txt`` (one line per
stage when it ends, then totals: the file to read first), ``OUT/results.json`` (rewritten
atomically after every stage: plan, stages, environment, roofline, test counts, op checks,
sanitizer findings, benchmark rows), ``OUT/rows.jsonl`` (op-check and benchmark rows appended
one by one while their stages run: survives a kill), and at the end ``OUT/gpu_check.tar.gz``
(every stage log and artifact, members at most two folders deep). Work files live outside OUT
until bundled.

Stdlib only: the orchestrator itself must run before anything is built or imported. The GPU
work is in the helper scripts beside this file (env_info, roofline, ops_check, sanitize_calls).
``--dry-run`` runs no command: each stage "takes" its ``--simulate`` seconds (default 0) on a
fake clock, so CI exercises stage selection, budget accounting, summary, results and bundling
without a GPU (tests/scripts/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUDGET_S = 440.0
RESERVE_S = 12.0  # bundling and the final summary
OUT_FILES = ("summary.txt", "results.json", "rows.jsonl", "gpu_check.tar.gz")
NOT_BUNDLED = ("bin",)  # tools the stages borrowed (build_ext.py's ninja), not results


# ---------------------------------------------------------------------------------------------
# plans
# ---------------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One step. ``argv`` is run through ``bash -c`` when it is a string (placeholders
    ``{py}``, ``{work}``, ``{out}``, ``{root}`` are filled in)."""

    name: str
    argv: str
    cap: float
    min_s: float = 5.0
    optional: bool = False        # run only if its whole cap is left
    background: bool = False      # started at t = 0, joined before ``join_before`` / bundling
    needs: tuple[str, ...] = ()   # stages that must have succeeded (else: skipped)
    env: dict = field(default_factory=dict)
    doc: str = ""


PY = "{py}"

# Env shared by all stages: no autotuning (one heuristic config per shape: reproducible and no
# tuning time), results-as-they-go for benchmarks, the measured roofline for % of roofline.
COMMON_ENV = {
    "SHALLOWKERN_TRITON_AUTOTUNE": "0",
    "SHALLOWKERN_BENCH_ROWS": "{out}/rows.jsonl",
    "SHALLOWKERN_BENCH_ROOFLINE": "{work}/roofline.json",
    "PYTHONUNBUFFERED": "1",
}


def _pytest(args: str) -> str:
    return f"{PY} -m pytest -p no:cacheprovider -q -rs {args}"


def _bench_cmd(only: str = "", exclude: str = "lenet_training,laws") -> str:
    # each benchmark file gets an equal share of the stage's time (bench_slice.py); rows reach
    # OUT/rows.jsonl one by one, --benchmark-json at the end of each file adds the histograms
    return (f"{PY} {HERE}/bench_slice.py --deadline {{deadline}} --json-dir {{work}}/bench "
            f"--only '{only}' --exclude '{exclude}'")


def first_plan() -> list[Stage]:
    """The one-call check (issue 13 item 1). Required caps + reserve <= 440 s."""
    return [
        Stage("env", f"{PY} {HERE}/env_info.py {{work}}/env.json", cap=15, min_s=3,
              doc="nvidia-smi, nvcc, torch/triton/pytest versions, tools present"),
        Stage("roofline", f"{PY} {HERE}/roofline.py {{work}}/roofline.json", cap=20, min_s=5,
              doc="copy bandwidth and bf16/fp16/TF32/fp32 matmul rates, measured once"),
        Stage("triton_tests", _pytest("tests/triton "
                                      "$({py} -c 'import xdist' 2>/dev/null && echo -n 8) "
                      "--junitxml={work}/junit_triton.xml"),
              cap=200, background=True,
              doc="Triton kernels on the GPU (no build needed), autotune off"),
        Stage("build", f"{PY} {HERE}/build_ext.py {{work}}", cap=130, min_s=30,
              env={"SHALLOWKERN_CUDA_ARCH": "90a", "MAX_JOBS": "8"},
              doc="shallowkern._C against this machine's torch (CUDA kernels included)"),
        Stage("cuda_tests", _pytest("tests/cuda -x --junitxml={work}/junit_cuda.xml"), cap=40,
              needs=("build",), doc="the CUDA extension's tests"),
        Stage("ops_check", f"{PY} {HERE}/ops_check.py {{work}}/ops.json --rows {{out}}/rows.jsonl"
              " --deadline {deadline}", cap=60, min_s=15,
              doc="every spec'd op on CUDA: routing, fwd+grad vs fp64 (fp32, TF32, fp16, bf16, "
                  "channels_last), torch.compile fullgraph, bitwise repeat"),
        Stage("memcheck", f"{PY} {HERE}/sanitize_calls.py --sanitize memcheck "
              "--log {work}/memcheck_sanitizer.log --deadline {deadline}", cap=55,
              min_s=20,
              env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"},
              doc="compute-sanitizer memcheck over tiny calls of every CUDA and Triton kernel"),
        Stage("bench", _bench_cmd(), cap=100, min_s=30,
              env={"SHALLOWKERN_BENCH_SLICE": "2", "SHALLOWKERN_BENCH_DTYPES": "bf16,fp32",
                   "SHALLOWKERN_BENCH_SECONDS": "0.25",
                   "SHALLOWKERN_BENCH_COMPILE_MODE": "default"},
              doc="2 cases per family, bf16 and fp32 (TF32 off: the Triton-vs-cuDNN route), "
                  "vs eager, compile, vendor; fwd, fwd+bwd"),
        Stage("racecheck", f"{PY} {HERE}/sanitize_calls.py --sanitize racecheck "
              "--log {work}/racecheck_sanitizer.log --cuda-only --deadline {deadline}",
              cap=40, optional=True,
              env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}, doc="shared-memory races, CUDA kernels"),
        Stage("ncu", f"{PY} {HERE}/sanitize_calls.py --ncu {{work}}/ncu", cap=40, optional=True,
              doc="one ncu profile (basic set) per shallowkern kernel"),
    ]


def followup_plan() -> list[Stage]:
    """A second call on the same (warm) machine: more benchmark cases with autotuning (its
    choices saved as a fixed-config table), the training speedup slice, racecheck and ncu."""
    speed = ("--family lenet --d1 64 512 --k 2.8 --seeds 0 --dataset synthetic-50000 "
             "--recipe lab --set epochs=2 --results {work}/speedup.jsonl --no-progress")
    return [
        Stage("env", f"{PY} {HERE}/env_info.py {{work}}/env.json", cap=15, min_s=3),
        Stage("roofline", f"{PY} {HERE}/roofline.py {{work}}/roofline.json", cap=20, min_s=5),
        Stage("build", f"{PY} {HERE}/build_ext.py {{work}}", cap=100, min_s=30,
              env={"SHALLOWKERN_CUDA_ARCH": "90a", "MAX_JOBS": "16"},
              doc="a no-op when the first call's build is still there"),
        Stage("bench_tuned", _bench_cmd(), cap=140, min_s=30,
              env={"SHALLOWKERN_TRITON_AUTOTUNE": "1", "SHALLOWKERN_BENCH_SLICE": "4",
                   "SHALLOWKERN_BENCH_DTYPES": "bf16,fp16,fp32_tf32,fp32",
                   "SHALLOWKERN_BENCH_SECONDS": "0.25",
                   "SHALLOWKERN_BENCH_DUMP_CONFIGS": "{work}/triton_configs.json"},
              doc="4 cases per family, all dtypes, autotuned; the chosen configs are saved"),
        Stage("training", _bench_cmd(only="lenet_training", exclude=""), cap=60,
              min_s=20, env={"SHALLOWKERN_BENCH_SECONDS": "0.5"},
              doc="LeNet training step, shallowkern vs plain PyTorch, same data placement"),
        Stage("speedup", f"{PY} -m shallowkern sweep {speed} && "
              f"{PY} -m shallowkern sweep {speed} --impl plain && "
              f"{PY} -m shallowkern report --results {{work}}/speedup.jsonl", cap=90, min_s=30,
              needs=("build",), doc="issue 4's sweep speedup, fused vs --impl plain"),
        Stage("racecheck", f"{PY} {HERE}/sanitize_calls.py --sanitize racecheck "
              "--log {work}/racecheck_sanitizer.log --cuda-only --deadline {deadline}",
              cap=40, optional=True,
              env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}),
        Stage("ncu", f"{PY} {HERE}/sanitize_calls.py --ncu {{work}}/ncu", cap=40, optional=True),
    ]


# Background stages are joined (waited for, then stopped) before these: timings and profilers
# want the GPU alone.
JOIN_BEFORE = ("bench", "bench_tuned", "training", "racecheck", "ncu")

PLANS: dict[str, Callable[[], list[Stage]]] = {"first": first_plan, "followup": followup_plan}


def required_caps(plan: list[Stage]) -> float:
    """Seconds the plan may take in the worst case, without its optional stages (the background
    stage runs alongside, so only the part of it after the last foreground stage counts: none)."""
    return sum(s.cap for s in plan if not s.optional and not s.background)


def validate(plan: list[Stage], budget: float) -> None:
    names = [s.name for s in plan]
    if len(set(names)) != len(names):
        raise ValueError(f"plan: stage names repeat: {names}")
    for s in plan:
        if s.cap <= 0 or s.min_s < 0 or s.min_s > s.cap:
            raise ValueError(f"plan: stage {s.name}: need 0 <= min_s <= cap, cap > 0")
        for n in s.needs:
            if n not in names or names.index(n) > names.index(s.name):
                raise ValueError(f"plan: stage {s.name} needs {n}, which does not run before it")
        if s.background and s.cap > budget - RESERVE_S:
            raise ValueError(f"plan: background stage {s.name} cap {s.cap} > budget - reserve")
    total = required_caps(plan) + RESERVE_S
    if total > budget:
        raise ValueError(f"plan: required stage caps + reserve = {total:.0f} s > budget "
                         f"{budget:.0f} s")
    # a background stage may hold the GPU until its cap; what runs after the join must still fit
    fg = [s for s in plan if not s.background]
    first_join = next((i for i, s in enumerate(fg) if s.name in JOIN_BEFORE), len(fg))
    after = sum(s.cap for s in fg[first_join:] if not s.optional)
    for b in (s for s in plan if s.background):
        if b.cap + after + RESERVE_S > budget:
            raise ValueError(f"plan: background stage {b.name} (cap {b.cap:.0f} s) + the "
                             f"required stages after its join ({after:.0f} s) + reserve > "
                             f"budget {budget:.0f} s")


# ---------------------------------------------------------------------------------------------
# clocks and running
# ---------------------------------------------------------------------------------------------
class Clock:
    def now(self) -> float:
        return time.monotonic()


class FakeClock(Clock):
    """Dry runs: time advances only when a simulated stage "runs"."""

    def __init__(self):
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@dataclass
class Result:
    name: str
    status: str          # ok | failed | timeout | skipped | dry-run | running
    rc: int | None
    seconds: float
    cap: float
    limit: float
    started_at: float    # seconds since the check began
    note: str = ""
    log: str = ""


def _kill(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Check:
    def __init__(self, out: Path, plan: list[Stage], budget: float = BUDGET_S,
                 dry_run: bool = False, simulate: dict[str, float] | None = None,
                 python: str = sys.executable, work: Path | None = None, plan_name: str = ""):
        validate(plan, budget)
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        stray = [p.name for p in self.out.iterdir() if p.name not in OUT_FILES]
        if stray:
            raise ValueError(f"OUT {out} must be empty or hold only {OUT_FILES}; found {stray}")
        for name in OUT_FILES:
            (self.out / name).unlink(missing_ok=True)
        self.plan, self.budget, self.dry_run = plan, budget, dry_run
        self.simulate = simulate or {}
        self.clock: Clock = FakeClock() if dry_run else Clock()
        self.t0 = self.clock.now()
        self.python = python
        self.work = work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.results: list[Result] = []
        self.ended: dict[str, float] = {}
        self.bg: dict[str, tuple] = {}  # name -> (stage, proc, started, log, limit)
        self.current: subprocess.Popen | None = None  # the foreground stage's process
        self.doc = dict(meta=dict(plan=plan_name, budget_s=budget, reserve_s=RESERVE_S,
                                  dry_run=dry_run, started=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                         time.gmtime()),
                                  commit=_git("rev-parse", "HEAD"),
                                  dirty_files=len((_git("status", "--porcelain") or "")
                                                  .splitlines()),
                                  required_caps_s=required_caps(plan),
                                  stages_planned=[s.name for s in plan]),
                        stages=[])
        self.summary = self.out / "summary.txt"
        self._line(f"gpu_check plan={plan_name or '?'} budget={budget:.0f}s "
                   f"(required caps {required_caps(plan):.0f}s + reserve {RESERVE_S:.0f}s) "
                   f"commit={(self.doc['meta']['commit'] or '?')[:10]}"
                   f"{' DRY-RUN' if dry_run else ''}", first=True)
        (self.out / "rows.jsonl").touch()
        self._write_results()

    # --- bookkeeping -----------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.clock.now() - self.t0

    def left(self) -> float:
        """Seconds a stage may still use (the reserve for bundling excluded)."""
        return self.budget - RESERVE_S - self.elapsed()

    def _line(self, text: str, first: bool = False) -> None:
        with open(self.summary, "w" if first else "a") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        print(text, flush=True)

    def _write_results(self) -> None:
        self.doc["stages"] = [asdict(r) for r in self.results]
        self.doc["meta"]["elapsed_s"] = round(self.elapsed(), 1)
        tmp = self.out / ".results.json.tmp"
        tmp.write_text(json.dumps(self.doc, indent=1, default=str))
        os.replace(tmp, self.out / "results.json")

    def _record(self, r: Result) -> None:
        self._collect(r)  # first: it adds the stage's key numbers to its note
        self.results.append(r)
        self._line(f"[t={r.started_at:4.0f}s] {r.name:<13} {r.status:<8} "
                   f"rc={'-' if r.rc is None else r.rc:<3} {r.seconds:5.0f}s/{r.limit:.0f}s"
                   f"{'  ' + r.note if r.note else ''}")
        self._write_results()

    def status_of(self, name: str) -> str | None:
        for r in self.results:
            if r.name == name:
                return r.status
        return None

    # --- running ---------------------------------------------------------------------------
    def _fill(self, text: str, limit: float) -> str:
        deadline = time.time() + limit - 3  # wall clock, for helpers that stop themselves
        return (text.replace("{py}", shlex.quote(self.python))
                .replace("{work}", str(self.work)).replace("{out}", str(self.out))
                .replace("{root}", str(ROOT)).replace("{deadline}", f"{deadline:.0f}"))

    def _env(self, stage: Stage, limit: float) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"]
                                         if env.get("PYTHONPATH") else "")
        for k, v in {**COMMON_ENV, **stage.env}.items():
            env[k] = self._fill(v, limit)
        env.pop("TRITON_INTERPRET", None)
        return env

    def _start(self, stage: Stage, limit: float):
        log = self.work / f"{stage.name}.log"
        cmd = self._fill(stage.argv, limit)
        with open(log, "w") as f:
            f.write(f"$ {cmd}\n")
        if self.dry_run:
            return None, log
        f = open(log, "a")
        proc = subprocess.Popen(["bash", "-c", cmd], cwd=ROOT, env=self._env(stage, limit),
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        f.close()
        return proc, log

    def _finish(self, stage: Stage, proc, log: Path, started: float, limit: float,
                wait: float) -> Result:
        """Wait up to ``wait`` s for ``proc`` (simulated in a dry run), stop it if needed."""
        if self.dry_run:
            sim = self.simulate.get(stage.name, 0.0)
            ran_for = self.elapsed() - started  # background stages: time already passed
            need = max(0.0, min(sim, limit) - ran_for)
            step = min(need, wait)
            self.clock.advance(step)
            done = ran_for + step >= min(sim, limit)
            if not done:
                status, rc = "timeout", None
            elif sim > limit:
                status, rc = "timeout", None
            else:
                status, rc = "dry-run", 0
            secs = min(sim, limit) if done else self.elapsed() - started
            return Result(stage.name, status, rc, round(secs, 1), stage.cap, round(limit, 1),
                          round(started, 1), "simulated" if status == "dry-run" else
                          "simulated: over its limit", str(log.name))
        try:
            rc = proc.wait(timeout=max(wait, 0.1))
            status = "ok" if rc == 0 else "failed"
            note = ""
        except subprocess.TimeoutExpired:
            _kill(proc)
            rc, status, note = proc.returncode, "timeout", f"stopped after {wait:.0f}s"
        secs = self.ended.get(stage.name, self.elapsed()) - started
        tail = _tail(log, 1)
        if status == "failed" and tail:
            note = tail[:160]
        return Result(stage.name, status, rc, round(secs, 1), stage.cap, round(limit, 1),
                      round(started, 1), note, str(log.name))

    def _skip(self, stage: Stage, why: str) -> None:
        self._record(Result(stage.name, "skipped", None, 0.0, stage.cap, 0.0,
                            round(self.elapsed(), 1), why))

    def run_stage(self, stage: Stage) -> None:
        missing = [n for n in stage.needs if self.status_of(n) not in ("ok", "dry-run")]
        if missing:
            return self._skip(stage, f"needs {', '.join(missing)}")
        left = self.left()
        if stage.optional and left < stage.cap:
            return self._skip(stage, f"optional: {left:.0f}s left < cap {stage.cap:.0f}s")
        if left < stage.min_s:
            return self._skip(stage, f"budget: {left:.0f}s left < {stage.min_s:.0f}s needed")
        limit = min(stage.cap, left)
        started = self.elapsed()
        proc, log = self._start(stage, limit)
        self.current = None if stage.background else proc
        if stage.background:
            self.bg[stage.name] = (stage, proc, started, log, limit)
            if proc is not None:  # note when it ends, for its duration in the summary
                threading.Thread(target=self._note_end, args=(stage.name, proc),
                                 daemon=True).start()
            self._line(f"[t={started:4.0f}s] {stage.name:<13} started in the background "
                       f"(cap {limit:.0f}s)")
            return None
        self._record(self._finish(stage, proc, log, started, limit, limit))

    def _note_end(self, name: str, proc: subprocess.Popen) -> None:
        proc.wait()
        self.ended[name] = self.clock.now() - self.t0

    def join(self, name: str) -> None:
        """Wait for a background stage (at most until its cap or the budget), then record it."""
        if name not in self.bg:
            return
        stage, proc, started, log, limit = self.bg.pop(name)
        wait = max(0.0, min(started + limit - self.elapsed(), self.left()))
        self._record(self._finish(stage, proc, log, started, limit, wait))

    def run(self) -> int:
        """Every stage, then the bundle -- also when the check itself is interrupted (SIGTERM,
        Ctrl-C, an error of its own): running stages are stopped and what exists is bundled."""
        order = [s for s in self.plan if s.background] + [s for s in self.plan
                                                          if not s.background]

        def interrupted(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, interrupted) \
            if threading.current_thread() is threading.main_thread() else None
        try:
            for stage in order:
                if stage.name in JOIN_BEFORE:
                    for name in list(self.bg):  # timings and tools want the GPU alone
                        self.join(name)
                self.run_stage(stage)
            for name in list(self.bg):
                self.join(name)
        except BaseException as exc:  # noqa: BLE001 - bundle whatever happened
            for proc in [self.current] + [b[1] for b in self.bg.values()]:
                if proc is not None and proc.poll() is None:
                    _kill(proc)
            self._line(f"[t={self.elapsed():4.0f}s] interrupted: {type(exc).__name__}: {exc}")
            self.bundle()
            return 3
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return self.bundle()

    # --- results ---------------------------------------------------------------------------
    def _collect(self, r: Result) -> None:
        """Fold a finished stage's artifacts into results.json."""
        w = self.work
        try:
            if r.name == "env" and (w / "env.json").exists():
                self.doc["env"] = json.loads((w / "env.json").read_text())
            elif r.name == "roofline" and (w / "roofline.json").exists():
                self.doc["roofline"] = json.loads((w / "roofline.json").read_text())
            elif r.name.endswith("_tests"):
                junit = w / f"junit_{r.name.removesuffix('_tests')}.xml"
                if junit.exists():
                    self.doc.setdefault("tests", {})[r.name] = junit_counts(junit)
                    c = self.doc["tests"][r.name]
                    r.note = (f"{c['passed']} passed, {c['failed']} failed, {c['errors']} errors, "
                              f"{c['skipped']} skipped" + (f"; {r.note}" if r.note else ""))
            elif r.name == "ops_check" and (w / "ops.json").exists():
                ops = json.loads((w / "ops.json").read_text())
                self.doc["ops_check"] = ops
                r.note = ops.get("summary", r.note)
            elif r.name in ("memcheck", "racecheck") and (w / f"{r.name}_sanitizer.log").exists():
                found = sanitizer_errors((w / f"{r.name}_sanitizer.log").read_text(
                    errors="replace"))
                self.doc.setdefault("sanitizer", {})[r.name] = found
                said = (f"{found['errors']} errors" if found["summary_found"]
                        else "no ERROR SUMMARY in the sanitizer log")
                r.note = said + (f"; {r.note}" if r.note else "")
            elif r.name.startswith("bench") or r.name == "training":
                rows = [x for x in read_rows(self.out / "rows.jsonl")
                        if x.get("extra_info", {}).get("provider")]
                self.doc["bench_rows"] = len(rows)
                r.note = f"{len(rows)} benchmark rows so far" + (f"; {r.note}" if r.note else "")
            if (w / "triton_configs.json").exists():
                self.doc["triton_configs"] = json.loads((w / "triton_configs.json").read_text())
        except (OSError, ValueError) as exc:  # a half-written artifact: say so, keep going
            r.note = f"{r.note}; artifact unreadable: {exc}".strip("; ")

    def bundle(self) -> int:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        tar = self.out / "gpu_check.tar.gz"
        with tarfile.open(tar, "w:gz") as tf:
            for p in sorted(self.work.rglob("*")):
                rel = p.relative_to(self.work)
                if p.is_file() and rel.parts[0] not in NOT_BUNDLED:
                    tf.add(p, arcname=bundle_name(rel))
        bad = [r.name for r in self.results if r.status in ("failed", "timeout")]
        self.doc["meta"]["status_counts"] = counts
        self._write_results()
        self._line(f"total {self.elapsed():.0f}s of {self.budget:.0f}s; "
                   + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                   + (f"; failed/timeout: {', '.join(bad)}" if bad else "")
                   + f"; files: {', '.join(p.name for p in sorted(self.out.iterdir()))}")
        if not self.dry_run:
            shutil.rmtree(self.work, ignore_errors=True)
        return 1 if bad else 0


# ---------------------------------------------------------------------------------------------
# parsing helpers (used in tests too)
# ---------------------------------------------------------------------------------------------
def bundle_name(rel: Path) -> str:
    """Name inside the tarball: under ``gpu_check/``, at most two folders deep (deeper paths are
    flattened into the file name)."""
    parts = rel.parts
    if len(parts) > 2:
        parts = (parts[0], "__".join(parts[1:]))
    return str(Path("gpu_check", *parts))


def junit_counts(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    c = dict(tests=0, failed=0, errors=0, skipped=0)
    failed_names = []
    for s in suites:
        c["tests"] += int(s.get("tests", 0))
        c["failed"] += int(s.get("failures", 0))
        c["errors"] += int(s.get("errors", 0))
        c["skipped"] += int(s.get("skipped", 0))
        for case in s.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed_names.append(f"{case.get('classname')}::{case.get('name')}")
    c["passed"] = c["tests"] - c["failed"] - c["errors"] - c["skipped"]
    c["failing"] = failed_names[:50]
    return c


def sanitizer_errors(log: str) -> dict:
    m = re.search(r"ERROR SUMMARY: (\d+) error", log)
    kinds = re.findall(r"========= (Invalid [^\n]*|Race [^\n]*|[A-Z][a-z]+ (?:hazard|error)"
                       r"[^\n]*)", log)
    return dict(errors=int(m.group(1)) if m else (len(kinds) or None),
                summary_found=bool(m), first=kinds[:10])


def read_rows(path: Path) -> list[dict]:
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _tail(path: Path, n: int) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def select(plan: list[Stage], stages: str | None, skip: str | None) -> list[Stage]:
    names = [s.name for s in plan]
    want = [x for x in (stages or "").split(",") if x]
    drop = [x for x in (skip or "").split(",") if x]
    unknown = [x for x in want + drop if x not in names]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; this plan has {names}")
    return [s for s in plan if (not want or s.name in want) and s.name not in drop]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output folder (empty; the device tool's $OUT)")
    ap.add_argument("--plan", choices=sorted(PLANS), default="first")
    ap.add_argument("--stages", help="comma-separated subset of the plan's stages")
    ap.add_argument("--skip", help="comma-separated stages to leave out")
    ap.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S",
                                                                          BUDGET_S)))
    ap.add_argument("--dry-run", action="store_true", help="run nothing; fake clock")
    ap.add_argument("--simulate", default="", help="dry run: NAME=SECONDS,... per stage")
    ap.add_argument("--list", action="store_true", help="print the plan and exit")
    ap.add_argument("--python", default=os.environ.get("PYTHON", sys.executable))
    a = ap.parse_args(argv)
    try:
        plan = select(PLANS[a.plan](), a.stages, a.skip)
        if a.list:
            validate(plan, a.budget)
            for s in plan:
                kind = "background" if s.background else "optional" if s.optional else "required"
                print(f"{s.name:<13} cap {s.cap:4.0f}s  {kind:<10} {s.doc}")
            print(f"required caps {required_caps(plan):.0f}s + reserve {RESERVE_S:.0f}s "
                  f"<= budget {a.budget:.0f}s")
            return 0
        simulate = {}
        for item in filter(None, a.simulate.split(",")):
            k, _, v = item.partition("=")
            simulate[k] = float(v)
        check = Check(Path(a.out), plan, a.budget, a.dry_run, simulate, a.python,
                      plan_name=a.plan)
    except ValueError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    return check.run()


if __name__ == "__main__":
    sys.exit(main())
