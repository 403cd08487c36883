// Small, torch-free helpers shared by the CUDA kernels in csrc/cuda.
//
// Everything here also compiles with a plain host compiler (g++ with -I<cuda>/include), so the
// index arithmetic of a kernel can be factored into SK_HD functions and unit-tested on a machine
// without a GPU (csrc/tests/test_cuda_indexing.cpp).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SK_HD __host__ __device__ __forceinline__
#define SK_DEVICE __device__ __forceinline__
#else
#define SK_HD inline
#define SK_DEVICE inline
#endif

// `#pragma unroll` for the device pass only (host compilers warn about the unknown pragma).
#if defined(__CUDA_ARCH__)
#define SK_UNROLL _Pragma("unroll")
#define SK_NO_UNROLL _Pragma("unroll 1")
#else
#define SK_UNROLL
#define SK_NO_UNROLL
#endif

// Return the error of a CUDA runtime call from the enclosing function (launchers return
// cudaError_t and never abort the process; the torch binding turns the error into an exception).
#define SK_CUDA_TRY(expr)                      \
  do {                                         \
    const cudaError_t sk_err_ = (expr);        \
    if (sk_err_ != cudaSuccess) return sk_err_; \
  } while (0)

namespace shallowkern {
namespace cuda {

template <typename I>
SK_HD constexpr I cdiv(I a, I b) {
  return (a + b - 1) / b;
}

template <typename I>
SK_HD constexpr I round_up(I a, I b) {
  return cdiv(a, b) * b;
}

// Storage type <-> fp32 compute type. Kernels stage operands in shared memory as fp32 (so the
// inner loops are pure FFMA, with no per-use conversion) and round once when storing.
SK_HD float to_float(float v) { return v; }
SK_HD float to_float(__half v) { return __half2float(v); }
SK_HD float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
SK_HD T from_float(float v);
template <>
SK_HD float from_float<float>(float v) {
  return v;
}
template <>
SK_HD __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
SK_HD __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Round an fp32 value to the storage type and back: what a later reader of the stored tensor sees.
template <typename T>
SK_HD float round_to(float v) {
  return to_float(from_float<T>(v));
}

// Two adjacent elements in one store; p must be aligned to 2 * sizeof(T).
template <typename T>
SK_HD void store2(T* p, float a, float b) {
  p[0] = from_float<T>(a);
  p[1] = from_float<T>(b);
}
#if defined(__CUDACC__)
template <>
SK_HD void store2<float>(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
template <>
SK_HD void store2<__half>(__half* p, float a, float b) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
}
template <>
SK_HD void store2<__nv_bfloat16>(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}
#endif

// NaN test (nvcc's --use_fast_math leaves isnan exact; it does not assume finite math).
SK_HD bool is_nan(float v) {
#if defined(__CUDA_ARCH__)
  return isnan(v);
#else
  return std::isnan(v);
#endif
}

}  // namespace cuda
}  // namespace shallowkern
