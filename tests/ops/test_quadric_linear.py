"""quadric_linear: every form and backend against independent fp64 references, gradients,
odd sizes, empty batch, strides, bad input. The contract suite (tests/specs/quadric_linear.py)
adds opcheck, compile, export and FLOP checks."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import shallowkern
from shallowkern import _ext
from shallowkern.flops import quadric_linear_flops
from shallowkern.nn.quadric_linear import QuadricConv2d, QuadricLinear, quadric_param_count
# the module (shallowkern.ops.quadric_linear is also the name of the exported functional)
ql = importlib.import_module("shallowkern.ops.quadric_linear")
from shallowkern.testing import assert_close

NATIVE = pytest.mark.skipif(not (_ext.available() and ql.NATIVE_CPU),
                            reason="shallowkern._C without the quadric_linear C++ op")
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
    assert shallowkern.last_backend("quadric_linear").backend == backend
    if backend != "native":  # the C++ autograd records nothing; Python backwards do
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


@NATIVE
def test_schemas_match_python_copy():
    for name, schema in ql.SCHEMAS.items():
        assert str(getattr(torch.ops.shallowkern, name).default._schema) == "shallowkern::" + schema


@NATIVE
def test_fast_path_choice_matches_the_dispatch_table():
    """The functional skips FORWARD's walk for CPU float32/float64: same choice, same reason."""
    for dtype in (torch.float32, torch.float64):
        x, wq, w, b = (torch.randn(*s, dtype=dtype) for s in ((3, 4), (2, 4), (2, 4), (2,)))
        ql.quadric_linear(x, wq, w, b)
        assert shallowkern.last_backend("quadric_linear") == ql.FORWARD.choose(
            x, wq, None, w, b, "diagonal")
    with shallowkern.use_backend("reference"):
        ql.quadric_linear(x, wq, w, b)
    assert shallowkern.last_backend("quadric_linear").backend == "reference"


@NATIVE
@pytest.mark.parametrize("b,n,k", [(7, 5, 3), (129, 90, 91)], ids=["direct_mkl", "aten_gemm"])
def test_diagonal_small_and_large_gemm_paths(b, n, k):
    """The C++ diagonal kernels call MKL directly up to 2^20 multiply-adds, ATen above."""
    torch.manual_seed(0)
    x = torch.randn(b, n, dtype=torch.float64, requires_grad=True)
    wq, w, bias = (torch.randn(*s, dtype=torch.float64, requires_grad=True)
                   for s in ((k, n), (k, n), (k,)))
    y = torch.ops.shallowkern.quadric_linear(x, wq, None, w.t().contiguous().t(), bias,
                                             "diagonal", "native")
    ref = ql.quadric_linear_composite(x, wq, None, w, bias, "diagonal")
    assert_close(y, ref, torch.float64, 2 * n)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, wq, w, bias), g)
    want = torch.autograd.grad(ref, (x, wq, w, bias), g)
    for name, a, e in zip(("x", "wq", "w", "bias"), got, want):
        assert_close(a, e, torch.float64, max(b, k), msg=name)


@NATIVE
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lowrank_training_forward_saves_its_factors(dtype):
    """The C++ autograd's lowrank training forward returns y and stack(x Wa^T, x Wb^T); the
    backward with them is bit-identical to the one that recomputes them, saved factors are never
    overwritten (a retained graph's second backward is identical), bad factors raise, and the
    FLOP counter counts the training forward like the inference one."""
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(3)
    b, n, k, r = 33, 17, 6, 3
    x, wq, wq2, w, bias, gy = (torch.randn(*s, generator=g, dtype=dtype) for s in (
        (b, n), (r * k, n), (r * k, n), (k, n), (k,), (b, k)))
    op = torch.ops.shallowkern
    y, factors = op._quadric_linear_lowrank_train(x, wq, wq2, w, bias)
    assert torch.equal(y, op.quadric_linear(x, wq, wq2, w, bias, "lowrank"))
    assert torch.equal(factors, torch.stack((x @ wq.t(), x @ wq2.t())))
    mask = [True] * 4
    saved = op.quadric_linear_backward(gy, x, wq, wq2, w, "lowrank", mask, factors=factors)
    recomputed = op.quadric_linear_backward(gy, x, wq, wq2, w, "lowrank", mask)
    assert all(torch.equal(s, c) for s, c in zip(saved, recomputed))
    leaves = [t.clone().requires_grad_() for t in (x, wq, wq2, w, bias)]
    out = ql.quadric_linear(leaves[0], leaves[1], leaves[3], leaves[4], form="lowrank",
                            weight_quad2=leaves[2])
    first = torch.autograd.grad(out, leaves, gy, retain_graph=True)
    second = torch.autograd.grad(out, leaves, gy)
    assert all(torch.equal(a, c) for a, c in zip(first, second))
    assert all(torch.equal(a, c) for a, c in zip(first[:4], recomputed[:4]))
    for bad in (factors[:, :3], factors[0], factors.to(torch.float16)):
        with pytest.raises(RuntimeError, match="factors must be None"):
            op.quadric_linear_backward(gy, x, wq, wq2, w, "lowrank", mask, factors=bad)
    with pytest.raises(RuntimeError, match="factors must be None"):  # lowrank only
        op.quadric_linear_backward(gy, x, w.clone(), None, w, "diagonal", mask, factors=factors)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op._quadric_linear_lowrank_train(x.half(), wq.half(), wq2.half(), w.half(), None)
    with FlopCounterMode(display=False) as fc:
        out = ql.quadric_linear(leaves[0], leaves[1], leaves[3], leaves[4], form="lowrank",
                                weight_quad2=leaves[2])
    assert fc.get_total_flops() == quadric_linear_flops(b, n, k, "lowrank", r) > 0


@NATIVE
@pytest.mark.parametrize("form", ql.FORMS)
def test_cpp_op_autograd_masks_and_half_dtypes(form):
    """The C++ op directly: only the asked-for gradients come back (an absent weight_quad2 or
    bias shifts autograd's edge numbering), double backward, float16/bfloat16 in float32."""
    m, params = make(6, 4, form, dtype=torch.float64, bias=False)
    x = torch.randn(5, 6, dtype=torch.float64)
    wq, wq2, w = params["weight_quad"], params["weight_quad2"], params["weight"]
    for leaf in ("x", "w"):
        xx, ww = x.clone().requires_grad_(leaf == "x"), w.detach().clone().requires_grad_(leaf == "w")
        y = torch.ops.shallowkern.quadric_linear(xx, wq.detach(), None if wq2 is None else
                                                 wq2.detach(), ww, None, form, "native")
        g = torch.randn_like(y)
        (got,) = torch.autograd.grad(y, xx if leaf == "x" else ww, g)
        ref_x, ref_w = x.clone().requires_grad_(), w.detach().clone().requires_grad_()
        ref = ql.quadric_linear_composite(ref_x, wq.detach(), None if wq2 is None else
                                          wq2.detach(), ref_w, None, form)
        (want,) = torch.autograd.grad(ref, ref_x if leaf == "x" else ref_w, g)
        assert_close(got, want, torch.float64, 64, msg=f"{form} d{leaf}")
    xx = x.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda t: torch.ops.shallowkern.quadric_linear(t, wq, wq2, w, None, form), (xx,))
    for dt in (torch.float16, torch.bfloat16):
        to = lambda t: None if t is None else t.detach().to(dt)  # noqa: E731
        y = torch.ops.shallowkern.quadric_linear(to(x), to(wq), to(wq2), to(w), None, form)
        assert y.dtype == dt
        ref = independent(to(x).double(), {k: None if v is None else to(v).double()
                                           for k, v in params.items()}, form)
        assert_close(y, ref, dt, reduction(6, form))
    with pytest.raises(RuntimeError, match="backend must be"):
        torch.ops.shallowkern.quadric_linear(x, wq, wq2, w, None, form, "cudnn")
    with pytest.raises(RuntimeError, match="weight_quad2"):
        torch.ops.shallowkern.quadric_linear(x, wq, wq if form != "lowrank" else wq[:1], w,
                                             None, form)


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


# ---------------------------------------------------------------------------------------------
# Triton kernels: interpreter numerics (fp32/fp16; bf16 is broken in the interpreter) and the
# sm_90 compile check (subprocess without TRITON_INTERPRET; `python tests/ops/
# test_quadric_linear.py --compile-check` runs it alone and prints shared memory / registers)
# ---------------------------------------------------------------------------------------------
def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()


needs_triton = pytest.mark.skipif(not _interpreting(), reason="no CUDA and TRITON_INTERPRET unset")


@needs_triton
@pytest.mark.parametrize("form", ql.FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m,n,k", [(70, 20, 66), (3, 1, 1), (0, 5, 4)])
def test_triton_kernels_forward_backward(form, dtype, m, n, k):
    """Shapes larger than one 64x64 tile and odd tails; every gradient of the kernels."""
    from shallowkern.triton import quadric_linear as tk

    torch.manual_seed(0)
    r = 2 if form == "lowrank" else 1
    x = torch.randn(m, n)
    quad = {"diagonal": (k, n), "full": (k, ql.packed_size(n)), "lowrank": (r * k, n)}[form]
    wq = torch.randn(quad) / n ** 0.5
    wq2 = torch.randn(quad) / n ** 0.5 if form == "lowrank" else None
    w, b, gy = torch.randn(k, n) / n ** 0.5, torch.randn(k), torch.randn(m, k)
    to = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    y = tk.forward(to(x), to(wq), to(wq2), to(w), to(b), form)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    ref = ql.quadric_linear_reference(d(x), d(wq), d(wq2), d(w), d(b), form)
    red = {"diagonal": 2 * n, "full": ql.packed_size(n) + n, "lowrank": 5 * n}[form]
    # fp16: the operands are rounded to fp16 first, so compare with the reference on them
    if dtype == torch.float16:
        ref = ql.quadric_linear_reference(*(d(to(t)) for t in (x, wq, wq2, w, b)), form)
    assert_close(y, ref, dtype, red, msg=f"{form} forward")
    got = tk.backward(to(gy), to(x), to(wq), to(wq2), to(w), form, [True] * 4)
    want = ql.quadric_linear_backward_reference(d(to(gy)), d(to(x)), d(to(wq)), d(to(wq2)),
                                                d(to(w)), form, [True] * 4)
    for name, a, e in zip(("gx", "gq", "gq2", "gw", "gb"), got, want):
        assert a.shape == e.shape, name
        assert_close(a, e, dtype, max(red, k, m) * 4, msg=f"{form} {name}")


@needs_triton
def test_triton_backend_through_the_op_strided_input():
    """The op with the Triton backend forced (interpreter here) on a transposed input."""
    m, params = make(9, 70, "full", dtype=torch.float32)
    x = torch.randn(9, 6).t().requires_grad_()  # (6, 9), strides (1, 6)
    with shallowkern.use_backend("triton"):
        y = m(x)
        y.sum().backward()
    assert shallowkern.last_backend("quadric_linear_backward").backend == "triton"
    assert_close(y, independent(x.detach(), params, "full"), torch.float32, 60)


def _nvidia_backend() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception:
        return False
    return True


def compile_check() -> list[dict]:
    """Compile every kernel for sm_90 (fp32/fp16/bf16); one row per kernel and dtype."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from shallowkern.triton import quadric_linear as tk

    ptrs = {
        "_diag_fwd": ("x_ptr", "wq_ptr", "w_ptr", "b_ptr", "y_ptr"),
        "_diag_grad_x": ("g_ptr", "wq_ptr", "w_ptr", "x_ptr", "gx_ptr"),
        "_mm_kernel": ("a_ptr", "b_ptr", "c_ptr"),
        "_full_fwd": ("x_ptr", "p_ptr", "ii_ptr", "jj_ptr", "w_ptr", "b_ptr", "y_ptr"),
        "_full_grad_p": ("g_ptr", "x_ptr", "ii_ptr", "jj_ptr", "gp_ptr"),
        "_full_grad_x": ("g_ptr", "x_ptr", "p_ptr", "part_ptr"),
        "_lowrank_fwd": ("x_ptr", "wa_ptr", "wb_ptr", "w_ptr", "b_ptr", "y_ptr", "g_ptr",
                         "da_ptr", "db_ptr"),
    }
    consts = {
        "_diag_fwd": dict(HAS_BIAS=True, BLOCK_M=tk.BM, BLOCK_N=tk.BN, BLOCK_K=tk.BK),
        "_diag_grad_x": dict(BLOCK_M=tk.BM, BLOCK_N=tk.BN, BLOCK_K=tk.BK),
        "_mm_kernel": dict(SQUARE_B=True, ACCUMULATE=True, BLOCK_M=tk.BM, BLOCK_N=tk.BN,
                           BLOCK_K=tk.BK),
        "_full_fwd": dict(HAS_BIAS=True, BLOCK_M=tk.BM, BLOCK_N=tk.BN, BLOCK_T=tk.BK),
        "_full_grad_p": dict(BLOCK_N=tk.BN, BLOCK_T=tk.BN, BLOCK_M=tk.BK),
        "_full_grad_x": dict(BLOCK_M=tk.BM, BLOCK_N=tk.BK, BLOCK_J=tk.BK),
        "_lowrank_fwd": dict(HAS_BIAS=True, GRAD=False, BLOCK_M=tk.BM, BLOCK_N=tk.BN,
                             BLOCK_K=tk.BK),
    }
    rows = []
    for dt in ("fp32", "fp16", "bf16"):
        for name, ps in ptrs.items():
            fn = getattr(tk, name)
            const = {**consts[name], "PREC": "tf32" if dt == "fp32" else "ieee"}
            types = {a: ("*i32" if a in ("ii_ptr", "jj_ptr") else
                         "*fp32" if a in ("gp_ptr", "part_ptr") else f"*{dt}") for a in ps}
            sig = {a: "constexpr" if a in const else types.get(a, "i32") for a in fn.arg_names}
            kern = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const),
                                  target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=tk.NUM_WARPS))
            rows.append(dict(kernel=name, dtype=dt, shared=kern.metadata.shared,
                             wgmma="warp_group_dot" in kern.asm["ttgir"]))
    return rows


@pytest.mark.skipif(not _nvidia_backend(), reason="triton has no NVIDIA backend here")
def test_triton_kernels_compile_for_sm90():
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, __file__, "--compile-check"], env=env,
                         capture_output=True, text=True, timeout=900,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert res.returncode == 0, res.stderr[-4000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(rows) == 21
    assert all(r["shared"] <= 232448 for r in rows), rows  # sm_90 opt-in limit (227 KB)


if __name__ == "__main__":
    import json
    import sys

    if "--compile-check" in sys.argv:
        print(json.dumps(compile_check()))
