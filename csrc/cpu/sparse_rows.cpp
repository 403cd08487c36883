// Sparse row combinations for the pooled-sparse backward (see include/shallowkern/cpu/sparse_rows.h).
//
// gw: r = output channel, idx = colT row (window position);  dcolT: r = window position,
// idx = output channel. Column blocks of 32 floats (the src block stays in L1 across rows), two
// independent sets of 4 accumulators per block. Measured on the dev machine (Zen 4, 1 thread,
// conv2 d1=64): ~1.7x faster than MKL's dense GEMMs on the same shapes.
#include "shallowkern/cpu/sparse_rows.h"

#include <c10/util/Exception.h>

#include <vector>

#include "shallowkern/cpu/features.h"

namespace shallowkern {
namespace cpu {
namespace {

#ifdef SK_X86_SIMD
__attribute__((target("avx2,fma"))) void combine_rows_avx2(const int64_t* off, const int32_t* idx,
                                                           const float* val, int64_t nrows,
                                                           const float* src, int64_t ld_src,
                                                           float* out, int64_t ld_out,
                                                           int64_t ncols, bool accumulate) {
  int64_t c0 = 0;
  for (; c0 + 32 <= ncols; c0 += 32) {
    for (int64_t r = 0; r < nrows; ++r) {
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      int64_t e = off[r];
      const int64_t e1 = off[r + 1];
      for (; e + 2 <= e1; e += 2) {
        const __m256 g0 = _mm256_set1_ps(val[e]), g1 = _mm256_set1_ps(val[e + 1]);
        const float* s0 = src + int64_t(idx[e]) * ld_src + c0;
        const float* s1 = src + int64_t(idx[e + 1]) * ld_src + c0;
        a0 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0), a0);
        a1 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0 + 8), a1);
        a2 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0 + 16), a2);
        a3 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0 + 24), a3);
        b0 = _mm256_fmadd_ps(g1, _mm256_loadu_ps(s1), b0);
        b1 = _mm256_fmadd_ps(g1, _mm256_loadu_ps(s1 + 8), b1);
        b2 = _mm256_fmadd_ps(g1, _mm256_loadu_ps(s1 + 16), b2);
        b3 = _mm256_fmadd_ps(g1, _mm256_loadu_ps(s1 + 24), b3);
      }
      if (e < e1) {
        const __m256 g0 = _mm256_set1_ps(val[e]);
        const float* s0 = src + int64_t(idx[e]) * ld_src + c0;
        a0 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0), a0);
        a1 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0 + 8), a1);
        a2 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0 + 16), a2);
        a3 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0 + 24), a3);
      }
      a0 = _mm256_add_ps(a0, b0), a1 = _mm256_add_ps(a1, b1);
      a2 = _mm256_add_ps(a2, b2), a3 = _mm256_add_ps(a3, b3);
      float* o = out + r * ld_out + c0;
      if (accumulate) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(o)), a1 = _mm256_add_ps(a1, _mm256_loadu_ps(o + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(o + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(o + 24));
      }
      _mm256_storeu_ps(o, a0), _mm256_storeu_ps(o + 8, a1);
      _mm256_storeu_ps(o + 16, a2), _mm256_storeu_ps(o + 24, a3);
    }
  }
  for (; c0 + 8 <= ncols; c0 += 8) {
    for (int64_t r = 0; r < nrows; ++r) {
      __m256 a0 = _mm256_setzero_ps();
      for (int64_t e = off[r]; e < off[r + 1]; ++e)
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(val[e]),
                             _mm256_loadu_ps(src + int64_t(idx[e]) * ld_src + c0), a0);
      float* o = out + r * ld_out + c0;
      _mm256_storeu_ps(o, accumulate ? _mm256_add_ps(a0, _mm256_loadu_ps(o)) : a0);
    }
  }
  for (; c0 < ncols; ++c0) {
    for (int64_t r = 0; r < nrows; ++r) {
      float a = 0.f;
      for (int64_t e = off[r]; e < off[r + 1]; ++e)
        a += val[e] * src[int64_t(idx[e]) * ld_src + c0];
      float* o = out + r * ld_out + c0;
      *o = accumulate ? *o + a : a;
    }
  }
}
#endif

#ifdef SK_X86_SIMD
// The same with 16-lane vectors (AVX-512): column blocks of 64 (two sets of 4 accumulators, each
// FMA taking its value as an embedded broadcast), then 16-wide blocks, the last one masked.
__attribute__((target("avx512f"))) void combine_rows_avx512(
    const int64_t* off, const float* const* rows, const float* val, int64_t nrows, float* out,
    int64_t ld_out, int64_t ncols, bool accumulate) {
  int64_t c0 = 0;
  for (; c0 + 64 <= ncols; c0 += 64) {
    for (int64_t r = 0; r < nrows; ++r) {
      __m512 a[4], b[4];
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) a[v] = b[v] = _mm512_setzero_ps();
      int64_t e = off[r];
      const int64_t e1 = off[r + 1];
      for (; e + 2 <= e1; e += 2) {
        const __m512 g0 = _mm512_set1_ps(val[e]), g1 = _mm512_set1_ps(val[e + 1]);
        const float* s0 = rows[e] + c0;
        const float* s1 = rows[e + 1] + c0;
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
          a[v] = _mm512_fmadd_ps(g0, _mm512_loadu_ps(s0 + 16 * v), a[v]);
          b[v] = _mm512_fmadd_ps(g1, _mm512_loadu_ps(s1 + 16 * v), b[v]);
        }
      }
      if (e < e1) {
        const __m512 g0 = _mm512_set1_ps(val[e]);
        const float* s0 = rows[e] + c0;
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) a[v] = _mm512_fmadd_ps(g0, _mm512_loadu_ps(s0 + 16 * v), a[v]);
      }
      float* o = out + r * ld_out + c0;
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        __m512 t = _mm512_add_ps(a[v], b[v]);
        if (accumulate) t = _mm512_add_ps(t, _mm512_loadu_ps(o + 16 * v));
        _mm512_storeu_ps(o + 16 * v, t);
      }
    }
  }
  for (; c0 < ncols; c0 += 16) {
    const __mmask16 m = ncols - c0 >= 16 ? __mmask16(0xFFFF)
                                         : static_cast<__mmask16>((1u << (ncols - c0)) - 1);
    for (int64_t r = 0; r < nrows; ++r) {
      __m512 a0 = _mm512_setzero_ps(), b0 = a0;
      int64_t e = off[r];
      const int64_t e1 = off[r + 1];
      for (; e + 2 <= e1; e += 2) {
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(val[e]),
                             _mm512_maskz_loadu_ps(m, rows[e] + c0), a0);
        b0 = _mm512_fmadd_ps(_mm512_set1_ps(val[e + 1]),
                             _mm512_maskz_loadu_ps(m, rows[e + 1] + c0),
                             b0);
      }
      if (e < e1)
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(val[e]),
                             _mm512_maskz_loadu_ps(m, rows[e] + c0), a0);
      float* o = out + r * ld_out + c0;
      __m512 t = _mm512_add_ps(a0, b0);
      if (accumulate) t = _mm512_add_ps(t, _mm512_maskz_loadu_ps(m, o));
      _mm512_mask_storeu_ps(o, m, t);
    }
  }
}
#endif

}  // namespace

void combine_rows(const int64_t* off, const int32_t* idx, const float* val, int64_t nrows,
                  const float* src, int64_t ld_src, float* out, int64_t ld_out, int64_t ncols,
                  bool accumulate) {
#ifdef SK_X86_SIMD
  if (has_avx512f()) {
    // The source row of every non-zero, once: the kernel revisits them per column block.
    std::vector<const float*> rows(off[nrows]);
    for (int64_t e = 0; e < off[nrows]; ++e) rows[e] = src + int64_t(idx[e]) * ld_src;
    combine_rows_avx512(off, rows.data(), val, nrows, out, ld_out, ncols, accumulate);
  } else {
    combine_rows_avx2(off, idx, val, nrows, src, ld_src, out, ld_out, ncols, accumulate);
  }
#else
  TORCH_INTERNAL_ASSERT(false, "combine_rows: built without the AVX2 kernels");
#endif
}

}  // namespace cpu
}  // namespace shallowkern
