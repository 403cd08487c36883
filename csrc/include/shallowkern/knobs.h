// Tuning knobs read by the C++ kernels: each from its environment variable ONCE (first use),
// then only through set_knob, which shallowkern._knobs.override calls (via shallowkern._C.set_knob)
// so that Python's knob registry and the kernels agree. Names and values as the Python registry
// (shallowkern/_knobs.py) lists them:
//
//   SHALLOWKERN_CPU_FORWARD          wide_conv2d.cpu_forward          "" (by shape) | direct | fused | vendor
//   SHALLOWKERN_CPU_CONV_LAYOUT      wide_conv2d.cpu_conv_layout      "" (timed per shape) | channels_last | planar
//   SHALLOWKERN_CPU_BACKWARD         wide_conv2d.cpu_backward         "" (by weight size) | fused | vendor
//   SHALLOWKERN_CPU_SPARSE_BACKWARD  wide_conv2d.cpu_sparse_backward  1 | 0 (dense MKL GEMMs)
//   SHALLOWKERN_CPU_AVX512           wide_conv2d.cpu_avx512           1 | 0 (as a CPU without AVX-512)
//   SHALLOWKERN_CPU_PARTIALS_MB      wide_conv2d.cpu_partials_mb      MiB for weight-grad partials
//   SHALLOWKERN_CPU_HUGE_PAGES       cpu.huge_pages                   1 | 0 (large outputs on 4 KiB pages)
//   SHALLOWKERN_WC2D_KT              wide_conv2d.cuda_kt              read once by the CUDA planner
//
// Torch-free; the getters are a relaxed atomic load (hot paths call them per op call).
#pragma once

#include <cstdint>
#include <string>

namespace shallowkern {
namespace knobs {

enum class CpuForward : int { kAuto = 0, kDirect = 1, kFused = 2, kVendor = 3 };

// The vendor forward's oneDNN convolution layout (csrc/cpu/wide_conv2d_forward.cpp).
enum class CpuConvLayout : int { kAuto = 0, kChannelsLast = 1, kPlanar = 2 };

// The CPU backward: our pool/ReLU-fused kernels, or ATen's convolution_backward (huge weights).
enum class CpuBackward : int { kAuto = 0, kFused = 1, kVendor = 2 };

CpuForward cpu_forward();
CpuConvLayout cpu_conv_layout();
CpuBackward cpu_backward();
bool cpu_sparse_backward();
bool cpu_avx512();            // allowed to use AVX-512 (whether the CPU has it is separate)
int64_t cpu_partials_bytes();  // budget of the backward's per-thread weight-gradient partials
bool cpu_huge_pages();          // large outputs on transparent huge pages (cpu/alloc.h)

// Sets the knob read from environment variable `env` to `value` ("" restores the default).
// Throws std::invalid_argument (Python: ValueError) for an unknown name or a bad value.
void set_knob(const std::string& env, const std::string& value);
// The knob's current value as text (what set_knob takes), for tests and diagnostics.
std::string get_knob(const std::string& env);

}  // namespace knobs
}  // namespace shallowkern
