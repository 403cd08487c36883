"""The C++ kernels' broadcast GEMM (csrc/cpu/small_gemm.cpp, bcast_gemm): c = alpha op(a) b +
beta c in fp32 against an fp64 oracle (the tolerance table, reduction K), for op(a) = a and a^T,
with every register tail (row tiles of 1-6, the last of 1-4 column vectors masked), strided rows,
beta = 0 over NaN, and threads; and the spinal training step that routes its gradients through
it, against the reference."""

import pytest
import torch

from shallowkern import _ext
from shallowkern.testing import assert_close

pytestmark = pytest.mark.skipif(
    _ext._C is None or not hasattr(_ext._C, "bcast_gemm") or not _ext._C.small_gemm_ok(1, 1, 16),
    reason="needs shallowkern._C on an AVX-512 CPU (the broadcast kernel)")

# (M, N, K): rows hit tile heights 1..6 and the near-equal split (32 -> 6,6,5,5,5,5); columns
# every vector count and tail; K from 1 (one rank-1 update) to a long reduction.
SHAPES = [(1, 1, 1), (2, 17, 3), (3, 33, 32), (4, 49, 5), (5, 64, 32), (6, 65, 7), (7, 16, 32),
          (13, 100, 9), (32, 160, 32), (32, 130, 512), (10, 2048, 32), (128, 1600, 32),
          (512, 70, 33), (31, 257, 128)]


def _operands(M, N, K, ta, g):
    # strided rows: views into wider buffers
    a = (torch.randn(K, M + 3, generator=g)[:, 2:M + 2] if ta == "T"
         else torch.randn(M, K + 5, generator=g)[:, 3:K + 3])
    b = torch.randn(K, N + 2, generator=g)[:, :N]
    return a, b


@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("ta", ["N", "T"])
@pytest.mark.parametrize("threads", [1, 2])
def test_matches_fp64(M, N, K, ta, threads):
    g = torch.Generator().manual_seed(M * 1000 + N * 10 + K)
    a, b = _operands(M, N, K, ta, g)
    c = torch.full((M, N + 4), float("nan"))[:, 1:N + 1]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _ext._C.bcast_gemm(a, b, c, ta)  # beta = 0: the NaNs must not leak
    finally:
        torch.set_num_threads(old)
    opa = a.double().T if ta == "T" else a.double()
    assert_close(c, opa @ b.double(), torch.float32, reduction=K)


@pytest.mark.parametrize("M,N,K", [(13, 40, 9000), (7, 130, 4097), (128, 32, 25600)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (1.0, 1.0), (-0.5, 2.0)])
@pytest.mark.parametrize("ta", ["N", "T"])
def test_long_reduction_in_blocks(M, N, K, alpha, beta, ta):
    # the sums run in blocks of 256 k's, each added to C (a single running sum over K = 25,600
    # erred 11x more than MKL, beyond the table); blocks with a tail, alpha and beta
    g = torch.Generator().manual_seed(K)
    a, b = _operands(M, N, K, ta, g)
    c0 = torch.randn(M, N, generator=g)
    c = c0.clone()
    _ext._C.bcast_gemm(a, b, c, ta, alpha=alpha, beta=beta)
    opa = a.double().T if ta == "T" else a.double()
    want = alpha * (opa @ b.double()) + beta * c0.double()
    assert_close(c, want, torch.float32, reduction=K)


@pytest.mark.parametrize("ta", ["N", "T"])
def test_alpha_beta(ta):
    g = torch.Generator().manual_seed(1)
    a, b = _operands(7, 70, 40, ta, g)
    c0 = torch.randn(7, 70, generator=g)
    c = c0.clone()
    _ext._C.bcast_gemm(a, b, c, ta, alpha=-0.5, beta=2.0)
    opa = a.double().T if ta == "T" else a.double()
    assert_close(c, -0.5 * (opa @ b.double()) + 2.0 * c0.double(), torch.float32, reduction=40)


def test_empty_reduction():
    c = torch.full((3, 5), float("nan"))
    _ext._C.bcast_gemm(torch.empty(3, 0), torch.empty(0, 5), c)
    assert torch.equal(c, torch.zeros(3, 5))
    c = torch.ones(3, 5)
    _ext._C.bcast_gemm(torch.empty(0, 3), torch.empty(0, 5), c, "T", beta=3.0)
    assert torch.equal(c, torch.full((3, 5), 3.0))


@pytest.mark.parametrize("bad, match", [
    (lambda: _ext._C.bcast_gemm(torch.ones(2, 16, dtype=torch.float64), torch.ones(16, 3),
                                torch.empty(2, 3)), "a must be"),
    (lambda: _ext._C.bcast_gemm(torch.ones(2, 16), torch.ones(16, 3), torch.empty(2, 4)),
     "shapes"),
    (lambda: _ext._C.bcast_gemm(torch.ones(2, 16), torch.ones(3, 16).T, torch.empty(2, 3)),
     "b must be"),
    (lambda: _ext._C.bcast_gemm(torch.ones(2, 16), torch.ones(16, 3), torch.empty(2, 3), "X"),
     "ta must be"),
])
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_routing_rule():
    ok = _ext._C.bcast_gemm_ok
    # the spinal training step's gradient products at batch 1 and 32
    assert ok("T", 512, 1600, 32) and ok("T", 128, 25600, 32) and ok("T", 512, 160, 1)
    assert ok("N", 32, 1600, 512) and ok("N", 32, 25600, 128) and ok("N", 1, 1600, 512)
    # the transposed chain's forward: weights x a batch of 32 columns, any in_features
    assert ok("N", 512, 32, 25600) and ok("N", 16, 32, 160) and ok("N", 10, 32, 2048)
    assert not ok("N", 1, 25600, 128)  # a memory-bound GEMV: MKL streams B faster
    assert not ok("T", 512, 1600, 256) and not ok("N", 256, 25600, 128)  # a wide C at long K
    assert not ok("T", 512, 160, 4096)  # A^T at a long K: one cache line of A per k
    assert not ok("N", 32, 8192, 1024)  # 8-32 rows, but beyond the measured K and cache-sized B
    assert not ok("N", 0, 8, 32) and not ok("T", 4, 0, 8) and not ok("N", 4, 8, 0)


# ---- the epilogue, long reductions, bcast_gemm_sum (the transposed chain's layer) -------------

@pytest.mark.parametrize("M,N,K", [(7, 33, 20), (32, 64, 100), (128, 32, 300)])
@pytest.mark.parametrize("ta", ["N", "T"])
@pytest.mark.parametrize("threads", [1, 2])
def test_epilogue_bias_relu(M, N, K, ta, threads):
    g = torch.Generator().manual_seed(M + N + K)
    a, b = _operands(M, N, K, ta, g)
    a[0, 0] = float("nan")  # op(a)[0, 0] for both ta: row 0 of c is NaN, ReLU keeps it
    bias = torch.randn(M, generator=g)
    c = torch.full((M, N), float("nan"))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _ext._C.bcast_gemm(a, b, c, ta, row_bias=bias, relu=True)
    finally:
        torch.set_num_threads(old)
    opa = a.double().T if ta == "T" else a.double()
    want = torch.relu(opa @ b.double() + bias.double()[:, None])
    assert torch.isnan(c[0]).all() and not torch.isnan(c[1:]).any()
    assert_close(c[1:], want[1:], torch.float32, reduction=K)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("M,N,ks", [(5, 17, (3,)), (128, 32, (1600, 128)), (40, 200, (64, 9, 33))])
def test_sum_of_terms(M, N, ks, threads):
    g = torch.Generator().manual_seed(M * N)
    a = [torch.randn(M, k + 3, generator=g)[:, 1:k + 1] for k in ks]  # strided rows
    b = [torch.randn(k, N, generator=g) for k in ks]
    bias = torch.randn(M, generator=g)
    c = torch.full((M, N), float("nan"))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _ext._C.bcast_gemm_sum(a, b, c, row_bias=bias, relu=True)
    finally:
        torch.set_num_threads(old)
    want = sum(x.double() @ y.double() for x, y in zip(a, b)) + bias.double()[:, None]
    assert_close(c, torch.relu(want), torch.float32, reduction=sum(ks))


@pytest.mark.parametrize("rows,cols", [(1, 1), (16, 16), (17, 33), (32, 3200), (64, 257),
                                       (3, 1000), (40, 2000)])
@pytest.mark.parametrize("threads", [1, 2])
def test_transpose(rows, cols, threads):
    src = torch.randn(rows, cols + 5)[:, 2:cols + 2]  # strided rows in and out
    dst = torch.full((cols, rows + 3), float("nan"))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _ext._C.transpose_f32(src, dst[:, 1:rows + 1])
    finally:
        torch.set_num_threads(old)
    assert torch.equal(dst[:, 1:rows + 1], src.T)
    assert dst[:, 0].isnan().all() and dst[:, rows + 1:].isnan().all()  # nothing outside


@pytest.mark.parametrize("bad, match", [
    (lambda: _ext._C.bcast_gemm(torch.ones(2, 16), torch.ones(16, 3), torch.empty(2, 3),
                                row_bias=torch.ones(3)), "row_bias must be"),
    (lambda: _ext._C.bcast_gemm_sum([torch.ones(2, 4)], [], torch.empty(2, 3)), "equally long"),
    (lambda: _ext._C.bcast_gemm_sum([torch.ones(2, 4)], [torch.ones(5, 3)], torch.empty(2, 3)),
     "term 0"),
    (lambda: _ext._C.transpose_f32(torch.ones(2, 4), torch.empty(2, 4)), "transposed"),
    (lambda: _ext._C.transpose_f32(torch.ones(2, 4).T, torch.empty(2, 4)), "src must be"),
])
def test_bad_hook_input(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()
