// quadric_linear full-form forward on CUDA (torch-free; see quadric_linear.h for the math).
//
// One block computes a kTileM x kTileN tile of y with 256 threads (each thread 2 x 4 outputs in
// registers, fp32). The reduction runs over a virtual index of length T + n: the first T steps
// are the packed quadratic terms, whose operand Z[m, t] = x[m, i(t)] x[m, j(t)] is formed while
// staging it in shared memory (two gathers from the x rows, which stay in L1/L2), so neither
// x (x) x nor any B x K x n tensor exists and only the symmetric half of the products is done;
// the last n steps are the linear terms (Z = x, P = W). Extra memory: the two index tables.
// Simple and exact (FMA, no tensor cores); the Triton kernel is the tensor-core path.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "quadric_linear.h"

namespace shallowkern {
namespace cuda {
namespace {

constexpr int kTileM = 32, kTileN = 64, kTileT = 32, kThreads = 256;

template <typename T>
__device__ __forceinline__ float to_f(T v) { return static_cast<float>(v); }
template <>
__device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v) { return static_cast<T>(v); }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__global__ void __launch_bounds__(kThreads)
quadric_full_fwd_kernel(const T* __restrict__ x, const T* __restrict__ p, const T* __restrict__ w,
                        const T* __restrict__ bias, const int* __restrict__ ii,
                        const int* __restrict__ jj, T* __restrict__ y, int m, int n, int k,
                        long long ldx) {
  __shared__ float zs[kTileT][kTileM + 1];
  __shared__ float ps[kTileT][kTileN + 1];
  const int tid = threadIdx.x;
  const int m0 = blockIdx.y * kTileM, k0 = blockIdx.x * kTileN;
  const int tm = (tid / 16) * 2, tn = (tid % 16) * 4;  // this thread's 2 x 4 outputs
  const long long t_quad = static_cast<long long>(n) * (n + 1) / 2;
  const long long t_total = t_quad + n;
  float acc[2][4] = {};
  for (long long t0 = 0; t0 < t_total; t0 += kTileT) {
    // stage Z (kTileT x kTileM): 1024 values, 4 per thread; threads walk t fastest
    for (int e = tid; e < kTileT * kTileM; e += kThreads) {
      const int tt = e % kTileT, mm = e / kTileT;
      const long long t = t0 + tt;
      const int row = m0 + mm;
      float z = 0.f;
      if (row < m && t < t_total) {
        const T* xr = x + row * ldx;
        if (t < t_quad) {
          z = to_f(xr[ii[t]]) * to_f(xr[jj[t]]);
        } else {
          z = to_f(xr[t - t_quad]);
        }
      }
      zs[tt][mm] = z;
    }
    // stage P (kTileT x kTileN): consecutive threads read consecutive t of one output row
    for (int e = tid; e < kTileT * kTileN; e += kThreads) {
      const int tt = e % kTileT, nn = e / kTileT;
      const long long t = t0 + tt;
      const int col = k0 + nn;
      float v = 0.f;
      if (col < k && t < t_total) {
        v = t < t_quad ? to_f(p[static_cast<long long>(col) * t_quad + t])
                       : to_f(w[static_cast<long long>(col) * n + (t - t_quad)]);
      }
      ps[tt][nn] = v;
    }
    __syncthreads();
#pragma unroll 8
    for (int tt = 0; tt < kTileT; ++tt) {
      const float z0 = zs[tt][tm], z1 = zs[tt][tm + 1];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float pv = ps[tt][tn + j];
        acc[0][j] = fmaf(z0, pv, acc[0][j]);
        acc[1][j] = fmaf(z1, pv, acc[1][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int a = 0; a < 2; ++a) {
    const int row = m0 + tm + a;
    if (row >= m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = k0 + tn + j;
      if (col < k) {
        const float b = bias != nullptr ? to_f(bias[col]) : 0.f;
        y[static_cast<long long>(row) * k + col] = from_f<T>(acc[a][j] + b);
      }
    }
  }
}

template <typename T>
cudaError_t launch(const QuadricFullArgs& a, cudaStream_t stream) {
  if (a.m == 0 || a.k == 0) return cudaSuccess;
  const dim3 grid((a.k + kTileN - 1) / kTileN, (a.m + kTileM - 1) / kTileM);
  quadric_full_fwd_kernel<T><<<grid, kThreads, 0, stream>>>(
      static_cast<const T*>(a.x), static_cast<const T*>(a.p), static_cast<const T*>(a.w),
      static_cast<const T*>(a.bias), a.ii, a.jj, static_cast<T*>(a.y), a.m, a.n, a.k, a.ldx);
  return cudaGetLastError();
}

}  // namespace

cudaError_t quadric_full_forward(const QuadricFullArgs& args, cudaStream_t stream) {
  if (args.m < 0 || args.n < 1 || args.k < 0 || args.ldx < args.n) return cudaErrorInvalidValue;
  if (static_cast<long long>(args.m) > 65535LL * kTileM) return cudaErrorInvalidValue;
  switch (args.dtype) {
    case QuadricDtype::kFloat32: return launch<float>(args, stream);
    case QuadricDtype::kFloat16: return launch<__half>(args, stream);
    case QuadricDtype::kBFloat16: return launch<__nv_bfloat16>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace shallowkern
