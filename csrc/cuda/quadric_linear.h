// quadric_linear full-form CUDA forward: launcher declaration, shared with the torch binding
// csrc/cuda/bindings.cu. Torch-free: raw pointers, int sizes, cudaStream_t.
//
//   y[m, k] = b[k] + sum_{t < T} P[k, t] x[m, i(t)] x[m, j(t)] + sum_c W[k, c] x[m, c]
//
// with T = n(n+1)/2 packed upper-triangle coefficients (i(t) <= j(t), row-major), as in
// shallowkern/ops/quadric_linear.py. The kernel is in quadric_linear.cu.
#pragma once

#include <cuda_runtime_api.h>

namespace shallowkern {
namespace cuda {

enum class QuadricDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct QuadricFullArgs {
  QuadricDtype dtype;  // storage type of x, p, w, bias and y (fp32 accumulation)
  const void* x;       // (m, n), row stride ldx, unit column stride
  const void* p;       // (k, n(n+1)/2), contiguous
  const void* w;       // (k, n), contiguous
  const void* bias;    // (k) or nullptr
  const int* ii;       // (n(n+1)/2) row index i(t) of each packed coefficient
  const int* jj;       // (n(n+1)/2) column index j(t)
  void* y;             // (m, k), contiguous
  int m, n, k;
  long long ldx;
};

// Launches the kernel on `stream`; returns the launch error (cudaSuccess when fine).
cudaError_t quadric_full_forward(const QuadricFullArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace shallowkern
