// Block-sparse CPU convolution for AFCC-pruned layers (shallowkern::_afcc_conv2d_native*).
//
// Math: y = conv2d(x, w * M) + b with M (K, C) a kernel-pair mask (see shallowkern/ops/
// afcc_conv2d.py). The caller passes a block plan: channel orders out_perm (K) / in_perm (C),
// block bounds in the permuted order (row_bounds: nOB + 1, col_bounds: nCB + 1; blocks may differ
// in size, following the mask's groups) and the kept blocks in CSR (row_ptr, col_idx).
//
// Forward, per chunk of images (P = images * OH * OW columns):
//   cols (C*R*S, P)  = im2col of the input channels in in_perm order
//   Y[ob] (Bo, P)    = sum_{cb kept in row ob} Wpack[ob, cb] (Bo, Bc*R*S) @ cols[cb] (Bc*R*S, P)
//   y[n, out_perm[k], p] = Y[k, p] + b[out_perm[k]]
// Wpack holds only the kept blocks (masked pairs inside a kept block are zero), gathered from
// the dense weight on every call (cost ~ kept pairs); skipped blocks cost nothing. Per out-block
// the kept blocks are one matrix (bo, sum of bc*R*S), so a run of adjacent kept in-blocks (a
// contiguous range of cols rows) is a single GEMM. Threads split out-blocks (forward, weight
// gradient) or in-blocks (input gradient), each running single-threaded BLAS on its own rows:
// one level of parallelism, which on a shared machine beats nesting BLAS threads inside.
// Backward: gY = grad_out rows in out_perm order;
//   dcols[cb] += Wpack[ob, cb]^T @ gY[ob],  gx = col2im(dcols) in in_perm order
//   gWpack[ob, cb] += gY[ob] @ cols[cb]^T,  gw[k, c] = M[k, c] * gWpack (scattered back)
//   gb = sum over n, p of grad_out.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "shallowkern/geometry.h"

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

// For each tap (r, s) and output position q = oh * OW + ow: the input offset ih * W + iw inside
// a channel plane, or -1 where the window reads the zero padding. im2col / col2im then move one
// plane per (channel, tap, image) through this table: no index arithmetic or bounds tests in the
// inner loop (on 4x4 maps the per-row bookkeeping used to cost more than the copies).
std::vector<int64_t> tap_table(const Geo& g) {
  std::vector<int64_t> tab(g.RS() * g.OHW());
  for (int64_t r = 0; r < g.R; ++r)
    for (int64_t s = 0; s < g.S; ++s)
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const int64_t ih = oh * g.sh - g.ph + r * g.dh, iw = ow * g.sw - g.pw + s * g.dw;
          tab[(r * g.S + s) * g.OHW() + oh * g.OW + ow] =
              (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) ? ih * g.W + iw : -1;
        }
  return tab;
}

// cols (C*R*S, nn*OH*OW): row c*R*S + tap, column n*OH*OW + q (channels in in_perm order).
template <typename T>
void im2col(const T* x, const int64_t* in_perm, T* cols, const Geo& g, int64_t n0, int64_t nn) {
  const int64_t P = nn * g.OHW(), ohw = g.OHW(), rs = g.RS();
  const std::vector<int64_t> tab = tap_table(g);
  at::parallel_for(0, g.C * rs, 1, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t c = row / rs;
      const int64_t* tb = tab.data() + (row % rs) * ohw;
      for (int64_t n = 0; n < nn; ++n) {
        const T* plane = x + ((n0 + n) * g.C + in_perm[c]) * g.H * g.W;
        T* d = cols + row * P + n * ohw;
        for (int64_t q = 0; q < ohw; ++q) d[q] = tb[q] >= 0 ? plane[tb[q]] : T(0);
      }
    }
  });
}

// Accumulate dcols into gx (rows of one channel only touch that channel's planes: no races).
template <typename T>
void col2im(const T* dcols, const int64_t* in_perm, T* gx, const Geo& g, int64_t n0, int64_t nn) {
  const int64_t P = nn * g.OHW(), ohw = g.OHW(), rs = g.RS();
  const std::vector<int64_t> tab = tap_table(g);
  at::parallel_for(0, g.C, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c)
      for (int64_t tap = 0; tap < rs; ++tap) {
        const int64_t* tb = tab.data() + tap * ohw;
        const T* src = dcols + (c * rs + tap) * P;
        for (int64_t n = 0; n < nn; ++n) {
          T* plane = gx + ((n0 + n) * g.C + in_perm[c]) * g.H * g.W;
          const T* sv = src + n * ohw;
          for (int64_t q = 0; q < ohw; ++q)
            if (tb[q] >= 0) plane[tb[q]] += sv[q];
        }
      }
  });
}

struct Plan {
  const int64_t *out_perm, *in_perm, *rb, *cb, *row_ptr, *col_idx;
  int64_t nob, ncb, nnzb;
  std::vector<int64_t> block_row;   // ob of each kept block
  std::vector<int64_t> pack_off;    // element offset of out-block ob's packed matrix
  std::vector<int64_t> pack_width;  // its width: sum of bc * R * S over the kept blocks
  std::vector<int64_t> pack_col;    // column of kept block blk inside its out-block's matrix
  std::vector<int64_t> csc_ptr, csc_blk;  // kept blocks by in-block (input gradient)
  int64_t bo(int64_t ob) const { return rb[ob + 1] - rb[ob]; }
  int64_t bc(int64_t c) const { return cb[c + 1] - cb[c]; }
};

Plan make_plan(const at::Tensor& out_perm, const at::Tensor& in_perm, const at::Tensor& rb,
               const at::Tensor& cb, const at::Tensor& row_ptr, const at::Tensor& col_idx,
               int64_t rs) {
  Plan p{out_perm.data_ptr<int64_t>(), in_perm.data_ptr<int64_t>(), rb.data_ptr<int64_t>(),
         cb.data_ptr<int64_t>(), row_ptr.data_ptr<int64_t>(), col_idx.data_ptr<int64_t>(),
         rb.numel() - 1, cb.numel() - 1, col_idx.numel(), {}, {}, {}, {}, {}, {}};
  p.block_row.resize(p.nnzb);
  p.pack_col.resize(p.nnzb);
  p.pack_off.resize(p.nob + 1);
  p.pack_width.resize(p.nob);
  int64_t off = 0;
  for (int64_t ob = 0; ob < p.nob; ++ob) {
    int64_t width = 0;
    for (int64_t i = p.row_ptr[ob]; i < p.row_ptr[ob + 1]; ++i) {
      p.block_row[i] = ob;
      p.pack_col[i] = width;
      width += p.bc(p.col_idx[i]) * rs;
    }
    p.pack_off[ob] = off;
    p.pack_width[ob] = width;
    off += width * p.bo(ob);
  }
  p.pack_off[p.nob] = off;
  p.csc_ptr.assign(p.ncb + 1, 0);
  for (int64_t i = 0; i < p.nnzb; ++i) p.csc_ptr[p.col_idx[i] + 1]++;
  for (int64_t c = 0; c < p.ncb; ++c) p.csc_ptr[c + 1] += p.csc_ptr[c];
  p.csc_blk.resize(p.nnzb);
  std::vector<int64_t> fill(p.csc_ptr.begin(), p.csc_ptr.end() - 1);
  for (int64_t i = 0; i < p.nnzb; ++i) p.csc_blk[fill[p.col_idx[i]]++] = i;
  return p;
}

// The packed matrix of out-block ob: (bo, pack_width[ob]) at pack_off[ob] of a flat buffer.
at::Tensor packed(const at::Tensor& flat, const Plan& p, int64_t ob) {
  return flat.narrow(0, p.pack_off[ob], p.pack_width[ob] * p.bo(ob)).view({p.bo(ob), p.pack_width[ob]});
}

// Wpack: the kept blocks of w * M in permuted order, one (bo, width) matrix per out-block.
template <typename T>
at::Tensor pack_weight(const at::Tensor& weight, const bool* mask, const Plan& p, const Geo& g) {
  auto pack = at::empty({p.pack_off[p.nob]}, weight.options());
  const T* w = weight.data_ptr<T>();
  T* base = pack.data_ptr<T>();
  const int64_t rs = g.RS();
  at::parallel_for(0, p.nnzb, 1, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t ob = p.block_row[blk], c0 = p.cb[p.col_idx[blk]], bc = p.bc(p.col_idx[blk]);
      for (int64_t i = 0; i < p.bo(ob); ++i) {
        T* d = base + p.pack_off[ob] + i * p.pack_width[ob] + p.pack_col[blk];
        const int64_t k = p.out_perm[p.rb[ob] + i];
        for (int64_t j = 0; j < bc; ++j, d += rs) {
          const int64_t c = p.in_perm[c0 + j];
          if (mask[k * g.C + c])
            std::copy(w + (k * g.C + c) * rs, w + (k * g.C + c + 1) * rs, d);
          else
            std::fill(d, d + rs, T(0));
        }
      }
    }
  });
  return pack;
}

// Calls fn(first_blk, last_blk) for each run of adjacent kept in-blocks of out-block ob.
template <typename F>
void for_runs(const Plan& p, int64_t ob, F fn) {
  int64_t i = p.row_ptr[ob];
  while (i < p.row_ptr[ob + 1]) {
    int64_t j = i + 1;
    while (j < p.row_ptr[ob + 1] && p.col_idx[j] == p.col_idx[j - 1] + 1) ++j;
    fn(i, j - 1);
    i = j;
  }
}

Geo geometry(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
             at::IntArrayRef padding, at::IntArrayRef dilation) {
  Geo g{input.size(0), input.size(1), input.size(2), input.size(3), weight.size(0),
        weight.size(2), weight.size(3), 0, 0, stride[0], stride[1], padding[0], padding[1],
        dilation[0], dilation[1]};
  // floor division (shared with the fake and the wide_conv2d checks): a kernel larger than the
  // padded input gives a size < 1, which check_inputs refuses, never a truncated "fit"
  g.OH = shallowkern::conv_out_size(g.H, g.R, g.sh, g.ph, g.dh);
  g.OW = shallowkern::conv_out_size(g.W, g.S, g.sw, g.pw, g.dw);
  return g;
}

void check_inputs(const char* fn, const at::Tensor& input, const at::Tensor& weight,
                  const at::Tensor& mask, const at::Tensor& out_perm, const at::Tensor& in_perm,
                  const at::Tensor& rb, const at::Tensor& cb, const at::Tensor& row_ptr,
                  const at::Tensor& col_idx, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation) {
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
  TORCH_CHECK(out_perm.scalar_type() == at::kLong && out_perm.numel() == weight.size(0) &&
                  in_perm.scalar_type() == at::kLong && in_perm.numel() == weight.size(1),
              fn, ": out_perm / in_perm must be int64 permutations of K / C");
  TORCH_CHECK(rb.scalar_type() == at::kLong && cb.scalar_type() == at::kLong && rb.dim() == 1 &&
                  cb.dim() == 1 && rb.numel() >= 1 && cb.numel() >= 1 && rb.is_contiguous() &&
                  cb.is_contiguous(),
              fn, ": row_bounds / col_bounds must be contiguous 1-D int64");
  TORCH_CHECK(row_ptr.scalar_type() == at::kLong && col_idx.scalar_type() == at::kLong &&
                  row_ptr.numel() == rb.numel() && row_ptr.is_contiguous() &&
                  col_idx.is_contiguous() && out_perm.is_contiguous() && in_perm.is_contiguous(),
              fn, ": row_ptr must be contiguous int64 with one entry per row bound");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, fn,
              ": stride, padding and dilation must have 2 entries");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 &&
                  padding[0] >= 0 && padding[1] >= 0,
              fn, ": need stride >= 1, dilation >= 1, padding >= 0");
  const int64_t K = weight.size(0), C = weight.size(1);
  const int64_t ncb = cb.numel() - 1, nnz = col_idx.numel();
  for (const auto& [t, n, what] : {std::tuple{&rb, K, "row_bounds"}, std::tuple{&cb, C, "col_bounds"}}) {
    const int64_t* v = t->data_ptr<int64_t>();
    TORCH_CHECK(v[0] == 0 && v[t->numel() - 1] == n, fn, ": ", what, " must run from 0 to ", n);
    for (int64_t i = 1; i < t->numel(); ++i)
      TORCH_CHECK(v[i] > v[i - 1], fn, ": ", what, " must be increasing");
  }
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
                                   const at::Tensor& row_bounds, const at::Tensor& col_bounds,
                                   const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation) {
  check_inputs("_afcc_conv2d_native", input_, weight_, mask_, out_perm, in_perm, row_bounds,
               col_bounds, row_ptr, col_idx, stride, padding, dilation);
  const auto input = input_.contiguous();
  const auto weight = weight_.contiguous();
  const auto mask = mask_.contiguous();
  const Geo g = geometry(input, weight, stride, padding, dilation);
  TORCH_CHECK(g.OH >= 1 && g.OW >= 1, "_afcc_conv2d_native: the kernel does not fit the input");
  if (bias.has_value()) {
    TORCH_CHECK(bias->numel() == g.K && bias->scalar_type() == input.scalar_type(),
                "_afcc_conv2d_native: bias must be (K,) of the input dtype");
  }
  auto out = at::empty({g.N, g.K, g.OH, g.OW}, input.options());
  if (out.numel() == 0) return out;
  const Plan p = make_plan(out_perm, in_perm, row_bounds, col_bounds, row_ptr, col_idx, g.RS());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "_afcc_conv2d_native", [&] {
    const auto pack = pack_weight<scalar_t>(weight, mask.data_ptr<bool>(), p, g);
    const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
    const scalar_t* bptr = bias.has_value() ? bias_c.data_ptr<scalar_t>() : nullptr;
    const int64_t step = chunk_images(g), rs = g.RS(), ohw = g.OHW();
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t n0 = 0; n0 < g.N; n0 += step) {
      const int64_t nn = std::min(step, g.N - n0), P = nn * ohw;
      auto cols = at::empty({g.C * rs, P}, input.options());
      if (p.nnzb) im2col(input.data_ptr<scalar_t>(), p.in_perm, cols.data_ptr<scalar_t>(), g, n0, nn);
      // Out-blocks in parallel; each thread owns its rows of Y and of the output.
      at::parallel_for(0, p.nob, 1, [&](int64_t obb, int64_t obe) {
        for (int64_t ob = obb; ob < obe; ++ob) {
          const int64_t k0 = p.rb[ob], bo = p.bo(ob);
          auto y = at::empty({bo, P}, input.options());
          if (p.row_ptr[ob] == p.row_ptr[ob + 1]) {
            y.zero_();
          } else {
            const auto wob = packed(pack, p, ob);
            bool first = true;
            for_runs(p, ob, [&](int64_t b0, int64_t b1) {
              const int64_t c0 = p.cb[p.col_idx[b0]], c1 = p.cb[p.col_idx[b1] + 1];
              const auto wb = wob.narrow(1, p.pack_col[b0], (c1 - c0) * rs);
              const auto xb = cols.narrow(0, c0 * rs, (c1 - c0) * rs);
              if (first)
                at::mm_out(y, wb, xb);
              else
                y.addmm_(wb, xb);
              first = false;
            });
          }
          const scalar_t* ys = y.data_ptr<scalar_t>();
          for (int64_t i = 0; i < bo; ++i) {
            const int64_t k = p.out_perm[k0 + i];
            const scalar_t bv = bptr ? bptr[k] : scalar_t(0);
            for (int64_t n = 0; n < nn; ++n) {
              const scalar_t* src = ys + i * P + n * ohw;
              scalar_t* dst = o + ((n0 + n) * g.K + k) * ohw;
              for (int64_t q = 0; q < ohw; ++q) dst[q] = src[q] + bv;
            }
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
    const at::Tensor& row_bounds, const at::Tensor& col_bounds, const at::Tensor& row_ptr,
    const at::Tensor& col_idx, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  check_inputs("_afcc_conv2d_native_backward", input_, weight_, mask_, out_perm, in_perm,
               row_bounds, col_bounds, row_ptr, col_idx, stride, padding, dilation);
  const auto input = input_.contiguous();
  const auto weight = weight_.contiguous();
  const auto mask = mask_.contiguous();
  const auto grad_out = grad_out_.contiguous();
  const Geo g = geometry(input, weight, stride, padding, dilation);
  TORCH_CHECK(g.OH >= 1 && g.OW >= 1,
              "_afcc_conv2d_native_backward: the kernel does not fit the input");
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == g.N && grad_out.size(1) == g.K &&
                  grad_out.size(2) == g.OH && grad_out.size(3) == g.OW &&
                  grad_out.scalar_type() == input.scalar_type(),
              "_afcc_conv2d_native_backward: grad_out must be (N, K, OH, OW) = (", g.N, ", ", g.K,
              ", ", g.OH, ", ", g.OW, ") of the input dtype");
  const Plan p = make_plan(out_perm, in_perm, row_bounds, col_bounds, row_ptr, col_idx, g.RS());
  at::Tensor gi = output_mask[0] ? at::zeros_like(input) : input.new_empty({0});
  at::Tensor gw = output_mask[1] ? at::zeros_like(weight) : input.new_empty({0});
  at::Tensor gb = output_mask[2] ? grad_out.sum({0, 2, 3}) : input.new_empty({0});
  if (!(output_mask[0] || output_mask[1]) || p.nnzb == 0 || g.N == 0) return {gi, gw, gb};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "_afcc_conv2d_native_backward", [&] {
    const int64_t rs = g.RS(), ohw = g.OHW(), step = chunk_images(g);
    at::Tensor pack = output_mask[0] ? pack_weight<scalar_t>(weight, mask.data_ptr<bool>(), p, g)
                                     : at::Tensor();
    at::Tensor gpack = output_mask[1] ? at::zeros({p.pack_off[p.nob]}, input.options())
                                      : at::Tensor();
    for (int64_t n0 = 0; n0 < g.N; n0 += step) {
      const int64_t nn = std::min(step, g.N - n0), P = nn * ohw;
      auto gY = at::empty({g.K, P}, input.options());  // grad_out rows in out_perm order
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
        at::parallel_for(0, p.nob, 1, [&](int64_t obb, int64_t obe) {
          for (int64_t ob = obb; ob < obe; ++ob) {
            if (p.row_ptr[ob] == p.row_ptr[ob + 1]) continue;
            auto gob = packed(gpack, p, ob);
            const auto gy = gY.narrow(0, p.rb[ob], p.bo(ob));
            for_runs(p, ob, [&](int64_t b0, int64_t b1) {
              const int64_t c0 = p.cb[p.col_idx[b0]], c1 = p.cb[p.col_idx[b1] + 1];
              gob.narrow(1, p.pack_col[b0], (c1 - c0) * rs)
                  .addmm_(gy, cols.narrow(0, c0 * rs, (c1 - c0) * rs).t());
            });
          }
        });
      }
      if (output_mask[0]) {
        auto dcols = at::empty({g.C * rs, P}, input.options());
        // In-blocks in parallel: each thread owns its dcols rows (and col2im's channels).
        at::parallel_for(0, p.ncb, 1, [&](int64_t cbb, int64_t cbe) {
          for (int64_t c = cbb; c < cbe; ++c) {
            auto db = dcols.narrow(0, p.cb[c] * rs, p.bc(c) * rs);
            if (p.csc_ptr[c] == p.csc_ptr[c + 1]) {
              db.zero_();
              continue;
            }
            for (int64_t i = p.csc_ptr[c]; i < p.csc_ptr[c + 1]; ++i) {
              const int64_t blk = p.csc_blk[i], ob = p.block_row[blk];
              const auto wb = packed(pack, p, ob).narrow(1, p.pack_col[blk], p.bc(c) * rs);
              const auto gy = gY.narrow(0, p.rb[ob], p.bo(ob));
              if (i == p.csc_ptr[c])
                at::mm_out(db, wb.t(), gy);
              else
                db.addmm_(wb.t(), gy);
            }
          }
        });
        col2im(dcols.data_ptr<scalar_t>(), p.in_perm, gi.data_ptr<scalar_t>(), g, n0, nn);
      }
    }
    if (output_mask[1]) {
      const scalar_t* src = gpack.data_ptr<scalar_t>();
      scalar_t* d = gw.data_ptr<scalar_t>();
      const bool* m = mask.data_ptr<bool>();
      at::parallel_for(0, p.nnzb, 1, [&](int64_t b, int64_t e) {
        for (int64_t blk = b; blk < e; ++blk) {
          const int64_t ob = p.block_row[blk], cbk = p.col_idx[blk];
          for (int64_t i = 0; i < p.bo(ob); ++i) {
            const int64_t k = p.out_perm[p.rb[ob] + i];
            const scalar_t* row = src + p.pack_off[ob] + i * p.pack_width[ob] + p.pack_col[blk];
            for (int64_t j = 0; j < p.bc(cbk); ++j) {
              const int64_t c = p.in_perm[p.cb[cbk] + j];
              if (m[k * g.C + c]) std::copy(row + j * rs, row + (j + 1) * rs, d + (k * g.C + c) * rs);
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
