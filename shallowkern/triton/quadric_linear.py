"""Triton kernels of quadric_linear (forward and backward, three forms); launchers only.

Math: see shallowkern/ops/quadric_linear.py (x: (M, n) rows, K outputs, T = n(n+1)/2).

Forward kernels (one program = BLOCK_M rows x BLOCK_N outputs, fp32 accumulators):
  diagonal  acc += dot(x*x, Wq^T) + dot(x, W^T) over n: the square is taken in registers on the
            loaded x tile (in fp32, then rounded to the input dtype for the tensor-core dot), so
            x*x never reaches memory and x is read once for both products.
  full      acc += dot(Z, P^T) over the packed index t: Z[m, t] = x[m, i(t)] * x[m, j(t)] is
            formed on the fly from two gathers of the (cached) x rows through int32 index
            tables, so no B x K x n or B x T tensor exists; only the T = n(n+1)/2 symmetric
            coefficients are multiplied (half of nn.Bilinear's n^2). Then dot(x, W^T) and bias.
  lowrank   per rank s: ha = dot(x, Wa_s^T), hb = dot(x, Wb_s^T) share the x tile; the epilogue
            acc += ha*hb runs in registers; then dot(x, W^T) and bias.
Backward:
  diagonal  gx = dot(gy, W) + 2 x * dot(gy, Wq) in one kernel (two accumulators);
            gWq = gy^T (x*x) and gW = gy^T x by _mm_kernel with the square in its operand load.
  full      gP = gy^T Z with Z formed on the fly (_full_grad_p); gx by _full_grad_x over the
            packed triangle: G[m, t(i,j)] = gy P[:, t] once per entry (K n(n+1)/2 per row, half
            of the dense n^2 K), then G x_j -> gx_i and G x_i -> gx_j; + gy W; gW = gy^T x.
  lowrank   _lowrank_dh recomputes ha, hb per tile and writes da = gy*hb, db = gy*ha (epilogue);
            gx = [da|db|gy] [Wa;Wb;W] and [gWa;gWb;gW] = [da|db|gy]^T x by _mm_kernel.
fp32 uses TF32 tensor cores when torch.backends.cuda.matmul.allow_tf32 is on, IEEE fp32
otherwise; fp16/bf16 accumulate in fp32. One tile configuration per kernel (no autotune): GPU
performance of these kernels is UNMEASURED in this session (interpreter + sm_90 compile checks).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BM, BN, BK = 64, 64, 32  # GPU tiles; the interpreter uses the same (few programs per test)
NUM_WARPS = 4


def interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not interpreting():
        return "tf32"
    return "ieee"


@triton.jit
def _diag_fwd(x_ptr, wq_ptr, w_ptr, b_ptr, y_ptr, M, N, KD, sxm, sxk, swn, swk, sym, syn,
              HAS_BIAS: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pm, pn = tl.program_id(0), tl.program_id(1)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, KD, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :] * sxk,
                    mask=(rm[:, None] < M) & (rk[None, :] < KD), other=0.0)
        wmask = (rk[:, None] < KD) & (rn[None, :] < N)
        woff = rn[None, :] * swn + rk[:, None] * swk
        wq = tl.load(wq_ptr + woff, mask=wmask, other=0.0)
        w = tl.load(w_ptr + woff, mask=wmask, other=0.0)
        xf = x.to(tl.float32)
        acc += tl.dot((xf * xf).to(x.dtype), wq, input_precision=PREC)
        acc += tl.dot(x, w, input_precision=PREC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * sym + rn[None, :] * syn, acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _diag_grad_x(g_ptr, wq_ptr, w_ptr, x_ptr, gx_ptr, M, N, K, sgm, sgk, swk, swn, sxm, sxn,
                 PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """gx[m, c] = sum_k gy[m,k] (W[k,c] + 2 x[m,c] Wq[k,c]); N = n features, K = outputs."""
    pm, pn = tl.program_id(0), tl.program_id(1)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    acc_l = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_q = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        g = tl.load(g_ptr + rm[:, None] * sgm + rk[None, :] * sgk,
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        wmask = (rk[:, None] < K) & (rn[None, :] < N)
        woff = rk[:, None] * swk + rn[None, :] * swn
        acc_l += tl.dot(g, tl.load(w_ptr + woff, mask=wmask, other=0.0), input_precision=PREC)
        acc_q += tl.dot(g, tl.load(wq_ptr + woff, mask=wmask, other=0.0), input_precision=PREC)
    omask = (rm[:, None] < M) & (rn[None, :] < N)
    x = tl.load(x_ptr + rm[:, None] * sxm + rn[None, :] * sxn, mask=omask, other=0.0)
    gx = acc_l + 2.0 * x.to(tl.float32) * acc_q
    tl.store(gx_ptr + rm[:, None] * N + rn[None, :], gx.to(gx_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _mm_kernel(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
               SQUARE_B: tl.constexpr, ACCUMULATE: tl.constexpr, PREC: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """C (+)= A @ op(B), op = elementwise square if SQUARE_B; any strides; C is fp32 or A's dtype."""
    pm, pn = tl.program_id(0), tl.program_id(1)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rm[:, None] * sam + rk[None, :] * sak,
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        b = tl.load(b_ptr + rk[:, None] * sbk + rn[None, :] * sbn,
                    mask=(rk[:, None] < K) & (rn[None, :] < N), other=0.0)
        if SQUARE_B:
            bf = b.to(tl.float32)
            b = (bf * bf).to(b.dtype)
        acc += tl.dot(a, b, input_precision=PREC)
    cmask = (rm[:, None] < M) & (rn[None, :] < N)
    cp = c_ptr + rm[:, None] * scm + rn[None, :] * scn
    if ACCUMULATE:
        acc += tl.load(cp, mask=cmask, other=0.0).to(tl.float32)
    tl.store(cp, acc.to(c_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _full_fwd(x_ptr, p_ptr, ii_ptr, jj_ptr, w_ptr, b_ptr, y_ptr, M, N, KD, T, sxm, sxk, spn,
              spt, swn, swk, HAS_BIAS: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    pm, pn = tl.program_id(0), tl.program_id(1)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    mrow = rm[:, None] < M
    xrow = x_ptr + rm[:, None].to(tl.int64) * sxm
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        rt = t0 + tl.arange(0, BLOCK_T)
        tmask = rt < T
        i = tl.load(ii_ptr + rt, mask=tmask, other=0)
        j = tl.load(jj_ptr + rt, mask=tmask, other=0)
        zmask = mrow & tmask[None, :]
        xi = tl.load(xrow + i[None, :] * sxk, mask=zmask, other=0.0)
        xj = tl.load(xrow + j[None, :] * sxk, mask=zmask, other=0.0)
        z = (xi.to(tl.float32) * xj.to(tl.float32)).to(xi.dtype)
        p = tl.load(p_ptr + rn[None, :].to(tl.int64) * spn + rt[:, None] * spt,
                    mask=tmask[:, None] & (rn[None, :] < N), other=0.0)
        acc += tl.dot(z, p, input_precision=PREC)
    for k0 in range(0, KD, BLOCK_T):
        rk = k0 + tl.arange(0, BLOCK_T)
        x = tl.load(xrow + rk[None, :] * sxk, mask=mrow & (rk[None, :] < KD), other=0.0)
        w = tl.load(w_ptr + rn[None, :] * swn + rk[:, None] * swk,
                    mask=(rk[:, None] < KD) & (rn[None, :] < N), other=0.0)
        acc += tl.dot(x, w, input_precision=PREC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mrow & (rn[None, :] < N))


@triton.jit
def _full_grad_p(g_ptr, x_ptr, ii_ptr, jj_ptr, gp_ptr, M, N, T, sgm, sgn, sxm, sxk,
                 PREC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
                 BLOCK_M: tl.constexpr):
    """gP[k, t] = sum_m gy[m, k] x[m, i(t)] x[m, j(t)]  (one program: BLOCK_N x BLOCK_T)."""
    pn, pt = tl.program_id(0), tl.program_id(1)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    rt = pt * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = rt < T
    i = tl.load(ii_ptr + rt, mask=tmask, other=0)
    j = tl.load(jj_ptr + rt, mask=tmask, other=0)
    acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        mrow = rm[:, None] < M
        gt = tl.load(g_ptr + rm[None, :] * sgm + rn[:, None] * sgn,
                     mask=(rm[None, :] < M) & (rn[:, None] < N), other=0.0)
        xrow = x_ptr + rm[:, None].to(tl.int64) * sxm
        xi = tl.load(xrow + i[None, :] * sxk, mask=mrow & tmask[None, :], other=0.0)
        xj = tl.load(xrow + j[None, :] * sxk, mask=mrow & tmask[None, :], other=0.0)
        z = (xi.to(tl.float32) * xj.to(tl.float32)).to(xi.dtype)
        acc += tl.dot(gt, z, input_precision=PREC)
    tl.store(gp_ptr + rn[:, None].to(tl.int64) * T + rt[None, :],
             acc.to(gp_ptr.dtype.element_ty), mask=(rn[:, None] < N) & tmask[None, :])


@triton.jit
def _full_grad_x(g_ptr, x_ptr, p_ptr, part_ptr, M, N, KD, S, sgm, sgn, sxm, sxk, spn, spt,
                 PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_J: tl.constexpr):
    """The packed half of gx: part[s, m, :] += contributions of triangle rows i = s, s+S, ...

    G[m, t(i,j)] = sum_k gy[m,k] P[k,t(i,j)] for j >= i (one dot per chunk of row i, which is
    contiguous in the packed order), each entry computed ONCE and used twice: the row term
    G x_j goes to feature i (reduced in registers), the column term G x_i to feature j (the
    diagonal gets both: 2 G x_i). Program (row block, split s) owns rows rm of part[s], so the
    read-modify-writes need no atomics, only a barrier between them."""
    pm, s = tl.program_id(0), tl.program_id(1)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    mrow = rm < M
    prow = part_ptr + s.to(tl.int64) * M * KD + rm.to(tl.int64) * KD
    for i in range(s, KD, S):
        xi = tl.load(x_ptr + rm * sxm + i * sxk, mask=mrow, other=0.0).to(tl.float32)
        racc = tl.zeros((BLOCK_M,), dtype=tl.float32)
        tbase = i * KD - (i * (i - 1)) // 2 - i  # t(i, j) = tbase + j
        for j0 in range(i, KD, BLOCK_J):
            rj = j0 + tl.arange(0, BLOCK_J)
            jmask = rj < KD
            g = tl.zeros((BLOCK_M, BLOCK_J), dtype=tl.float32)
            for k0 in range(0, N, BLOCK_N):
                rk = k0 + tl.arange(0, BLOCK_N)
                gy = tl.load(g_ptr + rm[:, None] * sgm + rk[None, :] * sgn,
                             mask=mrow[:, None] & (rk[None, :] < N), other=0.0)
                pt = tl.load(p_ptr + rk[:, None].to(tl.int64) * spn + (tbase + rj)[None, :] * spt,
                             mask=(rk[:, None] < N) & jmask[None, :], other=0.0)
                g += tl.dot(gy, pt, input_precision=PREC)
            m2 = mrow[:, None] & jmask[None, :]
            xj = tl.load(x_ptr + rm[:, None] * sxm + rj[None, :] * sxk, mask=m2,
                         other=0.0).to(tl.float32)
            racc += tl.sum(g * xj, axis=1)
            ptrs = prow[:, None] + rj[None, :]
            tl.store(ptrs, tl.load(ptrs, mask=m2, other=0.0) + g * xi[:, None], mask=m2)
            tl.debug_barrier()
        tl.store(prow + i, tl.load(prow + i, mask=mrow, other=0.0) + racc, mask=mrow)
        tl.debug_barrier()


@triton.jit
def _lowrank_fwd(x_ptr, wa_ptr, wb_ptr, w_ptr, b_ptr, y_ptr, g_ptr, da_ptr, db_ptr, M, N, KD,
                 R, sxm, sxk, swn, swk, HAS_BIAS: tl.constexpr, GRAD: tl.constexpr,
                 PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """Forward (GRAD=False): y = sum_s ha_s*hb_s + x W^T + b. Backward helper (GRAD=True):
    da[:, sN + k] = gy*hb_s, db = gy*ha_s (the epilogue of the same shared-input GEMMs)."""
    pm, pn = tl.program_id(0), tl.program_id(1)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    mrow = rm[:, None] < M
    omask = mrow & (rn[None, :] < N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if GRAD:
        gy = tl.load(g_ptr + rm[:, None] * N + rn[None, :], mask=omask, other=0.0).to(tl.float32)
    for s in range(0, R):
        ha = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        hb = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, KD, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :] * sxk,
                        mask=mrow & (rk[None, :] < KD), other=0.0)
            woff = (s * N + rn[None, :]).to(tl.int64) * swn + rk[:, None] * swk
            wmask = (rk[:, None] < KD) & (rn[None, :] < N)
            ha += tl.dot(x, tl.load(wa_ptr + woff, mask=wmask, other=0.0), input_precision=PREC)
            hb += tl.dot(x, tl.load(wb_ptr + woff, mask=wmask, other=0.0), input_precision=PREC)
        if GRAD:
            off = rm[:, None].to(tl.int64) * (R * N) + s * N + rn[None, :]
            tl.store(da_ptr + off, (gy * hb).to(da_ptr.dtype.element_ty), mask=omask)
            tl.store(db_ptr + off, (gy * ha).to(db_ptr.dtype.element_ty), mask=omask)
        else:
            acc += ha * hb
    if not GRAD:
        for k0 in range(0, KD, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :] * sxk,
                        mask=mrow & (rk[None, :] < KD), other=0.0)
            w = tl.load(w_ptr + rn[None, :] * swn + rk[:, None] * swk,
                        mask=(rk[:, None] < KD) & (rn[None, :] < N), other=0.0)
            acc += tl.dot(x, w, input_precision=PREC)
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=omask)


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------
def _grid(m: int, n: int, bm: int = BM, bn: int = BN):
    return (max(triton.cdiv(m, bm), 1), max(triton.cdiv(n, bn), 1))


_INDEX_CACHE: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def packed_index(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 (i, j) tables of the packed order (cached per n and device)."""
    key = (n, str(device))
    if key not in _INDEX_CACHE:
        idx = torch.triu_indices(n, n, device=device).to(torch.int32)
        _INDEX_CACHE[key] = (idx[0].contiguous(), idx[1].contiguous())
    return _INDEX_CACHE[key]


def grad_x_splits(m: int, n: int, device) -> int:
    """Programs per row block of the full-form gx kernel (triangle rows dealt round-robin):
    enough programs for ~2 waves of the GPU, at most 16 (each adds an (m, n) fp32 partial);
    2 in the interpreter (the split logic is exercised, few programs)."""
    if device.type != "cuda":
        return max(1, min(2, n))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(16, n, triton.cdiv(2 * sms, triton.cdiv(m, BM))))


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None, square_b=False,
       accumulate=False, out_dtype=None) -> torch.Tensor:
    """out (+)= a @ (b*b if square_b else b) through _mm_kernel (any strides)."""
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = torch.empty(m, n, dtype=out_dtype or a.dtype, device=a.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out if accumulate else out.zero_()
    _mm_kernel[_grid(m, n)](a, b, out, m, n, k, a.stride(0), a.stride(1), b.stride(0),
                            b.stride(1), out.stride(0), out.stride(1), SQUARE_B=square_b,
                            ACCUMULATE=accumulate, PREC=input_precision(a.dtype), BLOCK_M=BM,
                            BLOCK_N=BN, BLOCK_K=BK, num_warps=NUM_WARPS)
    return out


def forward(x: torch.Tensor, wq: torch.Tensor, wq2: torch.Tensor | None, w: torch.Tensor,
            bias: torch.Tensor | None, form: str) -> torch.Tensor:
    """(M, n) x -> (M, K); weights as in ops/quadric_linear.py; float32/float16/bfloat16."""
    m, n = x.shape
    k = w.shape[0]
    y = torch.empty(m, k, dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    prec = input_precision(x.dtype)
    b = bias if bias is not None else y  # dummy pointer when HAS_BIAS is False
    if form == "diagonal":
        if wq.stride() != w.stride():
            wq, w = wq.contiguous(), w.contiguous()
        _diag_fwd[_grid(m, k)](x, wq, w, b, y, m, k, n, x.stride(0), x.stride(1), w.stride(0),
                               w.stride(1), y.stride(0), y.stride(1), HAS_BIAS=bias is not None,
                               PREC=prec, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK,
                               num_warps=NUM_WARPS)
    elif form == "full":
        ii, jj = packed_index(n, x.device)
        _full_fwd[_grid(m, k)](x, wq, ii, jj, w, b, y, m, k, n, ii.numel(), x.stride(0),
                               x.stride(1), wq.stride(0), wq.stride(1), w.stride(0), w.stride(1),
                               HAS_BIAS=bias is not None, PREC=prec, BLOCK_M=BM, BLOCK_N=BN,
                               BLOCK_T=BK, num_warps=NUM_WARPS)
    else:
        wq, wq2, w = wq.contiguous(), wq2.contiguous(), w.contiguous()
        _lowrank_fwd[_grid(m, k)](x, wq, wq2, w, b, y, y, y, y, m, k, n, wq.shape[0] // k,
                                  x.stride(0), x.stride(1), w.stride(0), w.stride(1),
                                  HAS_BIAS=bias is not None, GRAD=False, PREC=prec, BLOCK_M=BM,
                                  BLOCK_N=BN, BLOCK_K=BK, num_warps=NUM_WARPS)
    return y


def backward(gy: torch.Tensor, x: torch.Tensor, wq: torch.Tensor, wq2: torch.Tensor | None,
             w: torch.Tensor, form: str, mask) -> tuple[torch.Tensor, ...]:
    """Gradients (input, weight_quad, weight_quad2, weight, bias); off ones are empty."""
    m, n = x.shape
    k = w.shape[0]
    prec = input_precision(x.dtype)
    empty = lambda: x.new_empty(0)  # noqa: E731
    gx = gq = gq2 = gw = gb = None
    gy = gy.contiguous()
    f32 = torch.float32
    if form == "diagonal":
        if mask[0]:
            gx = torch.empty(m, n, dtype=x.dtype, device=x.device)
            if m:
                wq_, w_ = (wq, w) if wq.stride() == w.stride() else (wq.contiguous(), w.contiguous())
                _diag_grad_x[_grid(m, n)](gy, wq_, w_, x, gx, m, n, k, gy.stride(0), gy.stride(1),
                                          w_.stride(0), w_.stride(1), x.stride(0), x.stride(1),
                                          PREC=prec, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK,
                                          num_warps=NUM_WARPS)
        if mask[1]:
            gq = mm(gy.t(), x, square_b=True, out_dtype=f32).to(x.dtype)
    elif form == "full":
        ii, jj = packed_index(n, x.device)
        t = ii.numel()
        if mask[0]:
            gx = torch.empty(m, n, dtype=x.dtype, device=x.device)
            if m:
                splits = grad_x_splits(m, n, x.device)
                part = torch.zeros(splits, m, n, dtype=f32, device=x.device)
                _full_grad_x[(triton.cdiv(m, BM), splits)](
                    gy, x, wq, part, m, k, n, splits, gy.stride(0), gy.stride(1), x.stride(0),
                    x.stride(1), wq.stride(0), wq.stride(1), PREC=prec, BLOCK_M=BM, BLOCK_N=BK,
                    BLOCK_J=BK, num_warps=NUM_WARPS)
                acc = part.sum(0) if splits > 1 else part[0]
                gx = mm(gy, w, out=acc, accumulate=True).to(x.dtype)
        if mask[1]:
            gq = torch.empty(k, t, dtype=f32, device=x.device)
            _full_grad_p[_grid(k, t, BN, BN)](gy, x, ii, jj, gq, m, k, t, gy.stride(0),
                                              gy.stride(1), x.stride(0), x.stride(1), PREC=prec,
                                              BLOCK_N=BN, BLOCK_T=BN, BLOCK_M=BK,
                                              num_warps=NUM_WARPS)
            gq = gq.to(x.dtype)
    else:
        r = wq.shape[0] // k
        wq, wq2 = wq.contiguous(), wq2.contiguous()
        da = torch.empty(m, r * k, dtype=x.dtype, device=x.device)
        db = torch.empty_like(da)
        if m and (mask[0] or mask[1]):
            _lowrank_fwd[_grid(m, k)](x, wq, wq2, w, w, gy, gy, da, db, m, k, n, r, x.stride(0),
                                      x.stride(1), wq.stride(0), wq.stride(1), HAS_BIAS=False,
                                      GRAD=True, PREC=prec, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK,
                                      num_warps=NUM_WARPS)
        if mask[0]:
            acc = mm(da, wq, out_dtype=f32)
            mm(db, wq2, out=acc, accumulate=True)
            mm(gy, w, out=acc, accumulate=True)
            gx = acc.to(x.dtype)
        if mask[1]:
            gq = mm(da.t(), x, out_dtype=f32).to(x.dtype)
            gq2 = mm(db.t(), x, out_dtype=f32).to(x.dtype)
    if mask[2]:
        gw = mm(gy.t(), x, out_dtype=f32).to(x.dtype)
    if mask[3]:
        gb = gy.sum(0, dtype=f32).to(x.dtype)
    return tuple(t if t is not None else empty() for t in (gx, gq, gq2, gw, gb))
