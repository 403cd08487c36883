// Row-major GEMM for the C++ CPU kernels (quadric_linear, spinal_linear*): our AVX-512 kernels for
// skinny float A B^T products and for the op(A) B shapes where they beat MKL (small_gemm.h),
// MKL's SGEMM/DGEMM called directly for other small products, ATen's GEMM on strided views
// otherwise.
//
// Why: an at::mm through the dispatcher costs ~2-4 us, which is most of a batch-32 layer
// (the whole quadric diagonal forward at B = 32, n = K = 64 took 11.7 us with two at::addmm;
// a spinal head at B = 32 is tens of us). From ~1M multiply-adds ATen's own GEMM was measured
// faster than the Fortran interface (256x128x128: ~95 us through at::mm, ~140 us through SGEMM,
// 1 thread, Zen 4), so kDirectGemmMax bounds the direct path.
#pragma once

#include <ATen/ATen.h>

#include "shallowkern/cpu/small_gemm.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

extern "C" {
// MKL's Fortran-interface GEMMs (LP64), exported by the torch wheels built with MKL. Weak: other
// BLAS builds link too, and then only the ATen path runs.
void SGEMM(const char*, const char*, const int*, const int*, const int*, const float*,
           const float*, const int*, const float*, const int*, const float*, float*,
           const int*) __attribute__((weak));
void DGEMM(const char*, const char*, const int*, const int*, const int*, const double*,
           const double*, const int*, const double*, const int*, const double*, double*,
           const int*) __attribute__((weak));
}

namespace shallowkern {
namespace cpu {

constexpr int64_t kDirectGemmMax = int64_t{1} << 20;  // M*N*K multiply-adds

inline bool has_direct_gemm() { return SGEMM != nullptr && DGEMM != nullptr; }

// Whether a product of M x N outputs and reduction K (with leading dimensions lda, ldb, ldc)
// may go to direct_gemm: MKL present, non-empty, small, every size representable as an LP64 int.
inline bool direct_gemm_ok(int64_t M, int64_t N, int64_t K, int64_t lda = 0, int64_t ldb = 0,
                           int64_t ldc = 0) {
  const int64_t lim = std::numeric_limits<int>::max();
  return has_direct_gemm() && M > 0 && N > 0 && K > 0 && M * N * K <= kDirectGemmMax &&
         M < lim && N < lim && K < lim && lda < lim && ldb < lim && ldc < lim;
}

// Row-major C (M x N, row stride ldc) = alpha op(A) op(B) + beta C with op(A) M x K, op(B) K x N,
// ta/tb 'N' or 'T' for the row-major matrices, straight to MKL (caller checked direct_gemm_ok).
// A row-major matrix is its column-major transpose, so this is column-major
// C^T = op(B)^T op(A)^T: swap the operands, keep the flags.
template <typename T>
void direct_gemm(char ta, char tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                 int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  if constexpr (std::is_same_v<T, float>) {
    SGEMM(&tb, &ta, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
  } else {
    DGEMM(&tb, &ta, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
  }
}

// The same product through ATen on strided views (mm_out / addmm_ write into a strided C without
// a copy); multi-threaded by ATen's pool when called outside a parallel region.
template <typename T>
void aten_gemm(char ta, char tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
               int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto view = [&](const T* p, int64_t r, int64_t c, int64_t ld, char t) {
    at::Tensor v = at::from_blob(const_cast<T*>(p), {r, c}, {ld, 1}, opts);
    return t == 'T' ? v.t() : v;
  };
  at::Tensor a = ta == 'N' ? view(A, M, K, lda, 'N') : view(A, K, M, lda, 'T');
  at::Tensor b = tb == 'N' ? view(B, K, N, ldb, 'N') : view(B, N, K, ldb, 'T');
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
    if (alpha != T(1)) c.mul_(alpha);
  } else {
    c.addmm_(a, b, beta, alpha);
  }
}

// When allowed (allow_direct, e.g. an environment switch): small_gemm_nt for skinny float A B^T
// products (small_gemm_ok), bcast_gemm for float op(A) B where bcast_gemm_ok, direct_gemm when
// direct_gemm_ok; aten_gemm otherwise. Empty outputs return at once.
template <typename T>
void gemm(char ta, char tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc, bool allow_direct = true) {
  if (M == 0 || N == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (allow_direct && ta == 'N' && tb == 'T' && small_gemm_ok(M, N, K)) {
      small_gemm_nt(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      return;
    }
    if (allow_direct && tb == 'N' && bcast_gemm_ok(ta, M, N, K)) {
      bcast_gemm(ta, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      return;
    }
  }
  if (allow_direct && direct_gemm_ok(M, N, K, lda, ldb, ldc)) {
    direct_gemm<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  } else {
    aten_gemm<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
}

// Whether gemm_sum_ep takes bcast_gemm_sum for these terms (every one routed to it).
inline bool bcast_sum_ok(int64_t M, int64_t N, const Term* terms, int nterms) {
  for (int t = 0; t < nterms; ++t)
    if (terms[t].K <= 0 || !bcast_gemm_ok('N', M, N, terms[t].K)) return false;
  return true;
}

// C = ep(sum_t A_t B_t) in float (A_t M x K_t, 'N'): bcast_gemm_sum where it takes every term,
// otherwise gemm() term after term and then a pass over C for ep.
inline void gemm_sum_ep(int64_t M, int64_t N, const Term* terms, int nterms, float* C,
                        int64_t ldc, Epilogue ep) {
  if (M == 0 || N == 0) return;
  if (bcast_sum_ok(M, N, terms, nterms)) {
    bcast_gemm_sum(M, N, terms, nterms, C, ldc, ep);
    return;
  }
  for (int t = 0; t < nterms; ++t) {
    const Term& a = terms[t];
    gemm<float>('N', 'N', M, N, a.K, 1.0f, a.A, a.lda, a.B, a.ldb, t == 0 ? 0.0f : 1.0f, C, ldc);
  }
  if (ep.row_bias == nullptr && !ep.relu) return;
  for (int64_t m = 0; m < M; ++m) {
    const float bias = ep.row_bias != nullptr ? ep.row_bias[m] : 0.0f;
    float* c = C + m * ldc;
    for (int64_t n = 0; n < N; ++n) {
      const float v = c[n] + bias;
      c[n] = ep.relu ? std::max(v, 0.0f) : v;  // std::max keeps NaN
    }
  }
}

}  // namespace cpu
}  // namespace shallowkern
