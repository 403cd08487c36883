"""Triton kernels of the SpinalNet head in training with BatchNorm batch statistics and dropout.

Math and mask layout: shallowkern/ops/spinal_train.py (backward formulas in
csrc/cpu/spinal_linear_train.cpp). BatchNorm needs every row of z_i before any h_i exists, so
each layer is one launch whose programs own a block of columns and all rows (three passes over
their column block: z and its sum, the squared deviations, then xh / h); that is the fewest
launches the math allows without a grid-wide barrier:

  forward   L layer launches + 1 output launch (row blocks)
  backward  L layer launches (gy W_o, the gz_{i+1} W_{i+1}^h chain, act', the BN backward with
            its two column sums, gb) + 1 launch for gx (row blocks) + 1 grouped launch for every
            weight gradient (gW_i^x, gW_i^h, gW_o against the dropped inputs: the inference op's
            weight kernel with dropout on); gb_o = sum gy.

The tile loops (a layer input against a weight, a gradient against a weight's columns, dropout
of a tile) are the @triton.jit helpers of triton/spinal_linear.py, shared with the inference op.

Dropout multiplies by the saved uint8 mask / (1 - p) wherever an input is read, so nothing
dropped is materialised; nor is any concatenation ([x_s | h_{i-1}] is two dots into one
accumulator). fp32 accumulation; tl.dot tiles >= 16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .spinal_linear import ACT_CODES, _acc_w, _acc_wt, _act, _act_grad, _block, _drop, weight_grads


@triton.jit
def _train_layer_fwd(
    X, stride_x, WX, WH, BIAS, GAM, BET, MASK, ldm, mo, H, XH, MEAN, UVAR, RSTD, B, scale, eps,
    OFF: tl.constexpr, K: tl.constexpr, I: tl.constexpr, W: tl.constexpr, LW: tl.constexpr,
    HAS_BIAS: tl.constexpr, BN: tl.constexpr, AFFINE: tl.constexpr, DROP: tl.constexpr,
    ACT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < W
    rb = tl.arange(0, BLOCK_B)
    s1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for r0 in tl.range(0, B, BLOCK_B):
        rows = r0 + rb
        rmask = rows < B
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        acc = _acc_wt(acc, X, stride_x, OFF, rows, rmask, WX, K, cols, cmask, K, MASK, ldm, mo,
                      scale, DROP, BLOCK_K)
        if I > 0:
            acc = _acc_wt(acc, H, LW, (I - 1) * W, rows, rmask, WH, W, cols, cmask, W, MASK, ldm,
                          mo + K, scale, DROP, BLOCK_K)
        if HAS_BIAS:
            acc += tl.load(BIAS + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        o2 = rmask[:, None] & cmask[None, :]
        hp = H + rows[:, None] * LW + (I * W + cols)[None, :]
        if BN:  # z parked in H's slice (fp32 sums; h overwrites it in pass 3)
            tl.store(hp, acc.to(H.dtype.element_ty), mask=o2)
            s1 += tl.sum(tl.where(o2, acc, 0.0), axis=0)
        else:
            tl.store(hp, _act(acc, ACT).to(H.dtype.element_ty), mask=o2)
    if BN:
        mean = s1 / B
        s2 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for r0 in tl.range(0, B, BLOCK_B):
            rows = r0 + rb
            o2 = (rows < B)[:, None] & cmask[None, :]
            z = tl.load(H + rows[:, None] * LW + (I * W + cols)[None, :], mask=o2, other=0.0)
            d = tl.where(o2, z.to(tl.float32) - mean[None, :], 0.0)
            s2 += tl.sum(d * d, axis=0)
        var = s2 / B
        rstd = 1.0 / tl.sqrt(var + eps)
        tl.store(MEAN + cols, mean.to(MEAN.dtype.element_ty), mask=cmask)
        tl.store(UVAR + cols, (var * B / tl.maximum(B - 1, 1)).to(UVAR.dtype.element_ty), mask=cmask)
        tl.store(RSTD + cols, rstd.to(RSTD.dtype.element_ty), mask=cmask)
        if AFFINE:
            gam = tl.load(GAM + cols, mask=cmask, other=1.0).to(tl.float32)
            bet = tl.load(BET + cols, mask=cmask, other=0.0).to(tl.float32)
        for r0 in tl.range(0, B, BLOCK_B):
            rows = r0 + rb
            o2 = (rows < B)[:, None] & cmask[None, :]
            hp = H + rows[:, None] * LW + (I * W + cols)[None, :]
            xh = (tl.load(hp, mask=o2, other=0.0).to(tl.float32) - mean[None, :]) * rstd[None, :]
            tl.store(XH + rows[:, None] * LW + (I * W + cols)[None, :], xh.to(XH.dtype.element_ty),
                     mask=o2)
            n = xh * gam[None, :] + bet[None, :] if AFFINE else xh
            tl.store(hp, _act(n, ACT).to(H.dtype.element_ty), mask=o2)


@triton.jit
def _train_out_fwd(H, WO, BO, MASK, ldm, mo, Y, B, scale, LW: tl.constexpr, O: tl.constexpr,
                   HAS_BO: tl.constexpr, DROP: tl.constexpr, BLOCK_B: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    rn = tl.arange(0, BLOCK_N)
    for o0 in tl.range(0, O, BLOCK_N):
        cols = o0 + rn
        cmask = cols < O
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        acc = _acc_wt(acc, H, LW, 0, rows, rmask, WO, LW, cols, cmask, LW, MASK, ldm, mo, scale,
                      DROP, BLOCK_K)
        if HAS_BO:
            acc += tl.load(BO + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + rows[:, None] * O + cols[None, :], acc.to(Y.dtype.element_ty),
                 mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _train_layer_bwd(
    GY, WO, WH1, H, XH, RSTD, GAM, MASK, ldm, mo_out, mo_h1, GZ, GB, GGAM, GBET, B, scale,
    I: tl.constexpr, L: tl.constexpr, W: tl.constexpr, O: tl.constexpr, BN: tl.constexpr,
    AFFINE: tl.constexpr, DROP: tl.constexpr, ACT: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    LW: tl.constexpr = L * W
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < W
    rb = tl.arange(0, BLOCK_B)
    s1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    s2 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for r0 in tl.range(0, B, BLOCK_B):
        rows = r0 + rb
        rmask = rows < B
        o2 = rmask[:, None] & cmask[None, :]
        g = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        # gy W_o[:, iW + cols], then the output mask
        g = _acc_w(g, GY, O, 0, rows, rmask, WO, LW, I * W, cols, cmask, O, BLOCK_K)
        g = _drop(g, MASK, rows, I * W + cols, ldm, mo_out, o2, scale, DROP)
        if I < L - 1:  # + d(gz_{i+1} W_{i+1}^h), the mask of layer i+1's h input
            t = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
            t = _acc_w(t, GZ, LW, (I + 1) * W, rows, rmask, WH1, W, 0, cols, cmask, W, BLOCK_K)
            g += _drop(t, MASK, rows, cols, ldm, mo_h1, o2, scale, DROP)
        h = tl.load(H + rows[:, None] * LW + (I * W + cols)[None, :], mask=o2, other=0.0)
        g = tl.where(o2, g * _act_grad(h.to(tl.float32), ACT), 0.0)
        if BN:
            xh = tl.load(XH + rows[:, None] * LW + (I * W + cols)[None, :], mask=o2, other=0.0)
            s2 += tl.sum(g * xh.to(tl.float32), axis=0)
        s1 += tl.sum(g, axis=0)
        tl.store(GZ + rows[:, None] * LW + (I * W + cols)[None, :], g.to(GZ.dtype.element_ty), mask=o2)
    if BN:
        if AFFINE:
            tl.store(GGAM + cols, s2.to(GGAM.dtype.element_ty), mask=cmask)
            tl.store(GBET + cols, s1.to(GBET.dtype.element_ty), mask=cmask)
            f = tl.load(GAM + cols, mask=cmask, other=1.0).to(tl.float32)
        else:
            f = tl.full((BLOCK_N,), 1.0, tl.float32)
        f = f * tl.load(RSTD + cols, mask=cmask, other=0.0).to(tl.float32)
        gb = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for r0 in tl.range(0, B, BLOCK_B):
            rows = r0 + rb
            o2 = (rows < B)[:, None] & cmask[None, :]
            p = GZ + rows[:, None] * LW + (I * W + cols)[None, :]
            gn = tl.load(p, mask=o2, other=0.0).to(tl.float32)
            xh = tl.load(XH + rows[:, None] * LW + (I * W + cols)[None, :], mask=o2, other=0.0)
            gz = f[None, :] * (gn - s1[None, :] / B - xh.to(tl.float32) * s2[None, :] / B)
            gz = tl.where(o2, gz, 0.0)
            gb += tl.sum(gz, axis=0)
            tl.store(p, gz.to(GZ.dtype.element_ty), mask=o2)
        tl.store(GB + cols, gb.to(GB.dtype.element_ty), mask=cmask)
    else:
        tl.store(GB + cols, s1.to(GB.dtype.element_ty), mask=cmask)


@triton.jit
def _train_gx(GZ, WX, MASK, ldm, MOS, GX, B, scale, OFFS: tl.constexpr, KS: tl.constexpr,
              L: tl.constexpr, S: tl.constexpr, W: tl.constexpr, DROP: tl.constexpr,
              BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """gx_s = sum over the layers i reading split s of d_i(gz_i W_i^x), per row block."""
    LW: tl.constexpr = L * W
    F: tl.constexpr = OFFS[S - 1] + KS[S - 1]
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    rn = tl.arange(0, BLOCK_N)
    for s in tl.static_range(S):
        for c0 in tl.range(0, KS[s], BLOCK_N):
            cols = c0 + rn
            cmask = cols < KS[s]
            o2 = rmask[:, None] & cmask[None, :]
            out = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
            for i in tl.static_range(s, L, S):
                acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
                acc = _acc_w(acc, GZ, LW, i * W, rows, rmask, WX[i], KS[s], 0, cols, cmask, W,
                             BLOCK_K)
                out += _drop(acc, MASK, rows, cols, ldm, MOS[i], o2, scale, DROP)
            tl.store(GX + rows[:, None] * F + (OFFS[s] + cols)[None, :], out.to(GX.dtype.element_ty),
                     mask=o2)


def _layout(F, splits, L, W):
    q, r = divmod(F, splits)
    ks = tuple(q + 1 if s < r else q for s in range(splits))
    offs = tuple(sum(ks[:s]) for s in range(splits))
    mo, c = [], 0
    for i in range(L):
        mo.append(c)
        c += ks[i % splits] + (W if i else 0)
    mo.append(c)
    return offs, ks, tuple(mo), c + L * W


def train_forward(input, weight_x, weight_h, bias, out_weight, out_bias, bn_weight, bn_bias,
                  dropout_mask, batch_norm, eps, dropout, splits, activation, backend=""):
    """(y, mean, unbiased var, H, XH, rstd, mask), as shallowkern::spinal_linear_train_forward."""
    x = input if input.stride(1) == 1 else input.contiguous()
    B, F = x.shape
    wx = [w.contiguous() for w in weight_x]
    L, W = len(wx), wx[0].shape[0]
    offs, ks, mo, M = _layout(F, splits, L, W)
    drop = dropout > 0
    mask = x.new_empty(0, dtype=torch.uint8)
    if drop:
        mask = dropout_mask.to(torch.uint8, copy=True).contiguous() if dropout_mask is not None \
            else torch.empty(B, M, dtype=torch.uint8, device=x.device).bernoulli_(1 - dropout)
    nl = L if batch_norm else 0
    H = x.new_empty(B, L * W)
    XH = x.new_empty(B, L * W) if batch_norm else x.new_empty(0)
    mean, uvar = x.new_zeros(nl, W), x.new_ones(nl, W)
    rstd = x.new_empty(nl, W)
    y = x.new_empty(B, out_weight.shape[0])
    if B == 0:
        return y, mean, uvar, H, XH, rstd, mask
    scale = 1.0 / (1.0 - dropout)
    affine = batch_norm and len(bn_weight) > 0
    BN_, BK = _block(W, 16, 64), _block(min(max(ks), W), 16, 64)
    BB = _block(B, 16, 64)
    for i in range(L):
        s = i % splits
        pick = lambda ts, j: ts[j].contiguous() if len(ts) else H  # H: an unused placeholder
        stat = (lambda t: t[i]) if batch_norm else (lambda t: H)
        _train_layer_fwd[(triton.cdiv(W, BN_),)](
            x, x.stride(0), wx[i], weight_h[i - 1].contiguous() if i else H, pick(bias, i),
            pick(bn_weight, i) if affine else H, pick(bn_bias, i) if affine else H,
            mask if drop else H, M, mo[i], H, XH if batch_norm else H, stat(mean), stat(uvar),
            stat(rstd), B, scale, float(eps),
            OFF=offs[s], K=ks[s], I=i, W=W, LW=L * W, HAS_BIAS=len(bias) > 0, BN=bool(batch_norm),
            AFFINE=affine, DROP=drop, ACT=ACT_CODES[activation], BLOCK_B=BB, BLOCK_N=BN_,
            BLOCK_K=BK)
    O = out_weight.shape[0]
    BBo = _block(B, 16, 32)
    _train_out_fwd[(triton.cdiv(B, BBo),)](
        H, out_weight.contiguous(), out_bias if out_bias is not None else y, mask if drop else H, M,
        mo[L], y, B, scale, LW=L * W, O=O, HAS_BO=out_bias is not None, DROP=drop, BLOCK_B=BBo,
        BLOCK_N=_block(O), BLOCK_K=_block(L * W, 16, 64))
    return y, mean, uvar, H, XH, rstd, mask


def train_backward(grad_out, input, weight_x, weight_h, out_weight, bn_weight, hidden, xhat, rstd,
                   mask, batch_norm, dropout, splits, activation, backend=""):
    """As shallowkern::spinal_linear_train_backward: (gx, [gW^x], [gW^h], [gb], gW_o, gb_o,
    [ggamma], [gbeta])."""
    x = input.contiguous()
    gy = grad_out.to(x.dtype).contiguous()
    B, F = x.shape
    wx = [w.contiguous() for w in weight_x]
    wh = [w.contiguous() for w in weight_h]
    wo = out_weight.contiguous()
    L, W, O = len(wx), wx[0].shape[0], wo.shape[0]
    offs, ks, mo, M = _layout(F, splits, L, W)
    drop = dropout > 0
    affine = batch_norm and len(bn_weight) > 0
    H = hidden.contiguous()
    gwx = [torch.zeros_like(w) for w in wx]
    gwh = [torch.zeros_like(w) for w in wh]
    gb = [x.new_zeros(W) for _ in range(L)]
    ggam = [x.new_zeros(W) for _ in range(L)] if affine else []
    gbet = [x.new_zeros(W) for _ in range(L)] if affine else []
    gwo = torch.zeros_like(wo)
    gx = torch.zeros_like(x)
    if B == 0:
        return gx, gwx, gwh, gb, gwo, gy.sum(0), ggam, gbet
    m = mask.contiguous() if drop else H
    XH = xhat.contiguous() if batch_norm else H
    RS = rstd.contiguous() if batch_norm else H
    GZ = x.new_empty(B, L * W)
    scale = 1.0 / (1.0 - dropout)
    BN_, BB = _block(W, 16, 64), _block(B, 16, 64)
    for i in range(L - 1, -1, -1):
        k1 = ks[(i + 1) % splits] if i < L - 1 else 0
        _train_layer_bwd[(triton.cdiv(W, BN_),)](
            gy, wo, wh[i] if i < L - 1 else H, H, XH, RS[i] if batch_norm else H,
            bn_weight[i].contiguous() if affine else H, m, M, mo[L],
            (mo[i + 1] + k1) if i < L - 1 else 0, GZ, gb[i], ggam[i] if affine else H,
            gbet[i] if affine else H, B, scale, I=i, L=L, W=W, O=O, BN=bool(batch_norm),
            AFFINE=affine, DROP=drop, ACT=ACT_CODES[activation], BLOCK_B=BB, BLOCK_N=BN_,
            BLOCK_K=_block(min(W, O), 16, 64))
    BBx = _block(B, 16, 32)
    _train_gx[(triton.cdiv(B, BBx),)](
        GZ, tuple(wx), m, M, tuple(mo[:L]), gx, B, scale, OFFS=offs, KS=ks, L=L, S=splits, W=W,
        DROP=drop, BLOCK_B=BBx, BLOCK_N=_block(max(ks)), BLOCK_K=_block(W, 16, 64))
    a, lda, b, ldb, moff, c, ms, ns = [], [], [], [], [], [], [], []
    for i in range(L):
        s = i % splits
        a.append(GZ[:, i * W:]), lda.append(L * W), ms.append(W), moff.append(mo[i])
        b.append(x[:, offs[s]:]), ldb.append(F), ns.append(ks[s]), c.append(gwx[i])
        if i > 0:
            a.append(GZ[:, i * W:]), lda.append(L * W), ms.append(W), moff.append(mo[i] + ks[s])
            b.append(H[:, (i - 1) * W:]), ldb.append(L * W), ns.append(W), c.append(gwh[i - 1])
    a.append(gy), lda.append(O), ms.append(O), moff.append(mo[L])
    b.append(H), ldb.append(L * W), ns.append(L * W), c.append(gwo)
    # against the dropped inputs: C_m = A_m^T d_m(B_m), fp32 operands
    weight_grads(a, lda, b, ldb, c, ms, ns, B, mask_offs=moff if drop else None, mask=m, ldm=M,
                 scale=scale, f32=True)
    return gx, gwx, gwh, gb, gwo, gy.sum(0), ggam, gbet
