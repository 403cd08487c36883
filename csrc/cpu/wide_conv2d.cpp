// C++ CPU kernels of shallowkern::_wide_conv2d_native (forward) and
// shallowkern::_wide_conv2d_native_backward (backward), float32 and float64.
//
// Math (zero padding, cross-correlation as nn.Conv2d; g(k) = first input channel of k's group):
//   y[n,k,p,q]   = b[k] + sum_{c,r,s} x[n, g(k)+c, p*sh-ph+r*dh, q*sw-pw+s*dw] * w[k,c,r,s]
//   a            = relu(y) if relu else y
//   out[n,k,i,j] = max_{di,dj} a[n,k,2i+di,2j+dj]  (pool 2; floor mode: odd last row/col unused)
//   idx[n,k,i,j] = 2*di+dj of the max, scanning (0,0),(0,1),(1,0),(1,1) with the rule
//                  `v > best || isnan(v)` of aten's max_pool2d; 4 (NO_GRAD) if relu and out <= 0
// Backward (gy = gradient of the pre-activation y, built per chunk, never for the whole batch):
//   gy[n,k,2i+di,2j+dj] = gout[n,k,i,j] if idx[n,k,i,j] == 2*di+dj else 0   (pool 2)
//   gy = gout * (out > 0)  (pool 1 + relu),  gy = gout  (pool 1)
//   gx = col2im(W^T gy),  gw = sum_n gy col(x)^T,  gb = sum_{n,p,q} gy
//
// Design (why it beats conv2d -> relu -> max_pool2d): the batch is cut into chunks of B images
// x one group; per chunk, im2col into a thread-local buffer (CRS x B*P, only the P = EH*EW conv
// positions that reach the pooled output), one GEMM through ATen (MKL; inside at::parallel_for
// it runs single-threaded, so no oversubscription), then a fused epilogue (bias, ReLU, 2x2 max,
// indices) that reads the GEMM result while it is in cache and writes only the pooled output:
// the unpooled activation never reaches memory. The backward does the same in reverse: gy of a
// chunk from grad_out + saved, gw accumulated per thread (gy col^T, MKL beta=1) and reduced in a
// fixed order (deterministic for a given thread count), gx = col2im(W^T gy) into the chunk's own
// images and channels (no races), gb summed in double.
// References: Chellapilla et al., "High performance convolutional neural networks for document
// processing" (2006) for im2col + GEMM; aten/src/ATen/native/cpu/MaxPoolKernel.cpp for the
// NaN rule of max_pool2d.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <tuple>
#include <utility>
#include <vector>

#include "shallowkern/checks.h"

namespace shallowkern {
namespace {

constexpr uint8_t kNoGrad = 4;  // idx value where the ReLU zeroed the window
// Chunk sizing. Enough GEMM columns per chunk that MKL runs near its peak (N >= ~256 is within a
// few % of it on AVX-512 here), buffers that stay in L2/L3, and >= 2 chunks per thread.
constexpr int64_t kTargetCols = 512;
constexpr int64_t kMaxChunkBytes = 4 << 20;

inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }
// ceil(a / b) for b > 0 and any sign of a.
inline int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

struct Geom {
  int64_t N, C, H, W, K, G, Cg, Kg, R, S;
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t OH, OW;  // conv output
  int64_t pool;
  int64_t PH, PW;  // op output (pooled, or OH, OW)
  int64_t EH, EW;  // conv rows/cols that reach the output: 2*PH, 2*PW with pool 2, else OH, OW
  int64_t crs() const { return Cg * R * S; }
  int64_t npos() const { return EH * EW; }
};

bool is_channels_last_only(const at::Tensor& t) {
  // Same rule as ops/wide_conv2d.py out_memory_format: ambiguous layouts count as contiguous.
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::MemoryFormat out_format(const at::Tensor& x) {
  return is_channels_last_only(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

Geom check_and_geom(const char* op, const at::Tensor& input, const at::Tensor& weight,
                    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                    int64_t groups, int64_t pool) {
  TORCH_CHECK(input.defined(), op, ": input is undefined");
  TORCH_CHECK(weight.defined(), op, ": weight is undefined");
  TORCH_CHECK(input.dim() == 4, op, ": input must be a 4-D (N, C, H, W) tensor, got ",
              input.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be a 4-D (K, C/groups, R, S) tensor, got ",
              weight.dim(), "-D");
  TORCH_CHECK(input.device().is_cpu(), op, ": input must be a CPU tensor, got ", input.device());
  TORCH_CHECK(weight.device().is_cpu(), op, ": weight must be a CPU tensor, got ",
              weight.device());
  SK_CHECK_FLOAT_OR_DOUBLE(op, input);
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), op, ": weight dtype ",
              weight.scalar_type(), " must equal the input dtype ", input.scalar_type());
  TORCH_CHECK(stride.size() == 2, op, ": stride must have 2 elements, got ", stride.size());
  TORCH_CHECK(padding.size() == 2, op, ": padding must have 2 elements, got ", padding.size());
  TORCH_CHECK(dilation.size() == 2, op, ": dilation must have 2 elements, got ",
              dilation.size());
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be >= 0, got ", padding);
  TORCH_CHECK(dilation[0] >= 1 && dilation[1] >= 1, op, ": dilation must be >= 1, got ",
              dilation);
  TORCH_CHECK(pool == 1 || pool == 2, op, ": pool must be 1 (none) or 2, got ", pool);
  Geom g{};
  g.N = input.size(0), g.C = input.size(1), g.H = input.size(2), g.W = input.size(3);
  g.K = weight.size(0), g.R = weight.size(2), g.S = weight.size(3);
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK(g.C % groups == 0 && g.K % groups == 0, op, ": groups=", groups,
              " must divide in_channels=", g.C, " and out_channels=", g.K);
  TORCH_CHECK(weight.size(1) * groups == g.C, op, ": weight has ", weight.size(1),
              " input channels per group but input has ", g.C, " channels and groups=", groups);
  TORCH_CHECK(g.R >= 1 && g.S >= 1, op, ": weight must have a non-empty kernel, got ",
              weight.sizes());
  g.G = groups, g.Cg = g.C / groups, g.Kg = g.K / groups;
  g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1];
  g.dh = dilation[0], g.dw = dilation[1];
  g.OH = conv_out_size(g.H, g.R, g.sh, g.ph, g.dh);
  g.OW = conv_out_size(g.W, g.S, g.sw, g.pw, g.dw);
  TORCH_CHECK(g.OH >= 1 && g.OW >= 1, op, ": the ", g.R, "x", g.S,
              " kernel (weight) does not fit the padded ", g.H, "x", g.W, " input (output ",
              g.OH, "x", g.OW, ")");
  TORCH_CHECK(pool == 1 || (g.OH >= 2 && g.OW >= 2), op,
              ": pool=2 needs a conv output of at least 2x2, got ", g.OH, "x", g.OW);
  g.pool = pool;
  g.PH = g.OH / pool, g.PW = g.OW / pool;
  g.EH = g.PH * pool, g.EW = g.PW * pool;
  return g;
}

// Images per chunk: see kTargetCols / kMaxChunkBytes.
int64_t images_per_chunk(const Geom& g, int64_t elem, int64_t rows) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t b = std::max<int64_t>(1, std::min(g.N, div_up(kTargetCols, g.npos())));
  while (b > 1 && b * g.npos() * rows * elem > kMaxChunkBytes) --b;
  while (b > 1 && div_up(g.N, b) * g.G < 2 * threads) b = div_up(b, 2);
  return b;
}

// Input view of one image and group: base pointer (at channel 0 of the group) and strides.
template <typename T>
struct Plane {
  T* p;
  int64_t sC, sH, sW;
};

// Range of output columns ow in [0, EW) whose input column ow*sw - pw + s*dw lies in [0, W).
inline std::pair<int64_t, int64_t> valid_cols(const Geom& g, int64_t s) {
  const int64_t off = s * g.dw - g.pw;
  int64_t lo = std::min(g.EW, std::max<int64_t>(0, ceil_div(-off, g.sw)));
  int64_t hi = std::max(lo, std::min(g.EW, ceil_div(g.W - off, g.sw)));
  return {lo, hi};
}

// col[(c*R + r)*S + s, ldoff + oh*EW + ow] = x[c, oh*sh-ph+r*dh, ow*sw-pw+s*dw] (0 outside).
template <typename T>
void im2col(Plane<const T> x, const Geom& g, T* col, int64_t ld) {
  for (int64_t c = 0; c < g.Cg; ++c) {
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        T* dst = col + ((c * g.R + r) * g.S + s) * ld;
        const auto [lo, hi] = valid_cols(g, s);
        const int64_t off = s * g.dw - g.pw;
        for (int64_t oh = 0; oh < g.EH; ++oh) {
          T* d = dst + oh * g.EW;
          const int64_t ih = oh * g.sh - g.ph + r * g.dh;
          if (ih < 0 || ih >= g.H) {
            std::fill(d, d + g.EW, T(0));
            continue;
          }
          const T* src = x.p + c * x.sC + ih * x.sH;
          std::fill(d, d + lo, T(0));
          if (g.sw == 1 && x.sW == 1) {
            const T* s0 = src + off;
            for (int64_t ow = lo; ow < hi; ++ow) d[ow] = s0[ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) d[ow] = src[(ow * g.sw + off) * x.sW];
          }
          std::fill(d + hi, d + g.EW, T(0));
        }
      }
    }
  }
}

// The adjoint of im2col: x[c, ih, iw] += col[(c, r, s), (oh, ow)].
template <typename T>
void col2im_add(const T* col, int64_t ld, const Geom& g, Plane<T> x) {
  for (int64_t c = 0; c < g.Cg; ++c) {
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        const T* src = col + ((c * g.R + r) * g.S + s) * ld;
        const auto [lo, hi] = valid_cols(g, s);
        const int64_t off = s * g.dw - g.pw;
        for (int64_t oh = 0; oh < g.EH; ++oh) {
          const int64_t ih = oh * g.sh - g.ph + r * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          const T* d = src + oh * g.EW;
          T* dst = x.p + c * x.sC + ih * x.sH;
          if (g.sw == 1 && x.sW == 1) {
            T* d0 = dst + off;
            for (int64_t ow = lo; ow < hi; ++ow) d0[ow] += d[ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) dst[(ow * g.sw + off) * x.sW] += d[ow];
          }
        }
      }
    }
  }
}

// 2D row-major (rows x cols, leading dimension ld) ATen view of a raw buffer, for at::mm_out.
template <typename T>
at::Tensor mat(T* p, int64_t rows, int64_t cols, int64_t ld, const at::TensorOptions& opt) {
  return at::from_blob(const_cast<std::remove_const_t<T>*>(p), {rows, cols}, {ld, 1}, opt);
}

// ------------------------------------------------------------------------------------------------
// forward
// ------------------------------------------------------------------------------------------------
template <typename T>
void forward_impl(const at::Tensor& x, const at::Tensor& w, const T* bias, const Geom& g,
                  bool relu, at::Tensor& out, at::Tensor* idx) {
  const int64_t CRS = g.crs(), P = g.npos();
  const int64_t B = images_per_chunk(g, sizeof(T), CRS + g.Kg);
  const int64_t items = div_up(g.N, B) * g.G;
  const T* xp = x.const_data_ptr<T>();
  const T* wp = w.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  uint8_t* ip = idx ? idx->mutable_data_ptr<uint8_t>() : nullptr;
  const auto xs = x.strides();
  const auto os = out.strides();  // indices share the output's shape and layout
  const auto opt = x.options();

  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> col(CRS * B * P), y(g.Kg * B * P);
    for (int64_t it = begin; it < end; ++it) {
      const int64_t grp = it % g.G, n0 = (it / g.G) * B, nb = std::min(B, g.N - n0);
      const int64_t ld = nb * P;
      for (int64_t b = 0; b < nb; ++b) {
        Plane<const T> xv{xp + (n0 + b) * xs[0] + grp * g.Cg * xs[1], xs[1], xs[2], xs[3]};
        im2col(xv, g, col.data() + b * P, ld);
      }
      auto ym = mat(y.data(), g.Kg, ld, ld, opt);
      at::mm_out(ym, mat(wp + grp * g.Kg * CRS, g.Kg, CRS, CRS, opt), mat(col.data(), CRS, ld, ld, opt));

      for (int64_t k = 0; k < g.Kg; ++k) {
        const int64_t kk = grp * g.Kg + k;
        const T bv = bias ? bias[kk] : T(0);
        for (int64_t b = 0; b < nb; ++b) {
          const T* pl = y.data() + k * ld + b * P;
          T* o = op + (n0 + b) * os[0] + kk * os[1];
          if (g.pool == 1) {
            for (int64_t oh = 0; oh < g.EH; ++oh) {
              for (int64_t ow = 0; ow < g.EW; ++ow) {
                T v = pl[oh * g.EW + ow] + bv;
                if (relu) v = (v > T(0) || std::isnan(v)) ? v : T(0);
                o[oh * os[2] + ow * os[3]] = v;
              }
            }
            continue;
          }
          uint8_t* ix = ip ? ip + (n0 + b) * os[0] + kk * os[1] : nullptr;
          for (int64_t i = 0; i < g.PH; ++i) {
            const T* r0 = pl + 2 * i * g.EW;
            const T* r1 = r0 + g.EW;
            for (int64_t j = 0; j < g.PW; ++j) {
              // max_pool2d's scan from -inf with `v > best || isnan(v)`; starting at position 0
              // is the same (v0 either wins the first comparison or is -inf like the start).
              T best = r0[2 * j] + bv;
              uint8_t bi = 0;
              const T v1 = r0[2 * j + 1] + bv, v2 = r1[2 * j] + bv, v3 = r1[2 * j + 1] + bv;
              bool t = v1 > best || std::isnan(v1);
              best = t ? v1 : best, bi = t ? 1 : bi;
              t = v2 > best || std::isnan(v2);
              best = t ? v2 : best, bi = t ? 2 : bi;
              t = v3 > best || std::isnan(v3);
              best = t ? v3 : best, bi = t ? 3 : bi;
              // relu then pool == pool then relu, with the same first index whenever out > 0
              // (positive values are unchanged, the rest become 0 < out; NaN survives both).
              if (relu && best <= T(0)) best = T(0), bi = kNoGrad;
              o[i * os[2] + j * os[3]] = best;
              if (ix) ix[i * os[2] + j * os[3]] = bi;
            }
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> wide_conv2d_forward_cpu(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    bool relu, int64_t pool, bool return_indices) {
  const char* op = "wide_conv2d";
  const Geom g = check_and_geom(op, input, weight, stride, padding, dilation, groups, pool);
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.K, op, ": bias must have shape (", g.K,
                ",), got ", bias->sizes());
    TORCH_CHECK(bias->device().is_cpu(), op, ": bias must be a CPU tensor, got ", bias->device());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), op, ": bias dtype ",
                bias->scalar_type(), " must equal the input dtype ", input.scalar_type());
  }
  const auto fmt = out_format(input);
  at::Tensor out = at::empty({g.N, g.K, g.PH, g.PW}, input.options().memory_format(fmt));
  at::Tensor idx = pool == 2 && return_indices
                       ? at::empty({g.N, g.K, g.PH, g.PW},
                                   input.options().dtype(at::kByte).memory_format(fmt))
                       : at::empty({0}, input.options().dtype(at::kByte));
  if (out.numel() == 0) return {out, idx};
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "wide_conv2d_forward_cpu", [&] {
    forward_impl<scalar_t>(input, w, has_bias ? b.const_data_ptr<scalar_t>() : nullptr, g, relu,
                           out, idx.numel() ? &idx : nullptr);
  });
  return {out, idx};
}

// ------------------------------------------------------------------------------------------------
// backward
// ------------------------------------------------------------------------------------------------
template <typename T>
void backward_impl(const at::Tensor& gout, const at::Tensor& x, const at::Tensor& w,
                   const at::Tensor& saved, const Geom& g, bool relu, std::array<bool, 3> mask,
                   at::Tensor& gx, at::Tensor& gw, at::Tensor& gb) {
  const int64_t CRS = g.crs(), P = g.npos();
  const bool need_col = mask[0] || mask[1];
  const int64_t B = images_per_chunk(g, sizeof(T), (need_col ? CRS : 0) + g.Kg);
  const int64_t items = div_up(g.N, B) * g.G;
  const T* xp = x.const_data_ptr<T>();
  const T* wp = w.const_data_ptr<T>();
  const T* gp = gout.const_data_ptr<T>();
  const auto xs = x.strides();
  const auto gs = gout.strides();
  const bool pooled = g.pool == 2, masked = !pooled && relu;
  const uint8_t* sp8 = pooled ? saved.const_data_ptr<uint8_t>() : nullptr;
  const T* spT = masked ? saved.const_data_ptr<T>() : nullptr;
  const auto ss = (pooled || masked) ? saved.strides() : gout.strides();
  T* gxp = mask[0] ? gx.mutable_data_ptr<T>() : nullptr;
  const auto gxs = mask[0] ? gx.strides() : x.strides();
  const bool gx_dense = mask[0] && gx.is_contiguous();
  const auto opt = x.options();

  // Per-invocation partial sums of gw and gb, keyed by the first chunk of the invocation and
  // summed in that order afterwards, so the result does not depend on thread timing.
  struct Partial {
    int64_t begin;
    std::vector<T> gw;
    std::vector<double> gb;
  };
  std::vector<Partial> partials;
  std::mutex mu;

  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> gy(g.Kg * B * P), col(need_col ? CRS * B * P : 0);
    Partial part{begin, std::vector<T>(mask[1] ? g.K * CRS : 0),
                 std::vector<double>(mask[2] ? g.K : 0)};
    for (int64_t it = begin; it < end; ++it) {
      const int64_t grp = it % g.G, n0 = (it / g.G) * B, nb = std::min(B, g.N - n0);
      const int64_t ld = nb * P;
      // gy of this chunk, from grad_out and saved (the pooled / masked gradient is never
      // materialised for the whole batch).
      for (int64_t k = 0; k < g.Kg; ++k) {
        const int64_t kk = grp * g.Kg + k;
        double bsum = 0;
        for (int64_t b = 0; b < nb; ++b) {
          T* pl = gy.data() + k * ld + b * P;
          const T* go = gp + (n0 + b) * gs[0] + kk * gs[1];
          if (pooled) {
            const uint8_t* id = sp8 + (n0 + b) * ss[0] + kk * ss[1];
            for (int64_t i = 0; i < g.PH; ++i) {
              T* r0 = pl + 2 * i * g.EW;
              T* r1 = r0 + g.EW;
              for (int64_t j = 0; j < g.PW; ++j) {
                const T v = go[i * gs[2] + j * gs[3]];
                const uint8_t q = id[i * ss[2] + j * ss[3]];  // >= 4: no gradient
                r0[2 * j] = q == 0 ? v : T(0);
                r0[2 * j + 1] = q == 1 ? v : T(0);
                r1[2 * j] = q == 2 ? v : T(0);
                r1[2 * j + 1] = q == 3 ? v : T(0);
                bsum += q < 4 ? double(v) : 0.0;
              }
            }
          } else {
            const T* sv = masked ? spT + (n0 + b) * ss[0] + kk * ss[1] : nullptr;
            for (int64_t oh = 0; oh < g.EH; ++oh) {
              for (int64_t ow = 0; ow < g.EW; ++ow) {
                T v = go[oh * gs[2] + ow * gs[3]];
                if (masked && !(sv[oh * ss[2] + ow * ss[3]] > T(0))) v = T(0);
                pl[oh * g.EW + ow] = v;
                bsum += double(v);
              }
            }
          }
        }
        if (mask[2]) part.gb[kk] += bsum;
      }
      if (mask[1]) {
        for (int64_t b = 0; b < nb; ++b) {
          Plane<const T> xv{xp + (n0 + b) * xs[0] + grp * g.Cg * xs[1], xs[1], xs[2], xs[3]};
          im2col(xv, g, col.data() + b * P, ld);
        }
        auto gwm = mat(part.gw.data() + grp * g.Kg * CRS, g.Kg, CRS, CRS, opt);
        at::addmm_out(gwm, gwm, mat(gy.data(), g.Kg, ld, ld, opt),
                      mat(col.data(), CRS, ld, ld, opt).t());
      }
      if (mask[0]) {
        // dcol = W_g^T gy, reusing the col buffer, then scatter-add into this chunk's images.
        auto dcol = mat(col.data(), CRS, ld, ld, opt);
        at::mm_out(dcol, mat(wp + grp * g.Kg * CRS, g.Kg, CRS, CRS, opt).t(),
                   mat(gy.data(), g.Kg, ld, ld, opt));
        for (int64_t b = 0; b < nb; ++b) {
          T* base = gxp + (n0 + b) * gxs[0] + grp * g.Cg * gxs[1];
          if (gx_dense) {
            std::fill(base, base + g.Cg * g.H * g.W, T(0));
          } else {
            for (int64_t c = 0; c < g.Cg; ++c)
              for (int64_t h = 0; h < g.H; ++h)
                for (int64_t ww = 0; ww < g.W; ++ww) base[c * gxs[1] + h * gxs[2] + ww * gxs[3]] = 0;
          }
          col2im_add(col.data() + b * P, ld, g, Plane<T>{base, gxs[1], gxs[2], gxs[3]});
        }
      }
    }
    std::lock_guard<std::mutex> lock(mu);
    partials.push_back(std::move(part));
  });

  std::sort(partials.begin(), partials.end(),
            [](const Partial& a, const Partial& b) { return a.begin < b.begin; });
  if (mask[1]) {
    T* o = gw.mutable_data_ptr<T>();
    std::fill(o, o + g.K * CRS, T(0));
    for (const auto& p : partials)
      for (int64_t i = 0; i < g.K * CRS; ++i) o[i] += p.gw[i];
  }
  if (mask[2]) {
    std::vector<double> acc(g.K, 0.0);
    for (const auto& p : partials)
      for (int64_t i = 0; i < g.K; ++i) acc[i] += p.gb[i];
    T* o = gb.mutable_data_ptr<T>();
    for (int64_t i = 0; i < g.K; ++i) o[i] = static_cast<T>(acc[i]);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> wide_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& saved, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, bool relu, int64_t pool,
    std::array<bool, 3> output_mask) {
  const char* op = "wide_conv2d_backward";
  const Geom g = check_and_geom(op, input, weight, stride, padding, dilation, groups, pool);
  TORCH_CHECK(grad_out.defined() && grad_out.dim() == 4, op,
              ": grad_out must be a 4-D tensor (N, K, PH, PW)");
  TORCH_CHECK(grad_out.device().is_cpu(), op, ": grad_out must be a CPU tensor, got ",
              grad_out.device());
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type(), op, ": grad_out dtype ",
              grad_out.scalar_type(), " must equal the input dtype ", input.scalar_type());
  const std::vector<int64_t> oshape{g.N, g.K, g.PH, g.PW};
  TORCH_CHECK(grad_out.sizes() == c10::IntArrayRef(oshape), op, ": grad_out must have shape ",
              c10::IntArrayRef(oshape), " (the forward output), got ", grad_out.sizes());
  if (pool == 2) {
    TORCH_CHECK(saved.defined() && saved.scalar_type() == at::kByte, op,
                ": saved must be the uint8 pool indices of the forward when pool=2, got ",
                saved.defined() ? c10::toString(saved.scalar_type()) : "undefined");
    TORCH_CHECK(saved.sizes() == c10::IntArrayRef(oshape), op, ": saved (pool indices) must have "
                "shape ", c10::IntArrayRef(oshape), ", got ", saved.sizes());
  } else if (relu) {
    TORCH_CHECK(saved.defined() && saved.scalar_type() == input.scalar_type(), op,
                ": saved must be the forward output (dtype ", input.scalar_type(),
                ") when pool=1 and relu, got ",
                saved.defined() ? c10::toString(saved.scalar_type()) : "undefined");
    TORCH_CHECK(saved.sizes() == c10::IntArrayRef(oshape), op, ": saved (forward output) must "
                "have shape ", c10::IntArrayRef(oshape), ", got ", saved.sizes());
  }
  if (saved.defined() && saved.numel() > 0)
    TORCH_CHECK(saved.device().is_cpu(), op, ": saved must be a CPU tensor, got ", saved.device());

  const auto empty = at::empty({0}, input.options());
  at::Tensor gx = output_mask[0] ? at::empty(input.sizes(), input.options().memory_format(
                                                                 out_format(input)))
                                 : empty;
  at::Tensor gw = output_mask[1] ? at::empty(weight.sizes(), weight.options()) : empty;
  at::Tensor gb = output_mask[2] ? at::empty({g.K}, input.options()) : empty;
  if (!(output_mask[0] || output_mask[1] || output_mask[2])) return {gx, gw, gb};
  if (g.N == 0 || g.K == 0) {
    // Nothing flows back: the input gradient (if any) and the sums are all zero.
    if (output_mask[0]) gx.zero_();
    if (output_mask[1]) gw.zero_();
    if (output_mask[2]) gb.zero_();
    return {gx, gw, gb};
  }
  const at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "wide_conv2d_backward_cpu", [&] {
    backward_impl<scalar_t>(grad_out, input, w, saved, g, relu, output_mask, gx, gw, gb);
  });
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(shallowkern, CPU, m) {
  m.impl("_wide_conv2d_native", &wide_conv2d_forward_cpu);
  m.impl("_wide_conv2d_native_backward", &wide_conv2d_backward_cpu);
}

}  // namespace shallowkern
