// wide_conv2d forward, CUDA, small C_in (the first layer of a wide shallow net: conv1 of the
// generalized LeNet, x (N, 3, 32, 32), w (d1, 3, 5, 5), d1 up to 2048, N = 128..512).
// Torch-free: raw pointers, sizes, cudaStream_t; the torch binding is csrc/cuda/bindings.cu.
//
// Math (zero padding, cross-correlation; pool 2 = 2x2 window, stride 2, floor mode):
//   y[n,k,p,q]   = b[k] + sum_{c,r,s} x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw] * w[k,c,r,s]
//   a            = relu(y) if relu else y
//   out[n,k,i,j] = max_{di,dj} a[n,k,2i+di,2j+dj]                       (pool == 2, else out = a)
//   idx[n,k,i,j] = 2*di+dj of the first max in scan order (NaN wins); 4 if relu and out <= 0
// Storage float / __half / __nv_bfloat16; products and sums in fp32 with exact FMA (fp32 is not
// TF32 here), summed over c, r, s in that order, bias added last.
//
// Roofline, conv1 of LeNet at N = 128, d1 = 256 (x 128x3x32x32, w 256x3x5x5, no padding:
// conv 28x28, pooled 14x14), fp32, on an H100 (~3.0 TB/s device copy, measured on this
// workplace's H100; fp32 FFMA 67 TFLOP/s from the datasheet, rounded down to 60 here, not
// measured):
//   FLOPs       2 * 128 * 256 * 28*28 * 75          = 3.854e9   (1.927e9 FMA)
//   min bytes   x 1.573 MB + w 0.077 MB + b 1 KB + out 25.690 MB     = 27.34 MB
//               + uint8 indices 6.42 MB (training)                   = 33.76 MB
//   floors      compute 3.854e9 / 60e12 = 64.2 us;  memory 27.34 MB / 3.0e12 = 9.1 us (11.3 us)
//   intensity   141 FLOP/B (114 with indices) vs the ridge 60e12/3.0e12 = 20 FLOP/B
// So, although the output is 16x the input, the fused conv+pool is FFMA-bound by ~7x: each pooled
// output costs 4 * 75 = 300 FMA per channel for 4 bytes written. (Without the pool the output is
// 102.8 MB = 34 us, still under the 64 us of compute.) With fp16/bf16 storage the bytes halve
// and the FFMA floor stays at 64 us: a tensor-core variant (bf16/fp16 mma, fp32 accumulate,
// implicit GEMM with K = C*R*S = 75 padded to 80) would be memory-bound at ~5-7 us; it is the
// obvious next step for the half types. This kernel therefore optimizes FFMA issue:
//
// Design. A block (256 threads) takes one image, a slab of KG*KT output channels and a tile of
// TI x TJ quads (a quad = the 2x2 conv outputs of one pooled output; for pool == 1 simply a 2x2
// register block). It stages the slab's weights (as [group][c][r][s][KT], fp32), the bias and the
// input tile with halo and zero padding (C x rows x pitch, fp32) in shared memory once, then each
// thread loops over items (channel group, quad), consecutive threads taking consecutive quads of
// one group: per item it keeps 4*KT fp32 accumulators in registers (KT = 16: 64 accumulators),
// reads each (c, r, s) weight vector of its KT channels as KT/4 warp-broadcast float4 loads and
// the input as aligned float2 pairs (5x5 and 3x3 with unit column stride/dilation: a row of S+1
// values serves all S taps of both quad columns; other shapes take the generic path, 4 scalar
// loads per tap), and issues 4*KT FFMA per tap. On the 5x5 path one (c, r) of a KT = 16 item is
// 320 FFMA + 20 LDS.128 + 6 LDS.64: ~92% of the issue slots are FFMA, and ~0.1 shared-memory
// wavefronts per FFMA against the 0.25 an SM sustains. The epilogue adds the bias, applies the
// ReLU and the 2x2 max (on values rounded to the storage type, so ties resolve as in the
// reference), and writes the pooled output: the 32 lanes of a warp store 32 consecutive
// elements of one output plane (and the uint8 index), coalesced. The launcher picks KT in {16, 4},
// KG in 1..16 and the tile height with a small cost model (wide_conv2d.h: wc2d_make_plan) that
// counts issue slots and shared-memory wavefronts per item, lane utilization of the last
// item-loop iteration and blocks on the busiest SM, and pads the staged rows to a pitch that
// avoids bank conflicts between quad rows. For LeNet conv1 on 132 SMs it picks whole-image tiles
// (14x14 quads, pitch 46) with KT = 4 x 13 groups (N = 128, d1 = 256: 640 blocks, 33 KB smem)
// or KT = 16 x 13 groups (d1 >= 1024: 81 KB); csrc/tests/test_cuda_indexing.cpp prints the table.
// SHALLOWKERN_WC2D_KT=4|16 pins KT, to compare the two on a GPU.
//
// Staging is negligible here: ~3K input + ~19K weight floats per block against ~10^7 FMA.
// The index arithmetic and the per-item math are SK_HD functions in wide_conv2d.h, exercised on
// the host by csrc/tests/test_cuda_indexing.cpp. Unmeasured on a GPU so far: see
// scripts/gpu_check.sh and tests/cuda/test_wide_conv2d_cuda.py.

#include <atomic>
#include <cstdlib>

#include "wide_conv2d.h"

namespace shallowkern {
namespace cuda {
namespace {

constexpr int kMaxDevices = 64;

// Registers: KT = 16 holds 64 accumulators + 16 weights + 12 inputs; 2 blocks (16 warps) per SM
// caps it at 128 registers. KT = 4 is for narrow layers (K < 16) and fits 4 blocks per SM.
template <typename T, int KT, int RC, int SC>
__global__ void __launch_bounds__(kWideConv2dThreads, (KT >= 16 ? 2 : 4))
    wide_conv2d_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w,
                           const T* __restrict__ bias, T* __restrict__ out,
                           uint8_t* __restrict__ idx, const WideConv2dShape s,
                           const WideConv2dGeometry g, const WideConv2dPlan p,
                           const bool pair_stores) {
  extern __shared__ float4 smem_f4[];  // float4: 16-byte alignment of every section
  float* smem = reinterpret_cast<float*>(smem_f4);
  const int crs = s.c * s.r * s.s;
  float* sw = smem;
  float* sb = smem + wc2d_smem_bias_offset(p.kg, KT, crs);
  float* sx = smem + wc2d_smem_input_offset(p.kg, KT, crs);
  const WideConv2dBlock b = wc2d_block(s, g, p, blockIdx.x);
  const int tid = threadIdx.x;
  wc2d_stage_weights<KT>(sw, sb, w, bias, s, b, tid, kWideConv2dThreads);
  wc2d_stage_input(sx, x, s, b, p.rows_in, p.cols_in, p.pitch, tid / 32, kWideConv2dThreads / 32,
                   tid % 32, 32);
  __syncthreads();
  wc2d_block_items<T, KT, RC, SC>(sw, sb, sx, out, idx, s, g, p, b, pair_stores, tid,
                                  kWideConv2dThreads);
}

// Device facts, queried once per device (benign race: every writer stores the same values).
cudaError_t device_limits(WideConv2dDeviceLimits* lim, int* device) {
  static std::atomic<int> sms[kMaxDevices];
  static std::atomic<long long> optin[kMaxDevices], per_sm[kMaxDevices];
  int dev = 0;
  SK_CUDA_TRY(cudaGetDevice(&dev));
  *device = dev;
  if (dev < 0 || dev >= kMaxDevices) return cudaErrorInvalidDevice;
  if (sms[dev].load(std::memory_order_acquire) == 0) {
    int n = 0, o = 0, m = 0;
    SK_CUDA_TRY(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    SK_CUDA_TRY(cudaDeviceGetAttribute(&o, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    SK_CUDA_TRY(cudaDeviceGetAttribute(&m, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev));
    optin[dev].store(o, std::memory_order_relaxed);
    per_sm[dev].store(m, std::memory_order_relaxed);
    sms[dev].store(n, std::memory_order_release);
  }
  lim->sms = sms[dev].load(std::memory_order_acquire);
  lim->smem_per_block = size_t(optin[dev].load(std::memory_order_relaxed));
  lim->smem_per_sm = size_t(per_sm[dev].load(std::memory_order_relaxed));
  return cudaSuccess;
}

// SHALLOWKERN_WC2D_KT=4|16 restricts the plan to one register blocking (read once per process):
// a tuning knob for comparing the two on a GPU, not an API.
int forced_kt() {
  static const int kt = [] {
    const char* v = std::getenv("SHALLOWKERN_WC2D_KT");
    const int k = v ? std::atoi(v) : 0;
    return (k == 4 || k == 16) ? k : 0;
  }();
  return kt;
}

bool same_shape(const WideConv2dShape& a, const WideConv2dShape& b) {
  return a.n == b.n && a.c == b.c && a.h == b.h && a.w == b.w && a.k == b.k && a.r == b.r &&
         a.s == b.s && a.stride_h == b.stride_h && a.stride_w == b.stride_w &&
         a.pad_h == b.pad_h && a.pad_w == b.pad_w && a.dil_h == b.dil_h && a.dil_w == b.dil_w &&
         a.pool == b.pool && a.relu == b.relu && a.write_indices == b.write_indices;
}

template <typename T, int KT, int RC, int SC>
cudaError_t launch(const WideConv2dArgs& a, const WideConv2dGeometry& g, const WideConv2dPlan& p,
                   int device, cudaStream_t stream) {
  auto* kernel = &wide_conv2d_fwd_kernel<T, KT, RC, SC>;
  if (p.smem_bytes > 48 * 1024) {
    // Opting in above 48 KB is a per-function, per-device attribute; set it once per size.
    static std::atomic<long long> configured[kMaxDevices];
    if (configured[device].load(std::memory_order_acquire) < (long long)p.smem_bytes) {
      SK_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       int(p.smem_bytes)));
      configured[device].store((long long)p.smem_bytes, std::memory_order_release);
    }
  }
  T* out = static_cast<T*>(a.out);
  const bool pair_stores = a.shape.pool == 1 && g.ow % 2 == 0 &&
                           reinterpret_cast<uintptr_t>(out) % (2 * sizeof(T)) == 0;
  kernel<<<unsigned(p.blocks), kWideConv2dThreads, p.smem_bytes, stream>>>(
      static_cast<const T*>(a.input), static_cast<const T*>(a.weight),
      static_cast<const T*>(a.bias), out, a.shape.write_indices ? a.indices : nullptr, a.shape, g,
      p, pair_stores);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_typed(const WideConv2dArgs& a, const WideConv2dGeometry& g,
                         const WideConv2dPlan& p, int device, cudaStream_t stream) {
  const int path = wc2d_fast_path(a.shape);
  if (p.kt == 16) {
    if (path == 5) return launch<T, 16, 5, 5>(a, g, p, device, stream);
    if (path == 3) return launch<T, 16, 3, 3>(a, g, p, device, stream);
    return launch<T, 16, 0, 0>(a, g, p, device, stream);
  }
  if (path == 5) return launch<T, 4, 5, 5>(a, g, p, device, stream);
  if (path == 3) return launch<T, 4, 3, 3>(a, g, p, device, stream);
  return launch<T, 4, 0, 0>(a, g, p, device, stream);
}

}  // namespace

cudaError_t wide_conv2d_forward(const WideConv2dArgs& a, cudaStream_t stream) {
  const WideConv2dShape& s = a.shape;
  WideConv2dGeometry g;
  if (!wc2d_geometry(s, &g)) return cudaErrorInvalidValue;
  if (s.n == 0 || s.k == 0) return cudaSuccess;
  if (a.input == nullptr || a.weight == nullptr || a.out == nullptr ||
      (s.write_indices && a.indices == nullptr))
    return cudaErrorInvalidValue;

  WideConv2dDeviceLimits lim;
  int device = 0;
  SK_CUDA_TRY(device_limits(&lim, &device));
  // One-entry cache per thread: a training loop calls the same shape every step, and the plan
  // search (~500 candidates) would otherwise cost a few microseconds per call.
  thread_local struct {
    bool valid = false;
    int device = -1;
    WideConv2dShape shape;
    WideConv2dPlan plan;
  } cache;
  WideConv2dPlan plan;
  if (cache.valid && cache.device == device && same_shape(cache.shape, s)) {
    plan = cache.plan;
  } else {
    if (!wc2d_make_plan(s, g, lim, &plan, forced_kt())) return cudaErrorInvalidValue;
    cache.valid = true;
    cache.device = device;
    cache.shape = s;
    cache.plan = plan;
  }

  switch (a.dtype) {
    case WideConv2dDtype::kFloat32:
      return launch_typed<float>(a, g, plan, device, stream);
    case WideConv2dDtype::kFloat16:
      return launch_typed<__half>(a, g, plan, device, stream);
    case WideConv2dDtype::kBFloat16:
      return launch_typed<__nv_bfloat16>(a, g, plan, device, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace shallowkern
