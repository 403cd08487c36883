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

Layers (CONVENTIONS.md §2): the pure-PyTorch reference below is the CPU fallback, the test oracle
and the benchmark baseline; ``shallowkern::wide_conv2d`` / ``wide_conv2d_backward`` are
registered custom ops with a fake, autograd and FLOP formulas; per device they run the C++ CPU
kernel (csrc/cpu/wide_conv2d.cpp), the CUDA kernel for small C_in (csrc/cuda/wide_conv2d.cu),
the Triton kernels (shallowkern/triton/wide_conv2d*.py), or the vendor op (cuDNN) where the
inputs are not eligible. ``shallowkern.ops.last_backend("wide_conv2d")`` says which ran.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .. import _ext
from ._backend import Choice, forced, record

NO_GRAD = 4  # idx value for windows that the ReLU zeroed: no gradient flows
_NATIVE_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The CUDA C++ kernel is a direct convolution for the first layer (weights in shared memory);
# above this C_in the implicit-GEMM Triton kernel wins.
CUDA_SMALL_CIN = 4


# ---------------------------------------------------------------------------------------------
# shapes and checks
# ---------------------------------------------------------------------------------------------
def conv_out_hw(h: int, w: int, weight_hw: Sequence[int], stride, padding, dilation) -> tuple[int, int]:
    r, s = weight_hw
    oh = (h + 2 * padding[0] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    return oh, ow


def out_memory_format(x: Tensor) -> torch.memory_format:
    """Outputs follow the input's layout, as cuDNN does: channels_last in, channels_last out."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _pair(v, name: str) -> list[int]:
    if isinstance(v, int):
        v = (v, v)
    v = list(v)
    if len(v) != 2 or not all(isinstance(e, int) for e in v):
        raise ValueError(f"wide_conv2d: {name} must be an int or a pair of ints, got {v!r}")
    return v


def check_args(input: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation,
               groups: int, pool: int) -> tuple[int, int, int, int]:
    """Validate a call; returns (OH, OW, PH, PW): conv output and pooled output sizes."""
    if not isinstance(input, Tensor) or input.dim() != 4:
        raise ValueError(f"wide_conv2d: input must be a 4-D (N, C, H, W) tensor, got "
                         f"{tuple(input.shape) if isinstance(input, Tensor) else type(input)}")
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise ValueError("wide_conv2d: weight must be a 4-D (K, C/groups, R, S) tensor, got "
                         f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight)}")
    if not input.is_floating_point():
        raise TypeError(f"wide_conv2d: input must be a floating-point tensor, got {input.dtype}")
    if weight.dtype != input.dtype:
        raise TypeError(f"wide_conv2d: weight dtype {weight.dtype} != input dtype {input.dtype}")
    if weight.device != input.device:
        raise ValueError(f"wide_conv2d: weight is on {weight.device}, input on {input.device}")
    if groups < 1 or input.shape[1] % groups or weight.shape[0] % groups:
        raise ValueError(f"wide_conv2d: groups={groups} must divide in_channels={input.shape[1]} "
                         f"and out_channels={weight.shape[0]}")
    if weight.shape[1] * groups != input.shape[1]:
        raise ValueError(f"wide_conv2d: weight has {weight.shape[1]} input channels per group but "
                         f"input has {input.shape[1]} channels and groups={groups}")
    if bias is not None:
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"wide_conv2d: bias must have shape ({weight.shape[0]},), "
                             f"got {tuple(bias.shape)}")
        if bias.dtype != input.dtype or bias.device != input.device:
            raise TypeError(f"wide_conv2d: bias must be {input.dtype} on {input.device}, got "
                            f"{bias.dtype} on {bias.device}")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"wide_conv2d: need stride >= 1, dilation >= 1, padding >= 0; got "
                         f"stride={stride}, dilation={dilation}, padding={padding}")
    if pool not in (1, 2):
        raise ValueError(f"wide_conv2d: pool must be None/1 (no pooling) or 2, got {pool}")
    oh, ow = conv_out_hw(input.shape[2], input.shape[3], weight.shape[2:], stride, padding, dilation)
    if oh < 1 or ow < 1:
        raise ValueError(f"wide_conv2d: the {weight.shape[2]}x{weight.shape[3]} kernel does not fit "
                         f"the padded {input.shape[2]}x{input.shape[3]} input (output {oh}x{ow})")
    if pool == 2 and (oh < 2 or ow < 2):
        raise ValueError(f"wide_conv2d: pool=2 needs a conv output of at least 2x2, got {oh}x{ow}")
    return oh, ow, oh // pool, ow // pool


# ---------------------------------------------------------------------------------------------
# reference (CPU fallback, test oracle, benchmark baseline)
# ---------------------------------------------------------------------------------------------
def _pool_indices(out: Tensor, flat_idx: Tensor, ow: int, relu: bool) -> Tensor:
    """max_pool2d's flat indices -> window position 2*di+dj (uint8), NO_GRAD where ReLU zeroed."""
    pos = ((flat_idx // ow) % 2) * 2 + (flat_idx % ow) % 2
    if relu:
        pos = torch.where(out <= 0, NO_GRAD, pos)
    return pos.to(torch.uint8)


def wide_conv2d_reference(input: Tensor, weight: Tensor, bias: Tensor | None, stride, padding,
                          dilation, groups: int, relu: bool, pool: int, return_indices: bool
                          ) -> tuple[Tensor, Tensor]:
    """conv2d -> [relu] -> [max_pool2d(2)] in aten ops; returns (out, indices) as the op does."""
    y = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    if relu:
        y = torch.relu(y)
    fmt = out_memory_format(input)
    if pool == 1:
        return y.contiguous(memory_format=fmt), input.new_empty(0, dtype=torch.uint8)
    out, flat = F.max_pool2d(y, 2, 2, return_indices=True)
    out = out.contiguous(memory_format=fmt)
    if not return_indices:
        return out, input.new_empty(0, dtype=torch.uint8)
    return out, _pool_indices(out, flat, y.shape[3], relu).contiguous(memory_format=fmt)


def unpool_grad(grad_out: Tensor, idx: Tensor, oh: int, ow: int) -> Tensor:
    """Scatter the pooled gradient to the conv output (N, K, OH, OW) through the 2x2 indices."""
    n, k, ph, pw = grad_out.shape
    onehot = idx.long().unsqueeze(-1) == torch.arange(4, device=idx.device)  # NO_GRAD -> all False
    # select, not multiply: a non-finite gradient must not leak into the other window positions
    gy = torch.where(onehot, grad_out.unsqueeze(-1), 0).view(n, k, ph, pw, 2, 2)
    gy = gy.permute(0, 1, 2, 4, 3, 5).reshape(n, k, 2 * ph, 2 * pw)
    return F.pad(gy, (0, ow - 2 * pw, 0, oh - 2 * ph))


def wide_conv2d_backward_reference(grad_out: Tensor, input: Tensor, weight: Tensor, saved: Tensor,
                                   stride, padding, dilation, groups: int, relu: bool, pool: int,
                                   output_mask: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
    """Unpool/ReLU-mask the gradient, then aten's convolution_backward."""
    oh, ow = conv_out_hw(input.shape[2], input.shape[3], weight.shape[2:], stride, padding, dilation)
    if pool == 2:
        gy = unpool_grad(grad_out, saved, oh, ow)
    elif relu:
        gy = torch.where(saved > 0, grad_out, torch.zeros_like(grad_out))
    else:
        gy = grad_out
    gi, gw, gb = torch.ops.aten.convolution_backward(
        gy, input, weight, [weight.shape[0]], stride, padding, dilation, False, [0, 0], groups,
        list(output_mask))
    gi = gi.contiguous(memory_format=out_memory_format(input)) if output_mask[0] else None
    gw = gw.contiguous() if output_mask[1] else None
    # custom ops may not return aliased outputs: a fresh empty tensor for each masked-off grad
    return tuple(t if t is not None else input.new_empty(0) for t in (gi, gw, gb))


# ---------------------------------------------------------------------------------------------
# backend choice
# ---------------------------------------------------------------------------------------------
def _triton():
    try:
        from ..triton import wide_conv2d as tk
    except ImportError:  # triton missing on this platform
        return None
    return tk


def _native_cpu_or_small_batch(input: Tensor, want: str | None) -> Choice:
    # The C++ kernel parallelises over images: with fewer images than threads, oneDNN's
    # intra-image parallelism wins (measured 0.6-0.8x at N=1 on 2 threads).
    if want is None and 0 < input.shape[0] < torch.get_num_threads():
        return Choice("reference", f"batch {input.shape[0]} < {torch.get_num_threads()} threads")
    return Choice("native", "C++ CPU kernel")


def select_forward(input: Tensor, weight: Tensor, groups: int) -> Choice:
    """Which forward kernel runs for these inputs (no side effects)."""
    return _select(input, weight, groups, forward=True)


def select_backward(input: Tensor, weight: Tensor, groups: int) -> Choice:
    """Which backward kernel runs for these inputs (no side effects)."""
    return _select(input, weight, groups, forward=False)


def _select(input: Tensor, weight: Tensor, groups: int, forward: bool) -> Choice:
    want = forced()
    if want == "reference":
        return Choice("reference", "forced")
    dev = input.device.type
    if dev == "cpu":
        if not _ext.available():
            return Choice("reference", f"shallowkern._C not loaded ({_ext.load_error})")
        if input.dtype not in _NATIVE_CPU_DTYPES:
            return Choice("reference", f"C++ CPU kernel has no {input.dtype}")
        return _native_cpu_or_small_batch(input, want)
    if dev != "cuda":
        return Choice("reference", f"no kernel for device {dev}")
    if want == "vendor":
        return Choice("vendor", "forced")
    if input.dtype not in _CUDA_DTYPES:
        return Choice("vendor", f"no CUDA kernel for {input.dtype}")
    if groups != 1:
        return Choice("vendor", "grouped convolution")
    # The CUDA direct kernel (forward only) is exact fp32 FMA: conv1 is FMA-bound there (~141
    # FLOP/B), so where tensor cores are allowed (fp16/bf16, or fp32 with TF32 on) Triton runs.
    if (forward and want in (None, "native") and _ext.has_cuda_kernels()
            and input.shape[1] <= CUDA_SMALL_CIN and input.dtype == torch.float32
            and not torch.backends.cudnn.allow_tf32
            and out_memory_format(input) == torch.contiguous_format):
        return Choice("native", f"CUDA direct kernel (fp32, TF32 off, C_in={input.shape[1]} <= "
                                f"{CUDA_SMALL_CIN})")
    tk = _triton()
    if tk is None:
        return Choice("vendor", "triton not importable")
    reason = tk.supports(input, weight, groups)
    return Choice("vendor", reason) if reason else Choice("triton", "Triton implicit GEMM")


# ---------------------------------------------------------------------------------------------
# registered ops
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("shallowkern::wide_conv2d", mutates_args=())
def wide_conv2d_op(input: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int],
                   padding: list[int], dilation: list[int], groups: int, relu: bool, pool: int,
                   return_indices: bool) -> tuple[Tensor, Tensor]:
    """Fused conv + bias + [ReLU] + [2x2 max-pool]. Returns (out, uint8 window indices or empty).

    The kernel is chosen per call by ``select_forward`` (device, dtype, layout, extension);
    the native op then dispatches to its CPU or CUDA implementation.
    """
    choice = record("wide_conv2d", select_forward(input, weight, groups))
    if choice.backend == "native":
        return torch.ops.shallowkern._wide_conv2d_native(
            input, weight, bias, stride, padding, dilation, groups, relu, pool, return_indices)
    if choice.backend == "triton":
        return _triton().forward(input, weight, bias, stride, padding, dilation, relu, pool,
                                 return_indices)
    return wide_conv2d_reference(input, weight, bias, stride, padding, dilation, groups, relu,
                                 pool, return_indices)


@wide_conv2d_op.register_fake
def _wide_conv2d_fake(input, weight, bias, stride, padding, dilation, groups, relu, pool,
                      return_indices):
    oh, ow = conv_out_hw(input.shape[2], input.shape[3], weight.shape[2:], stride, padding, dilation)
    shape = (input.shape[0], weight.shape[0], oh // pool, ow // pool)
    fmt = out_memory_format(input)
    out = input.new_empty(shape).contiguous(memory_format=fmt)
    if pool == 2 and return_indices:
        return out, input.new_empty(shape, dtype=torch.uint8).contiguous(memory_format=fmt)
    return out, input.new_empty(0, dtype=torch.uint8)


@torch.library.custom_op("shallowkern::wide_conv2d_backward", mutates_args=())
def wide_conv2d_backward_op(grad_out: Tensor, input: Tensor, weight: Tensor, saved: Tensor,
                            stride: list[int], padding: list[int], dilation: list[int], groups: int,
                            relu: bool, pool: int, output_mask: list[bool]
                            ) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of wide_conv2d w.r.t. (input, weight, bias); masked-off ones are empty."""
    choice = record("wide_conv2d_backward", select_backward(input, weight, groups))
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
                               relu, pool, output_mask):
    gi = input.new_empty(input.shape).contiguous(memory_format=out_memory_format(input))
    return (gi if output_mask[0] else input.new_empty(0),
            weight.new_empty(weight.shape) if output_mask[1] else input.new_empty(0),
            weight.new_empty(weight.shape[0]) if output_mask[2] else input.new_empty(0))


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, relu, pool, return_indices = inputs
    out, idx = output
    saved = idx if pool == 2 else (out if relu else input.new_empty(0))
    ctx.save_for_backward(input, weight, saved)
    ctx.set_materialize_grads(False)  # the uint8 indices output never gets a gradient
    ctx.params = (stride, padding, dilation, groups, relu, pool)
    ctx.has_bias = bias is not None
    ctx.missing_indices = pool == 2 and not return_indices


def _backward(ctx, grad_out, _grad_idx):
    if ctx.missing_indices:
        raise RuntimeError("wide_conv2d: backward through pool=2 needs return_indices=True in the "
                           "forward (the functional shallowkern.ops.wide_conv2d sets it for you)")
    input, weight, saved = ctx.saved_tensors
    if grad_out is None:  # only the indices were used downstream
        return (None,) * 10
    stride, padding, dilation, groups, relu, pool = ctx.params
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    gi, gw, gb = wide_conv2d_backward_op(grad_out.contiguous(memory_format=out_memory_format(input)),
                                         input, weight, saved, stride, padding, dilation, groups,
                                         relu, pool, mask)
    return (gi if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
            None, None, None, None, None, None, None)


wide_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# FLOP formulas (the convention of torch.utils.flop_counter: 2 FLOPs per multiply-add; bias,
# ReLU and pooling are not counted, as aten.convolution does not count its bias)
# ---------------------------------------------------------------------------------------------
def conv_flops(input_shape, weight_shape, stride, padding, dilation) -> int:
    n, _, h, w = input_shape
    k, cg, r, s = weight_shape
    oh, ow = conv_out_hw(h, w, (r, s), stride, padding, dilation)
    return 2 * n * oh * ow * k * cg * r * s


@register_flop_formula(torch.ops.shallowkern.wide_conv2d)
def _wide_conv2d_flops(input_shape, weight_shape, bias_shape, stride, padding, dilation, *args,
                       out_shape=None, **kwargs) -> int:
    return conv_flops(input_shape, weight_shape, stride, padding, dilation)


@register_flop_formula(torch.ops.shallowkern.wide_conv2d_backward)
def _wide_conv2d_backward_flops(grad_shape, input_shape, weight_shape, saved_shape, stride,
                                padding, dilation, groups, relu, pool, output_mask,
                                out_shape=None, **kwargs) -> int:
    return conv_flops(input_shape, weight_shape, stride, padding, dilation) * (
        int(output_mask[0]) + int(output_mask[1]))


# ---------------------------------------------------------------------------------------------
# functional
# ---------------------------------------------------------------------------------------------
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
        (N, K, OH//p, OW//p) in the input's dtype and memory format.
    """
    stride, padding, dilation = (_pair(stride, "stride"), _pair(padding, "padding"),
                                 _pair(dilation, "dilation"))
    if activation not in (None, "relu"):
        raise ValueError(f"wide_conv2d: activation must be None or 'relu', got {activation!r}")
    pool = 1 if pool is None else pool
    check_args(input, weight, bias, stride, padding, dilation, groups, pool)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, weight, bias))
    out, _ = wide_conv2d_op(input, weight, bias, stride, padding, dilation, groups,
                            activation == "relu", pool, pool == 2 and needs_grad)
    return out
