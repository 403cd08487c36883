// Convolution geometry shared by every C++ side of shallowkern: the CPU kernels (csrc/cpu), the
// argument checks (checks.h), the CUDA kernels and their host tests (csrc/cuda/*.h). Torch-free and
// host/device-callable, so one formula serves all of them.
//
// Output size along one dimension, as aten and shallowkern/ops/_geometry.py compute it:
//   out = floor((in + 2*pad - dil*(k-1) - 1) / stride) + 1
// with FLOOR division. C++'s `/` truncates toward zero, which differs when the numerator is
// negative: a 5-wide kernel on a 4-wide unpadded input with stride 15 gives (4 - 4 - 1) / 15 + 1
// = 1 with truncation (the kernel "fits" and the kernels read and write out of bounds; issue 9)
// but floor(-1/15) + 1 = 0 with floor division (rejected).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SK_GEOM_HD __host__ __device__ __forceinline__
#else
#define SK_GEOM_HD inline
#endif

namespace shallowkern {

// floor(a / b) for b > 0.
SK_GEOM_HD int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// ceil(a / b) for a >= 0, b > 0.
SK_GEOM_HD int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Conv output size along one dimension (floor division; may be <= 0: the kernel does not fit).
// Callers validate stride >= 1, and use conv_out_size_checked where the arguments are untrusted.
SK_GEOM_HD int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  return floor_div(in + 2 * pad - dil * (k - 1) - 1, stride) + 1;
}

// The same for untrusted arguments: false when an argument is out of range (stride, kernel or
// dilation < 1, padding or input < 0) or an intermediate would overflow int64 (e.g. padding or
// dilation near 2^62), so that a hostile call gets an error, not undefined behaviour. Plain
// comparisons (no compiler builtins), so every compiler of this header accepts it.
SK_GEOM_HD bool conv_out_size_checked(int64_t in, int64_t k, int64_t stride, int64_t pad,
                                      int64_t dil, int64_t* out) {
  constexpr int64_t kMax = INT64_MAX;
  if (stride < 1 || k < 1 || dil < 1 || pad < 0 || in < 0) return false;
  if (pad > kMax / 2 || in > kMax - 2 * pad) return false;        // in + 2*pad
  if (k > 1 && dil > kMax / (k - 1)) return false;                // dil*(k-1)
  *out = floor_div(in + 2 * pad - dil * (k - 1) - 1, stride) + 1;  // >= -kMax: no overflow
  return true;
}

// Validated geometry of a 2-D convolution followed by an optional 2x2/2 max-pool (floor mode):
// what checks.h's check_conv2d_args returns and the CPU kernels take.
struct Conv2dGeom {
  int64_t N, C, H, W, K, G, Cg, Kg, R, S;  // input (N, C, H, W), weight (K, C/G, R, S), G groups
  int64_t sh, sw, ph, pw, dh, dw;          // stride, padding, dilation
  int64_t OH, OW;                          // conv output
  int64_t pool;                            // 1 (none) or 2
  int64_t PH, PW;                          // op output (pooled, or OH, OW)
  int64_t EH, EW;  // conv rows/cols that reach the output: 2*PH, 2*PW with pool 2, else OH, OW
  int64_t crs() const { return Cg * R * S; }
  int64_t npos() const { return EH * EW; }
};

}  // namespace shallowkern
