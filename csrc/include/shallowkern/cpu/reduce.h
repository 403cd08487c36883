// Small numeric helpers of the C++ CPU kernels: a deterministic double-precision sum and 2-D
// ATen views of raw buffers (for at::mm_out / addmm_out on thread-local scratch).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <type_traits>

namespace shallowkern {
namespace cpu {

template <bool kMasked, typename T>
double sum_double_impl(const T* __restrict v, const int32_t* __restrict q, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t t = 0;
  for (; t + 8 <= n; t += 8)
#pragma omp simd
    for (int l = 0; l < 8; ++l) {
      const double x = v[t + l];
      acc[l] += (!kMasked || q[t + l] < 4) ? x : 0.0;
    }
  for (; t < n; ++t) {
    const double x = v[t];
    acc[0] += (!kMasked || q[t] < 4) ? x : 0.0;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename T>
double sum_double(const T* v, const int32_t* q, int64_t n) {
  return q ? sum_double_impl<true>(v, q, n) : sum_double_impl<false>(v, q, n);
}

// 2D row-major (rows x cols, leading dimension ld) ATen view of a raw buffer, for at::mm_out.
template <typename T>
at::Tensor mat(T* p, int64_t rows, int64_t cols, int64_t ld, const at::TensorOptions& opt) {
  return at::from_blob(const_cast<std::remove_const_t<T>*>(p), {rows, cols}, {ld, 1}, opt);
}

}  // namespace cpu
}  // namespace shallowkern
