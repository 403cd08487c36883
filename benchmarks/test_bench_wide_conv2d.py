"""wide_conv2d vs eager (conv -> ReLU -> MaxPool2d), torch.compile and the vendor conv, in one run.

Providers, each timed on the same inputs:
  shallowkern  WideConv2d(activation="relu", pool=2) (C++ on CPU; CUDA/Triton on GPU)
  eager        F.conv2d -> torch.relu -> F.max_pool2d  (cuDNN with cudnn.benchmark=True on GPU)
  compiled     torch.compile(eager) (mode="max-autotune" on GPU)
  vendor       F.conv2d alone (the bar for the compute-bound conv2: cuDNN without epilogue)
Recorded in extra_info per case: dense FLOPs (TFLOP/s is dense-equivalent), the least FLOPs and
bytes any implementation needs (the roofline floor and % of it), time per provider, GB/s, speedup
vs each provider. "bwd" is fwd+bwd minus fwd.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks import shapes
from benchmarks.common import device_info, median_seconds, once_seconds, roofline_for
from shallowkern import WideConv2d
from shallowkern.ops.wide_conv2d import conv_flops

GPU_DTYPES = {"bf16": (torch.bfloat16, False), "fp16": (torch.float16, False),
              "fp32_tf32": (torch.float32, True), "fp32": (torch.float32, False)}
CPU_DTYPES = {"fp32": (torch.float32, False)}


def _cases():
    gpu = torch.cuda.is_available()
    shape_list = shapes.gpu_shapes() if gpu else shapes.cpu_shapes()
    for dtype_name in (GPU_DTYPES if gpu else CPU_DTYPES):
        for s in shape_list:
            yield pytest.param(s, dtype_name, id=f"{s['name']}-{dtype_name}")


def eager(x, w, b):
    return F.max_pool2d(torch.relu(F.conv2d(x, w, b)), 2)


def vendor(x, w, b):
    return F.conv2d(x, w, b)


def _min_bytes(x, w, out, passes: str) -> int:
    """Each input read once and each output written once (+1 byte per pooled index in training)."""
    fwd = x.nbytes + w.nbytes + out.nbytes
    if passes == "fwd":
        return fwd
    idx = out.numel()  # uint8 argmax
    # backward reads grad_out, x, w, indices; writes grad_w (and grad_x when x needs it)
    bwd = out.nbytes + x.nbytes + w.nbytes + idx + w.nbytes + (x.nbytes if x.requires_grad else 0)
    return fwd + idx + bwd


@pytest.mark.parametrize("case,dtype_name", list(_cases()))
def test_wide_conv2d(benchmark, case, dtype_name, dev, smoke):
    if smoke and case != (shapes.gpu_shapes() if dev.type == "cuda" else shapes.cpu_shapes())[0]:
        pytest.skip("smoke run: first shape only")
    dtype, tf32 = (GPU_DTYPES if dev.type == "cuda" else CPU_DTYPES)[dtype_name]
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.manual_seed(0)
    n, c, hw, k, r = case["n"], case["c"], case["hw"], case["k"], case["r"]
    if smoke:
        n = min(n, 4)
    mod = WideConv2d(c, k, r, activation="relu", pool=2, device=dev, dtype=dtype)
    x = torch.randn(n, c, hw, hw, device=dev, dtype=dtype, requires_grad=c != 3)  # conv1: image
    w, b = mod.weight, mod.bias
    compiled = torch.compile(eager, mode="max-autotune-no-cudagraphs" if dev.type == "cuda" else None)
    providers = {"shallowkern": lambda x, w, b: mod(x), "eager": eager, "compiled": compiled,
                 "vendor": vendor}
    out = mod(x)

    def fwd(fn):
        def run():
            with torch.no_grad():
                return fn(x, w, b)
        return run

    def fwdbwd(fn):
        inputs = [t for t in (x, w, b) if t.requires_grad]
        grad = torch.randn_like(fn(x, w, b))

        def run():
            return torch.autograd.grad(fn(x, w, b), inputs, grad)
        return run

    timed = once_seconds if smoke else median_seconds
    times = {}
    for name, fn in providers.items():
        times[f"{name}_fwd_s"] = timed(fwd(fn), dev)
        times[f"{name}_fwdbwd_s"] = timed(fwdbwd(fn), dev)
        times[f"{name}_bwd_s"] = max(times[f"{name}_fwdbwd_s"] - times[f"{name}_fwd_s"], 0.0)

    # Dense FLOPs (what eager's backward runs) for TFLOP/s; the floor counts the least work: after
    # a 2x2 max-pool only one conv output per window carries a gradient, so each backward GEMM
    # (weight grad; input grad when x needs it) has a quarter of the dense work.
    flops_fwd = conv_flops(x.shape, w.shape, [1, 1], [0, 0], [1, 1])
    grads = 1 if c == 3 else 2
    flops = {"fwd": flops_fwd, "bwd": flops_fwd * grads}
    least = {"fwd": flops_fwd, "bwd": flops_fwd * grads // 4}
    for d in (flops, least):
        d["fwdbwd"] = d["fwd"] + d["bwd"]
    roof = roofline_for(dev, dtype, tf32)
    info = dict(case=case["name"], dtype=dtype_name, n=n, **device_info(dev),
                peak_flops_per_s=roof.flops_per_s, peak_bytes_per_s=roof.bytes_per_s, **times)
    for p in ("fwd", "bwd", "fwdbwd"):
        nbytes = _min_bytes(x, w, out, "fwd" if p == "fwd" else "fwdbwd") - (
            _min_bytes(x, w, out, "fwd") if p == "bwd" else 0)
        t = times[f"shallowkern_{p}_s"]
        floor, _bound = roof.floor(least[p], nbytes)
        info.update({f"{p}_flops": flops[p], f"{p}_min_flops": least[p], f"{p}_min_bytes": nbytes,
                     f"{p}_tflops_per_s": flops[p] / t / 1e12 if t else None,
                     f"{p}_gb_per_s": nbytes / t / 1e9 if t else None,
                     f"{p}_roofline_floor_s": floor,
                     f"{p}_pct_of_roofline": 100 * floor / t if t else None})
        for other in ("eager", "compiled", "vendor"):
            info[f"{p}_speedup_vs_{other}"] = times[f"{other}_{p}_s"] / t if t else None
    benchmark.extra_info.update(info)
    benchmark.pedantic(fwd(providers["shallowkern"]), rounds=1 if smoke else 5, warmup_rounds=0 if smoke else 1)
