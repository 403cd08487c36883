// Autograd of shallowkern::quadric_linear in C++ (schemas in csrc/registration.cpp; CPU kernels
// in quadric_linear.cpp; CUDA kernels and fakes registered from shallowkern/ops/quadric_linear.py).
//
// Why C++: a Python autograd formula (torch.library.register_autograd) costs ~30 us of host time
// per call on this 2-core machine, more than the whole diagonal layer at batch 32; here a
// training call is one C++ node. The forward calls shallowkern::quadric_linear below the autograd
// key and the backward calls shallowkern::quadric_linear_backward through the dispatcher, so CUDA
// tensors reach the Python-registered Triton kernels and fake tensors reach the Python fakes.
//
// Backward (gy = dL/dy; see the kernels' header): the mask [x, quadratic weights, weight, bias]
// asks only for what autograd needs. Double backward (create_graph) differentiates the ATen
// composition below instead, so the gradients are themselves differentiable.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

namespace shallowkern {
namespace quadric {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

c10::OperatorHandle handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

Tensor forward_call(const Tensor& x, const Tensor& wq, const OptTensor& wq2, const Tensor& w,
                    const OptTensor& b, c10::string_view form, c10::string_view backend) {
  static auto op = handle("shallowkern::quadric_linear")
                       .typed<Tensor(const Tensor&, const Tensor&, const OptTensor&,
                                     const Tensor&, const OptTensor&, c10::string_view,
                                     c10::string_view)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, wq, wq2, w, b, form, backend);
}

// y = x W^T + b + quadratic term, in differentiable ATen ops (shallowkern/ops/_quadric_reference
// .py: quadric_linear_composite is the same function)
Tensor composite(const Tensor& x, const Tensor& wq, const OptTensor& wq2, const Tensor& w,
                 const OptTensor& b, const std::string& form) {
  Tensor y = at::linear(x, w, b);
  if (form == "diagonal") return y + at::linear(x * x, wq);
  if (form == "lowrank") {
    const int64_t k = w.size(0), r = wq.size(0) / k;
    Tensor prod = at::linear(x, wq) * at::linear(x, *wq2);
    return y + prod.view({x.size(0), r, k}).sum(1);
  }
  const int64_t n = x.size(1);
  Tensor idx = at::triu_indices(n, n, 0, x.options().dtype(at::kLong));
  return y + at::linear(x.index_select(1, idx[0]) * x.index_select(1, idx[1]), wq);
}

// The lowrank form on the C++ CPU kernel (float32/float64; fake CPU tensors under torch.compile
// too) runs the training forward, which also returns the factors x Wa^T, x Wb^T: saving them
// spares the backward two GEMMs, at the B x 2rK floats the eager composition also keeps.
bool saves_factors(const Tensor& x, const OptTensor& wq2, c10::string_view form,
                   c10::string_view backend) {
  return form == "lowrank" && wq2.has_value() && wq2->defined() && x.device().is_cpu() &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) &&
         (backend.empty() || backend == "native");
}

std::tuple<Tensor, Tensor> lowrank_train_call(const Tensor& x, const Tensor& wq,
                                              const Tensor& wq2, const Tensor& w,
                                              const OptTensor& b) {
  static auto op = handle("shallowkern::_quadric_linear_lowrank_train")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&,
                                                         const Tensor&, const Tensor&,
                                                         const OptTensor&)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, wq, wq2, w, b);
}

struct QuadricFn : public torch::autograd::Function<QuadricFn> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& wq,
                        const OptTensor& wq2, const Tensor& w, const OptTensor& b,
                        c10::string_view form, c10::string_view backend) {
    Tensor y, factors;
    if (saves_factors(x, wq2, form, backend)) {
      std::tie(y, factors) = lowrank_train_call(x, wq, *wq2, w, b);
    } else {
      y = forward_call(x, wq, wq2, w, b, form, backend);
    }
    const bool has_q2 = wq2.has_value() && wq2->defined();
    const bool has_b = b.has_value() && b->defined();
    ctx->save_for_backward(
        {x, wq, has_q2 ? *wq2 : Tensor(), w, has_b ? *b : Tensor(), factors});
    ctx->saved_data["form"] = std::string(form);
    ctx->saved_data["backend"] = std::string(backend);
    ctx->saved_data["has_q2"] = has_q2;
    ctx->saved_data["has_b"] = has_b;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static auto bwd = handle("shallowkern::quadric_linear_backward")
                          .typed<Grads(const Tensor&, const Tensor&, const Tensor&,
                                       const OptTensor&, const Tensor&, c10::string_view,
                                       std::array<bool, 4>, c10::string_view,
                                       const OptTensor&)>();
    auto saved = ctx->get_saved_variables();
    const std::string form = ctx->saved_data["form"].toStringRef();
    const bool has_q2 = ctx->saved_data["has_q2"].toBool();
    const bool has_b = ctx->saved_data["has_b"].toBool();
    const OptTensor wq2 = has_q2 ? OptTensor(saved[2]) : std::nullopt;
    torch::autograd::variable_list out(7);
    const Tensor& g = grads[0];
    if (!g.defined()) return out;  // the output took no part in the loss: no gradients
    // needs_input_grad counts edges, i.e. defined tensor arguments only (an absent
    // weight_quad2 or bias has none): map them back to the 5 tensor slots
    std::array<bool, 5> need{};
    size_t edge = 0;
    for (size_t i = 0; i < 5; ++i) {
      if ((i == 2 && !has_q2) || (i == 4 && !has_b)) continue;
      need[i] = ctx->needs_input_grad(edge++);
    }
    if (c10::GradMode::is_enabled()) {
      std::vector<Tensor> leaves, wanted;
      std::vector<size_t> slot;
      for (size_t i = 0; i < 5; ++i) {
        if (need[i]) {
          wanted.push_back(saved[i]);
          slot.push_back(i);
        }
      }
      if (wanted.empty()) return out;
      Tensor y = composite(saved[0], saved[1], wq2, saved[3],
                           has_b ? OptTensor(saved[4]) : std::nullopt, form);
      auto gs = torch::autograd::grad({y}, wanted, {g}, /*retain_graph=*/true,
                                      /*create_graph=*/true, /*allow_unused=*/true);
      for (size_t j = 0; j < gs.size(); ++j) {
        out[slot[j]] = gs[j].defined() ? gs[j] : at::zeros_like(wanted[j]);
      }
      return out;
    }
    const std::array<bool, 4> mask{need[0], need[1] || need[2], need[3], need[4]};
    if (!(mask[0] || mask[1] || mask[2] || mask[3])) return out;
    auto [gx, gq, gq2, gw, gb] = bwd.call(g.contiguous(), saved[0], saved[1], wq2, saved[3],
                                          form, mask, ctx->saved_data["backend"].toStringRef(),
                                          saved[5].defined() ? OptTensor(saved[5]) : std::nullopt);
    if (need[0]) out[0] = gx;
    if (need[1]) out[1] = gq;
    if (need[2] && form == "lowrank") out[2] = gq2;
    if (need[3]) out[3] = gw;
    if (need[4]) out[4] = gb;
    return out;
  }
};

Tensor quadric_autograd(const Tensor& x, const Tensor& wq, const OptTensor& wq2, const Tensor& w,
                        const OptTensor& b, c10::string_view form, c10::string_view backend) {
  bool needs = false;
  if (c10::GradMode::is_enabled()) {
    needs = x.requires_grad() || wq.requires_grad() || w.requires_grad() ||
            (wq2.has_value() && wq2->defined() && wq2->requires_grad()) ||
            (b.has_value() && b->defined() && b->requires_grad());
  }
  if (!needs) return forward_call(x, wq, wq2, w, b, form, backend);
  return QuadricFn::apply(x, wq, wq2, w, b, form, backend);
}

}  // namespace
}  // namespace quadric
}  // namespace shallowkern

TORCH_LIBRARY_IMPL(shallowkern, Autograd, m) {
  m.impl("quadric_linear", &shallowkern::quadric::quadric_autograd);
}
