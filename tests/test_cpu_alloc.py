"""Large CPU outputs of the C++ kernels (csrc/cpu/alloc.cpp): from 2 MiB on 2 MiB-aligned huge
pages, freed blocks cached for reuse of the same size but never while a tensor still holds them,
the knob SHALLOWKERN_CPU_HUGE_PAGES=0 (cpu.huge_pages) back to at::empty, empty_cpu_cache, and
SpinalLinear's gradients (the user of it) unchanged bit for bit and never overwritten by a later
step while alive."""

import io
import sys

import pytest
import torch

import shallowkern
from shallowkern import _ext, _knobs

pytestmark = pytest.mark.skipif(
    _ext._C is None or not hasattr(_ext._C, "empty_large") or not sys.platform.startswith("linux"),
    reason="needs shallowkern._C on Linux (the huge-page allocator)")

MIB = 1 << 20
HUGE = 2 * MIB


def big(nbytes=3 * MIB, dtype=torch.float32):
    return _ext._C.empty_large([nbytes // dtype.itemsize], dtype)


@pytest.fixture(autouse=True)
def empty_cache():
    shallowkern.empty_cpu_cache()
    yield
    shallowkern.empty_cpu_cache()


def test_large_is_aligned_writable_and_cached_after_free():
    t = big()
    assert t.shape == (3 * MIB // 4,) and t.dtype == torch.float32 and t.is_contiguous()
    assert t.data_ptr() % HUGE == 0
    t.fill_(1.5)
    assert float(t.sum()) == 1.5 * t.numel()
    ptr = t.data_ptr()
    assert _ext._C.large_cache_bytes() == 0
    del t
    assert _ext._C.large_cache_bytes() == 4 * MIB  # rounded up to whole huge pages
    u = big()  # the same size: the cached block
    assert u.data_ptr() == ptr and _ext._C.large_cache_bytes() == 0


def test_a_live_block_is_never_handed_out():
    a = big()
    a.fill_(7.0)
    b = big()
    b.fill_(-1.0)
    assert a.data_ptr() != b.data_ptr()
    assert bool((a == 7.0).all())


def test_other_sizes_and_small_tensors():
    t = big(5 * MIB)
    del t
    u = big(3 * MIB)  # another size class: a new block, the 6 MiB one stays cached
    assert _ext._C.large_cache_bytes() == 6 * MIB
    small = _ext._C.empty_large([16], torch.float64)  # below 2 MiB: at::empty
    assert small.shape == (16,) and small.dtype == torch.float64
    del small, u
    assert _ext._C.large_cache_bytes() == 10 * MIB
    assert shallowkern.empty_cpu_cache() == 10 * MIB
    assert _ext._C.large_cache_bytes() == 0


def test_mid_sized_blocks_are_cached_on_ordinary_pages():
    t = big(300 * 1024)  # from 256 KiB: cached, in 64 KiB steps (no huge page below 2 MiB)
    assert t.data_ptr() % 4096 == 0
    ptr = t.data_ptr()
    del t
    assert _ext._C.large_cache_bytes() == 320 * 1024
    again = big(300 * 1024)
    assert again.data_ptr() == ptr
    small = _ext._C.empty_large([1024], torch.float32)  # 4 KiB: at::empty, never cached
    del small
    assert _ext._C.large_cache_bytes() == 0


def test_large_tensors_behave_as_tensors():
    t = big().view(768, 1024)
    t.copy_(torch.arange(t.numel(), dtype=torch.float32).view_as(t))
    buf = io.BytesIO()
    torch.save(t, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf), t)
    t.resize_(2048, 1024)  # grows through the same allocator
    assert t.shape == (2048, 1024)
    assert torch.equal(t[:768].flatten(), torch.arange(768 * 1024, dtype=torch.float32))


def test_knob_off_is_plain_at_empty():
    with _knobs.override({"cpu.huge_pages": False}):
        t = big()
        del t
        assert _ext._C.large_cache_bytes() == 0
    assert _ext._C.get_knob("SHALLOWKERN_CPU_HUGE_PAGES") == "1"


def test_bad_sizes():
    with pytest.raises(ValueError, match="negative size"):
        _ext._C.empty_large([-1, 4], torch.float32)


def _spinal_grads(x, params):
    y = torch.ops.shallowkern.spinal_linear(x, *params, 2, "relu", "native")
    leaves = [x, *params[0], *params[1], *params[2], params[3], params[4]]
    return torch.autograd.grad((y * torch.linspace(-1, 1, y.shape[1])).sum(), leaves)


def test_spinal_gradients_on_huge_pages():
    """W^x gradients of 128 x 4096 floats (2 MiB) take the huge-page path: bitwise what they are
    on ordinary pages, against the eager oracle, and a later step never overwrites them."""
    g = torch.Generator().manual_seed(0)
    F, W, O = 8192, 128, 10
    wx = [(torch.randn(W, F // 2, generator=g) * 0.02).requires_grad_() for _ in range(4)]
    wh = [(torch.randn(W, W, generator=g) * 0.05).requires_grad_() for _ in range(3)]
    b = [torch.randn(W, generator=g).requires_grad_() for _ in range(4)]
    wo = (torch.randn(O, 4 * W, generator=g) * 0.05).requires_grad_()
    bo = torch.zeros(O, requires_grad=True)
    params = (wx, wh, b, wo, bo)
    x1 = torch.randn(1, F, generator=g, requires_grad=True)
    x2 = torch.randn(1, F, generator=g, requires_grad=True)
    g1 = _spinal_grads(x1, params)
    assert g1[1].data_ptr() % HUGE == 0  # the first W^x gradient: on huge pages
    keep = [t.clone() for t in g1]
    with _knobs.override({"cpu.huge_pages": False}):
        plain = _spinal_grads(x1, params)
    for a, c in zip(g1, plain):
        assert torch.equal(a, c)
    del plain
    g2 = _spinal_grads(x2, params)  # the freed "plain" blocks are not huge; g1's are alive
    for a, c in zip(g1, keep):
        assert torch.equal(a, c)
    assert not torch.equal(g2[1], g1[1])
    ref = torch.ops.shallowkern.spinal_linear(x1, *params, 2, "relu", "reference")
    leaves = [x1, *wx, *wh, *b, wo, bo]
    want = torch.autograd.grad((ref * torch.linspace(-1, 1, ref.shape[1])).sum(), leaves)
    for a, c in zip(g1, want):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)
