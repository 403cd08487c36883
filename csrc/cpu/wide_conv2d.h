// Internal to the C++ CPU kernels of wide_conv2d (csrc/cpu/wide_conv2d*.cpp).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

namespace shallowkern {
namespace cpu {

constexpr uint8_t kNoGrad = 4;  // idx value where the ReLU zeroed the window

// A "huge" weight (K x C/G x R x S elements of elem bytes): from here the backward runs ATen's
// convolution_backward and a training forward oneDNN's planar conv, as eager does (LeNet conv2
// from d1 ~ 870 in fp32; the measurements are in wide_conv2d_backward.cpp).
constexpr int64_t kHugeWeightBytes = int64_t(256) << 20;
inline bool huge_weight(int64_t K, int64_t crs, int64_t elem) {
  return K * crs * elem >= kHugeWeightBytes;
}

// shallowkern::_wide_conv2d_native, CPU (schema: csrc/registration.cpp).
std::tuple<at::Tensor, at::Tensor> wide_conv2d_forward_cpu(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    bool relu, int64_t pool, bool return_indices);

// shallowkern::_wide_conv2d_native_backward, CPU.
std::tuple<at::Tensor, at::Tensor, at::Tensor> wide_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& saved, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, bool relu, int64_t pool,
    std::array<bool, 3> output_mask);

// The Meta (shape-only) kernels of both: the same checks and floor-division geometry as the CPU
// kernels, so eager and fake tensors agree on every output shape and every rejected call.
std::tuple<at::Tensor, at::Tensor> wide_conv2d_forward_meta(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    bool relu, int64_t pool, bool return_indices);
std::tuple<at::Tensor, at::Tensor, at::Tensor> wide_conv2d_backward_meta(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& saved, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, bool relu, int64_t pool,
    std::array<bool, 3> output_mask);

}  // namespace cpu
}  // namespace shallowkern
