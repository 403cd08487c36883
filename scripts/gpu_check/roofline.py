"""Roofline of this GPU, measured once per device check (issue 13 item 2) -> JSON.

    python3 scripts/gpu_check/roofline.py OUT.json

Copy bandwidth: a 1 GiB device-to-device copy (read + write counted). Compute: the best of a
few cuBLAS matmuls, 8192^3 for bf16/fp16/TF32 (tensor cores) and 4096^3 for fp32 with TF32 off
(CUDA cores). Best-of, not median: the roofline is what the hardware can do. The benchmark
harness reads this file (SHALLOWKERN_BENCH_ROOFLINE) for every row's % of roofline, so the
floors come from this machine, not a datasheet.
"""

from __future__ import annotations

import json
import sys
import time

import torch


def best_ms(fn, reps: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b))
    return best


def measure() -> dict:
    t0 = time.perf_counter()
    dev = torch.device("cuda")
    src = torch.empty(2**30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    bw = 2 * src.numel() / (best_ms(lambda: dst.copy_(src)) * 1e-3)
    del src, dst
    rates = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, n, allow in (("bfloat16", torch.bfloat16, 8192, False),
                                      ("float16", torch.float16, 8192, False),
                                      ("tf32", torch.float32, 8192, True),
                                      ("float32", torch.float32, 4096, False)):
            torch.backends.cuda.matmul.allow_tf32 = allow
            a = torch.randn(n, n, device=dev).to(dtype)
            b = torch.randn(n, n, device=dev).to(dtype)
            rates[name] = 2 * n**3 / (best_ms(lambda: torch.mm(a, b), reps=5) * 1e-3)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return dict(device=torch.cuda.get_device_name(dev), bytes_per_s=bw, flops_per_s=rates,
                source="measured by scripts/gpu_check/roofline.py: best 1 GiB copy (read + "
                       "write), best cuBLAS matmul (8192^3; fp32 without TF32 4096^3)",
                seconds=round(time.perf_counter() - t0, 2), torch=torch.__version__)


if __name__ == "__main__":
    data = measure()
    print(f"{data['device']}: copy {data['bytes_per_s'] / 1e12:.2f} TB/s; " + ", ".join(
        f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in data["flops_per_s"].items()), flush=True)
    with open(sys.argv[1], "w") as f:
        json.dump(data, f, indent=1)
