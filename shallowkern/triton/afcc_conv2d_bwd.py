"""Triton block-sparse backward of afcc_conv2d (forward and block plan: afcc_conv2d.py).

Input gradient, program (input-pixel tile, in-block cb), kept out-blocks of column cb (CSC):

    gx[p, in_perm[cb*B + j]] = sum_{ob kept in column cb} sum_{r,s : oh, ow integral, in range}
                               gY[(n, oh, ow), out_perm[ob*B + i]] @ Wpack[blk, r, s]^T[i, j]
    with oh = (ih + ph - r*dh) / sh, ow = (iw + pw - s*dw) / sw

(every input channel is written by exactly one program: no atomics). Weight gradient, program
(kept block blk, tap r*S+s), reducing over all output pixels in BLOCK_P steps:

    gWpack[blk, r, s][j, i] = sum_p X[p, in_perm[cb*B + j], r, s] * gY[p, out_perm[ob*B + i]]

then scattered back to the dense (K, C, R, S) layout (zero outside the mask).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .afcc_conv2d import (BLOCK_P, _precision, block_rows, channel_block, input_tap, pack_weight,
                          pixel_tile, wpack_offsets)


@triton.jit
def _afcc_bwd_input_kernel(go_ptr, w_ptr, gx_ptr, out_perm_ptr, in_perm_ptr, col_ptr_ptr,
                           row_idx_ptr, csc_ptr, N, C, H, W, K, OH, OW, SH, SW, PH, PW, DH, DW,
                           R: tl.constexpr, S: tl.constexpr, B: tl.constexpr,
                           BLOCK_P: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    cb = tl.program_id(1)
    p_ok, n, ih, iw = pixel_tile(tl.program_id(0) * BLOCK_P, N * H * W, H, W, BLOCK_P)
    i = tl.arange(0, B)
    acc = tl.zeros((BLOCK_P, B), dtype=tl.float32)
    start = tl.load(col_ptr_ptr + cb)
    end = tl.load(col_ptr_ptr + cb + 1)
    for t in range(start, end):
        blk = tl.load(csc_ptr + t)
        _, k_ok, kin = channel_block(out_perm_ptr, tl.load(row_idx_ptr + t), K, B)
        for tap in range(R * S):
            hn = ih + PH - (tap // S) * DH
            wn = iw + PW - (tap % S) * DW
            oh = hn // SH
            ow = wn // SW
            ok = (p_ok & (hn >= 0) & (wn >= 0) & (hn - oh * SH == 0) & (wn - ow * SW == 0)
                  & (oh < OH) & (ow < OW))
            go = ((n * K)[:, None] + kin[None, :]) * (OH * OW) + (oh * OW + ow)[:, None]
            gt = tl.load(go_ptr + go, mask=ok[:, None] & k_ok[None, :], other=0.0)
            # Wpack[blk, r, s] is (B_in j, B_out i): load it as (i, j)
            wt = tl.load(w_ptr + wpack_offsets(blk, tap, i[None, :], i[:, None], R * S, B))
            acc += tl.dot(gt, wt, input_precision=INPUT_PRECISION)
    _, c_ok, cin = channel_block(in_perm_ptr, cb, C, B)
    xo = ((n * C)[:, None] + cin[None, :]) * (H * W) + (ih * W + iw)[:, None]
    tl.store(gx_ptr + xo, acc.to(gx_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def _afcc_bwd_weight_kernel(go_ptr, x_ptr, gw_ptr, out_perm_ptr, in_perm_ptr, brow_ptr,
                            col_idx_ptr, N, C, H, W, K, OH, OW, SH, SW, PH, PW, DH, DW,
                            R: tl.constexpr, S: tl.constexpr, B: tl.constexpr,
                            BLOCK_P: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    blk = tl.program_id(0)
    tap = tl.program_id(1)
    _, k_ok, kin = channel_block(out_perm_ptr, tl.load(brow_ptr + blk), K, B)
    _, c_ok, cin = channel_block(in_perm_ptr, tl.load(col_idx_ptr + blk), C, B)
    acc = tl.zeros((B, B), dtype=tl.float32)
    for p0 in range(0, N * OH * OW, BLOCK_P):
        p_ok, n, oh, ow = pixel_tile(p0, N * OH * OW, OH, OW, BLOCK_P)
        xt = input_tap(x_ptr, n, oh, ow, p_ok, cin, c_ok, tap, C, H, W, SH, SW, PH, PW, DH, DW,
                       S)
        go = ((n * K)[:, None] + kin[None, :]) * (OH * OW) + (oh * OW + ow)[:, None]
        gt = tl.load(go_ptr + go, mask=p_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(tl.trans(xt), gt, input_precision=INPUT_PRECISION)
    i = tl.arange(0, B)
    tl.store(gw_ptr + wpack_offsets(blk, tap, i[:, None], i[None, :], R * S, B), acc)


def backward(grad_out: Tensor, input: Tensor, weight: Tensor, mask: Tensor, plan, stride,
             padding, dilation, output_mask) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_input, grad_weight, grad_bias), empty where output_mask is False."""
    x = input.contiguous()
    go = grad_out.contiguous()
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    oh, ow = go.shape[2], go.shape[3]
    b = plan.block_out
    prec = _precision(x.dtype)
    geo = (n, c, h, w, k, oh, ow, stride[0], stride[1], padding[0], padding[1], dilation[0],
           dilation[1])
    gi = gw = gb = x.new_empty(0)
    if output_mask[0]:
        gi = torch.empty_like(x)
        if gi.numel():
            grid = (triton.cdiv(n * h * w, BLOCK_P), plan.col_ptr.numel() - 1)
            _afcc_bwd_input_kernel[grid](
                go, pack_weight(weight, mask, plan), gi, plan.out_perm, plan.in_perm,
                plan.col_ptr, plan.row_idx, plan.csc_to_csr, *geo, R=r, S=s, B=b,
                BLOCK_P=BLOCK_P, INPUT_PRECISION=prec, num_warps=4)
    if output_mask[1]:
        nnzb = plan.col_idx.numel()
        gpack = torch.zeros(nnzb, r * s, b, b, dtype=torch.float32, device=x.device)
        if nnzb and n:
            brow = block_rows(plan)
            _afcc_bwd_weight_kernel[(nnzb, r * s)](
                go, x, gpack, plan.out_perm, plan.in_perm, brow, plan.col_idx, *geo, R=r, S=s,
                B=b, BLOCK_P=BLOCK_P, INPUT_PRECISION=prec, num_warps=4)
        gw = _unpack(gpack, plan, weight.shape).to(weight.dtype)
        gw = torch.where(mask[:, :, None, None], gw, torch.zeros((), dtype=gw.dtype,
                                                                 device=gw.device))
    if output_mask[2]:
        gb = go.sum((0, 2, 3), dtype=torch.float32).to(x.dtype)
    return gi, gw, gb


def _unpack(gpack: Tensor, plan, shape) -> Tensor:
    """(nnzb, R*S, B_in, B_out) blocks -> dense (K, C, R, S) in the original channel order."""
    k, c, r, s = shape
    b = plan.block_out
    nob, ncb = plan.row_ptr.numel() - 1, plan.col_ptr.numel() - 1
    dense = gpack.new_zeros(nob, b, ncb, b, r, s)
    if gpack.numel():
        dense[block_rows(plan), :, plan.col_idx] = gpack.view(-1, r, s, b, b).permute(0, 4, 3, 1, 2)
    dense = dense.view(nob * b, ncb * b, r, s)[:k, :c]
    out = torch.empty_like(dense)
    out[plan.out_perm.unsqueeze(1), plan.in_perm.unsqueeze(0)] = dense
    return out
