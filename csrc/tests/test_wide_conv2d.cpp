// C++ test of the CPU kernels of shallowkern::_wide_conv2d_native{,_backward}, run by ctest.
//
// Calls the ops through the dispatcher (so the schemas in registration.cpp and the CPU
// registration in cpu/wide_conv2d.cpp are exercised as Python sees them) and compares with aten
// in float64: at::conv2d -> at::relu -> at::max_pool2d_with_indices for the forward (values,
// and the uint8 window indices derived from aten's flat indices), and the unpooled / masked
// gradient -> at::convolution_backward for the backward. Returns non-zero on any failure.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>

#include "expect.h"
#include "shallowkern/geometry.h"

namespace {

using Fwd = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&, c10::IntArrayRef,
                                               c10::IntArrayRef, c10::IntArrayRef, int64_t, bool,
                                               int64_t, bool);
using Bwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                           const at::Tensor&, const at::Tensor&,
                                                           c10::IntArrayRef, c10::IntArrayRef,
                                                           c10::IntArrayRef, int64_t, bool, int64_t,
                                                           std::array<bool, 3>);

c10::TypedOperatorHandle<Fwd> fwd_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("shallowkern::_wide_conv2d_native", "")
      .typed<Fwd>();
}
c10::TypedOperatorHandle<Bwd> bwd_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("shallowkern::_wide_conv2d_native_backward", "")
      .typed<Bwd>();
}

struct Case {
  std::string name;
  int64_t n, c, h, w, k, r, s;
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups;
  bool relu, bias, channels_last;
  int64_t pool;
};

// max |a - b| <= atol + rtol |b|, elementwise, in float64.
bool close(const at::Tensor& a, const at::Tensor& b, double rtol, double atol, double* worst) {
  if (a.sizes() != b.sizes()) return false;
  const at::Tensor ad = a.to(at::kDouble), bd = b.to(at::kDouble);
  const at::Tensor excess = (ad - bd).abs() - (bd.abs() * rtol + atol);
  *worst = ad.numel() ? (ad - bd).abs().max().item<double>() : 0.0;
  return ad.numel() == 0 || excess.max().item<double>() <= 0.0;
}

void run_case(const Case& cs, at::ScalarType dtype) {
  const std::string tag = cs.name + (dtype == at::kFloat ? " [float32]" : " [float64]");
  const int64_t cg = cs.c / cs.groups, red = cg * cs.r * cs.s;
  at::Tensor x = at::randn({cs.n, cs.c, cs.h, cs.w}, at::kDouble);
  at::Tensor wt = at::randn({cs.k, cg, cs.r, cs.s}, at::kDouble) / std::sqrt(double(red));
  at::Tensor b = at::randn({cs.k}, at::kDouble);
  std::optional<at::Tensor> bias = cs.bias ? std::optional<at::Tensor>(b) : std::nullopt;

  // float64 reference with aten.
  at::Tensor y = at::conv2d(x, wt, bias, cs.stride, cs.padding, cs.dilation, cs.groups);
  at::Tensor a = cs.relu ? at::relu(y) : y;
  at::Tensor ref_out, flat;
  if (cs.pool == 2) {
    std::tie(ref_out, flat) = at::max_pool2d_with_indices(a, {2, 2}, {2, 2});
  } else {
    ref_out = a;
  }

  // The op, on inputs in `dtype` (and channels_last when asked).
  auto fmt = cs.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor xq = x.to(dtype).contiguous(fmt), wq = wt.to(dtype);
  std::optional<at::Tensor> bq = cs.bias ? std::optional<at::Tensor>(b.to(dtype)) : std::nullopt;
  auto [out, idx] = fwd_op().call(xq, wq, bq, cs.stride, cs.padding, cs.dilation, cs.groups,
                                  cs.relu, cs.pool, true);
  const double rtol = dtype == at::kFloat ? 1e-5 : 1e-10;
  const double atol = (dtype == at::kFloat ? 2e-6 : 1e-12) * std::sqrt(double(red));
  double worst = 0;
  EXPECT(close(out, ref_out, rtol, atol, &worst), "%s: forward max error %.3g", tag.c_str(), worst);
  if (cs.channels_last && out.numel() > 0)
    EXPECT(out.is_contiguous(at::MemoryFormat::ChannelsLast), "%s: out not channels_last",
           tag.c_str());

  if (cs.pool == 2) {
    EXPECT(idx.scalar_type() == at::kByte && idx.sizes() == out.sizes(), "%s: indices shape",
           tag.c_str());
    // Window position from aten's flat index, NO_GRAD (4) where the ReLU zeroed the window.
    const int64_t ow = y.size(3);
    at::Tensor pos = ((flat.div(ow, "floor") % 2) * 2 + (flat % ow) % 2);
    if (cs.relu) pos = at::where(ref_out <= 0, at::full_like(pos, 4), pos);
    // Compare only where the window's top two values are well apart: near-ties may legitimately
    // resolve differently with the op's rounding. Ties by construction are in test_ties().
    at::Tensor win = a.narrow(2, 0, 2 * out.size(2)).narrow(3, 0, 2 * out.size(3));
    win = win.unfold(2, 2, 2).unfold(3, 2, 2).reshape(
        {out.size(0), out.size(1), out.size(2), out.size(3), 4});
    at::Tensor top2 = std::get<0>(win.topk(2, -1));
    at::Tensor clear = (top2.select(-1, 0) - top2.select(-1, 1)) > 1e-3;
    if (cs.relu) clear = clear | (ref_out <= 0);
    const int64_t bad = (pos.to(at::kByte).ne(idx) & clear).sum().item<int64_t>();
    EXPECT(bad == 0, "%s: %lld indices differ from aten's", tag.c_str(), (long long)bad);
  } else {
    EXPECT(idx.numel() == 0, "%s: indices must be empty for pool 1", tag.c_str());
  }

  // Backward: gy from grad_out through aten's pool / relu backward, then convolution_backward.
  at::Tensor gout = at::randn(ref_out.sizes(), at::kDouble);
  at::Tensor ga = cs.pool == 2 ? at::max_pool2d_with_indices_backward(gout, a, {2, 2}, {2, 2},
                                                                      {0, 0}, {1, 1}, false, flat)
                               : gout;
  at::Tensor gy = cs.relu ? at::threshold_backward(ga, a, 0) : ga;
  auto [rgx, rgw, rgb] =
      at::convolution_backward(gy, x, wt, c10::IntArrayRef{cs.k}, cs.stride, cs.padding,
                               cs.dilation, false, {0, 0}, cs.groups, {true, true, true});
  at::Tensor saved = cs.pool == 2 ? idx : (cs.relu ? out : at::empty({0}, xq.options()));
  at::Tensor gq = gout.to(dtype).contiguous(fmt);
  auto [gx, gw, gb] = bwd_op().call(gq, xq, wq, saved, cs.stride, cs.padding, cs.dilation,
                                    cs.groups, cs.relu, cs.pool, {true, true, true});
  // grad_weight and grad_bias sum over N * OH * OW terms.
  const int64_t terms = std::max<int64_t>(1, cs.n * y.size(2) * y.size(3));
  const double atol_w = (dtype == at::kFloat ? 2e-6 : 1e-12) * std::sqrt(double(terms));
  EXPECT(close(gx, rgx, rtol, atol * 2, &worst), "%s: grad_input max error %.3g", tag.c_str(),
         worst);
  EXPECT(close(gw, rgw, rtol, atol_w, &worst), "%s: grad_weight max error %.3g", tag.c_str(),
         worst);
  EXPECT(close(gb, rgb, rtol, atol_w, &worst), "%s: grad_bias max error %.3g", tag.c_str(), worst);
  if (cs.channels_last && gx.numel() > 0)
    EXPECT(gx.is_contiguous(at::MemoryFormat::ChannelsLast), "%s: grad_input not channels_last",
           tag.c_str());

  // Masked outputs come back empty; the others unchanged.
  auto [gx2, gw2, gb2] = bwd_op().call(gq, xq, wq, saved, cs.stride, cs.padding, cs.dilation,
                                       cs.groups, cs.relu, cs.pool, {false, true, false});
  EXPECT(gx2.numel() == 0 && gb2.numel() == 0 && gx2.dim() == 1, "%s: masked outputs not empty",
         tag.c_str());
  EXPECT(at::allclose(gw2, gw), "%s: grad_weight depends on the mask", tag.c_str());
}

// All-zero weights: every conv output equals the bias, so every window is a 4-way tie.
void test_ties() {
  at::Tensor x = at::randn({2, 3, 9, 8});
  at::Tensor w = at::zeros({4, 3, 3, 3});
  at::Tensor b = at::tensor({1.5f, -2.0f, 0.0f, 3.0f});
  for (bool relu : {false, true}) {
    auto [out, idx] = fwd_op().call(x, w, b, {1, 1}, {0, 0}, {1, 1}, 1, relu, 2, true);
    for (int64_t k = 0; k < 4; ++k) {
      const float bk = b[k].item<float>();
      const bool zeroed = relu && bk <= 0;
      const float want = zeroed ? 0.0f : bk;
      EXPECT(out.select(1, k).eq(want).all().item<bool>(), "ties: value k=%lld relu=%d",
             (long long)k, relu);
      EXPECT(idx.select(1, k).eq(zeroed ? 4 : 0).all().item<bool>(),
             "ties: index k=%lld relu=%d (first max, or NO_GRAD)", (long long)k, relu);
    }
  }
  // NaN wins the window (max_pool2d's `v > best || isnan(v)`).
  at::Tensor xn = at::zeros({1, 1, 2, 2});
  xn.index_put_({0, 0, 1, 0}, std::nanf(""));
  at::Tensor w1 = at::ones({1, 1, 1, 1});
  auto [on, in] = fwd_op().call(xn, w1, std::nullopt, {1, 1}, {0, 0}, {1, 1}, 1, true, 2, true);
  EXPECT(std::isnan(on.item<float>()) && in.item<uint8_t>() == 2, "NaN: got %f idx %d",
         on.item<float>(), int(in.item<uint8_t>()));
}

void test_errors() {
  at::Tensor x = at::randn({1, 2, 6, 6}), w = at::randn({3, 2, 3, 3});
  auto expect_throw = [&](const char* what, const char* needle, auto&& f) {
    bool thrown = false;
    try {
      f();
    } catch (const c10::Error& e) {
      thrown = std::string(e.what()).find(needle) != std::string::npos;
      if (!thrown) std::fprintf(stderr, "  message was: %s\n", e.what());
    }
    EXPECT(thrown, "%s: expected an error naming '%s'", what, needle);
  };
  expect_throw("int input", "input", [&] {
    fwd_op().call(x.to(at::kInt), w, std::nullopt, {1, 1}, {0, 0}, {1, 1}, 1, true, 2, false);
  });
  expect_throw("dtype mismatch", "weight", [&] {
    fwd_op().call(x, w.to(at::kDouble), std::nullopt, {1, 1}, {0, 0}, {1, 1}, 1, true, 2, false);
  });
  expect_throw("3-D input", "input", [&] {
    fwd_op().call(x[0], w, std::nullopt, {1, 1}, {0, 0}, {1, 1}, 1, true, 2, false);
  });
  expect_throw("groups", "groups", [&] {
    fwd_op().call(x, w, std::nullopt, {1, 1}, {0, 0}, {1, 1}, 4, true, 2, false);
  });
  expect_throw("pool", "pool", [&] {
    fwd_op().call(x, w, std::nullopt, {1, 1}, {0, 0}, {1, 1}, 1, true, 3, false);
  });
  expect_throw("bias shape", "bias", [&] {
    fwd_op().call(x, w, at::randn({4}), {1, 1}, {0, 0}, {1, 1}, 1, true, 2, false);
  });
  expect_throw("saved shape", "saved", [&] {
    bwd_op().call(at::randn({1, 3, 2, 2}), x, w, at::zeros({1, 3, 2, 3}, at::kByte), {1, 1}, {0, 0},
                  {1, 1}, 1, true, 2, {true, true, true});
  });
  expect_throw("grad_out shape", "grad_out", [&] {
    bwd_op().call(at::randn({1, 3, 3, 2}), x, w, at::zeros({1, 3, 2, 2}, at::kByte), {1, 1}, {0, 0},
                  {1, 1}, 1, true, 2, {true, true, true});
  });
  // Issue 9: a 5x5 kernel on a 4x4 input with stride 15 "fitted" with truncating division.
  const at::Tensor x4 = at::randn({4, 3, 4, 4}), w5 = at::randn({64, 3, 5, 5});
  expect_throw("kernel larger than input (issue 9)", "does not fit", [&] {
    fwd_op().call(x4, w5, std::nullopt, {15, 15}, {0, 0}, {1, 1}, 1, true, 1, false);
  });
  expect_throw("kernel larger than input, backward", "does not fit", [&] {
    bwd_op().call(at::randn({4, 64, 1, 1}), x4, w5, at::randn({4, 64, 1, 1}), {15, 15}, {0, 0},
                  {1, 1}, 1, true, 1, {true, true, true});
  });
  expect_throw("padding overflow", "overflows int64", [&] {
    fwd_op().call(x, w, std::nullopt, {1, 1}, {int64_t(1) << 62, 0}, {1, 1}, 1, true, 2, false);
  });
  expect_throw("no output channel", "output channel", [&] {
    fwd_op().call(x, at::randn({0, 3, 3, 3}), std::nullopt, {1, 1}, {0, 0}, {1, 1}, 1, true, 2,
                  false);
  });
}

// The shared output-size formula floors (as aten and shallowkern/ops/_geometry.py).
void test_geometry() {
  using shallowkern::conv_out_size;
  using shallowkern::floor_div;
  EXPECT(floor_div(-1, 15) == -1 && floor_div(-15, 15) == -1 && floor_div(-16, 15) == -2 &&
             floor_div(14, 15) == 0 && floor_div(15, 15) == 1,
         "floor_div");
  EXPECT(conv_out_size(4, 5, 15, 0, 1) == 0, "4x4 input, 5x5 kernel, stride 15: %lld",
         static_cast<long long>(conv_out_size(4, 5, 15, 0, 1)));
  EXPECT(conv_out_size(3, 3, 7, 0, 2) == 0, "dilated kernel 5 on 3");
  EXPECT(conv_out_size(5, 5, 4, 0, 1) == 1 && conv_out_size(32, 5, 1, 0, 1) == 28 &&
             conv_out_size(13, 3, 2, 2, 1) == 8,
         "valid sizes");
  int64_t out = 0;
  EXPECT(!shallowkern::conv_out_size_checked(4, 3, 1, int64_t(1) << 62, 1, &out), "2*pad overflow");
  EXPECT(!shallowkern::conv_out_size_checked(4, 3, 1, 0, int64_t(1) << 62, &out),
         "dil*(k-1) overflow");
  EXPECT(shallowkern::conv_out_size_checked(4, 5, 15, 0, 1, &out) && out == 0, "checked floor");
}

}  // namespace

int main() {
  at::manual_seed(0);
  const std::vector<Case> cases = {
      // name, n, c, h, w, k, r, s, stride, padding, dilation, groups, relu, bias, cl, pool
      {"first layer", 2, 3, 13, 12, 8, 5, 5, {1, 1}, {0, 0}, {1, 1}, 1, true, true, false, 2},
      {"odd map, no relu", 3, 4, 11, 9, 6, 3, 3, {1, 1}, {1, 1}, {1, 1}, 1, false, true, false, 2},
      {"stride pad dil groups",
       2,
       4,
       15,
       13,
       6,
       3,
       2,
       {2, 1},
       {1, 2},
       {2, 1},
       2,
       true,
       false,
       false,
       2},
      {"channels_last", 2, 6, 10, 10, 5, 3, 3, {1, 1}, {1, 1}, {1, 1}, 1, true, true, true, 2},
      {"pool 1 relu", 2, 5, 8, 7, 7, 3, 3, {1, 1}, {0, 1}, {1, 1}, 1, true, true, false, 1},
      {"pool 1 linear cl", 1, 4, 7, 7, 3, 2, 2, {2, 2}, {0, 0}, {1, 2}, 1, false, true, true, 1},
      {"wide", 2, 3, 12, 12, 127, 5, 5, {1, 1}, {0, 0}, {1, 1}, 1, true, true, false, 2},
      {"batch of 9", 9, 8, 9, 9, 12, 3, 3, {1, 1}, {0, 0}, {1, 1}, 1, true, true, false, 2},
      // several chunks per thread with padding: the padded buffers are reused across chunks
      {"batch of 13 padded",
       13,
       4,
       16,
       15,
       8,
       3,
       3,
       {1, 1},
       {1, 2},
       {1, 1},
       1,
       false,
       true,
       false,
       2},
  };
  for (const auto& cs : cases)
    for (auto dtype : {at::kDouble, at::kFloat}) run_case(cs, dtype);
  test_ties();
  test_errors();
  test_geometry();
  std::printf("%d checks, %d failures\n", sk_test::checks, sk_test::failures);
  return sk_test::failures == 0 ? 0 : 1;
}
