// TORCH_CHECK helpers shared by the C++ CPU kernels and the CUDA binding. Messages name the
// argument, so a bad call from Python reads like a Python error.
//
// check_conv2d_args validates every argument of a conv2d-shaped op (the rules of the Python
// wrapper, shallowkern/ops/wide_conv2d.py check_args, and of aten's conv2d) and returns its
// geometry, computed with the floor division of geometry.h: the same formula as the op's fake
// kernel, so eager and fake agree on every output shape. Device-specific rules (CPU tensors,
// supported dtypes) stay with each kernel.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

#include "shallowkern/geometry.h"

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

// Output channels of the op: K, except with zero input channels, where aten's conv2d (eager,
// meta and compiled alike) returns an (N, 0, OH, OW) tensor whatever K is; the ops follow it so
// that they stay drop-in replacements of conv2d -> relu -> max_pool2d.
inline int64_t conv2d_out_channels(const Conv2dGeom& g) { return g.C == 0 ? 0 : g.K; }

// Validates (input, weight, bias, stride, padding, dilation, groups, pool) of a conv2d-shaped op
// named `op` and returns the geometry. pool is 1 (none) or 2 (2x2 window, stride 2, floor mode).
inline Conv2dGeom check_conv2d_args(const char* op, const at::Tensor& input,
                                    const at::Tensor& weight, const at::Tensor* bias,
                                    c10::IntArrayRef stride, c10::IntArrayRef padding,
                                    c10::IntArrayRef dilation, int64_t groups, int64_t pool) {
  TORCH_CHECK(input.defined(), op, ": input is undefined");
  TORCH_CHECK(weight.defined(), op, ": weight is undefined");
  TORCH_CHECK(input.dim() == 4, op, ": input must be a 4-D (N, C, H, W) tensor, got ", input.dim(),
              "-D");
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be a 4-D (K, C/groups, R, S) tensor, got ",
              weight.dim(), "-D");
  TORCH_CHECK(weight.device() == input.device(), op, ": weight must be on the input's device ",
              input.device(), ", got ", weight.device());
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), op, ": weight dtype ",
              weight.scalar_type(), " must equal the input dtype ", input.scalar_type());
  if (bias != nullptr && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                ": bias must have shape (", weight.size(0), ",), got ", bias->sizes());
    TORCH_CHECK(bias->device() == input.device(), op, ": bias must be on the input's device ",
                input.device(), ", got ", bias->device());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), op, ": bias dtype ",
                bias->scalar_type(), " must equal the input dtype ", input.scalar_type());
  }
  TORCH_CHECK(stride.size() == 2, op, ": stride must have 2 elements, got ", stride.size());
  TORCH_CHECK(padding.size() == 2, op, ": padding must have 2 elements, got ", padding.size());
  TORCH_CHECK(dilation.size() == 2, op, ": dilation must have 2 elements, got ", dilation.size());
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be >= 0, got ", padding);
  TORCH_CHECK(dilation[0] >= 1 && dilation[1] >= 1, op, ": dilation must be >= 1, got ", dilation);
  TORCH_CHECK(pool == 1 || pool == 2, op, ": pool must be 1 (none) or 2, got ", pool);
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  Conv2dGeom g{};
  g.N = input.size(0), g.C = input.size(1), g.H = input.size(2), g.W = input.size(3);
  g.K = weight.size(0), g.R = weight.size(2), g.S = weight.size(3);
  // As aten's conv2d: a weight with no output channel is an error (not an empty output).
  TORCH_CHECK(g.K >= 1, op, ": weight must have at least one output channel (dimension 0), got ",
              weight.sizes());
  TORCH_CHECK(g.C % groups == 0 && g.K % groups == 0, op, ": groups=", groups,
              " must divide in_channels=", g.C, " and out_channels=", g.K);
  TORCH_CHECK(weight.size(1) * groups == g.C, op, ": weight has ", weight.size(1),
              " input channels per group but input has ", g.C, " channels and groups=", groups);
  TORCH_CHECK(g.R >= 1 && g.S >= 1, op, ": weight must have a non-empty kernel, got ",
              weight.sizes());
  g.G = groups, g.Cg = g.C / groups, g.Kg = g.K / groups;
  g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1];
  g.dh = dilation[0], g.dw = dilation[1];
  TORCH_CHECK(conv_out_size_checked(g.H, g.R, g.sh, g.ph, g.dh, &g.OH) &&
                  conv_out_size_checked(g.W, g.S, g.sw, g.pw, g.dw, &g.OW),
              op, ": the output size overflows int64 (input ", input.sizes(), ", weight ",
              weight.sizes(), ", stride ", stride, ", padding ", padding, ", dilation ", dilation,
              ")");
  TORCH_CHECK(g.OH >= 1 && g.OW >= 1, op, ": the ", g.R, "x", g.S, " kernel (weight, dilation ",
              dilation, ") does not fit the padded ", g.H, "x", g.W, " input (padding ", padding,
              ", stride ", stride, "): output ", g.OH, "x", g.OW);
  TORCH_CHECK(pool == 1 || (g.OH >= 2 && g.OW >= 2), op,
              ": pool=2 needs a conv output of at least 2x2, got ", g.OH, "x", g.OW);
  // conv2d gives (N, 0, OH, OW) here (see conv2d_out_channels), which max_pool2d refuses.
  TORCH_CHECK(pool == 1 || g.C > 0, op,
              ": pool=2 with zero input channels: conv2d's (N, 0, OH, OW) output has no channel to "
              "pool (max_pool2d refuses it too)");
  // Canonical form: a dilation along a 1-wide kernel dimension, or a stride along an output
  // dimension of size 1, cannot change the result, but the kernels' index arithmetic multiplies
  // them by the padded row length (dilation 2^63-1 with a 1x1 kernel is a valid conv2d call).
  // Where they do matter they are bounded by the padded input (checked above and by the kernels).
  if (g.R == 1) g.dh = 1;
  if (g.S == 1) g.dw = 1;
  if (g.OH == 1) g.sh = 1;
  if (g.OW == 1) g.sw = 1;
  g.pool = pool;
  g.PH = g.OH / pool, g.PW = g.OW / pool;
  g.EH = g.PH * pool, g.EW = g.PW * pool;
  return g;
}

}  // namespace shallowkern
