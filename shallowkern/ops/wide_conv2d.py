"""wide_conv2d: convolution + bias + [ReLU] + [2x2 max-pool] as one op.

Math (zero padding, cross-correlation as in nn.Conv2d; floor-mode pooling as nn.MaxPool2d(2)):

    y[n,k,p,q]   = b[k] + sum_{c,r,s} x[n, g(k)+c, p*sh - ph + r*dh, q*sw - pw + s*dw] * w[k,c,r,s]
    a            = relu(y) if relu else y
    out[n,k,i,j] = max_{di,dj in {0,1}} a[n,k,2i+di,2j+dj]                    (pool == 2)
    idx[n,k,i,j] = 2*di+dj of the first maximum (NaN wins), or 4 if relu and out <= 0

Backward (pool and ReLU folded into the conv gradients):

    gy[n,k,2i+di,2j+dj] = gout[n,k,i,j] if idx[n,k,i,j] == 2*di+dj else 0      (pool == 2)
    gy                  = gout * (out > 0)                                     (pool == 1, relu)
    gx = conv_transpose2d(gy, w),  gw = sum_n corr(x, gy),  gb = sum_{n,p,q} gy

Layers (CONVENTIONS.md §2): the pure-PyTorch reference (ops/_wide_conv2d_reference.py) is the CPU
fallback, the test oracle and the benchmark baseline; ``shallowkern::wide_conv2d`` /
``wide_conv2d_backward`` are registered custom ops with a fake, autograd and FLOP formulas; per
device they run the C++ CPU kernel (csrc/cpu/wide_conv2d.cpp), the CUDA kernel for small C_in
(csrc/cuda/wide_conv2d.cu), the Triton kernels (shallowkern/triton/wide_conv2d*.py), or the vendor
op (cuDNN) where the inputs are not eligible. ``shallowkern.ops.last_backend("wide_conv2d")`` says
which ran.
"""

from __future__ import annotations

import torch
from torch import Tensor
from ._common import register_flop_formula  # deferred: flop_counter imports Triton

from .. import _ext
from .. import flops as _flops
from ._backend import Backend, Choice, OpDispatch, record
from ._common import needs_composite, plain_eager_cpu, register_autocast
from ._geometry import NO_GRAD, conv_out_hw, out_memory_format, pair
# the argument checks (the registered ops validate their own arguments: they are public API)
from ._wide_conv2d_args import _check_backward_args, check_args, out_channels
# the reference (CPU fallback, test oracle, benchmark baseline) lives in its own module
from ._wide_conv2d_reference import (wide_conv2d_backward_reference, wide_conv2d_composite,
                                     wide_conv2d_reference)

__all__ = ["wide_conv2d", "wide_conv2d_reference", "check_args", "conv_out_hw",
           "out_memory_format", "NO_GRAD", "FORWARD", "BACKWARD"]

_NATIVE_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The CUDA C++ kernel is a direct convolution for the first layer (weights in shared memory);
# above this C_in the implicit-GEMM Triton kernel wins.
CUDA_SMALL_CIN = 4


# ---------------------------------------------------------------------------------------------
# backends (declared once; shallowkern.ops.explain("wide_conv2d", *op_args) asks the same table)
# ---------------------------------------------------------------------------------------------
def _triton():
    from ..triton import wide_conv2d as tk

    return tk


def _enough_images(input: Tensor, *args) -> str | None:
    # The C++ kernel parallelises over images: with fewer images than threads, oneDNN's
    # intra-image parallelism wins (measured 0.6-0.8x at N=1 on 2 threads).
    if 0 < input.shape[0] < torch.get_num_threads():
        return f"batch {input.shape[0]} < {torch.get_num_threads()} threads: oneDNN is faster"
    return None


def _cuda_direct_supports(input: Tensor, weight: Tensor, bias, stride, padding, dilation,
                          groups: int, *args) -> str | None:
    if input.dtype != torch.float32:
        return "the CUDA direct kernel is routed for fp32 only"
    if input.shape[1] > CUDA_SMALL_CIN:
        return f"C_in={input.shape[1]} > {CUDA_SMALL_CIN}: the CUDA direct kernel is for the first layer"
    if groups != 1:
        return "grouped convolution"
    if out_memory_format(input) != torch.contiguous_format:
        return "channels_last input"
    return None


def _cuda_direct_prefer(*args) -> str | None:
    # exact fp32 FMA: conv1 is FMA-bound (~141 FLOP/B), so where tensor cores are allowed
    # (fp32 with TF32 on) the Triton implicit GEMM runs instead.
    if torch.backends.cudnn.allow_tf32:
        return "TF32 allowed: Triton's tensor-core kernel instead of the exact-FMA CUDA kernel"
    return None


def _triton_supports(input: Tensor, weight: Tensor, bias, stride, padding, dilation, groups: int,
                     *args) -> str | None:
    return _triton().supports(input, weight, groups)


def _triton_prefer(input: Tensor, *args) -> str | None:
    if input.device.type == "cpu":
        return "Triton on CPU runs only in the interpreter (tests force it with use_backend)"
    # fp32 with TF32 off goes to Triton's IEEE dot (no tensor cores, 255 registers) where
    # cuDNN's exact-fp32 conv is likely faster; routed to cuDNN until the GPU check measures it.
    if input.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32 and input.shape[1] > CUDA_SMALL_CIN:
        return "fp32 with TF32 off and C_in > 4: cuDNN's exact-fp32 conv"
    return None


FORWARD = OpDispatch("wide_conv2d", [
    Backend("native", devices=("cpu",), dtypes=_NATIVE_CPU_DTYPES, needs_ext=True,
            prefer=_enough_images, description="C++ CPU kernel"),
    Backend("native", devices=("cuda",), dtypes=(torch.float32,), needs_cuda_ext=True,
            supports=_cuda_direct_supports, prefer=_cuda_direct_prefer,
            description="CUDA direct kernel (exact fp32, small C_in)"),
    Backend("triton", devices=("cuda", "cpu"), dtypes=_CUDA_DTYPES, needs_triton=True,
            supports=_triton_supports, prefer=_triton_prefer,
            description="Triton implicit GEMM"),
    Backend("vendor", devices=("cuda",), description="cuDNN conv + aten epilogue"),
    Backend("reference", description="aten composition (conv2d -> relu -> max_pool2d)"),
])

BACKWARD = OpDispatch("wide_conv2d_backward", [
    Backend("native", devices=("cpu",), dtypes=_NATIVE_CPU_DTYPES, needs_ext=True,
            prefer=_enough_images, description="C++ CPU kernel"),
    Backend("triton", devices=("cuda", "cpu"), dtypes=_CUDA_DTYPES, needs_triton=True,
            supports=_triton_supports, prefer=_triton_prefer,
            description="Triton implicit GEMM"),
    Backend("vendor", devices=("cuda",), description="cuDNN convolution_backward"),
    Backend("reference", description="aten convolution_backward"),
], key=lambda grad_out, input, *rest: input)


def _backward_args(grad_out, input, weight, saved, stride, padding, dilation, groups, *rest):
    """The backward op's arguments in the forward's order, for the shared eligibility rules."""
    return input, weight, None, stride, padding, dilation, groups


# ---------------------------------------------------------------------------------------------
# registered ops
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("shallowkern::wide_conv2d", mutates_args=())
def wide_conv2d_op(input: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int],
                   padding: list[int], dilation: list[int], groups: int, relu: bool, pool: int,
                   return_indices: bool) -> tuple[Tensor, Tensor]:
    """Fused conv + bias + [ReLU] + [2x2 max-pool]. Returns (out, uint8 window indices or empty).

    Validates its arguments (it is public API); the kernel is chosen by ``FORWARD``.
    """
    check_args(input, weight, bias, stride, padding, dilation, groups, pool)
    choice = FORWARD.select(input, weight, bias, stride, padding, dilation, groups)
    return _run_forward(choice.backend, input, weight, bias, stride, padding, dilation, groups,
                        relu, pool, return_indices)


def _run_forward(backend, input, weight, bias, stride, padding, dilation, groups, relu, pool,
                 return_indices):
    if backend == "native":
        return torch.ops.shallowkern._wide_conv2d_native(
            input, weight, bias, stride, padding, dilation, groups, relu, pool, return_indices)
    if backend == "triton":
        return _triton().forward(input, weight, bias, stride, padding, dilation, relu, pool,
                                 return_indices)
    return wide_conv2d_reference(input, weight, bias, stride, padding, dilation, groups, relu,
                                 pool, return_indices)


@wide_conv2d_op.register_fake
def _wide_conv2d_fake(input, weight, bias, stride, padding, dilation, groups, relu, pool,
                      return_indices):
    _, _, ph, pw = check_args(input, weight, bias, stride, padding, dilation, groups, pool)
    shape = (input.shape[0], out_channels(input, weight), ph, pw)
    fmt = out_memory_format(input)
    out = input.new_empty(shape).contiguous(memory_format=fmt)
    if pool == 2 and return_indices:
        return out, input.new_empty(shape, dtype=torch.uint8).contiguous(memory_format=fmt)
    return out, input.new_empty(0, dtype=torch.uint8)


@torch.library.custom_op("shallowkern::wide_conv2d_backward", mutates_args=())
def wide_conv2d_backward_op(grad_out: Tensor, input: Tensor, weight: Tensor, saved: Tensor,
                            stride: list[int], padding: list[int], dilation: list[int], groups: int,
                            relu: bool, pool: int, output_mask: list[bool], backend: str = ""
                            ) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of wide_conv2d w.r.t. (input, weight, bias); masked-off ones are empty.

    ``backend``: the forward's choice (autograd passes it), honoured where eligible; "" = choose.
    """
    _check_backward_args(grad_out, input, weight, saved, stride, padding, dilation, groups, relu,
                         pool, output_mask)
    choice = BACKWARD.select(grad_out, input, weight, saved, stride, padding, dilation, groups,
                             backend=backend or None)
    if choice.backend == "native":
        return torch.ops.shallowkern._wide_conv2d_native_backward(
            grad_out, input, weight, saved, stride, padding, dilation, groups, relu, pool,
            output_mask)
    if choice.backend == "triton":
        from ..triton import wide_conv2d_bwd

        return wide_conv2d_bwd.backward(grad_out, input, weight, saved, stride, padding, dilation,
                                        relu, pool, output_mask)
    return wide_conv2d_backward_reference(grad_out, input, weight, saved, stride, padding,
                                          dilation, groups, relu, pool, output_mask)


@wide_conv2d_backward_op.register_fake
def _wide_conv2d_backward_fake(grad_out, input, weight, saved, stride, padding, dilation, groups,
                               relu, pool, output_mask, backend=""):
    _check_backward_args(grad_out, input, weight, saved, stride, padding, dilation, groups, relu,
                         pool, output_mask)
    gi = input.new_empty(input.shape).contiguous(memory_format=out_memory_format(input))
    return (gi if output_mask[0] else input.new_empty(0),
            weight.new_empty(weight.shape) if output_mask[1] else input.new_empty(0),
            weight.new_empty(weight.shape[0]) if output_mask[2] else input.new_empty(0))


def _saved(input, out, idx, relu: bool, pool: int) -> Tensor:
    """What the backward kernels read: pool 2 the window indices, else the output if ReLU."""
    return idx if pool == 2 else (out if relu else input.new_empty(0))


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, relu, pool, return_indices = inputs
    out, idx = output
    ctx.save_for_backward(input, weight, _saved(input, out, idx, relu, pool), bias)
    ctx.set_materialize_grads(False)  # the uint8 indices output never gets a gradient
    ctx.params = (stride, padding, dilation, groups, relu, pool)
    ctx.has_bias = bias is not None
    ctx.missing_indices = pool == 2 and not return_indices
    # the forward's choice, carried to the backward (autograd may run it on another thread,
    # where a thread-local use_backend would not reach)
    last = FORWARD.choose(input, weight, bias, stride, padding, dilation, groups)
    ctx.backend = last.backend


def _grads(ctx, grad_out, kernel) -> tuple:
    """(grad input, grad weight, grad bias), None where not needed: the op's autograd formula,
    shared by the public op and the functional's fast path. ``kernel(grad_out, input, weight,
    saved, stride, padding, dilation, groups, relu, pool, mask)`` runs the backward."""
    input, weight, saved, bias = ctx.saved_tensors
    ng = ctx.needs_input_grad
    mask = [ng[0], ng[1], ctx.has_bias and ng[2]]
    if torch.is_grad_enabled():
        # create_graph=True (double backward): the reference composition, differentiable again
        bias = bias if ctx.has_bias else None
        out = wide_conv2d_composite(input, weight, bias, *ctx.params)
        wrt = [t for t, m in zip((input, weight, bias), mask) if m]
        grads = iter(torch.autograd.grad(out, wrt, grad_out, create_graph=True))
        return tuple(next(grads) if m else None for m in mask)
    gi, gw, gb = kernel(grad_out.contiguous(memory_format=out_memory_format(input)), input, weight,
                        saved, *ctx.params, mask)
    return gi if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None


def _backward(ctx, grad_out, _grad_idx):
    if grad_out is None:  # only the indices were used downstream
        return (None,) * 10
    if ctx.missing_indices and not torch.is_grad_enabled():
        raise RuntimeError("wide_conv2d: backward through pool=2 needs return_indices=True in the "
                           "forward (the functional shallowkern.ops.wide_conv2d sets it for you)")
    return _grads(ctx, grad_out, lambda *a: wide_conv2d_backward_op(*a, ctx.backend)) + (None,) * 7


wide_conv2d_op.register_autograd(_backward, setup_context=_setup_context)
register_autocast("shallowkern::wide_conv2d")


# ---------------------------------------------------------------------------------------------
# FLOP formulas (shallowkern.flops; bias, ReLU and pooling are not counted, as aten's are not)
# ---------------------------------------------------------------------------------------------
@register_flop_formula(torch.ops.shallowkern.wide_conv2d)
def _wide_conv2d_flops(input_shape, weight_shape, bias_shape, stride, padding, dilation, *args,
                       out_shape=None, **kwargs) -> int:
    return _flops.conv2d_flops(input_shape, weight_shape, stride, padding, dilation)


@register_flop_formula(torch.ops.shallowkern.wide_conv2d_backward)
def _wide_conv2d_backward_flops(grad_shape, input_shape, weight_shape, saved_shape, stride,
                                padding, dilation, groups, relu, pool, output_mask, *args,
                                out_shape=None, **kwargs) -> int:
    return _flops.conv2d_backward_flops(input_shape, weight_shape, stride, padding, dilation,
                                        output_mask)


# ---------------------------------------------------------------------------------------------
# functional
# ---------------------------------------------------------------------------------------------
_NATIVE_CHOICE = Choice("native", FORWARD.backends[0].description)
_NATIVE_BACKWARD_CHOICE = Choice("native", BACKWARD.backends[0].description)


def _fast_path(input) -> bool:
    """True where a call may skip the public op for the C++ kernels: a plain eager CPU call
    (``plain_eager_cpu``) of a 4-D input where FORWARD would choose native (``_enough_images``;
    a test keeps the two equal)."""
    return (plain_eager_cpu(input, _NATIVE_CPU_DTYPES) and input.dim() == 4 and _ext.available()
            and not 0 < input.shape[0] < torch.get_num_threads())


def _native_backward(*args):
    record("wide_conv2d_backward", _NATIVE_BACKWARD_CHOICE)
    return torch.ops.shallowkern._wide_conv2d_native_backward(*args)


class _NativeFn(torch.autograd.Function):
    """Training calls on the fast path: the C++ forward and backward kernels with the op's
    autograd formula (``_grads``), without the public ops' dispatch."""

    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, dilation, groups, relu, pool):
        out, idx = torch.ops.shallowkern._wide_conv2d_native(
            input, weight, bias, stride, padding, dilation, groups, relu, pool, pool == 2)
        ctx.save_for_backward(input, weight, _saved(input, out, idx, relu, pool), bias)
        ctx.params = (stride, padding, dilation, groups, relu, pool)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return _grads(ctx, grad_out, _native_backward) + (None,) * 6


def wide_conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                dilation=1, groups: int = 1, activation: str | None = None,
                pool: int | None = None) -> Tensor:
    """Fused ``max_pool2d(act(conv2d(input, weight, bias, ...)), 2)``.

    Args:
        input: (N, C, H, W), float32/float16/bfloat16/float64, NCHW or channels_last.
        weight: (K, C/groups, R, S), same dtype and device. bias: (K,) or None.
        stride, padding, dilation: int or pair (zero padding; use WideConv2d for other modes).
        activation: None or "relu". pool: None (or 1) or 2 (2x2 window, stride 2, floor mode).
    Returns:
        (N, K, OH//p, OW//p) in the input's dtype and memory format. Under ``torch.autocast``
        the inputs are cast to the region's dtype first, as for nn.Conv2d. Under ``torch.func``
        transforms and forward-mode AD the aten composition runs (exact derivatives).
    """
    stride, padding, dilation = (pair(stride, "stride", "wide_conv2d"),
                                 pair(padding, "padding", "wide_conv2d"),
                                 pair(dilation, "dilation", "wide_conv2d"))
    if activation not in (None, "relu"):
        raise ValueError(f"wide_conv2d: activation must be None or 'relu', got {activation!r}")
    pool = 1 if pool is None else pool
    if needs_composite(input, weight, bias):
        check_args(input, weight, bias, stride, padding, dilation, groups, pool)
        return wide_conv2d_composite(input, weight, bias, stride, padding, dilation, groups,
                                     activation == "relu", pool)
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in (input, weight, bias))
    if _fast_path(input):
        # FORWARD's first rule, checked in C calls only: the public op is a Python custom op
        # whose dispatch, checks and backend choice cost 40-130 us a call here (measured against
        # the native op: ~25 % of a batch-100 conv at d1 = 4); the C++ op validates everything
        record("wide_conv2d", _NATIVE_CHOICE)
        try:
            if needs_grad:
                return _NativeFn.apply(input, weight, bias, stride, padding, dilation, groups,
                                       activation == "relu", pool)
            return torch.ops.shallowkern._wide_conv2d_native(
                input, weight, bias, stride, padding, dilation, groups, activation == "relu",
                pool, False)[0]
        except (RuntimeError, TypeError, ValueError, IndexError):
            check_args(input, weight, bias, stride, padding, dilation, groups, pool)  # name it
            raise
    out, _ = wide_conv2d_op(input, weight, bias, stride, padding, dilation, groups,
                            activation == "relu", pool, pool == 2 and needs_grad)
    return out
