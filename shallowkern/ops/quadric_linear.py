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

Layers (CONVENTIONS.md §2, docs/adding_an_op.md). ``shallowkern::quadric_linear(input,
weight_quad, weight_quad2, weight, bias, form, backend="")`` and ``quadric_linear_backward`` have
C++ schemas (csrc/registration.cpp; ``SCHEMAS`` below repeats them and defines them when the
extension is missing), C++ CPU kernels (csrc/cpu/quadric_linear.cpp) and a C++ autograd
(csrc/cpu/quadric_linear_autograd.cpp), so a CPU training call is one C++ node; fakes, CUDA
kernels (Triton, or the CUDA C++ full-form forward, csrc/cuda/quadric_linear.cu, when forced),
autocast and FLOP formulas (shallowkern.flops) are registered here. ``FORWARD`` / ``BACKWARD``
declare the backends: "native", "triton", "reference" (the aten formulas of
ops/_quadric_reference.py). The functional picks one, passes it to the op as ``backend`` (saved
for the backward, so both run the same road); on CPU the Triton interpreter and the reference
run through ``_PythonPath`` instead of the C++ kernel. ``shallowkern.ops.explain("quadric_linear",
...)`` and ``last_backend("quadric_linear")`` say which.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import flops as _flops
from ._backend import Backend, Choice, OpDispatch, forced, record
from ._common import (autocast_dtype, cast_for_autocast, needs_composite, plain_eager_cpu,
                      register_autocast, register_flop_formula)
from ._quadric_reference import (FORMS, check_args, outer_packed, pack_symmetric, packed_size,
                                 quadric_linear_backward_reference, quadric_linear_composite,
                                 quadric_linear_reference, triu_indices, unpack_symmetric)

__all__ = ["BACKWARD", "FORMS", "FORWARD", "NATIVE_CPU", "SCHEMAS", "check_args", "init_parameters",
           "outer_packed", "pack_symmetric", "packed_size", "quadric_linear",
           "quadric_linear_backward_reference", "quadric_linear_composite",
           "quadric_linear_reference", "triu_indices", "unpack_symmetric"]

_NATIVE_CPU_DTYPES = (torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _has_kernel(name: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"shallowkern::{name}", key)


# True when shallowkern._C carries the C++ op (CPU kernels + autograd); checked on the dispatcher
# before anything below registers Python kernels (a _C built before the op has neither)
NATIVE_CPU = (hasattr(torch.ops.shallowkern, "quadric_linear")
              and _has_kernel("quadric_linear", "CPU") and _has_kernel("quadric_linear", "Autograd"))


# ---------------------------------------------------------------------------------------------
# backend choice (declarative: shallowkern.ops._backend)
# ---------------------------------------------------------------------------------------------
def _triton():
    from ..triton import quadric_linear as tk

    return tk


def _native_cpu_supports(input, *args) -> str | None:
    if not NATIVE_CPU:
        return "shallowkern._C was built without the quadric_linear C++ kernels"
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
_NATIVE_CHOICE = Choice("native", FORWARD.backends[0].description)


# ---------------------------------------------------------------------------------------------
# registered ops: schemas (C++; defined here when _C lacks them), fakes, CUDA and fallback kernels
# ---------------------------------------------------------------------------------------------
SCHEMAS = {
    "quadric_linear": (
        "quadric_linear(Tensor input, Tensor weight_quad, Tensor? weight_quad2, Tensor weight, "
        "Tensor? bias, str form, str backend=\"\") -> Tensor"),
    "quadric_linear_backward": (
        "quadric_linear_backward(Tensor grad_out, Tensor input, Tensor weight_quad, "
        "Tensor? weight_quad2, Tensor weight, str form, bool[4] output_mask, str backend=\"\", "
        "Tensor? factors=None) "
        "-> (Tensor grad_input, Tensor grad_weight_quad, Tensor grad_weight_quad2, "
        "Tensor grad_weight, Tensor grad_bias)"),
    "_quadric_linear_lowrank_train": (
        "_quadric_linear_lowrank_train(Tensor input, Tensor weight_quad, Tensor weight_quad2, "
        "Tensor weight, Tensor? bias) -> (Tensor out, Tensor factors)"),
}


def _check_op_args(input, weight_quad, weight_quad2, weight, bias, form) -> None:
    check_args(input, weight_quad, weight, bias, form, weight_quad2)
    if input.dim() != 2:
        raise ValueError(f"quadric_linear: the registered op takes a 2-D (B, in_features) input, "
                         f"got {tuple(input.shape)} (the functional flattens leading dimensions)")


def _check_backward_args(grad_out, input, weight_quad, weight_quad2, weight, form, output_mask,
                         factors=None):
    _check_op_args(input, weight_quad, weight_quad2, weight, None, form)
    if factors is not None and (form != "lowrank" or factors.shape != (
            2, input.shape[0], weight_quad.shape[0]) or factors.dtype != input.dtype):
        raise ValueError(f"quadric_linear_backward: factors must be None, or for form='lowrank' "
                         f"the training forward's (2, {input.shape[0]}, {weight_quad.shape[0]}) "
                         f"{input.dtype} tensor, got {form=} {factors.dtype} "
                         f"{tuple(factors.shape)}")
    if grad_out.shape != (input.shape[0], weight.shape[0]) or grad_out.dtype != input.dtype:
        raise ValueError(f"quadric_linear_backward: grad_out must be {input.dtype} of shape "
                         f"({input.shape[0]}, {weight.shape[0]}), got {grad_out.dtype} "
                         f"{tuple(grad_out.shape)}")
    if len(output_mask) != 4:
        raise ValueError(f"quadric_linear_backward: output_mask needs 4 flags, got {output_mask}")


def _py_forward(input, weight_quad, weight_quad2, weight, bias, form, backend=""):
    """The op's kernel where no C++ one runs it: CUDA (Triton / CUDA C++), CPU without _C."""
    _check_op_args(input, weight_quad, weight_quad2, weight, bias, form)
    choice = FORWARD.select(input, weight_quad, weight_quad2, weight, bias, form,
                            backend=backend or None)
    if choice.backend == "native" and input.device.type == "cuda":
        return torch.ops.shallowkern._quadric_linear_full_cuda(input, weight_quad, weight, bias)
    if choice.backend == "triton":
        return _triton().forward(input, weight_quad, weight_quad2, weight, bias, form)
    return quadric_linear_reference(input, weight_quad, weight_quad2, weight, bias, form)


def _py_backward(grad_out, input, weight_quad, weight_quad2, weight, form, output_mask,
                 backend="", factors=None):
    """Gradients (input, weight_quad, weight_quad2, weight, bias); off or unused ones empty.
    ``factors`` (lowrank, from the training forward) only spares work: these kernels recompute
    them, so it is checked and otherwise unused."""
    _check_backward_args(grad_out, input, weight_quad, weight_quad2, weight, form, output_mask,
                         factors)
    choice = BACKWARD.select(grad_out, input, weight_quad, weight_quad2, weight, form,
                             backend=backend or None)
    if choice.backend == "triton":
        return _triton().backward(grad_out, input, weight_quad, weight_quad2, weight, form,
                                  output_mask)
    return quadric_linear_backward_reference(grad_out, input, weight_quad, weight_quad2, weight,
                                             form, output_mask)


def _fake_forward(input, weight_quad, weight_quad2, weight, bias, form, backend=""):
    _check_op_args(input, weight_quad, weight_quad2, weight, bias, form)
    return input.new_empty(input.shape[0], weight.shape[0])


def _py_lowrank_train(input, weight_quad, weight_quad2, weight, bias):
    """The lowrank training forward where no C++ kernel runs it: (y, stack(x Wa^T, x Wb^T))."""
    _check_op_args(input, weight_quad, weight_quad2, weight, bias, "lowrank")
    factors = torch.stack((input @ weight_quad.t(), input @ weight_quad2.t()))
    k = weight.shape[0]
    prod = (factors[0] * factors[1]).view(input.shape[0], weight_quad.shape[0] // k, k).sum(1)
    return torch.nn.functional.linear(input, weight, bias) + prod, factors


def _fake_lowrank_train(input, weight_quad, weight_quad2, weight, bias):
    _check_op_args(input, weight_quad, weight_quad2, weight, bias, "lowrank")
    return (input.new_empty(input.shape[0], weight.shape[0]),
            input.new_empty(2, input.shape[0], weight_quad.shape[0]))


def _fake_backward(grad_out, input, weight_quad, weight_quad2, weight, form, output_mask,
                   backend="", factors=None):
    _check_backward_args(grad_out, input, weight_quad, weight_quad2, weight, form, output_mask,
                         factors)
    e = lambda: input.new_empty(0)  # noqa: E731
    lr = form == "lowrank"
    return (input.new_empty(input.shape) if output_mask[0] else e(),
            weight_quad.new_empty(weight_quad.shape) if output_mask[1] else e(),
            weight_quad2.new_empty(weight_quad2.shape) if output_mask[1] and lr else e(),
            weight.new_empty(weight.shape) if output_mask[2] else e(),
            weight.new_empty(weight.shape[0]) if output_mask[3] else e())


def _grads(ctx, grad_out, backward):
    """The autograd formula shared by the Python paths: ``backward`` is the backward kernel."""
    input, weight_quad, weight_quad2, weight, bias = ctx.saved_tensors
    ng = ctx.needs_input_grad
    mask = [ng[0], ng[1] or ng[2], ng[3], ctx.has_bias and ng[4]]
    if torch.is_grad_enabled():
        # create_graph=True (double backward): the composition, differentiable again
        leaves = (input, weight_quad, weight_quad2, weight, bias)
        with torch.enable_grad():
            y = quadric_linear_composite(*leaves, ctx.form)
        want = [i for i in range(5) if ng[i] and leaves[i] is not None]
        grads = torch.autograd.grad(y, [leaves[i] for i in want], grad_out, create_graph=True)
        out = [None] * 5
        for i, g in zip(want, grads):
            out[i] = g
        return (*out, None, None)
    gx, gq, gq2, gw, gb = backward(grad_out.contiguous(), input, weight_quad, weight_quad2,
                                   weight, ctx.form, mask, ctx.backend)
    return (gx if mask[0] else None, gq if ng[1] else None,
            gq2 if ng[2] and ctx.form == "lowrank" else None, gw if mask[2] else None,
            gb if mask[3] else None, None, None)


def _setup_context(ctx, inputs, output):
    input, weight_quad, weight_quad2, weight, bias, form, backend = inputs
    ctx.save_for_backward(input, weight_quad, weight_quad2, weight, bias)
    ctx.form, ctx.has_bias = form, bias is not None
    # the forward's choice, carried to the backward (autograd may run it on another thread)
    ctx.backend = backend or FORWARD.choose(input, weight_quad, weight_quad2, weight, bias,
                                            form).backend


class _PythonPath(torch.autograd.Function):
    """CPU, eager, backend "reference" or "triton" (interpreter, tests): the Python kernels with
    the op's autograd formula. (The registered op's CPU kernel is the C++ one.)"""

    @staticmethod
    def forward(input, weight_quad, weight_quad2, weight, bias, form, backend):
        return _py_forward(input, weight_quad, weight_quad2, weight, bias, form, backend)

    setup_context = staticmethod(_setup_context)

    @staticmethod
    def backward(ctx, grad_out):
        return _grads(ctx, grad_out, _py_backward)


_LIB = torch.library.Library("shallowkern", "FRAGMENT")  # noqa: TOR901
if not hasattr(torch.ops.shallowkern, "quadric_linear"):  # pragma: no cover - no-extension job
    for _schema in SCHEMAS.values():
        _LIB.define(_schema)
for _key in ("CPU",) * (not _has_kernel("quadric_linear", "CPU")) + ("CUDA",):
    _LIB.impl("quadric_linear", _py_forward, _key)
    _LIB.impl("quadric_linear_backward", _py_backward, _key)
for _key in ("CPU",) * (not _has_kernel("_quadric_linear_lowrank_train", "CPU")) + ("CUDA",):
    _LIB.impl("_quadric_linear_lowrank_train", _py_lowrank_train, _key)
torch.library.register_fake("shallowkern::quadric_linear", _fake_forward, lib=_LIB)
torch.library.register_fake("shallowkern::quadric_linear_backward", _fake_backward, lib=_LIB)
torch.library.register_fake("shallowkern::_quadric_linear_lowrank_train", _fake_lowrank_train,
                            lib=_LIB)
if not _has_kernel("quadric_linear", "Autograd"):  # pragma: no cover - no-extension job
    torch.library.register_autograd(
        "shallowkern::quadric_linear",
        lambda ctx, g: _grads(ctx, g, torch.ops.shallowkern.quadric_linear_backward),
        setup_context=_setup_context, lib=_LIB)
register_autocast("shallowkern::quadric_linear")
_OP = torch.ops.shallowkern.quadric_linear.default
_NATIVE_2D = NATIVE_CPU  # the functional's fast path (CPU, 2-D, float32/float64, eager)


@register_flop_formula(torch.ops.shallowkern.quadric_linear)
def _quadric_linear_flops(input_shape, weight_quad_shape, weight_quad2_shape, weight_shape,
                          bias_shape, form, *args, out_shape=None, **kwargs) -> int:
    k = weight_shape[0]
    return _flops.quadric_linear_flops(input_shape[0], input_shape[1], k, form,
                                       weight_quad_shape[0] // max(k, 1) if form == "lowrank" else 1)


@register_flop_formula(torch.ops.shallowkern._quadric_linear_lowrank_train)
def _quadric_linear_lowrank_train_flops(input_shape, weight_quad_shape, weight_quad2_shape,
                                        weight_shape, *args, out_shape=None, **kwargs) -> int:
    return _quadric_linear_flops(input_shape, weight_quad_shape, weight_quad2_shape,
                                 weight_shape, None, "lowrank")


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
        composition runs (exact derivatives). Bad arguments raise ValueError/TypeError naming
        the argument.
    """
    if _NATIVE_2D and plain_eager_cpu(input, _NATIVE_CPU_DTYPES) and input.dim() == 2:
        # the common CPU call, checked in C calls only (~2 us instead of ~7): FORWARD's first
        # rule (a test keeps the two equal); the C++ op validates everything itself
        record("quadric_linear", _NATIVE_CHOICE)
        try:
            return _OP(input, weight_quad, weight_quad2, weight, bias, form, "native")
        except (RuntimeError, TypeError, ValueError, AttributeError, IndexError):
            check_args(input, weight_quad, weight, bias, form, weight_quad2)  # name the argument
            raise
    if isinstance(input, Tensor) and autocast_dtype(input.device.type) is not None:
        input, weight_quad, weight_quad2, weight, bias = cast_for_autocast(
            input.device.type, input, weight_quad, weight_quad2, weight, bias)
    if needs_composite(input, weight_quad, weight_quad2, weight, bias):
        check_args(input, weight_quad, weight, bias, form, weight_quad2)
        return quadric_linear_composite(input, weight_quad, weight_quad2, weight, bias, form)
    if not isinstance(input, Tensor) or input.dim() < 1:
        check_args(input, weight_quad, weight, bias, form, weight_quad2)  # raises, naming input
    lead = input.shape[:-1]
    x = input.reshape(-1, input.shape[-1])
    if torch.compiler.is_compiling():
        # traced: one opaque node (fake, autograd), the kernel chooses at run time
        y = torch.ops.shallowkern.quadric_linear(x, weight_quad, weight_quad2, weight, bias, form)
        return y.view(*lead, weight.shape[0])
    try:
        if (NATIVE_CPU and x.device.type == "cpu" and x.dtype in _NATIVE_CPU_DTYPES
                and forced() is None):
            choice = record("quadric_linear", _NATIVE_CHOICE)  # as above, any leading dims
        else:
            choice = FORWARD.select(x, weight_quad, weight_quad2, weight, bias, form)
        if NATIVE_CPU and x.device.type == "cpu" and choice.backend != "native":
            # the op's CPU kernel is the C++ one: other CPU choices run beside it (without _C
            # the op's CPU kernel is _py_forward itself, and the op runs)
            y = _PythonPath.apply(x, weight_quad, weight_quad2, weight, bias, form, choice.backend)
        else:
            # the C++ op validates everything itself: no Python checks on the fast path
            y = _OP(x, weight_quad, weight_quad2, weight, bias, form, choice.backend)
    except (RuntimeError, TypeError, ValueError, AttributeError, IndexError):
        # say what is wrong in Python's words (the argument's name) when the inputs are at fault
        check_args(input, weight_quad, weight, bias, form, weight_quad2)
        raise
    return y if input.dim() == 2 else y.view(*lead, weight.shape[0])


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
