"""Triton forward of wide_conv2d: implicit-GEMM conv + bias + [ReLU] + [2x2 max-pool], one kernel.

Math (groups == 1, zero padding, cross-correlation as nn.Conv2d; floor-mode pooling):

    y[n,k,p,q]   = b[k] + sum_{c,r,s} x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw] * w[k,c,r,s]
    a            = relu(y) if RELU else y
    out[n,k,i,j] = max_{di,dj} a[n,k,2i+di,2j+dj]                                     (POOL == 2)
    idx[n,k,i,j] = 2*di+dj of the max, scanning (0,0),(0,1),(1,0),(1,1) with "v > best or
                   isnan(v)" (aten's max_pool2d rule), or 4 where RELU and out <= 0

GEMM view: rows = conv output positions, columns = output channels k, reduction = (c, r, s).
A program owns BLOCK_M conv rows x BLOCK_N channels. With POOL == 2 the BLOCK_M rows are the
4 window positions of BLOCK_M/4 pooled outputs, stacked window-major (row = w*BLOCK_M/4 + m):
one tl.dot of M = BLOCK_M (big enough for wgmma on sm_90, the weight tile is reused 4x), then
the epilogue reshapes the fp32 accumulator to (2, 2, BLOCK_M/4, BLOCK_N), splits out the four
window values and does bias / ReLU / max / argmax in registers. Only the pooled output (and
the uint8 window index) ever reaches memory; rows of an odd conv output that floor pooling
drops are never computed.

Reduction order, two modes chosen by the launcher:
  FLAT (C_in < 16, e.g. conv1's C=3): one axis t = (c, r, s) flattened, tiles of BLOCK_K >= 16
       (75 -> 80 with BLOCK_K=16); each element's (c, r, s) is decoded, the input is gathered.
  CHANNEL (C_in >= 16): one flattened loop over ((r, s), channel block) so the software
       pipeliner sees a single loop; for fixed (r, s) the input gather of a channel block is a
       strided load (contiguous for channels_last input) and the weight, made channels_last
       (K, R, S, C) by the launcher, is contiguous along c.
Inputs are read through their strides (NCHW, channels_last or any view: no copies).
channels_last is the fast layout for CHANNEL mode: with C % 8 == 0 the JIT's stride-1 and
divisible-by-16 specializations let the channel-block gather load 16-byte vectors through
cp.async (sm_90 TTGIR checked); NCHW gathers are element-wise loads.

fp32 inputs use TF32 tensor cores when PyTorch allows it for convolutions
(torch.backends.cudnn.allow_tf32, default True), "ieee" fp32 FMA otherwise. fp16/bf16 accumulate
in fp32; the conv value is rounded to the input dtype before ReLU/pool, as aten's unfused
composition does, so pooling ties resolve the same way.

Roofline (H100 SXM: ~3.0 TB/s copy bandwidth, ~790 TFLOP/s dense bf16 measured on this
workplace's machines; ~60 TFLOP/s fp32 without tensor cores, from the datasheet's 67, not
measured). Generalized LeNet, N = 128, 5x5 kernels:
  conv1 3x32x32 -> d1x28x28 -> pool 14x14, FLOPs = 2*N*28*28*d1*75, bytes = x + w + pooled out
    d1=256  bf16: 3.85 GFLOP, 13.7 MB (+6.4 MB uint8 idx when training): 4.6 us memory (6.7 us
            with idx) vs 4.9 us tensor-core compute (5.2 us counting the 75 -> 80 reduction
            padding of BLOCK_K=16): balanced at AI ~280 FLOP/B against a ridge of ~263, i.e.
            fusing the pool removed the 4x larger pre-pool write that made it memory-bound.
            fp32: 27.3 MB -> 9.1 us memory vs 64 us fp32-FMA compute ("ieee"); TF32 tensor
            cores (about half the bf16 rate) bring compute to ~10 us, again near balance.
    d1=2048 bf16: 30.8 GFLOP, 104 MB (+51 MB idx): 35 us (52 us) memory vs 39 us compute.
  conv2 d1x14x14 -> 2.8*d1 x10x10 -> pool 5x5 (compute-bound, GEMM-class)
    d1=256  (K=717)  bf16: 118 GFLOP, 26.6 MB -> 149 us compute floor vs 9 us memory.
    d1=2048 (K=5734) bf16: 7.5 TFLOP, 727 MB  -> 9.5 ms compute floor vs 0.24 ms memory.
GPU performance of these kernels is UNMEASURED: they were written and tested in a session
without a GPU (Triton interpreter on CPU for numerics, sm_90 compile checks for resources).
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..ops._geometry import NO_GRAD, conv_out_hw, out_memory_format, pair
from ._utils import (TunedKernel, autotune_enabled, device_guard, grouped_pid, input_precision,
                     interpreting, launch)

# the shared helpers stay importable from here for code written before _utils existed
__all__ = ["forward", "supports", "FWD_CONFIGS", "INTERPRET_FWD_CONFIG", "FWD", "FWD_KEYS",
           "NO_GRAD", "interpreting", "autotune_enabled", "device_guard", "grouped_pid", "launch",
           "input_precision", "conv_out_hw", "out_memory_format"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Below this C_in the (c, r, s) reduction is flattened: channel blocks of 16 would mostly be
# padding (C=3 -> 3/16 useful), while flattening wastes at most BLOCK_K-1 of C*R*S.
FLAT_MAX_CIN = 16


# GPU autotune space (BLOCK_M counts conv rows: BLOCK_M/4 pooled outputs when pool == 2). The
# compile check in tests/triton compiles every entry for sm_90 and reports smem / registers.
# Rule of thumb from the sm_90 compile check: keep the fp32 accumulator at <= 64 registers per
# thread (BLOCK_M*BLOCK_N <= 2048*num_warps); beyond it (the 256x128 entry) ptxas reports 255.
def _cfg(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                         num_warps=warps, num_stages=stages)


FWD_CONFIGS = [
    _cfg(128, 128, 32, 8, 3),  # channel mode (conv2-like)
    _cfg(128, 128, 64, 8, 3),
    _cfg(128, 64, 32, 4, 3),
    _cfg(64, 128, 32, 4, 3),
    _cfg(256, 128, 32, 8, 3),  # big compute-bound layers; 255 regs, no spills
    _cfg(128, 128, 16, 8, 3),  # flat mode, C_in = 3 (conv1: 75 -> 80)
    _cfg(128, 64, 16, 4, 3),
]
# One config under the interpreter (autotuning needs a GPU timer): large tiles, few programs.
INTERPRET_FWD_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}


@triton.jit
def _wide_conv2d_fwd_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, idx_ptr,
    C, H, W, K, MP, PH, PW,
    sxn, sxc, sxh, sxw,
    swk, swc, swr, sws,
    son, sok, soh, sow,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    R: tl.constexpr, S: tl.constexpr,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, POOL: tl.constexpr, WRITE_IDX: tl.constexpr,
    FLAT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    WIN: tl.constexpr = POOL * POOL
    BMP: tl.constexpr = BLOCK_M // WIN  # pooled rows per tile
    pid_m, pid_n = grouped_pid(tl.cdiv(MP, BMP), tl.cdiv(K, BLOCK_N), GROUP_M)

    # rows: window-major stack of the WIN positions of BMP pooled outputs
    r = tl.arange(0, BLOCK_M)
    win = r // BMP
    pm = pid_m * BMP + r % BMP
    row_ok = pm < MP
    n = pm // (PH * PW)
    rem = pm % (PH * PW)
    oh = (rem // PW) * POOL + win // POOL
    ow = (rem % PW) * POOL + win % POOL
    ih0 = oh * STRIDE_H - PAD_H
    iw0 = ow * STRIDE_W - PAD_W
    x_row = n.to(tl.int64) * sxn

    kk = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok = kk < K
    w_col = kk.to(tl.int64) * swk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    if FLAT:
        CRS = C * R * S
        for t0 in range(0, CRS, BLOCK_K):
            t = t0 + tl.arange(0, BLOCK_K)
            t_ok = t < CRS
            c = t // (R * S)
            rr = (t // S) % R
            ss = t % S
            ih = ih0[:, None] + (rr * DIL_H)[None, :]
            iw = iw0[:, None] + (ss * DIL_W)[None, :]
            a_mask = (row_ok[:, None] & t_ok[None, :] & (ih >= 0) & (ih < H)
                      & (iw >= 0) & (iw < W))
            a = tl.load(x_ptr + x_row[:, None] + (c * sxc)[None, :] + ih * sxh + iw * sxw,
                        mask=a_mask, other=0.0)
            # contiguous (K, C*R*S) weight (the launcher ensures it): t is the column offset,
            # so the weight tile loads as 16-byte vectors
            b = tl.load(w_ptr + t[:, None] + w_col[None, :],
                        mask=t_ok[:, None] & k_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    else:
        ncb = tl.cdiv(C, BLOCK_K)
        for it in range(0, R * S * ncb):
            rs = it // ncb
            c = (it % ncb) * BLOCK_K + tl.arange(0, BLOCK_K)
            c_ok = c < C
            rr = rs // S
            ss = rs % S
            ih = ih0 + rr * DIL_H
            iw = iw0 + ss * DIL_W
            m_ok = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_ptr + (x_row + ih * sxh + iw * sxw)[:, None] + (c * sxc)[None, :],
                        mask=m_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_ptr + (rr * swr + ss * sws + c * swc)[:, None] + w_col[None, :],
                        mask=c_ok[:, None] & k_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    # ---- epilogue: bias, round to the I/O dtype, ReLU, 2x2 max + index, store pooled only
    if HAS_BIAS:
        acc += tl.load(b_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)[None, :]
    acc = acc.to(out_ptr.dtype.element_ty).to(tl.float32)
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)  # keeps NaN, as torch.relu does

    if POOL == 2:
        # rows w*BMP + m, w = 2*di + dj: (di, dj, m, k) -> (m, k, di, dj); split peels the
        # last axis (dj), the second split di
        v4 = tl.permute(tl.reshape(acc, (2, 2, BMP, BLOCK_N)), (2, 3, 0, 1))
        dj0, dj1 = tl.split(v4)
        v00, v10 = tl.split(dj0)
        v01, v11 = tl.split(dj1)
        best = v00
        pos = tl.zeros((BMP, BLOCK_N), dtype=tl.int32)
        upd = (v01 > best) | (v01 != v01)
        best = tl.where(upd, v01, best)
        pos = tl.where(upd, 1, pos)
        upd = (v10 > best) | (v10 != v10)
        best = tl.where(upd, v10, best)
        pos = tl.where(upd, 2, pos)
        upd = (v11 > best) | (v11 != v11)
        best = tl.where(upd, v11, best)
        pos = tl.where(upd, 3, pos)
        pr = pid_m * BMP + tl.arange(0, BMP)
        prem = pr % (PH * PW)
        o_off = ((pr // (PH * PW)).to(tl.int64) * son + (prem // PW) * soh
                 + (prem % PW) * sow)[:, None] + (kk * sok)[None, :]
        o_mask = (pr < MP)[:, None] & k_ok[None, :]
        tl.store(out_ptr + o_off, best.to(out_ptr.dtype.element_ty), mask=o_mask)
        if WRITE_IDX:
            if RELU:
                pos = tl.where(best <= 0, 4, pos)
            tl.store(idx_ptr + o_off, pos.to(tl.uint8), mask=o_mask)
    else:
        # two half-height stores: one 128x128 store needs a 64-bit pointer per element and
        # pushed this path to 255 registers
        HALF: tl.constexpr = BLOCK_M // 2
        top, bot = tl.split(tl.permute(tl.reshape(acc.to(out_ptr.dtype.element_ty),
                                                  (2, HALF, BLOCK_N)), (1, 2, 0)))
        hr = pid_m * BLOCK_M + tl.arange(0, HALF)
        for half in tl.static_range(2):
            r_h = hr + half * HALF
            n_h = r_h // (PH * PW)
            rem_h = r_h % (PH * PW)
            off = (n_h.to(tl.int64) * son + (rem_h // PW) * soh + (rem_h % PW) * sow)[:, None] \
                + (kk * sok)[None, :]
            tl.store(out_ptr + off, top if half == 0 else bot,
                     mask=(r_h < MP)[:, None] & k_ok[None, :])


def _prune_fwd(configs, named_args, **kwargs):
    """Drop configs whose reduction tile is mostly padding for this C (keep at least one)."""
    a = {**named_args, **kwargs}
    red = a["C"] * a["R"] * a["S"] if a["FLAT"] else a["C"]
    cap = max(16, triton.next_power_of_2(red))
    kept = [c for c in configs if c.kwargs["BLOCK_K"] <= cap] or configs[:1]
    # the untuned path takes the first: in FLAT mode that is a BLOCK_K = 16 tile (75 -> 80)
    return sorted(kept, key=lambda c: a["FLAT"] and c.kwargs["BLOCK_K"] != 16)


# Autotune key: the layer (channels, kernel, spatial size, conv arguments, pooling, reduction
# mode) and the input layout (sxc == 1 for channels_last); not the batch size, so a new batch
# size reuses the tuning (issue 13). Triton adds the tensors' dtypes.
_CONV_KEYS = ["C", "K", "H", "W", "R", "S", "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W", "DIL_H",
              "DIL_W", "POOL"]
FWD_KEYS = _CONV_KEYS + ["FLAT", "sxc"]
FWD = TunedKernel("wide_conv2d_fwd", _wide_conv2d_fwd_kernel, FWD_CONFIGS, FWD_KEYS, _prune_fwd,
                  INTERPRET_FWD_CONFIG)
_fwd_autotuned = FWD.autotuned


# ---------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------
def supports(input: Tensor, weight: Tensor, groups: int = 1) -> str | None:
    """None if these kernels can run the call, else the reason in words."""
    if groups != 1:
        return f"groups={groups}: the Triton kernels handle groups == 1 only"
    if not isinstance(input, Tensor) or not isinstance(weight, Tensor):
        return "input and weight must be tensors"
    if input.dim() != 4 or weight.dim() != 4:
        return f"input and weight must be 4-D, got {input.dim()}-D and {weight.dim()}-D"
    if input.dtype not in SUPPORTED_DTYPES or weight.dtype != input.dtype:
        return f"dtypes {input.dtype}/{weight.dtype}: need one of {SUPPORTED_DTYPES} for both"
    if input.device != weight.device:
        return f"input on {input.device}, weight on {weight.device}"
    if input.device.type != "cuda" and not (interpreting() and input.device.type == "cpu"):
        return f"device {input.device}: needs CUDA (or CPU tensors under TRITON_INTERPRET=1)"
    if input.shape[1] != weight.shape[1]:
        return f"in_channels {input.shape[1]} != weight.shape[1] {weight.shape[1]}"
    return None


def check_conv_args(input: Tensor, weight: Tensor, stride, padding, dilation, pool: int):
    """Shared by the forward and backward launchers; returns (stride, padding, dilation, OH, OW)."""
    why = supports(input, weight, 1)
    if why is not None:
        raise ValueError(f"wide_conv2d (triton): input/weight: {why}")
    op = "wide_conv2d (triton)"
    stride, padding, dilation = (pair(stride, "stride", op), pair(padding, "padding", op),
                                 pair(dilation, "dilation", op))
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"wide_conv2d (triton): need stride >= 1, dilation >= 1, padding >= 0; "
                         f"got stride={stride}, padding={padding}, dilation={dilation}")
    if pool not in (1, 2):
        raise ValueError(f"wide_conv2d (triton): pool must be 1 or 2, got {pool!r}")
    oh, ow = conv_out_hw(input.shape[2], input.shape[3], weight.shape[2:], stride, padding,
                         dilation)
    if oh < pool or ow < pool:
        raise ValueError(f"wide_conv2d (triton): weight {tuple(weight.shape[2:])} on input "
                         f"{tuple(input.shape[2:])} gives a {oh}x{ow} conv output, too small for "
                         f"pool={pool}")
    return stride, padding, dilation, oh, ow


def use_flat(c_in: int) -> bool:
    return c_in < FLAT_MAX_CIN


def forward(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Sequence[int],
            padding: Sequence[int], dilation: Sequence[int], relu: bool, pool: int,
            return_indices: bool) -> tuple[Tensor, Tensor]:
    """Fused conv2d + bias + [ReLU] + [2x2 max-pool] (groups == 1).

    Args:
        input: (N, C, H, W) fp32/fp16/bf16, CUDA (CPU under TRITON_INTERPRET=1), any strides.
        weight: (K, C, R, S), same dtype/device. bias: (K,) or None.
        stride, padding, dilation: pairs of ints. relu: bool. pool: 1 or 2.
        return_indices: also return the uint8 window indices (pool == 2 only).
    Returns:
        out (N, K, OH//pool, OW//pool) in input's dtype and memory format; indices uint8 of the
        same shape/format when pool == 2 and return_indices, else an empty uint8 tensor.
    """
    return _forward(input, weight, bias, stride, padding, dilation, relu, pool, return_indices)


def _forward(input, weight, bias, stride, padding, dilation, relu, pool, return_indices,
             flat: bool | None = None, config: dict | None = None):
    """forward() with test hooks: force the reduction mode (flat) or a tile config."""
    stride, padding, dilation, oh, ow = check_conv_args(input, weight, stride, padding, dilation,
                                                        pool)
    nb, c, h, w = input.shape
    k, _, r, s = weight.shape
    if bias is not None and (bias.shape != (k,) or bias.dtype != input.dtype
                             or bias.device != input.device):
        raise ValueError(f"wide_conv2d (triton): bias must be ({k},) {input.dtype} on "
                         f"{input.device}, got {tuple(bias.shape)} {bias.dtype} on {bias.device}")
    ph, pw = oh // pool, ow // pool
    fmt = out_memory_format(input)
    out = torch.empty((nb, k, ph, pw), device=input.device, dtype=input.dtype,
                      memory_format=fmt)
    write_idx = pool == 2 and bool(return_indices)
    idx = (torch.empty((nb, k, ph, pw), device=input.device, dtype=torch.uint8, memory_format=fmt)
           if write_idx else input.new_empty(0, dtype=torch.uint8))
    mp = nb * ph * pw
    if mp == 0 or k == 0:
        return out, idx
    if c == 0:  # empty reduction: the conv is the bias
        raise ValueError("wide_conv2d (triton): input has 0 channels")
    flat = use_flat(c) if flat is None else flat
    if flat:
        weight = weight.contiguous()  # the flat reduction indexes it as (K, C*R*S)
    else:
        # (K, R, S, C) order: weight tiles contiguous along c. A no-op for channels_last weights;
        # otherwise one copy of the weight, small next to the conv's N*OH*OW*K*C*R*S work.
        weight = weight.contiguous(memory_format=torch.channels_last)
    args = (input, weight, bias if bias is not None else weight, out, idx if write_idx else out,
            c, h, w, k, mp, ph, pw, *input.stride(), *weight.stride(), *out.stride(),
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    meta = dict(R=r, S=s, HAS_BIAS=bias is not None, RELU=bool(relu), POOL=pool,
                WRITE_IDX=write_idx, FLAT=flat,
                INPUT_PRECISION=input_precision(input.dtype, "conv"))

    def grid(m):
        return (triton.cdiv(mp, m["BLOCK_M"] // (pool * pool)) * triton.cdiv(k, m["BLOCK_N"]),)

    with device_guard(input):
        FWD(grid, args, meta, config)
    return out, idx
