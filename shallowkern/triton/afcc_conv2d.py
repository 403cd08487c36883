"""Triton block-sparse implicit-GEMM forward of afcc_conv2d (math: shallowkern/ops/afcc_conv2d.py).

Block plan (``ops.afcc_conv2d.block_plan(mask, "cuda")``): channels reordered by out_perm /
in_perm, the (K, C) mask tiled into B x B blocks (B = 16, 32 or 64), kept blocks in CSR.
Program (pixel tile, out-block ob) computes

    out[p, out_perm[ob*B + i]] = b + sum_{cb kept in row ob} sum_{r,s}
                                 X[p, in_perm[cb*B + j], r, s] @ Wpack[blk, r, s][j, i]

with one ``tl.dot`` (BLOCK_P x B) @ (B x B) per kept block and tap: skipped blocks are never
loaded or multiplied. ``Wpack`` (nnzb, R*S, B_in, B_out) holds the kept blocks of w * mask in
permuted order (zero rows/columns pad the tails and the masked pairs inside a kept block).
Accumulation in fp32; fp32 inputs use TF32 tensor cores when ``torch.backends.cuda.matmul.
allow_tf32`` is set, else IEEE fp32 dots. Backward kernels: ``afcc_conv2d_bwd.py``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_P = 64


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def supports(input: Tensor, weight: Tensor) -> str | None:
    """None when the Triton kernels can run these inputs, else why not."""
    if input.device.type == "cpu" and not interpreting():
        return "Triton on CPU needs TRITON_INTERPRET=1"
    if input.dtype not in DTYPES:
        return f"Triton afcc_conv2d has no {input.dtype} kernel"
    if input.dtype == torch.bfloat16 and interpreting():
        return "bf16 is broken in the Triton interpreter"
    if max(input.numel(), weight.numel()) >= 2**31:
        return "tensor too large for int32 indexing"
    return None


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def block_rows(plan) -> Tensor:
    """Out-block of each kept block, in CSR order."""
    nob = plan.row_ptr.numel() - 1
    return torch.repeat_interleave(torch.arange(nob, device=plan.row_ptr.device),
                                   plan.row_ptr.diff())


def pack_weight(weight: Tensor, mask: Tensor, plan) -> Tensor:
    """(nnzb, R*S, B_in, B_out) kept blocks of weight * mask in permuted channel order."""
    k, c, r, s = weight.shape
    b = plan.block_out
    nob, ncb = plan.row_ptr.numel() - 1, plan.col_ptr.numel() - 1
    wm = torch.where(mask[:, :, None, None], weight, torch.zeros((), dtype=weight.dtype,
                                                                 device=weight.device))
    wp = wm.index_select(0, plan.out_perm).index_select(1, plan.in_perm)
    wp = F.pad(wp, (0, 0, 0, 0, 0, ncb * b - c, 0, nob * b - k)).view(nob, b, ncb, b, r, s)
    blocks = wp[block_rows(plan), :, plan.col_idx]  # (nnzb, B_out, B_in, R, S)
    return blocks.permute(0, 3, 4, 2, 1).reshape(-1, r * s, b, b).contiguous()


# --- shared by the forward and backward kernels (afcc_conv2d_bwd.py) -------------------------
@triton.jit
def channel_block(perm_ptr, blk, n_channels, B: tl.constexpr):
    """Permuted channels of block ``blk``: (position, in range, original channel id)."""
    pos = blk * B + tl.arange(0, B)
    ok = pos < n_channels
    return pos, ok, tl.load(perm_ptr + pos, mask=ok, other=0)


@triton.jit
def pixel_tile(p0, total, HH, WW, BLOCK_P: tl.constexpr):
    """Pixels p0 .. p0 + BLOCK_P of an (N, HH, WW) map: (in range, n, row, column)."""
    p = p0 + tl.arange(0, BLOCK_P)
    return p < total, p // (HH * WW), (p // WW) % HH, p % WW


@triton.jit
def input_tap(x_ptr, n, oh, ow, p_ok, ch, c_ok, tap, C, H, W, SH, SW, PH, PW, DH, DW,
              S: tl.constexpr):
    """The (BLOCK_P, B) input tile that tap ``tap`` of output pixels (n, oh, ow) reads from
    channels ``ch`` (zero padding outside the map)."""
    ih = oh * SH - PH + (tap // S) * DH
    iw = ow * SW - PW + (tap % S) * DW
    ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    xo = ((n * C)[:, None] + ch[None, :]) * (H * W) + (ih * W + iw)[:, None]
    return tl.load(x_ptr + xo, mask=ok[:, None] & c_ok[None, :], other=0.0)


@triton.jit
def wpack_offsets(blk, tap, j, i, RS: tl.constexpr, B: tl.constexpr):
    """Offsets of Wpack[blk, tap][j, i] (in-channel j, out-channel i of the block)."""
    return ((blk * RS + tap) * B + j) * B + i


@triton.jit
def _afcc_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, out_perm_ptr, in_perm_ptr, row_ptr_ptr,
                     col_idx_ptr, N, C, H, W, K, OH, OW, SH, SW, PH, PW, DH, DW,
                     R: tl.constexpr, S: tl.constexpr, B: tl.constexpr, BLOCK_P: tl.constexpr,
                     HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    ob = tl.program_id(1)
    p_ok, n, oh, ow = pixel_tile(tl.program_id(0) * BLOCK_P, N * OH * OW, OH, OW, BLOCK_P)
    j = tl.arange(0, B)
    acc = tl.zeros((BLOCK_P, B), dtype=tl.float32)
    start = tl.load(row_ptr_ptr + ob)
    end = tl.load(row_ptr_ptr + ob + 1)
    for blk in range(start, end):
        _, c_ok, ch = channel_block(in_perm_ptr, tl.load(col_idx_ptr + blk), C, B)
        # taps as a runtime loop: unrolled, fp32 tiles of all taps were kept in shared memory
        for tap in range(R * S):
            xt = input_tap(x_ptr, n, oh, ow, p_ok, ch, c_ok, tap, C, H, W, SH, SW, PH, PW, DH,
                           DW, S)
            wt = tl.load(w_ptr + wpack_offsets(blk, tap, j[:, None], j[None, :], R * S, B))
            acc += tl.dot(xt, wt, input_precision=INPUT_PRECISION)
    _, k_ok, kout = channel_block(out_perm_ptr, ob, K, B)
    if HAS_BIAS:
        acc += tl.load(b_ptr + kout, mask=k_ok, other=0.0).to(tl.float32)[None, :]
    oo = ((n * K)[:, None] + kout[None, :]) * (OH * OW) + (oh * OW + ow)[:, None]
    tl.store(out_ptr + oo, acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & k_ok[None, :])


def forward(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None, plan, stride,
            padding, dilation) -> Tensor:
    """(N, K, OH, OW) contiguous; ``plan`` a fixed-size BlockPlan (B in 16, 32, 64)."""
    x = input.contiguous()
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    oh = (h + 2 * padding[0] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    out = torch.empty(n, k, oh, ow, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    b = plan.block_out
    wpack = pack_weight(weight, mask, plan)
    nob = plan.row_ptr.numel() - 1
    grid = (triton.cdiv(n * oh * ow, BLOCK_P), nob)
    _afcc_fwd_kernel[grid](
        x, wpack, bias if bias is not None else x, out, plan.out_perm, plan.in_perm, plan.row_ptr,
        plan.col_idx, n, c, h, w, k, oh, ow, stride[0], stride[1], padding[0], padding[1],
        dilation[0], dilation[1], R=r, S=s, B=b, BLOCK_P=BLOCK_P, HAS_BIAS=bias is not None,
        INPUT_PRECISION=_precision(x.dtype), num_warps=4)
    return out
