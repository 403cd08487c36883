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
