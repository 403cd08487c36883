"""The C++ kernels' skinny-GEMM kernel (csrc/cpu/small_gemm.cpp): c = alpha a b^T + beta c in
fp32 against an fp64 oracle (the tolerance table, reduction K), on the shapes where it is routed
(small_gemm_ok) with every register tail (rows % 3, outputs % 8, K % 16), strided rows, beta = 0
over NaN, and threads."""

import pytest
import torch

from shallowkern import _ext
from shallowkern.testing import assert_close

pytestmark = pytest.mark.skipif(
    _ext._C is None or not _ext._C.small_gemm_ok(1, 1, 16),
    reason="needs shallowkern._C on an AVX-512 CPU (the skinny kernel)")

SHAPES = [(1, 1, 16), (1, 8, 17), (2, 130, 31), (3, 8, 1600), (4, 10, 33), (5, 7, 1608),
          (32, 8, 25600), (7, 24, 256), (12, 129, 300), (33, 10, 47), (1, 517, 2112),
          (2, 64, 25600)]


@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_matches_fp64(M, N, K, threads):
    assert _ext._C.small_gemm_ok(M, N, K)
    g = torch.Generator().manual_seed(M * 1000 + N * 10 + K)
    # strided rows: views into wider buffers
    a = torch.randn(M, K + 5, generator=g)[:, 3:K + 3]
    b = torch.randn(N, K + 2, generator=g)[:, :K]
    c = torch.full((M, N + 4), float("nan"))[:, 1:N + 1]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _ext._C.small_gemm_nt(a, b, c)  # beta = 0: the NaNs must not leak
    finally:
        torch.set_num_threads(old)
    assert_close(c, a.double() @ b.double().T, torch.float32, reduction=K)


def test_alpha_beta():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 40, generator=g), torch.randn(9, 40, generator=g)
    c0 = torch.randn(5, 9, generator=g)
    c = c0.clone()
    _ext._C.small_gemm_nt(a, b, c, alpha=-0.5, beta=2.0)
    ref = -0.5 * (a.double() @ b.double().T) + 2.0 * c0.double()
    assert_close(c, ref, torch.float32, reduction=40)


def test_routing_rule():
    ok = _ext._C.small_gemm_ok
    assert ok(32, 8, 1600) and ok(1, 512, 25600) and ok(12, 128, 1728) and ok(32, 24, 1608)
    assert not ok(32, 128, 1728)  # MKL's blocked kernel is faster there
    assert not ok(32, 16, 64) and not ok(4, 8, 15) and not ok(0, 8, 32)


@pytest.mark.parametrize("bad, match", [
    (lambda: _ext._C.small_gemm_nt(torch.ones(2, 16, dtype=torch.float64), torch.ones(3, 16),
                                   torch.empty(2, 3)), "a must be"),
    (lambda: _ext._C.small_gemm_nt(torch.ones(2, 16), torch.ones(3, 16), torch.empty(2, 4)),
     "shapes"),
    (lambda: _ext._C.small_gemm_nt(torch.ones(2, 16).T, torch.ones(3, 2), torch.empty(16, 3)),
     "a must be"),
    (lambda: _ext._C.small_gemm_nt(torch.ones(32, 64), torch.ones(64, 64), torch.empty(32, 64)),
     "does not take"),
])
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()
