"""Kernel-level timing of the skinny-GEMM kernel (csrc/cpu/small_gemm.cpp) against MKL's SGEMM
as the C++ kernels call it (direct_gemm, csrc/include/shallowkern/cpu/blas.h), one thread, on
the shapes that decide small_gemm_ok. Builds a throwaway extension (about a minute) whose two
functions run one product `reps` times in C++, so no Python or dispatcher cost is timed.

usage: python scripts/small_gemm_bench.py [OUT.txt]
       python scripts/small_gemm_bench.py --bcast [OUT.txt]
       python scripts/small_gemm_bench.py --spinal [--train] B,F,W [B,F,W ...]
       python scripts/small_gemm_bench.py --pieces [OUT.txt]

--bcast: the broadcast kernel (bcast_gemm, op(A) B) against MKL on the spinal training step's
gradient products: G^T X (ta 'T', K = batch) and G W (ta 'N', M = batch).

--pieces: the transposed chain's pieces through shallowkern._C's test hooks: one W X^T product
(512 x 32 x 1,600) cycling over 1-8 distinct weight matrices (how far the weights stay in
cache), the AVX-512 transpose against torch's strided copy, and the broadcast kernel's error at
K = 25,600 against MKL's (max abs vs fp64).

--spinal: the GEMM floor of a spinal_linear forward (4 layers, 2 splits, 10 outputs): the sum,
over the chain's GEMMs, of the fastest of MKL, the skinny kernel and (the transposed chain's
form, W X^T) the broadcast kernel on that shape (each timed alone, its
operands hot in cache), beside the eager chain (benchmarks/test_bench_spinal_linear.py, timed
here) and the time 1.5x eager would need. Where the floor is above that time, no chain of these
GEMMs reaches the issue's 1.5x target on this CPU.
--spinal --train: the same for the training step (forward + gradients of x and every weight)
against 1.2x eager's: the forward's GEMMs plus, per layer, the weight and input gradients, each
layer the cheaper of split ([W^x | W^h] as two products, as our op) and concatenated (one, as
eager's autograd) forms, and the output layer's two. "split forms only": the floor of our op's
own GEMMs (it never concatenates).
"""

import functools
import os
import statistics
import sys
import time

import torch
from torch.utils.cpp_extension import load

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # scripts/_repro.py
from _repro import call_times, machine_fields  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [  # (M rows, N outputs, K)
    (32, 8, 1600), (32, 8, 1608), (32, 8, 25600), (32, 10, 32), (32, 10, 512), (32, 10, 2048),
    (1, 8, 1608), (1, 10, 512), (1, 128, 128), (1, 128, 1600), (1, 128, 25600), (1, 512, 512),
    (1, 512, 672), (1, 512, 2112), (1, 512, 25600), (2, 128, 1728), (2, 512, 672),
    (4, 128, 128), (4, 128, 1728), (8, 128, 128), (8, 128, 1728), (8, 512, 672), (12, 128, 1728),
    (32, 16, 64), (32, 16, 1608), (32, 24, 32), (32, 24, 1608), (32, 32, 1608),
    (32, 128, 160), (32, 128, 288), (32, 128, 1728), (32, 512, 672), (32, 512, 2112)]

CPP = r"""
#include <torch/extension.h>
#include "shallowkern/cpu/blas.h"
#include "shallowkern/cpu/small_gemm.h"
using namespace shallowkern::cpu;
at::Tensor run(const at::Tensor& a, const at::Tensor& b, int64_t reps, bool skinny) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
  at::Tensor c = at::empty({M, N}, a.options());
  const float *pa = a.data_ptr<float>(), *pb = b.data_ptr<float>();
  float* pc = c.data_ptr<float>();
  for (int64_t i = 0; i < reps; ++i) {
    if (skinny) small_gemm_nt(M, N, K, 1.f, pa, K, pb, K, 0.f, pc, N);
    else direct_gemm<float>('N', 'T', M, N, K, 1.f, pa, K, pb, K, 0.f, pc, N);
  }
  return c;
}
// Any transposes through MKL (direct_gemm): C (M x N) = op(A) op(B), row-major operands; with
// bcast (B not transposed) through bcast_gemm instead.
at::Tensor run_mkl(const at::Tensor& a, const at::Tensor& b, int64_t M, int64_t N, int64_t K,
                   bool ta, bool tb, int64_t reps, bool bcast) {
  at::Tensor c = at::empty({M, N}, a.options());
  const float *pa = a.data_ptr<float>(), *pb = b.data_ptr<float>();
  float* pc = c.data_ptr<float>();
  for (int64_t i = 0; i < reps; ++i) {
    if (bcast) bcast_gemm(ta ? 'T' : 'N', M, N, K, 1.f, pa, ta ? M : K, pb, N, 0.f, pc, N);
    else direct_gemm<float>(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.f, pa, ta ? M : K, pb,
                            tb ? K : N, 0.f, pc, N);
  }
  return c;
}
"""


def main(out=None):
    ext = _build()
    torch.set_num_threads(1)
    lines = [f"# skinny GEMM vs MKL SGEMM (direct), 1 thread, fp32, {time.strftime('%Y-%m-%d')}",
             f"# {machine_fields()}",
             "| M | N | K | skinny µs | GFLOP/s | MKL µs | GFLOP/s | MKL/skinny | routed |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines))
    for M, N, K in SHAPES:
        a, b = torch.randn(M, K), torch.randn(N, K)
        reps = max(1, int(2e6 / (M * N * K)))
        ts, tm = (_median(lambda s=s: ext.run(a, b, reps, s)) / reps for s in (True, False))
        lines.append(_row([M, N, K], ts, tm, 2 * M * N * K, _routed(M, N, K)))
    _write(lines, out)


def spinal(cases):
    from benchmarks.test_bench_spinal_linear import _eager_fn, _eager_inputs
    from shallowkern.ops.spinal_linear import split_sizes
    train = "--train" in cases
    cases = [c for c in cases if c != "--train"]
    target = 1.2 if train else 1.5
    ext = _build()
    torch.set_num_threads(1)
    L, S, O = 4, 2, 10

    @functools.lru_cache(maxsize=None)  # a shape is timed once, however often the floors use it
    def nt(M, N, K):  # C = A B^T: the faster of MKL and (where routed) the skinny kernel
        a, b = torch.randn(M, K), torch.randn(N, K)
        reps = max(1, int(2e6 / (M * N * K)))
        tm = _median(lambda: ext.run(a, b, reps, False)) / reps
        if not _routed(M, N, K):
            return tm
        return min(tm, _median(lambda: ext.run(a, b, reps, True)) / reps)

    @functools.lru_cache(maxsize=None)
    def tr(M, N, K):  # C^T = B A^T as the transposed chain runs it: weights x batch columns
        if not _bcast_routed(False, N, M, K):
            return float("inf")
        return _time_opab(ext, N, M, K, False, False, True)

    @functools.lru_cache(maxsize=None)
    def mkl(M, N, K, ta, tb):  # C = op(A) op(B): MKL or (where routed) the broadcast kernel
        t = _time_opab(ext, M, N, K, ta, tb, False)
        if tb or not _bcast_routed(ta, M, N, K):
            return t
        return min(t, _time_opab(ext, M, N, K, ta, tb, True))

    def layer_backward(B, W, k, hidden, concat):  # gW = G^T [x_s, h], g[x_s, h] += G [W^x|W^h]
        split = mkl(W, k, B, True, False) + mkl(B, k, W, False, False)
        if not hidden:
            return split
        split += mkl(W, W, B, True, False) + mkl(B, W, W, False, False)
        return min(split, mkl(W, k + W, B, True, False) + mkl(B, k + W, W, False, False)) \
            if concat else split

    print(f"| case | GEMM floor µs | split forms only µs | eager µs | {target}x eager needs µs "
          "| floor / needed |")
    print("|---|---|---|---|---|---|")
    for case in cases:
        B, F, W = map(int, case.split(","))
        sizes = split_sizes(F, S)
        floors = []
        for concat in (True, False):
            floor = sum(min(nt(B, W, sizes[i % S]) + nt(B, W, W),
                            tr(B, W, sizes[i % S]) + tr(B, W, W),
                            nt(B, W, sizes[i % S] + W) if concat else float("inf"))
                        if i else min(nt(B, W, sizes[0]), tr(B, W, sizes[0])) for i in range(L))
            floor += min(nt(B, O, L * W), tr(B, O, L * W))
            if train:
                floor += sum(layer_backward(B, W, sizes[i % S], i > 0, concat) for i in range(L))
                floor += mkl(O, L * W, B, True, False) + mkl(B, L * W, O, False, False)
            floors.append(floor)
        floor, split_floor = floors
        c = {"batch": B, "f": F, "w": W}
        fn, inp = _eager_fn(c), _eager_inputs(c, torch.device("cpu"), torch.float32)
        if train:
            leaves = [t for t in inp if t.requires_grad]
            te = _median(lambda: torch.autograd.grad(fn(*inp).sum(), leaves), 50)
        else:
            with torch.no_grad():
                te = _median(lambda: fn(*inp), 200)
        print(f"| b{B}_f{F}_w{W} | {floor * 1e6:,.0f} | {split_floor * 1e6:,.0f} | "
              f"{te * 1e6:,.0f} | {te / target * 1e6:,.0f} | {floor / (te / target):.2f} |",
              flush=True)


BCAST_SHAPES = [  # (ta, M, N, K): the gradient products of spinal_linear's training step
    *[("T", W, n, B) for B in (1, 32, 256) for W, n in (
        (8, 160), (8, 1600), (8, 25600), (128, 128), (128, 160), (128, 1600), (128, 25600),
        (512, 160), (512, 256), (512, 512), (512, 1600), (10, 512), (10, 2048))],
    *[("N", B, n, K) for B in (1, 32, 256) for n, K in (
        (160, 8), (1600, 8), (25600, 8), (128, 128), (160, 128), (1600, 128), (25600, 128),
        (160, 512), (256, 512), (512, 512), (1600, 512), (512, 10), (2048, 10))],
    # batch 4096: weight gradients with K = 4096
    *[("T", W, n, 4096) for W, n in ((8, 1600), (128, 160), (128, 1600), (512, 160), (512, 512))],
    # the transposed chain's forward (W_i^x x_s^T: weights x a batch of 32 columns)
    *[("N", W, 32, k) for W in (16, 128, 512) for k in (160, 256, 1600, 25600)],
    ("N", 10, 32, 512), ("N", 10, 32, 2048)]


def bcast(out=None):
    ext = _build()
    torch.set_num_threads(1)
    lines = [f"# broadcast kernel (bcast_gemm) vs MKL SGEMM (direct), C = op(A) B, 1 thread, "
             f"fp32, {time.strftime('%Y-%m-%d')}", f"# {machine_fields()}",
             "| op(A) | M | N | K | bcast µs | GFLOP/s | MKL µs | GFLOP/s | MKL/bcast | routed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines))
    for ta, M, N, K in BCAST_SHAPES:
        tb_, tm = (_time_opab(ext, M, N, K, ta == "T", False, b) for b in (True, False))
        lines.append(_row(["A^T" if ta == "T" else "A", M, N, K], tb_, tm, 2 * M * N * K,
                          _bcast_routed(ta == "T", M, N, K)))
    _write(lines, out)


def _row(cells, t_ours, t_mkl, flop, routed):  # one table row, printed as it is measured
    row = (f"| {' | '.join(map(str, cells))} | {t_ours * 1e6:.2f} | {flop / t_ours / 1e9:.1f} | "
           f"{t_mkl * 1e6:.2f} | {flop / t_mkl / 1e9:.1f} | {t_mkl / t_ours:.2f}x | "
           f"{'yes' if routed else 'no'} |")
    print(row, flush=True)
    return row


def _write(lines, out):
    if out:
        with open(out, "w") as f:
            f.write("\n".join(lines) + "\n")


def _time_opab(ext, M, N, K, ta, tb, bcast):  # one product, hot operands, seconds per call
    a = torch.randn(K, M) if ta else torch.randn(M, K)
    b = torch.randn(N, K) if tb else torch.randn(K, N)
    reps = max(1, int(2e6 / (M * N * K)))
    return _median(lambda: ext.run_mkl(a, b, M, N, K, ta, tb, reps, bcast)) / reps


def _bcast_routed(ta, M, N, K):
    from shallowkern import _ext
    ok = getattr(_ext._C, "bcast_gemm_ok", None)  # None: shallowkern._C not rebuilt yet
    return ok is not None and ok("T" if ta else "N", M, N, K)


def _build():
    src = os.path.join(ROOT, "build", "small_gemm_bench.cpp")
    os.makedirs(os.path.dirname(src), exist_ok=True)
    with open(src, "w") as f:
        f.write(CPP + '\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) '
                '{ m.def("run", &run); m.def("run_mkl", &run_mkl); }\n')
    return load("sk_small_gemm_bench", [src, os.path.join(ROOT, "csrc", "cpu", "small_gemm.cpp"),
                                        os.path.join(ROOT, "csrc", "knobs.cpp")],
                extra_include_paths=[os.path.join(ROOT, "csrc", "include")],
                extra_cflags=["-O3"], verbose=False)


def _routed(M, N, K):
    from shallowkern import _ext
    return _ext._C is not None and _ext._C.small_gemm_ok(M, N, K)


def _median(f, reps=30):
    return statistics.median(call_times(f, reps, warmup=2))


def pieces(out=None):
    from shallowkern import _ext
    C = _ext._C
    torch.set_num_threads(1)
    lines = [f"# the transposed chain's pieces, 1 thread, fp32, {time.strftime('%Y-%m-%d')}",
             f"# {machine_fields()}", "",
             "| W X^T, 512 x 32 x 1,600, over | weights MiB | µs | GFLOP/s |", "|---|---|---|---|"]
    M, N, K = 512, 32, 1600
    b, c = torch.randn(K, N), torch.empty(M, N)
    for n in (1, 2, 3, 4, 5, 6, 8):
        ws = [torch.randn(M, K) for _ in range(n)]
        it = iter(range(1 << 62))
        t = _median(lambda: [C.bcast_gemm(ws[next(it) % n], b, c) for _ in range(n)]) / n
        lines.append(f"| {n} matrices | {n * M * K * 4 / 2**20:.1f} | {t * 1e6:.0f} | "
                     f"{2 * M * N * K / t / 1e9:.1f} |")
        print(lines[-1], flush=True)
    lines += ["", "| transpose rows x cols | AVX-512 µs | torch copy_ of the .t() view µs |",
              "|---|---|---|"]
    for r, cols in ((32, 3200), (32, 51200), (512, 32)):
        src, dst = torch.randn(r, cols), torch.empty(cols, r)
        t1 = _median(lambda: C.transpose_f32(src, dst))
        t2 = _median(lambda: dst.copy_(src.t()))
        lines.append(f"| {r} x {cols} | {t1 * 1e6:.1f} | {t2 * 1e6:.1f} |")
        print(lines[-1], flush=True)
    lines += ["", "| 128 x 32 x 25,600, randn | max abs error vs fp64 |", "|---|---|"]
    g = torch.Generator().manual_seed(25600)
    a, bb = torch.randn(128, 25600, generator=g), torch.randn(25600, 32, generator=g)
    ref, cc = a.double() @ bb.double(), torch.empty(128, 32)
    C.bcast_gemm(a, bb, cc)
    for name, y in (("bcast_gemm (sums in blocks of 256 k)", cc), ("MKL (torch.mm)", a @ bb)):
        lines.append(f"| {name} | {(y.double() - ref).abs().max().item():.2e} |")
        print(lines[-1], flush=True)
    _write(lines, out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--spinal"]:
        sys.path.insert(0, ROOT)
        spinal(sys.argv[2:])
    elif sys.argv[1:2] == ["--pieces"]:
        pieces(sys.argv[2] if len(sys.argv) > 2 else None)
    elif sys.argv[1:2] == ["--bcast"]:
        bcast(sys.argv[2] if len(sys.argv) > 2 else None)
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else None)
