"""The device check's benchmark slice: every per-op benchmark file gets an equal share of the
time left, so one slow family cannot starve the others.

    python3 scripts/gpu_check/bench_slice.py --deadline EPOCH --json-dir DIR
                                             [--exclude lenet_training,laws] [--only a,b]

Each file runs as its own ``pytest`` (``--benchmark-json=DIR/bench_<stem>.json``) under a
timeout of (deadline - now) / (files left); its rows reach SHALLOWKERN_BENCH_ROWS one by one
as they finish (benchmarks/common.py), so a file stopped at its share still returns what it
measured. Which cases and dtypes run is set by SHALLOWKERN_BENCH_SLICE / _DTYPES.
Exit status: 0 if every file passed, else 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench_files(only: list[str], exclude: list[str]) -> list[Path]:
    files = sorted((ROOT / "benchmarks").glob("test_bench_*.py"))
    stem = lambda p: p.stem.removeprefix("test_bench_")  # noqa: E731
    files = [p for p in files if stem(p) not in exclude]
    if only:
        files = [p for p in files if stem(p) in only]
    # the original family first: its numbers are the ones most asked for
    return sorted(files, key=lambda p: stem(p) != "wide_conv2d")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deadline", type=float, required=True, help="wall clock (epoch seconds)")
    ap.add_argument("--json-dir", type=Path, required=True)
    ap.add_argument("--exclude", default="lenet_training,laws")
    ap.add_argument("--only", default="")
    ap.add_argument("--list", action="store_true")
    a, extra = ap.parse_known_args(argv)
    files = bench_files([x for x in a.only.split(",") if x], [x for x in a.exclude.split(",") if x])
    if a.list:
        print("\n".join(str(f.relative_to(ROOT)) for f in files))
        return 0
    a.json_dir.mkdir(parents=True, exist_ok=True)
    bad = 0
    for i, f in enumerate(files):
        share = (a.deadline - time.time()) / (len(files) - i)
        if share < 5:
            print(f"{f.name}: skipped ({share:.0f}s share left)", flush=True)
            bad += 1
            continue
        # the GPU machine may lack pytest-benchmark: benchmarks/conftest.py then supplies a
        # stand-in fixture, and the rows file is the only output
        json_arg = ([f"--benchmark-json={a.json_dir / f'bench_{f.stem}.json'}"]
                    if importlib.util.find_spec("pytest_benchmark") else [])
        argv = [sys.executable, "-m", "pytest", str(f), "-q", "-p", "no:cacheprovider",
                *json_arg, *extra]
        t0 = time.time()
        proc = subprocess.Popen(argv, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=share)
            status = "ok" if rc == 0 else f"rc={rc}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, status = None, f"stopped at its {share:.0f}s share"
        bad += rc != 0
        print(f"{f.name}: {status} ({time.time() - t0:.0f}s)", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
