// SpinalNet head (shallowkern::spinal_linear*): C++ CPU kernels, Meta shapes and the C++ autograd.
//
// Math (see shallowkern/ops/spinal_linear.py): x (B, F) in S column splits (tensor_split rule),
//   z_i = W_i^x x_{i mod S} + W_i^h h_{i-1} + b_i,  h_i = act(z_i),  y = W_o [h_0..h_{L-1}] + b_o
// Backward, with H = [h_0..h_{L-1}] (B, L*W) the only saved activation:
//   gH = gy W_o; gz_i = (gH_i + gz_{i+1} W_{i+1}^h) * act'(h_i); gW_i^x = gz_i^T x_s;
//   gW_i^h = gz_i^T h_{i-1}; gb_i = sum gz_i; gx_s += gz_i W_i^x; gW_o = gy^T H; gb_o = sum gy.
//
// Layout: every z_i / gz_i is a column slice of one (B, L*W) buffer, so [h_0..h_{L-1}] is never
// concatenated and the output layer is one GEMM over it. GEMMs call MKL's SGEMM/DGEMM directly
// (exported by libtorch_cpu) when present: an at::mm through the dispatcher costs ~2-4 us, which
// is the whole budget of a batch-32 head; otherwise (other BLAS, or SHALLOWKERN_SPINAL_BLAS=aten)
// at::mm_out on strided views (csrc/include/shallowkern/cpu/blas.h). The forward has two paths,
// chosen in Python (shallowkern/ops/spinal_linear.py) and passed as `backend`: "native" runs the
// whole chain per row block (one block per thread, single-threaded GEMMs inside), so a block's H
// stays in cache between layers; "vendor" (large layers) is blas_chain, whole-batch GEMMs that
// ATen/MKL split over the threads themselves. The backward is one path (whole-batch GEMMs).
//
// Autograd: a C++ torch::autograd::Function on the Autograd key, so a training call costs no
// Python; it calls shallowkern::spinal_linear_forward / _backward through the dispatcher, which
// routes CUDA tensors to the kernels registered from Python (Triton) and fake tensors to Meta.
#include "spinal_linear_common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace shallowkern {
namespace spinal {

// From this many multiply-adds a multi-threaded transposed chain runs as one parallel region.
constexpr int64_t kTeamMacs = int64_t{1} << 20;

bool transposed_chain_ok(int64_t B, int64_t W) {
  // The batch fills one to four 16-lane column vectors and the layers are at least 16 rows
  // wide (width 8 stays on the skinny kernel). Measured at B = 32, widths 128/512, 1 and 2
  // threads (docs/spinal.md "The gradient GEMMs and the transposed chain"); the edges of the
  // range are not separately timed.
  return cpu::has_avx512f() && B >= 16 && B <= 64 && W >= 16;
}

namespace {


// Rows [r0, r1) of the whole chain: H rows and y rows.
template <typename T>
void chain_rows(const Geom& g, Act act, const T* x, int64_t ldx, const std::vector<const T*>& wx,
                const std::vector<const T*>& wh, const std::vector<const T*>& b, const T* wo,
                const T* bo, T* H, T* y, int64_t r0, int64_t r1) {
  const int64_t n = r1 - r0, LW = g.L * g.W, W = g.W;
  if (n <= 0) return;
  for (int64_t i = 0; i < g.L; ++i) {
    const int64_t s = i % g.S, k = g.off[s + 1] - g.off[s];
    T* Z = H + r0 * LW + i * W;
    gemm<T>('N', 'T', n, W, k, T(1), x + r0 * ldx + g.off[s], ldx, wx[i], k, T(0), Z, LW);
    if (i > 0) gemm<T>('N', 'T', n, W, W, T(1), Z - W, LW, wh[i - 1], W, T(1), Z, LW);
    bias_act<T>(act, Z, n, W, LW, b.empty() ? nullptr : b[i]);
  }
  T* Y = y + r0 * g.O;
  if (bo != nullptr) {
    for (int64_t r = 0; r < n; ++r) std::memcpy(Y + r * g.O, bo, sizeof(T) * g.O);
  }
  gemm<T>('N', 'T', n, g.O, LW, T(1), H + r0 * LW, LW, wo, LW, bo != nullptr ? T(1) : T(0), Y,
          g.O);
}


// The transposed chain (fp32, a batch of 16-64 rows, AVX-512; part of backend "native"): the
// same math on z_i^T = W_i^x x_s^T + W_i^h h_{i-1}^T, so every GEMM is weights (rows) times the
// batch as 16-lane columns, an op(A) B product for bcast_gemm (no packing; 105-110 GFLOP/s at
// 32 columns against MKL's ~89 for X W^T, docs/spinal.md "The gradient GEMMs and the
// transposed chain"), whose stores add the bias and apply ReLU (the W_i^h product added to the
// W_i^x product in the same call). Costs one transpose of x in and of y (and H, when kept) out, in
// 16 x 16 register blocks: O(B (F + L W)) against O(B W (F + L W)). With several threads the
// whole chain is one parallel region (each thread its share of every layer's rows, a barrier
// between layers) where every product takes the broadcast kernel; otherwise each product and
// transpose splits over the threads by itself.
void chain_t(const Geom& g, Act act, const float* x, int64_t ldx,
             const std::vector<const float*>& wx, const std::vector<const float*>& wh,
             const std::vector<const float*>& b, const float* wo, const float* bo, float* H,
             float* y) {
  const int64_t B = g.B, F = g.F, W = g.W, LW = g.L * g.W, O = g.O;
  // scratch, uninitialised (every element is written before it is read); x^T of a wide input
  // is MiBs: reused huge pages (cpu/alloc.h), not fresh pages faulted in on every call
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  Tensor xt_ = empty_large({F * B}, opts), ht_ = empty_large({LW * B}, opts);
  Tensor yt_ = at::empty({O * B}, opts);
  float *xt = xt_.data_ptr<float>(), *ht = ht_.data_ptr<float>(), *yt = yt_.data_ptr<float>();
  // layer i's products from row m0 of its weights on: W_i^x x_s^T (+ W_i^h h_{i-1}^T)
  auto terms = [&](int64_t i, int64_t m0, cpu::Term* t) {
    const int64_t s = i % g.S, k = g.off[s + 1] - g.off[s];
    t[0] = {wx[i] + m0 * k, k, xt + g.off[s] * B, B, k};
    if (i > 0) t[1] = {wh[i - 1] + m0 * W, W, ht + (i - 1) * W * B, B, W};
    return i > 0 ? 2 : 1;
  };
  // [lo, hi) of n in whole units for thread `tid` of `nt`
  auto share = [](int64_t n, int64_t unit, int tid, int nt) {
    const int64_t units = (n + unit - 1) / unit;
    return std::pair<int64_t, int64_t>{std::min(n, units * tid / nt * unit),
                                       std::min(n, units * (tid + 1) / nt * unit)};
  };
  auto body = [&](int tid, int nt, const auto& sync) {
    const auto [c0, c1] = share(F, 16, tid, nt);
    if (c1 > c0) cpu::transpose(B, c1 - c0, x + c0, ldx, xt + c0 * B, B);
    sync();
    for (int64_t i = 0; i < g.L; ++i) {
      const auto [m0, m1] = share(W, 6, tid, nt);
      cpu::Term t[2];
      const int n = terms(i, m0, t);
      float* zt = ht + (i * W + m0) * B;
      cpu::gemm_sum_ep(m1 - m0, B, t, n, zt, B,
                       {b.empty() ? nullptr : b[i] + m0, act == Act::kRelu});
      if (act != Act::kRelu) bias_act<float>(act, zt, m1 - m0, B, B, nullptr);  // tanh, sigmoid
      sync();
    }
    const auto [o0, o1] = share(O, 6, tid, nt);
    const cpu::Term out{wo + o0 * LW, LW, ht, B, LW};
    cpu::gemm_sum_ep(o1 - o0, B, &out, 1, yt + o0 * B, B, {bo ? bo + o0 : nullptr, false});
    if (H != nullptr) {
      const auto [r0, r1] = share(LW, 16, tid, nt);
      if (r1 > r0) cpu::transpose(r1 - r0, B, ht + r0 * B, B, H + r0, LW);
    }
    sync();
    const auto [b0, b1] = share(B, 16, tid, nt);
    if (b1 > b0) cpu::transpose(O, b1 - b0, yt + b0, B, y + b0 * O, O);
  };
  // one parallel region where every product takes the broadcast kernel
  const cpu::Term out_all{wo, LW, ht, B, LW};
  bool direct = cpu::bcast_sum_ok(O, B, &out_all, 1);
  int64_t macs = O * LW * B;
  for (int64_t i = 0; i < g.L; ++i) {
    cpu::Term t[2];
    const int n = terms(i, 0, t);
    direct = direct && cpu::bcast_sum_ok(W, B, t, n);
    for (int j = 0; j < n; ++j) macs += W * t[j].K * B;
  }
  const int threads = at::get_num_threads();
#ifdef _OPENMP
  if (direct && threads > 1 && !at::in_parallel_region() && macs >= kTeamMacs) {
#pragma omp parallel num_threads(threads)
    body(omp_get_thread_num(), omp_get_num_threads(), [] {
#pragma omp barrier
    });
    return;
  }
#endif
  body(0, 1, [] {});
}

// The BLAS chain (backend "vendor"): per layer, ATen's GEMMs on the whole batch write straight
// into H's column slices (bias through addmm's beta, then the h_{i-1} part accumulated), the
// activation in place, then the output layer as one addmm over H. Same math and buffers as
// chain_rows; it differs in threading: ATen/MKL split each GEMM over all threads, where
// chain_rows gives each thread its own rows and single-threaded GEMMs.
void blas_chain(const Geom& g, Act act, const Tensor& x, TensorList wx, TensorList wh,
                TensorList bias, const Tensor& wo, const std::optional<Tensor>& bo, Tensor& H,
                Tensor& y) {
  for (int64_t i = 0; i < g.L; ++i) {
    const int64_t s = i % g.S;
    Tensor xs = x.narrow(1, g.off[s], g.off[s + 1] - g.off[s]);
    Tensor Z = H.narrow(1, i * g.W, g.W);
    if (bias.empty()) {
      at::mm_out(Z, xs, wx[i].t());
    } else {
      at::addmm_out(Z, bias[i], xs, wx[i].t());
    }
    if (i > 0) Z.addmm_(H.narrow(1, (i - 1) * g.W, g.W), wh[i - 1].t());
    switch (act) {
      case Act::kRelu: Z.relu_(); break;
      case Act::kTanh: Z.tanh_(); break;
      case Act::kSigmoid: Z.sigmoid_(); break;
      default: break;
    }
  }
  if (bo.has_value() && bo->defined()) {
    at::addmm_out(y, *bo, H, wo.t());
  } else {
    at::mm_out(y, H, wo.t());
  }
}

// need_h: H is returned (training); inference skips it where a path can.
std::tuple<Tensor, Tensor> forward_impl(const Tensor& input, TensorList wx, TensorList wh,
                                        TensorList bias, const Tensor& wo,
                                        const std::optional<Tensor>& bo, int64_t splits,
                                        const std::string& activation, const std::string& backend,
                                        bool need_h) {
  check_cpu("spinal_linear", input);
  const Geom g = check("spinal_linear", input, wx, wh, bias, wo, bo, splits);
  const Act act = parse_act(activation);
  Tensor x = input.stride(1) == 1 && input.stride(0) >= g.F ? input : input.contiguous();
  const bool transposed = backend == "native" && input.scalar_type() == at::kFloat &&
                          transposed_chain_ok(g.B, g.W) && use_mkl();
  Tensor H = at::empty({transposed && !need_h ? 0 : g.B, g.L * g.W}, input.options());
  Tensor y = at::empty({g.B, g.O}, input.options());
  if (backend == "vendor" && g.B > 0) {
    blas_chain(g, act, x, wx, wh, bias, wo, bo, H, y);
    return {y, H};
  }
  const bool has_bo = bo.has_value() && bo->defined();
  if (transposed) {
    std::vector<Tensor> keep;
    auto pwx = ptrs<float>(wx, keep), pwh = ptrs<float>(wh, keep), pb = ptrs<float>(bias, keep);
    keep.push_back(wo.contiguous());
    const float* pwo = keep.back().data_ptr<float>();
    if (has_bo) keep.push_back(bo->contiguous());
    chain_t(g, act, x.data_ptr<float>(), x.stride(0), pwx, pwh, pb, pwo,
            has_bo ? keep.back().data_ptr<float>() : nullptr,
            need_h ? H.data_ptr<float>() : nullptr, y.data_ptr<float>());
    return {y, H};
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "spinal_linear_cpu", [&] {
    std::vector<Tensor> keep;
    auto pwx = ptrs<scalar_t>(wx, keep), pwh = ptrs<scalar_t>(wh, keep),
         pb = ptrs<scalar_t>(bias, keep);
    keep.push_back(wo.contiguous());
    const scalar_t* pwo = keep.back().data_ptr<scalar_t>();
    const scalar_t* pbo = nullptr;
    if (has_bo) {
      keep.push_back(bo->contiguous());
      pbo = keep.back().data_ptr<scalar_t>();
    }
    const scalar_t* px = x.data_ptr<scalar_t>();
    const int64_t ldx = x.stride(0);
    scalar_t* pH = H.data_ptr<scalar_t>();
    scalar_t* py = y.data_ptr<scalar_t>();
    // one row block per thread; small batches stay in one block (multi-threaded GEMMs would
    // cost more in synchronisation than they save)
    const int64_t threads = at::get_num_threads();
    const int64_t rows = std::max<int64_t>(64, (g.B + threads - 1) / std::max<int64_t>(threads, 1));
    if (g.B <= rows) {
      chain_rows<scalar_t>(g, act, px, ldx, pwx, pwh, pb, pwo, pbo, pH, py, 0, g.B);
    } else {
      at::parallel_for(0, g.B, rows, [&](int64_t r0, int64_t r1) {
        chain_rows<scalar_t>(g, act, px, ldx, pwx, pwh, pb, pwo, pbo, pH, py, r0, r1);
      });
    }
  });
  return {y, H};
}

std::tuple<Tensor, Tensor> forward_cpu(const Tensor& input, TensorList wx, TensorList wh,
                                       TensorList bias, const Tensor& wo,
                                       const std::optional<Tensor>& bo, int64_t splits,
                                       const std::string& activation, const std::string& backend) {
  return forward_impl(input, wx, wh, bias, wo, bo, splits, activation, backend, /*need_h=*/true);
}

Tensor inference_cpu(const Tensor& input, TensorList wx, TensorList wh, TensorList bias,
                     const Tensor& wo, const std::optional<Tensor>& bo, int64_t splits,
                     const std::string& activation, const std::string& backend) {
  return std::get<0>(
      forward_impl(input, wx, wh, bias, wo, bo, splits, activation, backend, /*need_h=*/false));
}

using BackwardOut =
    std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, Tensor, Tensor>;

BackwardOut backward_cpu(const Tensor& grad_out, const Tensor& input, TensorList wx, TensorList wh,
                         const Tensor& hidden, const Tensor& wo, int64_t splits,
                         const std::string& activation, const std::string& backend) {
  check_cpu("spinal_linear_backward", input);
  const Geom g = check("spinal_linear_backward", input, wx, wh, {}, wo, std::nullopt, splits);
  const Act act = parse_act(activation);
  const int64_t B = g.B, W = g.W, L = g.L, LW = L * W, O = g.O, F = g.F;
  check_grad_hidden("spinal_linear_backward", g, grad_out, hidden);
  Tensor gy = grad_out.to(input.scalar_type()).contiguous();
  Tensor x = input.contiguous(), Hc = hidden.to(input.scalar_type()).contiguous();
  Tensor gx = empty_large({B, F}, input.options());
  Tensor gH = empty_large({B, LW}, input.options());
  Tensor gwo = empty_large({O, LW}, input.options());
  Tensor gbo = gy.sum(0);
  LayerGrads gw = layer_grads(wx, W, input.options(), /*zero=*/false);
  std::vector<Tensor>&gwx = gw.wx, &gwh = gw.wh, &gb = gw.b;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "spinal_linear_backward_cpu", [&] {
    using T = scalar_t;
    std::vector<Tensor> keep;
    auto pwx = ptrs<T>(wx, keep), pwh = ptrs<T>(wh, keep);
    keep.push_back(wo.contiguous());
    const T* pwo = keep.back().data_ptr<T>();
    const T *pgy = gy.data_ptr<T>(), *px = x.data_ptr<T>(), *pH = Hc.data_ptr<T>();
    T *pgx = gx.data_ptr<T>(), *pgH = gH.data_ptr<T>();
    if (B == 0) {
      gwo.zero_();
      for (auto& t : gwx) t.zero_();
      for (auto& t : gwh) t.zero_();
      for (auto& t : gb) t.zero_();
      return;
    }
    gemm<T>('T', 'N', O, LW, B, T(1), pgy, O, pH, LW, T(0), gwo.data_ptr<T>(), LW);
    gemm<T>('N', 'N', B, LW, O, T(1), pgy, O, pwo, LW, T(0), pgH, LW);
    std::vector<bool> touched(g.S, false);
    for (int64_t i = L - 1; i >= 0; --i) {
      T* G = pgH + i * W;
      if (i < L - 1) gemm<T>('N', 'N', B, W, W, T(1), G + W, LW, pwh[i], W, T(1), G, LW);
      const T* h = pH + i * W;
      act_backward<T>(act, G, h, B, W, LW, gb[i].data_ptr<T>());
      const int64_t s = i % g.S, k = g.off[s + 1] - g.off[s];
      gemm<T>('T', 'N', W, k, B, T(1), G, LW, px + g.off[s], F, T(0), gwx[i].data_ptr<T>(), k);
      if (i > 0)
        gemm<T>('T', 'N', W, W, B, T(1), G, LW, h - W, LW, T(0), gwh[i - 1].data_ptr<T>(), W);
      gemm<T>('N', 'N', B, k, W, T(1), G, LW, pwx[i], k, touched[s] ? T(1) : T(0),
              pgx + g.off[s], F);
      touched[s] = true;
    }
    for (int64_t s = 0; s < g.S; ++s) {
      if (touched[s]) continue;  // a split no layer reads (L < S): zero gradient
      for (int64_t r = 0; r < B; ++r)
        std::fill(pgx + r * F + g.off[s], pgx + r * F + g.off[s + 1], T(0));
    }
  });
  return {gx, gwx, gwh, gb, gwo, gbo};
}

// ---- Meta (fake tensors: torch.compile, export) -----------------------------------------------
std::tuple<Tensor, Tensor> forward_meta(const Tensor& input, TensorList wx, TensorList wh,
                                        TensorList bias, const Tensor& wo,
                                        const std::optional<Tensor>& bo, int64_t splits,
                                        const std::string& activation, const std::string&) {
  const Geom g = check("spinal_linear", input, wx, wh, bias, wo, bo, splits);
  parse_act(activation);
  return {at::empty({g.B, g.O}, input.options()), at::empty({g.B, g.L * g.W}, input.options())};
}

Tensor inference_meta(const Tensor& input, TensorList wx, TensorList wh, TensorList bias,
                      const Tensor& wo, const std::optional<Tensor>& bo, int64_t splits,
                      const std::string& activation, const std::string& backend) {
  return std::get<0>(forward_meta(input, wx, wh, bias, wo, bo, splits, activation, backend));
}

BackwardOut backward_meta(const Tensor& grad_out, const Tensor& input, TensorList wx, TensorList wh,
                          const Tensor& hidden, const Tensor& wo, int64_t splits,
                          const std::string& activation, const std::string&) {
  const Geom g = check("spinal_linear_backward", input, wx, wh, {}, wo, std::nullopt, splits);
  parse_act(activation);
  auto o = input.options();
  LayerGrads gw = layer_grads(wx, g.W, o, /*zero=*/false);
  return {at::empty({g.B, g.F}, o), gw.wx, gw.wh, gw.b, at::empty({g.O, g.L * g.W}, o),
          at::empty({g.O}, o)};
}

// ---- autograd ----------------------------------------------------------------------------------
// The forward as a differentiable ATen composition (double backward differentiates this).
Tensor reference_forward(const Tensor& x, TensorList wx, TensorList wh, TensorList bias,
                         const Tensor& wo, const std::optional<Tensor>& bo, int64_t splits,
                         Act act) {
  const int64_t F = x.size(1), q = F / splits, r = F % splits;
  std::vector<Tensor> hs;
  for (size_t i = 0; i < wx.size(); ++i) {
    const int64_t s = static_cast<int64_t>(i) % splits, off = s * q + std::min(s, r);
    Tensor z = at::matmul(x.narrow(1, off, q + (s < r ? 1 : 0)), wx[i].t());
    if (!bias.empty()) z = z + bias[i];
    if (i > 0) z = z + at::matmul(hs.back(), wh[i - 1].t());
    switch (act) {
      case Act::kRelu: z = at::relu(z); break;
      case Act::kTanh: z = at::tanh(z); break;
      case Act::kSigmoid: z = at::sigmoid(z); break;
      default: break;
    }
    hs.push_back(z);
  }
  Tensor y = at::matmul(at::cat(hs, 1), wo.t());
  return bo.has_value() && bo->defined() ? y + *bo : y;
}


struct SpinalFn : public torch::autograd::Function<SpinalFn> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& input, TensorList wx,
                        TensorList wh, TensorList bias, const Tensor& wo,
                        const std::optional<Tensor>& bo, int64_t splits,
                        const std::string& activation, const std::string& backend) {
    static auto fwd = op_handle("shallowkern::spinal_linear_forward")
                          .typed<std::tuple<Tensor, Tensor>(
                              const Tensor&, TensorList, TensorList, TensorList, const Tensor&,
                              const std::optional<Tensor>&, int64_t, const std::string&,
                              const std::string&)>();
    auto [y, H] = fwd.call(input, wx, wh, bias, wo, bo, splits, activation, backend);
    save_lists(ctx, {input, wo, H, bo.has_value() && bo->defined() ? *bo : Tensor()},
               {wx, wh, bias});
    ctx->saved_data["has_bo"] = bo.has_value() && bo->defined();
    ctx->saved_data["splits"] = splits;
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["backend"] = backend;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static auto bwd = op_handle("shallowkern::spinal_linear_backward")
                          .typed<BackwardOut(const Tensor&, const Tensor&, TensorList, TensorList,
                                             const Tensor&, const Tensor&, int64_t,
                                             const std::string&, const std::string&)>();
    const Restored r = restore_lists(ctx);
    const std::vector<Tensor>&saved = r.head, &wx = r.lists[0], &wh = r.lists[1], &bs = r.lists[2];
    const int64_t L = static_cast<int64_t>(wx.size()), nbias = static_cast<int64_t>(bs.size());
    const bool has_bo = ctx->saved_data["has_bo"].toBool();
    Tensor g = grads[0];
    if (!g.defined()) g = at::zeros({saved[0].size(0), saved[1].size(0)}, saved[0].options());
    if (c10::GradMode::is_enabled()) {
      // double backward (create_graph): differentiate the ATen composition instead, so that the
      // gradients are themselves differentiable (the kernels' saved H is not)
      std::vector<Tensor> ins{saved[0]};
      ins.insert(ins.end(), wx.begin(), wx.end());
      ins.insert(ins.end(), wh.begin(), wh.end());
      ins.insert(ins.end(), bs.begin(), bs.end());
      ins.push_back(saved[1]);
      if (has_bo) ins.push_back(saved[3]);
      std::vector<Tensor> need;
      for (const Tensor& t : ins) need.push_back(t.requires_grad() ? t : t.detach().requires_grad_());
      std::vector<Tensor> nwx(need.begin() + 1, need.begin() + 1 + L),
          nwh(need.begin() + 1 + L, need.begin() + 2 * L), nb(need.begin() + 2 * L, need.begin() + 2 * L + nbias);
      std::optional<Tensor> nbo = has_bo ? std::optional<Tensor>(need.back()) : std::nullopt;
      Tensor y = reference_forward(need[0], nwx, nwh, nb, need[1 + 2 * L - 1 + nbias], nbo,
                                   ctx->saved_data["splits"].toInt(),
                                   parse_act(ctx->saved_data["activation"].toStringRef()));
      auto gs = torch::autograd::grad({y}, need, {g}, /*retain_graph=*/true, /*create_graph=*/true,
                                      /*allow_unused=*/true);
      torch::autograd::variable_list out;
      for (size_t i = 0; i < gs.size(); ++i) {
        // unused inputs (a split no layer reads) get zeros, as in the kernels
        out.push_back(gs[i].defined() ? gs[i] : at::zeros_like(ins[i]));
      }
      if (!has_bo) out.push_back(Tensor());
      out.push_back(Tensor());
      out.push_back(Tensor());
      out.push_back(Tensor());
      return out;
    }
    auto [gx, gwx, gwh, gb, gwo, gbo] =
        bwd.call(g, saved[0], wx, wh, saved[2], saved[1], ctx->saved_data["splits"].toInt(),
                 ctx->saved_data["activation"].toStringRef(),
                 ctx->saved_data["backend"].toStringRef());
    auto out = chain_grads(gx, LayerGrads{gwx, gwh, gb}, nbias > 0, gwo, has_bo ? gbo : Tensor());
    out.push_back(Tensor());
    out.push_back(Tensor());
    out.push_back(Tensor());
    return out;
  }
};

Tensor inference_autograd(const Tensor& input, TensorList wx, TensorList wh, TensorList bias,
                          const Tensor& wo, const std::optional<Tensor>& bo, int64_t splits,
                          const std::string& activation, const std::string& backend) {
  bool needs = false;
  if (c10::GradMode::is_enabled()) {
    needs = input.requires_grad() || wo.requires_grad() ||
            (bo.has_value() && bo->defined() && bo->requires_grad());
    for (TensorList l : {wx, wh, bias})
      for (const Tensor& t : l) needs = needs || t.requires_grad();
  }
  if (!needs) {
    static auto inf = op_handle("shallowkern::spinal_linear")
                          .typed<Tensor(const Tensor&, TensorList, TensorList, TensorList,
                                        const Tensor&, const std::optional<Tensor>&, int64_t,
                                        const std::string&, const std::string&)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    return inf.call(input, wx, wh, bias, wo, bo, splits, activation, backend);
  }
  return SpinalFn::apply(input, wx, wh, bias, wo, bo, splits, activation, backend);
}

}  // namespace
}  // namespace spinal
}  // namespace shallowkern

TORCH_LIBRARY_IMPL(shallowkern, CPU, m) {
  m.impl("spinal_linear", &shallowkern::spinal::inference_cpu);
  m.impl("spinal_linear_forward", &shallowkern::spinal::forward_cpu);
  m.impl("spinal_linear_backward", &shallowkern::spinal::backward_cpu);
}

TORCH_LIBRARY_IMPL(shallowkern, Meta, m) {
  m.impl("spinal_linear", &shallowkern::spinal::inference_meta);
  m.impl("spinal_linear_forward", &shallowkern::spinal::forward_meta);
  m.impl("spinal_linear_backward", &shallowkern::spinal::backward_meta);
}

TORCH_LIBRARY_IMPL(shallowkern, Autograd, m) {
  m.impl("spinal_linear", &shallowkern::spinal::inference_autograd);
}
