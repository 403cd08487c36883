"""multi_delay_linear: the batched layer (one GEMM over the M delays + one scatter-add) vs the loops
and convolutions PyTorch users write.

Providers, each its own benchmark on the same seeded inputs (benchmarks/common.py):
  shallowkern  shallowkern.ops.multi_delay_linear.multi_delay_linear (registered op; reference
               backend = the batched aten composition: one GEMM over all delays, one
               index_add over time)
  batched      the same batched composition called directly (no registered op): the gap to
               ``shallowkern`` is the custom op's Python overhead (dispatch, checks, autograd)
  loop         the per-delay loop: for each m, F.linear(x, W[m]) added into the output shifted by
               tau_m (M GEMMs, M strided adds) -- what one writes first
  conv1d       F.conv1d with a dense zero-filled kernel of length max(tau)+1 (the "sparse-tap
               causal 1-D convolution" run densely: (max(tau)+1)/M times the multiply-adds)
  compiled     torch.compile of the batched composition
Passes: fwd, fwdbwd (gradients of x, W and b). Cases are the RoDiB heads' stages of
scripts/repro_rodib.py (batch 256: stage 1 sees the impulse, T = 1; stage 2 the 9-step series)
plus a 10-delay stage (greedy B_2 delays up to 81) where the loop's M launches show.
``flops`` = the batched GEMM's FLOPs (shallowkern.flops); the conv1d provider runs more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.common import OpBench, compiled
from shallowkern.flops import multi_delay_linear_flops
from shallowkern.nn.rodib_delays import draw_delays
from shallowkern.ops.multi_delay_linear import (multi_delay_linear, multi_delay_linear_loop,
                                                multi_delay_linear_reference)

_M4 = draw_delays(4, 2)       # (1, 2, 4, 8): the repro's heads
_M10 = draw_delays(10, 2)     # (1, 2, 4, 8, 13, 21, 31, 45, 66, 81)
CASES = [
    dict(name="rodib_stage1_fc32", batch=256, steps=1, n=16, k=32, delays=_M4),
    dict(name="rodib_stage2_fc32", batch=256, steps=9, n=32, k=1, delays=_M4),
    dict(name="m10_series_64", batch=64, steps=16, n=64, k=64, delays=_M10),
]


def _inputs(case, dev, dtype):
    m = len(case["delays"])
    x = torch.randn(case["batch"], case["steps"], case["n"], device=dev, dtype=dtype,
                    requires_grad=True)
    w = (torch.randn(m, case["k"], case["n"], device=dev, dtype=dtype)
         * case["n"] ** -0.5).requires_grad_()
    b = (torch.randn(case["k"], device=dev, dtype=dtype) * 0.1).requires_grad_()
    return x, w, b


def _with(fn, case):
    delays = tuple(case["delays"])
    return lambda x, w, b: fn(x, w, b, delays)


def _conv1d(x, w, b, delays):
    span = max(delays)
    m, k, n = w.shape
    kernel = w.new_zeros(k, n, span + 1)
    kernel[:, :, [span - t for t in delays]] = w.permute(1, 2, 0)
    xp = F.pad(x.transpose(1, 2), (span, span))
    return F.conv1d(xp, kernel, b).transpose(1, 2)


def _flops(case, pass_):
    f = multi_delay_linear_flops(case["batch"], case["steps"], case["n"], case["k"],
                                 len(case["delays"]))
    return f if pass_ == "fwd" else 3 * f


def _nbytes(case, dtype, pass_):
    e = torch.empty((), dtype=dtype).element_size()
    m = len(case["delays"])
    t_out = case["steps"] + max(case["delays"])
    moved = (case["batch"] * case["steps"] * case["n"] + m * case["k"] * case["n"]
             + case["batch"] * t_out * case["k"])
    return e * moved * (1 if pass_ == "fwd" else 3)


BENCH = OpBench(
    op="multi_delay_linear",
    cases=CASES,
    providers={
        "shallowkern": lambda case, dev, dtype: (_with(multi_delay_linear, case),
                                                 _inputs(case, dev, dtype)),
        "batched": lambda case, dev, dtype: (_with(multi_delay_linear_reference, case),
                                             _inputs(case, dev, dtype)),
        "loop": lambda case, dev, dtype: (_with(multi_delay_linear_loop, case),
                                          _inputs(case, dev, dtype)),
        "conv1d": lambda case, dev, dtype: (_with(_conv1d, case), _inputs(case, dev, dtype)),
        "compiled": lambda case, dev, dtype: (
            compiled(_with(multi_delay_linear_reference, case), dev), _inputs(case, dev, dtype)),
    },
    flops=_flops, nbytes=_nbytes, baseline="loop",
    items=lambda case: case["batch"],
    slice_cases=("rodib_stage2_fc32", "m10_series_64"),
)
test_multi_delay_linear = BENCH.test()
