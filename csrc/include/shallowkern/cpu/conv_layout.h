// Data layout helpers of the C++ CPU conv kernels: strided input planes, the zero-padded HWC
// image of one group, im2col / col2im over it (R contiguous runs of S*Cg values per output
// position: memcpy, no bounds checks), and the output memory format rule.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "shallowkern/geometry.h"

namespace shallowkern {
namespace cpu {

inline bool is_channels_last_only(const at::Tensor& t) {
  // Same rule as ops/wide_conv2d.py out_memory_format: ambiguous layouts count as contiguous.
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat out_format(const at::Tensor& x) {
  return is_channels_last_only(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}
// The kernels pad each image of a group into a thread-local (H + 2*ph, W + 2*pw, Cg) buffer.
// Refuse (rather than fail inside a worker thread, or exhaust memory) when one such buffer would
// exceed 4 GiB: a geometry with such padding is an error, not a workload.
inline void check_padded_size(const char* op, const Conv2dGeom& g, int64_t elem) {
  constexpr int64_t kMaxBytes = int64_t(1) << 32;
  int64_t hp = 0, wp = 0, bytes = 0;
  const bool ok = !__builtin_add_overflow(g.H, 2 * g.ph, &hp) &&
                  !__builtin_add_overflow(g.W, 2 * g.pw, &wp) &&
                  !__builtin_mul_overflow(hp, wp, &bytes) &&
                  !__builtin_mul_overflow(bytes, std::max<int64_t>(g.C, 1) * elem, &bytes) &&
                  bytes <= kMaxBytes;
  TORCH_CHECK(ok, op, ": the padded input image (", g.H, "+2*", g.ph, ") x (", g.W, "+2*", g.pw,
              ") x ", g.C, " channels would exceed 4 GiB of scratch per thread; padding ",
              g.ph, "x", g.pw, " is too large for the C++ CPU kernel");
}

// Input view of one image and group: base pointer (at channel 0 of the group) and strides.
template <typename T>
struct Plane {
  T* p;
  int64_t sC, sH, sW;
};

// Short runs (the first layer: S*Cg = 15 floats) as an inline vector loop; a memcpy call costs
// more than the copy there.
template <typename T>
inline void copy_run(T* __restrict d, const T* __restrict s, int64_t n) {
  if (n * int64_t(sizeof(T)) >= 256) {
    std::memcpy(d, s, n * sizeof(T));
    return;
  }
#pragma omp simd
  for (int64_t e = 0; e < n; ++e) d[e] = s[e];
}

// The padded image of one group in HWC order: (Hp, Wp, Cg), zero borders. With it, the im2col
// row of an output position is R contiguous runs of S*Cg values (dilation 1): memcpy, no bounds.
struct Padded {
  int64_t Hp, Wp, Cg;
  int64_t size() const { return Hp * Wp * Cg; }
};

// Column order of the GEMM (positions of the conv output that reach the op output). pool 1:
// p = oh*OW + ow. pool 2, window-major: p = q*PH*PW + i*PW + j with (oh, ow) = (2i + q/2, 2j +
// q%2), so that the 2x2 epilogue and the unpooling are elementwise over four contiguous sub-planes.
// Entry: offset of the window's top-left element in the Padded buffer.
inline std::vector<int64_t> position_offsets(const Conv2dGeom& g, const Padded& pd) {
  std::vector<int64_t> off(g.npos());
  const int64_t phw = g.PH * g.PW;
  for (int64_t p = 0; p < g.npos(); ++p) {
    int64_t oh, ow;
    if (g.pool == 2) {
      const int64_t q = p / phw, t = p % phw;
      oh = 2 * (t / g.PW) + q / 2, ow = 2 * (t % g.PW) + q % 2;
    } else {
      oh = p / g.OW, ow = p % g.OW;
    }
    off[p] = (oh * g.sh * pd.Wp + ow * g.sw) * pd.Cg;
  }
  return off;
}

// x (Cg, H, W) with any strides -> interior of the padded HWC buffer (borders stay zero).
template <typename T>
void pad_hwc(Plane<const T> x, const Conv2dGeom& g, const Padded& pd, T* dst) {
  if (x.sC == 1) {  // channels_last: one run of Cg per pixel
    for (int64_t h = 0; h < g.H; ++h) {
      T* row = dst + ((h + g.ph) * pd.Wp + g.pw) * pd.Cg;
      for (int64_t w = 0; w < g.W; ++w) copy_run(row + w * pd.Cg, x.p + h * x.sH + w * x.sW, pd.Cg);
    }
    return;
  }
  // NCHW: a transpose, in blocks of 16 channels: every pixel's block is one 64-byte line of the
  // padded buffer (written whole), read from 16 sequential streams of input planes. (One channel
  // at a time would write a different line per element and spill out of L1.)
  constexpr int64_t kCB = 16;
  for (int64_t c0 = 0; c0 < pd.Cg; c0 += kCB) {
    const int64_t cb = std::min(kCB, pd.Cg - c0);
    for (int64_t h = 0; h < g.H; ++h) {
      T* row = dst + ((h + g.ph) * pd.Wp + g.pw) * pd.Cg + c0;
      const T* src = x.p + c0 * x.sC + h * x.sH;
      for (int64_t w = 0; w < g.W; ++w) {
        T* d = row + w * pd.Cg;
        const T* s = src + w * x.sW;
        for (int64_t l = 0; l < cb; ++l) d[l] = s[l * x.sC];
      }
    }
  }
}

// The adjoint: interior of the padded HWC buffer -> gx (Cg, H, W) with any strides (overwrites).
template <typename T>
void unpad_hwc(const T* src, const Conv2dGeom& g, const Padded& pd, Plane<T> x) {
  if (x.sC == 1) {
    for (int64_t h = 0; h < g.H; ++h) {
      const T* row = src + ((h + g.ph) * pd.Wp + g.pw) * pd.Cg;
      for (int64_t w = 0; w < g.W; ++w) copy_run(x.p + h * x.sH + w * x.sW, row + w * pd.Cg, pd.Cg);
    }
    return;
  }
  // The transpose back, in the same 16-channel blocks as pad_hwc.
  constexpr int64_t kCB = 16;
  for (int64_t c0 = 0; c0 < pd.Cg; c0 += kCB) {
    const int64_t cb = std::min(kCB, pd.Cg - c0);
    for (int64_t h = 0; h < g.H; ++h) {
      const T* row = src + ((h + g.ph) * pd.Wp + g.pw) * pd.Cg + c0;
      T* dst = x.p + c0 * x.sC + h * x.sH;
      for (int64_t w = 0; w < g.W; ++w) {
        const T* s = row + w * pd.Cg;
        T* d = dst + w * x.sW;
        for (int64_t l = 0; l < cb; ++l) d[l * x.sC] = s[l];
      }
    }
  }
}

// colT[p, (r, s, c)] = xpad[off[p] + (r*dh*Wp + s*dw)*Cg + c] for the positions of one image:
// per (p, r) one run of S*Cg values (dilation 1) or S runs of Cg.
template <typename T>
void im2col(const T* xpad, const Conv2dGeom& g, const Padded& pd, const std::vector<int64_t>& off,
            T* colT) {
  const int64_t CRS = g.crs(), run = g.S * pd.Cg, rstep = g.dh * pd.Wp * pd.Cg;
  const int64_t seg = g.dw == 1 ? run : pd.Cg, nseg = g.dw == 1 ? 1 : g.S;
  for (int64_t p = 0; p < g.npos(); ++p) {
    const T* src = xpad + off[p];
    T* dst = colT + p * CRS;
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < nseg; ++s)
        copy_run(dst + r * run + s * pd.Cg, src + r * rstep + s * g.dw * pd.Cg, seg);
  }
}

// The adjoint of im2col: xpad[...] += colT[p, (r, s, c)].
template <typename T>
void col2im_add(const T* colT, const Conv2dGeom& g, const Padded& pd, const std::vector<int64_t>& off,
                T* xpad) {
  const int64_t CRS = g.crs(), run = g.S * pd.Cg, rstep = g.dh * pd.Wp * pd.Cg;
  const int64_t seg = g.dw == 1 ? run : pd.Cg, nseg = g.dw == 1 ? 1 : g.S;
  for (int64_t p = 0; p < g.npos(); ++p) {
    const T* src = colT + p * CRS;
    T* dst = xpad + off[p];
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < nseg; ++s) {
        const T* a = src + r * run + s * pd.Cg;
        T* d = dst + r * rstep + s * g.dw * pd.Cg;
#pragma omp simd
        for (int64_t e = 0; e < seg; ++e) d[e] += a[e];
      }
    }
  }
}

// sum_t v[t] (only where q[t] < 4 when q is given), in double: 8 independent partial sums, so

}  // namespace cpu
}  // namespace shallowkern
