"""Triton kernels of the SpinalNet head (math: shallowkern/ops/spinal_linear.py).

Forward, one launch for the whole chain: a program owns BLOCK_B rows and runs every layer on
them, writing h_i into its rows of the hidden buffer H (B, L*W) and reading h_{i-1} back from it
(a CTA barrier between layers makes the writes visible; the rows are private to the program, so
no other program waits). The output layer is accumulated from H at the end. H is the scratch of
inference and the saved activation of training, so one kernel serves both.

Backward, two launches (plus two column sums):
  1. rows: gz_i = (gy W_o[:, i] + gz_{i+1} W_{i+1}^h) * act'(h_i) for i = L-1..0 into GZ (B, L*W),
     then gx_s = sum_{i: i mod S = s} gz_i W_i^x, per row block;
  2. weights: one grouped launch computing every gW_i^x = gz_i^T x_s, gW_i^h = gz_i^T h_{i-1} and
     gW_o = gy^T H (reductions over B), tiles of all matrices in one grid.
  gb_i and gb_o are column sums of GZ and gy (torch).

Per-layer pointers and sizes are tuples (Triton >= 3.2): the head's shape is a compile-time
constant, so one head compiles one kernel. tl.dot needs tiles >= 16; fp32 runs TF32 on the GPU
(tolerance "tf32") and exact fp32 in the interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ACT_CODES = {"relu": 0, "tanh": 1, "sigmoid": 2, "identity": 3}


@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == 0:
        z = tl.maximum(z, 0.0)
    elif ACT == 1:
        e = tl.exp(-2.0 * tl.abs(z))
        t = (1.0 - e) / (1.0 + e)
        z = tl.where(z >= 0, t, -t)
    elif ACT == 2:
        z = 1.0 / (1.0 + tl.exp(-z))
    return z


@triton.jit
def _act_grad(h, ACT: tl.constexpr):
    if ACT == 0:
        g = tl.where(h > 0, 1.0, 0.0)
    elif ACT == 1:
        g = 1.0 - h * h
    elif ACT == 2:
        g = h * (1.0 - h)
    else:
        g = tl.full(h.shape, 1.0, tl.float32)
    return g


@triton.jit
def _drop(v, MASK, rows, cols, ldm, c0, m2, scale, DROP: tl.constexpr):
    """Dropout of a tile: v * MASK[rows, c0 + cols] / (1 - p) (scale = 1 / (1 - p))."""
    if DROP:
        keep = tl.load(MASK + rows[:, None] * ldm + (c0 + cols)[None, :], mask=m2, other=0)
        v = v * (keep.to(tl.float32) * scale)
    return v


@triton.jit
def _acc_wt(acc, A, lda, a0, rows, rmask, Wt, ldw, cols, cmask, K, MASK, ldm, m0, scale,
            DROP: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += d(A[rows, a0:a0+K]) Wt[cols, :K]^T: a layer's input block against a weight stored
    (out, in) row-major with row stride ldw; d = dropout with mask columns m0.. when DROP."""
    rk = tl.arange(0, BLOCK_K)
    for k0 in tl.range(0, K, BLOCK_K):
        kk = k0 + rk
        kmask = kk < K
        m2 = rmask[:, None] & kmask[None, :]
        a = tl.load(A + rows[:, None] * lda + (a0 + kk)[None, :], mask=m2, other=0.0)
        w = tl.load(Wt + cols[None, :] * ldw + kk[:, None], mask=cmask[None, :] & kmask[:, None],
                    other=0.0)
        if DROP:
            a = _drop(a.to(tl.float32), MASK, rows, kk, ldm, m0, m2, scale, True).to(w.dtype)
        acc = tl.dot(a, w, acc)
    return acc


@triton.jit
def _acc_w(acc, A, lda, a0, rows, rmask, Wm, ldw, w0, cols, cmask, K, BLOCK_K: tl.constexpr):
    """acc += A[rows, a0:a0+K] Wm[:K, w0 + cols]: a gradient block against a weight's columns
    (the backward's gy W_o, gz_{i+1} W^h_{i+1} and gz_i W^x_i)."""
    rk = tl.arange(0, BLOCK_K)
    for k0 in tl.range(0, K, BLOCK_K):
        kk = k0 + rk
        kmask = kk < K
        a = tl.load(A + rows[:, None] * lda + (a0 + kk)[None, :],
                    mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(Wm + kk[:, None] * ldw + (w0 + cols)[None, :],
                    mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    return acc


@triton.jit
def _spinal_fwd_kernel(
    X, WX, WH, BIAS, WO, BO, H, Y, B, stride_x,
    OFFS: tl.constexpr, KS: tl.constexpr, L: tl.constexpr, S: tl.constexpr, W: tl.constexpr,
    O: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_BO: tl.constexpr, ACT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    LW: tl.constexpr = L * W
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    rn = tl.arange(0, BLOCK_N)
    for i in tl.static_range(L):
        off = OFFS[i % S]
        k_s = KS[i % S]
        for n0 in tl.range(0, W, BLOCK_N):
            cols = n0 + rn
            cmask = cols < W
            acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
            acc = _acc_wt(acc, X, stride_x, off, rows, rmask, WX[i], k_s, cols, cmask, k_s,
                          X, 0, 0, 1.0, False, BLOCK_K)
            if i > 0:
                acc = _acc_wt(acc, H, LW, (i - 1) * W, rows, rmask, WH[i - 1], W, cols, cmask, W,
                              X, 0, 0, 1.0, False, BLOCK_K)
            if HAS_BIAS:
                acc += tl.load(BIAS[i] + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
            acc = _act(acc, ACT)
            tl.store(H + rows[:, None] * LW + (i * W + cols)[None, :], acc.to(H.dtype.element_ty),
                     mask=rmask[:, None] & cmask[None, :])
        tl.debug_barrier()  # h_i of this program's rows is read back by layer i + 1
    for o0 in tl.range(0, O, BLOCK_N):
        cols = o0 + rn
        cmask = cols < O
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        acc = _acc_wt(acc, H, LW, 0, rows, rmask, WO, LW, cols, cmask, LW, X, 0, 0, 1.0, False,
                      BLOCK_K)
        if HAS_BO:
            acc += tl.load(BO + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + rows[:, None] * O + cols[None, :], acc.to(Y.dtype.element_ty),
                 mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _spinal_bwd_rows_kernel(
    GY, X, WX, WH, WO, H, GZ, GX, B, stride_x,
    OFFS: tl.constexpr, KS: tl.constexpr, L: tl.constexpr, S: tl.constexpr, W: tl.constexpr,
    O: tl.constexpr, ACT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    LW: tl.constexpr = L * W
    F: tl.constexpr = OFFS[S - 1] + KS[S - 1]
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    rn = tl.arange(0, BLOCK_N)
    for i in tl.static_range(L - 1, -1, -1):
        for n0 in tl.range(0, W, BLOCK_N):
            cols = n0 + rn
            cmask = cols < W
            acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
            # gy W_o[:, iW + cols]
            acc = _acc_w(acc, GY, O, 0, rows, rmask, WO, LW, i * W, cols, cmask, O, BLOCK_K)
            if i < L - 1:  # + gz_{i+1} W_{i+1}^h
                acc = _acc_w(acc, GZ, LW, (i + 1) * W, rows, rmask, WH[i], W, 0, cols, cmask, W,
                             BLOCK_K)
            h = tl.load(H + rows[:, None] * LW + (i * W + cols)[None, :],
                        mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            acc = acc * _act_grad(h, ACT)
            tl.store(GZ + rows[:, None] * LW + (i * W + cols)[None, :], acc.to(GZ.dtype.element_ty),
                     mask=rmask[:, None] & cmask[None, :])
        tl.debug_barrier()  # gz_i is read back for layer i - 1 and for gx
    for s in tl.static_range(S):
        off = OFFS[s]
        k_s = KS[s]
        for c0 in tl.range(0, k_s, BLOCK_N):
            cols = c0 + rn
            cmask = cols < k_s
            acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
            for i in tl.static_range(s, L, S):  # layers reading split s
                acc = _acc_w(acc, GZ, LW, i * W, rows, rmask, WX[i], k_s, 0, cols, cmask, W,
                             BLOCK_K)
            tl.store(GX + rows[:, None] * F + (off + cols)[None, :], acc.to(GX.dtype.element_ty),
                     mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _spinal_bwd_weights_kernel(
    A_PTRS, LDA: tl.constexpr, B_PTRS, LDB: tl.constexpr, M_OFFS, MASK, ldm, scale, C_PTRS,
    MS: tl.constexpr, NS: tl.constexpr, TILES_N: tl.constexpr, START: tl.constexpr,
    NMAT: tl.constexpr, BATCH, DROP: tl.constexpr, F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """C_m (M_m, N_m) = A_m^T d_m(B_m), A_m (BATCH, M_m) with row stride LDA[m], B_m (BATCH, N_m)
    with LDB[m]: every weight gradient of the head, tiles of all matrices in one grid. d_m:
    dropout with mask columns M_OFFS[m].. when DROP (the training op); F32: operands in fp32."""
    pid = tl.program_id(0)
    rk = tl.arange(0, BLOCK_K)
    for m in tl.static_range(NMAT):
        if (pid >= START[m]) & (pid < START[m + 1]):
            t = pid - START[m]
            rm = (t // TILES_N[m]) * BLOCK_M + tl.arange(0, BLOCK_M)
            rn = (t % TILES_N[m]) * BLOCK_N + tl.arange(0, BLOCK_N)
            mmask = rm < MS[m]
            nmask = rn < NS[m]
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k0 in tl.range(0, BATCH, BLOCK_K):
                kk = k0 + rk
                kmask = kk < BATCH
                a = tl.load(A_PTRS[m] + kk[None, :] * LDA[m] + rm[:, None],
                            mask=mmask[:, None] & kmask[None, :], other=0.0)
                m2 = kmask[:, None] & nmask[None, :]
                b = tl.load(B_PTRS[m] + kk[:, None] * LDB[m] + rn[None, :], mask=m2, other=0.0)
                if F32:
                    a = a.to(tl.float32)
                    b = _drop(b.to(tl.float32), MASK, kk, rn, ldm, M_OFFS[m], m2, scale, DROP)
                acc = tl.dot(a, b, acc)
            c = C_PTRS[m]
            tl.store(c + rm[:, None] * NS[m] + rn[None, :], acc.to(c.dtype.element_ty),
                     mask=mmask[:, None] & nmask[None, :])


def weight_grads(a, lda, b, ldb, c, ms, ns, batch, mask_offs=None, mask=None, ldm=0,
                 scale=1.0, f32=False):
    """Launch _spinal_bwd_weights_kernel: c[m] = a[m]^T d(b[m]) for every m (lists of the
    matrices' first elements, leading dimensions and sizes); dropout when mask_offs is given."""
    BM = BN = BK = 32
    tiles_n = tuple(triton.cdiv(n, BN) for n in ns)
    start = [0]
    for mm, tn in zip(ms, tiles_n):
        start.append(start[-1] + triton.cdiv(mm, BM) * tn)
    drop = mask_offs is not None
    _spinal_bwd_weights_kernel[(start[-1],)](
        tuple(a), tuple(lda), tuple(b), tuple(ldb), tuple(mask_offs or (0,) * len(ms)),
        mask if drop else c[0], ldm, scale, tuple(c), tuple(ms), tuple(ns), tiles_n, tuple(start),
        len(ms), batch, DROP=drop, F32=f32, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK)


def _block(n: int, lo: int = 16, hi: int = 64) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def _geometry(input, weight_x, splits):
    F = input.shape[1]
    q, r = divmod(F, splits)
    ks = tuple(q + 1 if s < r else q for s in range(splits))
    offs = tuple(sum(ks[:s]) for s in range(splits))
    return offs, ks


def spinal_forward(input, weight_x, weight_h, bias, out_weight, out_bias, splits: int,
                   activation: str, need_hidden: bool = True):
    """Launch the fused forward. input (B, F) (last dim contiguous); weights as the op takes them.

    Returns (y (B, O), H (B, L*W) or None when not ``need_hidden``). Any float dtype the GPU has
    (fp32 via TF32, fp16, bf16); accumulation in fp32.
    """
    if input.stride(1) != 1:
        input = input.contiguous()
    wx = tuple(w.contiguous() for w in weight_x)
    wh = tuple(w.contiguous() for w in weight_h) or (wx[0],)  # a placeholder when L == 1
    b = tuple(t.contiguous() for t in bias) or (wx[0],)
    B, L, W, O = input.shape[0], len(wx), wx[0].shape[0], out_weight.shape[0]
    offs, ks = _geometry(input, wx, splits)
    H = input.new_empty(B, L * W)
    y = input.new_empty(B, O)
    if B:
        BLOCK_B = _block(B, 16, 32)
        _spinal_fwd_kernel[(triton.cdiv(B, BLOCK_B),)](
            input, wx, wh, b, out_weight.contiguous(),
            out_bias if out_bias is not None else y, H, y, B, input.stride(0),
            OFFS=offs, KS=ks, L=L, S=splits, W=W, O=O, HAS_BIAS=len(bias) > 0,
            HAS_BO=out_bias is not None, ACT=ACT_CODES[activation],
            BLOCK_B=BLOCK_B, BLOCK_N=_block(max(W, O)), BLOCK_K=_block(min(max(ks), W), 16, 64))
    return y, (H if need_hidden else None)


def spinal_backward(grad_out, input, weight_x, weight_h, hidden, out_weight, splits: int,
                    activation: str):
    """The whole backward: (gx, [gW^x], [gW^h], [gb], gW_o, gb_o), see the module docstring."""
    input = input.contiguous()
    gy = grad_out.to(input.dtype).contiguous()
    H = hidden.contiguous()
    wx = tuple(w.contiguous() for w in weight_x)
    wh = tuple(w.contiguous() for w in weight_h) or (wx[0],)
    wo = out_weight.contiguous()
    B, F = input.shape
    L, W, O = len(wx), wx[0].shape[0], wo.shape[0]
    offs, ks = _geometry(input, wx, splits)
    GZ = input.new_empty(B, L * W)
    gx = input.new_empty(B, F)
    gwx = [torch.empty_like(w) for w in wx]
    gwh = [torch.empty_like(w) for w in weight_h]
    gwo = torch.empty_like(wo)
    if B == 0:
        for t in (*gwx, *gwh, gwo):
            t.zero_()
        return gx, gwx, gwh, [input.new_zeros(W) for _ in wx], gwo, input.new_zeros(O)
    BLOCK_B = _block(B, 16, 32)
    _spinal_bwd_rows_kernel[(triton.cdiv(B, BLOCK_B),)](
        gy, input, wx, wh, wo, H, GZ, gx, B, input.stride(0),
        OFFS=offs, KS=ks, L=L, S=splits, W=W, O=O, ACT=ACT_CODES[activation],
        BLOCK_B=BLOCK_B, BLOCK_N=_block(max(W, max(ks))), BLOCK_K=_block(min(W, O)))
    # weight gradients: C = A^T B over the batch, for every matrix in one launch
    a_ptrs, lda, b_ptrs, ldb, c_ptrs, ms, ns = [], [], [], [], [], [], []
    for i in range(L):
        s = i % splits
        a_ptrs.append(GZ[:, i * W:]), lda.append(L * W), ms.append(W)
        b_ptrs.append(input[:, offs[s]:]), ldb.append(F), ns.append(ks[s]), c_ptrs.append(gwx[i])
        if i > 0:
            a_ptrs.append(GZ[:, i * W:]), lda.append(L * W), ms.append(W)
            b_ptrs.append(H[:, (i - 1) * W:]), ldb.append(L * W), ns.append(W), c_ptrs.append(gwh[i - 1])
    a_ptrs.append(gy), lda.append(O), ms.append(O)
    b_ptrs.append(H), ldb.append(L * W), ns.append(L * W), c_ptrs.append(gwo)
    weight_grads(a_ptrs, lda, b_ptrs, ldb, c_ptrs, ms, ns, B)
    gb = list(GZ.view(B, L, W).sum(0).unbind(0))
    return gx, gwx, gwh, gb, gwo, gy.sum(0)
