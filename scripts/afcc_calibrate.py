"""Measure where the AFCC block-sparse CPU paths beat the dense conv (one thread, fp32).

For each VGG-11* layer shape and mask (label-clustered at densities 0.5..0.05, multi-label
clustered at 0.5..0.875, and the CIFAR-10 AFCC masks of ``results/afcc``, at their own width
0.125 and replicated to width 1), times the dense conv with the masked weight (oneDNN), the C++
GEMM kernel and the oneDNN sub-convs, forward and input+weight gradients, interleaved, minimum
of the rounds of thread CPU time (a 2-core machine shared with other jobs: CPU time is what a
preempted run does not inflate). Also oneDNN's conv rate by channel count (the cost model's
CONV_GFLOPS). Writes JSON; run it through /tmp/quiet.sh in pieces (``--part``).

    OMP_NUM_THREADS=1 python scripts/afcc_calibrate.py --part rates --out F.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.test_bench_afcc_conv2d import MASK_SETS, SHAPES, make_mask  # noqa: E402
from shallowkern import _knobs  # noqa: E402

A = importlib.import_module("shallowkern.ops.afcc_conv2d")


def cpu_ms(fns: dict, rounds: int) -> dict:
    """Min thread CPU time (ms) per fn, the fns interleaved round by round."""
    for f in fns.values():
        f()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.thread_time()
            f()
            best[k] = min(best[k], time.thread_time() - t)
    return {k: round(v * 1e3, 4) for k, v in best.items()}


def rates(rounds):
    out = []
    for m in (8, 16, 32, 64, 128, 256, 512):
        for hw, n in ((4, 64), (2, 128), (8, 16)):
            x, w = torch.randn(n, m, hw, hw), torch.randn(m, m, 3, 3)
            t = cpu_ms({"conv": lambda: F.conv2d(x, w, None, 1, 1)}, rounds)["conv"]
            fl = 2 * n * m * m * 9 * hw * hw
            out.append(dict(channels=m, hw=hw, n=n, ms=t, gflops=round(fl / t / 1e6, 1)))
            print(out[-1], flush=True)
    return out


def paths(shape_names, rounds):
    out = []
    for sname, n, c, k, hw in SHAPES:
        if shape_names and sname not in shape_names:
            continue
        for mname in MASK_SETS:
            m = make_mask(mname, sname, k, c)
            if m is None:
                continue
            x, w = torch.randn(n, c, hw, hw), torch.randn(k, c, 3, 3)
            gy = torch.randn(n, k, hw, hw)
            plan = A.block_plan(m)
            mw = lambda: w * m[:, :, None, None]  # noqa: E731

            def dense_bwd():
                torch.ops.aten.convolution_backward(gy, x, mw(), None, [1, 1], [1, 1], [1, 1],
                                                    False, [0, 0], 1, [True, True, False])

            fns = {"dense_fwd": lambda: F.conv2d(x, mw(), None, 1, 1), "dense_bwd": dense_bwd}
            for path in ("gemm", "subconv"):
                def fwd(path=path):
                    with _knobs.override({"afcc_conv2d.cpu_path": path}):
                        A._forward("native", x, w, m, None, [1, 1], [1, 1], [1, 1])

                def bwd(path=path):
                    with _knobs.override({"afcc_conv2d.cpu_path": path}):
                        A.afcc_conv2d_backward_op(gy, x, w, m, [1, 1], [1, 1], [1, 1],
                                                  [True, True, False], "native")
                fns[f"{path}_fwd"], fns[f"{path}_bwd"] = fwd, bwd
            t = cpu_ms(fns, rounds)
            model = {p: {k2: round(v * 1e3, 4) for k2, v in A.cpu_path(
                x, w, m, (1, 1), (1, 1), (1, 1), backward=(p == "bwd"))[1].items()}
                for p in ("fwd", "bwd")}
            choice = {p: A.cpu_path(x, w, m, (1, 1), (1, 1), (1, 1), backward=(p == "bwd"))[0]
                      for p in ("fwd", "bwd")}
            row = dict(shape=sname, n=n, c=c, k=k, hw=hw, mask=mname,
                       density=round(float(m.float().mean()), 4),
                       executed=round(plan.executed_fraction, 4), plan=plan.describe(),
                       sub_convs=len(A._subconv.sub_convs(plan, m)), ms=t, model_ms=model,
                       choice=choice)
            out.append(row)
            print(json.dumps(row), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("rates", "paths"), required=True)
    ap.add_argument("--shapes", nargs="*", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    load = open("/proc/loadavg").read().split()[:3]
    rows = rates(a.rounds) if a.part == "rates" else paths(a.shapes, a.rounds)
    rec = dict(machine=f"{platform.processor() or platform.machine()}, 2-core AMD EPYC Zen 4 VM",
               threads=1, torch=torch.__version__, load_before=load,
               load_after=open("/proc/loadavg").read().split()[:3],
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), rows=rows)
    old = json.loads(a.out.read_text()) if a.out.exists() else {}
    old[a.part + ("/" + ",".join(a.shapes) if a.shapes else "")] = rec
    a.out.write_text(json.dumps(old, indent=1))


if __name__ == "__main__":
    main()
