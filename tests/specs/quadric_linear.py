"""Op spec of shallowkern::quadric_linear (quadratic neurons: diagonal, full packed, lowrank)."""

from __future__ import annotations

import torch

from shallowkern.flops import quadric_linear_flops
from shallowkern.nn.quadric_linear import QuadricLinear
from shallowkern.ops.quadric_linear import packed_size, quadric_linear, quadric_linear_composite
from shallowkern.testing import BadInput, OpSpec, Sample, has_ext


def op(input, weight_quad, weight, bias=None, weight_quad2=None, *, form="diagonal"):
    """The functional with weight_quad2 positional, so the suite differentiates it too."""
    return quadric_linear(input, weight_quad, weight, bias, form=form, weight_quad2=weight_quad2)


def reference(input, weight_quad, weight, bias=None, weight_quad2=None, *, form="diagonal"):
    return quadric_linear_composite(input, weight_quad, weight_quad2, weight, bias, form)


def _make(name, batch, n, k, form, dtype, rank=2, bias=True, seed=0, lead=()) -> Sample:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, batch, n, generator=g).to(dtype)
    quad = {"diagonal": (k, n), "full": (k, packed_size(n)), "lowrank": (rank * k, n)}[form]
    scale = n ** -0.5
    wq = (torch.randn(quad, generator=g) * scale).to(dtype)
    wq2 = (torch.randn(quad, generator=g) * scale).to(dtype) if form == "lowrank" else None
    w = (torch.randn(k, n, generator=g) * scale).to(dtype)
    b = torch.randn(k, generator=g).to(dtype) if bias else None
    return Sample((x, wq, w, b, wq2), dict(form=form), f"{form}-{name}")


def samples(dtype: torch.dtype) -> list[Sample]:
    out = [_make("tiny", 3, 3, 2, form, dtype) for form in ("diagonal", "full", "lowrank")]
    for form in ("diagonal", "full", "lowrank"):
        out += [
            _make("n1_k10", 4, 1, 10, form, dtype),
            _make("n127_k10", 5, 127, 10, form, dtype, rank=1),
            _make("n3_k1000", 2, 3, 1000, form, dtype),
            _make("n3_k1", 3, 3, 1, form, dtype, rank=3),
            _make("batch1_nobias", 1, 7, 3, form, dtype, bias=False),
            _make("empty_batch", 0, 5, 4, form, dtype),
            _make("leading_dims", 3, 6, 5, form, dtype, lead=(2,)),
        ]
        x, wq, w, b, wq2 = _make("noncontig", 4, 12, 5, form, dtype).args
        xt = torch.randn(12, 8, dtype=dtype).t()[:, :]  # (8, 12) transposed view
        out.append(Sample((xt[::2], wq, w, b, wq2), dict(form=form), f"{form}-noncontig"))
    return out


def triton_samples(dtype: torch.dtype) -> list[Sample]:
    return [_make("tiny", 5, 6, 4, form, dtype) for form in ("diagonal", "full", "lowrank")] + [
        _make("empty_batch", 0, 5, 4, "full", dtype)]


def reduction(sample: Sample) -> int:
    x, wq, w, b, wq2 = sample.args
    n, k = w.shape[1], w.shape[0]
    form = sample.kwargs["form"]
    return {"diagonal": 2 * n, "full": packed_size(n) + n,
            "lowrank": (2 * (wq.shape[0] // k) + 1) * n}[form]


def to_registered(sample: Sample):
    x, wq, w, b, wq2 = sample.args
    return torch.ops.shallowkern.quadric_linear.default, (
        x.reshape(-1, x.shape[-1]), wq, wq2, w, b, sample.kwargs["form"])


def flops(sample: Sample) -> int:
    x, wq, w, b, wq2 = sample.args
    form = sample.kwargs["form"]
    k = w.shape[0]
    return quadric_linear_flops(x.numel() // x.shape[-1], x.shape[-1], k, form,
                                wq.shape[0] // k if form == "lowrank" else 1)


def bad_inputs() -> list[BadInput]:
    x, w, b = torch.randn(2, 4), torch.randn(3, 4), torch.randn(3)
    S = Sample
    return [
        BadInput(S((x, torch.randn(3, 4), w, b), dict(form="cubic")), ValueError, "form must be"),
        BadInput(S((x[:, :3], torch.randn(3, 4), w, b)), ValueError, "in_features=4"),
        BadInput(S((x.long(), torch.randn(3, 4), w, b)), TypeError, "floating-point"),
        BadInput(S((x, torch.randn(3, 4).double(), w, b)), TypeError, "weight_quad dtype"),
        BadInput(S((x, torch.randn(3, 4), w, torch.randn(4))), ValueError, "bias must have shape"),
        BadInput(S((x, torch.randn(3, 4), w[0], b)), ValueError, "weight must be a 2-D"),
        BadInput(S((x, torch.randn(3, 4), w, b), dict(form="full")), ValueError,
                 "packed upper triangle"),
        BadInput(S((x, torch.randn(6, 4), w, b), dict(form="lowrank")), ValueError,
                 "needs weight_quad2"),
        BadInput(S((x, torch.randn(7, 4), w, b, torch.randn(7, 4)), dict(form="lowrank")),
                 ValueError, "rank >= 1"),
        BadInput(S((x, torch.randn(6, 4), w, b, torch.randn(3, 4)), dict(form="lowrank")),
                 ValueError, "weight_quad2 must have shape"),
        BadInput(S((x, torch.randn(3, 4), w, b, torch.randn(3, 4))), ValueError,
                 "only used by form='lowrank'"),
        BadInput(S((torch.tensor(1.0), torch.randn(3, 4), w, b)), ValueError, "in_features"),
    ]


def _fuzz(rng) -> Sample:
    """A raw registered-op call: random form, sizes (empty batch, n = 1, primes), dtype, bias,
    strides; about one call in eight is impossible (a wrong quadratic-weight shape, a rank that
    does not divide, a dtype mix) and must raise a clear error."""
    form = rng.choice(("diagonal", "full", "lowrank"))
    b, n, k, r = rng.choice((0, 1, 2, 7, 16)), rng.randint(1, 24), rng.randint(1, 40), rng.randint(1, 3)
    dtype = rng.choice((torch.float32, torch.float64))
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    x = torch.randn(b, n, generator=g, dtype=dtype)
    if rng.random() < 0.3 and b > 1:
        x = torch.randn(n, b, generator=g, dtype=dtype).t()  # transposed strides
    quad = {"diagonal": (k, n), "full": (k, packed_size(n)), "lowrank": (r * k, n)}[form]
    wq = torch.randn(quad, generator=g, dtype=dtype)
    wq2 = torch.randn(quad, generator=g, dtype=dtype) if form == "lowrank" else None
    w = torch.randn(k, n, generator=g, dtype=dtype)
    bias = torch.randn(k, generator=g, dtype=dtype) if rng.random() < 0.7 else None
    if rng.random() < 0.125:
        bad = rng.randrange(3)
        if bad == 0:
            wq = torch.randn(quad[0], quad[1] + 1, dtype=dtype)
        elif bad == 1 and form == "lowrank":
            wq = wq2 = torch.randn(r * k + 1, n, dtype=dtype)
        else:
            w = w.to(torch.float64 if dtype == torch.float32 else torch.float32)
    return Sample((x, wq, wq2, w, bias, form), {}, f"fuzz-{form}")


def fuzz_reference(input, weight_quad, weight_quad2, weight, bias, form):
    """The registered op's signature on the differentiable composite."""
    return quadric_linear_composite(input, weight_quad, weight_quad2, weight, bias, form)


def module():
    torch.manual_seed(0)
    return QuadricLinear(7, 5, form="lowrank", rank=2), torch.randn(4, 7)


SPEC = OpSpec(
    name="quadric_linear",
    op=op,
    reference=reference,
    samples=samples,
    to_registered=to_registered,
    bad_inputs=bad_inputs,
    flops=flops,
    grad_argnums=(0, 1, 2, 3, 4),
    backends=("reference", "triton") + (("native",) if has_ext() else ()),
    reduction=reduction,
    triton_samples=triton_samples,
    module=module,
    fuzz=_fuzz,
    fuzz_reference=fuzz_reference,
)
