// Sparse row combinations (float), the core of the pooled-sparse backward:
//   out[r, :] (+)= sum_{e in [off[r], off[r+1])} val[e] * src[idx[e], :]     for r < nrows,
// over ncols columns (src rows have leading dimension ld_src, out rows ld_out; accumulate: +=,
// else =). With pool 2 the gradient of the pre-activation has at most one non-zero per 2x2
// window and channel, so the two backward GEMMs (gw += gy colT, dcolT = gy^T W) written this way
// do a quarter of the multiply-adds. AVX-512 kernels where the CPU has them (cpu::has_avx512f),
// else AVX2 + FMA; callers check cpu::has_avx2_fma() first (see csrc/cpu/sparse_rows.cpp).
#pragma once

#include <cstdint>

namespace shallowkern {
namespace cpu {

void combine_rows(const int64_t* off, const int32_t* idx, const float* val, int64_t nrows,
                  const float* src, int64_t ld_src, float* out, int64_t ld_out, int64_t ncols,
                  bool accumulate);

}  // namespace cpu
}  // namespace shallowkern
