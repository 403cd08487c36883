"""wide_conv2d vs eager (conv -> ReLU -> MaxPool2d), torch.compile and the vendor conv.

Providers, each its own benchmark on the same seeded inputs (benchmarks/common.py):
  shallowkern  shallowkern.ops.wide_conv2d.wide_conv2d(activation="relu", pool=2)
               (C++ on CPU; CUDA/Triton on GPU)
  eager        F.conv2d -> torch.relu -> F.max_pool2d  (cuDNN with cudnn.benchmark=True on GPU)
  compiled     torch.compile(eager) (SHALLOWKERN_BENCH_COMPILE_MODE; max-autotune on GPU)
  vendor       F.conv2d alone (the bar for the compute-bound conv2: cuDNN without epilogue)
  sk_triton, sk_native  (CUDA only) shallowkern with its backend forced by use_backend: the
               Triton kernels / the CUDA direct kernel, whatever the automatic route would pick.
               With eager (cuDNN) beside them in fp32 with TF32 off, these rows are the data for
               routing fp32-without-TF32 to the faster of Triton and cuDNN (benchmarks/NOTES.md).
Passes: fwd, fwdbwd (gradients of w, b, and of x except for conv1, whose input is the image).
Work: dense FLOPs (what eager's backward runs) for TFLOP/s; the roofline floor counts the least
work: after a 2x2 max-pool only one conv output per window carries a gradient, so each
backward GEMM has a quarter of the dense work.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks import shapes
from benchmarks.common import OpBench, compiled
from shallowkern.flops import conv2d_flops
from shallowkern.ops import use_backend
from shallowkern.ops.wide_conv2d import wide_conv2d


def _inputs(case, dev, dtype):
    n, c, hw, k, r = case["n"], case["c"], case["hw"], case["k"], case["r"]
    x = torch.randn(n, c, hw, hw, device=dev, dtype=dtype, requires_grad=c != 3)  # conv1: image
    w = (torch.randn(k, c, r, r, device=dev, dtype=dtype) / (c * r * r) ** 0.5).requires_grad_()
    b = (torch.randn(k, device=dev, dtype=dtype) * 0.1).requires_grad_()
    return x, w, b


def fused(x, w, b):
    return wide_conv2d(x, w, b, activation="relu", pool=2)


def forced(backend: str):
    def build(case, dev, dtype):
        if dev.type != "cuda":
            pytest.skip(f"{backend} forced: a CUDA benchmark (on CPU: the C++ kernel)")

        def fn(x, w, b):
            with use_backend(backend):
                return fused(x, w, b)
        return fn, _inputs(case, dev, dtype)
    return build


def eager(x, w, b):
    return F.max_pool2d(torch.relu(F.conv2d(x, w, b)), 2)


def vendor(x, w, b):
    return F.conv2d(x, w, b)


def _grads(case) -> int:
    return 1 if case["c"] == 3 else 2


def _fwd_flops(case) -> int:
    return conv2d_flops((case["n"], case["c"], case["hw"], case["hw"]),
                        (case["k"], case["c"], case["r"], case["r"]), (1, 1), (0, 0), (1, 1))


def flops(case, pass_):
    f = _fwd_flops(case)
    return f if pass_ == "fwd" else f * (1 + _grads(case))


def min_flops(case, pass_):
    f = _fwd_flops(case)
    return f if pass_ == "fwd" else f + f * _grads(case) // 4


def nbytes(case, dtype, pass_):
    """Each input read once and each output written once (+1 byte per pooled index in training);
    the backward reads grad_out, x, w, indices and writes grad_w (and grad_x when x needs it)."""
    e = torch.empty((), dtype=dtype).element_size()
    n, c, hw, k, r = case["n"], case["c"], case["hw"], case["k"], case["r"]
    oh = (hw - r + 1) // 2
    x, w, out = n * c * hw * hw * e, k * c * r * r * e + k * e, n * k * oh * oh * e
    fwd = x + w + out
    if pass_ == "fwd":
        return fwd
    idx = n * k * oh * oh
    return fwd + idx + out + x + w + idx + w + (x if c != 3 else 0)


BENCH = OpBench(
    op="wide_conv2d",
    cases={"cuda": shapes.gpu_shapes(), "cpu": shapes.cpu_shapes()},
    providers={  # compiled last: in a time-boxed run (the GPU check) the cheap rows come first
        "shallowkern": lambda case, dev, dtype: (fused, _inputs(case, dev, dtype)),
        "eager": lambda case, dev, dtype: (eager, _inputs(case, dev, dtype)),
        "vendor": lambda case, dev, dtype: (vendor, _inputs(case, dev, dtype)),
        "sk_triton": forced("triton"),
        "sk_native": forced("native"),
        "compiled": lambda case, dev, dtype: (compiled(eager, dev), _inputs(case, dev, dtype)),
    },
    flops=flops, min_flops=min_flops, nbytes=nbytes,
    # the GPU check's slice: where the targets are set (issue 13): conv1 and conv2 at d1 = 256
    slice_cases=("conv1_n128_d256", "conv2_n128_d256x717"),
)
test_wide_conv2d = BENCH.test()
