// Block-sparse CPU convolution for AFCC-pruned layers (shallowkern::_afcc_conv2d_native*).
//
// Math: y = conv2d(x, w * M) + b with M (K, C) a kernel-pair mask (see shallowkern/ops/
// afcc_conv2d.py). The caller passes a block plan: channel orders out_perm (K) / in_perm (C) and
// the kept (block_out x block_in) blocks of the permuted mask in CSR (row_ptr, col_idx).
//
// Forward, per chunk of images (P = images * OH * OW columns):
//   cols (C*R*S, P)  = im2col of the input channels in in_perm order
//   Y[ob] (Bo, P)    = sum_{cb kept in row ob} Wpack[ob, cb] (Bo, Bc*R*S) @ cols[cb] (Bc*R*S, P)
//   y[n, out_perm[k], p] = Y[k, p] + b[out_perm[k]]
// Wpack holds only the kept blocks (masked pairs inside a kept block are zero), gathered from
// the dense weight on every call (cost ~ kept pairs); skipped blocks cost nothing. Each block
// product is one BLAS GEMM (at::addmm_out, MKL/oneDNN with its own threads); the gather,
// im2col, col2im and scatter loops run with at::parallel_for.
// Backward: gY = grad_out rows in out_perm order;
//   dcols[cb] += Wpack[ob, cb]^T @ gY[ob],  gx = col2im(dcols) in in_perm order
//   gWpack[ob, cb] += gY[ob] @ cols[cb]^T,  gw[k, c] = M[k, c] * gWpack (scattered back)
//   gb = sum over n, p of grad_out.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace shallowkern {
namespace cpu {
namespace {

struct Geo {
  int64_t N, C, H, W, K, R, S, OH, OW, sh, sw, ph, pw, dh, dw;
  int64_t RS() const { return R * S; }
  int64_t OHW() const { return OH * OW; }
};

// Images per chunk: cols (C*R*S x images*OH*OW) kept under ~16 MiB of elements * 4.
int64_t chunk_images(const Geo& g) {
  const int64_t per_image = std::max<int64_t>(1, g.C * g.RS() * g.OHW());
  return std::max<int64_t>(1, std::min<int64_t>(g.N, (int64_t(4) << 20) / per_image));
}

template <typename T>
void im2col(const T* x, const int64_t* in_perm, T* cols, const Geo& g, int64_t n0, int64_t nn) {
  const int64_t P = nn * g.OHW();
  at::parallel_for(0, g.C * g.RS(), 1, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t c = row / g.RS(), r = (row / g.S) % g.R, s = row % g.S;
      T* dst = cols + row * P;
      for (int64_t n = 0; n < nn; ++n) {
        const T* plane = x + ((n0 + n) * g.C + in_perm[c]) * g.H * g.W;
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          const int64_t ih = oh * g.sh - g.ph + r * g.dh;
          T* d = dst + (n * g.OH + oh) * g.OW;
          if (ih < 0 || ih >= g.H) {
            std::fill(d, d + g.OW, T(0));
            continue;
          }
          const T* src = plane + ih * g.W;
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t iw = ow * g.sw - g.pw + s * g.dw;
            d[ow] = (iw >= 0 && iw < g.W) ? src[iw] : T(0);
          }
        }
      }
    }
  });
}

// Accumulate dcols into gx (rows of one channel only touch that channel's planes: no races).
template <typename T>
void col2im(const T* dcols, const int64_t* in_perm, T* gx, const Geo& g, int64_t n0, int64_t nn) {
  const int64_t P = nn * g.OHW();
  at::parallel_for(0, g.C, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      for (int64_t r = 0; r < g.R; ++r)
        for (int64_t s = 0; s < g.S; ++s) {
          const T* src = dcols + ((c * g.R + r) * g.S + s) * P;
          for (int64_t n = 0; n < nn; ++n) {
            T* plane = gx + ((n0 + n) * g.C + in_perm[c]) * g.H * g.W;
            for (int64_t oh = 0; oh < g.OH; ++oh) {
              const int64_t ih = oh * g.sh - g.ph + r * g.dh;
              if (ih < 0 || ih >= g.H) continue;
              const T* sv = src + (n * g.OH + oh) * g.OW;
              T* d = plane + ih * g.W;
              for (int64_t ow = 0; ow < g.OW; ++ow) {
                const int64_t iw = ow * g.sw - g.pw + s * g.dw;
                if (iw >= 0 && iw < g.W) d[iw] += sv[ow];
              }
            }
          }
        }
    }
  });
}

struct Plan {
  const int64_t *out_perm, *in_perm, *row_ptr, *col_idx;
  int64_t Bo, Bc, nob, nnzb;
  std::vector<int64_t> block_row;  // ob of each kept block
};

Plan make_plan(const at::Tensor& out_perm, const at::Tensor& in_perm, const at::Tensor& row_ptr,
               const at::Tensor& col_idx, int64_t Bo, int64_t Bc) {
  Plan p{out_perm.data_ptr<int64_t>(), in_perm.data_ptr<int64_t>(), row_ptr.data_ptr<int64_t>(),
         col_idx.data_ptr<int64_t>(), Bo, Bc, row_ptr.numel() - 1, col_idx.numel(), {}};
  p.block_row.resize(p.nnzb);
  for (int64_t ob = 0; ob < p.nob; ++ob)
    for (int64_t i = p.row_ptr[ob]; i < p.row_ptr[ob + 1]; ++i) p.block_row[i] = ob;
  return p;
}

// Wpack (nnzb, Bo, Bc*RS): the kept blocks of w * M in permuted order, zero-padded at tails.
template <typename T>
at::Tensor pack_weight(const at::Tensor& weight, const bool* mask, const Plan& p, const Geo& g) {
  auto pack = at::empty({p.nnzb, p.Bo, p.Bc * g.RS()}, weight.options());
  const T* w = weight.data_ptr<T>();
  T* dst = pack.data_ptr<T>();
  const int64_t rs = g.RS();
  at::parallel_for(0, p.nnzb, 1, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t ob = p.block_row[blk], cb = p.col_idx[blk];
      for (int64_t i = 0; i < p.Bo; ++i) {
        T* row = dst + (blk * p.Bo + i) * p.Bc * rs;
        const int64_t kk = ob * p.Bo + i;
        for (int64_t j = 0; j < p.Bc; ++j) {
          const int64_t cc = cb * p.Bc + j;
          T* d = row + j * rs;
          if (kk < g.K && cc < g.C) {
            const int64_t k = p.out_perm[kk], c = p.in_perm[cc];
            if (mask[k * g.C + c]) {
              std::copy(w + (k * g.C + c) * rs, w + (k * g.C + c + 1) * rs, d);
              continue;
            }
          }
          std::fill(d, d + rs, T(0));
        }
      }
    }
  });
  return pack;
}

Geo geometry(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
             at::IntArrayRef padding, at::IntArrayRef dilation) {
  Geo g{input.size(0), input.size(1), input.size(2), input.size(3), weight.size(0),
        weight.size(2), weight.size(3), 0, 0, stride[0], stride[1], padding[0], padding[1],
        dilation[0], dilation[1]};
  g.OH = (g.H + 2 * g.ph - g.dh * (g.R - 1) - 1) / g.sh + 1;
  g.OW = (g.W + 2 * g.pw - g.dw * (g.S - 1) - 1) / g.sw + 1;
  return g;
}

void check_inputs(const char* fn, const at::Tensor& input, const at::Tensor& weight,
                  const at::Tensor& mask, const at::Tensor& out_perm, const at::Tensor& in_perm,
                  const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t Bo, int64_t Bc,
                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(input.dim() == 4 && weight.dim() == 4, fn, ": input and weight must be 4-D");
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu() && mask.device().is_cpu(), fn,
              ": CPU tensors expected");
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), fn, ": weight dtype ",
              weight.scalar_type(), " != input dtype ", input.scalar_type());
  TORCH_CHECK(weight.size(1) == input.size(1), fn, ": weight has ", weight.size(1),
              " input channels, input has ", input.size(1));
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 2 &&
                  mask.size(0) == weight.size(0) && mask.size(1) == weight.size(1),
              fn, ": mask must be bool (K, C) matching the weight");
  TORCH_CHECK(Bo > 0 && Bc > 0, fn, ": block sizes must be positive");
  TORCH_CHECK(out_perm.scalar_type() == at::kLong && out_perm.numel() == weight.size(0) &&
                  in_perm.scalar_type() == at::kLong && in_perm.numel() == weight.size(1),
              fn, ": out_perm / in_perm must be int64 permutations of K / C");
  TORCH_CHECK(row_ptr.scalar_type() == at::kLong && col_idx.scalar_type() == at::kLong &&
                  row_ptr.numel() == (weight.size(0) + Bo - 1) / Bo + 1,
              fn, ": row_ptr must be int64 of length ceil(K / block_out) + 1");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, fn,
              ": stride, padding and dilation must have 2 entries");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 &&
                  padding[0] >= 0 && padding[1] >= 0,
              fn, ": need stride >= 1, dilation >= 1, padding >= 0");
  const int64_t K = weight.size(0), C = weight.size(1);
  const int64_t ncb = (C + Bc - 1) / Bc, nnz = col_idx.numel();
  const int64_t* rp = row_ptr.data_ptr<int64_t>();
  const int64_t* ci = col_idx.data_ptr<int64_t>();
  TORCH_CHECK(rp[0] == 0 && rp[row_ptr.numel() - 1] == nnz, fn, ": row_ptr does not span col_idx");
  for (int64_t i = 1; i < row_ptr.numel(); ++i)
    TORCH_CHECK(rp[i] >= rp[i - 1], fn, ": row_ptr must be non-decreasing");
  for (int64_t i = 0; i < nnz; ++i)
    TORCH_CHECK(ci[i] >= 0 && ci[i] < ncb, fn, ": col_idx out of range");
  const int64_t* op = out_perm.data_ptr<int64_t>();
  const int64_t* ip = in_perm.data_ptr<int64_t>();
  for (int64_t i = 0; i < K; ++i) TORCH_CHECK(op[i] >= 0 && op[i] < K, fn, ": out_perm out of range");
  for (int64_t i = 0; i < C; ++i) TORCH_CHECK(ip[i] >= 0 && ip[i] < C, fn, ": in_perm out of range");
}

}  // namespace

at::Tensor afcc_conv2d_forward_cpu(const at::Tensor& input_, const at::Tensor& weight_,
                                   const at::Tensor& mask_, const std::optional<at::Tensor>& bias,
                                   const at::Tensor& out_perm, const at::Tensor& in_perm,
                                   const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                   int64_t block_out, int64_t block_in, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_inputs("_afcc_conv2d_native", input_, weight_, mask_, out_perm, in_perm, row_ptr, col_idx,
               block_out, block_in, stride, padding, dilation);
  const auto input = input_.contiguous();
  const auto weight = weight_.contiguous();
  const auto mask = mask_.contiguous();
  const Geo g = geometry(input, weight, stride, padding, dilation);
  TORCH_CHECK(g.OH >= 1 && g.OW >= 1, "_afcc_conv2d_native: the kernel does not fit the input");
  auto out = at::empty({g.N, g.K, g.OH, g.OW}, input.options());
  if (bias.has_value()) {
    TORCH_CHECK(bias->numel() == g.K && bias->scalar_type() == input.scalar_type(),
                "_afcc_conv2d_native: bias must be (K,) of the input dtype");
  }
  if (out.numel() == 0) return out;
  const Plan p = make_plan(out_perm, in_perm, row_ptr, col_idx, block_out, block_in);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "_afcc_conv2d_native", [&] {
    const auto pack = pack_weight<scalar_t>(weight, mask.data_ptr<bool>(), p, g);
    const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
    const scalar_t* bptr = bias.has_value() ? bias_c.data_ptr<scalar_t>() : nullptr;
    const int64_t step = chunk_images(g), rs = g.RS(), ohw = g.OHW();
    for (int64_t n0 = 0; n0 < g.N; n0 += step) {
      const int64_t nn = std::min(step, g.N - n0), P = nn * ohw;
      auto cols = at::empty({g.C * rs, P}, input.options());
      if (p.nnzb) im2col(input.data_ptr<scalar_t>(), p.in_perm, cols.data_ptr<scalar_t>(), g, n0, nn);
      auto Y = at::empty({g.K, P}, input.options());
      for (int64_t ob = 0; ob < p.nob; ++ob) {
        const int64_t k0 = ob * p.Bo, bo = std::min(p.Bo, g.K - k0);
        auto y = Y.narrow(0, k0, bo);
        if (p.row_ptr[ob] == p.row_ptr[ob + 1]) {
          y.zero_();
          continue;
        }
        for (int64_t blk = p.row_ptr[ob]; blk < p.row_ptr[ob + 1]; ++blk) {
          const int64_t c0 = p.col_idx[blk] * p.Bc, bc = std::min(p.Bc, g.C - c0);
          auto wb = pack[blk].narrow(0, 0, bo).narrow(1, 0, bc * rs);
          auto xb = cols.narrow(0, c0 * rs, bc * rs);
          at::addmm_out(y, y, wb, xb, blk == p.row_ptr[ob] ? 0 : 1, 1);
        }
      }
      const scalar_t* ys = Y.data_ptr<scalar_t>();
      scalar_t* o = out.data_ptr<scalar_t>();
      at::parallel_for(0, g.K, 1, [&](int64_t kb, int64_t ke) {
        for (int64_t kk = kb; kk < ke; ++kk) {
          const int64_t k = p.out_perm[kk];
          const scalar_t bv = bptr ? bptr[k] : scalar_t(0);
          for (int64_t n = 0; n < nn; ++n) {
            const scalar_t* src = ys + kk * P + n * ohw;
            scalar_t* dst = o + ((n0 + n) * g.K + k) * ohw;
            for (int64_t q = 0; q < ohw; ++q) dst[q] = src[q] + bv;
          }
        }
      });
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> afcc_conv2d_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& input_, const at::Tensor& weight_,
    const at::Tensor& mask_, const at::Tensor& out_perm, const at::Tensor& in_perm,
    const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t block_out, int64_t block_in,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    std::array<bool, 3> output_mask) {
  check_inputs("_afcc_conv2d_native_backward", input_, weight_, mask_, out_perm, in_perm, row_ptr,
               col_idx, block_out, block_in, stride, padding, dilation);
  const auto input = input_.contiguous();
  const auto weight = weight_.contiguous();
  const auto mask = mask_.contiguous();
  const auto grad_out = grad_out_.contiguous();
  const Geo g = geometry(input, weight, stride, padding, dilation);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == g.N && grad_out.size(1) == g.K &&
                  grad_out.size(2) == g.OH && grad_out.size(3) == g.OW,
              "_afcc_conv2d_native_backward: grad_out must be (N, K, OH, OW) = (", g.N, ", ", g.K,
              ", ", g.OH, ", ", g.OW, ")");
  const Plan p = make_plan(out_perm, in_perm, row_ptr, col_idx, block_out, block_in);
  at::Tensor gi = output_mask[0] ? at::zeros_like(input) : input.new_empty({0});
  at::Tensor gw = output_mask[1] ? at::zeros_like(weight) : input.new_empty({0});
  at::Tensor gb = output_mask[2] ? grad_out.sum({0, 2, 3}) : input.new_empty({0});
  if (!(output_mask[0] || output_mask[1]) || p.nnzb == 0 || g.N == 0) return {gi, gw, gb};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "_afcc_conv2d_native_backward", [&] {
    const int64_t rs = g.RS(), ohw = g.OHW(), step = chunk_images(g);
    at::Tensor pack = output_mask[0] ? pack_weight<scalar_t>(weight, mask.data_ptr<bool>(), p, g)
                                     : at::Tensor();
    at::Tensor gpack = output_mask[1] ? at::zeros({p.nnzb, p.Bo, p.Bc * rs}, input.options())
                                      : at::Tensor();
    for (int64_t n0 = 0; n0 < g.N; n0 += step) {
      const int64_t nn = std::min(step, g.N - n0), P = nn * ohw;
      // grad_out rows in out_perm order
      auto gY = at::empty({g.K, P}, input.options());
      {
        const scalar_t* go = grad_out.data_ptr<scalar_t>();
        scalar_t* d = gY.data_ptr<scalar_t>();
        at::parallel_for(0, g.K, 1, [&](int64_t kb, int64_t ke) {
          for (int64_t kk = kb; kk < ke; ++kk) {
            const int64_t k = p.out_perm[kk];
            for (int64_t n = 0; n < nn; ++n)
              std::copy(go + ((n0 + n) * g.K + k) * ohw, go + ((n0 + n) * g.K + k + 1) * ohw,
                        d + kk * P + n * ohw);
          }
        });
      }
      if (output_mask[1]) {
        auto cols = at::empty({g.C * rs, P}, input.options());
        im2col(input.data_ptr<scalar_t>(), p.in_perm, cols.data_ptr<scalar_t>(), g, n0, nn);
        for (int64_t blk = 0; blk < p.nnzb; ++blk) {
          const int64_t ob = p.block_row[blk];
          const int64_t k0 = ob * p.Bo, bo = std::min(p.Bo, g.K - k0);
          const int64_t c0 = p.col_idx[blk] * p.Bc, bc = std::min(p.Bc, g.C - c0);
          auto gwb = gpack[blk].narrow(0, 0, bo).narrow(1, 0, bc * rs);
          gwb.addmm_(gY.narrow(0, k0, bo), cols.narrow(0, c0 * rs, bc * rs).t());
        }
      }
      if (output_mask[0]) {
        auto dcols = at::zeros({g.C * rs, P}, input.options());
        for (int64_t blk = 0; blk < p.nnzb; ++blk) {
          const int64_t ob = p.block_row[blk];
          const int64_t k0 = ob * p.Bo, bo = std::min(p.Bo, g.K - k0);
          const int64_t c0 = p.col_idx[blk] * p.Bc, bc = std::min(p.Bc, g.C - c0);
          auto db = dcols.narrow(0, c0 * rs, bc * rs);
          db.addmm_(pack[blk].narrow(0, 0, bo).narrow(1, 0, bc * rs).t(), gY.narrow(0, k0, bo));
        }
        col2im(dcols.data_ptr<scalar_t>(), p.in_perm, gi.data_ptr<scalar_t>(), g, n0, nn);
      }
    }
    if (output_mask[1]) {
      const scalar_t* src = gpack.data_ptr<scalar_t>();
      scalar_t* d = gw.data_ptr<scalar_t>();
      const bool* m = mask.data_ptr<bool>();
      at::parallel_for(0, p.nnzb, 1, [&](int64_t b, int64_t e) {
        for (int64_t blk = b; blk < e; ++blk) {
          const int64_t ob = p.block_row[blk], cb = p.col_idx[blk];
          for (int64_t i = 0; i < p.Bo && ob * p.Bo + i < g.K; ++i) {
            const int64_t k = p.out_perm[ob * p.Bo + i];
            for (int64_t j = 0; j < p.Bc && cb * p.Bc + j < g.C; ++j) {
              const int64_t c = p.in_perm[cb * p.Bc + j];
              if (!m[k * g.C + c]) continue;
              const scalar_t* s = src + ((blk * p.Bo + i) * p.Bc + j) * rs;
              std::copy(s, s + rs, d + (k * g.C + c) * rs);
            }
          }
        }
      });
    }
  });
  return {gi, gw, gb};
}

}  // namespace cpu
}  // namespace shallowkern

TORCH_LIBRARY_IMPL(shallowkern, CPU, m) {
  m.impl("_afcc_conv2d_native", &shallowkern::cpu::afcc_conv2d_forward_cpu);
  m.impl("_afcc_conv2d_native_backward", &shallowkern::cpu::afcc_conv2d_backward_cpu);
}
