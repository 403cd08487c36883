// Skinny A B^T products and broadcast op(A) B products (see
// csrc/include/shallowkern/cpu/small_gemm.h).
#include "shallowkern/cpu/small_gemm.h"

#include <algorithm>
#include <array>
#include <utility>

#include <ATen/Parallel.h>

#include "shallowkern/cpu/features.h"

namespace shallowkern {
namespace cpu {

#ifdef SK_X86_SIMD
namespace {

// R rows x NB outputs, accumulated over the whole of K in 16-lane vectors (the tail masked).
template <int R, int NB>
__attribute__((target("avx512f"))) void micro(int64_t K, float alpha, const float* A,
                                              int64_t lda, const float* B, int64_t ldb,
                                              float beta, float* C, int64_t ldc) {
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int n = 0; n < NB; ++n) acc[r][n] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 a[R];
    for (int r = 0; r < R; ++r) a[r] = _mm512_loadu_ps(A + r * lda + k);
    for (int n = 0; n < NB; ++n) {
      const __m512 b = _mm512_loadu_ps(B + n * ldb + k);
      for (int r = 0; r < R; ++r) acc[r][n] = _mm512_fmadd_ps(a[r], b, acc[r][n]);
    }
  }
  if (k < K) {
    const __mmask16 m = static_cast<__mmask16>((1u << (K - k)) - 1u);
    __m512 a[R];
    for (int r = 0; r < R; ++r) a[r] = _mm512_maskz_loadu_ps(m, A + r * lda + k);
    for (int n = 0; n < NB; ++n) {
      const __m512 b = _mm512_maskz_loadu_ps(m, B + n * ldb + k);
      for (int r = 0; r < R; ++r) acc[r][n] = _mm512_fmadd_ps(a[r], b, acc[r][n]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int n = 0; n < NB; ++n) {
      const float s = alpha * _mm512_reduce_add_ps(acc[r][n]);
      float& c = C[r * ldc + n];
      c = beta == 0.0f ? s : s + beta * c;
    }
  }
}

using Micro = void (*)(int64_t, float, const float*, int64_t, const float*, int64_t, float,
                       float*, int64_t);

// Register budget: R * NB accumulators + R A vectors + one B vector within 32 zmm registers.
constexpr int kR = 3, kNB = 8;

template <int R, int... NB>
constexpr auto row_table(std::integer_sequence<int, NB...>) {
  return std::array<Micro, sizeof...(NB)>{&micro<R, NB + 1>...};
}

const std::array<std::array<Micro, kNB>, kR> kTable = {
    row_table<1>(std::make_integer_sequence<int, kNB>{}),
    row_table<2>(std::make_integer_sequence<int, kNB>{}),
    row_table<3>(std::make_integer_sequence<int, kNB>{})};

}  // namespace
#endif

bool small_gemm_ok(int64_t M, int64_t N, int64_t K) {
  // Where the kernel beat MKL (1 thread, Zen 4, docs/spinal.md "Skinny GEMMs"): N <= 10 at any K
  // (1.1-2.7x), M <= 2 (1.2-2.6x), and from K = 256 also M <= 12 or N <= 24 (1.1-1.5x); MKL wins
  // at M = 32, N >= 32 (its blocked kernel runs at ~87 GFLOP/s there) and at small K with N > 10.
  return has_avx512f() && M > 0 && N > 0 && K >= 16 &&
         (N <= 10 || M <= 2 || (K >= 256 && (M <= 12 || N <= 24)));
}

namespace {
#ifdef SK_X86_SIMD
// Rows [m0, m1) x outputs [n0, n1) in register blocks.
void blocks(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, float alpha,
            const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
            int64_t ldc) {
  for (int64_t m = m0; m < m1; m += kR) {
    const int r = static_cast<int>(std::min<int64_t>(kR, m1 - m));
    for (int64_t n = n0; n < n1; n += kNB) {
      const int nb = static_cast<int>(std::min<int64_t>(kNB, n1 - n));
      kTable[r - 1][nb - 1](K, alpha, A + m * lda, lda, B + n * ldb, ldb, beta, C + m * ldc + n,
                            ldc);
    }
  }
}
#endif
constexpr int64_t kParallelMacs = int64_t{1} << 18;  // below this, one thread
}  // namespace

void small_gemm_nt(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
#ifdef SK_X86_SIMD
  // Large products outside a parallel region (a batch-1 GEMV over a 51,200-wide input) split
  // over ATen's threads: by output blocks when there are few rows, by row blocks otherwise.
  // Inside a parallel region (a row block of the spinal chain) parallel_for runs inline.
  const int64_t macs = M * N * K;
  if (macs < kParallelMacs || at::in_parallel_region() || at::get_num_threads() == 1) {
    blocks(0, M, 0, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  } else if (M <= kR) {
    const int64_t nblocks = (N + kNB - 1) / kNB;
    const int64_t grain = std::max<int64_t>(1, nblocks * kParallelMacs / 4 / macs);
    at::parallel_for(0, nblocks, grain, [&](int64_t b0, int64_t b1) {
      blocks(0, M, b0 * kNB, std::min(N, b1 * kNB), K, alpha, A, lda, B, ldb, beta, C, ldc);
    });
  } else {
    const int64_t mblocks = (M + kR - 1) / kR;
    const int64_t grain = std::max<int64_t>(1, mblocks * kParallelMacs / 4 / macs);
    at::parallel_for(0, mblocks, grain, [&](int64_t b0, int64_t b1) {
      blocks(b0 * kR, std::min(M, b1 * kR), 0, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    });
  }
#endif
}

// ---- op(A) B: broadcast A, vectors of B's rows ------------------------------------------------

namespace {
#ifdef SK_X86_SIMD
// Every register loop fully unrolled: otherwise GCC keeps acc[][] addressable on the stack and
// stores all 24 accumulators on every k (measured: 40 GFLOP/s, store-bound).
#define SK_UNROLL _Pragma("GCC unroll 16")
constexpr int64_t kSumK = 256;  // see bmicro
// MR rows x NV vectors of 16 columns, the last vector under `last` (a full mask when N fills
// it). op(A)[r, k] = A[r * rs + k * ks]. 6 x 4 = 24 accumulators + 4 B vectors + 1 broadcast.
// The sums run in blocks of kSumK k's, each from zero and then added to C: a single running
// sum over K = 25,600 erred 11x more than MKL's SGEMM (2.7e-3 against 2.4e-4 at 128 x 32 x
// 25,600, randn operands), beyond the fp32 tolerance table; in blocks it is inside it.
// pf (rows of A along k, or nullptr): the next tile's rows, prefetched into L2 as this tile
// reads its own, so that weights which do not stay in cache arrive ahead of their tile (measured:
// a spinal layer chain over 16 MiB of weights 5-8 % faster, docs/spinal.md).
template <int MR, int NV>
__attribute__((target("avx512f"))) void bmicro(int64_t K, float alpha, const float* A,
                                               int64_t rs, int64_t ks, const float* B,
                                               int64_t ldb, __mmask16 last, float beta,
                                               float* C, int64_t ldc, Epilogue ep,
                                               const float* pf) {
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta), zero = _mm512_setzero_ps();
  for (int64_t k0 = 0; k0 < K; k0 += kSumK) {
    const int64_t k1 = std::min(K, k0 + kSumK);
    __m512 acc[MR][NV];
    SK_UNROLL
    for (int r = 0; r < MR; ++r)
      SK_UNROLL
      for (int v = 0; v < NV; ++v) acc[r][v] = zero;
    for (int64_t k = k0; k < k1; ++k) {
      const float* bk = B + k * ldb;
      __m512 b[NV];
      SK_UNROLL
      for (int v = 0; v < NV - 1; ++v) b[v] = _mm512_loadu_ps(bk + 16 * v);
      b[NV - 1] = _mm512_maskz_loadu_ps(last, bk + 16 * (NV - 1));
      const float* ak = A + k * ks;
      if (pf != nullptr && (k & 15) == 0) {  // a cache line of each of the next tile's rows
        SK_UNROLL
        for (int r = 0; r < MR; ++r)
          _mm_prefetch(reinterpret_cast<const char*>(pf + r * rs + k), _MM_HINT_T1);
      }
      SK_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m512 a = _mm512_set1_ps(ak[r * rs]);
        SK_UNROLL
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
      }
    }
    // the first block: alpha acc + beta C (beta = 0: C unread); later blocks add to C
    const bool first = k0 == 0, done = k1 == K;
    SK_UNROLL
    for (int r = 0; r < MR; ++r) {
      float* c = C + r * ldc;
      SK_UNROLL
      for (int v = 0; v < NV; ++v) {
        const __mmask16 m = v == NV - 1 ? last : static_cast<__mmask16>(0xFFFF);
        __m512 y = alpha == 1.0f ? acc[r][v] : _mm512_mul_ps(va, acc[r][v]);
        if (!first) {
          y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, c + 16 * v));
        } else if (beta != 0.0f) {
          y = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, c + 16 * v), y);
        }
        if (done && ep.row_bias != nullptr) y = _mm512_add_ps(y, _mm512_set1_ps(ep.row_bias[r]));
        if (done && ep.relu) y = _mm512_max_ps(zero, y);  // the second operand when NaN: kept
        _mm512_mask_storeu_ps(c + 16 * v, m, y);
      }
    }
  }
}

using BMicro = void (*)(int64_t, float, const float*, int64_t, int64_t, const float*, int64_t,
                        __mmask16, float, float*, int64_t, Epilogue, const float*);
constexpr int kBR = 6, kBV = 4, kBCols = 16 * kBV;

template <int MR, int... V>
constexpr auto brow_table(std::integer_sequence<int, V...>) {
  return std::array<BMicro, sizeof...(V)>{&bmicro<MR, V + 1>...};
}

const std::array<std::array<BMicro, kBV>, kBR> kBTable = {
    brow_table<1>(std::make_integer_sequence<int, kBV>{}),
    brow_table<2>(std::make_integer_sequence<int, kBV>{}),
    brow_table<3>(std::make_integer_sequence<int, kBV>{}),
    brow_table<4>(std::make_integer_sequence<int, kBV>{}),
    brow_table<5>(std::make_integer_sequence<int, kBV>{}),
    brow_table<6>(std::make_integer_sequence<int, kBV>{})};

// Columns [n0, n1) in chunks whose K-high slice of B fits in L2 (kChunkBytes); in a chunk, row
// tiles of near-equal height (32 rows: 6, 6, 5, 5, 5, 5 rather than 6 x 5 + 2), each sweeping
// the chunk's 64-column panels, so the tile's rows of op(A) stay in L1 and C is written in
// contiguous row segments (panel-major order over all rows touched one page of a wide C per
// row per panel: 0.4x MKL at 128 x 25600).
constexpr int64_t kChunkBytes = int64_t{256} << 10;
// Up to this K the next row tile's A (<= 96 KiB) is prefetched into L2 while a tile runs;
// beyond it the prefetched lines were evicted before their use (b32_f51200_w512, K = 25,600:
// 1.50x -> 1.41x eager with the prefetch).
constexpr int64_t kPrefetchMaxK = 4096;

void bpanels(int64_t n0, int64_t n1, int64_t M, int64_t K, float alpha, const float* A,
             int64_t rs, int64_t ks, const float* B, int64_t ldb, float beta, float* C,
             int64_t ldc, Epilogue ep) {
  const int64_t tiles = (M + kBR - 1) / kBR, base = M / tiles, extra = M % tiles;
  const int64_t nc = std::max<int64_t>(1, kChunkBytes / (K * 4 * kBCols)) * kBCols;
  for (int64_t c0 = n0; c0 < n1; c0 += nc) {
    const int64_t c1 = std::min(n1, c0 + nc);
    int64_t m = 0;
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t h = base + (t < extra ? 1 : 0);
      for (int64_t n = c0; n < c1; n += kBCols) {
        const int64_t w = std::min<int64_t>(kBCols, c1 - n);
        const int nv = static_cast<int>((w + 15) / 16);
        const int rem = static_cast<int>(w - 16 * (nv - 1));
        const auto last = static_cast<__mmask16>(rem == 16 ? 0xFFFFu : (1u << rem) - 1u);
        Epilogue e = ep;
        if (e.row_bias != nullptr) e.row_bias += m;
        const float* pf = ks == 1 && K <= kPrefetchMaxK && t + 1 < tiles ? A + (m + h) * rs
                                                                         : nullptr;
        kBTable[h - 1][nv - 1](K, alpha, A + m * rs, rs, ks, B + n, ldb, last, beta,
                               C + m * ldc + n, ldc, e, pf);
      }
      m += h;
    }
  }
}
#endif
}  // namespace

bool bcast_gemm_ok(char ta, int64_t M, int64_t N, int64_t K) {
  // Where it beat MKL's SGEMM (1 thread, Zen 4, docs/spinal.md "The gradient GEMMs and the
  // transposed chain", benchmarks/results/spinal/cpu-bcast-gemm-2026-11-30.txt), for both ta:
  // every short reduction (K <= 64; MKL packs both operands for a handful of multiply-adds per
  // element), 8-32 rows up to K = 512, and elsewhere while C (M N) and B (K N) stay
  // cache-sized, for A^T only up to K = 512 (a tile then reads one cache line of A per k:
  // 0.4-0.75x MKL at K = 4096). MKL kept: a single row over a B of several MiB (a
  // memory-bound GEMV, 0.55x) and many rows into a C of several MiB at K >= 128.
  return has_avx512f() && M > 0 && N > 0 && K > 0 &&
         (K <= 64 || (M >= 8 && M <= 32 && K <= 512) ||
          (M * N <= (int64_t{1} << 19) && K * N <= (int64_t{1} << 21) &&
           (ta == 'N' || K <= 512)));
}

namespace {
#ifdef SK_X86_SIMD
// run(n0, n1, m0, m1) over the whole product, or split over ATen's threads: by 64-column panels
// when there are enough of them, else (a batch of 32 as N) by 6-row tiles.
template <typename Run>
void split_work(int64_t M, int64_t N, int64_t macs, const Run& run) {
  if (macs < kParallelMacs || at::in_parallel_region() || at::get_num_threads() == 1) {
    run(0, N, 0, M);
    return;
  }
  const int64_t panels = (N + kBCols - 1) / kBCols;
  if (panels >= 2 * at::get_num_threads()) {
    const int64_t grain = std::max<int64_t>(1, panels * kParallelMacs / 4 / macs);
    at::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
      run(p0 * kBCols, std::min(N, p1 * kBCols), 0, M);
    });
  } else {
    const int64_t tiles = (M + kBR - 1) / kBR;
    const int64_t grain = std::max<int64_t>(1, tiles * kParallelMacs / 4 / macs);
    at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
      run(0, N, t0 * kBR, std::min(M, t1 * kBR));
    });
  }
}

Epilogue rows_from(Epilogue ep, int64_t m0) {
  if (ep.row_bias != nullptr) ep.row_bias += m0;
  return ep;
}
#endif
}  // namespace

void bcast_gemm(char ta, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
                Epilogue ep) {
#ifdef SK_X86_SIMD
  const int64_t rs = ta == 'N' ? lda : 1, ks = ta == 'N' ? 1 : lda;
  split_work(M, N, M * N * K, [&](int64_t n0, int64_t n1, int64_t m0, int64_t m1) {
    bpanels(n0, n1, m1 - m0, K, alpha, A + m0 * rs, rs, ks, B, ldb, beta, C + m0 * ldc, ldc,
            rows_from(ep, m0));
  });
#endif
}

void bcast_gemm_sum(int64_t M, int64_t N, const Term* terms, int nterms, float* C, int64_t ldc,
                    Epilogue ep) {
#ifdef SK_X86_SIMD
  int64_t macs = 0;
  for (int t = 0; t < nterms; ++t) macs += M * N * terms[t].K;
  split_work(M, N, macs, [&](int64_t n0, int64_t n1, int64_t m0, int64_t m1) {
    for (int t = 0; t < nterms; ++t) {
      const Term& a = terms[t];
      bpanels(n0, n1, m1 - m0, a.K, 1.0f, a.A + m0 * a.lda, a.lda, 1, a.B, a.ldb,
              t == 0 ? 0.0f : 1.0f, C + m0 * ldc, ldc,
              t == nterms - 1 ? rows_from(ep, m0) : Epilogue{});
    }
  });
#endif
}

// ---- transpose ---------------------------------------------------------------------------------

namespace {
#ifdef SK_X86_SIMD
// out[i] = 128-bit lanes 0, 2 of in[i] then of in[i + S], out[i + S] = lanes 1, 3 of both, for
// every i with bit S clear
template <int S>
__attribute__((target("avx512f"), always_inline)) inline void regroup(const __m512* in,
                                                                     __m512* out) {
  SK_UNROLL
  for (int i = 0; i < 16; ++i) {
    if ((i & S) != 0) continue;
    out[i] = _mm512_shuffle_f32x4(in[i], in[i + S], 0x88);
    out[i + S] = _mm512_shuffle_f32x4(in[i], in[i + S], 0xDD);
  }
}

// rows [r0, r0 + nr) x columns [c0, c1) (nr <= 16) in 16 x 16 register blocks: 16 row vectors
// in (missing rows and columns read as zero), 64 shuffles, 16 column vectors out under a mask
// of nr lanes.
__attribute__((target("avx512f"))) void tr_rows(int64_t nr, int64_t c0, int64_t c1,
                                                const float* src, int64_t lds, float* dst,
                                                int64_t ldd) {
  const auto lanes = static_cast<__mmask16>(nr == 16 ? 0xFFFFu : (1u << nr) - 1u);
  for (int64_t c = c0; c < c1; c += 16) {
    const int64_t nc = std::min<int64_t>(16, c1 - c);
    const auto cols = static_cast<__mmask16>(nc == 16 ? 0xFFFFu : (1u << nc) - 1u);
    __m512 r[16], t[16];
    SK_UNROLL
    for (int i = 0; i < 16; ++i)
      r[i] = i < nr ? _mm512_maskz_loadu_ps(cols, src + i * lds + c) : _mm512_setzero_ps();
    // pairs of rows interleaved; then, per 128-bit lane L, r[4q + j] = column 4L + j of rows
    // 4q..4q+3; then the lanes regrouped twice so that r[c] is column c of all 16 rows
    SK_UNROLL
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    SK_UNROLL
    for (int q = 0; q < 4; ++q) {
      r[4 * q] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
      r[4 * q + 1] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0xEE);
      r[4 * q + 2] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
      r[4 * q + 3] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xEE);
    }
    regroup<4>(r, t);
    regroup<8>(t, r);
    for (int64_t i = 0; i < nc; ++i) _mm512_mask_storeu_ps(dst + (c + i) * ldd, lanes, r[i]);
  }
}
#endif
constexpr int64_t kParallelTranspose = int64_t{1} << 16;  // elements; below, one thread
}  // namespace

void transpose(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst,
               int64_t ldd) {
#ifdef SK_X86_SIMD
  // column blocks of 256 outer, row blocks of 16 inner: the block's 16 x 256 reads and 256
  // destination rows stay in L1 while its row blocks fill them
  auto run = [&](int64_t c0, int64_t c1) {
    for (int64_t b0 = c0; b0 < c1; b0 += 256)
      for (int64_t r = 0; r < rows; r += 16)
        tr_rows(std::min<int64_t>(16, rows - r), b0, std::min(c1, b0 + 256), src + r * lds, lds,
                dst + r, ldd);
  };
  if (rows * cols < kParallelTranspose || at::in_parallel_region() ||
      at::get_num_threads() == 1) {
    run(0, cols);
  } else {
    at::parallel_for(0, (cols + 15) / 16, 64, [&](int64_t b0, int64_t b1) {
      run(b0 * 16, std::min(cols, b1 * 16));
    });
  }
#endif
}

}  // namespace cpu
}  // namespace shallowkern
