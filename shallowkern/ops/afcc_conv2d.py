"""afcc_conv2d: a convolution whose (out, in) kernel pairs are pruned by a fixed boolean mask.

Math (zero padding, cross-correlation as nn.Conv2d, groups = 1):

    y[n,k,p,q] = b[k] + sum_{c: M[k,c]} sum_{r,s} x[n, c, p*sh-ph+r*dh, q*sw-pw+s*dw] w[k,c,r,s]

i.e. ``conv2d(x, w * M[:, :, None, None], b)``. Backward:

    gx = conv_transpose2d(gy, w * M),   gw = M * corr(x, gy),   gb = sum_{n,p,q} gy

so the gradient of a masked weight is exactly zero (the layer never reads it).

Block-sparse execution (docs/afcc.md): ``block_plan`` orders the channels so that AFCC masks
become near-block-diagonal and tiles the mask; only blocks holding a kept pair run (masked pairs
inside them multiply zero weights: *executed* minus *effective* FLOPs). CPU ("native"): oneDNN
sub-convs per group of kept blocks (``_afcc_subconv.py``) or the C++ kernel (im2col + GEMM,
csrc/cpu/afcc_conv2d.cpp), picked by a cost model measured here (``cpu_path``), or the dense
conv with the masked weight ("vendor") where faster; CUDA: the Triton kernels, dense above
``afcc_conv2d.max_executed``. Visible in ``shallowkern.ops.explain`` and ``last_backend``.

Layers (CONVENTIONS.md §2): ``afcc_conv2d_reference`` is the fallback, the oracle and the
benchmark baseline; ``shallowkern::afcc_conv2d`` / ``afcc_conv2d_backward`` are registered ops
with fakes, autograd (the forward's backend is carried to the backward) and FLOP formulas
(dense via torch's counter; executed via ``profile.counter.register_executed_flop_formula``;
effective from the module's ``mask`` buffer, see ``shallowkern.profile.effective``).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from ._common import register_flop_formula  # deferred: flop_counter imports Triton

from .. import _knobs, flops
from ._backend import Backend, OpDispatch, forced, record
from ._backend import last_backend as _last_choice
from ._common import cast_for_autocast, needs_composite, register_autocast
from . import _afcc_subconv as _subconv
from ._afcc_subconv import cpu_path, zero_pruned  # noqa: F401  (public here)
from . import _afcc_plan as _plan
from ._afcc_plan import BlockPlan, block_plan, channel_order  # noqa: F401  (re-exported)
from ._geometry import check_conv_geometry, check_conv_tensors, pair

OP = "afcc_conv2d"
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# checks and reference
# ---------------------------------------------------------------------------------------------
def check_args(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None, stride,
               padding, dilation) -> tuple[int, int]:
    """Validate a call; returns (OH, OW)."""
    check_conv_tensors(OP, input, weight, bias)
    if weight.shape[1] != input.shape[1]:
        raise ValueError(f"{OP}: weight has {weight.shape[1]} input channels, input has "
                         f"{input.shape[1]} (groups are not supported: use the mask)")
    if not isinstance(mask, Tensor):
        raise TypeError(f"{OP}: mask must be a bool tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{OP}: mask must be a bool tensor of shape (K, C), got {mask.dtype} "
                        "(convert a 0/1 mask with mask.bool())")
    if tuple(mask.shape) != tuple(weight.shape[:2]):
        raise ValueError(f"{OP}: mask shape {tuple(mask.shape)} does not match the weight's "
                         f"(out, in) = {tuple(weight.shape[:2])}")
    if mask.device != input.device:
        raise ValueError(f"{OP}: mask is on {mask.device}, input on {input.device}")
    return check_conv_geometry(OP, input.shape[2:], weight.shape[2:], stride, padding, dilation)


def masked_weight(weight: Tensor, mask: Tensor) -> Tensor:
    """weight * mask as a select (a NaN in a pruned kernel stays out of the result),
    differentiable (``torch.where`` under torch.compile, else the bitwise ``zero_pruned``)."""
    if torch.compiler.is_compiling() or _fake(weight):
        return torch.where(mask[:, :, None, None], weight, torch.zeros((), dtype=weight.dtype,
                                                                       device=weight.device))
    if torch.is_grad_enabled() and weight.requires_grad:
        return _subconv.ZeroPruned.apply(weight, mask)
    return _subconv.zero_pruned(weight, mask)


def afcc_conv2d_reference(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None,
                          stride, padding, dilation) -> Tensor:
    """``conv2d(input, weight * mask, bias)`` in aten ops (differentiable)."""
    return F.conv2d(input, masked_weight(weight, mask), bias, stride, padding, dilation)


def afcc_conv2d_backward_reference(grad_out, input, weight, mask, stride, padding, dilation,
                                   output_mask) -> tuple[Tensor, Tensor, Tensor]:
    gi, gw, gb = torch.ops.aten.convolution_backward(
        grad_out, input, masked_weight(weight, mask), [weight.shape[0]], stride, padding,
        dilation, False, [0, 0], 1, list(output_mask))
    gw = masked_weight(gw, mask) if output_mask[1] else None
    return tuple(t if t is not None else input.new_empty(0) for t in (gi, gw, gb))


# ---------------------------------------------------------------------------------------------
# backend choice
# ---------------------------------------------------------------------------------------------
def _fake(t) -> bool:
    return type(t) is not Tensor and is_fake(t)  # plain tensors: no subclass walk


def _fill_ok(input, weight, mask, bias=None, stride=(1, 1), padding=None, dilation=(1, 1),
             backward=False) -> str | None:
    if mask.numel() == 0 or _fake(mask) or _fake(input):
        return None
    plan = block_plan(mask)
    if input.device.type == "cpu":
        path, costs = cpu_path(input, weight, mask, stride, padding, dilation, backward)
        if path == "dense":
            return (f"block-sparse is slower here: {plan.describe()}; modelled one-thread "
                    f"times {_subconv.costs_text(costs)}: dense conv with the masked weight is "
                    "faster")
        return None
    limit = _knobs.get("afcc_conv2d.max_executed")
    if plan.executed_fraction > limit:
        return (f"block fill after permutation is poor: {plan.describe()} (> {limit:.0%}; kept "
                f"pairs {plan.kept_pairs / max(plan.total_pairs, 1):.0%}): dense conv with the "
                "masked weight is faster")
    return None


def _fill_ok_bwd(*args) -> str | None:
    return _fill_ok(*args, backward=True)


def _native_supports(*args) -> str | None:
    if not hasattr(torch.ops.shallowkern, "_afcc_conv2d_native"):
        return "shallowkern._C was built without the afcc_conv2d kernel (rebuild it)"
    return None


def _subconv_supports(input, weight, mask, bias=None, stride=(1, 1), padding=None,
                      dilation=(1, 1), backward=False) -> str | None:
    if mask.numel() == 0 or _fake(mask) or _fake(input):
        return "no mask values to plan from (traced)"
    path, costs = cpu_path(input, weight, mask, stride, padding, dilation, backward)
    if path == "gemm" or (path == "dense" and costs["gemm"] <= costs["subconv"]):
        return f"sub-convs model slower than the C++ GEMM kernel ({_subconv.costs_text(costs)})"
    return None


def _subconv_supports_bwd(*args) -> str | None:
    return _subconv_supports(*args, backward=True)


def _triton_prefer(input, weight, mask, *rest) -> str | None:
    if input.device.type == "cpu":
        return "Triton on CPU runs only in the interpreter (tests force it with use_backend)"
    return _fill_ok(input, weight, mask)


def _triton_supports(input, weight, *rest) -> str | None:
    from ..triton import afcc_conv2d as tk

    return tk.supports(input, weight)


def _backends(backward: bool = False) -> list[Backend]:
    # "native" is the CPU block-sparse backend with two paths (the first eligible one runs):
    # one oneDNN conv per group of kept blocks, or the C++ kernel (im2col + GEMM per run of
    # kept blocks); the cost model (cpu_path) picks, and falls back to the dense conv
    fill = _fill_ok_bwd if backward else _fill_ok
    return [
    Backend("native", devices=("cpu",), dtypes=_CPU_DTYPES,
            supports=_subconv_supports_bwd if backward else _subconv_supports, prefer=fill,
            description="block-sparse: one oneDNN conv per group of kept blocks (sub-convs)"),
    Backend("native", devices=("cpu",), dtypes=_CPU_DTYPES, needs_ext=True,
            supports=_native_supports, prefer=fill,
            description="block-sparse: C++ kernel (im2col + GEMM per run of kept blocks)"),
    Backend("triton", devices=("cuda", "cpu"), dtypes=_CUDA_DTYPES, needs_triton=True,
            supports=_triton_supports, prefer=_triton_prefer,
            description="Triton block-sparse implicit GEMM"),
    Backend("vendor", description="dense conv with the masked weight (oneDNN/cuDNN)"),
    Backend("reference", description="pure-PyTorch reference"),
    ]


def _dispatch_key(input, weight, mask, *rest) -> Tensor:
    # every choice (the op, its backward, explain, the executed-FLOP formulas) first drops the
    # mask's cached plans and paths if its values changed behind its version counter
    if isinstance(mask, Tensor) and not _fake(mask):
        _plan.refresh(mask)
    return input


DISPATCH = OpDispatch(OP, _backends(), key=_dispatch_key)
BACKWARD = OpDispatch(OP + "_backward", _backends(backward=True), key=_dispatch_key)


def _runs_subconv(*args, backward=False) -> bool:
    """Whether the native backend runs its sub-conv path (the same rule as its dispatch)."""
    return _subconv_supports(*args, backward=backward) is None or not hasattr(
        torch.ops.shallowkern, "_afcc_conv2d_native")


def _native_args(plan: BlockPlan):
    return (plan.out_perm, plan.in_perm, plan.row_bounds, plan.col_bounds, plan.row_ptr,
            plan.col_idx)


# ---------------------------------------------------------------------------------------------
# registered ops
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("shallowkern::afcc_conv2d", mutates_args=())
def afcc_conv2d_op(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None,
                   stride: list[int], padding: list[int], dilation: list[int]) -> Tensor:
    """conv2d(input, weight * mask, bias), block-sparse where the mask allows."""
    check_args(input, weight, mask, bias, stride, padding, dilation)
    choice = DISPATCH.select(input, weight, mask, bias, stride, padding, dilation)
    return _forward(choice.backend, input, weight, mask, bias, stride, padding, dilation)


def _forward(backend, input, weight, mask, bias, stride, padding, dilation) -> Tensor:
    if backend == "native" and _runs_subconv(input, weight, mask, None, stride, padding, dilation):
        return _subconv.forward(input, weight, mask, bias, block_plan(mask), stride, padding,
                                dilation, _subconv.out_hw(input, weight, stride, padding, dilation))
    if backend == "native":
        return torch.ops.shallowkern._afcc_conv2d_native(
            input.contiguous(), weight, mask, bias, *_native_args(block_plan(mask)), stride,
            padding, dilation)
    if backend == "triton":
        from ..triton import afcc_conv2d as tk

        return tk.forward(input, weight, mask, bias, block_plan(mask, "cuda"), stride, padding,
                          dilation)
    return afcc_conv2d_reference(input, weight, mask, bias, stride, padding, dilation).contiguous()


@afcc_conv2d_op.register_fake
def _afcc_conv2d_fake(input, weight, mask, bias, stride, padding, dilation):
    oh, ow = check_args(input, weight, mask, bias, stride, padding, dilation)
    return input.new_empty(input.shape[0], weight.shape[0], oh, ow)


@torch.library.custom_op("shallowkern::afcc_conv2d_backward", mutates_args=())
def afcc_conv2d_backward_op(grad_out: Tensor, input: Tensor, weight: Tensor, mask: Tensor,
                            stride: list[int], padding: list[int], dilation: list[int],
                            output_mask: list[bool], backend: str
                            ) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (input, weight, bias) of afcc_conv2d; masked-off ones are empty.
    ``backend``: the forward's choice (honoured when eligible)."""
    choice = BACKWARD.select(input, weight, mask, None, stride, padding, dilation,
                             backend=backend or None)
    if choice.backend == "native" and _runs_subconv(input, weight, mask, None, stride,
                                                    padding, dilation, backward=True):
        return _subconv.backward(grad_out, input, weight, mask, block_plan(mask), stride,
                                 padding, dilation, output_mask)
    if choice.backend == "native":
        return torch.ops.shallowkern._afcc_conv2d_native_backward(
            grad_out.contiguous(), input.contiguous(), weight, mask,
            *_native_args(block_plan(mask)), stride, padding, dilation, output_mask)
    if choice.backend == "triton":
        from ..triton import afcc_conv2d_bwd as tb

        return tb.backward(grad_out, input, weight, mask, block_plan(mask, "cuda"), stride,
                           padding, dilation, output_mask)
    gi, gw, gb = afcc_conv2d_backward_reference(grad_out, input, weight, mask, stride, padding,
                                                dilation, output_mask)
    return gi.contiguous(), gw.contiguous(), gb.contiguous()


@afcc_conv2d_backward_op.register_fake
def _afcc_conv2d_backward_fake(grad_out, input, weight, mask, stride, padding, dilation,
                               output_mask, backend):
    return (input.new_empty(input.shape) if output_mask[0] else input.new_empty(0),
            weight.new_empty(weight.shape) if output_mask[1] else input.new_empty(0),
            weight.new_empty(weight.shape[0]) if output_mask[2] else input.new_empty(0))


def _setup_context(ctx, inputs, output):
    input, weight, mask, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(input, weight, mask)
    ctx.params = (stride, padding, dilation)
    ctx.has_bias = bias is not None
    # the forward's choice, carried to the backward (autograd may run it on another thread,
    # where a thread-local use_backend would not reach). Traced (fake) masks have no values to
    # plan from: the backward then chooses at run time.
    # the forward just recorded its choice (same thread); choose again only if it did not
    last = _last_choice(OP)
    ctx.backend = "" if is_fake(mask) else (last.backend if last is not None else DISPATCH.choose(
        input, weight, mask, bias, stride, padding, dilation).backend)


def _backward(ctx, grad_out):
    input, weight, mask = ctx.saved_tensors
    stride, padding, dilation = ctx.params
    need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
            ctx.has_bias and ctx.needs_input_grad[3]]
    if torch.is_grad_enabled():
        # double backward (create_graph=True): aten's convolution_backward is differentiable
        gi, gw, gb = afcc_conv2d_backward_reference(grad_out, input, weight, mask, stride,
                                                    padding, dilation, need)
        return (gi if need[0] else None, gw if need[1] else None, None, gb if need[2] else None,
                None, None, None)
    gi, gw, gb = afcc_conv2d_backward_op(grad_out, input, weight, mask, stride, padding,
                                         dilation, need, ctx.backend)
    return (gi if need[0] else None, gw if need[1] else None, None, gb if need[2] else None,
            None, None, None)


afcc_conv2d_op.register_autograd(_backward, setup_context=_setup_context)
register_autocast("shallowkern::afcc_conv2d")


# ---------------------------------------------------------------------------------------------
# FLOP formulas: dense via torch's counter; executed (block padding included) for the profiler
# ---------------------------------------------------------------------------------------------
@register_flop_formula(torch.ops.shallowkern.afcc_conv2d)
def _afcc_conv2d_flops(input_shape, weight_shape, mask_shape, bias_shape, stride, padding,
                       dilation, out_shape=None, **kwargs) -> int:
    return flops.conv2d_flops(input_shape, weight_shape, stride, padding, dilation)


@register_flop_formula(torch.ops.shallowkern.afcc_conv2d_backward)
def _afcc_conv2d_backward_flops(grad_shape, input_shape, weight_shape, mask_shape, stride,
                                padding, dilation, output_mask, backend, out_shape=None,
                                **kwargs) -> int:
    return flops.conv2d_backward_flops(input_shape, weight_shape, stride, padding, dilation,
                                       output_mask)


def executed_pairs(mask: Tensor, backend: str) -> int:
    """Kernel pairs the chosen backend multiplies: pairs in kept blocks for the block-sparse
    kernels, all pairs for the dense fallbacks."""
    if backend in ("native", "triton") and mask.numel():
        return block_plan(mask, "cuda" if backend == "triton" else "cpu").executed_pairs
    return mask.numel()


_executed_registered: list[bool] = []


def register_executed_flops() -> None:
    """Register the executed-FLOP formulas with the profiler (idempotent). Done lazily (on the
    first AFCCConv2d, or at import when the profiler is already loaded) so that ``import
    shallowkern`` does not load the profiler."""
    if _executed_registered:
        return
    _executed_registered.append(True)
    from ..profile.counter import register_executed_flop_formula

    @register_executed_flop_formula(torch.ops.shallowkern.afcc_conv2d)
    def _fwd(input, weight, mask, bias, stride, padding, dilation, out_val=None, **kw) -> int:
        choice = DISPATCH.choose(input, weight, mask, bias, stride, padding, dilation)
        return flops.masked_conv2d_flops(input.shape, weight.shape, stride, padding, dilation,
                                         executed_pairs(mask, choice.backend))

    @register_executed_flop_formula(torch.ops.shallowkern.afcc_conv2d_backward)
    def _bwd(grad_out, input, weight, mask, stride, padding, dilation, output_mask, backend,
             out_val=None, **kw) -> int:
        choice = BACKWARD.choose(input, weight, mask, None, stride, padding, dilation,
                                 backend=backend or None)
        return flops.masked_conv2d_flops(input.shape, weight.shape, stride, padding, dilation,
                                         executed_pairs(mask, choice.backend)) * (
            int(bool(output_mask[0])) + int(bool(output_mask[1])))


if "shallowkern.profile.counter" in sys.modules:
    register_executed_flops()


# ---------------------------------------------------------------------------------------------
# functional
# ---------------------------------------------------------------------------------------------
def afcc_conv2d(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None = None,
                stride=1, padding=0, dilation=1) -> Tensor:
    """``conv2d(input, weight * mask[:, :, None, None], bias)`` skipping pruned kernel pairs.

    Args:
        input: (N, C, H, W); float32/float64 on CPU (C++ kernel), float32/float16/bfloat16 on
            CUDA (Triton); other dtypes run the dense fallback.
        weight: (K, C, R, S), same dtype and device. bias: (K,) or None.
        mask: (K, C) bool, True keeps the kernel pair (out k, in c).
        stride, padding, dilation: int or pair (zero padding).
    Returns:
        (N, K, OH, OW), contiguous. The gradient of a pruned weight is exactly zero.
    """
    fast = _subconv.dense_call(input, weight, mask, bias, stride, padding, dilation)
    if fast is not None:  # a repeat of a validated call that chose the dense conv
        record(OP, fast.choice)
        return F.conv2d(input, fast.masked_weight(weight), bias, stride, padding, dilation)
    given = (stride, padding, dilation)
    stride, padding, dilation = (pair(stride, "stride", OP), pair(padding, "padding", OP),
                                 pair(dilation, "dilation", OP))
    if isinstance(input, Tensor):  # under torch.autocast: the region's dtype, as F.conv2d
        input, weight, bias = cast_for_autocast(input.device.type, input, weight, bias)
    check_args(input, weight, mask, bias, stride, padding, dilation)
    if needs_composite(input, weight, bias):
        return afcc_conv2d_reference(input, weight, mask, bias, stride, padding, dilation)
    if (input.device.type == "cpu" and forced() is None and not torch.compiler.is_compiling()
            and not _fake(mask) and not _fake(input)):
        # an automatic dense fallback runs the aten composition directly (eager's graph: one
        # mask node and the conv; the custom op costs ~0.2 ms forward, ~0.8 ms with backward on
        # a 0.6 ms 64-channel layer), and repeat calls skip the checks and the choice
        choice = DISPATCH.choose(input, weight, mask, bias, stride, padding, dilation)
        if choice.backend == "vendor":
            record(OP, choice)
            call = _subconv.remember_dense(input, weight, mask, bias, *given, choice)
            return F.conv2d(input, call.masked_weight(weight), bias, stride, padding, dilation)
    return afcc_conv2d_op(input, weight, mask, bias, stride, padding, dilation)

