"""Op spec of shallowkern::afcc_conv2d (conv2d with an (out, in) kernel-pair mask)."""

from __future__ import annotations

import importlib

import torch

from shallowkern.flops import conv2d_flops
from shallowkern.nn.afcc import AFCCConv2d
from shallowkern.testing import BadInput, OpSpec, Sample, has_ext

A = importlib.import_module("shallowkern.ops.afcc_conv2d")


def op(input, weight, mask, bias=None, stride=1, padding=0, dilation=1):
    return A.afcc_conv2d(input, weight, mask, bias, stride, padding, dilation)


def reference(input, weight, mask, bias=None, stride=1, padding=0, dilation=1):
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    return A.afcc_conv2d_reference(input, weight, mask, bias, pair(stride), pair(padding),
                                   pair(dilation))


def _mask(k, c, kind, g):
    if kind == "clustered":
        lo, li = torch.randint(0, 3, (k,), generator=g), torch.randint(0, 3, (c,), generator=g)
        return lo[:, None] == li[None, :]
    if kind == "empty":
        return torch.zeros(k, c, dtype=torch.bool)
    if kind == "full":
        return torch.ones(k, c, dtype=torch.bool)
    m = torch.rand(k, c, generator=g) < 0.3
    m[0] = False  # an all-zero row and column
    m[:, -1] = False
    return m


def _make(name, n, c, k, hw, kind, dtype, bias=True, seed=0, rs=(3, 3), **conv) -> Sample:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *hw, generator=g).to(dtype)
    w = (torch.randn(k, c, *rs, generator=g) * (c * rs[0] * rs[1]) ** -0.5).to(dtype)
    b = torch.randn(k, generator=g).to(dtype) if bias else None
    return Sample((x, w, _mask(k, c, kind, g), b), dict(conv), name)


def samples(dtype: torch.dtype) -> list[Sample]:
    out = [
        _make("tiny", 1, 1, 1, (5, 5), "full", dtype, padding=1),
        _make("clustered_pad1", 2, 12, 10, (6, 7), "clustered", dtype, padding=1),
        _make("random_stride2", 2, 7, 13, (9, 9), "random", dtype, stride=2),
        _make("cin3_31x31", 1, 3, 5, (31, 31), "random", dtype, padding=1, bias=False),
        _make("empty_mask", 2, 6, 4, (5, 5), "empty", dtype, padding=1),
        _make("dilated_rect", 1, 9, 6, (8, 10), "clustered", dtype, rs=(3, 2),
              padding=(2, 1), dilation=(2, 1)),
        _make("wider_than_block", 2, 70, 67, (3, 3), "clustered", dtype, padding=1),
        _make("empty_batch", 0, 5, 4, (5, 5), "random", dtype, padding=1),
    ]
    x, w, m, b = _make("noncontig", 2, 8, 6, (6, 6), "clustered", dtype).args
    out.append(Sample((x.to(memory_format=torch.channels_last), w, m, b), dict(padding=1),
                      "channels_last"))
    return out


def triton_samples(dtype: torch.dtype) -> list[Sample]:
    return [_make("clustered", 2, 18, 20, (5, 4), "clustered", dtype, padding=1),
            _make("empty_batch", 0, 5, 4, (5, 5), "random", dtype, padding=1)]


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


def _conv(sample):
    kw = sample.kwargs
    return (_pair(kw.get("stride", 1)), _pair(kw.get("padding", 0)), _pair(kw.get("dilation", 1)))


def reduction(sample: Sample) -> int:
    x, w, m, b = sample.args
    return w.shape[1] * w.shape[2] * w.shape[3]


def to_registered(sample: Sample):
    x, w, m, b = sample.args
    return torch.ops.shallowkern.afcc_conv2d.default, (x, w, m, b, *_conv(sample))


def flops(sample: Sample) -> int:
    x, w, m, b = sample.args
    return conv2d_flops(x.shape, w.shape, *_conv(sample))


def bad_inputs() -> list[BadInput]:
    x, w = torch.randn(1, 5, 6, 6), torch.randn(4, 5, 3, 3)
    m = torch.ones(4, 5, dtype=torch.bool)
    S = Sample
    return [
        BadInput(S((x, w, torch.ones(4, 3, dtype=torch.bool))), ValueError, "mask shape"),
        BadInput(S((x, w, torch.ones(4, 5))), TypeError, "mask must be a bool"),
        BadInput(S((x, w.double(), m)), TypeError, "weight dtype"),
        BadInput(S((x[0], w, m)), ValueError, "input must be a 4-D"),
        BadInput(S((x, w, m, torch.randn(3))), ValueError, "bias must have shape"),
        BadInput(S((x.long(), w, m)), TypeError, "floating-point"),
        BadInput(S((x, w[:, :3], m[:, :3])), ValueError, "input channels"),
        BadInput(S((x, w, m), dict(stride=0)), ValueError, "stride"),
        BadInput(S((x[:, :, :2, :2], w, m)), ValueError, "does not fit"),
    ]


def module():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    return AFCCConv2d(6, 8, 3, padding=1, mask=_mask(8, 6, "clustered", g)), torch.randn(2, 6, 5, 5)



def _fuzz(rng) -> Sample:
    """A raw ``shallowkern::afcc_conv2d`` call: random geometry (empty batch, 1x1 maps, kernels
    larger than the input, stride/padding/dilation), channel counts below and above one block,
    mask densities from empty to full (random and label-clustered, so both the block-sparse
    kernel and the dense fallback run), fp32/fp64, channels_last; about one call in six breaks a
    rule on purpose (mask shape or dtype, dtype mix, negative padding, zero stride)."""
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    dtype = rng.choice((torch.float32, torch.float64))
    n, c, k = rng.choice((0, 1, 2, 3)), rng.choice((1, 2, 5, 17, 40)), rng.choice((1, 3, 16, 33))
    h, w = rng.randint(1, 10), rng.randint(1, 10)
    r, s = rng.randint(1, 4), rng.randint(1, 4)
    stride = [rng.randint(1, 3), rng.randint(1, 3)]
    padding = [rng.randint(0, 2), rng.randint(0, 2)]
    dilation = [rng.randint(1, 2), rng.randint(1, 2)]
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    if rng.random() < 0.2:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(k, c, r, s, generator=g, dtype=dtype) * (c * r * s) ** -0.5
    density = rng.choice((0.0, 0.05, 0.1, 0.25, 0.5, 1.0))
    if rng.random() < 0.5:
        mask = torch.rand(k, c, generator=g) < density
    else:
        groups = rng.randint(1, 4)
        mask = (torch.randint(0, groups, (k, 1), generator=g)
                == torch.randint(0, groups, (1, c), generator=g))
    bias = torch.randn(k, generator=g, dtype=dtype) if rng.random() < 0.7 else None
    if rng.random() < 1 / 6:
        bad = rng.randrange(5)
        if bad == 0:
            mask = torch.ones(k, c + 1, dtype=torch.bool)
        elif bad == 1:
            mask = mask.to(dtype)
        elif bad == 2:
            wt = wt.to(torch.float32 if dtype == torch.float64 else torch.float64)
        elif bad == 3:
            padding = [-1, padding[1]]
        else:
            stride = [0, stride[1]]
    return Sample((x, wt, mask, bias, stride, padding, dilation), {}, "fuzz")


def fuzz_reference(input, weight, mask, bias, stride, padding, dilation):
    """The registered op's signature: its own argument rules, then the aten composition."""
    A.check_args(input, weight, mask, bias, stride, padding, dilation)
    return A.afcc_conv2d_reference(input, weight, mask, bias, stride, padding, dilation)

SPEC = OpSpec(
    name="afcc_conv2d",
    op=op,
    reference=reference,
    samples=samples,
    to_registered=to_registered,
    bad_inputs=bad_inputs,
    flops=flops,
    grad_argnums=(0, 1, 3),
    backends=("reference", "vendor", "triton") + (("native",) if has_ext() else ()),
    reduction=reduction,
    triton_samples=triton_samples,
    module=module,
    fuzz=_fuzz,
    fuzz_reference=fuzz_reference,
)
