"""The CPU "sub-conv" path of afcc_conv2d and the CPU cost model picking among the paths.

A block plan (``_afcc_plan.block_plan``) groups the permuted channels into blocks. Out-blocks
whose kept in-blocks are the same set form one *sub-conv*: rows R (out channels) x cols S (in
channels), run as one dense oneDNN convolution on the gathered channels:

    y[:, R] = conv2d(x[:, S], (w * M)[R][:, S], b[R])                      (forward)
    gx[:, S] += conv_transpose(gy[:, R], (w * M)[R][:, S])
    gw[R, S] = M[R, S] * corr(x[:, S], gy[:, R])

For a label-clustered mask (block-diagonal after ordering) this is a grouped convolution with
one group per label: the executed work equals the C++ GEMM kernel's (pairs inside kept blocks),
but every multiply runs in oneDNN's direct-conv kernels, which on this CPU reach ~1.5x MKL's
GEMM rate and skip im2col. Sub-convs of few channels lose that edge (oneDNN's efficiency falls
with the channel count) and each costs a fixed call overhead, so the C++ kernel stays the path
for many small blocks. ``cpu_costs`` models the three CPU choices (dense, gemm, subconv) in
seconds from constants measured on the 2-core Zen 4 VM (see docs/afcc.md, "Where the
block-sparse path starts to win"); the op runs the cheapest, and says so in ``explain``.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor

from .. import _knobs
from . import _afcc_plan as _plan
from ._afcc_plan import block_plan, register_mask_cache
from ._backend import forced
from ._geometry import check_conv_geometry

# --- CPU cost model: one thread, fp32, measured on the 2-core Zen 4 VM (scripts/afcc_calibrate.py,
# results/afcc/calibrate_cpu_zen4_2core_1thread.json) ------------------------------------------
# oneDNN direct conv, GFLOP/s by the smaller of a conv's (in, out) channel counts (3x3 taps,
# 2x2..8x8 maps, measured 19 / 54 / 108 / 142 / 155 / 152 / 152 at 4x4 and 10-20% less at 2x2
# and 8x8); interpolated linearly in log2(channels), clamped at the ends.
CONV_GFLOPS = {8: 17.0, 16: 46.0, 32: 93.0, 64: 125.0, 128: 140.0, 256: 140.0, 512: 140.0}
# MKL single-threaded GEMM inside the C++ kernel, GFLOP/s by block size (M of each GEMM).
GEMM_GFLOPS = {16: 45.0, 32: 65.0, 64: 80.0}
COPY_NS_PER_ELEM = 1.0  # im2col / col2im, and the sub-convs' channel gathers and scatters
# fixed cost of one call: the op, a dense conv, and one sub-conv (fitted: ~275 us each beyond
# its FLOPs and copies, forward or backward: the Python-level gathers and small-conv setup)
CALL_US = {"subconv": 275.0, "gemm": 15.0, "dense": 10.0}
# input + weight gradients / forward, measured: oneDNN convs 2.4x, the C++ kernel 2.0x
BWD_FACTOR = {"conv": 2.4, "gemm": 2.0}
DENSE_MARGIN = 0.9  # a sparse path must model <= 0.9x the dense time to be chosen


def _interp(table: dict[int, float], x: float) -> float:
    import math

    pts = sorted(table)
    x = min(max(x, pts[0]), pts[-1])
    for lo, hi in zip(pts[:-1], pts[1:]):
        if lo <= x <= hi:
            f = (math.log2(x) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
            return table[lo] * (1 - f) + table[hi] * f
    return table[pts[-1]]


@dataclass(frozen=True)
class SubConvs:
    """rows[i] (Ri,) / cols[i] (Si,): original out / in channel ids of sub-conv i; pairs[i]
    (Ri * Si,): their flat pair indices k * C + c, row-major; masks[i] (Ri, Si) bool;
    ``gather`` (K,): position of out channel k in cat(sub-conv outputs, empty rows) (the empty
    rows, ``empty`` (E,), have no kept block: output = bias). ``groups[i]`` > 1: sub-conv i is
    G equal-sized sub-convs run as one grouped conv (rows / cols / masks concatenated by group;
    a block-diagonal mask with equal groups is a single grouped conv)."""

    rows: tuple[Tensor, ...]
    cols: tuple[Tensor, ...]
    pairs_idx: tuple[Tensor, ...]
    masks: tuple[Tensor, ...]
    groups: tuple[int, ...]
    empty: Tensor
    gather: Tensor

    def __len__(self) -> int:
        return len(self.rows)

    def pairs(self) -> list[tuple[int, int, int]]:
        """(out channels, in channels, count) of each conv call's groups."""
        return [(int(r.numel()) // g, int(c.numel()) // g, g)
                for r, c, g in zip(self.rows, self.cols, self.groups)]


_cache: "collections.OrderedDict[int, tuple[object, SubConvs]]" = collections.OrderedDict()
_lock = threading.Lock()


def sub_convs(plan, mask: Tensor) -> SubConvs:
    """The sub-convs of a block plan (cached per plan object, as plans are per mask)."""
    with _lock:
        hit = _cache.get(id(plan))
        if hit is not None and hit[0] is plan:
            return hit[1]
    rb, cb = plan.row_bounds.tolist(), plan.col_bounds.tolist()
    rp, ci = plan.row_ptr.tolist(), plan.col_idx.tolist()
    groups: dict[tuple[int, ...], list[int]] = {}
    empty_obs = []
    for ob in range(len(rb) - 1):
        key = tuple(ci[rp[ob]:rp[ob + 1]])
        (groups.setdefault(key, []) if key else empty_obs).append(ob)
    op, ip = plan.out_perm.cpu(), plan.in_perm.cpu()
    m = mask.detach().cpu()
    rows, cols, masks = [], [], []
    for key, obs in groups.items():
        r = torch.cat([op[rb[o]:rb[o + 1]] for o in obs])
        c = torch.cat([ip[cb[q]:cb[q + 1]] for q in key])
        rows.append(r)
        cols.append(c)
        masks.append(m[r][:, c])
    empty = (torch.cat([op[rb[o]:rb[o + 1]] for o in empty_obs]) if empty_obs
             else torch.zeros(0, dtype=torch.int64))
    order = torch.cat(rows + [empty]) if rows else empty
    gather = torch.empty_like(order)
    gather[order] = torch.arange(order.numel())
    dev = mask.device
    flat = [(r[:, None] * m.shape[1] + c[None, :]).flatten() for r, c in zip(rows, cols)]
    groups = [1] * len(rows)
    if len(rows) > 1 and len({(r.numel(), c.numel()) for r, c in zip(rows, cols)}) == 1:
        # equal sub-convs: one grouped conv (group g = sub-conv g; the output order is the same)
        rows, cols, flat, masks = ([torch.cat(v)] for v in (rows, cols, flat, masks))
        groups = [len(groups)]
    out = SubConvs(tuple(r.to(dev) for r in rows), tuple(c.to(dev) for c in cols),
                   tuple(f.to(dev) for f in flat), tuple(x.to(dev) for x in masks),
                   tuple(groups), empty.to(dev), gather.to(dev))
    with _lock:
        _cache[id(plan)] = (plan, out)  # holding the plan keeps its id from being reused
        while len(_cache) > 64:
            _cache.popitem(last=False)
    return out


def _masked(weight: Tensor, pairs: Tensor, m: Tensor) -> Tensor:
    """(w * M)[R][:, S] as one gather of the pairs and a select (a NaN in a pruned weight stays
    out)."""
    k, c, r, s = weight.shape
    w = weight.reshape(k * c, r * s).index_select(0, pairs).view(m.shape[0], m.shape[1], r, s)
    return zero_pruned(w, m)


def forward(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None, plan, stride,
            padding, dilation, out_hw: tuple[int, int]) -> Tensor:
    """(N, K, OH, OW) contiguous: one dense conv per sub-conv, outputs gathered into place."""
    sc = sub_convs(plan, mask)
    n = input.shape[0]
    parts = []
    for r, c, pi, m, g in zip(sc.rows, sc.cols, sc.pairs_idx, sc.masks, sc.groups):
        parts.append(F.conv2d(input.index_select(1, c), _masked(weight, pi, m),
                              None if bias is None else bias.index_select(0, r), stride,
                              padding, dilation, g))
    if sc.empty.numel():
        e = input.new_zeros(n, sc.empty.numel(), *out_hw)
        if bias is not None:
            e += bias.index_select(0, sc.empty)[None, :, None, None]
        parts.append(e)
    return torch.cat(parts, 1).index_select(1, sc.gather)


def backward(grad_out: Tensor, input: Tensor, weight: Tensor, mask: Tensor, plan, stride,
             padding, dilation, output_mask) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_input, grad_weight, grad_bias); an unrequested one is an empty tensor."""
    sc = sub_convs(plan, mask)
    need_x, need_w, need_b = (bool(v) for v in output_mask)
    gx = torch.zeros_like(input) if need_x else input.new_empty(0)
    gw = weight.new_zeros(weight.shape) if need_w else input.new_empty(0)
    gb = grad_out.sum((0, 2, 3)) if need_b else input.new_empty(0)
    if need_x or need_w:
        kc, rs = weight.shape[0] * weight.shape[1], weight.shape[2] * weight.shape[3]
        for r, c, pi, m, g in zip(sc.rows, sc.cols, sc.pairs_idx, sc.masks, sc.groups):
            ws = _masked(weight, pi, m)
            gxs, gws, _ = torch.ops.aten.convolution_backward(
                grad_out.index_select(1, r), input.index_select(1, c), ws, None, stride,
                padding, dilation, False, [0, 0], g, [need_x, need_w, False])
            if need_x:
                gx.index_add_(1, c, gxs)
            if need_w:  # sub-convs cover disjoint pairs: a plain copy, masked
                gws = zero_pruned(gws.contiguous(), m)
                gw.view(kc, rs).index_copy_(0, pi, gws.reshape(-1, rs))
    return gx, gw, gb


_costs: "collections.OrderedDict[tuple, tuple[object, dict]]" = collections.OrderedDict()


def cpu_costs(plan, mask: Tensor, input_shape, weight_shape, out_hw, backward: bool = False
              ) -> dict[str, float]:
    """Modelled seconds (one thread) of the dense conv, the C++ GEMM kernel and the sub-convs;
    ``backward``: the input + weight gradients (twice the forward's multiplies). Cached."""
    key = (id(plan), tuple(input_shape), tuple(weight_shape), tuple(out_hw), backward)
    with _lock:
        hit = _costs.get(key)
        if hit is not None and hit[0] is plan:
            return hit[1]
    costs = _model(plan, mask, input_shape, weight_shape, out_hw, backward)
    with _lock:
        _costs[key] = (plan, costs)
        while len(_costs) > 256:
            _costs.popitem(last=False)
    return costs


def _model(plan, mask, input_shape, weight_shape, out_hw, backward) -> dict[str, float]:
    n, c, h, w = (int(v) for v in input_shape)
    k, rs = int(weight_shape[0]), int(weight_shape[2]) * int(weight_shape[3])
    ohw = out_hw[0] * out_hw[1]
    p = n * ohw
    conv_f, gemm_f = (BWD_FACTOR["conv"], BWD_FACTOR["gemm"]) if backward else (1.0, 1.0)
    per_pair = 2.0 * rs * p  # forward FLOPs of one kernel pair
    copy = COPY_NS_PER_ELEM * 1e-9
    dense = (k * c * per_pair * conv_f / (_interp(CONV_GFLOPS, min(c, k)) * 1e9)
             + CALL_US["dense"] * 1e-6)
    # C++ kernel: GEMMs at the mean block size, plus im2col (and col2im for the input grad)
    bsz = min(plan.block_out, plan.block_in)
    if plan.variable and plan.nnzb:
        bsz = min(plan.row_bounds.diff()[plan.row_idx].double().mean().item(),
                  plan.col_bounds.diff()[plan.col_idx].double().mean().item())
    gemm = (plan.executed_pairs * per_pair * gemm_f / (_interp(GEMM_GFLOPS, bsz) * 1e9)
            + c * rs * p * gemm_f * copy + CALL_US["gemm"] * 1e-6)
    # sub-convs: the convs, plus gathering input channels and weights and placing the outputs
    sub = 0.0
    for r, s, g in sub_convs(plan, mask).pairs():
        sub += g * r * s * per_pair * conv_f / (_interp(CONV_GFLOPS, min(r, s)) * 1e9)
        sub += g * (n * s * h * w + 2 * r * s * rs + 2 * n * r * ohw) * conv_f * copy
        sub += CALL_US["subconv"] * 1e-6
    return {"dense": dense, "gemm": gemm, "subconv": sub}


# --- masking and the path choice, shared with ops/afcc_conv2d.py ------------------------------
_INT_OF = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
           torch.bfloat16: torch.int16}


def zero_pruned(weight: Tensor, mask: Tensor) -> Tensor:
    """``weight * mask[:, :, None, None]`` with a NaN in a pruned kernel zeroed too, as one
    bitwise AND of the weight's bits (not differentiable). On the CPU that is as cheap as the
    multiply and 3.5x cheaper than ``torch.where`` (0.45 vs 1.7 ms for 512 x 256 x 3 x 3 on one
    Zen 4 core), which mattered for the dense fallback's overhead."""
    it = _INT_OF.get(weight.dtype)
    if it is None:
        return torch.where(mask[:, :, None, None], weight, torch.zeros((), dtype=weight.dtype,
                                                                       device=weight.device))
    key = (id(mask), mask._version, it)
    hit = _bits.get(key)
    if hit is None or hit[0] is not mask:
        hit = (mask, -mask.to(it)[:, :, None, None])  # all ones where kept
        with _bits_lock:
            _bits[key] = hit  # holding the mask keeps its id from being reused
            while len(_bits) > 64:
                _bits.pop(next(iter(_bits)), None)
    return (weight.view(it) & hit[1]).view(weight.dtype)


_bits: dict = {}
_bits_lock = threading.Lock()
register_mask_cache(_bits, _bits_lock)


class ZeroPruned(torch.autograd.Function):
    """zero_pruned with its gradient (the same select of the incoming gradient; differentiable
    again only when double backward asks, i.e. under create_graph).

    One node, in the place of eager's ``MulBackward0`` for ``w * mask``: measured on one Zen 4
    core, forward + backward of this node cost 60 us at 64 x 32 x 3 x 3 and ~2.4 ms at 512 x 512
    x 3 x 3, the same as ``w * mask`` (53 us, ~2.5 ms), while ``torch.where`` (also NaN-safe, a
    C++ node) costs 2-4x the multiply on the large weight."""

    @staticmethod
    def forward(ctx, weight, mask):
        ctx.save_for_backward(mask)
        return zero_pruned(weight, mask)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            return ZeroPruned.apply(grad.contiguous(), mask), None
        return zero_pruned(grad.contiguous(), mask), None


def out_hw(input, weight, stride, padding, dilation) -> tuple[int, int]:
    if padding is None:  # explain() without geometry: assume a "same" conv
        return int(input.shape[2]), int(input.shape[3])
    return check_conv_geometry("afcc_conv2d", input.shape[2:], weight.shape[2:], stride,
                               padding, dilation)


def cpu_path(input, weight, mask, stride=(1, 1), padding=None, dilation=(1, 1),
             backward: bool = False) -> tuple[str, dict[str, float]]:
    """The CPU path for these inputs: "subconv", "gemm" (the cheaper modelled block-sparse path,
    or the ``afcc_conv2d.cpu_path`` knob) or "dense" (neither models <= 0.9x the dense conv),
    with the modelled seconds of each (``_afcc_subconv.cpu_costs``). Cached per mask and shape
    (it runs twice a call: in the dispatch and in the native backend)."""
    forced = _knobs.get("afcc_conv2d.cpu_path")
    key = (id(mask), mask._version, tuple(input.shape), tuple(weight.shape), str(stride),
           str(padding), str(dilation), backward, forced)
    with _path_lock:
        hit = _path_cache.get(key)
    if hit is not None and hit[0] is mask:
        return hit[1]
    costs = cpu_costs(block_plan(mask), mask, input.shape, weight.shape,
                      out_hw(input, weight, stride, padding, dilation), backward)
    best = min(("gemm", "subconv"), key=costs.__getitem__)
    path = forced or ("dense" if costs[best] > DENSE_MARGIN * costs["dense"] else best)
    with _path_lock:
        _path_cache[key] = (mask, (path, costs))  # holding the mask keeps id(mask) from reuse
        while len(_path_cache) > 256:
            _path_cache.pop(next(iter(_path_cache)))
    return path, costs


_path_cache: dict = {}
_path_lock = threading.Lock()
register_mask_cache(_path_cache, _path_lock)


# --- the dense fallback's fast path (the functional in ops/afcc_conv2d.py) ---------------------
# Weights up to this many elements are masked by torch.where on a cached (K, C, R, S) condition
# (one C++ node, as eager's w * mask; the Python ZeroPruned node costs ~50 us more per
# forward + backward at 64 x 64 x 3 x 3, batch 128, one Zen 4 core); larger ones by ZeroPruned,
# whose bitwise select is 2x cheaper than torch.where's (0.45 vs 1.05 ms at 512 x 256 x 3 x 3).
SELECT_MAX_ELEMENTS = 1 << 16


@dataclass(frozen=True)
class DenseCall:
    """A cached decision to run the dense conv with the masked weight (``choice``: the
    dispatch's, recorded for ``last_backend``). ``select``: torch.where's condition, or None."""

    mask: Tensor
    choice: object
    select: Tensor | None

    def masked_weight(self, weight: Tensor) -> Tensor:
        """weight * mask, pruned entries selected out (a NaN there never reaches the result)."""
        if torch.is_grad_enabled() and weight.requires_grad:
            if self.select is not None:
                return torch.where(self.select, weight, 0.0)
            return ZeroPruned.apply(weight, self.mask)
        return zero_pruned(weight, self.mask)


_dense: dict = {}
_dense_lock = threading.Lock()
register_mask_cache(_dense, _dense_lock)


def _dense_key(input, weight, mask, bias, stride, padding, dilation) -> tuple:
    # everything check_args and the dispatch read, so that a hit skips both (the mask's own
    # shape, dtype and values are covered by id, version and refresh)
    return (id(mask), mask._version, input.shape, input.dtype, weight.shape, weight.dtype,
            weight.is_cpu, None if bias is None else (bias.shape, bias.dtype, bias.is_cpu),
            type(stride), stride, type(padding), padding, type(dilation), dilation,
            _knobs.get("afcc_conv2d.cpu_path"), _knobs.get("afcc_conv2d.block"))


def dense_call(input, weight, mask, bias, stride, padding, dilation) -> DenseCall | None:
    """The cached dense-fallback decision for exactly these arguments' metadata (``stride``,
    ``padding``, ``dilation`` as the caller passed them), or None: not seen, not the dense
    fallback, not cacheable (lists are unhashable) or not a plain CPU call (a forced backend,
    autocast, tracing, a function transform or forward AD). ``refresh`` runs first. Kept to a
    few attribute checks: on this CPU, host work before the conv costs several times its own
    time in the conv's measured time (docs/afcc.md, "Per-call overhead of the dense
    fallback")."""
    if (type(input) is not Tensor or type(mask) is not Tensor or not input.is_cpu
            or torch.compiler.is_compiling() or forced() is not None
            or torch.is_autocast_enabled("cpu") or fwAD._current_level >= 0
            or torch._C._functorch.peek_interpreter_stack() is not None):
        return None
    _plan.refresh(mask)
    try:
        key = _dense_key(input, weight, mask, bias, stride, padding, dilation)
        with _dense_lock:
            hit = _dense.get(key)
    except (AttributeError, TypeError):  # not tensors, or an unhashable geometry
        return None
    return hit if hit is not None and hit.mask is mask else None


def remember_dense(input, weight, mask, bias, stride, padding, dilation, choice) -> DenseCall:
    """Cache a validated call's dense-fallback decision (``dense_call`` returns it next time)."""
    select = None
    if weight.numel() <= SELECT_MAX_ELEMENTS:
        select = mask[:, :, None, None].expand(weight.shape).contiguous()
    call = DenseCall(mask, choice, select)  # holding the mask keeps id(mask) from being reused
    try:
        key = _dense_key(input, weight, mask, bias, stride, padding, dilation)
    except TypeError:
        return call
    with _dense_lock:
        _dense[key] = call
        while len(_dense) > 256:
            _dense.pop(next(iter(_dense)))
    return call


def costs_text(costs: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in costs.items())
