"""The registered op shallowkern::wide_conv2d: every CPU path against the fp64 reference.

Kernel-level tests live beside their kernels' tests: tests/ops/test_wide_conv2d_native.py (C++),
tests/triton/test_wide_conv2d.py (Triton, interpreter), tests/cuda/ (CUDA, GPU only).
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import shallowkern
from shallowkern.ops import use_backend, wide_conv2d
from shallowkern.ops.wide_conv2d import NO_GRAD, wide_conv2d_reference
from shallowkern.testing import FIRST_LAYER_CIN, ODD_HW, WIDTHS, assert_close, has_ext

CPU_BACKENDS = ["reference"] + (["native"] if has_ext() else [])


def eager(x, w, b, stride=1, padding=0, dilation=1, groups=1, relu=True, pool=True):
    """What PyTorch users write: conv2d -> relu -> max_pool2d."""
    y = F.conv2d(x, w, b, stride, padding, dilation, groups)
    y = torch.relu(y) if relu else y
    return F.max_pool2d(y, 2) if pool else y


def make(n, c, h, k, r=5, dtype=torch.float32, groups=1, bias=True, seed=0, w_=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w_ or h, generator=g).to(dtype)
    w = (torch.randn(k, c // groups, r, r, generator=g) / (c * r * r / groups) ** 0.5).to(dtype)
    b = torch.randn(k, generator=g).to(dtype) if bias else None
    return x, w, b


def check_forward_and_grads(x, w, b, dtype, backend, **kw):
    """Forward + all gradients vs the fp64 reference of eager conv->relu->pool."""
    relu, pool = kw.pop("relu", True), kw.pop("pool", True)
    red = w.shape[1] * w.shape[2] * w.shape[3]
    leaves = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in (x, w, b)]
    with use_backend(backend):
        out = wide_conv2d(*leaves, activation="relu" if relu else None, pool=2 if pool else None, **kw)
    assert shallowkern.last_backend("wide_conv2d").backend == backend
    ref_leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b)]
    ref = eager(*ref_leaves, relu=relu, pool=pool, **kw)
    assert_close(out, ref, dtype, red, msg="forward")
    if out.numel() == 0:
        return
    g = torch.randn_like(ref)
    with use_backend(backend):
        out.backward(g.to(dtype))
    ref.backward(g)
    for name, got, want in zip("xwb", leaves, ref_leaves):
        if got is not None:
            n_red = red if name == "x" else max(out.numel() // out.shape[1], 1) * 4
            assert_close(got.grad, want.grad, dtype, n_red, msg=f"grad {name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", WIDTHS)
def test_first_layer_widths(backend, dtype, k):
    x, w, b = make(2, FIRST_LAYER_CIN, 12, k, dtype=dtype)
    check_forward_and_grads(x, w, b, dtype, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("relu,pool", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("case", [
    dict(n=1, c=7, h=ODD_HW, k=5, r=5),                       # odd map: floor pooling
    dict(n=3, c=16, h=10, k=13, r=3, padding=1),
    dict(n=2, c=4, h=13, k=6, r=3, stride=2, padding=2),
    dict(n=2, c=4, h=14, k=6, r=3, dilation=2),
    dict(n=2, c=8, h=9, k=6, r=3, groups=2, padding=1),
    dict(n=2, c=5, h=8, k=3, r=1, bias=False),
    dict(n=2, c=3, h=10, w_=13, k=4, r=3),                      # non-square
])
def test_configurations(backend, relu, pool, case):
    case = dict(case)
    conv_kw = {key: case.pop(key) for key in ("padding", "stride", "dilation") if key in case}
    x, w, b = make(**case)
    groups = case.get("groups", 1)
    check_forward_and_grads(x, w, b, torch.float32, backend, relu=relu, pool=pool, groups=groups,
                            **conv_kw)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_layouts_and_empty_batch(backend):
    x, w, b = make(3, 6, 12, 8)
    cl = x.to(memory_format=torch.channels_last)
    nc = torch.randn(3, 12, 12, 12)[:, ::2]  # non-contiguous channel slice
    for inp in (cl, nc):
        with use_backend(backend):
            out = wide_conv2d(inp, w, b, activation="relu", pool=2)
        assert_close(out, eager(inp.double(), w.double(), b.double()), torch.float32, 150)
    with use_backend(backend):
        assert wide_conv2d(cl, w, b, activation="relu", pool=2).is_contiguous(
            memory_format=torch.channels_last)
        empty = wide_conv2d(x[:0], w, b, activation="relu", pool=2)
    assert empty.shape == (0, 8, 4, 4)
    check_forward_and_grads(x[:0], w, b, torch.float32, backend)


def test_low_precision_reference_on_cpu():
    x, w, b = make(2, 3, 12, 6)
    for dtype in (torch.float16, torch.bfloat16):
        out = wide_conv2d(x.to(dtype), w.to(dtype), b.to(dtype), activation="relu", pool=2)
        assert out.dtype == dtype
        assert shallowkern.last_backend("wide_conv2d").backend == "reference"
        torch_lp = eager(x.to(dtype), w.to(dtype), b.to(dtype))
        assert_close(out, eager(x.double(), w.double(), b.double()), dtype, 75, torch_result=torch_lp)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_indices_first_max_and_no_grad(backend):
    # Zero weights: every conv output equals the bias -> all four window entries tie.
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    w = torch.zeros(3, 2, 3, 3, dtype=torch.float64)
    b = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    with use_backend(backend):
        out, idx = torch.ops.shallowkern.wide_conv2d(x, w, b, [1, 1], [0, 0], [1, 1], 1, True, 2, True)
    assert (idx[0, 0] == 0).all()          # tie on a positive value: first position
    assert (idx[0, 1:] == NO_GRAD).all()   # ReLU zeroed the window (0 and negative): no gradient
    assert (out[0, 0] == 1).all() and (out[0, 1:] == 0).all()
    # NaN wins the window, as in max_pool2d.
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 2, 3] = float("nan")
    with use_backend(backend):
        out, idx = torch.ops.shallowkern.wide_conv2d(
            x, torch.ones(1, 1, 1, 1, dtype=torch.float64), None, [1, 1], [0, 0], [1, 1], 1, False, 2, True)
    assert torch.isnan(out[0, 0, 1, 1]) and idx[0, 0, 1, 1] == 2 * 0 + 1


def test_gradcheck_fp64():
    x, w, b = make(2, 3, 9, 4, r=3, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    for act, pool in [("relu", 2), (None, 2), ("relu", None)]:
        assert torch.autograd.gradcheck(
            lambda x, w, b: wide_conv2d(x, w, b, padding=1, activation=act, pool=pool), leaves)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    x, w, b = make(2, 3, 9, 4, r=3)
    samples = [
        (x, w, b, [1, 1], [0, 0], [1, 1], 1, True, 2, True),
        (x.requires_grad_(), w.requires_grad_(), b, [2, 1], [1, 1], [1, 1], 1, False, 2, True),
        (x.to(memory_format=torch.channels_last), w, None, [1, 1], [1, 1], [1, 1], 1, True, 1, False),
    ]
    with use_backend(backend):
        for args in samples:
            torch.library.opcheck(torch.ops.shallowkern.wide_conv2d, args)
        gout = torch.randn(2, 4, 3, 3)
        idx = torch.randint(0, 5, (2, 4, 3, 3), dtype=torch.uint8)
        torch.library.opcheck(torch.ops.shallowkern.wide_conv2d_backward,
                              (gout, x.detach(), w.detach(), idx, [1, 1], [0, 0], [1, 1], 1, True, 2,
                               [True, True, True]))


def test_compile_fullgraph():
    x, w, b = make(2, 3, 12, 5)
    fn = torch.compile(lambda x, w, b: wide_conv2d(x, w, b, activation="relu", pool=2), fullgraph=True)
    assert_close(fn(x, w, b), eager(x.double(), w.double(), b.double()), torch.float32, 75)


def test_flop_formula():
    x, w, b = make(4, 3, 32, 6, dtype=torch.float64)
    with FlopCounterMode(display=False) as counter:
        wide_conv2d(x, w, b, activation="relu", pool=2)
    assert counter.get_total_flops() == 2 * 4 * 28 * 28 * 6 * 75
    w.requires_grad_()
    with FlopCounterMode(display=False) as counter:
        wide_conv2d(x, w, b, activation="relu", pool=2).sum().backward()
    assert counter.get_total_flops() == 2 * (2 * 4 * 28 * 28 * 6 * 75)  # forward + grad_weight only


@pytest.mark.parametrize("args,err,match", [
    ((torch.randn(3, 8, 8), torch.randn(4, 3, 3, 3)), ValueError, "input must be a 4-D"),
    ((torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3)), ValueError, "weight must be a 4-D"),
    ((torch.randn(1, 3, 8, 8), torch.randn(4, 2, 3, 3)), ValueError, "input channels"),
    ((torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3).double()), TypeError, "weight dtype"),
    ((torch.randint(0, 9, (1, 3, 8, 8)), torch.randn(4, 3, 3, 3)), TypeError, "floating-point"),
    ((torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(5)), ValueError, "bias"),
    ((torch.randn(1, 3, 4, 4), torch.randn(4, 3, 4, 4)), ValueError, "pool=2 needs"),
    ((torch.randn(1, 3, 4, 4), torch.randn(4, 3, 5, 5)), ValueError, "does not fit"),
    ((torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3).to("meta")), ValueError, "weight is on"),
])
def test_bad_input(args, err, match):
    with pytest.raises(err, match=match):
        wide_conv2d(*args, activation="relu", pool=2)


def test_bad_options():
    x, w, b = make(1, 3, 8, 2, r=3)
    with pytest.raises(ValueError, match="activation"):
        wide_conv2d(x, w, b, activation="gelu")
    with pytest.raises(ValueError, match="pool"):
        wide_conv2d(x, w, b, pool=3)
    with pytest.raises(ValueError, match="stride"):
        wide_conv2d(x, w, b, stride=(1, 2, 3))
    with pytest.raises(ValueError, match="stride >= 1"):
        wide_conv2d(x, w, b, stride=0)
    with pytest.raises(ValueError, match="use_backend"):
        with use_backend("cudnn"):
            pass


def test_backward_without_indices_is_an_error():
    x, w, b = make(1, 3, 8, 2, r=3)
    w.requires_grad_()
    out, _ = torch.ops.shallowkern.wide_conv2d(x, w, b, [1, 1], [0, 0], [1, 1], 1, True, 2, False)
    with pytest.raises(RuntimeError, match="return_indices=True"):
        out.sum().backward()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 3), c=st.integers(1, 6), k=st.integers(1, 9), h=st.integers(5, 13),
       r=st.integers(1, 4), stride=st.integers(1, 2), padding=st.integers(0, 2),
       relu=st.booleans(), pool=st.booleans(), bias=st.booleans(),
       backend=st.sampled_from(CPU_BACKENDS))
def test_fuzz_against_reference(n, c, k, h, r, stride, padding, relu, pool, bias, backend):
    oh = (h + 2 * padding - r) // stride + 1
    if oh < (2 if pool else 1):
        return
    x, w, b = make(n, c, h, k, r=r, bias=bias)
    check_forward_and_grads(x, w, b, torch.float32, backend, relu=relu, pool=pool, stride=stride,
                            padding=padding)


def test_reference_indices_match_eager_gradient():
    """The reference's index encoding reproduces eager max_pool2d's gradient exactly."""
    x, w, b = make(2, 3, 11, 4, r=3, dtype=torch.float64)
    out, idx = wide_conv2d_reference(x, w, b, [1, 1], [0, 0], [1, 1], 1, True, 2, True)
    assert_close(out, eager(x, w, b), torch.float64)
    assert idx.dtype == torch.uint8 and int(idx.max()) <= NO_GRAD


def test_zero_input_channels_fake_agrees_with_eager():
    """aten's conv2d gives (N, 0, OH, OW) for C_in = 0; the fake must say the same, and pool=2
    (which max_pool2d refuses on that output) is a clear error on every path."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from shallowkern.ops.wide_conv2d import wide_conv2d_op

    x, w = torch.randn(2, 0, 8, 8), torch.randn(4, 0, 3, 3)
    args = ([1, 1], [0, 0], [1, 1], 1, False, 1, False)
    eager = wide_conv2d_op(x, w, None, *args)[0]
    assert eager.shape == F.conv2d(x, w).shape == (2, 0, 6, 6)
    with FakeTensorMode() as mode:
        fake = wide_conv2d_op(mode.from_tensor(x), mode.from_tensor(w), None, *args)[0]
    assert fake.shape == eager.shape
    with pytest.raises(ValueError, match="zero input channels"):
        wide_conv2d(x, w, activation="relu", pool=2)


@pytest.mark.skipif(not has_ext(), reason="shallowkern._C (the C++ kernels) is not built")
def test_fast_path_matches_the_public_op_and_the_dispatch_table():
    """Unforced eager CPU calls skip the public custom op for the C++ kernels (inference: the
    forward kernel; training: a thin autograd.Function over both kernels). Same backend as
    FORWARD chooses, bit-identical outputs and gradients to the public op's native path, double
    backward, and FlopCounterMode still counts (a dispatch mode sends calls to the public op)."""
    import importlib

    wc = importlib.import_module("shallowkern.ops.wide_conv2d")  # the module, not the function
    threads = torch.get_num_threads()
    for n, dtype, fmt in [(0, torch.float32, torch.contiguous_format),
                          (1, torch.float32, torch.contiguous_format),
                          (max(threads, 3), torch.float64, torch.contiguous_format),
                          (max(threads, 3), torch.float32, torch.channels_last)]:
        x, w, b = make(n, 6, 11, 5, r=3, dtype=dtype)
        x = x.contiguous(memory_format=fmt)
        for grad in (False, True):
            leaves = [t.clone().requires_grad_(grad) for t in (x, w, b)]
            out = wide_conv2d(*leaves, activation="relu", pool=2)
            assert shallowkern.last_backend("wide_conv2d") == wc.FORWARD.choose(
                x, w, b, (1, 1), (0, 0), (1, 1), 1), (n, dtype, fmt, grad)
            with use_backend(shallowkern.last_backend("wide_conv2d").backend):
                ref_leaves = [t.clone().requires_grad_(grad) for t in (x, w, b)]
                ref = wide_conv2d(*ref_leaves, activation="relu", pool=2)
            assert torch.equal(out, ref) and out.is_contiguous(memory_format=fmt)
            if grad and n > 0:
                g = torch.randn_like(out)
                got = torch.autograd.grad(out, leaves, g)
                want = torch.autograd.grad(ref, ref_leaves, g)
                assert all(torch.equal(a, c) for a, c in zip(got, want))
    x, w, b = (t.double().requires_grad_() for t in make(2, 2, 6, 3, r=3))
    f = lambda *t: wide_conv2d(*t, activation="relu", pool=2)  # noqa: E731
    assert isinstance(f(x, w, b).grad_fn, wc._NativeFn._backward_cls)
    assert torch.autograd.gradgradcheck(f, (x, w, b))
    for grad in (False, True):
        with torch.set_grad_enabled(grad), FlopCounterMode(display=False) as fc:
            wide_conv2d(x, w, b, activation="relu", pool=2)
        assert fc.get_total_flops() == 2 * 2 * 3 * 4 * 4 * 2 * 9  # 2 N K OH OW C R S
    with pytest.raises(ValueError, match="weight"):  # the C++ error, re-raised in Python's words
        wide_conv2d(x.detach(), w.detach()[:, :1], None, activation="relu", pool=2)
