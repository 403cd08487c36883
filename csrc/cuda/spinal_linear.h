// spinal_linear CUDA forward (inference, BatchNorm folded by the caller): launcher declaration,
// shared with the torch binding csrc/cuda/bindings.cu. Torch-free: raw pointers, int sizes,
// cudaStream_t. Math: shallowkern/ops/spinal_linear.py; kernel: spinal_linear.cu.
#pragma once

#include <cuda_runtime_api.h>

namespace shallowkern {
namespace cuda {

enum class SpinalDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
enum class SpinalAct : int { kRelu = 0, kTanh = 1, kSigmoid = 2, kIdentity = 3 };

constexpr int kSpinalMaxLayers = 16;   // per-layer pointers travel in the kernel parameters
constexpr int kSpinalRows = 4;         // batch rows per block: each weight load serves 4 rows
constexpr int kSpinalThreads = 256;    // 8 warps; one warp per output neuron at a time

struct SpinalArgs {
  SpinalDtype dtype;                      // storage of x, weights, y (fp32 accumulation)
  SpinalAct act;
  const void* x;                          // (B, F), row stride ldx, unit column stride
  const void* wx[kSpinalMaxLayers];       // layer i: (W, ks[i mod S]) contiguous
  const void* wh[kSpinalMaxLayers];       // layer i >= 1: (W, W) contiguous (wh[0] unused)
  const void* bias[kSpinalMaxLayers];     // (W) or nullptr
  const void* wo;                         // (O, L*W) contiguous
  const void* bo;                         // (O) or nullptr
  void* y;                                // (B, O) contiguous
  int off[kSpinalMaxLayers];              // first column of the split layer i reads
  int ks[kSpinalMaxLayers];               // its width
  int batch, ldx, layers, width, out;
};

// Dynamic shared memory the kernel needs: h_{i-1}, h_i and the y accumulators of a row block.
inline size_t spinal_smem_bytes(int width, int out) {
  return sizeof(float) * static_cast<size_t>(kSpinalRows) * (2 * width + out);
}

// Launches the fused forward on `stream`. cudaErrorInvalidValue for unsupported sizes
// (layers > kSpinalMaxLayers, shared memory over the device's opt-in limit).
cudaError_t spinal_linear_forward(const SpinalArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace shallowkern
