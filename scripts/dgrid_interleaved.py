"""Interleaved timing of the dense-d1 grid's inference forward (LeNet conv2: conv 5x5 -> ReLU ->
2x2 max-pool, k = 2.8): shallowkern vs eager vs torch.compile of eager, the same three callables
as benchmarks/test_bench_dgrid.py, but every round times each provider once in turn, so load
drifts hit all three alike (the pytest-benchmark grid times one provider after the other and
moved rows by up to 10 % between runs here). Per width: median time of each provider over the
rounds and the median and 10-90 % range of the per-round ratios eager / ours and compile /
ours; "slower" only where even the 90th percentile of compile / ours (or eager / ours) is
below 1.

    python scripts/dgrid_interleaved.py ROUNDS BATCH D1[,D1...] [--layer conv1|conv2]
                                        [--step] [--out F]

--step times the training step instead (forward + gradients of x, w and b for a fixed random
output gradient, torch.autograd.grad, as the grid's fwdbwd).

Run it alone on the machine (the project's shared VM: under /tmp/quiet.sh). Threads: torch's
default (both cores here), as the grid.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # scripts/_repro.py
from _repro import machine_fields  # noqa: E402
from benchmarks import shapes  # noqa: E402
from benchmarks.test_bench_wide_conv2d import _inputs, eager, fused  # noqa: E402


def run(rounds: int, batch: int, widths: list[int], layer: str, step: bool) -> list[dict]:
    out = []
    for d1 in widths:
        case = shapes.conv2(batch, d1, round(2.8 * d1)) if layer == "conv2" else \
            shapes.conv1(batch, d1)
        x, w, b = (t.detach().requires_grad_(step and t.requires_grad)
                   for t in _inputs(case, torch.device("cpu"), torch.float32))
        torch._dynamo.reset()
        comp = torch.compile(eager, dynamic=False)
        fns = {"shallowkern": fused, "eager": eager, "compiled": comp}
        if step:
            leaves = [t for t in (x, w, b) if t.requires_grad]
            with torch.no_grad():
                gy = torch.randn_like(eager(x, w, b))
            fns = {k: (lambda f: lambda *a: torch.autograd.grad(f(*a), leaves, gy))(f)
                   for k, f in fns.items()}
        times: dict[str, list[float]] = {k: [] for k in fns}
        with torch.set_grad_enabled(step):
            for f in fns.values():  # warm-up: compilation, oneDNN primitives, layout timing
                for _ in range(2):
                    f(x, w, b)
            for _ in range(rounds):
                for k, f in fns.items():
                    t0 = time.perf_counter()
                    f(x, w, b)
                    times[k].append(time.perf_counter() - t0)
        row = {"case": case["name"], "pass": "step" if step else "fwd", "batch": batch, "d1": d1,
               "rounds": rounds,
               **{f"{k}_ms": statistics.median(v) * 1e3 for k, v in times.items()}}
        for base in ("eager", "compiled"):
            r = [tb / ts for tb, ts in zip(times[base], times["shallowkern"])]
            row[f"vs_{base}"] = statistics.median(r)
            q = statistics.quantiles(r, n=10, method="inclusive")
            row[f"vs_{base}_p10"], row[f"vs_{base}_p90"] = q[0], q[-1]
        out.append(row)
        print(f"| {case['name']} | {row['shallowkern_ms']:.2f} | {row['eager_ms']:.2f} | "
              f"{row['compiled_ms']:.2f} | {row['vs_eager']:.2f}x ({row['vs_eager_p10']:.2f}-"
              f"{row['vs_eager_p90']:.2f}) | {row['vs_compiled']:.2f}x "
              f"({row['vs_compiled_p10']:.2f}-{row['vs_compiled_p90']:.2f}) |", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("rounds", type=int)
    ap.add_argument("batch", type=int)
    ap.add_argument("widths")
    ap.add_argument("--layer", default="conv2", choices=("conv1", "conv2"))
    ap.add_argument("--step", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    print("| case | ours ms | eager ms | compiled ms | vs eager (p10-p90) | vs compiled (p10-p90) |")
    print("|---|---|---|---|---|---|")
    rows = run(a.rounds, a.batch, [int(v) for v in a.widths.split(",")], a.layer, a.step)
    if a.out:
        meta = {**machine_fields(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps({**meta, **r}) + "\n")


if __name__ == "__main__":
    main()
