"""The dense d1 grid (issue 15): generalized LeNet conv1 and conv2 at every sqrt(2) step of d1
from 4 to 1024 (d2 = round(2.8 * d1)), batch 32 and 100, forward and training step (forward +
backward), shallowkern vs eager (conv -> ReLU -> 2x2 max-pool) vs torch.compile of eager.

The question it answers: is there a width where shallowkern is slower than what a user would
otherwise run? Same providers and work counts as benchmarks/test_bench_wide_conv2d.py (imported,
so the two cannot drift); only the shapes differ. Grid: 17 widths x 2 batches x 2 layers = 68
cases; a full CPU run takes long on 2 cores, so slice it with -k (e.g. ``-k "n100 and conv2"``)
or SHALLOWKERN_BENCH_SLICE, or with SHALLOWKERN_DGRID_D1=4,6,8 / SHALLOWKERN_DGRID_N=100 (keep
only these widths / batches). Results: docs/study.md, benchmarks/results/dgrid_*.json.

The compiled provider is a fresh static-shape ``torch.compile`` per case (after a dynamo reset):
one shared compiled function would turn dynamic after the second shape and fall back to eager
once dynamo's recompile limit (8) is hit, a weaker baseline than a user compiling one model.
"""

from __future__ import annotations

import os

import torch

from benchmarks import shapes
from benchmarks.common import OpBench, compile_mode
from benchmarks.test_bench_wide_conv2d import _inputs, eager, flops, fused, min_flops, nbytes

D1_GRID = (4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, 1024)
BATCHES = (32, 100)
K = 2.8


def _only(env: str, values: tuple[int, ...]) -> tuple[int, ...]:
    keep = [int(v) for v in os.environ.get(env, "").split(",") if v.strip()]
    return tuple(v for v in values if v in keep) if keep else values


def cases() -> list[dict]:
    out = []
    for n in _only("SHALLOWKERN_DGRID_N", BATCHES):
        for d1 in _only("SHALLOWKERN_DGRID_D1", D1_GRID):
            out.append(shapes.conv2(n, d1, round(K * d1)))
            out.append(shapes.conv1(n, d1))
    return out


def _compiled(case, dev, dtype):
    torch._dynamo.reset()
    return torch.compile(eager, mode=compile_mode(dev), dynamic=False), _inputs(case, dev, dtype)


BENCH = OpBench(
    op="wide_conv2d",
    cases=cases(),
    providers={  # compiled last (slow to warm)
        "shallowkern": lambda case, dev, dtype: (fused, _inputs(case, dev, dtype)),
        "eager": lambda case, dev, dtype: (eager, _inputs(case, dev, dtype)),
        "compiled": _compiled,
    },
    dtypes=("fp32",),
    flops=flops, min_flops=min_flops, nbytes=nbytes,
    slice_cases=("conv2_n100_d16x45", "conv2_n100_d128x358", "conv1_n100_d16"),
)
test_dgrid = BENCH.test()
