"""Triton backward of wide_conv2d: input and weight/bias gradients with unpool/ReLU fused in.

The pre-activation gradient gy (N, K, OH, OW) is never materialised: every kernel forms its gy
tile on the fly from the pooled grad_out and what the forward saved:

    gy[n,k,p,q] = gout[n,k,p//2,q//2] if p < 2*PH, q < 2*PW and idx[n,k,p//2,q//2] == 2*(p%2)+(q%2)
                  else 0                                                      (POOL == 2)
    gy          = gout * (out > 0)                                            (POOL == 1, RELU)
    gy          = gout                                                        (otherwise)

Input gradient, a transposed implicit GEMM (rows = input positions (n,h,w), columns = c,
reduction over ((r, s), k-block) flattened into one pipelined loop):

    gx[n,c,h,w] = sum_{k,r,s} gy[n,k,p,q] * w[k,c,r,s],  p = (h + ph - r*dh) / sh when exact
                  (same for q), 0 <= p < OH

Stride > 1 is handled by masking the (r, s) taps whose division is not exact (correct, but the
masked taps still cost tensor-core work: 1/sh*sw of it is useful). The weight is read in
(K, R, S, C) order (channels_last), contiguous along the output columns c.

Weight and bias gradients (rows = output channels k, columns = (c, r, s), reduction over the
conv positions m = (n, p, q) with p < EH, q < EW, EH = 2*PH for POOL == 2 else OH):

    gw[k,c,r,s] = sum_m gy[m,k] * x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw]
    gb[k]       = sum_m gy[m,k]          (folded in: computed by the column-0 programs)

The long m reduction is split across SPLIT programs (split-K) so that narrow layers such as
conv1's 75-column gw still fill the GPU; each split writes an fp32 partial (SPLIT, K, C*R*S)
that is summed afterwards (deterministic, unlike fp32 atomics). SPLIT == 1 writes gw directly.
Columns are ordered (c, r, s) for NCHW input (adjacent s -> adjacent addresses) and (r, s, c) for
channels_last input (adjacent c -> adjacent addresses); the store maps back to (K, C, R, S).

All accumulation is fp32; fp16/bf16 results are cast at the end. GPU performance is unmeasured
(no GPU in the writing session; numerics checked in the interpreter, resources by sm_90 compile).
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..ops._geometry import out_memory_format
from ._utils import TunedKernel, device_guard, grouped_pid, input_precision
from .wide_conv2d import _CONV_KEYS, check_conv_args

__all__ = ["backward", "BWD_INPUT_CONFIGS", "BWD_WEIGHT_CONFIGS", "INTERPRET_BWD_INPUT_CONFIG",
           "INTERPRET_BWD_WEIGHT_CONFIG", "BWD_INPUT", "BWD_WEIGHT"]

# sm_90 compile check: most of these gather kernels reach ptxas' 255-register cap, without
# spills (two 2-D gathers, grad_out and saved, form each gy tile). BLOCK_K stays at 32 so fp32
# stays well under the 227 KB shared-memory limit and ptxas stays fast.
def _in_cfg(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                         num_warps=warps, num_stages=stages)


def _w_cfg(bko, bcrs, bp, warps, stages):
    return triton.Config({"BLOCK_KO": bko, "BLOCK_CRS": bcrs, "BLOCK_P": bp},
                         num_warps=warps, num_stages=stages)


BWD_INPUT_CONFIGS = [  # rows = input positions, columns = C, reduction = K per (r, s)
    _in_cfg(128, 128, 32, 8, 3),
    _in_cfg(128, 64, 32, 4, 3),
    _in_cfg(64, 128, 32, 4, 3),
    _in_cfg(128, 16, 32, 4, 3),  # small C_in (conv1's gx, rarely needed)
]
BWD_WEIGHT_CONFIGS = [  # rows = K, columns = C*R*S, reduction = positions
    _w_cfg(128, 128, 32, 8, 3),
    _w_cfg(128, 64, 32, 4, 3),
    _w_cfg(64, 128, 32, 4, 3),
    _w_cfg(128, 32, 32, 4, 3),  # conv1: C*R*S = 75 -> 3 column tiles
]
INTERPRET_BWD_INPUT_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 4}
INTERPRET_BWD_WEIGHT_CONFIG = {"BLOCK_KO": 32, "BLOCK_CRS": 64, "BLOCK_P": 64}
# Nominal weight-grad tile used to pick SPLIT (the autotuned tile may differ; any SPLIT is
# correct, it only sets the parallelism).
_SPLIT_TILE = 128
_SPLIT_MIN_ROWS = 256  # smallest m chunk worth a program
_SPLIT_MAX_BYTES = 256 << 20  # cap on the fp32 partial buffer


@triton.jit
def _gy_tile(go_ptr, sv_ptr, g_off, s_off, win, mask, POOL: tl.constexpr, RELU: tl.constexpr):
    """gy at offsets g_off (grad_out) / s_off (saved); win = 2*(p%2)+(q%2) when POOL == 2."""
    g = tl.load(go_ptr + g_off, mask=mask, other=0.0)
    if POOL == 2:
        pos = tl.load(sv_ptr + s_off, mask=mask, other=4)
        g = tl.where(pos.to(tl.int32) == win, g, 0.0)
    elif RELU:
        o = tl.load(sv_ptr + s_off, mask=mask, other=0.0)
        g = tl.where(o > 0, g, 0.0)
    return g


@triton.jit
def _wide_conv2d_bwd_input_kernel(
    go_ptr, sv_ptr, w_ptr, gx_ptr,
    C, H, W, K, M, EH, EW,
    sgn, sgk, sgh, sgw,
    ssn, ssk, ssh, ssw,
    swk, swc, swr, sws,
    sxn, sxc, sxh, sxw,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    R: tl.constexpr, S: tl.constexpr, RELU: tl.constexpr, POOL: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = grouped_pid(tl.cdiv(M, BLOCK_M), tl.cdiv(C, BLOCK_N), GROUP_M)

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M
    n64 = (m // (H * W)).to(tl.int64)
    h = (m // W) % H
    w = m % W
    c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = c < C
    g_row = n64 * sgn
    s_row = n64 * ssn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    nkb = tl.cdiv(K, BLOCK_K)
    for it in range(0, R * S * nkb):
        rs = it // nkb
        k = (it % nkb) * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = k < K
        rr = rs // S
        ss = rs % S
        pn = h + PAD_H - rr * DIL_H
        qn = w + PAD_W - ss * DIL_W
        p = pn // STRIDE_H
        q = qn // STRIDE_W
        ok = (m_ok & (pn >= 0) & (qn >= 0) & (p * STRIDE_H == pn) & (q * STRIDE_W == qn)
              & (p < EH) & (q < EW))
        pp = p // POOL
        qq = q // POOL
        g_off = (g_row + pp * sgh + qq * sgw)[:, None] + (k * sgk)[None, :]
        s_off = (s_row + pp * ssh + qq * ssw)[:, None] + (k * ssk)[None, :]
        win = ((p % 2) * 2 + (q % 2))[:, None]
        gy = _gy_tile(go_ptr, sv_ptr, g_off, s_off, win, ok[:, None] & k_ok[None, :], POOL, RELU)
        wt = tl.load(w_ptr + (k * swk + rr * swr + ss * sws)[:, None] + (c * swc)[None, :],
                     mask=k_ok[:, None] & c_ok[None, :], other=0.0)
        acc = tl.dot(gy.to(w_ptr.dtype.element_ty), wt, acc, input_precision=INPUT_PRECISION)

    x_off = (n64 * sxn + h * sxh + w * sxw)[:, None] + (c * sxc)[None, :]
    tl.store(gx_ptr + x_off, acc.to(gx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


@triton.jit
def _wide_conv2d_bwd_weight_kernel(
    go_ptr, sv_ptr, x_ptr, gw_ptr, gb_ptr,
    C, H, W, K, MR, EH, EW, CHUNK,
    sgn, sgk, sgh, sgw,
    ssn, ssk, ssh, ssw,
    sxn, sxc, sxh, sxw,
    gw_split_stride, gb_split_stride,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    R: tl.constexpr, S: tl.constexpr, RELU: tl.constexpr, POOL: tl.constexpr,
    HAS_GW: tl.constexpr, HAS_GB: tl.constexpr, CL_ORDER: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_KO: tl.constexpr, BLOCK_CRS: tl.constexpr, BLOCK_P: tl.constexpr,
):
    CRS = C * R * S
    num_c = tl.cdiv(CRS, BLOCK_CRS) if HAS_GW else 1
    pid = tl.program_id(0)
    pid_c = pid % num_c  # column tiles fastest: neighbours share the gy tile in L2
    pid_k = pid // num_c
    z = tl.program_id(1)

    k = pid_k * BLOCK_KO + tl.arange(0, BLOCK_KO)
    k_ok = k < K
    t = pid_c * BLOCK_CRS + tl.arange(0, BLOCK_CRS)
    t_ok = t < CRS
    if CL_ORDER:
        rs = t // C
        c = t % C
    else:
        c = t // (R * S)
        rs = t % (R * S)
    rdh = (rs // S) * DIL_H
    sdw = (rs % S) * DIL_W
    do_gb = HAS_GB & (pid_c == 0)

    acc = tl.zeros((BLOCK_KO, BLOCK_CRS), dtype=tl.float32)
    gb_acc = tl.zeros((BLOCK_KO,), dtype=tl.float32)
    start = z * CHUNK
    end = min(start + CHUNK, MR)
    for m0 in range(start, end, BLOCK_P):
        m = m0 + tl.arange(0, BLOCK_P)
        m_ok = m < end
        n64 = (m // (EH * EW)).to(tl.int64)
        p = (m // EW) % EH
        q = m % EW
        pp = p // POOL
        qq = q // POOL
        g_off = (n64 * sgn + pp * sgh + qq * sgw)[:, None] + (k * sgk)[None, :]
        s_off = (n64 * ssn + pp * ssh + qq * ssw)[:, None] + (k * ssk)[None, :]
        win = ((p % 2) * 2 + (q % 2))[:, None]
        gy = _gy_tile(go_ptr, sv_ptr, g_off, s_off, win, m_ok[:, None] & k_ok[None, :], POOL,
                      RELU)
        if HAS_GW:
            ih = (p * STRIDE_H - PAD_H)[:, None] + rdh[None, :]
            iw = (q * STRIDE_W - PAD_W)[:, None] + sdw[None, :]
            x_mask = (m_ok[:, None] & t_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0)
                      & (iw < W))
            xt = tl.load(x_ptr + (n64 * sxn)[:, None] + (c * sxc)[None, :] + ih * sxh + iw * sxw,
                         mask=x_mask, other=0.0)
            acc = tl.dot(tl.trans(gy.to(x_ptr.dtype.element_ty)), xt, acc,
                         input_precision=INPUT_PRECISION)
        if do_gb:
            gb_acc += tl.sum(gy.to(tl.float32), axis=0)

    if HAS_GW:
        # (K, C, R, S) contiguous, whatever the column order
        w_off = (z.to(tl.int64) * gw_split_stride + k.to(tl.int64) * CRS)[:, None] \
            + (c * (R * S) + rs)[None, :]
        tl.store(gw_ptr + w_off, acc.to(gw_ptr.dtype.element_ty),
                 mask=k_ok[:, None] & t_ok[None, :])
    if do_gb:
        tl.store(gb_ptr + z * gb_split_stride + k, gb_acc.to(gb_ptr.dtype.element_ty), mask=k_ok)


def _cap(n: int) -> int:
    return max(16, triton.next_power_of_2(max(int(n), 1)))


def _prune_input(configs, named_args, **kwargs):
    a = {**named_args, **kwargs}
    kept = [c for c in configs if c.kwargs["BLOCK_N"] <= _cap(a["C"])
            and c.kwargs["BLOCK_K"] <= _cap(a["K"])]
    return kept or configs[-1:]


def _prune_weight(configs, named_args, **kwargs):
    a = {**named_args, **kwargs}
    kept = [c for c in configs if c.kwargs["BLOCK_CRS"] <= _cap(a["C"] * a["R"] * a["S"])
            and c.kwargs["BLOCK_KO"] <= _cap(a["K"])]
    return kept or configs[-1:]


# Autotune keys: the layer and layout (sxc: 1 for channels_last), never the batch size (M and
# MR are N*H*W and N*EH*EW); see shallowkern/triton/_utils.py.
BWD_INPUT = TunedKernel("wide_conv2d_bwd_input", _wide_conv2d_bwd_input_kernel,
                        BWD_INPUT_CONFIGS, _CONV_KEYS + ["RELU", "sxc"], _prune_input,
                        INTERPRET_BWD_INPUT_CONFIG)
BWD_WEIGHT = TunedKernel("wide_conv2d_bwd_weight", _wide_conv2d_bwd_weight_kernel,
                         BWD_WEIGHT_CONFIGS,
                         _CONV_KEYS + ["RELU", "HAS_GW", "HAS_GB", "CL_ORDER"], _prune_weight,
                         INTERPRET_BWD_WEIGHT_CONFIG)
_input_autotuned, _weight_autotuned = BWD_INPUT.autotuned, BWD_WEIGHT.autotuned


def choose_split(mr: int, k: int, crs: int, sms: int) -> int:
    """How many programs share the m reduction of the weight gradient (>= 1)."""
    tiles = triton.cdiv(k, _SPLIT_TILE) * triton.cdiv(crs, _SPLIT_TILE)
    split = min(triton.cdiv(2 * sms, tiles), triton.cdiv(mr, _SPLIT_MIN_ROWS),
                max(1, _SPLIT_MAX_BYTES // max(1, 4 * k * crs)))
    return max(1, split)


def _check_grad_args(grad_out: Tensor, input: Tensor, weight: Tensor, saved: Tensor, relu: bool,
                     pool: int, oh: int, ow: int, output_mask):
    if len(output_mask) != 3:
        raise ValueError(f"wide_conv2d backward (triton): output_mask must have 3 entries, got "
                         f"{list(output_mask)}")
    shape = (input.shape[0], weight.shape[0], oh // pool, ow // pool)
    if not isinstance(grad_out, Tensor) or tuple(grad_out.shape) != shape:
        raise ValueError(f"wide_conv2d backward (triton): grad_out must have shape {shape}, got "
                         f"{tuple(grad_out.shape) if isinstance(grad_out, Tensor) else grad_out}")
    if grad_out.dtype != input.dtype or grad_out.device != input.device:
        raise ValueError(f"wide_conv2d backward (triton): grad_out must be {input.dtype} on "
                         f"{input.device}, got {grad_out.dtype} on {grad_out.device}")
    if pool == 2 or relu:
        want = torch.uint8 if pool == 2 else input.dtype
        what = "the uint8 pool indices" if pool == 2 else "the forward output"
        if (not isinstance(saved, Tensor) or tuple(saved.shape) != shape or saved.dtype != want
                or saved.device != input.device):
            got = (tuple(saved.shape), saved.dtype) if isinstance(saved, Tensor) else saved
            raise ValueError(f"wide_conv2d backward (triton): saved must be {what}, {shape} "
                             f"{want} on {input.device}, got {got}")


def backward(grad_out: Tensor, input: Tensor, weight: Tensor, saved: Tensor,
             stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], relu: bool,
             pool: int, output_mask: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of wide_conv2d (groups == 1) w.r.t. (input, weight, bias).

    Args:
        grad_out: (N, K, PH, PW) gradient of the pooled output, input's dtype, any strides.
        input: (N, C, H, W); weight: (K, C, R, S) (fp32/fp16/bf16, CUDA or interpreter CPU).
        saved: pool == 2: uint8 indices (N, K, PH, PW); pool == 1 and relu: the forward output;
            else ignored (pass an empty tensor).
        output_mask: which of (grad_input, grad_weight, grad_bias) to compute.
    Returns:
        grad_input (N, C, H, W) in input's memory format, grad_weight (K, C, R, S) contiguous,
        grad_bias (K,); each masked-off one is ``input.new_empty(0)``.
    """
    return _backward(grad_out, input, weight, saved, stride, padding, dilation, relu, pool,
                     output_mask)


def _backward(grad_out, input, weight, saved, stride, padding, dilation, relu, pool, output_mask,
              split: int | None = None, input_config: dict | None = None,
              weight_config: dict | None = None):
    """backward() with test hooks: force SPLIT or the tile configs."""
    stride, padding, dilation, oh, ow = check_conv_args(input, weight, stride, padding, dilation,
                                                        pool)
    _check_grad_args(grad_out, input, weight, saved, relu, pool, oh, ow, output_mask)
    want_gi, want_gw, want_gb = (bool(v) for v in output_mask)
    nb, c, h, w = input.shape
    k, _, r, s = weight.shape
    empty = input.new_empty(0)
    eh, ew = (oh // 2 * 2, ow // 2 * 2) if pool == 2 else (oh, ow)
    if not (pool == 2 or relu):
        saved = grad_out  # never read; any pointer will do
    gi = (torch.empty(input.shape, dtype=input.dtype, device=input.device,
                      memory_format=out_memory_format(input)) if want_gi else empty)
    gw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) if want_gw else empty
    gb = torch.empty((k,), dtype=weight.dtype, device=weight.device) if want_gb else empty
    mr = nb * eh * ew
    if c == 0:
        raise ValueError("wide_conv2d backward (triton): input has 0 channels")
    if nb == 0 or k == 0:  # nothing to reduce: zero gradients, no launch
        gi.zero_(), gw.zero_(), gb.zero_()
        return gi, gw, gb
    prec = input_precision(input.dtype, "conv")
    common = (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])

    with device_guard(input):
        if want_gi:
            w_cl = weight.contiguous(memory_format=torch.channels_last)  # (K, R, S, C) order
            m = nb * h * w
            args = (grad_out, saved, w_cl, gi, c, h, w, k, m, eh, ew, *grad_out.stride(),
                    *saved.stride(), *w_cl.stride(), *gi.stride(), *common)
            meta = dict(R=r, S=s, RELU=bool(relu), POOL=pool, INPUT_PRECISION=prec)

            def grid_i(a):
                return (triton.cdiv(m, a["BLOCK_M"]) * triton.cdiv(c, a["BLOCK_N"]),)

            BWD_INPUT(grid_i, args, meta, input_config)

        if want_gw or want_gb:
            crs = c * r * s
            if split is None:
                sms = (torch.cuda.get_device_properties(input.device).multi_processor_count
                       if input.device.type == "cuda" else 2)
                split = choose_split(mr, k, crs if want_gw else 1, sms)
            chunk = triton.cdiv(triton.cdiv(mr, split), 64) * 64
            split = triton.cdiv(mr, chunk)  # every split owns >= 1 row: every partial is written
            f32 = torch.float32
            gw_buf = gw if (split == 1 or not want_gw) else torch.empty(
                (split, k, crs), dtype=f32, device=input.device)
            gb_buf = gb if (split == 1 or not want_gb) else torch.empty(
                (split, k), dtype=f32, device=input.device)
            args = (grad_out, saved, input, gw_buf if want_gw else gb_buf,
                    gb_buf if want_gb else gw_buf, c, h, w, k, mr, eh, ew, chunk,
                    *grad_out.stride(), *saved.stride(), *input.stride(),
                    k * crs if split > 1 else 0, k if split > 1 else 0, *common)
            meta = dict(R=r, S=s, RELU=bool(relu), POOL=pool, HAS_GW=want_gw, HAS_GB=want_gb,
                        CL_ORDER=input.stride(1) == 1 and c > 1, INPUT_PRECISION=prec)

            def grid_w(a):
                n_c = triton.cdiv(crs, a["BLOCK_CRS"]) if want_gw else 1
                return (triton.cdiv(k, a["BLOCK_KO"]) * n_c, split)

            BWD_WEIGHT(grid_w, args, meta, weight_config)
            if split > 1:
                if want_gw:
                    gw.copy_(gw_buf.sum(dim=0).view(weight.shape))
                if want_gb:
                    gb.copy_(gb_buf.sum(dim=0))
    return gi, gw, gb

