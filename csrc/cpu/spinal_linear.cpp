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
// at::mm_out on strided views. The forward runs the whole chain per row block (one block per
// thread, single-threaded GEMMs inside), so a block's H stays in cache between layers.
//
// Autograd: a C++ torch::autograd::Function on the Autograd key, so a training call costs no
// Python; it calls shallowkern::spinal_linear_forward / _backward through the dispatcher, which
// routes CUDA tensors to the kernels registered from Python (Triton) and fake tensors to Meta.
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

extern "C" {
// MKL's Fortran-interface GEMMs (LP64), exported by the torch wheels built with MKL. Weak: absent
// elsewhere, and then the at::mm_out path runs.
void SGEMM(const char*, const char*, const int*, const int*, const int*, const float*,
           const float*, const int*, const float*, const int*, const float*, float*,
           const int*) __attribute__((weak));
void DGEMM(const char*, const char*, const int*, const int*, const int*, const double*,
           const double*, const int*, const double*, const int*, const double*, double*,
           const int*) __attribute__((weak));
}

namespace shallowkern {
namespace spinal {
namespace {

using at::Tensor;
using at::TensorList;

enum class Act { kRelu, kTanh, kSigmoid, kIdentity };

Act parse_act(const std::string& s) {
  if (s == "relu") return Act::kRelu;
  if (s == "tanh") return Act::kTanh;
  if (s == "sigmoid") return Act::kSigmoid;
  if (s == "identity") return Act::kIdentity;
  TORCH_CHECK(false, "spinal_linear: activation must be relu, tanh, sigmoid or identity, got '", s,
              "'");
}

bool use_mkl() {
  static const bool ok = [] {
    const char* e = std::getenv("SHALLOWKERN_SPINAL_BLAS");
    return !(e != nullptr && std::string(e) == "aten") && SGEMM != nullptr && DGEMM != nullptr;
  }();
  return ok;
}

// Row-major C (M x N, ldc) = alpha * op(A) op(B) + beta * C; op(A) is M x K, op(B) is K x N.
// ta/tb: 'N' or 'T' for the row-major matrices. A row-major matrix is its column-major
// transpose, so this is column-major C^T = op(B)^T op(A)^T: swap the operands, keep the flags.
template <typename T>
void gemm(char ta, char tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const int64_t lim = std::numeric_limits<int>::max();
  // Direct MKL for small products, where ATen's ~2-4 us of dispatch is the cost; ATen's own
  // GEMM for large ones (measured faster here from ~1M multiply-adds: 256x128x128 ran in ~95 us
  // through at::mm and ~140 us through the Fortran SGEMM interface, 1 thread, Zen 4).
  if (use_mkl() && M * N * K <= (int64_t{1} << 20) && M < lim && N < lim && K < lim &&
      lda < lim && ldb < lim && ldc < lim && K > 0) {
    const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
    const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
    if constexpr (std::is_same_v<T, float>) {
      SGEMM(&tb, &ta, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
    } else {
      DGEMM(&tb, &ta, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
    }
    return;
  }
  // aten path on strided views (addmm_out writes into a strided C without a copy)
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto view = [&](const T* p, int64_t r, int64_t c, int64_t ld, char t) {
    Tensor v = at::from_blob(const_cast<T*>(p), {r, c}, {ld, 1}, opts);
    return t == 'T' ? v.t() : v;
  };
  Tensor a = ta == 'N' ? view(A, M, K, lda, 'N') : view(A, K, M, lda, 'T');
  Tensor b = tb == 'N' ? view(B, K, N, ldb, 'N') : view(B, N, K, ldb, 'T');
  Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
    if (alpha != T(1)) c.mul_(alpha);
  } else {
    c.addmm_(a, b, beta, alpha);
  }
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

struct Geom {
  int64_t B, F, L, W, O, S;
  std::vector<int64_t> off;  // split offsets, S + 1
};

Geom check(const char* op, const Tensor& x, TensorList wx, TensorList wh, TensorList bias,
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

void check_cpu(const char* op, const Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), op, " (CPU kernel): input must be a CPU tensor, got ",
              x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              " (CPU kernel): input must be float32 or float64, got ", x.scalar_type());
}

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

template <typename T>
std::vector<const T*> ptrs(TensorList ts, std::vector<Tensor>& keep) {
  std::vector<const T*> p;
  for (const Tensor& t : ts) {
    keep.push_back(t.contiguous());
    p.push_back(keep.back().data_ptr<T>());
  }
  return p;
}

std::tuple<Tensor, Tensor> forward_cpu(const Tensor& input, TensorList wx, TensorList wh,
                                       TensorList bias, const Tensor& wo,
                                       const std::optional<Tensor>& bo, int64_t splits,
                                       const std::string& activation, const std::string& backend) {
  check_cpu("spinal_linear", input);
  const Geom g = check("spinal_linear", input, wx, wh, bias, wo, bo, splits);
  const Act act = parse_act(activation);
  Tensor x = input.stride(1) == 1 && input.stride(0) >= g.F ? input : input.contiguous();
  Tensor H = at::empty({g.B, g.L * g.W}, input.options());
  Tensor y = at::empty({g.B, g.O}, input.options());
  const bool has_bo = bo.has_value() && bo->defined();
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

Tensor inference_cpu(const Tensor& input, TensorList wx, TensorList wh, TensorList bias,
                     const Tensor& wo, const std::optional<Tensor>& bo, int64_t splits,
                     const std::string& activation, const std::string& backend) {
  return std::get<0>(forward_cpu(input, wx, wh, bias, wo, bo, splits, activation, backend));
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
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == B && grad_out.size(1) == O,
              "spinal_linear_backward: grad_out must have shape (", B, ", ", O, "), got ",
              grad_out.sizes());
  TORCH_CHECK(hidden.dim() == 2 && hidden.size(0) == B && hidden.size(1) == LW,
              "spinal_linear_backward: hidden must have shape (", B, ", ", LW, "), got ",
              hidden.sizes());
  Tensor gy = grad_out.to(input.scalar_type()).contiguous();
  Tensor x = input.contiguous(), Hc = hidden.to(input.scalar_type()).contiguous();
  Tensor gx = at::empty({B, F}, input.options());
  Tensor gH = at::empty({B, LW}, input.options());
  Tensor gwo = at::empty({O, LW}, input.options());
  Tensor gbo = gy.sum(0);
  std::vector<Tensor> gwx, gwh, gb;
  for (int64_t i = 0; i < L; ++i) {
    gwx.push_back(at::empty(wx[i].sizes(), input.options()));
    if (i > 0) gwh.push_back(at::empty({W, W}, input.options()));
    gb.push_back(at::empty({W}, input.options()));
  }
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
  std::vector<Tensor> gwx, gwh, gb;
  for (int64_t i = 0; i < g.L; ++i) {
    gwx.push_back(at::empty(wx[i].sizes(), o));
    if (i > 0) gwh.push_back(at::empty({g.W, g.W}, o));
    gb.push_back(at::empty({g.W}, o));
  }
  return {at::empty({g.B, g.F}, o), gwx, gwh, gb, at::empty({g.O, g.L * g.W}, o),
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

c10::OperatorHandle op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
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
    std::vector<Tensor> saved{input, wo, H, bo.has_value() && bo->defined() ? *bo : Tensor()};
    saved.insert(saved.end(), wx.begin(), wx.end());
    saved.insert(saved.end(), wh.begin(), wh.end());
    saved.insert(saved.end(), bias.begin(), bias.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["L"] = static_cast<int64_t>(wx.size());
    ctx->saved_data["nbias"] = static_cast<int64_t>(bias.size());
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
    auto saved = ctx->get_saved_variables();
    const int64_t L = ctx->saved_data["L"].toInt(), nbias = ctx->saved_data["nbias"].toInt();
    std::vector<Tensor> wx(saved.begin() + 4, saved.begin() + 4 + L);
    std::vector<Tensor> wh(saved.begin() + 4 + L, saved.begin() + 3 + 2 * L);
    std::vector<Tensor> bs(saved.begin() + 3 + 2 * L, saved.end());
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
    torch::autograd::variable_list out{gx};
    out.insert(out.end(), gwx.begin(), gwx.end());
    out.insert(out.end(), gwh.begin(), gwh.end());
    if (nbias > 0) out.insert(out.end(), gb.begin(), gb.end());
    out.push_back(gwo);
    out.push_back(has_bo ? gbo : Tensor());
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
