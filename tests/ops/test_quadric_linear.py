"""quadric_linear: every form and backend against independent fp64 references, gradients,
odd sizes, empty batch, strides, bad input. The contract suite (tests/specs/quadric_linear.py)
adds opcheck, compile, export and FLOP checks."""

from __future__ import annotations

import math

import pytest
import torch

import shallowkern
from shallowkern import _ext
from shallowkern.nn.quadric_linear import QuadricConv2d, QuadricLinear, quadric_param_count
from shallowkern.ops import quadric_linear as ql
from shallowkern.testing import assert_close

NATIVE = pytest.mark.skipif(
    not (_ext.available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "shallowkern::_quadric_linear_native", "CPU")),
    reason="shallowkern._C without quadric_linear")
CPU_BACKENDS = ["reference", pytest.param("native", marks=NATIVE)]
IN_SIZES = (1, 3, 127)      # widths named in the issue: 1, a small odd one, one past a block
OUT_SIZES = (1, 10, 1000)


def independent(x, params, form):
    """fp64 oracle written apart from the op: the full form as an explicit einsum over A_k."""
    x = x.double()
    p = {k: (v.double() if v is not None else None) for k, v in params.items()}
    y = x @ p["weight"].t() + (p["bias"] if p["bias"] is not None else 0)
    if form == "diagonal":
        return y + (x ** 2) @ p["weight_quad"].t()
    if form == "full":
        a = ql.unpack_symmetric(p["weight_quad"], x.shape[1])
        return y + torch.einsum("bi,kij,bj->bk", x, a, x)
    k = p["weight"].shape[0]
    r = p["weight_quad"].shape[0] // k
    ha = (x @ p["weight_quad"].t()).view(-1, r, k)
    hb = (x @ p["weight_quad2"].t()).view(-1, r, k)
    return y + (ha * hb).sum(1)


def make(n, k, form, rank=2, dtype=torch.float64, bias=True, seed=0):
    torch.manual_seed(seed)
    m = QuadricLinear(n, k, bias=bias, form=form, rank=rank if form == "lowrank" else None,
                      dtype=dtype)
    return m, {"weight_quad": m.weight_quad, "weight_quad2": m.weight_quad2,
               "weight": m.weight, "bias": m.bias}


def reduction(n, form):
    return {"diagonal": 2 * n, "full": ql.packed_size(n) + n, "lowrank": n * n}[form]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("form", ql.FORMS)
@pytest.mark.parametrize("n,k", [(1, 10), (3, 1), (127, 10), (3, 1000), (10, 10)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_independent_reference(backend, form, n, k, dtype):
    m, params = make(n, k, form, dtype=dtype)
    x = torch.randn(5, n, dtype=dtype)
    with shallowkern.use_backend(backend):
        y = m(x)
    assert shallowkern.last_backend("quadric_linear").backend == backend
    assert_close(y, independent(x, params, form), dtype, reduction(n, form))


def test_pack_unpack_roundtrip_and_symmetric_part():
    a = torch.randn(4, 6, 6, dtype=torch.float64)
    p = ql.pack_symmetric(a)
    assert p.shape == (4, 21)
    s = ql.unpack_symmetric(p, 6)
    torch.testing.assert_close(s, (a + a.transpose(1, 2)) / 2)
    x = torch.randn(6, dtype=torch.float64)
    torch.testing.assert_close(torch.einsum("i,kij,j->k", x, a, x), ql.outer_packed(x[None])[0] @ p.t())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("form", ql.FORMS)
def test_gradcheck(backend, form):
    m, params = make(4, 3, form)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda x, wq, w, b, wq2: ql.quadric_linear(x, wq, w, b, form=form, weight_quad2=wq2)  # noqa
    args = (x, params["weight_quad"], params["weight"], params["bias"], params["weight_quad2"])
    with shallowkern.use_backend(backend):
        assert torch.autograd.gradcheck(fn, args)
    assert shallowkern.last_backend("quadric_linear_backward").backend == backend


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("form", ql.FORMS)
@pytest.mark.parametrize("n,k", [(1, 1), (127, 10), (3, 1000)])
def test_gradients_match_independent_reference(backend, form, n, k):
    m, params = make(n, k, form, dtype=torch.float32, seed=1)
    x = torch.randn(7, n, requires_grad=True)
    with shallowkern.use_backend(backend):
        y = m(x)
        g = torch.randn_like(y)
        y.backward(g)
    leaves = {"x": x, **{k_: v for k_, v in params.items() if v is not None}}
    ref_leaves = {k_: v.detach().double().requires_grad_() for k_, v in leaves.items()}
    ref = independent(ref_leaves["x"], {k_: ref_leaves.get(k_) for k_ in params}, form)
    ref.backward(g.double())
    for name, t in leaves.items():
        red = {"x": k * max(n, 2), "bias": 7}.get(name, 7 * n)
        assert_close(t.grad, ref_leaves[name].grad, torch.float32, red, msg=f"{form} grad {name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("form", ql.FORMS)
def test_empty_batch_noncontiguous_and_leading_dims(backend, form):
    m, params = make(9, 5, form, dtype=torch.float32)
    with shallowkern.use_backend(backend):
        x0 = torch.randn(0, 9, requires_grad=True)
        y0 = m(x0)
        assert y0.shape == (0, 5)
        y0.sum().backward()
        assert x0.grad.shape == (0, 9) and torch.count_nonzero(m.weight.grad) == 0
        xb = torch.randn(9, 4, 3).permute(1, 2, 0)  # (4, 3, 9), not contiguous
        assert not xb.is_contiguous()
        y = m(xb)
    assert y.shape == (4, 3, 5)
    assert_close(y, independent(xb.reshape(-1, 9), params, form).view(4, 3, 5), torch.float32,
                 reduction(9, form))
    x1 = torch.randn(1, 9)
    assert_close(m(x1), independent(x1, params, form), torch.float32, reduction(9, form))


def test_no_bias_and_param_counts():
    for form, rank in (("diagonal", None), ("full", None), ("lowrank", 3)):
        for bias in (True, False):
            m = QuadricLinear(7, 4, bias=bias, form=form, rank=rank)
            assert sum(p.numel() for p in m.parameters()) == quadric_param_count(7, 4, form, rank or 1, bias)
            x = torch.randn(2, 7)
            ref = independent(x, {"weight_quad": m.weight_quad, "weight_quad2": m.weight_quad2,
                                  "weight": m.weight, "bias": m.bias}, form)
            assert_close(m(x), ref, torch.float32, 64)
    assert quadric_param_count(784, 16) + quadric_param_count(16, 10) == 25_434
    assert "form='lowrank', rank=3" in repr(QuadricLinear(7, 4, form="lowrank", rank=3))


def test_initialisation_follows_sources():
    torch.manual_seed(0)
    m = QuadricLinear(400, 300)
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=sqrt(5)) on (K, n) gives U(+-1/sqrt(n))
    for t in (m.weight_quad, m.weight, m.bias):
        assert t.abs().max() <= bound and t.abs().max() > 0.95 * bound
    f = QuadricLinear(30, 2000, form="full")
    diag = f.weight_quad[:, [i * 30 - i * (i - 1) // 2 for i in range(30)]]
    assert diag.abs().max() <= 1 / math.sqrt(30)  # packed diagonal = A_ii ~ U(+-1/sqrt(n))


@pytest.mark.parametrize("bad, exc, match", [
    (lambda: QuadricLinear(4, 3, form="lowrank"), ValueError, "needs rank"),
    (lambda: QuadricLinear(4, 3, form="lowrank", rank=0), ValueError, "rank must be a positive"),
    (lambda: QuadricLinear(4, 3, form="diagonal", rank=2), ValueError, "only used by form='lowrank'"),
    (lambda: QuadricLinear(4, 3, form="cubic"), ValueError, "form must be one of"),
    (lambda: QuadricLinear(0, 3), ValueError, "in_features must be a positive"),
    (lambda: QuadricLinear(4, 3)(torch.randn(2, 5)), ValueError, "in_features=4"),
    (lambda: QuadricLinear(4, 3)(torch.randn(2, 4, dtype=torch.float64)), TypeError, "dtype"),
    (lambda: QuadricLinear(4, 3)(torch.ones(2, 4, dtype=torch.long)), TypeError, "floating-point"),
    (lambda: QuadricLinear(4, 3)(torch.tensor(1.0)), ValueError, r"\(\*, in_features\)"),
    (lambda: ql.quadric_linear(torch.randn(2, 4), torch.randn(3, 4), torch.randn(3, 4),
                               form="full"), ValueError, "packed upper triangle"),
    (lambda: ql.quadric_linear(torch.randn(2, 4), torch.randn(7, 4), torch.randn(3, 4),
                               form="lowrank", weight_quad2=torch.randn(7, 4)), ValueError, "rank >= 1"),
    (lambda: ql.quadric_linear(torch.randn(2, 4), torch.randn(6, 4), torch.randn(3, 4),
                               form="lowrank"), ValueError, "needs weight_quad2"),
    (lambda: ql.quadric_linear(torch.randn(2, 4), torch.randn(6, 4), torch.randn(3, 4),
                               form="lowrank", weight_quad2=torch.randn(3, 4)), ValueError,
     "weight_quad2 must have shape"),
    (lambda: ql.quadric_linear(torch.randn(2, 4), torch.randn(3, 4), torch.randn(3, 4),
                               torch.randn(4)), ValueError, "bias must have shape"),
    (lambda: ql.quadric_linear(torch.randn(2, 4), torch.randn(3, 4), torch.randn(3, 4),
                               weight_quad2=torch.randn(3, 4)), ValueError, "only used by"),
])
def test_bad_input_clear_errors(bad, exc, match):
    with pytest.raises(exc, match=match):
        bad()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_quadric_conv2d_matches_two_convolutions(backend):
    torch.manual_seed(0)
    m = QuadricConv2d(3, 5, 3, stride=2, padding=1, dtype=torch.float64)
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64, requires_grad=True)
    with shallowkern.use_backend(backend):
        y = m(x)
    conv = torch.nn.functional.conv2d
    ref = conv(x * x, m.weight_quad, None, 2, 1) + conv(x, m.weight, m.bias, 2, 1)
    assert_close(y, ref, torch.float64, 54)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (rx,) = torch.autograd.grad(ref, x, g)
    assert_close(gx, rx, torch.float64, 54)
    with pytest.raises(ValueError, match=r"input must be \(N, 3, H, W\)"):
        m(torch.randn(2, 4, 8, 8, dtype=torch.float64))
