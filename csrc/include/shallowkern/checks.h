// TORCH_CHECK helpers shared by the C++ CPU kernels and the CUDA binding. Messages name the
// argument, so a bad call from Python reads like a Python error.
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>

#define SK_CHECK_DIM(t, d) \
  TORCH_CHECK((t).dim() == (d), #t " must be a " #d "-D tensor, got ", (t).dim(), "-D")
#define SK_CHECK_DEVICE_MATCH(a, b) \
  TORCH_CHECK((a).device() == (b).device(), #a " and " #b " must be on the same device, got ", \
              (a).device(), " and ", (b).device())
// For kernels with float32 / float64 instantiations only; `op` names the op in the message.
#define SK_CHECK_FLOAT_OR_DOUBLE(op, t)                                                    \
  TORCH_CHECK((t).scalar_type() == at::kFloat || (t).scalar_type() == at::kDouble, op, \
              ": " #t " must be float32 or float64, got ", (t).scalar_type())
#define SK_CHECK_DTYPE_MATCH(a, b) \
  TORCH_CHECK((a).scalar_type() == (b).scalar_type(), #a " and " #b \
              " must have the same dtype, got ", (a).scalar_type(), " and ", (b).scalar_type())

namespace shallowkern {

// Output size of a convolution along one dimension (floor), as aten computes it.
inline int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  return (in + 2 * pad - dil * (k - 1) - 1) / stride + 1;
}

}  // namespace shallowkern
