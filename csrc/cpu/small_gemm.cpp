// Skinny A B^T products (see csrc/include/shallowkern/cpu/small_gemm.h).
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

}  // namespace cpu
}  // namespace shallowkern
