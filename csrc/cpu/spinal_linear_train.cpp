// SpinalNet head, training with BatchNorm1d batch statistics and/or dropout
// (shallowkern::spinal_linear_train, _train_forward, _train_backward): C++ CPU kernels, Meta
// shapes and the C++ autograd. BN-free, dropout-free training runs spinal_linear (csrc/cpu/
// spinal_linear.cpp); this file adds the two things that need the whole batch or randomness.
//
// Math (see shallowkern/ops/spinal_linear.py), q = 1 - p, m_* Bernoulli(q) masks, d(t) = m*t/q:
//   z_i = W_i^x d(x_{i mod S}) + W_i^h d(h_{i-1}) + b_i
//   BN (train, nn.BatchNorm1d): mu = mean_b z_i, var = mean_b (z_i - mu)^2 (biased),
//       xh_i = (z_i - mu) / sqrt(var + eps),  n_i = gamma_i xh_i + beta_i;  h_i = act(n_i)
//   y = W_o d([h_0..h_{L-1}]) + b_o
// Outputs also carry mu and the unbiased var * B / (B - 1) for the running-statistics update
// (done by the caller, as nn.BatchNorm1d's momentum / cumulative rule lives in Python).
// Backward (saved: H = [h_i], XH = [xh_i], rstd, the mask; nothing is concatenated):
//   gHd = gy W_o; gH = d(gHd); gW_o = gy^T d(H); gb_o = sum gy
//   i = L-1..0: gn_i = (gH_i + d'(gz_{i+1} W_{i+1}^h)) * act'(h_i)   (d' = the layer-i+1 h mask)
//     BN: gbeta = sum gn, ggamma = sum gn xh, gz = gamma rstd (gn - gbeta/B - xh ggamma/B)
//     gb_i = sum gz; gW_i^x = gz^T d(x_s); gW_i^h = gz^T d(h_{i-1}); gx_s += d(gz W_i^x)
// Mask layout (one uint8/bool (B, M) tensor, reproducible for the backward): per layer i the
// columns [x_s part (F_s) | h_{i-1} part (W, layers i >= 1)], then the output part (L*W). When
// no mask is given and dropout > 0 the forward draws it (draw_mask: counter-based, seeded from
// torch's default generator, so torch.manual_seed reproduces it) and returns it.
#include <ATen/Parallel.h>

#include "spinal_linear_common.h"

namespace shallowkern {
namespace spinal {
namespace {

struct TrainGeom {
  Geom g;
  std::vector<int64_t> mo;  // mask column offset of layer i's part; mo[L] = the output part
  int64_t M = 0;            // mask columns
  int64_t kmax = 0;         // widest split
};

TrainGeom train_geom(const Geom& g) {
  TrainGeom t{g, {}, 0, 0};
  int64_t c = 0;
  for (int64_t i = 0; i < g.L; ++i) {
    const int64_t s = i % g.S, k = g.off[s + 1] - g.off[s];
    t.mo.push_back(c);
    c += k + (i > 0 ? g.W : 0);
    t.kmax = std::max(t.kmax, k);
  }
  t.mo.push_back(c);
  t.M = c + g.L * g.W;
  return t;
}

void check_hyper(const char* op, bool bn, double eps, double p, int64_t B, int64_t W) {
  TORCH_CHECK_VALUE(std::isfinite(p) && p >= 0.0 && p < 1.0, op,
                    ": dropout must be a probability in [0, 1), got ", p);
  TORCH_CHECK_VALUE(!bn || (std::isfinite(eps) && eps > 0.0), op,
                    ": eps must be a finite number > 0, got ", eps);
  // nn.BatchNorm1d's own check and message (F.batch_norm -> _verify_batch_size)
  TORCH_CHECK_VALUE(!bn || B != 1, "Expected more than 1 value per channel when training, got "
                    "input size torch.Size([1, ", W, "])");
}

void check_mask(const char* op, const Tensor& m, const TrainGeom& t) {
  TORCH_CHECK(m.scalar_type() == at::kByte || m.scalar_type() == at::kBool, op,
              ": dropout_mask must be uint8 or bool, got ", m.scalar_type());
  TORCH_CHECK(m.dim() == 2 && m.size(0) == t.g.B && m.size(1) == t.M, op,
              ": dropout_mask must have shape (", t.g.B, ", ", t.M,
              ") (per layer [split | previous layer] columns, then num_layers * layer_width), got ",
              m.sizes());
}

void check_bn_params(const char* op, const Tensor& x, TensorList w, const char* name,
                     const Geom& g) {
  TORCH_CHECK(w.empty() || static_cast<int64_t>(w.size()) == g.L, op, ": ", name, " must hold ",
              g.L, " vectors (or none), got ", w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    TORCH_CHECK(w[i].scalar_type() == x.scalar_type() && w[i].device() == x.device(), op, ": ",
                name, "[", i, "] must be ", x.scalar_type(), " on ", x.device(), " like input");
    TORCH_CHECK(w[i].dim() == 1 && w[i].size(0) == g.W, op, ": ", name, "[", i,
                "] must have shape (", g.W, ",), got ", w[i].sizes());
  }
}

// dst (n x k, ldd) = src (n x k, lds) * m (n x k, ldm) * scale  (a multiply, as torch's dropout:
// NaN stays NaN)
template <typename T>
void masked(const T* src, int64_t lds, const uint8_t* m, int64_t ldm, T scale, T* dst,
            int64_t ldd, int64_t n, int64_t k) {
  at::parallel_for(0, n, std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1)),
                   [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* s = src + r * lds;
      const uint8_t* mr = m + r * ldm;
      T* d = dst + r * ldd;
      for (int64_t c = 0; c < k; ++c) d[c] = s[c] * (static_cast<T>(mr[c] != 0) * scale);
    }
  });
}

// dst (n x k, ldd) += src (n x k, lds) * m * scale
template <typename T>
void masked_add(const T* src, int64_t lds, const uint8_t* m, int64_t ldm, T scale, T* dst,
                int64_t ldd, int64_t n, int64_t k) {
  for (int64_t r = 0; r < n; ++r) {
    const T* s = src + r * lds;
    const uint8_t* mr = m + r * ldm;
    T* d = dst + r * ldd;
    for (int64_t c = 0; c < k; ++c) d[c] += s[c] * (static_cast<T>(mr[c] != 0) * scale);
  }
}

// Column statistics of Z (n x W, ld) in double (two passes: mean, then squared deviations).
template <typename T>
void col_stats(const T* Z, int64_t n, int64_t W, int64_t ld, std::vector<double>& mean,
               std::vector<double>& var) {
  mean.assign(W, 0.0);
  var.assign(W, 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < W; ++c) mean[c] += Z[r * ld + c];
  for (int64_t c = 0; c < W; ++c) mean[c] /= static_cast<double>(n);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < W; ++c) {
      const double d = Z[r * ld + c] - mean[c];
      var[c] += d * d;
    }
  for (int64_t c = 0; c < W; ++c) var[c] /= static_cast<double>(n);
}

// The dropout mask: keep = u < round(q 2^32) for 32-bit halves u of splitmix64(seed + j * phi)
// (j = pair index in the row-major (B, M) mask), seed = one int64 draw from torch's default
// generator, so torch.manual_seed reproduces it. Counter-based and vectorizable: ~1 ns an element,
// where bernoulli_ costs ~30 ns on this AMD CPU (ATen's MKL Bernoulli path is Intel-only) and
// dominated the training step (F.dropout pays that in the eager head).
inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

Tensor draw_mask(int64_t B, int64_t M, double q) {
  Tensor mask = at::empty({B, M}, at::TensorOptions().dtype(at::kByte));
  const uint64_t seed =
      static_cast<uint64_t>(at::empty({}, at::TensorOptions().dtype(at::kLong)).random_()
                                .item<int64_t>());
  const uint64_t thr = static_cast<uint64_t>(std::llround(q * 4294967296.0));
  uint8_t* pm = mask.data_ptr<uint8_t>();
  const int64_t n = B * M;
  at::parallel_for(0, (n + 1) / 2, 16384, [&](int64_t a, int64_t b) {
    for (int64_t j = a; j < b; ++j) {
      const uint64_t z = splitmix64(seed + static_cast<uint64_t>(j) * 0x9e3779b97f4a7c15ULL);
      pm[2 * j] = static_cast<uint8_t>((z & 0xffffffffULL) < thr);
      if (2 * j + 1 < n) pm[2 * j + 1] = static_cast<uint8_t>((z >> 32) < thr);
    }
  });
  return mask;
}

using TrainOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

TrainOut train_forward_cpu(const Tensor& input, TensorList wx, TensorList wh, TensorList bias,
                           const Tensor& wo, const std::optional<Tensor>& bo,
                           TensorList bn_weight, TensorList bn_bias,
                           const std::optional<Tensor>& dropout_mask, bool batch_norm, double eps,
                           double dropout, int64_t splits, const std::string& activation,
                           const std::string&) {
  const char* op = "spinal_linear_train";
  check_cpu(op, input);
  const TrainGeom t = train_geom(check(op, input, wx, wh, bias, wo, bo, splits));
  const Geom& g = t.g;
  check_bn_params(op, input, bn_weight, "bn_weight", g);
  check_bn_params(op, input, bn_bias, "bn_bias", g);
  check_hyper(op, batch_norm, eps, dropout, g.B, g.W);
  const Act act = parse_act(activation);
  const bool drop = dropout > 0.0;
  Tensor mask;
  if (drop) {
    if (dropout_mask.has_value() && dropout_mask->defined()) {
      check_mask(op, *dropout_mask, t);
      // a copy: an op output must not alias an input (the caller's mask is theirs to change)
      mask = dropout_mask->to(at::kByte, /*non_blocking=*/false, /*copy=*/true)
                 .contiguous();
    } else {
      mask = draw_mask(g.B, t.M, 1.0 - dropout);
    }
  } else {
    mask = at::empty({0}, input.options().dtype(at::kByte));
  }
  const int64_t B = g.B, W = g.W, L = g.L, LW = L * W;
  Tensor x = input.contiguous();
  Tensor H = at::empty({B, LW}, input.options());
  Tensor XH = batch_norm ? at::empty({B, LW}, input.options()) : at::empty({0}, input.options());
  Tensor mean = at::zeros({batch_norm ? L : 0, W}, input.options());
  Tensor uvar = at::ones({batch_norm ? L : 0, W}, input.options());
  Tensor rstd = at::empty({batch_norm ? L : 0, W}, input.options());
  Tensor y = at::empty({B, g.O}, input.options());
  const bool has_bo = bo.has_value() && bo->defined();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "spinal_linear_train_cpu", [&] {
    using T = scalar_t;
    if (B == 0) return;
    std::vector<Tensor> keep;
    auto pwx = ptrs<T>(wx, keep), pwh = ptrs<T>(wh, keep), pb = ptrs<T>(bias, keep);
    auto pgam = ptrs<T>(bn_weight, keep), pbet = ptrs<T>(bn_bias, keep);
    keep.push_back(wo.contiguous());
    const T* pwo = keep.back().data_ptr<T>();
    const T* px = x.data_ptr<T>();
    const uint8_t* pm = drop ? static_cast<const uint8_t*>(mask.data_ptr()) : nullptr;
    const T scale = drop ? T(1.0 / (1.0 - dropout)) : T(1);
    T* pH = H.data_ptr<T>();
    Tensor scratch = at::empty({drop ? B * std::max(t.kmax, W) : 0}, input.options());
    T* ps = scratch.data_ptr<T>();
    std::vector<double> mu, var;
    for (int64_t i = 0; i < L; ++i) {
      const int64_t s = i % g.S, k = g.off[s + 1] - g.off[s];
      T* Z = pH + i * W;
      const T* A = px + g.off[s];
      int64_t lda = g.F;
      if (drop) {
        masked<T>(A, lda, pm + t.mo[i], t.M, scale, ps, k, B, k);
        A = ps;
        lda = k;
      }
      gemm<T>('N', 'T', B, W, k, T(1), A, lda, pwx[i], k, T(0), Z, LW);
      if (i > 0) {
        const T* Hp = Z - W;
        int64_t ldh = LW;
        if (drop) {
          masked<T>(Hp, LW, pm + t.mo[i] + k, t.M, scale, ps, W, B, W);
          Hp = ps;
          ldh = W;
        }
        gemm<T>('N', 'T', B, W, W, T(1), Hp, ldh, pwh[i - 1], W, T(1), Z, LW);
      }
      if (!batch_norm) {
        bias_act<T>(act, Z, B, W, LW, pb.empty() ? nullptr : pb[i]);
        continue;
      }
      if (!pb.empty()) bias_act<T>(Act::kIdentity, Z, B, W, LW, pb[i]);
      col_stats<T>(Z, B, W, LW, mu, var);
      T* XHi = XH.data_ptr<T>() + i * W;
      T* pmean = mean.data_ptr<T>() + i * W;
      T* puvar = uvar.data_ptr<T>() + i * W;
      T* prstd = rstd.data_ptr<T>() + i * W;
      for (int64_t c = 0; c < W; ++c) {
        pmean[c] = static_cast<T>(mu[c]);
        puvar[c] = static_cast<T>(var[c] * B / (B - 1));
        prstd[c] = static_cast<T>(1.0 / std::sqrt(var[c] + eps));
      }
      const T* gam = pgam.empty() ? nullptr : pgam[i];
      const T* bet = pbet.empty() ? nullptr : pbet[i];
      for (int64_t r = 0; r < B; ++r) {
        T* z = Z + r * LW;
        T* xh = XHi + r * LW;
        for (int64_t c = 0; c < W; ++c) {
          const T v = (z[c] - pmean[c]) * prstd[c];
          xh[c] = v;
          z[c] = (gam ? gam[c] * v : v) + (bet ? bet[c] : T(0));
        }
      }
      bias_act<T>(act, Z, B, W, LW, nullptr);
    }
    const T* Ho = pH;
    Tensor Hd;
    if (drop) {
      Hd = at::empty({B, LW}, input.options());
      masked<T>(pH, LW, pm + t.mo[L], t.M, scale, Hd.data_ptr<T>(), LW, B, LW);
      Ho = Hd.data_ptr<T>();
    }
    T* py = y.data_ptr<T>();
    if (has_bo) {
      keep.push_back(bo->contiguous());
      const T* pbo = keep.back().data_ptr<T>();
      for (int64_t r = 0; r < B; ++r) std::memcpy(py + r * g.O, pbo, sizeof(T) * g.O);
    }
    gemm<T>('N', 'T', B, g.O, LW, T(1), Ho, LW, pwo, LW, has_bo ? T(1) : T(0), py, g.O);
  });
  return {y, mean, uvar, H, XH, rstd, mask};
}

using TrainBackwardOut = std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>,
                                    std::vector<Tensor>, Tensor, Tensor, std::vector<Tensor>,
                                    std::vector<Tensor>>;

TrainBackwardOut train_backward_cpu(const Tensor& grad_out, const Tensor& input, TensorList wx,
                                    TensorList wh, const Tensor& wo, TensorList bn_weight,
                                    const Tensor& hidden, const Tensor& xhat, const Tensor& rstd,
                                    const Tensor& mask, bool batch_norm, double dropout,
                                    int64_t splits, const std::string& activation,
                                    const std::string&) {
  const char* op = "spinal_linear_train_backward";
  check_cpu(op, input);
  const TrainGeom t = train_geom(check(op, input, wx, wh, {}, wo, std::nullopt, splits));
  const Geom& g = t.g;
  check_bn_params(op, input, bn_weight, "bn_weight", g);
  check_hyper(op, batch_norm, 1.0, dropout, batch_norm ? 2 : 0, g.W);
  const Act act = parse_act(activation);
  const int64_t B = g.B, W = g.W, L = g.L, LW = L * W, O = g.O, F = g.F;
  const bool drop = dropout > 0.0;
  check_grad_hidden(op, g, grad_out, hidden);
  if (batch_norm) {
    TORCH_CHECK(xhat.dim() == 2 && xhat.size(0) == B && xhat.size(1) == LW, op,
                ": xhat must have shape (", B, ", ", LW, "), got ", xhat.sizes());
    TORCH_CHECK(rstd.dim() == 2 && rstd.size(0) == L && rstd.size(1) == W, op,
                ": rstd must have shape (", L, ", ", W, "), got ", rstd.sizes());
  }
  if (drop) check_mask(op, mask, t);
  auto o = input.options();
  Tensor gy = grad_out.to(input.scalar_type()).contiguous();
  Tensor x = input.contiguous(), Hc = hidden.contiguous();
  Tensor XH = batch_norm ? xhat.contiguous() : xhat, RS = batch_norm ? rstd.contiguous() : rstd;
  Tensor M = drop ? mask.contiguous() : mask;
  Tensor gx = zeros_large({B, F}, o), gH = empty_large({B, LW}, o), gwo = zeros_large({O, LW}, o);
  Tensor gbo = gy.sum(0);
  LayerGrads gw = layer_grads(wx, W, o, /*zero=*/true);
  std::vector<Tensor>&gwx = gw.wx, &gwh = gw.wh, &gb = gw.b;
  std::vector<Tensor> ggam, gbet;
  for (int64_t i = 0; batch_norm && !bn_weight.empty() && i < L; ++i) {
    ggam.push_back(at::zeros({W}, o));
    gbet.push_back(at::zeros({W}, o));
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "spinal_linear_train_backward_cpu", [&] {
    using T = scalar_t;
    if (B == 0) return;
    std::vector<Tensor> keep;
    auto pwx = ptrs<T>(wx, keep), pwh = ptrs<T>(wh, keep), pgam = ptrs<T>(bn_weight, keep);
    keep.push_back(wo.contiguous());
    const T* pwo = keep.back().data_ptr<T>();
    const T *pgy = gy.data_ptr<T>(), *px = x.data_ptr<T>(), *pH = Hc.data_ptr<T>();
    const uint8_t* pm = drop ? static_cast<const uint8_t*>(M.data_ptr()) : nullptr;
    const T scale = drop ? T(1.0 / (1.0 - dropout)) : T(1);
    T *pgx = gx.data_ptr<T>(), *pgH = gH.data_ptr<T>();
    Tensor scratch = at::empty({drop ? B * std::max(t.kmax, LW) : 0}, o);
    T* ps = scratch.data_ptr<T>();
    // output layer
    const T* Ho = pH;
    if (drop) {
      masked<T>(pH, LW, pm + t.mo[L], t.M, scale, ps, LW, B, LW);
      Ho = ps;
    }
    gemm<T>('T', 'N', O, LW, B, T(1), pgy, O, Ho, LW, T(0), gwo.data_ptr<T>(), LW);
    gemm<T>('N', 'N', B, LW, O, T(1), pgy, O, pwo, LW, T(0), pgH, LW);
    if (drop) masked<T>(pgH, LW, pm + t.mo[L], t.M, scale, pgH, LW, B, LW);
    std::vector<T> s1(W), s2(W);
    for (int64_t i = L - 1; i >= 0; --i) {
      const int64_t s = i % g.S, k = g.off[s + 1] - g.off[s];
      T* G = pgH + i * W;
      if (i < L - 1) {  // + d'(gz_{i+1} W_{i+1}^h); gz_{i+1} is G + W
        const int64_t k1 = g.off[(i + 1) % g.S + 1] - g.off[(i + 1) % g.S];
        if (drop) {
          gemm<T>('N', 'N', B, W, W, T(1), G + W, LW, pwh[i], W, T(0), ps, W);
          masked_add<T>(ps, W, pm + t.mo[i + 1] + k1, t.M, scale, G, LW, B, W);
        } else {
          gemm<T>('N', 'N', B, W, W, T(1), G + W, LW, pwh[i], W, T(1), G, LW);
        }
      }
      const T* h = pH + i * W;
      for (int64_t r = 0; r < B; ++r) {
        T* gr = G + r * LW;
        const T* hr = h + r * LW;
        switch (act) {
          case Act::kRelu:
            for (int64_t c = 0; c < W; ++c) gr[c] *= act_grad_from_out<Act::kRelu>(hr[c]);
            break;
          case Act::kTanh:
            for (int64_t c = 0; c < W; ++c) gr[c] *= act_grad_from_out<Act::kTanh>(hr[c]);
            break;
          case Act::kSigmoid:
            for (int64_t c = 0; c < W; ++c) gr[c] *= act_grad_from_out<Act::kSigmoid>(hr[c]);
            break;
          default: break;
        }
      }
      if (batch_norm) {
        const T* xh = XH.data_ptr<T>() + i * W;
        const T* rs = RS.data_ptr<T>() + i * W;
        const T* gam = pgam.empty() ? nullptr : pgam[i];
        std::fill(s1.begin(), s1.end(), T(0));
        std::fill(s2.begin(), s2.end(), T(0));
        for (int64_t r = 0; r < B; ++r)
          for (int64_t c = 0; c < W; ++c) {
            s1[c] += G[r * LW + c];
            s2[c] += G[r * LW + c] * xh[r * LW + c];
          }
        if (gam != nullptr) {
          std::copy(s2.begin(), s2.end(), ggam[i].data_ptr<T>());
          std::copy(s1.begin(), s1.end(), gbet[i].data_ptr<T>());
        }
        const T inv = T(1) / static_cast<T>(B);
        for (int64_t r = 0; r < B; ++r)
          for (int64_t c = 0; c < W; ++c) {
            const T f = (gam ? gam[c] : T(1)) * rs[c];
            T& v = G[r * LW + c];
            v = f * (v - s1[c] * inv - xh[r * LW + c] * s2[c] * inv);
          }
      }
      T* pgb = gb[i].data_ptr<T>();
      for (int64_t r = 0; r < B; ++r)
        for (int64_t c = 0; c < W; ++c) pgb[c] += G[r * LW + c];
      // weight gradients against the (dropped) layer inputs, then the input gradient
      const T* A = px + g.off[s];
      int64_t lda = F;
      if (drop) {
        masked<T>(A, F, pm + t.mo[i], t.M, scale, ps, k, B, k);
        A = ps;
        lda = k;
      }
      gemm<T>('T', 'N', W, k, B, T(1), G, LW, A, lda, T(0), gwx[i].data_ptr<T>(), k);
      if (i > 0) {
        const T* Hp = h - W;
        int64_t ldh = LW;
        if (drop) {
          masked<T>(Hp, LW, pm + t.mo[i] + k, t.M, scale, ps, W, B, W);
          Hp = ps;
          ldh = W;
        }
        gemm<T>('T', 'N', W, W, B, T(1), G, LW, Hp, ldh, T(0), gwh[i - 1].data_ptr<T>(), W);
      }
      if (drop) {
        gemm<T>('N', 'N', B, k, W, T(1), G, LW, pwx[i], k, T(0), ps, k);
        masked_add<T>(ps, k, pm + t.mo[i], t.M, scale, pgx + g.off[s], F, B, k);
      } else {
        gemm<T>('N', 'N', B, k, W, T(1), G, LW, pwx[i], k, T(1), pgx + g.off[s], F);
      }
    }
  });
  return {gx, gwx, gwh, gb, gwo, gbo, ggam, gbet};
}

// ---- Meta -------------------------------------------------------------------------------------
TrainOut train_forward_meta(const Tensor& input, TensorList wx, TensorList wh, TensorList bias,
                            const Tensor& wo, const std::optional<Tensor>& bo,
                            TensorList bn_weight, TensorList bn_bias,
                            const std::optional<Tensor>& dropout_mask, bool batch_norm,
                            double eps, double dropout, int64_t splits,
                            const std::string& activation, const std::string&) {
  const char* op = "spinal_linear_train";
  const TrainGeom t = train_geom(check(op, input, wx, wh, bias, wo, bo, splits));
  check_bn_params(op, input, bn_weight, "bn_weight", t.g);
  check_bn_params(op, input, bn_bias, "bn_bias", t.g);
  parse_act(activation);
  const int64_t B = t.g.B, L = t.g.L, W = t.g.W;
  auto o = input.options();
  const int64_t nl = batch_norm ? L : 0;
  return {at::empty({B, t.g.O}, o), at::empty({nl, W}, o),       at::empty({nl, W}, o),
          at::empty({B, L * W}, o), batch_norm ? at::empty({B, L * W}, o) : at::empty({0}, o),
          at::empty({nl, W}, o),    dropout > 0.0 ? at::empty({B, t.M}, o.dtype(at::kByte))
                                                  : at::empty({0}, o.dtype(at::kByte))};
}

TrainBackwardOut train_backward_meta(const Tensor& grad_out, const Tensor& input, TensorList wx,
                                     TensorList wh, const Tensor& wo, TensorList bn_weight,
                                     const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                     bool batch_norm, double, int64_t splits,
                                     const std::string& activation, const std::string&) {
  const Geom g = check("spinal_linear_train_backward", input, wx, wh, {}, wo, std::nullopt, splits);
  parse_act(activation);
  auto o = input.options();
  LayerGrads gw = layer_grads(wx, g.W, o, /*zero=*/false);
  std::vector<Tensor> ggam, gbet;
  for (int64_t i = 0; batch_norm && !bn_weight.empty() && i < g.L; ++i) {
    ggam.push_back(at::empty({g.W}, o));
    gbet.push_back(at::empty({g.W}, o));
  }
  return {at::empty({g.B, g.F}, o), gw.wx, gw.wh, gw.b, at::empty({g.O, g.L * g.W}, o),
          at::empty({g.O}, o), ggam, gbet};
}

// ---- autograd ----------------------------------------------------------------------------------
struct SpinalTrainFn : public torch::autograd::Function<SpinalTrainFn> {
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const Tensor& input, TensorList wx, TensorList wh,
      TensorList bias, const Tensor& wo, const std::optional<Tensor>& bo, TensorList bn_weight,
      TensorList bn_bias, const std::optional<Tensor>& dropout_mask, bool batch_norm, double eps,
      double dropout, int64_t splits, const std::string& activation, const std::string& backend) {
    static auto fwd =
        op_handle("shallowkern::spinal_linear_train_forward")
            .typed<TrainOut(const Tensor&, TensorList, TensorList, TensorList, const Tensor&,
                            const std::optional<Tensor>&, TensorList, TensorList,
                            const std::optional<Tensor>&, bool, double, double, int64_t,
                            const std::string&, const std::string&)>();
    auto [y, mean, uvar, H, XH, rstd, mask] =
        fwd.call(input, wx, wh, bias, wo, bo, bn_weight, bn_bias, dropout_mask, batch_norm, eps,
                 dropout, splits, activation, backend);
    save_lists(ctx, {input, wo, H, XH, rstd, mask}, {wx, wh, bn_weight});
    ctx->saved_data["nbias"] = static_cast<int64_t>(bias.size());
    ctx->saved_data["nbn"] = static_cast<int64_t>(bn_weight.size());
    ctx->saved_data["nbnb"] = static_cast<int64_t>(bn_bias.size());
    ctx->saved_data["has_bo"] = bo.has_value() && bo->defined();
    ctx->saved_data["batch_norm"] = batch_norm;
    ctx->saved_data["dropout"] = dropout;
    ctx->saved_data["splits"] = splits;
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["backend"] = backend;
    ctx->mark_non_differentiable({mean, uvar, mask});
    return {y, mean, uvar, mask};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!c10::GradMode::is_enabled(),
                "spinal_linear_train: double backward (create_graph=True) is not supported; "
                "use shallowkern.ops.spinal_train.spinal_linear_train_reference");
    static auto bwd =
        op_handle("shallowkern::spinal_linear_train_backward")
            .typed<TrainBackwardOut(const Tensor&, const Tensor&, TensorList, TensorList,
                                    const Tensor&, TensorList, const Tensor&, const Tensor&,
                                    const Tensor&, const Tensor&, bool, double, int64_t,
                                    const std::string&, const std::string&)>();
    const Restored r = restore_lists(ctx);
    const std::vector<Tensor>&saved = r.head, &wx = r.lists[0], &wh = r.lists[1], &gam = r.lists[2];
    const int64_t nbias = ctx->saved_data["nbias"].toInt();
    const int64_t nbn = ctx->saved_data["nbn"].toInt(), nbnb = ctx->saved_data["nbnb"].toInt();
    const bool has_bo = ctx->saved_data["has_bo"].toBool();
    Tensor g = grads[0];
    if (!g.defined()) g = at::zeros({saved[0].size(0), saved[1].size(0)}, saved[0].options());
    auto [gx, gwx, gwh, gb, gwo, gbo, ggam, gbet] =
        bwd.call(g, saved[0], wx, wh, saved[1], gam, saved[2], saved[3], saved[4], saved[5],
                 ctx->saved_data["batch_norm"].toBool(), ctx->saved_data["dropout"].toDouble(),
                 ctx->saved_data["splits"].toInt(), ctx->saved_data["activation"].toStringRef(),
                 ctx->saved_data["backend"].toStringRef());
    auto out = chain_grads(gx, LayerGrads{gwx, gwh, gb}, nbias > 0, gwo, has_bo ? gbo : Tensor());
    // gamma/beta gradients exist when BN is affine; a bn_bias list without bn_weight gets
    // sum gn (= gbeta) computed here from ggam's twin only when both are given
    for (int64_t i = 0; i < nbn; ++i) out.push_back(ggam.empty() ? Tensor() : ggam[i]);
    for (int64_t i = 0; i < nbnb; ++i) out.push_back(gbet.empty() ? Tensor() : gbet[i]);
    for (int j = 0; j < 7; ++j) out.push_back(Tensor());  // mask, bn, eps, p, splits, act, backend
    return out;
  }
};

// Below autograd (no grad needed, inference-mode tensors, fake tensors): the forward, less what
// only the backward needs.
std::tuple<Tensor, Tensor, Tensor, Tensor> train_composite(
    const Tensor& input, TensorList wx, TensorList wh, TensorList bias, const Tensor& wo,
    const std::optional<Tensor>& bo, TensorList bn_weight, TensorList bn_bias,
    const std::optional<Tensor>& dropout_mask, bool batch_norm, double eps, double dropout,
    int64_t splits, const std::string& activation, const std::string& backend) {
  static auto fwd =
      op_handle("shallowkern::spinal_linear_train_forward")
          .typed<TrainOut(const Tensor&, TensorList, TensorList, TensorList, const Tensor&,
                          const std::optional<Tensor>&, TensorList, TensorList,
                          const std::optional<Tensor>&, bool, double, double, int64_t,
                          const std::string&, const std::string&)>();
  auto r = fwd.call(input, wx, wh, bias, wo, bo, bn_weight, bn_bias, dropout_mask, batch_norm,
                    eps, dropout, splits, activation, backend);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<6>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> train_autograd(
    const Tensor& input, TensorList wx, TensorList wh, TensorList bias, const Tensor& wo,
    const std::optional<Tensor>& bo, TensorList bn_weight, TensorList bn_bias,
    const std::optional<Tensor>& dropout_mask, bool batch_norm, double eps, double dropout,
    int64_t splits, const std::string& activation, const std::string& backend) {
  TORCH_CHECK_VALUE(bn_bias.empty() || bn_bias.size() == bn_weight.size(),
                    "spinal_linear_train: bn_bias must be given with bn_weight (affine BatchNorm) "
                    "or not at all, got ", bn_weight.size(), " and ", bn_bias.size());
  auto out = SpinalTrainFn::apply(input, wx, wh, bias, wo, bo, bn_weight, bn_bias, dropout_mask,
                                  batch_norm, eps, dropout, splits, activation, backend);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace
}  // namespace spinal
}  // namespace shallowkern

TORCH_LIBRARY_IMPL(shallowkern, CPU, m) {
  m.impl("spinal_linear_train_forward", &shallowkern::spinal::train_forward_cpu);
  m.impl("spinal_linear_train_backward", &shallowkern::spinal::train_backward_cpu);
}

TORCH_LIBRARY_IMPL(shallowkern, Meta, m) {
  m.impl("spinal_linear_train_forward", &shallowkern::spinal::train_forward_meta);
  m.impl("spinal_linear_train_backward", &shallowkern::spinal::train_backward_meta);
}

TORCH_LIBRARY_IMPL(shallowkern, CompositeExplicitAutograd, m) {
  m.impl("spinal_linear_train", &shallowkern::spinal::train_composite);
}

TORCH_LIBRARY_IMPL(shallowkern, Autograd, m) {
  m.impl("spinal_linear_train", &shallowkern::spinal::train_autograd);
}
