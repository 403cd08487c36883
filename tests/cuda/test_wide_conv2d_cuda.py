"""The CUDA direct kernel of wide_conv2d (csrc/cuda/wide_conv2d.cu) against the float64 reference.

Runs only where a GPU is present and shallowkern._C was built with its CUDA kernels; elsewhere
every test is collected and skipped. Calls ``torch.ops.shallowkern._wide_conv2d_native`` directly
(the routing in shallowkern.ops.wide_conv2d is tested once at the end).

Tolerances: the shared table (shallowkern.testing.tolerance, per dtype, atol growing with
sqrt(C*R*S)): |out - ref| <= atol + rtol * |ref|. The reference sees the inputs
already rounded to the dtype, so only accumulation and output rounding differ. Indices must match
the reference wherever the window's top-2 values (and, with ReLU, the max and 0) are further apart
than the tolerance.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import shallowkern
from shallowkern import _ext
from shallowkern.ops.wide_conv2d import NO_GRAD, conv_out_hw, wide_conv2d_reference
from shallowkern.testing import assert_close, tolerance

_HAVE = torch.cuda.is_available() and _ext.has_cuda_kernels()
pytestmark = [
    pytest.mark.requires_cuda_ext,
    pytest.mark.skipif(not _HAVE, reason="needs a CUDA device and shallowkern._C built with CUDA "
                                         "kernels"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
C_INS = [1, 3]
WIDTHS = [1, 6, 127, 1000]  # width 1, small, prime-ish, larger than one block's slab

# (name, H, W, (R, S), stride, padding, dilation, bias, relu, pool, return_indices)
CONFIGS = [
    ("lenet5x5_pool", 31, 31, (5, 5), (1, 1), (0, 0), (1, 1), True, True, 2, True),
    ("5x5_pad_nobias_norelu", 31, 31, (5, 5), (1, 1), (2, 2), (1, 1), False, False, 2, True),
    ("5x5_pool1_even", 32, 32, (5, 5), (1, 1), (0, 0), (1, 1), True, True, 1, False),
    ("3x3_pad_pool1_odd", 31, 31, (3, 3), (1, 1), (1, 1), (1, 1), True, True, 1, False),
    ("3x3_pool2_noidx", 31, 31, (3, 3), (1, 1), (0, 0), (1, 1), True, True, 2, False),
    ("5x5_stride2", 31, 31, (5, 5), (2, 2), (1, 1), (1, 1), True, True, 2, True),
    ("3x3_dilation2", 31, 31, (3, 3), (1, 1), (2, 2), (2, 2), False, True, 2, True),
    ("4x2_rect_mixed", 31, 29, (4, 2), (2, 1), (1, 0), (1, 2), True, False, 1, False),
    ("1x1_pool", 31, 31, (1, 1), (1, 1), (0, 0), (1, 1), True, True, 2, True),
]


def _inputs(n, c, h, w, k, rs, dtype, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    wt = torch.randn(k, c, *rs, generator=g).to(dtype)
    b = torch.randn(k, generator=g).to(dtype) if bias else None
    return x, wt, b


def _poison_allocator(shapes_dtypes):
    """Fill blocks the caching allocator will hand out next: NaN for floats, 255 for uint8."""
    junk = []
    for shape, dtype in shapes_dtypes:
        if dtype == torch.uint8:
            junk.append(torch.full(shape, 255, dtype=dtype, device="cuda"))
        else:
            junk.append(torch.full(shape, float("nan"), dtype=dtype, device="cuda"))
    torch.cuda.synchronize()
    del junk


def _run_native(x, w, b, stride, padding, dilation, relu, pool, return_indices):
    return torch.ops.shallowkern._wide_conv2d_native(
        x, w, b, list(stride), list(padding), list(dilation), 1, relu, pool, return_indices)


def _check(x, w, b, stride, padding, dilation, relu, pool, return_indices):
    dtype = x.dtype
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    oh, ow = conv_out_hw(h, wd, (r, s), stride, padding, dilation)
    ph, pw = oh // pool, ow // pool
    want_idx = pool == 2 and return_indices
    xd, wdv, bd = x.cuda(), w.cuda(), None if b is None else b.cuda()
    _poison_allocator([((n, k, ph, pw), dtype)]
                      + ([((n, k, ph, pw), torch.uint8)] if want_idx else []))
    out, idx = _run_native(xd, wdv, bd, stride, padding, dilation, relu, pool, return_indices)
    torch.cuda.synchronize()
    assert out.shape == (n, k, ph, pw) and out.dtype == dtype and out.is_contiguous()
    assert idx.dtype == torch.uint8
    if not want_idx:
        assert idx.shape == (0,)
    else:
        assert idx.shape == out.shape

    x64, w64 = x.double(), w.double()
    b64 = None if b is None else b.double()
    ref, _ = wide_conv2d_reference(x64, w64, b64, stride, padding, dilation, 1, relu, pool, False)
    rtol, atol = tolerance(dtype, c * r * s)
    got = out.double().cpu()
    assert not got.isnan().any(), "unwritten (poisoned) outputs or NaN"
    err = (got - ref).abs()
    bound = atol + rtol * ref.abs()
    assert (err <= bound).all(), (
        f"max err {err.max().item():.3g}, max err/bound {(err / bound).max().item():.3g}")

    if want_idx:
        gi = idx.cpu().long()
        assert ((gi >= 0) & (gi <= NO_GRAD)).all(), "unwritten (poisoned) indices"
        y = F.conv2d(x64, w64, b64, stride, padding, dilation)
        if relu:
            y = torch.relu(y)
        win = y[:, :, : 2 * ph, : 2 * pw].reshape(n, k, ph, 2, pw, 2).permute(0, 1, 2, 4, 3, 5)
        win = win.reshape(n, k, ph, pw, 4)
        top2 = win.topk(2, dim=-1).values
        # Near-ties: within 4x the tolerance (the kernel compares values rounded to the dtype).
        margin = 4 * (atol + rtol * top2[..., 0].abs())
        clear = (top2[..., 0] - top2[..., 1]) > margin
        if relu:
            clear &= top2[..., 0].abs() > margin
        # first max in scan order, NO_GRAD where the ReLU zeroed the window
        ref_idx = win.argmax(dim=-1)
        if relu:
            ref_idx = torch.where(top2[..., 0] <= 0, torch.full_like(ref_idx, NO_GRAD), ref_idx)
        assert clear.float().mean() > 0.5 or k * ph * pw < 8, "test data has too many near-ties"
        mism = (gi != ref_idx) & clear
        assert not mism.any(), f"{int(mism.sum())} index mismatches away from ties"
        if relu:  # exact-zero windows: the kernel must say NO_GRAD exactly where out == 0
            assert ((gi == NO_GRAD) == (out.cpu() <= 0)).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("c", C_INS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda cfg: cfg[0])
def test_matches_reference(cfg, c, k, dtype):
    _, h, w, rs, stride, padding, dilation, bias, relu, pool, ret = cfg
    x, wt, b = _inputs(2, c, h, w, k, rs, dtype, bias, seed=k * 7 + c)
    _check(x, wt, b, stride, padding, dilation, relu, pool, ret)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_batch_one_and_lenet_shape(dtype):
    x, w, b = _inputs(1, 3, 31, 31, 64, (5, 5), dtype, True, seed=1)
    _check(x, w, b, (1, 1), (0, 0), (1, 1), True, 2, True)
    x, w, b = _inputs(128, 3, 32, 32, 256, (5, 5), dtype, True, seed=2)  # conv1 of LeNet
    _check(x, w, b, (1, 1), (0, 0), (1, 1), True, 2, True)


@pytest.mark.parametrize("c", [2, 4, 16])
def test_other_channel_counts(c):
    x, w, b = _inputs(2, c, 23, 19, 40, (5, 5), torch.float32, True, seed=c)
    _check(x, w, b, (1, 1), (2, 2), (1, 1), True, 2, True)
    x, w, b = _inputs(2, c, 23, 19, 40, (3, 3), torch.float32, True, seed=c + 1)
    _check(x, w, b, (1, 1), (1, 1), (1, 1), False, 1, False)


def test_large_image_spatial_tiles():
    # Does not fit in one block's shared memory: row (and column) tiles.
    x, w, b = _inputs(1, 3, 300, 700, 24, (5, 5), torch.float32, True, seed=3)
    _check(x, w, b, (1, 1), (2, 2), (1, 1), True, 2, True)
    x, w, b = _inputs(1, 3, 129, 1500, 8, (3, 3), torch.float32, True, seed=4)
    _check(x, w, b, (1, 1), (1, 1), (1, 1), True, 1, False)


@pytest.mark.parametrize("pool", [1, 2])
def test_empty_batch(pool):
    x, w, b = _inputs(0, 3, 31, 31, 6, (5, 5), torch.float32, True)
    out, idx = _run_native(x.cuda(), w.cuda(), b.cuda(), (1, 1), (0, 0), (1, 1), True, pool, True)
    p = 27 // pool
    assert out.shape == (0, 6, p, p)
    assert idx.shape == ((0, 6, p, p) if pool == 2 else (0,))


def test_non_contiguous_input():
    x, w, b = _inputs(2, 3, 31, 40, 12, (5, 5), torch.float32, True)
    xs = x.cuda()[:, :, :, 3:34]  # a strided view
    assert not xs.is_contiguous()
    out, _ = _run_native(xs, w.cuda(), b.cuda(), (1, 1), (0, 0), (1, 1), True, 2, False)
    ref, _ = wide_conv2d_reference(x[:, :, :, 3:34].double(), w.double(), b.double(), (1, 1),
                                   (0, 0), (1, 1), 1, True, 2, False)
    assert_close(out, ref, torch.float32, 75)


def test_nan_propagates_like_the_reference():
    x, w, b = _inputs(1, 3, 31, 31, 6, (5, 5), torch.float32, True)
    x[0, 1, 10, 10] = float("nan")
    out, idx = _run_native(x.cuda(), w.cuda(), b.cuda(), (1, 1), (0, 0), (1, 1), True, 2, True)
    ref, ridx = wide_conv2d_reference(x.double(), w.double(), b.double(), (1, 1), (0, 0), (1, 1),
                                      1, True, 2, True)
    assert torch.equal(out.cpu().isnan(), ref.isnan())
    nan = ref.isnan()
    assert torch.equal(idx.cpu()[nan], ridx[nan])  # the last NaN in scan order, never NO_GRAD


def _args(**over):
    x, w, b = _inputs(2, 3, 16, 16, 8, (5, 5), torch.float32, True)
    a = dict(x=x.cuda(), w=w.cuda(), b=b.cuda(), stride=[1, 1], padding=[0, 0], dilation=[1, 1],
             groups=1, relu=True, pool=2, ret=True)
    a.update(over)
    return a


def _call(a):
    return torch.ops.shallowkern._wide_conv2d_native(
        a["x"], a["w"], a["b"], a["stride"], a["padding"], a["dilation"], a["groups"], a["relu"],
        a["pool"], a["ret"])


@pytest.mark.parametrize("over, match", [
    (lambda a: dict(x=a["x"].double(), w=a["w"].double(), b=a["b"].double()), "input must be"),
    (lambda a: dict(w=a["w"].half()), "weight"),
    (lambda a: dict(w=a["w"].cpu()), "weight"),
    (lambda a: dict(x=a["x"][0]), "input must be a 4-D"),
    (lambda a: dict(b=a["b"][:3]), "bias"),
    (lambda a: dict(b=a["b"].half()), "bias"),
    (lambda a: dict(groups=3, w=a["w"][:, :1].contiguous()), "groups"),
    (lambda a: dict(w=a["w"][:, :2].contiguous()), "input channels"),
    (lambda a: dict(x=torch.randn(2, 17, 16, 16, device="cuda"),
                    w=torch.randn(8, 17, 5, 5, device="cuda")), "channels"),
    (lambda a: dict(stride=[0, 1]), "stride"),
    (lambda a: dict(dilation=[1, 0]), "dilation"),
    (lambda a: dict(padding=[-1, 0]), "padding"),
    (lambda a: dict(pool=3), "pool"),
    (lambda a: dict(w=torch.randn(8, 3, 17, 17, device="cuda")), "does not fit"),
    (lambda a: dict(x=a["x"][:, :, :5, :5].contiguous()), "pool=2 needs"),
], ids=["float64", "weight_dtype", "weight_device", "input_rank", "bias_shape", "bias_dtype",
        "groups", "channel_mismatch", "too_many_channels", "stride", "dilation", "padding", "pool",
        "kernel_too_big", "pool_too_small"])
def test_bad_inputs_raise_naming_the_argument(over, match):
    a = _args()
    a.update(over(a))
    with pytest.raises(RuntimeError, match=match):
        _call(a)


def test_public_op_routes_here(monkeypatch):
    # fp32 with TF32 off: the exact-FMA direct kernel; with tensor cores allowed, Triton runs.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    x, w, b = _inputs(2, 3, 32, 32, 16, (5, 5), torch.float32, True)
    out = shallowkern.ops.wide_conv2d(x.cuda(), w.cuda(), b.cuda(), activation="relu", pool=2)
    choice = shallowkern.last_backend("wide_conv2d")
    assert choice is not None and choice.backend == "native", choice
    ref, _ = wide_conv2d_reference(x.double(), w.double(), b.double(), (1, 1), (0, 0), (1, 1), 1,
                                   True, 2, False)
    assert_close(out, ref, torch.float32, 75)
