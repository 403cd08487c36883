// spinal_linear CUDA forward: the whole SpinalNet head in one kernel (inference).
//
//   z_i = W_i^x x_{s(i)} + W_i^h h_{i-1} + b_i,  h_i = act(z_i),  y = W_o [h_0..h_{L-1}] + b_o
//
// A block owns kSpinalRows batch rows. h_{i-1} and h_i live in shared memory (fp32), and y is
// accumulated there layer by layer (y += W_o[:, iW:(i+1)W] h_i), so nothing but x, the weights
// and y touches global memory and no concatenation exists anywhere. Each warp computes one
// neuron for all rows at a time: its lanes stride along the weight row (coalesced loads, each
// weight used for kSpinalRows rows) and reduce with shuffles. This is the small-batch (GEMV-like)
// regime the head lives in at inference; large batches go to the Triton GEMM kernels.
#include "spinal_linear.h"

#include "../include/shallowkern/cuda_utils.cuh"

namespace shallowkern {
namespace cuda {
namespace {

template <typename T>
__device__ __forceinline__ float ld(const T* p, int i) {
  return to_float(p[i]);
}

__device__ __forceinline__ float act_fn(SpinalAct a, float z) {
  switch (a) {
    case SpinalAct::kRelu: return z > 0.f ? z : 0.f;
    case SpinalAct::kTanh: return tanhf(z);
    case SpinalAct::kSigmoid: return 1.f / (1.f + expf(-z));
    default: return z;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  SK_UNROLL
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kSpinalThreads) spinal_forward_kernel(const SpinalArgs a) {
  extern __shared__ float smem[];
  constexpr int R = kSpinalRows;
  const int W = a.width, O = a.out, LW = a.layers * a.width;
  float* hprev = smem;            // (R, W)
  float* hcur = smem + R * W;     // (R, W)
  float* yacc = smem + 2 * R * W; // (R, O)
  const int row0 = blockIdx.x * R;
  const int nrows = min(R, a.batch - row0);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const T* x = static_cast<const T*>(a.x);

  for (int t = threadIdx.x; t < R * O; t += blockDim.x) {
    const int o = t % O;
    yacc[t] = a.bo != nullptr ? ld(static_cast<const T*>(a.bo), o) : 0.f;
  }
  for (int i = 0; i < a.layers; ++i) {
    const T* wx = static_cast<const T*>(a.wx[i]);
    const T* wh = i > 0 ? static_cast<const T*>(a.wh[i]) : nullptr;
    const T* b = static_cast<const T*>(a.bias[i]);
    const int off = a.off[i], ks = a.ks[i];
    for (int n = warp; n < W; n += nwarps) {
      float acc[R];
      SK_UNROLL
      for (int r = 0; r < R; ++r) acc[r] = 0.f;
      const T* wrow = wx + static_cast<size_t>(n) * ks;
      for (int k = lane; k < ks; k += 32) {
        const float w = ld(wrow, k);
        SK_UNROLL
        for (int r = 0; r < R; ++r)
          if (r < nrows) acc[r] += w * ld(x, (row0 + r) * a.ldx + off + k);
      }
      if (wh != nullptr) {
        const T* hrow = wh + static_cast<size_t>(n) * W;
        for (int k = lane; k < W; k += 32) {
          const float w = ld(hrow, k);
          SK_UNROLL
          for (int r = 0; r < R; ++r) acc[r] += w * hprev[r * W + k];
        }
      }
      SK_UNROLL
      for (int r = 0; r < R; ++r) {
        const float z = warp_sum(acc[r]) + (b != nullptr ? ld(b, n) : 0.f);
        if (lane == 0) hcur[r * W + n] = act_fn(a.act, z);
      }
    }
    __syncthreads();  // h_i complete
    const T* wo = static_cast<const T*>(a.wo);
    for (int o = warp; o < O; o += nwarps) {  // y += W_o[:, iW:(i+1)W] h_i
      float acc[R];
      SK_UNROLL
      for (int r = 0; r < R; ++r) acc[r] = 0.f;
      const T* wrow = wo + static_cast<size_t>(o) * LW + static_cast<size_t>(i) * W;
      for (int k = lane; k < W; k += 32) {
        const float w = ld(wrow, k);
        SK_UNROLL
        for (int r = 0; r < R; ++r) acc[r] += w * hcur[r * W + k];
      }
      SK_UNROLL
      for (int r = 0; r < R; ++r) {
        const float s = warp_sum(acc[r]);
        if (lane == 0) yacc[r * O + o] += s;
      }
    }
    float* t = hprev;  // h_i becomes h_{i-1}; every reader of hprev finished before the barrier
    hprev = hcur;
    hcur = t;
    __syncthreads();
  }
  T* y = static_cast<T*>(a.y);
  for (int t = threadIdx.x; t < nrows * O; t += blockDim.x)
    y[static_cast<size_t>(row0) * O + t] = from_float<T>(yacc[t]);
}

template <typename T>
cudaError_t launch(const SpinalArgs& a, cudaStream_t stream) {
  const size_t smem = spinal_smem_bytes(a.width, a.out);
  if (smem > 48 * 1024) {
    int dev = 0, optin = 0;
    SK_CUDA_TRY(cudaGetDevice(&dev));
    SK_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (smem > static_cast<size_t>(optin)) return cudaErrorInvalidValue;
    SK_CUDA_TRY(cudaFuncSetAttribute(spinal_forward_kernel<T>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(smem)));
  }
  const int blocks = cdiv(a.batch, kSpinalRows);
  spinal_forward_kernel<T><<<blocks, kSpinalThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t spinal_linear_forward(const SpinalArgs& a, cudaStream_t stream) {
  if (a.layers < 1 || a.layers > kSpinalMaxLayers || a.width < 1 || a.out < 1 || a.batch < 0)
    return cudaErrorInvalidValue;
  if (a.batch == 0) return cudaSuccess;
  switch (a.dtype) {
    case SpinalDtype::kFloat32: return launch<float>(a, stream);
    case SpinalDtype::kFloat16: return launch<__half>(a, stream);
    case SpinalDtype::kBFloat16: return launch<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace shallowkern
