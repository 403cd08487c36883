// The thin torch binding of the CUDA kernels: validates arguments (errors name the argument),
// allocates outputs, takes the current stream and calls the torch-free launchers in csrc/cuda.
// Built only with a CUDA torch (setup.py adds csrc/cuda/*.cu and -DSHALLOWKERN_WITH_CUDA).
//
// shallowkern::_wide_conv2d_native (schema in csrc/registration.cpp), CUDA:
//   input (N, C, H, W) fp32/fp16/bf16, C <= 16 (the op routes C <= 4 here), made contiguous;
//   weight (K, C, R, S), bias (K) or None, same dtype and device; groups == 1;
//   returns out (N, K, OH/pool, OW/pool) contiguous, and uint8 indices of the same shape when
//   pool == 2 and return_indices, else an empty uint8 tensor of shape (0,).
//
// Only device-generic c10 APIs are used (DeviceGuard, the registered CUDA guard's current stream,
// Stream::native_handle) and no c10/cuda header: the file then compiles against the CPU torch
// wheel too (whose c10/cuda headers lack the CMake-generated c10/cuda/impl/cuda_cmake_macros.h),
// so CI can compile-check it; it runs only in a CUDA build, where libc10_cuda registers the guard.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "shallowkern/checks.h"
#include "wide_conv2d.h"

namespace shallowkern {
namespace {

namespace skc = shallowkern::cuda;

int checked_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), "wide_conv2d (CUDA): ", what, " = ",
              v, " is out of the kernel's range [0, 2^31)");
  return static_cast<int>(v);
}

std::tuple<at::Tensor, at::Tensor> wide_conv2d_native_cuda(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias_opt,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    bool relu, int64_t pool, bool return_indices) {
  const char* op = "wide_conv2d (CUDA)";
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  // The rules every conv-shaped op shares (ranks, devices, dtypes, lists, groups, bias, the
  // floor-division geometry), then this kernel's own contract.
  const Conv2dGeom g = check_conv2d_args(op, input, weight, has_bias ? &*bias_opt : nullptr,
                                         stride, padding, dilation, groups, pool);
  TORCH_CHECK(input.is_cuda(), op, ": input must be a CUDA tensor, got ", input.device());
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": input must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(groups == 1, op, ": groups must be 1 for the direct kernel, got ", groups);
  TORCH_CHECK(input.size(1) >= 1 && input.size(1) <= skc::kWideConv2dMaxCin, op,
              ": input must have 1..", skc::kWideConv2dMaxCin,
              " channels for the direct kernel, got ", input.size(1));
  const int64_t n = g.N, h = g.H, w = g.W, k = g.K, r = g.R, s = g.S, oh = g.OH, ow = g.OW;

  skc::WideConv2dShape shape;
  shape.n = checked_int(n, "input.size(0)");
  shape.c = checked_int(input.size(1), "input.size(1)");
  shape.h = checked_int(h, "input.size(2)");
  shape.w = checked_int(w, "input.size(3)");
  shape.k = checked_int(k, "weight.size(0)");
  shape.r = checked_int(r, "weight.size(2)");
  shape.s = checked_int(s, "weight.size(3)");
  shape.stride_h = checked_int(stride[0], "stride[0]");
  shape.stride_w = checked_int(stride[1], "stride[1]");
  shape.pad_h = checked_int(padding[0], "padding[0]");
  shape.pad_w = checked_int(padding[1], "padding[1]");
  shape.dil_h = checked_int(dilation[0], "dilation[0]");
  shape.dil_w = checked_int(dilation[1], "dilation[1]");
  shape.pool = static_cast<int>(pool);
  shape.relu = relu;
  shape.write_indices = pool == 2 && return_indices;

  const c10::DeviceGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor wt = weight.contiguous();
  const at::Tensor b = has_bias ? bias_opt->contiguous() : at::Tensor();
  const std::vector<int64_t> out_shape = {n, k, oh / pool, ow / pool};
  at::Tensor out = at::empty(out_shape, x.options());
  at::Tensor indices = shape.write_indices ? at::empty(out_shape, x.options().dtype(at::kByte))
                                           : at::empty({0}, x.options().dtype(at::kByte));
  if (out.numel() == 0) return {out, indices};

  skc::WideConv2dArgs args;
  args.dtype = dtype == at::kFloat  ? skc::WideConv2dDtype::kFloat32
               : dtype == at::kHalf ? skc::WideConv2dDtype::kFloat16
                                    : skc::WideConv2dDtype::kBFloat16;
  args.input = x.const_data_ptr();
  args.weight = wt.const_data_ptr();
  args.bias = has_bias ? b.const_data_ptr() : nullptr;
  args.out = out.mutable_data_ptr();
  args.indices = shape.write_indices ? indices.mutable_data_ptr<uint8_t>() : nullptr;
  args.shape = shape;

  // The current stream of input's device (what at::cuda::getCurrentCUDAStream returns).
  const c10::Stream current =
      c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(input.device());
  const auto stream = static_cast<cudaStream_t>(current.native_handle());
  const cudaError_t err = skc::wide_conv2d_forward(args, stream);
  TORCH_CHECK(err != cudaErrorInvalidValue,
              "wide_conv2d (CUDA): the direct kernel does not support this call (input ",
              input.sizes(), ", weight ", weight.sizes(), ", stride ", stride, ", padding ",
              padding, ", dilation ", dilation, ", pool ", pool,
              "): the tile does not fit in shared memory or a size is out of range");
  TORCH_CHECK(err == cudaSuccess, "wide_conv2d (CUDA): kernel launch failed: ",
              cudaGetErrorString(err));
  const cudaError_t last = cudaGetLastError();  // as C10_CUDA_KERNEL_LAUNCH_CHECK does
  TORCH_CHECK(last == cudaSuccess, "wide_conv2d (CUDA): CUDA error after the launch: ",
              cudaGetErrorString(last));
  return {out, indices};
}

}  // namespace
}  // namespace shallowkern

TORCH_LIBRARY_IMPL(shallowkern, CUDA, m) {
  m.impl("_wide_conv2d_native", &shallowkern::wide_conv2d_native_cuda);
}

// ---- quadric_linear (full form forward; csrc/cuda/quadric_linear.cu) ----------------------------
#include "quadric_linear.h"

namespace shallowkern {
namespace {

at::Tensor quadric_linear_full_cuda(const at::Tensor& input, const at::Tensor& weight_quad,
                                    const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  namespace skc = shallowkern::cuda;
  const char* op = "_quadric_linear_full_cuda";
  TORCH_CHECK(input.is_cuda() && input.dim() == 2, op, ": input must be a 2-D CUDA tensor, got ",
              input.sizes(), " on ", input.device());
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": input must be float32, float16 or bfloat16, got ", dtype);
  const int64_t m = input.size(0), n = input.size(1), k = weight.size(0);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == n, op, ": weight must be (K, ", n, "), got ",
              weight.sizes());
  TORCH_CHECK(weight_quad.dim() == 2 && weight_quad.size(0) == k &&
                  weight_quad.size(1) == n * (n + 1) / 2, op, ": weight_quad must be (", k, ", ",
              n * (n + 1) / 2, "), got ", weight_quad.sizes());
  const bool has_bias = bias.has_value() && bias->defined();
  for (const at::Tensor* t : {&weight_quad, &weight}) {
    TORCH_CHECK(t->scalar_type() == dtype && t->device() == input.device(), op,
                ": weights must be ", dtype, " on ", input.device());
  }
  TORCH_CHECK(m <= std::numeric_limits<int>::max() && n * (n + 1) / 2 < (1LL << 31), op,
              ": sizes out of the kernel's int range");
  const c10::DeviceGuard guard(input.device());
  const at::Tensor x = input.stride(1) == 1 ? input : input.contiguous();
  const at::Tensor p = weight_quad.contiguous(), w = weight.contiguous();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  const at::Tensor idx = at::triu_indices(n, n, 0, x.options().dtype(at::kLong)).to(at::kInt);
  const at::Tensor ii = idx[0].contiguous(), jj = idx[1].contiguous();
  at::Tensor y = at::empty({m, k}, x.options());
  skc::QuadricFullArgs a;
  a.dtype = dtype == at::kFloat  ? skc::QuadricDtype::kFloat32
            : dtype == at::kHalf ? skc::QuadricDtype::kFloat16
                                 : skc::QuadricDtype::kBFloat16;
  a.x = x.const_data_ptr();
  a.p = p.const_data_ptr();
  a.w = w.const_data_ptr();
  a.bias = has_bias ? b.const_data_ptr() : nullptr;
  a.ii = ii.const_data_ptr<int>();
  a.jj = jj.const_data_ptr<int>();
  a.y = y.mutable_data_ptr();
  a.m = static_cast<int>(m), a.n = static_cast<int>(n), a.k = static_cast<int>(k);
  a.ldx = x.stride(0) < n ? n : x.stride(0);
  const c10::Stream current =
      c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(input.device());
  const cudaError_t err =
      skc::quadric_full_forward(a, static_cast<cudaStream_t>(current.native_handle()));
  TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace
}  // namespace shallowkern

TORCH_LIBRARY_IMPL(shallowkern, CUDA, m) {
  m.impl("_quadric_linear_full_cuda", &shallowkern::quadric_linear_full_cuda);
}

// ---- spinal_linear (fused forward, inference; csrc/cuda/spinal_linear.cu) ---------------------
// shallowkern::_spinal_linear_cuda: input (B, F) fp32/fp16/bf16; weight_x L (W, F_s), weight_h
// L-1 (W, W), bias L (W,) or none, out_weight (O, L*W), out_bias (O,) or None; BatchNorm folded
// by the caller. Returns y (B, O). Shapes are validated by the public op's checks as well.
#include "spinal_linear.h"

namespace shallowkern {
namespace {

at::Tensor spinal_linear_cuda(const at::Tensor& input, at::TensorList weight_x,
                              at::TensorList weight_h, at::TensorList bias,
                              const at::Tensor& out_weight,
                              const std::optional<at::Tensor>& out_bias, int64_t splits,
                              c10::string_view activation) {
  namespace skc = shallowkern::cuda;
  const char* op = "_spinal_linear_cuda";
  TORCH_CHECK(input.is_cuda() && input.dim() == 2, op, ": input must be a 2-D CUDA tensor, got ",
              input.sizes(), " on ", input.device());
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": input must be float32, float16 or bfloat16, got ", dtype);
  const int64_t B = input.size(0), F = input.size(1), L = static_cast<int64_t>(weight_x.size());
  TORCH_CHECK(L >= 1 && L <= skc::kSpinalMaxLayers, op, ": 1..", skc::kSpinalMaxLayers,
              " layers supported, got ", L);
  TORCH_CHECK(splits >= 1 && splits <= F, op, ": splits must be in [1, ", F, "], got ", splits);
  TORCH_CHECK(static_cast<int64_t>(weight_h.size()) == L - 1, op, ": weight_h must hold ", L - 1,
              " matrices");
  TORCH_CHECK(bias.empty() || static_cast<int64_t>(bias.size()) == L, op, ": bias must hold ", L,
              " vectors or none");
  const int64_t W = weight_x[0].size(0), O = out_weight.size(0);
  TORCH_CHECK(out_weight.dim() == 2 && out_weight.size(1) == L * W, op,
              ": out_weight must be (O, ", L * W, "), got ", out_weight.sizes());
  TORCH_CHECK(B * std::max<int64_t>(F, O) < (1LL << 31), op, ": sizes out of the kernel's int range");
  const c10::DeviceGuard guard(input.device());
  const at::Tensor x = input.stride(1) == 1 ? input : input.contiguous();
  std::vector<at::Tensor> keep;
  auto prep = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == dtype && t.device() == input.device(), op, ": ", name,
                " must be ", dtype, " on ", input.device());
    keep.push_back(t.contiguous());
    return keep.back().const_data_ptr();
  };
  skc::SpinalArgs a{};
  a.dtype = dtype == at::kFloat  ? skc::SpinalDtype::kFloat32
            : dtype == at::kHalf ? skc::SpinalDtype::kFloat16
                                 : skc::SpinalDtype::kBFloat16;
  a.act = activation == "relu"      ? skc::SpinalAct::kRelu
          : activation == "tanh"    ? skc::SpinalAct::kTanh
          : activation == "sigmoid" ? skc::SpinalAct::kSigmoid
                                    : skc::SpinalAct::kIdentity;
  TORCH_CHECK(activation == "relu" || activation == "tanh" || activation == "sigmoid" ||
                  activation == "identity", op, ": unknown activation ", activation);
  const int64_t q = F / splits, r = F % splits;
  for (int64_t i = 0; i < L; ++i) {
    const int64_t s = i % splits, ks = q + (s < r ? 1 : 0), off = s * q + std::min(s, r);
    TORCH_CHECK(weight_x[i].dim() == 2 && weight_x[i].size(0) == W && weight_x[i].size(1) == ks,
                op, ": weight_x[", i, "] must be (", W, ", ", ks, "), got ", weight_x[i].sizes());
    a.wx[i] = prep(weight_x[i], "weight_x");
    a.wh[i] = i > 0 ? prep(weight_h[i - 1], "weight_h") : nullptr;
    a.bias[i] = bias.empty() ? nullptr : prep(bias[i], "bias");
    a.off[i] = static_cast<int>(off);
    a.ks[i] = static_cast<int>(ks);
  }
  a.wo = prep(out_weight, "out_weight");
  a.bo = out_bias.has_value() && out_bias->defined() ? prep(*out_bias, "out_bias") : nullptr;
  at::Tensor y = at::empty({B, O}, x.options());
  a.x = x.const_data_ptr();
  a.y = y.mutable_data_ptr();
  a.batch = static_cast<int>(B), a.ldx = static_cast<int>(x.stride(0) < F ? F : x.stride(0));
  a.layers = static_cast<int>(L), a.width = static_cast<int>(W), a.out = static_cast<int>(O);
  const c10::Stream current =
      c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(input.device());
  const cudaError_t err =
      skc::spinal_linear_forward(a, static_cast<cudaStream_t>(current.native_handle()));
  TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed (", cudaGetErrorString(err),
              "); layer_width and out_features need ", skc::spinal_smem_bytes(a.width, a.out),
              " bytes of shared memory");
  return y;
}

}  // namespace
}  // namespace shallowkern

TORCH_LIBRARY_IMPL(shallowkern, CUDA, m) {
  m.impl("_spinal_linear_cuda", &shallowkern::spinal_linear_cuda);
}
