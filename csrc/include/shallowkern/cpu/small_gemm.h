// Skinny row-major products C = alpha A B^T + beta C (A: M x K, B: N x K, both with unit column
// stride) where MKL's SGEMM is inefficient: few outputs per row (a SpinalNet layer of width 8,
// the 10-class output layer) or few rows (batch-1 inference: a GEMV per layer). small_gemm_ok
// holds the measured rule.
//
// Measured on this project's Zen 4 VM (1 thread, benchmarks/results/spinal/cpu-small-gemm-*.txt):
// MKL reaches 34-35 GFLOP/s at M = 32, N = 8 and 26-32 GFLOP/s at M = 1 (88 at M = 32,
// N = 128); this kernel 81-92 and 41-50 on those skinny shapes. It computes each output as a
// 16-lane dot product over K (AVX-512, R rows x NB outputs of accumulators, one horizontal sum
// per output), so every A row is read once per NB outputs and every B row once per R rows.
// float only; blas.h's gemm() falls back to MKL/ATen where small_gemm_ok is false.
#pragma once

#include <cstdint>

namespace shallowkern {
namespace cpu {

// Whether small_gemm_nt takes this product: float, AVX-512 present (and not hidden by the
// SHALLOWKERN_CPU_AVX512 knob), the skinny shapes above, K at least one vector.
bool small_gemm_ok(int64_t M, int64_t N, int64_t K);

// C[m, n] = alpha * sum_k A[m * lda + k] * B[n * ldb + k] + beta * C[m * ldc + n]
// (beta == 0 ignores C's old contents, NaN included). Caller checked small_gemm_ok.
void small_gemm_nt(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Products whose right operand is row-major K x N (MKL 'N'): C = alpha op(A) B + beta C with
// op(A) = A (M x K, ta 'N') or A^T (A K x M, ta 'T'). Each register tile of up to 6 rows x 64
// columns broadcasts one A element per row and loads 4 vectors of B's row k: no packing of
// either operand and no pass over C before the products, which is where MKL spends a quarter
// of a spinal training step (perf: 17 % packing, 9 % scaling C). Its shapes there: the weight
// gradients G^T X (ta 'T', K = batch, e.g. 32) and the input gradients G W (ta 'N', M = batch).
// bcast_gemm_ok holds the measured rule (float, AVX-512, the shapes where it beat MKL).
bool bcast_gemm_ok(char ta, int64_t M, int64_t N, int64_t K);

// What bcast_gemm does to each result before storing it: + row_bias[m] (one value per row of
// C; nullptr: none), then ReLU (max(0, v), NaN kept) when relu.
struct Epilogue {
  const float* row_bias = nullptr;
  bool relu = false;
};

// C[m, n] = ep(alpha * sum_k op(A)[m, k] * B[k * ldb + n] + beta * C[m * ldc + n]) (beta == 0
// ignores C's old contents, NaN included); op(A)[m, k] = A[m * lda + k] for ta 'N',
// A[k * lda + m] for 'T'. The sums over k run in blocks of 256, each block's sum added to C
// (one running sum over K = 25,600 erred 11x more than MKL's SGEMM, beyond the fp32 table).
// Caller checked bcast_gemm_ok, or at least AVX-512 and M, N, K > 0.
void bcast_gemm(char ta, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
                Epilogue ep = {});

// One term A B of bcast_gemm_sum: A M x K (row stride lda), B K x N (row stride ldb), K > 0.
struct Term {
  const float* A;
  int64_t lda;
  const float* B;
  int64_t ldb;
  int64_t K;
};

// C = ep(sum_t A_t B_t), the terms summed into C one after the other (each in bcast_gemm's
// blocks of k), the rows split over the threads once for all terms (a SpinalNet layer:
// W^x x_s^T + W^h h^T, one parallel region). Caller checked bcast_gemm_ok('N', M, N, K_t) for
// every term.
void bcast_gemm_sum(int64_t M, int64_t N, const Term* terms, int nterms, float* C, int64_t ldc,
                    Epilogue ep = {});

// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols (float, AVX-512 16 x 16 register
// blocks; split over ATen's threads when large). Caller checked has_avx512f().
void transpose(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst,
               int64_t ldd);

}  // namespace cpu
}  // namespace shallowkern
