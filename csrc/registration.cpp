// Every C++ op schema of shallowkern, in one place.
//
// These are the *native kernel* entry points. The public ops (torch.ops.shallowkern.wide_conv2d,
// ...) are defined in Python with torch.library.custom_op so they exist even without this
// extension; their CPU/CUDA kernels call the native ops below when the extension is loaded and
// the inputs are eligible. Device choice between the C++ CPU kernel (csrc/cpu) and the CUDA
// kernel (csrc/cuda/bindings.cu) goes through the dispatcher.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(shallowkern, m) {
  // Fused conv2d + bias + [ReLU] + [2x2/2 max-pool, floor mode]; see csrc/cpu/wide_conv2d.cpp.
  // pool is 1 (none) or 2. indices: uint8 position (2*di+dj) of the max in each 2x2 window, 4 if
  // the ReLU zeroed the window (no gradient); empty unless pool == 2 and return_indices.
  m.def(
      "_wide_conv2d_native(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, bool relu, int pool, bool return_indices) "
      "-> (Tensor out, Tensor indices)");
  // Backward of the above with the pool and ReLU backward fused. saved is the uint8 indices
  // (pool == 2), the forward output (pool == 1 and relu), or an empty tensor.
  m.def(
      "_wide_conv2d_native_backward(Tensor grad_out, Tensor input, Tensor weight, Tensor saved, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, bool relu, int pool, "
      "bool[3] output_mask) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  // Block-sparse conv2d(input, weight * mask, bias) for AFCC masks; see csrc/cpu/afcc_conv2d.cpp.
  // The block plan (channel orders, kept blocks in CSR) comes from shallowkern/ops/afcc_conv2d.py.
  m.def(
      "_afcc_conv2d_native(Tensor input, Tensor weight, Tensor mask, Tensor? bias, "
      "Tensor out_perm, Tensor in_perm, Tensor row_bounds, Tensor col_bounds, Tensor row_ptr, "
      "Tensor col_idx, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def(
      "_afcc_conv2d_native_backward(Tensor grad_out, Tensor input, Tensor weight, Tensor mask, "
      "Tensor out_perm, Tensor in_perm, Tensor row_bounds, Tensor col_bounds, Tensor row_ptr, "
      "Tensor col_idx, int[2] stride, int[2] padding, int[2] dilation, bool[3] output_mask) "
      "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  // Quadric neurons, form = "diagonal" | "full" | "lowrank" (full: weight_quad is the packed
  // upper triangle): the public ops, with C++ CPU kernels (csrc/cpu/quadric_linear.cpp) and C++
  // autograd (csrc/cpu/quadric_linear_autograd.cpp); fakes and CUDA kernels come from
  // shallowkern/ops/quadric_linear.py, whose SCHEMAS repeats these strings (a test keeps them
  // equal). backend: the platform's choice, carried from the forward to the backward.
  m.def(
      "quadric_linear(Tensor input, Tensor weight_quad, Tensor? weight_quad2, Tensor weight, "
      "Tensor? bias, str form, str backend=\"\") -> Tensor");
  m.def(
      "quadric_linear_backward(Tensor grad_out, Tensor input, Tensor weight_quad, "
      "Tensor? weight_quad2, Tensor weight, str form, bool[4] output_mask, str backend=\"\", "
      "Tensor? factors=None) "
      "-> (Tensor grad_input, Tensor grad_weight_quad, Tensor grad_weight_quad2, "
      "Tensor grad_weight, Tensor grad_bias)");
  // lowrank training forward on CPU: (y, factors = stack(x Wa^T, x Wb^T)), saved by the C++
  // autograd and handed to quadric_linear_backward (which recomputes them when absent)
  m.def(
      "_quadric_linear_lowrank_train(Tensor input, Tensor weight_quad, Tensor weight_quad2, "
      "Tensor weight, Tensor? bias) -> (Tensor out, Tensor factors)");
}

// SpinalNet head, the whole chain in one op (csrc/cpu/spinal_linear.cpp; math in
// shallowkern/ops/spinal_linear.py). weight_x: L (W, F_s) matrices, weight_h: L-1 (W, W), bias:
// L (W,) or none, out_weight (O, L*W). activation: relu | tanh | sigmoid | identity; backend: the
// platform's choice (native | triton), carried from the forward to the backward. The public op
// has a C++ autograd kernel; _forward also returns hidden = [h_0..h_{L-1}] (B, L*W), the one
// activation the backward needs. SPINAL_SCHEMAS in the Python module repeats these strings (it
// defines them when the extension is missing); a test keeps the two equal.
TORCH_LIBRARY_FRAGMENT(shallowkern, m) {
  m.def(
      "spinal_linear(Tensor input, Tensor[] weight_x, Tensor[] weight_h, Tensor[] bias, "
      "Tensor out_weight, Tensor? out_bias, int splits, str activation, str backend) -> Tensor");
  m.def(
      "spinal_linear_forward(Tensor input, Tensor[] weight_x, Tensor[] weight_h, Tensor[] bias, "
      "Tensor out_weight, Tensor? out_bias, int splits, str activation, str backend) "
      "-> (Tensor out, Tensor hidden)");
  m.def(
      "spinal_linear_backward(Tensor grad_out, Tensor input, Tensor[] weight_x, Tensor[] weight_h, "
      "Tensor hidden, Tensor out_weight, int splits, str activation, str backend) "
      "-> (Tensor grad_input, Tensor[] grad_weight_x, Tensor[] grad_weight_h, Tensor[] grad_bias, "
      "Tensor grad_out_weight, Tensor grad_out_bias)");
  // Training with BatchNorm batch statistics and/or dropout (csrc/cpu/spinal_linear_train.cpp):
  // also returns the batch mean and unbiased variance (L, W) for the running-statistics update
  // and the (B, M) dropout mask it used (drawn when dropout_mask is None). Seeded-random.
  m.def(
      "spinal_linear_train(Tensor input, Tensor[] weight_x, Tensor[] weight_h, Tensor[] bias, "
      "Tensor out_weight, Tensor? out_bias, Tensor[] bn_weight, Tensor[] bn_bias, "
      "Tensor? dropout_mask, bool batch_norm, float eps, float dropout, int splits, "
      "str activation, str backend) -> (Tensor out, Tensor batch_mean, Tensor batch_var, "
      "Tensor mask)",
      {at::Tag::nondeterministic_seeded});
  m.def(
      "spinal_linear_train_forward(Tensor input, Tensor[] weight_x, Tensor[] weight_h, "
      "Tensor[] bias, Tensor out_weight, Tensor? out_bias, Tensor[] bn_weight, Tensor[] bn_bias, "
      "Tensor? dropout_mask, bool batch_norm, float eps, float dropout, int splits, "
      "str activation, str backend) -> (Tensor out, Tensor batch_mean, Tensor batch_var, "
      "Tensor hidden, Tensor xhat, Tensor rstd, Tensor mask)",
      {at::Tag::nondeterministic_seeded});
  m.def(
      "spinal_linear_train_backward(Tensor grad_out, Tensor input, Tensor[] weight_x, "
      "Tensor[] weight_h, Tensor out_weight, Tensor[] bn_weight, Tensor hidden, Tensor xhat, "
      "Tensor rstd, Tensor mask, bool batch_norm, float dropout, int splits, str activation, "
      "str backend) -> (Tensor grad_input, Tensor[] grad_weight_x, Tensor[] grad_weight_h, "
      "Tensor[] grad_bias, Tensor grad_out_weight, Tensor grad_out_bias, "
      "Tensor[] grad_bn_weight, Tensor[] grad_bn_bias)");
  // CUDA C++ fused forward (inference, BatchNorm folded): csrc/cuda/spinal_linear.cu, impl in
  // csrc/cuda/bindings.cu (CUDA builds only).
  m.def(
      "_spinal_linear_cuda(Tensor input, Tensor[] weight_x, Tensor[] weight_h, Tensor[] bias, "
      "Tensor out_weight, Tensor? out_bias, int splits, str activation) -> Tensor");
  // Full-form forward on CUDA (csrc/cuda/quadric_linear.cu, impl in csrc/cuda/bindings.cu).
  m.def(
      "_quadric_linear_full_cuda(Tensor input, Tensor weight_quad, Tensor weight, Tensor? bias) "
      "-> Tensor");
}
