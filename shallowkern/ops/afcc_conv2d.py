"""afcc_conv2d: a convolution whose (out, in) kernel pairs are pruned by a fixed boolean mask.

Math (zero padding, cross-correlation as nn.Conv2d, groups = 1):

    y[n,k,p,q] = b[k] + sum_{c: M[k,c]} sum_{r,s} x[n, c, p*sh-ph+r*dh, q*sw-pw+s*dw] w[k,c,r,s]

i.e. ``conv2d(x, w * M[:, :, None, None], b)``. Backward:

    gx = conv_transpose2d(gy, w * M),   gw = M * corr(x, gy),   gb = sum_{n,p,q} gy

so the gradient of a masked weight is exactly zero (the layer never reads it).

Block-sparse execution. AFCC masks keep pairs whose label sets intersect; ordering the channels
by label (``block_plan``: the mask's rows and columns are reordered by identical patterns and
barycentres) makes them near-block-diagonal. The mask is tiled into (block_out x block_in)
blocks and only blocks holding a kept pair run: the C++ CPU kernel (csrc/cpu/afcc_conv2d.cpp:
im2col of the permuted input channels, one GEMM per kept block) and the Triton implicit-GEMM
kernels (shallowkern/triton/afcc_conv2d.py) never multiply a skipped block. Masked pairs inside
a kept block are multiplied by zero weights: that is the block padding the profiler reports as
*executed* minus *effective* FLOPs. When the kept blocks cover more than
``afcc_conv2d.max_executed`` of the dense work (poor fill after permutation), the op runs the
dense conv with the masked weight instead ("vendor"), visibly: ``shallowkern.ops.explain``,
``last_backend("afcc_conv2d")``.

Layers (CONVENTIONS.md §2): ``afcc_conv2d_reference`` is the fallback, the oracle and the
benchmark baseline; ``shallowkern::afcc_conv2d`` / ``afcc_conv2d_backward`` are registered ops
with fakes, autograd (the forward's backend is carried to the backward) and FLOP formulas
(dense via torch's counter; executed via ``profile.counter.register_executed_flop_formula``;
effective from the module's ``mask`` buffer, see ``shallowkern.profile.effective``).
"""

from __future__ import annotations

import collections
import sys
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from ._common import register_flop_formula  # deferred: flop_counter imports Triton

from .. import _knobs, flops
from ._backend import Backend, OpDispatch
from ._common import cast_for_autocast, needs_composite, register_autocast
from ._geometry import check_conv_geometry, pair

OP = "afcc_conv2d"
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

for _k in (
    _knobs.Knob("afcc_conv2d.max_executed", "SHALLOWKERN_AFCC_MAX_EXECUTED", 0.4, float,
                "dense fallback when kept blocks cover more than this share of the dense work",
                values="0..1"),
    _knobs.Knob("afcc_conv2d.block", "SHALLOWKERN_AFCC_BLOCK", None, int,
                "block size (out and in channels) of the block-sparse kernels (default: by cost)",
                values="`16`, `32`, `64`"),
):
    if _k.name not in _knobs.KNOBS:
        _knobs.register(_k)

# Relative cost per executed FLOP of a block size (GEMM efficiency of small tiles, call count).
# Measured on the 2-core Zen 4 VM with the C++ kernel (512->512, 4x4 maps, batch 32).
_BLOCK_COST = {"cpu": {64: 1.0, 32: 1.25, 16: 2.0}, "cuda": {64: 1.0, 32: 1.2, 16: 1.8}}


# ---------------------------------------------------------------------------------------------
# block plan: channel orderings and kept blocks of a mask
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockPlan:
    """How the block-sparse kernels run a mask (all index tensors int64 on the mask's device).

    out_perm (K,) / in_perm (C,): channel orders; row i of the permuted problem is channel
    out_perm[i]. Out-block ob covers permuted rows [row_bounds[ob], row_bounds[ob + 1]) and
    in-block cb permuted columns [col_bounds[cb], col_bounds[cb + 1]). ``block_out`` /
    ``block_in`` is the largest block (the tile of the Triton kernels, whose plans have fixed
    sizes); CPU plans may follow the mask's groups of identical rows and columns (``variable``).
    Kept blocks in CSR: row_ptr (nOB + 1,), col_idx (nnzb,); in CSC (for the input gradient):
    col_ptr (nCB + 1,), row_idx (nnzb,), csc_to_csr (nnzb,).
    """

    block_out: int
    block_in: int
    variable: bool
    out_perm: Tensor
    in_perm: Tensor
    row_bounds: Tensor
    col_bounds: Tensor
    row_ptr: Tensor
    col_idx: Tensor
    col_ptr: Tensor
    row_idx: Tensor
    csc_to_csr: Tensor
    kept_pairs: int
    executed_pairs: int  # pairs inside kept blocks
    total_pairs: int

    @property
    def nnzb(self) -> int:
        return int(self.col_idx.numel())

    @property
    def executed_fraction(self) -> float:
        return self.executed_pairs / max(self.total_pairs, 1)

    @property
    def fill(self) -> float:
        """Kept pairs / pairs inside kept blocks (1.0 = no block padding)."""
        return self.kept_pairs / max(self.executed_pairs, 1)

    def describe(self) -> str:
        size = ("variable blocks <= %d" % self.block_out if self.variable
                else f"{self.block_out}x{self.block_in} blocks")
        return (f"{self.nnzb} kept {size}, executed {self.executed_fraction:.0%} of dense, "
                f"fill {self.fill:.0%}")


def channel_order(mask: Tensor, iterations: int = 3) -> tuple[Tensor, Tensor]:
    """(out_perm, in_perm) making a (K, C) bool mask near-block-diagonal.

    Identical rows are grouped (lexicographic order of unique rows), then rows and columns are
    alternately sorted by the barycentre of their kept entries (stable, so groups stay whole).
    """
    m = mask.detach().to("cpu", torch.bool)
    k, c = m.shape
    if k == 0 or c == 0:
        return torch.arange(k), torch.arange(c)
    _, group = torch.unique(m, dim=0, return_inverse=True)
    _, cgroup = torch.unique(m, dim=1, return_inverse=True)
    md = m.double()
    col_perm = torch.arange(c)
    row_perm = torch.argsort(group, stable=True)
    for _ in range(iterations):
        pos = torch.empty(k, dtype=torch.float64)
        pos[row_perm] = torch.arange(k, dtype=torch.float64)
        cnt = md.sum(0)
        col_key = torch.where(cnt > 0, (md * pos[:, None]).sum(0) / cnt.clamp_min(1), float(k))
        # identical columns stay together: the key of a column is its group's barycentre
        col_perm = torch.argsort(col_key + cgroup.double() * 1e-9, stable=True)
        cpos = torch.empty(c, dtype=torch.float64)
        cpos[col_perm] = torch.arange(c, dtype=torch.float64)
        rcnt = md.sum(1)
        bary = torch.where(rcnt > 0, (md * cpos[None, :]).sum(1) / rcnt.clamp_min(1), float(c))
        row_perm = torch.argsort(bary + group.double() * 1e-9, stable=True)
    return row_perm, col_perm


def _fixed_bounds(n: int, b: int) -> Tensor:
    return torch.clamp(torch.arange(0, -(-n // b) + 1) * b, max=n)


def _group_bounds(pm: Tensor, min_b: int, max_b: int) -> Tensor:
    """Block bounds along dim 0 of a permuted mask that follow runs of identical rows: a run of
    g >= min_b rows becomes ceil(g / max_b) near-equal blocks; short runs are merged with their
    neighbours up to min_b rows."""
    n = pm.shape[0]
    if n == 0:
        return torch.zeros(1, dtype=torch.int64)
    change = torch.ones(n, dtype=torch.bool)
    change[1:] = (pm[1:] != pm[:-1]).any(1)
    starts = change.nonzero().flatten().tolist() + [n]
    bounds, open_start = [0], None
    for a, b in zip(starts[:-1], starts[1:]):
        if b - a >= min_b:
            if open_start is not None and a - open_start > 0:
                bounds.append(a)
            open_start = None
            parts = -(-(b - a) // max_b)
            bounds += [a + ((b - a) * i) // parts for i in range(1, parts)] + [b]
        else:
            if open_start is None:
                open_start = bounds[-1]
            if b - open_start >= min_b:
                bounds.append(b)
                open_start = None
    if bounds[-1] != n:
        bounds.append(n)
    return torch.tensor(bounds, dtype=torch.int64)


def _plan_from(mask: Tensor, out_perm: Tensor, in_perm: Tensor, rb: Tensor, cb: Tensor,
               block: int, variable: bool) -> BlockPlan:
    k, c = mask.shape
    pm = mask.detach().cpu()[out_perm][:, in_perm]
    nob, ncb = rb.numel() - 1, cb.numel() - 1
    ob_of = torch.repeat_interleave(torch.arange(nob), rb.diff())
    cb_of = torch.repeat_interleave(torch.arange(ncb), cb.diff())
    blk = torch.zeros(nob, ncb, dtype=torch.bool)
    r, q = pm.nonzero(as_tuple=True)
    blk[ob_of[r], cb_of[q]] = True
    rows, cols = blk.nonzero(as_tuple=True)  # row-major: CSR order
    row_ptr = torch.zeros(nob + 1, dtype=torch.int64)
    row_ptr[1:] = torch.cumsum(blk.sum(1), 0)
    csc = torch.argsort(cols * nob + rows, stable=True)
    col_ptr = torch.zeros(ncb + 1, dtype=torch.int64)
    col_ptr[1:] = torch.cumsum(blk.sum(0), 0)
    executed = int((rb.diff()[rows] * cb.diff()[cols]).sum())
    big = int(max(rb.diff().max().item() if nob else 0, cb.diff().max().item() if ncb else 0))
    dev = mask.device
    t = lambda v: v.to(dev)  # noqa: E731
    return BlockPlan(block if not variable else max(big, 1), block if not variable else max(big, 1),
                     variable, t(out_perm), t(in_perm), t(rb), t(cb), t(row_ptr), t(cols),
                     t(col_ptr), t(rows[csc]), t(csc), int(r.numel()), executed, k * c)


def _cost(plan: BlockPlan, dev: str) -> float:
    """Modelled time: executed fraction x per-FLOP cost of the (mean) block size."""
    table = _BLOCK_COST.get(dev, _BLOCK_COST["cpu"])
    if plan.variable and plan.nnzb:
        sizes = (plan.row_bounds.diff()[plan.row_idx].double().mean().item(),
                 plan.col_bounds.diff()[plan.col_idx].double().mean().item())
        size = min(sizes)
    else:
        size = plan.block_out
    pts = sorted(table)
    size = min(max(size, pts[0]), pts[-1])
    for lo, hi in zip(pts[:-1], pts[1:]):
        if lo <= size <= hi:
            f = (size - lo) / (hi - lo)
            return plan.executed_fraction * (table[lo] * (1 - f) + table[hi] * f)
    return plan.executed_fraction * table[pts[-1]]


def block_plan(mask: Tensor, device_type: str | None = None, block: int | None = None) -> BlockPlan:
    """The block plan of a (K, C) bool mask, cached per mask tensor (and its version).

    ``block``: a fixed block size (16, 32 or 64; default: the ``afcc_conv2d.block`` knob).
    Otherwise the plan with the lowest modelled cost among fixed 64/32/16 blocks and, on the
    CPU, blocks that follow the mask's groups of identical rows/columns (16 to 64 channels).
    """
    dev = device_type or mask.device.type
    block = block or _knobs.get("afcc_conv2d.block")
    key = (id(mask), mask._version, tuple(mask.shape), str(mask.device), dev, block)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] is mask:
            _cache.move_to_end(key)
            return hit[1]
    if block is not None and block not in (16, 32, 64):
        raise ValueError(f"afcc_conv2d: block size must be 16, 32 or 64, got {block}")
    out_perm, in_perm = channel_order(mask)
    k, c = mask.shape
    cands = [_plan_from(mask, out_perm, in_perm, _fixed_bounds(k, b), _fixed_bounds(c, b), b,
                        False) for b in ((block,) if block else (64, 32, 16))]
    if dev == "cpu" and not block:
        pm = mask.detach().cpu()[out_perm][:, in_perm]
        cands.append(_plan_from(mask, out_perm, in_perm, _group_bounds(pm, 16, 64),
                                _group_bounds(pm.t(), 16, 64), 64, True))
    best = min(cands, key=lambda p: _cost(p, dev))
    with _cache_lock:
        _cache[key] = (mask, best)  # holding the mask keeps id(mask) from being reused
        while len(_cache) > 64:
            _cache.popitem(last=False)
    return best


_cache: "collections.OrderedDict[tuple, tuple[Tensor, BlockPlan]]" = collections.OrderedDict()
_cache_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------
# checks and reference
# ---------------------------------------------------------------------------------------------
def check_args(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None, stride,
               padding, dilation) -> tuple[int, int]:
    """Validate a call; returns (OH, OW)."""
    for name, t, dims in (("input", input, "(N, C, H, W)"), ("weight", weight, "(K, C, R, S)")):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"{OP}: {name} must be a 4-D {dims} tensor, got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"{OP}: input must be a floating-point tensor, got {input.dtype}")
    if weight.dtype != input.dtype:
        raise TypeError(f"{OP}: weight dtype {weight.dtype} != input dtype {input.dtype}")
    if weight.device != input.device:
        raise ValueError(f"{OP}: weight is on {weight.device}, input on {input.device}")
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
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.shape != (weight.shape[0],):
            raise ValueError(f"{OP}: bias must have shape ({weight.shape[0]},), got "
                             f"{tuple(bias.shape) if isinstance(bias, Tensor) else type(bias)}")
        if bias.dtype != input.dtype or bias.device != input.device:
            raise TypeError(f"{OP}: bias must be {input.dtype} on {input.device}, got "
                            f"{bias.dtype} on {bias.device}")
    return check_conv_geometry(OP, input.shape[2:], weight.shape[2:], stride, padding, dilation)


def masked_weight(weight: Tensor, mask: Tensor) -> Tensor:
    """weight * mask as a select (a NaN in a pruned kernel stays out of the result)."""
    return torch.where(mask[:, :, None, None], weight, torch.zeros((), dtype=weight.dtype,
                                                                   device=weight.device))


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
def _fill_ok(input, weight, mask, *rest) -> str | None:
    if mask.numel() == 0 or is_fake(mask):
        return None
    plan = block_plan(mask)
    limit = _knobs.get("afcc_conv2d.max_executed")
    if plan.executed_fraction > limit:
        return (f"block fill after permutation is poor: {plan.describe()} (> {limit:.0%}; kept "
                f"pairs {plan.kept_pairs / max(plan.total_pairs, 1):.0%}): dense conv with the "
                "masked weight is faster")
    return None


def _native_supports(*args) -> str | None:
    if not hasattr(torch.ops.shallowkern, "_afcc_conv2d_native"):
        return "shallowkern._C was built without the afcc_conv2d kernel (rebuild it)"
    return None


def _triton_prefer(input, weight, mask, *rest) -> str | None:
    if input.device.type == "cpu":
        return "Triton on CPU runs only in the interpreter (tests force it with use_backend)"
    return _fill_ok(input, weight, mask)


def _triton_supports(input, weight, *rest) -> str | None:
    from ..triton import afcc_conv2d as tk

    return tk.supports(input, weight)


def _backends() -> list[Backend]:
    return [
    Backend("native", devices=("cpu",), dtypes=_CPU_DTYPES, needs_ext=True,
            supports=_native_supports, prefer=_fill_ok,
            description="C++ CPU block-sparse kernel"),
    Backend("triton", devices=("cuda", "cpu"), dtypes=_CUDA_DTYPES, needs_triton=True,
            supports=_triton_supports, prefer=_triton_prefer,
            description="Triton block-sparse implicit GEMM"),
    Backend("vendor", description="dense conv with the masked weight (oneDNN/cuDNN)"),
    Backend("reference", description="pure-PyTorch reference"),
    ]


DISPATCH = OpDispatch(OP, _backends())
BACKWARD = OpDispatch(OP + "_backward", _backends())


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
    choice = DISPATCH.select(input, weight, mask, bias)
    return _forward(choice.backend, input, weight, mask, bias, stride, padding, dilation)


def _forward(backend, input, weight, mask, bias, stride, padding, dilation) -> Tensor:
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
    choice = BACKWARD.select(input, weight, mask, None, backend=backend or None)
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
    ctx.backend = "" if is_fake(mask) else DISPATCH.choose(input, weight, mask, bias).backend


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
        choice = DISPATCH.choose(input, weight, mask, bias)
        return flops.masked_conv2d_flops(input.shape, weight.shape, stride, padding, dilation,
                                         executed_pairs(mask, choice.backend))

    @register_executed_flop_formula(torch.ops.shallowkern.afcc_conv2d_backward)
    def _bwd(grad_out, input, weight, mask, stride, padding, dilation, output_mask, backend,
             out_val=None, **kw) -> int:
        choice = BACKWARD.choose(input, weight, mask, None, backend=backend or None)
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
    stride, padding, dilation = (pair(stride, "stride", OP), pair(padding, "padding", OP),
                                 pair(dilation, "dilation", OP))
    if isinstance(input, Tensor):  # under torch.autocast: the region's dtype, as F.conv2d
        input, weight, bias = cast_for_autocast(input.device.type, input, weight, bias)
    check_args(input, weight, mask, bias, stride, padding, dilation)
    if needs_composite(input, weight, bias):
        return afcc_conv2d_reference(input, weight, mask, bias, stride, padding, dilation)
    return afcc_conv2d_op(input, weight, mask, bias, stride, padding, dilation)
