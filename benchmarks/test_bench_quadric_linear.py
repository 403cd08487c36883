"""quadric_linear (diagonal, full, lowrank) vs the compositions PyTorch users write.

Providers, each its own benchmark on the same seeded inputs (benchmarks/common.py):
  shallowkern  shallowkern.ops.quadric_linear.quadric_linear (C++ on CPU, Triton on CUDA)
  bilinear     full form only: nn.Bilinear(x, x) + nn.Linear as functionals (F.bilinear on the
               unpacked A, n^2 multiply-adds per output) -- the vendor op
  eager        the best plain composition: full = matmul + multiply-reduce
               ((x @ A.view(n, K n)).view(B, K, n) * x).sum(-1) + linear (builds B x K x n);
               diagonal = F.linear(x*x, Wq) + F.linear(x, W, b) (two GEMMs); lowrank = the
               three GEMMs + product
  einsum       full form only: einsum("bi,kij,bj->bk") + linear
  compiled     torch.compile(eager)
Passes: fwd, fwdbwd (gradients of x and every weight). Work: ``flops`` = dense FLOPs (what the
composition / nn.Bilinear runs), ``min_flops`` = what the layer needs (full: the packed
symmetric half), from shallowkern.flops. ``test_peak_memory`` records each provider's peak
extra memory at one case per form on CUDA (the caching allocator's peak) in extra_info; on CPU
it skips (no allocator high-water mark in torch; docs/quadric.md gives the analytic figures).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.common import OpBench, compiled, device
from shallowkern.flops import quadric_linear_backward_flops, quadric_linear_flops
from shallowkern.ops.quadric_linear import pack_symmetric, quadric_linear

_GPU = [dict(name=f"{form}_n{n}_b{b}", form=form, n=n, batch=b)
        for form in ("full", "diagonal", "lowrank") for n in (64, 256, 1024)
        for b in (32, 512, 4096)]
# CPU: the same grid minus what 2 cores cannot run in a benchmark session (the full form's
# compositions at n = 1024 or B = 4096 need 0.5-17 GB for B x K x n and minutes per call).
_CPU = [c for c in _GPU if c["form"] != "full" or (c["n"] <= 256 and c["batch"] <= 512)
        or (c["n"] == 64)]
RANK = 1


def _params(case, dev, dtype):
    n, b, form = case["n"], case["batch"], case["form"]
    k = n
    x = torch.randn(b, n, device=dev, dtype=dtype, requires_grad=True)
    s = n ** -0.5
    w = (torch.randn(k, n, device=dev, dtype=dtype) * s).requires_grad_()
    bias = (torch.randn(k, device=dev, dtype=dtype) * 0.1).requires_grad_()
    if form == "full":
        a = torch.randn(k, n, n, device=dev, dtype=dtype) * s / n ** 0.5
        return x, a, w, bias
    wq = (torch.randn(RANK * k if form == "lowrank" else k, n, device=dev, dtype=dtype) * s)
    wq2 = torch.randn_like(wq) * s if form == "lowrank" else None
    return x, wq.requires_grad_(), w, bias, wq2.requires_grad_() if wq2 is not None else None


def _sk(case, dev, dtype):
    form = case["form"]
    if form == "full":
        x, a, w, b = _params(case, dev, dtype)
        p = pack_symmetric(a).detach().requires_grad_()
        return (lambda x, p, w, b: quadric_linear(x, p, w, b, form="full")), (x, p, w, b)
    x, wq, w, b, wq2 = _params(case, dev, dtype)
    if form == "lowrank":
        return (lambda x, wq, w, b, wq2: quadric_linear(x, wq, w, b, form="lowrank",
                                                          weight_quad2=wq2)), (x, wq, w, b, wq2)
    return (lambda x, wq, w, b: quadric_linear(x, wq, w, b)), (x, wq, w, b)


def _full_inputs(case, dev, dtype):
    x, a, w, b = _params(case, dev, dtype)
    return x, a.requires_grad_(), w, b


def bilinear(x, a, w, b):
    return F.bilinear(x, x, a, None) + F.linear(x, w, b)


def full_matmul(x, a, w, b):
    bsz, n = x.shape
    k = a.shape[0]
    t = (x @ a.permute(1, 0, 2).reshape(n, k * n)).view(bsz, k, n)
    return (t * x[:, None, :]).sum(-1) + F.linear(x, w, b)


def full_einsum(x, a, w, b):
    return torch.einsum("bi,kij,bj->bk", x, a, x) + F.linear(x, w, b)


def diag_eager(x, wq, w, b):
    return F.linear(x * x, wq) + F.linear(x, w, b)


def lowrank_eager(x, wq, w, b, wq2):
    k = w.shape[0]
    return (F.linear(x, wq) * F.linear(x, wq2)).view(x.shape[0], -1, k).sum(1) + F.linear(x, w, b)


def _eager_fn(form):
    return {"full": full_matmul, "diagonal": diag_eager, "lowrank": lowrank_eager}[form]


def _eager_inputs(case, dev, dtype):
    if case["form"] == "full":
        return _full_inputs(case, dev, dtype)
    x, wq, w, b, wq2 = _params(case, dev, dtype)
    return (x, wq, w, b, wq2) if case["form"] == "lowrank" else (x, wq, w, b)


def _full_only(fn):
    def build(case, dev, dtype):
        if case["form"] != "full":
            pytest.skip("nn.Bilinear / einsum: full form only")
        return fn, _full_inputs(case, dev, dtype)
    return build


PROVIDERS = {
    "shallowkern": _sk,
    "bilinear": _full_only(bilinear),
    "eager": lambda case, dev, dtype: (_eager_fn(case["form"]), _eager_inputs(case, dev, dtype)),
    "einsum": _full_only(full_einsum),
    "compiled": lambda case, dev, dtype: (compiled(_eager_fn(case["form"]), dev),
                                          _eager_inputs(case, dev, dtype)),
}


def _count(case, pass_, kind):
    args = (case["batch"], case["n"], case["n"], case["form"], RANK)
    f = quadric_linear_flops(*args, kind=kind)
    return f if pass_ == "fwd" else f + quadric_linear_backward_flops(*args, kind=kind)


def nbytes(case, dtype, pass_):
    n, b, form = case["n"], case["batch"], case["form"]
    quad = {"diagonal": n * n, "full": n * n * (n + 1) // 2, "lowrank": 2 * RANK * n * n}[form]
    elems = b * n + quad + n * n + n + b * n  # x, weights, bias, y
    return elems * torch.finfo(dtype).bits // 8 * (1 if pass_ == "fwd" else 3)


BENCH = OpBench(
    op="quadric_linear",
    cases={"cuda": _GPU, "cpu": _CPU},
    providers=PROVIDERS,
    flops=lambda case, pass_: _count(case, pass_, "dense"),
    min_flops=lambda case, pass_: _count(case, pass_, "effective"),
    nbytes=nbytes,
    baseline="eager",
    slice_cases=("full_n256_b512", "diagonal_n256_b512", "lowrank_n256_b512"),
)
test_quadric_linear = BENCH.test()


# ---------------------------------------------------------------------------------------------
# peak memory
# ---------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def cpu_peak_supported() -> bool:
    """Linux lets a process reset its own peak RSS (VmHWM) through /proc/self/clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_bytes(fn, inputs, backward: bool) -> int:
    """Peak bytes allocated while fn runs (and its backward), beyond the inputs.

    CUDA: the caching allocator's high-water mark. CPU: the process's peak resident set
    (VmHWM, reset through /proc/self/clear_refs) minus the resident set before the call. Run
    CPU measurements with MALLOC_MMAP_THRESHOLD_=65536 (``--memory`` sets it): then glibc maps
    every large tensor afresh instead of reusing freed heap that is already resident, which
    would hide it."""
    dev = inputs[0].device
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn(*inputs)
        if backward:
            out.sum().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    import gc

    gc.collect()
    if not cpu_peak_supported():
        raise NotImplementedError("peak memory on CPU needs a writable /proc/self/clear_refs")
    base = _status_kb("VmRSS")
    out = fn(*inputs)
    if backward:
        out.sum().backward()
    peak = _status_kb("VmHWM")
    del out
    return max(peak - base, 0) * 1024


_MEM_CASES = ["full_n256_b512", "diagonal_n256_b512", "lowrank_n256_b512"]


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("case_name", _MEM_CASES)
@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
def test_peak_memory(benchmark, case_name, provider, pass_):
    case = next(c for c in _GPU if c["name"] == case_name)
    if device().type != "cuda" and not cpu_peak_supported():
        pytest.skip("CPU peak memory needs /proc/self/clear_refs (Linux)")
    if benchmark.disabled:  # smoke run: a small batch
        if provider == "compiled" and device().type == "cpu":
            pytest.skip("smoke run on CPU: the grid's smoke already compiles this provider")
        case = dict(case, batch=4)
    dev = device()
    torch.manual_seed(0)
    fn, inputs = PROVIDERS[provider](case, dev, torch.float32)
    fn(*inputs)  # warm-up (compilation)
    ctx = torch.no_grad() if pass_ == "fwd" else torch.enable_grad()
    with ctx:
        peak = peak_extra_bytes(fn, inputs, pass_ == "fwdbwd")
    benchmark.group = f"quadric_linear peak memory {case_name} {pass_}"
    benchmark.extra_info.update(op="quadric_linear", case=case_name, provider=provider,
                                pass_=pass_, peak_extra_bytes=peak,
                                io_bytes=sum(t.numel() * t.element_size() for t in inputs))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


# ---------------------------------------------------------------------------------------------
# interleaved CPU check: on a shared machine the harness's per-benchmark timing drifts with the
# load between providers; here the providers of one case alternate call by call, so each one's
# minimum sees the same conditions. `python -m benchmarks.test_bench_quadric_linear
# --interleaved [--reps 7] [--cases full_n256_b512 ...] [--json out.json]`
# ---------------------------------------------------------------------------------------------
def interleaved(case_names, reps: int = 7, providers=("shallowkern", "bilinear", "eager",
                                                      "einsum"), passes=("fwd", "fwdbwd")):
    import time

    from benchmarks.common import make_pass

    rows = []
    for name in case_names:
        case = next(c for c in _GPU if c["name"] == name)
        for pass_ in passes:
            runs = {}
            for prov in providers:
                if prov in ("bilinear", "einsum") and case["form"] != "full":
                    continue
                torch.manual_seed(0)
                fn, inputs = PROVIDERS[prov](case, torch.device("cpu"), torch.float32)
                run = make_pass(fn, tuple(inputs), pass_)
                run(tuple(inputs))  # warm-up
                runs[prov] = (run, tuple(inputs), [])
            for _ in range(reps):
                for prov, (run, inputs, ts) in runs.items():
                    t0 = time.perf_counter()
                    run(inputs)
                    ts.append(time.perf_counter() - t0)
            best = {p: min(ts) for p, (_, _, ts) in runs.items()}
            for prov, (_, _, ts) in runs.items():
                rows.append(dict(case=name, pass_=pass_, provider=prov, min_ms=best[prov] * 1e3,
                                 median_ms=sorted(ts)[len(ts) // 2] * 1e3, reps=reps,
                                 speedup_of_shallowkern=best[prov] / best["shallowkern"]))
                print(f"{name:22s} {pass_:7s} {prov:12s} min {best[prov] * 1e3:9.2f} ms  "
                      f"shallowkern is {best[prov] / best['shallowkern']:.2f}x", flush=True)
    return rows


def memory_rows(case_names, providers=tuple(PROVIDERS), passes=("fwd", "fwdbwd")):
    """Peak extra memory (bytes) of each provider, CPU or CUDA, one row per case/pass/provider."""
    rows = []
    for name in case_names:
        case = next(c for c in _GPU if c["name"] == name)
        for pass_ in passes:
            for prov in providers:
                torch.manual_seed(0)
                try:
                    fn, inputs = PROVIDERS[prov](case, device(), torch.float32)
                except pytest.skip.Exception:
                    continue
                fn(*inputs)  # warm-up (compilation, first-touch of the inputs)
                with torch.no_grad() if pass_ == "fwd" else torch.enable_grad():
                    peak = peak_extra_bytes(fn, inputs, pass_ == "fwdbwd")
                io = sum(t.numel() * t.element_size() for t in inputs if t is not None)
                rows.append(dict(case=name, pass_=pass_, provider=prov, peak_extra_bytes=peak,
                                 io_bytes=io))
                print(f"{name:22s} {pass_:7s} {prov:12s} peak extra {peak / 2**20:9.1f} MiB "
                      f"(inputs {io / 2**20:.1f} MiB)", flush=True)
    return rows


if __name__ == "__main__":
    import argparse
    import json
    import os
    import sys

    if "--memory" in sys.argv and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # read by glibc at start: re-exec
        os.execv(sys.executable, [sys.executable, "-m", "benchmarks.test_bench_quadric_linear",
                                  *sys.argv[1:]])
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--interleaved", action="store_true")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--cases", nargs="+", default=["full_n256_b512", "diagonal_n256_b512",
                                                    "lowrank_n256_b512"])
    ap.add_argument("--json")
    a = ap.parse_args()
    out = memory_rows(a.cases) if a.memory else interleaved(a.cases, a.reps)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
