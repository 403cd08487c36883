"""quadric_linear: quadratic neurons in three forms, as one registered op with a ``form`` argument.

Math (x: (B, n) rows, K outputs, T = n(n+1)/2, r = rank):

    diagonal  y = (x*x) Wq^T + x W^T + b                          Wq, W: (K, n)
    full      y_k = sum_{i<=j} P[k, t(i,j)] x_i x_j + W_k x + b_k   P: (K, T), W: (K, n)
    lowrank   y_k = sum_{s<r} (Wa x)_{sK+k} (Wb x)_{sK+k} + W_k x + b_k   Wa, Wb: (r*K, n)

``full`` stores the packed upper triangle of the *symmetric part* of each A_k (only it affects
y = x^T A_k x): P[k, t(i,j)] = A_k[i,i] if i == j else A_k[i,j] + A_k[j,i], row-major over
i <= j, t(i,j) = i*n - i*(i-1)/2 + (j - i). ``pack_symmetric`` / ``unpack_symmetric`` convert.
Parameter counts: diagonal 2Kn + K, full K*n(n+1)/2 + Kn + K, lowrank 2rKn + Kn + K
(bias optional: minus K).

Backward (gy = dL/dy, (B, K)):

    diagonal  gx = gy W + 2 x*(gy Wq),  gWq = gy^T (x*x),  gW = gy^T x
    full      gP = gy^T Z with Z[b, t(i,j)] = x_i x_j,  gx_m = sum_t G[t] d(x_i x_j)/dx_m with
              G = gy P (B, T),  gW = gy^T x
    lowrank   ga = gy*hb, gb = gy*ha (per rank s), gx = ga Wa + gb Wb + gy W,
              gWa = ga^T x, gWb = gb^T x, gW = gy^T x;  gbias = sum_b gy always

Layers (CONVENTIONS.md §2, docs/adding_an_op.md): the references below are the CPU fallback, the
test oracle and the benchmark baseline. ``shallowkern::quadric_linear`` and
``quadric_linear_backward`` are custom ops with fakes, autograd (double backward through the
composite), autocast and FLOP formulas (shallowkern.flops). ``FORWARD`` / ``BACKWARD`` declare
the backends: "native" (C++ CPU kernels, csrc/cpu/quadric_linear.cpp; on CUDA the full-form C++
forward, csrc/cuda/quadric_linear.cu, when forced), "triton" (shallowkern/triton/
quadric_linear.py), "reference". The forward's choice is saved on the autograd ctx and passed to
the backward op, so both run the same road. ``shallowkern.ops.explain("quadric_linear", ...)``
and ``last_backend("quadric_linear")`` say which.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from ._common import register_flop_formula  # deferred: flop_counter imports Triton

from .. import flops as _flops
from ._backend import Backend, OpDispatch
from ._common import autocast_dtype, cast_for_autocast, needs_composite, register_autocast

FORMS = ("diagonal", "full", "lowrank")
_NATIVE_CPU_DTYPES = (torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# layout helpers
# ---------------------------------------------------------------------------------------------
def packed_size(n: int) -> int:
    """Number of packed upper-triangle entries of an n x n symmetric matrix: n(n+1)/2."""
    return n * (n + 1) // 2


def triu_indices(n: int, device=None) -> tuple[Tensor, Tensor]:
    """(i, j) of the packed order: row-major over i <= j (int64 tensors of length n(n+1)/2)."""
    idx = torch.triu_indices(n, n, device=device)
    return idx[0], idx[1]


def pack_symmetric(a: Tensor) -> Tensor:
    """(..., n, n) matrices -> (..., n(n+1)/2) packed coefficients of x^T a x (see module doc)."""
    n = a.shape[-1]
    i, j = triu_indices(n, a.device)
    s = a + a.transpose(-1, -2)
    return torch.where(i == j, a[..., i, j], s[..., i, j])


def unpack_symmetric(p: Tensor, n: int) -> Tensor:
    """(..., n(n+1)/2) packed coefficients -> (..., n, n) symmetric A, x^T A x = sum P x_i x_j."""
    i, j = triu_indices(n, p.device)
    a = p.new_zeros(*p.shape[:-1], n, n)
    half = torch.where(i == j, p, p / 2)
    a[..., i, j] = half
    a[..., j, i] = half
    return a


def outer_packed(x: Tensor) -> Tensor:
    """Z[b, t(i,j)] = x[b,i] * x[b,j] for (B, n) x: (B, n(n+1)/2). Test/reference helper only."""
    i, j = triu_indices(x.shape[-1], x.device)
    return x[:, i] * x[:, j]


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def check_args(input: Tensor, weight_quad: Tensor, weight: Tensor, bias: Tensor | None,
               form: str, weight_quad2: Tensor | None) -> int:
    """Validate a call (input (*, n)); returns the rank (1 unless form='lowrank')."""
    if form not in FORMS:
        raise ValueError(f"quadric_linear: form must be one of {FORMS}, got {form!r}")
    if not isinstance(input, Tensor) or input.dim() < 1:
        raise ValueError(f"quadric_linear: input must be a tensor of shape (*, in_features), got "
                         f"{_shape(input)}")
    if not input.is_floating_point():
        raise TypeError(f"quadric_linear: input must be a floating-point tensor, got {input.dtype}")
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"quadric_linear: weight must be a 2-D (out_features, in_features) "
                         f"tensor, got {_shape(weight)}")
    k, n = weight.shape
    if input.shape[-1] != n:
        raise ValueError(f"quadric_linear: input has {input.shape[-1]} features in its last "
                         f"dimension but weight expects in_features={n}")
    named = [("weight_quad", weight_quad), ("weight", weight), ("bias", bias),
             ("weight_quad2", weight_quad2)]
    for name, t in named:
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"quadric_linear: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype != input.dtype:
            raise TypeError(f"quadric_linear: {name} dtype {t.dtype} != input dtype {input.dtype}")
        if t.device != input.device:
            raise ValueError(f"quadric_linear: {name} is on {t.device}, input on {input.device}")
    if bias is not None and tuple(bias.shape) != (k,):
        raise ValueError(f"quadric_linear: bias must have shape ({k},), got {tuple(bias.shape)}")
    rank = 1
    if form == "diagonal":
        want = (k, n)
    elif form == "full":
        want = (k, packed_size(n))
    else:
        if weight_quad2 is None:
            raise ValueError("quadric_linear: form='lowrank' needs weight_quad2 (the second "
                             "factor, shape (rank*out_features, in_features))")
        if (weight_quad.dim() != 2 or k == 0 or weight_quad.shape[0] % k
                or weight_quad.shape[0] == 0):
            raise ValueError(f"quadric_linear: lowrank weight_quad must be (rank*{k}, {n}) with "
                             f"rank >= 1, got {_shape(weight_quad)}")
        rank = weight_quad.shape[0] // k
        want = (rank * k, n)
        if tuple(weight_quad2.shape) != want:
            raise ValueError(f"quadric_linear: weight_quad2 must have shape {want} (same as "
                             f"weight_quad), got {_shape(weight_quad2)}")
    if form != "lowrank" and weight_quad2 is not None:
        raise ValueError(f"quadric_linear: weight_quad2 is only used by form='lowrank', got it "
                         f"with form={form!r}")
    if tuple(weight_quad.shape) != want:
        layout = {"diagonal": "(out_features, in_features)",
                  "full": "(out_features, in_features*(in_features+1)/2) packed upper triangle",
                  "lowrank": "(rank*out_features, in_features)"}[form]
        raise ValueError(f"quadric_linear: form={form!r} needs weight_quad of shape {want} "
                         f"{layout}, got {_shape(weight_quad)}")
    return rank


# ---------------------------------------------------------------------------------------------
# references (aten compositions; 2-D input)
# ---------------------------------------------------------------------------------------------
def quadric_linear_reference(input: Tensor, weight_quad: Tensor, weight_quad2: Tensor | None,
                             weight: Tensor, bias: Tensor | None, form: str) -> Tensor:
    """The forward in aten ops for (B, n) input. The full form is chunked over the packed index
    so that extra memory stays O(B * (n + K)) per chunk of rows of the triangle."""
    y = torch.nn.functional.linear(input, weight, bias)
    if form == "diagonal":
        return y.addmm_(input * input, weight_quad.t())
    if form == "lowrank":
        k = weight.shape[0]
        r = weight_quad.shape[0] // max(k, 1)
        ha = input @ weight_quad.t()
        hb = input @ weight_quad2.t()
        return y.add_((ha * hb).view(-1, r, k).sum(1))
    n = input.shape[1]
    for i0, i1, t0, t1 in _row_chunks(n):
        z = _outer_rows(input, i0, i1)
        y.addmm_(z, weight_quad[:, t0:t1].t())
    return y


def _row_chunks(n: int, target: int = 4096):
    """Split the triangle's rows into chunks of about ``target`` packed entries:
    yields (i0, i1, t0, t1) with packed columns [t0, t1) = rows i0..i1-1."""
    i0, t0 = 0, 0
    while i0 < n:
        i1, t1 = i0, t0
        while i1 < n and (t1 - t0 < target or i1 == i0):
            t1 += n - i1
            i1 += 1
        yield i0, i1, t0, t1
        i0, t0 = i1, t1


def _outer_rows(x: Tensor, i0: int, i1: int) -> Tensor:
    """Z columns of packed rows i0..i1-1: [x_i * x[:, i:] for i in range(i0, i1)] -> (B, sum)."""
    return torch.cat([x[:, i:i + 1] * x[:, i:] for i in range(i0, i1)], dim=1)


def quadric_linear_backward_reference(grad_out: Tensor, input: Tensor, weight_quad: Tensor,
                                      weight_quad2: Tensor | None, weight: Tensor, form: str,
                                      output_mask: list[bool]) -> tuple[Tensor, ...]:
    """Gradients (input, weight_quad, weight_quad2, weight, bias) in aten ops; masked-off or
    unused (weight_quad2 outside lowrank) gradients are empty tensors."""
    gy, x = grad_out, input
    gx = gq = gq2 = gw = gb = None
    if form == "diagonal":
        if output_mask[0]:
            gx = gy @ weight + 2 * x * (gy @ weight_quad)
        if output_mask[1]:
            gq = gy.t() @ (x * x)
    elif form == "lowrank":
        k = weight.shape[0]
        r = weight_quad.shape[0] // max(k, 1)
        ha, hb = x @ weight_quad.t(), x @ weight_quad2.t()
        gyr = gy.repeat(1, r)
        ga, gbq = gyr * hb, gyr * ha
        if output_mask[0]:
            gx = gy @ weight + ga @ weight_quad + gbq @ weight_quad2
        if output_mask[1]:
            gq = ga.t() @ x
            gq2 = gbq.t() @ x
    else:
        n = x.shape[1]
        if output_mask[0]:
            gx = gy @ weight
        if output_mask[1]:
            gq = torch.empty_like(weight_quad)
        for i0, i1, t0, t1 in _row_chunks(n):
            if output_mask[1]:
                torch.mm(gy.t(), _outer_rows(x, i0, i1), out=gq[:, t0:t1])
            if output_mask[0]:
                g = gy @ weight_quad[:, t0:t1]  # (B, chunk)
                off = 0
                for i in range(i0, i1):
                    seg = g[:, off:off + n - i]
                    off += n - i
                    gx[:, i] += (seg * x[:, i:]).sum(1)  # d/dx_i of x_i x_j (j >= i)
                    gx[:, i:] += seg * x[:, i:i + 1]      # d/dx_j of x_i x_j (diag: 2 x_i)
    if output_mask[2]:
        gw = gy.t() @ x
    if output_mask[3]:
        gb = gy.sum(0)
    empty = x.new_empty(0)
    return tuple(t if t is not None else empty.clone() for t in (gx, gq, gq2, gw, gb))


# ---------------------------------------------------------------------------------------------
# backend choice (declarative: shallowkern.ops._backend)
# ---------------------------------------------------------------------------------------------
def _triton():
    from ..triton import quadric_linear as tk

    return tk


def _has_kernel(name: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"shallowkern::{name}", key)


def _native_cpu_supports(input, *args) -> str | None:
    if not _has_kernel("_quadric_linear_native", "CPU"):
        return "shallowkern._C was built without the quadric_linear CPU kernel"
    return None


def _cuda_full_supports(input, weight_quad, weight_quad2, weight, bias, form) -> str | None:
    if form != "full":
        return "the CUDA C++ kernel covers the full form only"
    if not _has_kernel("_quadric_linear_full_cuda", "CUDA"):
        return "shallowkern._C was built without _quadric_linear_full_cuda"
    return None


def _cuda_full_prefer(*args) -> str | None:
    # exact-FMA kernel; the Triton kernel runs the same packed math on tensor cores
    return "the Triton tensor-core kernel is preferred (force 'native' for the CUDA C++ one)"


def _triton_prefer(input, *args) -> str | None:
    if input.device.type == "cpu":
        return "Triton on CPU runs only in the interpreter (tests force it with use_backend)"
    return None


FORWARD = OpDispatch("quadric_linear", [
    Backend("native", devices=("cpu",), dtypes=_NATIVE_CPU_DTYPES, needs_ext=True,
            supports=_native_cpu_supports, description="C++ CPU kernel (MKL GEMMs + fused "
            "operand packing)"),
    Backend("native", devices=("cuda",), dtypes=_TRITON_DTYPES, needs_cuda_ext=True,
            supports=_cuda_full_supports, prefer=_cuda_full_prefer,
            description="CUDA C++ full-form forward (exact FMA)"),
    Backend("triton", devices=("cuda", "cpu"), dtypes=_TRITON_DTYPES, needs_triton=True,
            prefer=_triton_prefer, description="Triton fused kernels"),
    Backend("reference", description="aten composition"),
])

BACKWARD = OpDispatch("quadric_linear_backward", [
    Backend("native", devices=("cpu",), dtypes=_NATIVE_CPU_DTYPES, needs_ext=True,
            supports=_native_cpu_supports, description="C++ CPU kernel"),
    Backend("triton", devices=("cuda", "cpu"), dtypes=_TRITON_DTYPES, needs_triton=True,
            prefer=_triton_prefer, description="Triton fused kernels"),
    Backend("reference", description="aten composition"),
], key=lambda grad_out, input, *rest: input)


# ---------------------------------------------------------------------------------------------
# registered ops
# ---------------------------------------------------------------------------------------------
def _check_op_args(input, weight_quad, weight_quad2, weight, bias, form) -> None:
    check_args(input, weight_quad, weight, bias, form, weight_quad2)
    if input.dim() != 2:
        raise ValueError(f"quadric_linear: the registered op takes a 2-D (B, in_features) input, "
                         f"got {tuple(input.shape)} (the functional flattens leading dimensions)")


@torch.library.custom_op("shallowkern::quadric_linear", mutates_args=())
def quadric_linear_op(input: Tensor, weight_quad: Tensor, weight_quad2: Tensor | None,
                      weight: Tensor, bias: Tensor | None, form: str) -> Tensor:
    """Quadric layer forward on (B, n) input -> (B, K); the kernel is chosen by ``FORWARD``."""
    _check_op_args(input, weight_quad, weight_quad2, weight, bias, form)
    choice = FORWARD.select(input, weight_quad, weight_quad2, weight, bias, form)
    if choice.backend == "native":
        if input.device.type == "cuda":
            return torch.ops.shallowkern._quadric_linear_full_cuda(input, weight_quad, weight, bias)
        return torch.ops.shallowkern._quadric_linear_native(
            input, weight_quad, weight_quad2, weight, bias, form)
    if choice.backend == "triton":
        return _triton().forward(input, weight_quad, weight_quad2, weight, bias, form)
    return quadric_linear_reference(input, weight_quad, weight_quad2, weight, bias, form)


@quadric_linear_op.register_fake
def _quadric_linear_fake(input, weight_quad, weight_quad2, weight, bias, form):
    _check_op_args(input, weight_quad, weight_quad2, weight, bias, form)
    return input.new_empty(input.shape[0], weight.shape[0])


@torch.library.custom_op("shallowkern::quadric_linear_backward", mutates_args=())
def quadric_linear_backward_op(grad_out: Tensor, input: Tensor, weight_quad: Tensor,
                               weight_quad2: Tensor | None, weight: Tensor, form: str,
                               output_mask: list[bool], backend: str = ""
                               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (input, weight_quad, weight_quad2, weight, bias). ``output_mask``: 4
    flags (input, the quadratic weights, weight, bias); off or unused gradients come back empty.
    ``backend``: the forward's choice (autograd passes it), honoured where eligible."""
    _check_op_args(input, weight_quad, weight_quad2, weight, None, form)
    if grad_out.shape != (input.shape[0], weight.shape[0]) or grad_out.dtype != input.dtype:
        raise ValueError(f"quadric_linear_backward: grad_out must be {input.dtype} of shape "
                         f"({input.shape[0]}, {weight.shape[0]}), got {grad_out.dtype} "
                         f"{tuple(grad_out.shape)}")
    if len(output_mask) != 4:
        raise ValueError(f"quadric_linear_backward: output_mask needs 4 flags, got {output_mask}")
    choice = BACKWARD.select(grad_out, input, weight_quad, weight_quad2, weight, form,
                             backend=backend or None)
    if choice.backend == "native":
        return torch.ops.shallowkern._quadric_linear_native_backward(
            grad_out, input, weight_quad, weight_quad2, weight, form, output_mask)
    if choice.backend == "triton":
        return _triton().backward(grad_out, input, weight_quad, weight_quad2, weight, form,
                                  output_mask)
    return quadric_linear_backward_reference(grad_out, input, weight_quad, weight_quad2, weight,
                                             form, output_mask)


@quadric_linear_backward_op.register_fake
def _quadric_linear_backward_fake(grad_out, input, weight_quad, weight_quad2, weight, form,
                                  output_mask, backend=""):
    e = lambda: input.new_empty(0)  # noqa: E731
    lr = form == "lowrank"
    return (input.new_empty(input.shape) if output_mask[0] else e(),
            weight_quad.new_empty(weight_quad.shape) if output_mask[1] else e(),
            weight_quad2.new_empty(weight_quad2.shape) if output_mask[1] and lr else e(),
            weight.new_empty(weight.shape) if output_mask[2] else e(),
            weight.new_empty(weight.shape[0]) if output_mask[3] else e())


def _setup_context(ctx, inputs, output):
    input, weight_quad, weight_quad2, weight, bias, form = inputs
    ctx.save_for_backward(input, weight_quad, weight_quad2, weight, bias)
    ctx.form, ctx.has_bias = form, bias is not None
    # the forward's choice, carried to the backward (autograd may run it on another thread)
    ctx.backend = FORWARD.choose(input, weight_quad, weight_quad2, weight, bias, form).backend


def _backward(ctx, grad_out):
    input, weight_quad, weight_quad2, weight, bias = ctx.saved_tensors
    ng = ctx.needs_input_grad
    mask = [ng[0], ng[1] or ng[2], ng[3], ctx.has_bias and ng[4]]
    if torch.is_grad_enabled():
        # create_graph=True (double backward): the reference composition, differentiable again
        leaves = (input, weight_quad, weight_quad2, weight, bias)
        with torch.enable_grad():
            y = quadric_linear_composite(*leaves, ctx.form)
        want = [i for i in range(5) if ng[i] and leaves[i] is not None]
        grads = torch.autograd.grad(y, [leaves[i] for i in want], grad_out, create_graph=True)
        out = [None] * 5
        for i, g in zip(want, grads):
            out[i] = g
        return (*out, None)
    gx, gq, gq2, gw, gb = quadric_linear_backward_op(
        grad_out.contiguous(), input, weight_quad, weight_quad2, weight, ctx.form, mask,
        ctx.backend)
    return (gx if mask[0] else None, gq if ng[1] else None,
            gq2 if ng[2] and ctx.form == "lowrank" else None, gw if mask[2] else None,
            gb if mask[3] else None, None)


quadric_linear_op.register_autograd(_backward, setup_context=_setup_context)
register_autocast("shallowkern::quadric_linear")


@register_flop_formula(torch.ops.shallowkern.quadric_linear)
def _quadric_linear_flops(input_shape, weight_quad_shape, weight_quad2_shape, weight_shape,
                          bias_shape, form, out_shape=None, **kwargs) -> int:
    k = weight_shape[0]
    return _flops.quadric_linear_flops(input_shape[0], input_shape[1], k, form,
                                       weight_quad_shape[0] // max(k, 1) if form == "lowrank" else 1)


@register_flop_formula(torch.ops.shallowkern.quadric_linear_backward)
def _quadric_linear_backward_flops(grad_shape, input_shape, weight_quad_shape, weight_quad2_shape,
                                   weight_shape, form, output_mask, *args, out_shape=None,
                                   **kwargs) -> int:
    k = weight_shape[0]
    return _flops.quadric_linear_backward_flops(
        input_shape[0], input_shape[1], k, form,
        weight_quad_shape[0] // max(k, 1) if form == "lowrank" else 1, output_mask)


# ---------------------------------------------------------------------------------------------
# functional
# ---------------------------------------------------------------------------------------------
def quadric_linear_composite(input: Tensor, weight_quad: Tensor, weight_quad2: Tensor | None,
                             weight: Tensor, bias: Tensor | None, form: str) -> Tensor:
    """The same function in differentiable aten ops (any leading dims): what function
    transforms and double backward run. The full form goes through the packed outer product
    (B x n(n+1)/2 memory: fine for transforms, not a fast path)."""
    y = torch.nn.functional.linear(input, weight, bias)
    if form == "diagonal":
        return y + torch.nn.functional.linear(input * input, weight_quad)
    if form == "lowrank":
        k = weight.shape[0]
        r = weight_quad.shape[0] // max(k, 1)
        prod = torch.nn.functional.linear(input, weight_quad) * torch.nn.functional.linear(
            input, weight_quad2)
        return y + prod.unflatten(-1, (r, k)).sum(-2)
    i, j = triu_indices(input.shape[-1], input.device)
    return y + torch.nn.functional.linear(input[..., i] * input[..., j], weight_quad)


def quadric_linear(input: Tensor, weight_quad: Tensor, weight: Tensor, bias: Tensor | None = None,
                   *, form: str = "diagonal", weight_quad2: Tensor | None = None) -> Tensor:
    """Quadratic neurons (see the module docstring for the math and the packed layout).

    Args:
        input: (*, n); CPU: float32/float64 (C++ kernels), float16/bfloat16 (reference);
            CUDA: float32/float16/bfloat16 (Triton); any strides.
        weight_quad: diagonal (K, n); full (K, n(n+1)/2) packed upper triangle; lowrank
            (r*K, n), row s*K + k is factor s of output k.
        weight: (K, n) linear weights. bias: (K,) or None.
        form: "diagonal" | "full" | "lowrank". weight_quad2: lowrank only, (r*K, n).
    Returns:
        (*, K) in the input's dtype. Under ``torch.autocast`` the inputs are cast to the
        region's dtype first; under ``torch.func`` transforms and forward-mode AD the aten
        composition runs (exact derivatives).
    """
    if isinstance(input, Tensor) and autocast_dtype(input.device.type) is not None:
        input, weight_quad, weight_quad2, weight, bias = cast_for_autocast(
            input.device.type, input, weight_quad, weight_quad2, weight, bias)
    if needs_composite(input, weight_quad, weight_quad2, weight, bias):
        check_args(input, weight_quad, weight, bias, form, weight_quad2)
        return quadric_linear_composite(input, weight_quad, weight_quad2, weight, bias, form)
    if not isinstance(input, Tensor) or input.dim() < 1:
        check_args(input, weight_quad, weight, bias, form, weight_quad2)  # raises, naming input
    # the registered op validates everything else (it is public API): one check per call
    lead = input.shape[:-1]
    x = input.reshape(-1, input.shape[-1])
    y = quadric_linear_op(x, weight_quad, weight_quad2, weight, bias, form)
    return y.view(*lead, weight.shape[0])


def init_parameters(weight_quad: Tensor, weight: Tensor, bias: Tensor | None, form: str,
                    weight_quad2: Tensor | None = None) -> None:
    """The sources' initialisation, in place (see nn.QuadricLinear)."""
    n = weight.shape[1]
    bound = 1 / math.sqrt(n) if n > 0 else 0.0
    with torch.no_grad():
        torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        if form == "full":  # nn.Bilinear's U(+-1/sqrt(n)) on the full A, then packed
            k = weight.shape[0]
            a = torch.empty(k, n, n, dtype=weight.dtype, device=weight.device)
            a.uniform_(-bound, bound)
            weight_quad.copy_(pack_symmetric(a))
        else:
            torch.nn.init.kaiming_uniform_(weight_quad, a=math.sqrt(5))
            if weight_quad2 is not None:
                torch.nn.init.kaiming_uniform_(weight_quad2, a=math.sqrt(5))
        if bias is not None:
            torch.nn.init.uniform_(bias, -bound, bound)
