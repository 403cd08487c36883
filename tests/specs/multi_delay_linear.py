"""Op spec of shallowkern::multi_delay_linear (M delayed weight matrices over a time series).

The oracle is an explicit per-time-step loop (``per_step_reference``), independent of the op's
batched GEMM + gather: y[..., s, :] = b + sum over (m, t) with t + tau_m = s of W_m x[..., t, :].
"""

from __future__ import annotations

import math

import torch

from shallowkern.flops import multi_delay_linear_flops
from shallowkern.nn import MultiDelayLinear
from shallowkern.ops.multi_delay_linear import multi_delay_linear
from shallowkern.testing import PRIMES, BadInput, OpSpec, Sample

# (name, leading dims, T, n, K, delays) — awkward on purpose: one of everything, an impulse
# (T = 1, the RoDiB stage-1 case), unsorted delays, delays overlapping inside the series, a
# zero delay, prime sizes, extra leading dims, an empty batch (the empty
# series T = 0 is in tests/ops/test_multi_delay_linear.py: the oracle has no graph to x there).
_CASES = [
    ("tiny", (1,), 1, 1, 1, (0,)),
    ("impulse_m4", (2,), 1, 5, 3, (1, 2, 4, 8)),
    ("series_unsorted", (2,), 4, 3, 2, (3, 0, 1)),
    ("overlap", (2,), 6, 4, 3, (0, 1, 2)),
    ("primes", (PRIMES[1],), 3, PRIMES[3], PRIMES[2], (2, 5, 11)),
    ("lead_dims", (2, 3), 2, 3, 2, (1, 4)),
    ("empty_batch", (0,), 3, 4, 2, (0, 2)),
]


def _sample(name, lead, t, n, k, delays, dtype, bias=True, seed=0) -> Sample:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, t, n, generator=g).to(dtype)
    w = (torch.randn(len(delays), k, n, generator=g) / max(n, 1) ** 0.5).to(dtype)
    b = torch.randn(k, generator=g).to(dtype) if bias else None
    return Sample((x, w, b, delays), {}, name)


def samples(dtype: torch.dtype) -> list[Sample]:
    out = [_sample(*case, dtype) for case in _CASES]
    out.append(_sample("no_bias", (2,), 3, 4, 3, (0, 2, 3), dtype, bias=False))
    x, w, b, d = _sample("noncontig", (2,), 8, 6, 3, (1, 2), dtype).args
    out.append(Sample((x[:, ::2, ::2], w[:, :, ::2], b, d), {}, "noncontig"))
    x, w, b, d = _sample("transposed", (2,), 5, 4, 3, (0, 3), dtype).args
    out.append(Sample((x.transpose(0, 1).contiguous().transpose(0, 1), w, b, list(d)), {},
                      "transposed_list_delays"))
    return out


def per_step_reference(input, weight, bias=None, delays=(0,)):
    """The layer one output step and one delay at a time (differentiable, any dtype)."""
    steps = input.shape[-2]
    t_out = steps + max(delays)
    linear = torch.nn.functional.linear  # (not @ + bias: autocast must see every product)
    zeros = input.new_zeros(*input.shape[:-2], input.shape[-1])
    rows = []
    for s in range(t_out):
        acc = linear(zeros, weight[0], bias)  # the bias alone, in autocast's dtype
        for m, tau in enumerate(delays):
            t = s - tau
            if 0 <= t < steps:
                acc = acc + linear(input[..., t, :], weight[m])
        rows.append(acc)
    if not rows:  # T + max(delays) == 0
        return linear(zeros, weight[0], bias).unsqueeze(-2)[..., :0, :]
    return torch.stack(rows, dim=-2)


def reduction(sample: Sample) -> int:
    x, w = sample.args[0], sample.args[1]
    return max(1, x.shape[-1] * w.shape[0])


def to_registered(sample: Sample):
    x, w, b, d = sample.args
    return torch.ops.shallowkern.multi_delay_linear.default, (
        x.reshape(math.prod(x.shape[:-2]), *x.shape[-2:]), w, b, list(d))


def flops(sample: Sample) -> int:
    x, w, _, _ = sample.args
    m, k, n = w.shape
    return multi_delay_linear_flops(math.prod(x.shape[:-2]), x.shape[-2], n, k, m)


def bad_inputs() -> list[BadInput]:
    x, w, b = torch.randn(2, 3, 4), torch.randn(3, 5, 4), torch.randn(5)
    d = (0, 1, 2)
    S = Sample
    return [
        BadInput(S((x, w, b, (0, 1.0, 2))), TypeError, r"delays\[1\] must be an int"),
        BadInput(S((x, w, b, (0, True, 2))), TypeError, r"delays\[1\] must be an int"),
        BadInput(S((x, w, b, "012")), TypeError, "delays must be a sequence of ints"),
        BadInput(S((x, w, b, (0, 1, 1))), ValueError, "delays must be distinct"),
        BadInput(S((x, w, b, (0, -1, 2))), ValueError, "delays must be non-negative"),
        BadInput(S((x, w[:0], b, ())), ValueError, r"at least one delay \(M >= 1\)"),
        BadInput(S((x, w, b, (0, 1))), ValueError, r"weight.shape\[0\] must equal len\(delays\)"),
        BadInput(S((x[0, 0], w, b, d)), ValueError, "input must be a tensor of shape"),
        BadInput(S((x, w[0], b, d)), ValueError, "weight must be a 3-D"),
        BadInput(S((torch.randn(2, 3, 6), w, b, d)), ValueError, "in_features=4"),
        BadInput(S((x, w, torch.randn(4), d)), ValueError, r"bias must have shape \(5,\)"),
        BadInput(S((x.long(), w, b, d)), TypeError, "input must be a floating-point"),
        BadInput(S((x, w.double(), b, d)), TypeError, "weight dtype"),
        BadInput(S((x, w, b.double(), d)), TypeError, "bias dtype"),
        BadInput(S((x, w, b, (0, 1, 1 << 21))), ValueError, "exceeds MAX_DELAY"),
    ]


def module():
    torch.manual_seed(0)
    return MultiDelayLinear(5, 3, (1, 2, 4)), torch.randn(2, 3, 5)


SPEC = OpSpec(
    name="multi_delay_linear",
    op=multi_delay_linear,
    reference=per_step_reference,
    samples=samples,
    to_registered=to_registered,
    bad_inputs=bad_inputs,
    flops=flops,
    grad_argnums=(0, 1, 2),
    backends=("reference",),
    dtypes=(torch.float32, torch.float64, torch.bfloat16),
    reduction=reduction,
    module=module,
)
