// Shared pieces of the SpinalNet head's CPU kernels (csrc/cpu/spinal_linear.cpp: inference and
// BN-free training; csrc/cpu/spinal_linear_train.cpp: training with BatchNorm batch statistics
// and dropout): GEMM entry, activations, argument checks. Math: shallowkern/ops/spinal_linear.py.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "shallowkern/cpu/alloc.h"
#include "shallowkern/cpu/blas.h"
#include "shallowkern/cpu/features.h"

namespace shallowkern {
namespace spinal {

using at::Tensor;
using at::TensorList;
using cpu::empty_large;
using cpu::zeros_large;

enum class Act { kRelu, kTanh, kSigmoid, kIdentity };

inline Act parse_act(const std::string& s) {
  if (s == "relu") return Act::kRelu;
  if (s == "tanh") return Act::kTanh;
  if (s == "sigmoid") return Act::kSigmoid;
  if (s == "identity") return Act::kIdentity;
  TORCH_CHECK(false, "spinal_linear: activation must be relu, tanh, sigmoid or identity, got '", s,
              "'");
}

inline bool use_mkl() {
  static const bool ok = [] {
    const char* e = std::getenv("SHALLOWKERN_SPINAL_BLAS");
    return !(e != nullptr && std::string(e) == "aten") && cpu::has_direct_gemm();
  }();
  return ok;
}

// Row-major C (M x N, ldc) = alpha op(A) op(B) + beta C (shallowkern/cpu/blas.h): MKL direct
// for small products unless SHALLOWKERN_SPINAL_BLAS=aten, ATen's GEMM otherwise.
template <typename T>
void gemm(char ta, char tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  cpu::gemm<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, use_mkl());
}

// Branch-free, switch-free inner loops (one instantiation per activation): a data-dependent
// branch per element (ReLU on random signs) cost ~5 ns/element, more than the GEMMs at B = 256.
// tanh / sigmoid on large blocks go through ATen's vectorized in-place kernels on a strided view.
template <Act A, typename T>
inline T act_fwd(T z) {
  if constexpr (A == Act::kRelu) return std::max(z, T(0));
  if constexpr (A == Act::kTanh) return std::tanh(z);
  if constexpr (A == Act::kSigmoid) return T(1) / (T(1) + std::exp(-z));
  return z;
}

// act'(z) written with h = act(z) (all four activations allow it: nothing else is saved)
template <Act A, typename T>
inline T act_grad_from_out(T h) {
  if constexpr (A == Act::kRelu) return h > T(0) ? T(1) : T(0);
  if constexpr (A == Act::kTanh) return T(1) - h * h;
  if constexpr (A == Act::kSigmoid) return h * (T(1) - h);
  return T(1);
}

constexpr int64_t kAtenActMin = 8192;  // elements from which ATen's vectorized tanh/sigmoid pay

// Z (n x W, row stride ld) <- act(Z + b)
template <typename T>
void bias_act(Act act, T* Z, int64_t n, int64_t W, int64_t ld, const T* b) {
  if (b != nullptr) {
    for (int64_t r = 0; r < n; ++r) {
      T* z = Z + r * ld;
      for (int64_t c = 0; c < W; ++c) z[c] += b[c];
    }
  }
  auto rows = [&](auto f) {
    for (int64_t r = 0; r < n; ++r) {
      T* z = Z + r * ld;
      for (int64_t c = 0; c < W; ++c) z[c] = f(z[c]);
    }
  };
  const bool big = n * W >= kAtenActMin;
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  switch (act) {
    case Act::kRelu: rows([](T z) { return act_fwd<Act::kRelu>(z); }); break;
    case Act::kTanh:
      if (big) at::from_blob(Z, {n, W}, {ld, 1}, opts).tanh_();
      else rows([](T z) { return act_fwd<Act::kTanh>(z); });
      break;
    case Act::kSigmoid:
      if (big) at::from_blob(Z, {n, W}, {ld, 1}, opts).sigmoid_();
      else rows([](T z) { return act_fwd<Act::kSigmoid>(z); });
      break;
    default: break;
  }
}

// G (n x W, ld) *= act'(h) with h (n x W, ld); gb (W) = column sums of the result
template <Act A, typename T>
void act_backward_rows(T* G, const T* h, int64_t n, int64_t W, int64_t ld, T* gb) {
  std::fill(gb, gb + W, T(0));
  for (int64_t r = 0; r < n; ++r) {
    T* g = G + r * ld;
    const T* hr = h + r * ld;
    for (int64_t c = 0; c < W; ++c) {
      g[c] *= act_grad_from_out<A>(hr[c]);
      gb[c] += g[c];
    }
  }
}

template <typename T>
void act_backward(Act act, T* G, const T* h, int64_t n, int64_t W, int64_t ld, T* gb) {
  switch (act) {
    case Act::kRelu: act_backward_rows<Act::kRelu>(G, h, n, W, ld, gb); break;
    case Act::kTanh: act_backward_rows<Act::kTanh>(G, h, n, W, ld, gb); break;
    case Act::kSigmoid: act_backward_rows<Act::kSigmoid>(G, h, n, W, ld, gb); break;
    default: act_backward_rows<Act::kIdentity>(G, h, n, W, ld, gb); break;
  }
}

// Whether the fp32 forward of backend "native" runs as the transposed chain (chain_t in
// spinal_linear.cpp) for a batch of B rows and layers of width W (measured rule there).
bool transposed_chain_ok(int64_t B, int64_t W);

struct Geom {
  int64_t B, F, L, W, O, S;
  std::vector<int64_t> off;  // split offsets, S + 1
};

inline Geom check(const char* op, const Tensor& x, TensorList wx, TensorList wh, TensorList bias,
           const Tensor& wo, const std::optional<Tensor>& bo, int64_t splits) {
  TORCH_CHECK(x.dim() == 2, op, ": input must be a 2-D (B, in_features) tensor, got ", x.dim(),
              "-D");
  Geom g;
  g.B = x.size(0);
  g.F = x.size(1);
  g.L = static_cast<int64_t>(wx.size());
  TORCH_CHECK(g.L >= 1, op, ": weight_x must hold one matrix per layer, got none");
  TORCH_CHECK(splits >= 1 && splits <= g.F, op, ": splits must be in [1, in_features=", g.F,
              "], got ", splits);
  g.S = splits;
  TORCH_CHECK(wx[0].dim() == 2, op, ": weight_x[0] must be 2-D");
  g.W = wx[0].size(0);
  TORCH_CHECK(static_cast<int64_t>(wh.size()) == g.L - 1, op, ": weight_h must hold ", g.L - 1,
              " matrices, got ", wh.size());
  TORCH_CHECK(bias.empty() || static_cast<int64_t>(bias.size()) == g.L, op, ": bias must hold ",
              g.L, " vectors or none, got ", bias.size());
  const int64_t q = g.F / g.S, r = g.F % g.S;
  g.off.assign(1, 0);
  for (int64_t s = 0; s < g.S; ++s) g.off.push_back(g.off.back() + q + (s < r ? 1 : 0));
  auto same = [&](const Tensor& t, const char* name, int64_t i) {
    TORCH_CHECK(t.scalar_type() == x.scalar_type() && t.device() == x.device(), op, ": ", name,
                "[", i, "] must be ", x.scalar_type(), " on ", x.device(), " like input, got ",
                t.scalar_type(), " on ", t.device());
  };
  for (int64_t i = 0; i < g.L; ++i) {
    const int64_t s = i % g.S, k = g.off[s + 1] - g.off[s];
    same(wx[i], "weight_x", i);
    TORCH_CHECK(wx[i].dim() == 2 && wx[i].size(0) == g.W && wx[i].size(1) == k, op,
                ": weight_x[", i, "] must have shape (", g.W, ", ", k, "), got ", wx[i].sizes());
    if (i > 0) {
      same(wh[i - 1], "weight_h", i - 1);
      TORCH_CHECK(wh[i - 1].dim() == 2 && wh[i - 1].size(0) == g.W && wh[i - 1].size(1) == g.W,
                  op, ": weight_h[", i - 1, "] must have shape (", g.W, ", ", g.W, "), got ",
                  wh[i - 1].sizes());
    }
    if (!bias.empty()) {
      same(bias[i], "bias", i);
      TORCH_CHECK(bias[i].dim() == 1 && bias[i].size(0) == g.W, op, ": bias[", i,
                  "] must have shape (", g.W, ",), got ", bias[i].sizes());
    }
  }
  same(wo, "out_weight", 0);
  TORCH_CHECK(wo.dim() == 2 && wo.size(1) == g.L * g.W, op, ": out_weight must be (O, ",
              g.L * g.W, "), got ", wo.sizes());
  g.O = wo.size(0);
  if (bo.has_value() && bo->defined()) {
    same(*bo, "out_bias", 0);
    TORCH_CHECK(bo->dim() == 1 && bo->size(0) == g.O, op, ": out_bias must have shape (", g.O,
                ",), got ", bo->sizes());
  }
  return g;
}

inline void check_cpu(const char* op, const Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), op, " (CPU kernel): input must be a CPU tensor, got ",
              x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              " (CPU kernel): input must be float32 or float64, got ", x.scalar_type());
}

template <typename T>
std::vector<const T*> ptrs(TensorList ts, std::vector<Tensor>& keep) {
  std::vector<const T*> p;
  for (const Tensor& t : ts) {
    keep.push_back(t.contiguous());
    p.push_back(keep.back().data_ptr<T>());
  }
  return p;
}

// Gradient buffers of the layer weights: gW_i^x (shape of weight_x[i]), gW_i^h (W, W) for
// i >= 1, gb_i (W), zero-filled or uninitialised (kernels that write every element); large ones
// on huge pages (cpu/alloc.h: at B = 1 the backward is bound by first-touch page faults there).
struct LayerGrads {
  std::vector<Tensor> wx, wh, b;
};

inline LayerGrads layer_grads(TensorList wx, int64_t W, const at::TensorOptions& o, bool zero) {
  LayerGrads g;
  auto make = [&](at::IntArrayRef s) { return zero ? zeros_large(s, o) : empty_large(s, o); };
  for (size_t i = 0; i < wx.size(); ++i) {
    g.wx.push_back(make(wx[i].sizes()));
    if (i > 0) g.wh.push_back(make({W, W}));
    g.b.push_back(make({W}));
  }
  return g;
}

// The backward kernels' checks of grad_out (B, O) and the saved hidden buffer H (B, L*W).
inline void check_grad_hidden(const char* op, const Geom& g, const Tensor& grad_out,
                              const Tensor& hidden) {
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == g.B && grad_out.size(1) == g.O, op,
              ": grad_out must have shape (", g.B, ", ", g.O, "), got ", grad_out.sizes());
  TORCH_CHECK(hidden.dim() == 2 && hidden.size(0) == g.B && hidden.size(1) == g.L * g.W, op,
              ": hidden must have shape (", g.B, ", ", g.L * g.W, "), got ", hidden.sizes());
}

// C++ autograd state: `head` tensors, then each list's tensors, saved for the backward, with the
// lists' lengths in saved_data["lens"]; restore_lists hands them back split the same way.
inline void save_lists(torch::autograd::AutogradContext* ctx, std::vector<Tensor> head,
                       std::initializer_list<TensorList> lists) {
  std::vector<int64_t> lens{static_cast<int64_t>(head.size())};
  for (TensorList l : lists) {
    head.insert(head.end(), l.begin(), l.end());
    lens.push_back(static_cast<int64_t>(l.size()));
  }
  ctx->save_for_backward(head);
  ctx->saved_data["lens"] = lens;
}

struct Restored {
  std::vector<Tensor> head;
  std::vector<std::vector<Tensor>> lists;
};

inline Restored restore_lists(torch::autograd::AutogradContext* ctx) {
  const auto saved = ctx->get_saved_variables();
  const std::vector<int64_t> lens = ctx->saved_data["lens"].toIntVector();
  Restored r;
  auto it = saved.begin();
  r.head.assign(it, it + lens[0]);
  it += lens[0];
  for (size_t j = 1; j < lens.size(); ++j) {
    r.lists.emplace_back(it, it + lens[j]);
    it += lens[j];
  }
  return r;
}

// Autograd outputs for the leading (input, weight_x..., weight_h..., bias..., out_weight,
// out_bias) arguments; bias gradients only when the call had biases, out_bias's only when
// given (gbo undefined otherwise).
inline torch::autograd::variable_list chain_grads(const Tensor& gx, const LayerGrads& gw,
                                                  bool with_bias, const Tensor& gwo,
                                                  const Tensor& gbo) {
  torch::autograd::variable_list out{gx};
  out.insert(out.end(), gw.wx.begin(), gw.wx.end());
  out.insert(out.end(), gw.wh.begin(), gw.wh.end());
  if (with_bias) out.insert(out.end(), gw.b.begin(), gw.b.end());
  out.push_back(gwo);
  out.push_back(gbo);
  return out;
}

inline c10::OperatorHandle op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

}  // namespace spinal
}  // namespace shallowkern
