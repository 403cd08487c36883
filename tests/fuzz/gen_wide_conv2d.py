"""Fuzz cases for the raw registered wide_conv2d ops (issue 9, item 3).

``wide_conv2d_case(rng)`` draws one call of one of

* ``torch.ops.shallowkern.wide_conv2d`` (the public op: Python checks, backend choice, autograd),
* ``torch.ops.shallowkern._wide_conv2d_native`` (the C++ forward, CPU and Meta kernels),
* ``torch.ops.shallowkern._wide_conv2d_native_backward`` (the C++ backward),

over shapes (empty batches, zero channels, primes), strides, paddings, dilations, groups, dtypes
(fp32, fp64, fp16, bf16, integers), layouts (contiguous, channels_last, strided slices, expanded
batches) and, in about 40% of the cases, one deliberate fault: a kernel larger than its padded
input (issue 9's heap corruption), negative or zero or 2^62-sized hyper-parameters, wrong list
lengths, bad groups, mismatched channels, bias, dtypes, ranks, grad_out / saved shapes, garbage
pool indices. ``fuzz_reference(op, *args)`` states what must happen (tests/fuzz/_protocol.py):
the call's validity comes from the documented rules (written out below, independently of the C++
checks), and valid calls are compared with wide_conv2d_reference /
wide_conv2d_backward_reference in float64; the meta (fake) kernels must give the same shapes.
"""

from __future__ import annotations

import math
import random

import torch

from shallowkern.ops.wide_conv2d import (
    NO_GRAD,
    wide_conv2d_backward_reference,
    wide_conv2d_reference,
)
from shallowkern.testing import Sample, assert_close, has_ext

from ._protocol import Accepted, Rejected

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
NATIVE_DTYPES = (torch.float32, torch.float64)
_DTYPES = [torch.float32] * 8 + [torch.float64] * 6 + [torch.float16, torch.bfloat16] * 2 + [
    torch.int64, torch.int32, torch.uint8]
FAULTS = ("kernel_too_big", "stride_huge", "negative", "list_length", "groups", "channels",
          "bias_shape", "bias_dtype", "weight_dtype", "rank", "pool", "overflow", "empty_kernel",
          "zero_channels", "grad_out_shape", "grad_out_dtype", "saved_shape", "saved_dtype",
          "garbage_indices", "output_mask_length")


def _ops() -> dict[str, object]:
    ops = {"wide_conv2d": torch.ops.shallowkern.wide_conv2d.default}
    if has_ext():
        ops["_wide_conv2d_native"] = torch.ops.shallowkern._wide_conv2d_native.default
        ops["_wide_conv2d_native_backward"] = (
            torch.ops.shallowkern._wide_conv2d_native_backward.default)
    return ops


def op_name(op) -> str:
    return op.name().split("::")[-1].split(".")[0]


# ---------------------------------------------------------------------------------------------
# drawing tensors
# ---------------------------------------------------------------------------------------------
def _tensor(rng: random.Random, shape, dtype, scale=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(rng.getrandbits(31))
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    return torch.randint(0, 3, shape, generator=g).to(dtype)


def _layout(rng: random.Random, t: torch.Tensor, kinds=("contiguous", "channels_last",
                                                         "slice", "expand")) -> torch.Tensor:
    """The same values in another memory layout (the reference sees the same values)."""
    kind = rng.choice(kinds)
    if t.dim() != 4 or t.numel() == 0:
        return t
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "slice":  # every other column (or channel) of a wider tensor
        dim = rng.choice([1, 3])
        shape = list(t.shape)
        shape[dim] *= 2
        wide = torch.zeros(shape, dtype=t.dtype)
        idx = [slice(None)] * 4
        idx[dim] = slice(None, None, 2)
        wide[tuple(idx)] = t
        return wide[tuple(idx)]
    if kind == "expand" and t.shape[0] > 1:  # one image repeated: batch stride 0
        return t[:1].expand(t.shape)
    return t


def _pairs(rng, choices):
    return [rng.choice(choices), rng.choice(choices)]


# ---------------------------------------------------------------------------------------------
# one case
# ---------------------------------------------------------------------------------------------
def wide_conv2d_case(rng: random.Random) -> Sample:
    """One fuzzed call: ``Sample((op, *args), {}, name)`` (see tests/fuzz/_protocol.py)."""
    ops = _ops()
    name = rng.choice(sorted(ops))
    fault = rng.choice(FAULTS) if rng.random() < 0.4 else None
    dtype = rng.choice(_DTYPES)
    groups = rng.choice([1, 1, 1, 2, 3])
    c = groups * rng.choice([1, 1, 2, 3, 4])
    k = groups * rng.choice([1, 2, 3, 5, 8, 17])
    n = rng.choice([0, 1, 1, 2, 2, 3, 5])
    h, w = rng.randint(1, 13), rng.randint(1, 13)
    r, s = rng.randint(1, 5), rng.randint(1, 5)
    stride, padding, dilation = _pairs(rng, [1, 1, 1, 2, 3]), _pairs(rng, [0, 0, 1, 2]), _pairs(
        rng, [1, 1, 1, 2, 3])
    pool = rng.choice([1, 2, 2])
    relu = rng.random() < 0.6
    return_indices = rng.random() < 0.7
    wc = c // groups
    bias_dtype, weight_dtype = dtype, dtype
    bias_shape = (k,) if rng.random() < 0.7 else None
    x_shape = [n, c, h, w]
    w_shape = [k, wc, r, s]

    if fault == "kernel_too_big":  # issue 9: the padded input is smaller than the kernel
        r = h + 2 * padding[0] + rng.randint(1, 3)
        stride = [rng.choice([1, 2, 15]), stride[1]]
        w_shape[2] = r
    elif fault == "stride_huge":
        stride = [rng.choice([15, 1000, 2**40]), rng.choice([1, 2**62])]
    elif fault == "negative":
        which = rng.choice(["stride", "padding", "dilation"])
        bad = rng.choice([-1, 0, -(2**40)]) if which != "padding" else rng.choice([-1, -(2**40)])
        {"stride": stride, "padding": padding, "dilation": dilation}[which][rng.randint(0, 1)] = bad
    elif fault == "list_length":
        which = rng.choice(["stride", "padding", "dilation"])
        new = rng.choice([[], [1], [1, 1, 1]])
        stride, padding, dilation = (new if which == "stride" else stride,
                                     new if which == "padding" else padding,
                                     new if which == "dilation" else dilation)
    elif fault == "groups":
        groups = rng.choice([0, -1, groups + 1, 4])
    elif fault == "channels":
        w_shape[1] = wc + rng.choice([-1, 1]) if wc > 1 else wc + 1
    elif fault == "bias_shape":
        bias_shape = rng.choice([(k + 1,), (k, 1), ()])
    elif fault == "bias_dtype":
        bias_shape = (k,)
        bias_dtype = torch.float64 if dtype != torch.float64 else torch.float32
    elif fault == "weight_dtype":
        weight_dtype = torch.float64 if dtype != torch.float64 else torch.float16
    elif fault == "rank":
        if rng.random() < 0.5:
            x_shape = x_shape[1:] if rng.random() < 0.5 else [1] + x_shape
        else:
            w_shape = w_shape[:3]
    elif fault == "pool":
        pool = rng.choice([0, 3, -1, 4])
    elif fault == "overflow":
        which = rng.choice(["padding", "dilation"])
        (padding if which == "padding" else dilation)[rng.randint(0, 1)] = rng.choice(
            [2**62, 2**63 - 1])
    elif fault == "empty_kernel":
        w_shape[rng.choice([2, 3])] = 0
    elif fault == "zero_channels":
        if rng.random() < 0.5:
            x_shape[1], w_shape[1] = 0, 0
        else:
            w_shape[0] = 0
            bias_shape = None

    x = _layout(rng, _tensor(rng, x_shape, dtype))
    wt = _tensor(rng, w_shape, weight_dtype, scale=1.0 / math.sqrt(max(1, wc * r * s)))
    if rng.random() < 0.2 and wt.dim() == 4:
        wt = wt.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # same values, other strides
    b = _tensor(rng, bias_shape, bias_dtype) if bias_shape is not None else None
    if b is not None and b.dim() == 1 and rng.random() < 0.2:
        b = torch.stack([b, b], 1)[:, 0]  # strided bias
    if (name != "_wide_conv2d_native_backward" and dtype.is_floating_point and x.numel()
            and rng.random() < 0.05):
        x = x.clone()  # keeps the layout (an expanded x becomes dense)
        x[tuple(rng.randrange(d) for d in x.shape)] = rng.choice([math.nan, math.inf, -math.inf])

    if name == "wide_conv2d":
        args = (x, wt, b, stride, padding, dilation, groups, relu, pool, return_indices)
    elif name == "_wide_conv2d_native":
        args = (x, wt, b, stride, padding, dilation, groups, relu, pool, return_indices)
    else:
        args = _backward_args(rng, fault, x, wt, stride, padding, dilation, groups, relu, pool)
    desc = (f"{name} fault={fault} dtype={dtype} x={tuple(x.shape)}:{tuple(x.stride())} "
            f"w={tuple(wt.shape)} b={None if b is None else tuple(b.shape)} stride={stride} "
            f"padding={padding} dilation={dilation} groups={groups} relu={relu} pool={pool}")
    return Sample((ops[name], *args), {}, desc)


def _out_shape(x, wt, stride, padding, dilation, pool):
    """(N, K_out, PH, PW) when the geometry makes sense, else a plausible small shape."""
    try:
        oh = (x.shape[2] + 2 * padding[0] - dilation[0] * (wt.shape[2] - 1) - 1) // stride[0] + 1
        ow = (x.shape[3] + 2 * padding[1] - dilation[1] * (wt.shape[3] - 1) - 1) // stride[1] + 1
        kout = wt.shape[0] if x.shape[1] else 0
        p = pool if pool in (1, 2) else 1
        shape = (x.shape[0], kout, max(oh, 0) // p, max(ow, 0) // p)
        return shape if all(0 <= d < 4096 for d in shape) else (1, 1, 1, 1)
    except (IndexError, ZeroDivisionError, TypeError):
        return (1, 1, 1, 1)


def _backward_args(rng, fault, x, wt, stride, padding, dilation, groups, relu, pool):
    shape = list(_out_shape(x, wt, stride, padding, dilation, pool))
    gdtype = x.dtype
    if fault == "grad_out_shape":
        shape[rng.randrange(4)] += 1
    elif fault == "grad_out_dtype":
        gdtype = torch.float64 if x.dtype != torch.float64 else torch.float32
    grad = _layout(rng, _tensor(rng, shape, gdtype), ("contiguous", "channels_last", "slice"))
    sshape = list(_out_shape(x, wt, stride, padding, dilation, pool))
    if fault == "saved_shape":
        sshape[rng.randrange(4)] += 1
    if pool == 2:
        g = torch.Generator().manual_seed(rng.getrandbits(31))
        hi = 256 if fault == "garbage_indices" else NO_GRAD + 1
        saved = torch.randint(0, hi, sshape, generator=g, dtype=torch.uint8)
        if fault == "saved_dtype":
            saved = saved.to(x.dtype if x.dtype != torch.uint8 else torch.float32)
    elif relu:
        saved = _tensor(rng, sshape, x.dtype if x.dtype.is_floating_point else torch.float32)
        if fault == "saved_dtype":
            saved = saved.to(torch.uint8)
    else:
        saved = x.new_empty(0)
    saved = _layout(rng, saved, ("contiguous", "channels_last", "slice"))
    mask = [rng.random() < 0.8 for _ in range(3)]
    if fault == "output_mask_length":
        mask = mask[: rng.choice([1, 2])] if rng.random() < 0.5 else mask + [True]
    return (grad, x, wt, saved, stride, padding, dilation, groups, relu, pool, mask)


# ---------------------------------------------------------------------------------------------
# the rules (independent of the C++ checks) and the oracle
# ---------------------------------------------------------------------------------------------
def _geometry_violations(x, wt, b, stride, padding, dilation, groups, pool, public) -> list[str]:
    """Patterns of every documented rule the call breaks (empty: valid geometry and types)."""
    v = []
    if x.dim() != 4:
        return ["input must be a 4-D|input"]
    if wt.dim() != 4:
        return ["weight must be a 4-D|weight"]
    if public and not x.dtype.is_floating_point:
        v.append("floating-point|input")
    if wt.dtype != x.dtype:
        v.append("weight dtype")
    for nm, lst in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        if len(lst) != 2:
            v.append(nm)
    if v:
        return v
    if min(stride) < 1:
        v.append("stride")
    if min(padding) < 0:
        v.append("padding")
    if min(dilation) < 1:
        v.append("dilation")
    if pool not in (1, 2):
        v.append("pool")
    if groups < 1:
        v.append("groups")
    n, c, h, w = x.shape
    k, wc, r, s = wt.shape
    if b is not None and (b.dim() != 1 or b.shape[0] != k):
        v.append("bias must have shape")
    elif b is not None and b.dtype != x.dtype:
        v.append("bias")
    if v:
        return v
    # From here on, several rules may be broken at once; the op may report any one of them.
    if k == 0:
        v.append("output channel|groups|weight")
    if c % groups or k % groups:
        v.append("groups")
    elif wc * groups != c:
        v.append("input channels per group")
    if r < 1 or s < 1:
        return v + ["non-empty kernel|kernel|weight"]
    big = 2**63
    if any(abs(p) * 2 + abs(d) * (kk - 1) + sz >= big
           for p, d, kk, sz in ((padding[0], dilation[0], r, h), (padding[1], dilation[1], s, w))):
        v.append("overflow|does not fit|padding|dilation")  # C++; Python's ints do not overflow
    oh = (h + 2 * padding[0] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    if oh < 1 or ow < 1:
        v.append("does not fit|kernel")
    elif pool == 2 and (oh < 2 or ow < 2):
        v.append("pool=2 needs|at least 2x2|too small")
    if pool == 2 and c == 0:
        v.append("zero input channels|pool|input")
    return v


def _up(t):
    return t.double() if t is not None and t.is_floating_point() else t


def _meta(args):
    return [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]


def _check_forward(op, args, dtype, native: bool):
    x, wt, b, stride, padding, dilation, groups, relu, pool, return_indices = args

    def check(result):
        out, idx = result
        ref, _ = wide_conv2d_reference(_up(x), _up(wt), _up(b), stride, padding, dilation, groups,
                                       relu, pool, False)
        assert out.shape == ref.shape and out.dtype == dtype, (out.shape, ref.shape, out.dtype)
        red = max(1, wt.shape[1] * wt.shape[2] * wt.shape[3])
        assert_close(out, ref, dtype, red, msg="out")
        if pool == 2 and return_indices:
            assert idx.shape == out.shape and idx.dtype == torch.uint8
            _check_indices(x, wt, b, stride, padding, dilation, groups, relu, out, idx, dtype, red)
        else:
            assert idx.numel() == 0 and idx.dtype == torch.uint8
        if native:  # the C++ meta kernel: same shapes, dtypes and strides
            m_out, m_idx = op(*_meta(args))
            assert m_out.shape == out.shape and m_out.stride() == out.stride()
            assert m_idx.shape == idx.shape and m_idx.dtype == idx.dtype

    return check


def _check_indices(x, wt, b, stride, padding, dilation, groups, relu, out, idx, dtype, red):
    """Each index points at a maximum of its window (within tolerance; ties may pick either);
    NO_GRAD exactly where the ReLU zeroed the window (away from zero)."""
    y = torch.nn.functional.conv2d(_up(x), _up(wt), _up(b), stride, padding, dilation, groups)
    ph, pw = out.shape[2], out.shape[3]
    win = y[:, :, : 2 * ph, : 2 * pw].unfold(2, 2, 2).unfold(3, 2, 2).reshape(*out.shape, 4)
    best = win.amax(-1)
    atol, rtol = _tol(dtype, red)
    tol = atol + rtol * best.abs()
    idx = idx.long()
    if relu:
        zeroed = best <= -tol
        kept = best >= tol
        assert bool((idx[zeroed & ~best.isnan()] == NO_GRAD).all()), "NO_GRAD missing"
        sel = kept | best.isnan()
    else:
        sel = torch.ones_like(best, dtype=torch.bool)
    assert bool((idx[sel] < NO_GRAD).all()), "index out of the window"
    picked = win.gather(-1, idx.clamp(max=3).unsqueeze(-1)).squeeze(-1)
    nan = best.isnan()
    assert bool(picked[sel & nan].isnan().all()), "a NaN window must point at a NaN"
    ok = (picked == best) | ((picked - best).abs() <= 2 * tol)  # == : an infinite maximum
    assert bool(ok[sel & ~nan].all()), "index does not point at the window's maximum"


def _tol(dtype, red):
    from shallowkern.testing import tolerance

    return tolerance(dtype, red)


def _check_backward(op, args):
    grad, x, wt, saved, stride, padding, dilation, groups, relu, pool, mask = args
    dtype = x.dtype

    def check(result):
        want = wide_conv2d_backward_reference(_up(grad), _up(x), _up(wt), _up(saved), stride,
                                              padding, dilation, groups, relu, pool, mask)
        oh = (x.shape[2] + 2 * padding[0] - dilation[0] * (wt.shape[2] - 1) - 1) // stride[0] + 1
        ow = (x.shape[3] + 2 * padding[1] - dilation[1] * (wt.shape[3] - 1) - 1) // stride[1] + 1
        reds = (max(1, wt.shape[0] // groups * wt.shape[2] * wt.shape[3]),
                max(1, x.shape[0] * oh * ow), max(1, x.shape[0] * oh * ow))
        meta = op(*_meta(args))
        for i, (a, r, red, m) in enumerate(zip(result, want, reds, meta)):
            assert a.dtype == dtype and m.shape == a.shape, (i, a.dtype, m.shape, a.shape)
            if not mask[i]:
                assert a.shape == (0,), f"output {i} is masked off but has shape {a.shape}"
                continue
            assert_close(a, r, dtype, red, msg=f"grad {i}")

    return check


def fuzz_reference(op, *args):
    """What calling ``op(*args)`` must do: ``Rejected(pattern)`` or ``Accepted(check)``."""
    name = op_name(op)
    if name == "_wide_conv2d_native_backward":
        grad, x, wt, saved, stride, padding, dilation, groups, relu, pool, mask = args
        if len(mask) != 3:
            return Rejected("output_mask|fixed-size array|size 3|3 elements", "mask length")
        v = _geometry_violations(x, wt, None, stride, padding, dilation, groups, pool, False)
        if v:
            return Rejected("|".join(v))
        # Several of these may be broken at once; the op may report any one of them.
        if x.dtype not in NATIVE_DTYPES:
            v.append("float32 or float64")
        shape = _out_shape(x, wt, stride, padding, dilation, pool)
        if grad.dim() != 4 or grad.dtype != x.dtype or tuple(grad.shape) != shape:
            v.append("grad_out")
        if pool == 2 and (saved.dtype != torch.uint8 or tuple(saved.shape) != shape):
            v.append("saved")
        if pool == 1 and relu and (saved.dtype != x.dtype or tuple(saved.shape) != shape):
            v.append("saved")
        if v:
            return Rejected("|".join(v))
        return Accepted(_check_backward(op, args))
    x, wt, b = args[:3]
    stride, padding, dilation, groups, relu, pool, return_indices = args[3:]
    public = name == "wide_conv2d"
    v = _geometry_violations(x, wt, b, stride, padding, dilation, groups, pool, public)
    if v:
        return Rejected("|".join(v))
    if not public and x.dtype not in NATIVE_DTYPES:
        return Rejected("float32 or float64")
    return Accepted(_check_forward(op, args, x.dtype, native=not public))
