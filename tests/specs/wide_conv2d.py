"""Op spec of shallowkern::wide_conv2d (fused conv + bias + [ReLU] + [2x2 max-pool])."""

from __future__ import annotations

import torch

from shallowkern.flops import conv2d_flops
from shallowkern.nn import WideConv2d
from shallowkern.ops.wide_conv2d import wide_conv2d, wide_conv2d_composite, wide_conv2d_reference
from shallowkern.ops._geometry import pair
from shallowkern.testing import FIRST_LAYER_CIN, ODD_HW, BadInput, OpSpec, Sample, has_ext

# (name, N, C, H, W, K, R, kwargs) — awkward on purpose: C_in=3, odd map, primes, groups,
# stride/dilation/padding, a 1x1 kernel, a non-square map, an empty batch, one output channel.
_CASES = [
    ("tiny", 1, 2, 6, 6, 2, 3, dict(activation="relu", pool=2)),
    ("conv1", 2, FIRST_LAYER_CIN, 12, 12, 6, 5, dict(activation="relu", pool=2)),
    ("odd_map", 2, 7, ODD_HW, ODD_HW, 5, 5, dict(activation="relu", pool=2)),
    ("pad_no_relu", 3, 16, 10, 10, 13, 3, dict(padding=1, pool=2)),
    ("stride2", 2, 4, 13, 13, 6, 3, dict(stride=2, padding=2, activation="relu")),
    ("dilation2", 2, 4, 14, 14, 6, 3, dict(dilation=2, activation="relu", pool=2)),
    ("groups2", 2, 8, 9, 9, 6, 3, dict(groups=2, padding=1, activation="relu", pool=2)),
    ("k1_nonsquare", 2, 3, 10, 13, 1, 1, dict(activation="relu", pool=2)),
    ("plain_conv", 2, 5, 8, 8, 3, 3, dict()),
    ("empty_batch", 0, 3, 8, 8, 4, 3, dict(activation="relu", pool=2)),
]


def _sample(name, n, c, h, w, k, r, kw, dtype, bias=True, seed=0) -> Sample:
    g = torch.Generator().manual_seed(seed)
    groups = kw.get("groups", 1)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    wt = (torch.randn(k, c // groups, r, r, generator=g) / (c * r * r / groups) ** 0.5).to(dtype)
    b = torch.randn(k, generator=g).to(dtype) if bias else None
    return Sample((x, wt, b), dict(kw), name)


def samples(dtype: torch.dtype) -> list[Sample]:
    out = [_sample(*case, dtype) for case in _CASES]
    out.append(_sample("no_bias", 2, 5, 8, 8, 3, 1, dict(activation="relu", pool=2), dtype,
                       bias=False))
    x, wt, b = _sample("channels_last", 2, 4, 9, 9, 6, 3, dict(), dtype).args
    out.append(Sample((x.contiguous(memory_format=torch.channels_last), wt, b),
                      dict(activation="relu", pool=2), "channels_last"))
    x, wt, b = _sample("noncontig", 2, 6, 10, 20, 4, 3, dict(), dtype).args
    out.append(Sample((x[:, ::2, :, ::2], wt[:, ::2].contiguous(), b), dict(pool=2), "noncontig"))
    return out


def triton_samples(dtype: torch.dtype) -> list[Sample]:
    return [_sample("conv1_tiny", 1, 3, 8, 8, 4, 3, dict(activation="relu", pool=2), dtype)]


def reference(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
              activation=None, pool=None):
    return wide_conv2d_composite(input, weight, bias, pair(stride, "stride"), pair(padding, "padding"),
                                 pair(dilation, "dilation"), groups, activation == "relu",
                                 1 if pool is None else pool)


def reduction(sample: Sample) -> int:
    w = sample.args[1]
    return w.shape[1] * w.shape[2] * w.shape[3]


def to_registered(sample: Sample):
    x, w, b = sample.args
    kw = sample.kwargs
    return torch.ops.shallowkern.wide_conv2d.default, (
        x, w, b, pair(kw.get("stride", 1), "stride"), pair(kw.get("padding", 0), "padding"),
        pair(kw.get("dilation", 1), "dilation"), kw.get("groups", 1),
        kw.get("activation") == "relu", kw.get("pool") or 1, kw.get("pool") == 2)


def flops(sample: Sample) -> int:
    x, w, _ = sample.args
    kw = sample.kwargs
    return conv2d_flops(x.shape, w.shape, pair(kw.get("stride", 1), "s"),
                        pair(kw.get("padding", 0), "p"), pair(kw.get("dilation", 1), "d"))


def bad_inputs() -> list[BadInput]:
    x, w, b = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    S = Sample
    return [
        BadInput(S((x[0], w, b)), ValueError, "input must be a 4-D"),
        BadInput(S((x, w[0], b)), ValueError, "weight must be a 4-D"),
        BadInput(S((x.long(), w, b)), TypeError, "input must be a floating-point"),
        BadInput(S((x, w.double(), b)), TypeError, "weight dtype"),
        BadInput(S((x, w, torch.randn(5))), ValueError, "bias must have shape"),
        BadInput(S((x, w, b.double())), TypeError, "bias must be"),
        BadInput(S((x, torch.randn(4, 2, 3, 3), b)), ValueError, "input channels per group"),
        BadInput(S((x, w, b), dict(groups=2)), ValueError, "groups"),
        BadInput(S((x, w, b), dict(stride=0)), ValueError, "stride >= 1"),
        BadInput(S((x, w, b), dict(stride=1.5)), ValueError, "stride must be an int"),
        BadInput(S((x, w, b), dict(padding=(1, 2, 3))), ValueError, "padding must be"),
        BadInput(S((x, w, b), dict(padding=-1)), ValueError, "padding >= 0"),
        BadInput(S((x, w, b), dict(dilation=0)), ValueError, "dilation >= 1"),
        BadInput(S((x, w, b), dict(activation="gelu")), ValueError, "activation"),
        BadInput(S((x, w, b), dict(pool=3)), ValueError, "pool must be"),
        BadInput(S((x, torch.randn(4, 3, 15, 15), b)), ValueError, "does not fit"),
        BadInput(S((torch.randn(2, 3, 3, 3), torch.randn(4, 3, 3, 3), b), dict(pool=2)),
                 ValueError, "at least 2x2"),
    ]


def module():
    torch.manual_seed(0)
    return WideConv2d(3, 8, 5, activation="relu", pool=2), torch.randn(4, 3, 16, 16)


def _fuzz(rng):
    from tests.fuzz.gen_wide_conv2d import wide_conv2d_case  # written with the fuzzer

    return wide_conv2d_case(rng)


def _fuzz_reference(op, *args):
    from tests.fuzz.gen_wide_conv2d import fuzz_reference  # the rules + fp64 oracle per raw op

    return fuzz_reference(op, *args)


SPEC = OpSpec(
    name="wide_conv2d",
    op=wide_conv2d,
    reference=reference,
    samples=samples,
    to_registered=to_registered,
    bad_inputs=bad_inputs,
    flops=flops,
    grad_argnums=(0, 1, 2),
    backends=("reference", "triton") + (("native",) if has_ext() else ()),
    reduction=reduction,
    triton_samples=triton_samples,
    module=module,
    fuzz=_fuzz,
    fuzz_reference=_fuzz_reference,
)
