// C++ CPU backward of shallowkern::_wide_conv2d_native_backward, float32 and float64: pool and
// ReLU backward fused into the conv gradients, dense (MKL GEMMs) or pooled-sparse (row
// combinations over the non-zeros of gy). Math and design: csrc/cpu/wide_conv2d.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "shallowkern/checks.h"
#include "shallowkern/cpu/conv_layout.h"
#include "shallowkern/cpu/features.h"
#include "shallowkern/cpu/reduce.h"
#include "shallowkern/cpu/sparse_rows.h"
#include "shallowkern/cpu/work_split.h"
#include "shallowkern/knobs.h"
#include "wide_conv2d.h"

namespace shallowkern {
namespace cpu {
namespace {

// The backward's weight gradient keeps one (K x CRS) partial per thread (summed in a fixed
// order: deterministic). At huge widths times many threads that is too much memory (conv2 at
// d1 = 2048 has a 1.2 GB weight), so fewer threads share the work there: the partials stay under
// kMaxPartialBytes in all (SHALLOWKERN_CPU_PARTIALS_MB overrides it; tests).
constexpr int64_t kMaxPartialBytes = int64_t(2) << 30;

int64_t backward_grain(const Conv2dGeom& g, int64_t elem, bool weight_grad) {
  const int64_t grain = unit_grain(g);
  if (!weight_grad) return grain;
  const int64_t budget = knobs::cpu_partials_bytes();  // default kMaxPartialBytes
  const int64_t one = std::max<int64_t>(1, g.K * g.crs() * elem);
  const int64_t partials = std::max<int64_t>(1, budget / one);
  return std::max(grain, div_up(g.G * g.N, partials));
}


// ------------------------------------------------------------------------------------------------
// sparse pool-2 backward (float, AVX2 + FMA)
// ------------------------------------------------------------------------------------------------
// With pool 2, gy has at most one non-zero per 2x2 window and channel, so the two backward GEMMs
// (gw += gy colT, dcolT = gy^T W) do four times the necessary multiply-adds. Both are instead
// written as row combinations over lists of the non-zeros,
//   out[r, :] (+)= sum_{e in list(r)} val[e] * src[idx[e], :],
// gw: r = output channel, idx = colT row (window position);  dcolT: r = window position,
// idx = output channel. Column blocks of 32 floats (the src block stays in L1 across rows), two
// independent sets of 4 accumulators per block. Measured on the dev machine (Zen 4, 1 thread,
// conv2 d1=64): ~1.7x faster than MKL's dense GEMMs on the same shapes.
bool sparse_backward_enabled() {
#ifdef SK_X86_SIMD
  return has_avx2_fma() && knobs::cpu_sparse_backward();  // knob 0: dense GEMMs (tests)
#else
  return false;
#endif
}


// Direct sparse kernels (AVX-512, kernel height 3 or 5, dilation 1 along the width), without
// im2col: in the padded HWC image a kernel row r at an output position is one contiguous run of
// S*Cg values. A tile of kR rows x kV vectors of that run (the last vector masked) is held in
// registers (at most 25 of the 32), and the rows' runs are covered by tiles of 80 (R = 5) or 128
// (R = 3) columns, each tile one pass over the non-zeros:
//  * weight gradient, per output channel k: acc += g * (the tile of the input rows at each of k's
//    non-zeros); gw (Kg x R*S*Cg, rows in (r, s, c) order) += acc. xoff[row] is the offset of
//    chunk position `row` (b*P + p) in xpads.
//  * input gradient, per output position p of one image: acc = sum over p's non-zeros (channel k,
//    value g) of g * (the tile of W[k]); then the padded input gradient's tile at p += acc. This
//    replaces dcolT = gy^T W (combine_rows) and col2im_add: the same sums in the same order
//    (channels ascending per position, positions ascending); only rounding inside a row differs.
// im2col and col2im write and re-read P x CRS values per image (with runs of 15-80 floats at
// small widths, more than the multiply-adds cost); here every value is read where it lies.
// Measured against im2col + combine_rows (AVX-512) + col2im on LeNet's conv2 (1 thread, batch 100,
// backward with all three gradients): 2.2x at d1 = 4, 1.8-1.9x at 8-16, 1.15-1.19x at 23-45,
// 1.08x at 64 (docs/study.md); LeNet's first layer (run 15) took the direct weight gradient before.
bool direct_fits(const Conv2dGeom& g) {
  return has_avx512f() && (g.R == 3 || g.R == 5) && g.dw == 1;
}

#ifdef SK_X86_SIMD
// kR x kV accumulator vectors: columns [0, 16 kV) of kR rows `rs` floats apart; `m` masks the
// last vector (the tile's tail).
template <int kR, int kV>
struct Tile {
  __m512 a[kR][kV];

  __attribute__((target("avx512f"), always_inline)) void zero() {
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < kV; ++v) a[r][v] = _mm512_setzero_ps();
  }
  // a += g * src[tile]
  __attribute__((target("avx512f"), always_inline)) void fma(__m512 g, const float* src,
                                                             int64_t rs, __mmask16 m) {
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
      for (int v = 0; v < kV - 1; ++v)
        a[r][v] = _mm512_fmadd_ps(g, _mm512_loadu_ps(src + r * rs + 16 * v), a[r][v]);
      a[r][kV - 1] = _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(m, src + r * rs + 16 * (kV - 1)),
                                     a[r][kV - 1]);
    }
  }
  // dst[tile] += a
  __attribute__((target("avx512f"), always_inline)) void add_to(float* dst, int64_t rs,
                                                                __mmask16 m) const {
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
      float* d = dst + r * rs;
#pragma GCC unroll 8
      for (int v = 0; v < kV - 1; ++v)
        _mm512_storeu_ps(d + 16 * v, _mm512_add_ps(_mm512_loadu_ps(d + 16 * v), a[r][v]));
      float* t = d + 16 * (kV - 1);
      _mm512_mask_storeu_ps(t, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, t), a[r][kV - 1]));
    }
  }
};

// Weight gradient, columns [c0, c0 + 16 kV) of every kernel row.
template <int kR, int kV>
__attribute__((target("avx512f"))) void wgrad_direct_avx512(
    const int64_t* koff, const int32_t* erow, const float* eval, int64_t nrows,
    const float* xpads, const int64_t* xoff, int64_t run, int64_t rstep, int64_t c0, __mmask16 m,
    float* gw) {
  Tile<kR, kV> t;
  for (int64_t k = 0; k < nrows; ++k) {
    t.zero();
    for (int64_t e = koff[k]; e < koff[k + 1]; ++e)
      t.fma(_mm512_set1_ps(eval[e]), xpads + xoff[erow[e]] + c0, rstep, m);
    t.add_to(gw + k * kR * run + c0, run, m);
  }
}

// Input gradient of one image's npos positions, the same columns.
template <int kR, int kV>
__attribute__((target("avx512f"))) void dgrad_direct_avx512(
    const int64_t* poff, const int32_t* pk, const float* pval, int64_t npos, const float* w,
    int64_t crs, const int64_t* off, int64_t run, int64_t rstep, int64_t c0, __mmask16 m,
    float* gpad) {
  Tile<kR, kV> t;
  for (int64_t p = 0; p < npos; ++p) {
    if (poff[p] == poff[p + 1]) continue;
    t.zero();
    for (int64_t e = poff[p]; e < poff[p + 1]; ++e)
      t.fma(_mm512_set1_ps(pval[e]), w + pk[e] * crs + c0, run, m);
    t.add_to(gpad + off[p] + c0, rstep, m);
  }
}

template <int kR, int kV>
struct WgradDirect {
  template <typename... Args>
  static void run(Args... args) { wgrad_direct_avx512<kR, kV>(args...); }
};
template <int kR, int kV>
struct DgradDirect {
  template <typename... Args>
  static void run(Args... args) { dgrad_direct_avx512<kR, kV>(args...); }
};

template <template <int, int> class Kernel, int kR, int kV, typename... Args>
void run_tile(int64_t kv, Args... args) {
  if constexpr (kV > 1) {
    if (kv < kV) return run_tile<Kernel, kR, kV - 1>(kv, args...);
  }
  Kernel<kR, kV>::run(args...);
}

// Covers each kernel row's run with tiles of 16 kVmax columns (kVmax = 5 for R = 5, 8 for R = 3):
// Kernel<kR, kV>::run(args..., c0, m, out) per tile.
template <template <int, int> class Kernel, typename... Args>
void run_tiles(const Conv2dGeom& g, float* out, Args... args) {
  const int64_t run = g.S * g.Cg;
  const int64_t width = g.R == 5 ? 80 : 128;
  for (int64_t c0 = 0; c0 < run; c0 += width) {
    const int64_t cols = std::min(width, run - c0), kv = (cols + 15) / 16;
    const auto m = static_cast<__mmask16>((1u << (cols - 16 * (kv - 1))) - 1);
    if (g.R == 5)
      run_tile<Kernel, 5, 5>(kv, args..., c0, m, out);
    else
      run_tile<Kernel, 3, 8>(kv, args..., c0, m, out);
  }
}
#endif

void wgrad_direct(const int64_t* koff, const int32_t* erow, const float* eval, int64_t nrows,
                  const float* xpads, const int64_t* xoff, const Conv2dGeom& g, int64_t rstep,
                  float* gw) {
#ifdef SK_X86_SIMD
  run_tiles<WgradDirect>(g, gw, koff, erow, eval, nrows, xpads, xoff, g.S * g.Cg, rstep);
#else
  TORCH_INTERNAL_ASSERT(false, "wgrad_direct: built without the AVX-512 kernels");
#endif
}

// The input gradient of one image's P positions (lists poff/pk/pval over those positions) into its
// padded HWC gradient buffer gpad (accumulates).
void dgrad_direct(const int64_t* poff, const int32_t* pk, const float* pval, const float* w,
                  const Conv2dGeom& g, const std::vector<int64_t>& off, int64_t rstep,
                  float* gpad) {
#ifdef SK_X86_SIMD
  run_tiles<DgradDirect>(g, gpad, poff, pk, pval, g.npos(), w, g.crs(), off.data(), g.S * g.Cg,
                         rstep);
#else
  TORCH_INTERNAL_ASSERT(false, "dgrad_direct: built without the AVX-512 kernels");
#endif
}

// ------------------------------------------------------------------------------------------------
// backward
// ------------------------------------------------------------------------------------------------
template <typename T>
void backward_impl(const at::Tensor& gout, const at::Tensor& x, const at::Tensor& w2,
                   const at::Tensor& saved, const Conv2dGeom& g, bool relu, std::array<bool, 3> mask,
                   at::Tensor& gx, at::Tensor& gw2, at::Tensor& gb) {
  const int64_t CRS = g.crs(), P = g.npos(), PHW = g.PH * g.PW;
  // pool 2, float, AVX2: the sparse row combinations instead of the dense GEMMs (see
  // combine_rows). Chunks of B images either way: each chunk streams the weight (input grad) and
  // the gw accumulator (weight grad) once, so B images share that traffic.
  const bool sparse = std::is_same_v<T, float> && g.pool == 2 && sparse_backward_enabled();
  // The sparse weight gradient straight from the padded images (no im2col) where it fits.
  const bool wdirect = sparse && mask[1] && direct_fits(g);
  // ... and the sparse input gradient straight into the padded gradient (no dcolT, no col2im).
  const bool ddirect = sparse && mask[0] && direct_fits(g);
  const bool need_colT = (mask[0] && !ddirect) || (mask[1] && !wdirect);  // im2col or dcolT
  const int64_t B = images_per_chunk(g, sizeof(T), (need_colT ? CRS : 0) + (sparse ? 0 : g.Kg));
  // Dense: grad_weight as (CRS x Kg) += colT^T gy^T where the reduction row is short and Kg not
  // tiny: MKL runs the first layer's shapes (CRS = 75, Kg = 64..256) ~30% faster that way round;
  // the (Kg x CRS) form wins for Kg < 32 and for long rows (conv2: CRS = 400..1600).
  const bool gw_transposed = !sparse && g.Kg >= 32 && CRS <= 2 * g.Kg;
  const Padded pd{g.H + 2 * g.ph, g.W + 2 * g.pw, g.Cg};
  const std::vector<int64_t> off = position_offsets(g, pd);
  const T* xp = x.const_data_ptr<T>();
  const T* wp = w2.const_data_ptr<T>();
  const T* gp = gout.const_data_ptr<T>();
  const auto xs = x.strides();
  const auto gs = gout.strides();
  const bool pooled = g.pool == 2, masked = !pooled && relu;
  const uint8_t* sp8 = pooled ? saved.const_data_ptr<uint8_t>() : nullptr;
  const T* spT = masked ? saved.const_data_ptr<T>() : nullptr;
  const auto ss = (pooled || masked) ? saved.strides() : gout.strides();
  T* gxp = mask[0] ? gx.mutable_data_ptr<T>() : nullptr;
  const auto gxs = mask[0] ? gx.strides() : x.strides();
  const auto opt = x.options();
  const auto plane_dense = [&](c10::IntArrayRef st) { return st[3] == 1 && st[2] == g.PW; };

  // Per-invocation partial sums of gw and gb, keyed by the first unit of the invocation and
  // summed in that order afterwards, so the result does not depend on thread timing.
  struct Partial {
    int64_t begin;
    std::vector<T> gw;
    std::vector<double> gb;
  };
  std::vector<Partial> partials;
  std::mutex mu;

  const int64_t grain = backward_grain(g, sizeof(T), mask[1]);
  at::parallel_for(0, g.G * g.N, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> gy(sparse ? 0 : g.Kg * B * P), colT(need_colT ? B * P * CRS : 0);
    std::vector<T> xpads(wdirect ? B * pd.size() : 0, T(0));  // wdirect: the chunk's images
    std::vector<int64_t> xoff(wdirect ? B * P : 0);
    // Sparse path: the non-zeros of gy per output channel (koff, erow, eval) and, sorted by
    // window position, per position (poff, pk, pval).
    // Rows are chunk positions b*P + p.
    const int64_t nnz_max = sparse ? g.Kg * B * PHW : 0;
    std::vector<int64_t> koff(sparse ? g.Kg + 1 : 0), poff(sparse ? B * P + 1 : 0);
    std::vector<int64_t> cursor(sparse ? B * P : 0);
    std::vector<int32_t> erow(nnz_max), pk(nnz_max);
    std::vector<float> eval(nnz_max), pval(nnz_max);
    // xpad: the padded input (zero borders, only the interior is ever written); gpad: the padded
    // input gradient (col2im accumulates into the borders too, so it cannot share xpad).
    std::vector<T> xpad(mask[1] ? pd.size() : 0, T(0)), gpad(mask[0] ? pd.size() : 0);
    std::vector<T> gt(PHW), mt(PHW);
    std::vector<int32_t> qt(PHW);
    std::vector<uint8_t> q8(sparse ? PHW : 0);
    Partial part{begin, std::vector<T>(mask[1] ? g.K * CRS : 0),
                 std::vector<double>(mask[2] ? g.K : 0)};
    for_each_chunk(g, B, begin, end, [&](int64_t grp, int64_t n0, int64_t nb) {
      const int64_t ld = nb * P;
      // gy of this chunk (Kg x nb*P, columns in position order) from grad_out and saved; the
      // unpooled / masked gradient is never materialised for the whole batch. Branch-free
      // selects on contiguous copies of the planes (the window index is random: a branch per
      // element mispredicts), and selects rather than products, as aten's pool / ReLU backward:
      // a non-finite grad_out stays at the argmax position.
      T* const gtp = gt.data();
      int32_t* const qtp = qt.data();
      T* const mtp = mt.data();
      for (int64_t k = 0; k < g.Kg; ++k) {
        const int64_t kk = grp * g.Kg + k;
        double bsum = 0;
        if (sparse) koff[k + 1] = koff[k];
        for (int64_t b = 0; b < nb; ++b) {
          T* const pl = sparse ? nullptr : gy.data() + k * ld + b * P;
          const T* go = gp + (n0 + b) * gs[0] + kk * gs[1];
          if (sparse) {  // pooled, float: the plane's non-zeros straight into k's list
            const uint8_t* sq = sp8 + (n0 + b) * ss[0] + kk * ss[1];
            const T* gv = go;
            const uint8_t* qv = sq;
            if (!(plane_dense(gs) && plane_dense(ss))) {  // strided: contiguous copies first
              for (int64_t i = 0; i < g.PH; ++i)
                for (int64_t j = 0; j < g.PW; ++j) {
                  gtp[i * g.PW + j] = go[i * gs[2] + j * gs[3]];
                  q8[i * g.PW + j] = sq[i * ss[2] + j * ss[3]];
                }
              gv = gtp, qv = q8.data();
            }
            const int64_t first = koff[k + 1];
            int64_t n = first;
            for (int64_t t = 0; t < PHW; ++t) {  // branch-free: a NO_GRAD entry (4) is
              erow[n] = static_cast<int32_t>(b * P + qv[t] * PHW + t);  // written, not kept
              eval[n] = static_cast<float>(gv[t]);
              n += qv[t] < 4;
            }
            koff[k + 1] = n;
            if (mask[2]) bsum += sum_double(eval.data() + first, nullptr, n - first);
            continue;
          }
          T* const gd = pooled ? gtp : pl;  // pool 1: grad_out lands in gy directly
          for (int64_t i = 0; i < g.PH; ++i)
            for (int64_t j = 0; j < g.PW; ++j) gd[i * g.PW + j] = go[i * gs[2] + j * gs[3]];
          if (pooled) {
            const uint8_t* sq = sp8 + (n0 + b) * ss[0] + kk * ss[1];
            for (int64_t i = 0; i < g.PH; ++i)
              for (int64_t j = 0; j < g.PW; ++j) qtp[i * g.PW + j] = sq[i * ss[2] + j * ss[3]];
            bsum += sum_double(gtp, qtp, PHW);
            for (int32_t q = 0; q < 4; ++q) {  // an index >= 4 (NO_GRAD) matches no position
              T* const d = pl + q * PHW;
#pragma omp simd
              for (int64_t t = 0; t < PHW; ++t) {
                const T v = gtp[t];  // loaded unconditionally, so the select if-converts
                d[t] = qtp[t] == q ? v : T(0);
              }
            }
          } else {
            if (masked) {
              const T* sv = spT + (n0 + b) * ss[0] + kk * ss[1];
              for (int64_t i = 0; i < g.PH; ++i)
                for (int64_t j = 0; j < g.PW; ++j) mtp[i * g.PW + j] = sv[i * ss[2] + j * ss[3]];
#pragma omp simd
              for (int64_t t = 0; t < PHW; ++t) pl[t] = mtp[t] > T(0) ? pl[t] : T(0);
            }
            bsum += sum_double(pl, static_cast<const int32_t*>(nullptr), PHW);
          }
        }
        if (mask[2]) part.gb[kk] += bsum;
      }
      if (mask[1]) {
        T* acc = part.gw.data() + grp * g.Kg * CRS;
        for (int64_t b = 0; b < nb; ++b) {
          const Plane<const T> xb{xp + (n0 + b) * xs[0] + grp * g.Cg * xs[1], xs[1], xs[2], xs[3]};
          if (wdirect) {
            pad_hwc(xb, g, pd, xpads.data() + b * pd.size());
            for (int64_t p = 0; p < P; ++p) xoff[b * P + p] = b * pd.size() + off[p];
          } else {
            pad_hwc(xb, g, pd, xpad.data());
            im2col(xpad.data(), g, pd, off, colT.data() + b * P * CRS);
          }
        }
        if constexpr (std::is_same_v<T, float>) {
          if (wdirect) {
            wgrad_direct(koff.data(), erow.data(), eval.data(), g.Kg, xpads.data(), xoff.data(), g,
                         g.dh * pd.Wp * pd.Cg, acc);
          } else if (sparse) {  // gw[k, :] += sum over k's non-zeros of g * colT[position, :]
            combine_rows(koff.data(), erow.data(), eval.data(), g.Kg, colT.data(), CRS, acc, CRS,
                         CRS, true);
          }
        }
        if (sparse) {
          // done above
        } else if (gw_transposed) {  // (CRS x Kg) += colT^T gy^T
          auto gwm = mat(acc, CRS, g.Kg, g.Kg, opt);
          at::addmm_out(gwm, gwm, mat(colT.data(), ld, CRS, CRS, opt).t(),
                        mat(gy.data(), g.Kg, ld, ld, opt).t());
        } else {  // (Kg x CRS) += gy colT
          auto gwm = mat(acc, g.Kg, CRS, CRS, opt);
          at::addmm_out(gwm, gwm, mat(gy.data(), g.Kg, ld, ld, opt),
                        mat(colT.data(), ld, CRS, CRS, opt));
        }
      }
      if (mask[0]) {
        // dcolT = gy^T W2_g (reusing colT), then scatter-add per image into a padded HWC buffer
        // and write the interior to this chunk's own images and channels of gx (no races).
        if constexpr (std::is_same_v<T, float>) {
          if (sparse) {  // dcolT[position, :] = sum over its non-zeros of g * W2[k, :]
            // Counting sort of the non-zeros by position (stable: channels ascending).
            std::fill(poff.begin(), poff.begin() + ld + 1, 0);
            for (int64_t e = 0; e < koff[g.Kg]; ++e) ++poff[erow[e] + 1];
            for (int64_t r = 0; r < ld; ++r) poff[r + 1] += poff[r];
            std::copy(poff.begin(), poff.begin() + ld, cursor.begin());
            for (int64_t k = 0; k < g.Kg; ++k)
              for (int64_t e = koff[k]; e < koff[k + 1]; ++e) {
                const int64_t at = cursor[erow[e]]++;
                pk[at] = static_cast<int32_t>(k), pval[at] = eval[e];
              }
            if (ddirect) {
              const int64_t rstep = g.dh * pd.Wp * pd.Cg;
              for (int64_t b = 0; b < nb; ++b) {
                std::fill(gpad.begin(), gpad.end(), T(0));
                dgrad_direct(poff.data() + b * P, pk.data(), pval.data(),
                             wp + grp * g.Kg * CRS, g, off, rstep, gpad.data());
                unpad_hwc(gpad.data(), g, pd,
                          Plane<T>{gxp + (n0 + b) * gxs[0] + grp * g.Cg * gxs[1], gxs[1], gxs[2],
                                   gxs[3]});
              }
            } else {
              combine_rows(poff.data(), pk.data(), pval.data(), ld, wp + grp * g.Kg * CRS, CRS,
                           colT.data(), CRS, CRS, false);
            }
          }
        }
        if (!sparse) {
          auto dcol = mat(colT.data(), ld, CRS, CRS, opt);
          at::mm_out(dcol, mat(gy.data(), g.Kg, ld, ld, opt).t(),
                     mat(wp + grp * g.Kg * CRS, g.Kg, CRS, CRS, opt));
        }
        for (int64_t b = 0; !ddirect && b < nb; ++b) {  // ddirect: written above
          std::fill(gpad.begin(), gpad.end(), T(0));
          col2im_add(colT.data() + b * P * CRS, g, pd, off, gpad.data());
          unpad_hwc(
              gpad.data(), g, pd,
              Plane<T>{gxp + (n0 + b) * gxs[0] + grp * g.Cg * gxs[1], gxs[1], gxs[2], gxs[3]});
        }
      }
    });
    std::lock_guard<std::mutex> lock(mu);
    partials.push_back(std::move(part));
  });

  std::sort(partials.begin(), partials.end(),
            [](const Partial& a, const Partial& b) { return a.begin < b.begin; });
  if (mask[1]) {
    std::vector<T> sum(g.K * CRS, T(0));
    for (const auto& p : partials)
      for (int64_t i = 0; i < g.K * CRS; ++i) sum[i] += p.gw[i];
    T* o = gw2.mutable_data_ptr<T>();
    for (int64_t grp = 0; grp < g.G; ++grp)
      for (int64_t k = 0; k < g.Kg; ++k)
        for (int64_t i = 0; i < CRS; ++i)
          o[(grp * g.Kg + k) * CRS + i] = gw_transposed ? sum[grp * g.Kg * CRS + i * g.Kg + k]
                                                        : sum[(grp * g.Kg + k) * CRS + i];
  }
  if (mask[2]) {
    std::vector<double> acc(g.K, 0.0);
    for (const auto& p : partials)
      for (int64_t i = 0; i < g.K; ++i) acc[i] += p.gb[i];
    T* o = gb.mutable_data_ptr<T>();
    for (int64_t i = 0; i < g.K; ++i) o[i] = static_cast<T>(acc[i]);
  }
}

// Every argument of the backward: the forward's (check_conv2d_args) and grad_out / saved, which
// must have the forward output's shape (N, K, PH, PW) and the documented dtypes.
Conv2dGeom check_backward_args(const char* op, const at::Tensor& grad_out, const at::Tensor& input,
                               const at::Tensor& weight, const at::Tensor& saved,
                               c10::IntArrayRef stride, c10::IntArrayRef padding,
                               c10::IntArrayRef dilation, int64_t groups, bool relu,
                               int64_t pool) {
  const Conv2dGeom g =
      check_conv2d_args(op, input, weight, nullptr, stride, padding, dilation, groups, pool);
  TORCH_CHECK(grad_out.defined() && grad_out.dim() == 4, op,
              ": grad_out must be a 4-D tensor (N, K, PH, PW), got ",
              grad_out.defined() ? grad_out.dim() : 0, "-D");
  TORCH_CHECK(grad_out.device() == input.device(), op, ": grad_out must be on the input's device ",
              input.device(), ", got ", grad_out.device());
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type(), op, ": grad_out dtype ",
              grad_out.scalar_type(), " must equal the input dtype ", input.scalar_type());
  const std::vector<int64_t> oshape{g.N, conv2d_out_channels(g), g.PH, g.PW};
  TORCH_CHECK(grad_out.sizes() == c10::IntArrayRef(oshape), op, ": grad_out must have shape ",
              c10::IntArrayRef(oshape), " (the forward output), got ", grad_out.sizes());
  if (pool == 2) {
    TORCH_CHECK(saved.defined() && saved.scalar_type() == at::kByte, op,
                ": saved must be the uint8 pool indices of the forward when pool=2, got ",
                saved.defined() ? c10::toString(saved.scalar_type()) : "undefined");
    TORCH_CHECK(saved.sizes() == c10::IntArrayRef(oshape), op,
                ": saved (pool indices) must have shape ", c10::IntArrayRef(oshape), ", got ",
                saved.sizes());
  } else if (relu) {
    TORCH_CHECK(saved.defined() && saved.scalar_type() == input.scalar_type(), op,
                ": saved must be the forward output (dtype ", input.scalar_type(),
                ") when pool=1 and relu, got ",
                saved.defined() ? c10::toString(saved.scalar_type()) : "undefined");
    TORCH_CHECK(saved.sizes() == c10::IntArrayRef(oshape), op,
                ": saved (forward output) must have shape ", c10::IntArrayRef(oshape), ", got ",
                saved.sizes());
  }
  if ((pool == 2 || relu) && saved.numel() > 0)
    TORCH_CHECK(saved.device() == input.device(), op, ": saved must be on the input's device ",
                input.device(), ", got ", saved.device());
  return g;
}

// Vendor backward for huge weights: the gradient unpooled (and ReLU-masked) to the conv output,
// then ATen's convolution_backward (oneDNN), as eager autograd runs it. backward_impl keeps one
// (K x CRS) weight-gradient partial per thread and adds every image's contribution to it, which
// streams the whole partial from memory once per image: fine at LeNet conv2 d1 = 724 (a 147 MB
// weight; 1.23-1.36x ATen's backward at batch 32 and 100), 1.53x slower than ATen at d1 = 1024
// (293 MB; 2 threads, measured 2026-11-30, docs/study.md). From kHugeWeightBytes of weight
// (wide_conv2d.h) the vendor path runs instead; SHALLOWKERN_CPU_BACKWARD=fused|vendor forces one.
bool backward_vendor_fits(const Conv2dGeom& g, int64_t elem) {
  switch (knobs::cpu_backward()) {
    case knobs::CpuBackward::kFused: return false;
    case knobs::CpuBackward::kVendor: return true;
    case knobs::CpuBackward::kAuto: break;
  }
  return huge_weight(g.K, g.crs(), elem);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_vendor(
    const at::Tensor& gy, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& saved,
    const Conv2dGeom& g, bool relu, std::array<bool, 3> mask) {
  at::Tensor gc;  // the gradient of the conv output (N, K, OH, OW)
  if (g.pool == 2) {
    // select, not multiply: a non-finite gradient must not leak into the window's other positions
    const at::Tensor onehot =
        saved.to(at::kLong).unsqueeze(-1) == at::arange(4, saved.options().dtype(at::kLong));
    gc = at::where(onehot, gy.unsqueeze(-1), at::zeros({}, gy.options()))
             .reshape({g.N, g.K, g.PH, g.PW, 2, 2})
             .permute({0, 1, 2, 4, 3, 5})
             .reshape({g.N, g.K, 2 * g.PH, 2 * g.PW});
    gc = at::constant_pad_nd(gc, {0, g.OW - 2 * g.PW, 0, g.OH - 2 * g.PH});
  } else {
    gc = relu ? at::where(saved > 0, gy, at::zeros({}, gy.options())) : gy;
  }
  auto [gx, gw, gb] = at::convolution_backward(
      gc, x, weight, std::vector<int64_t>{g.K}, {g.sh, g.sw}, {g.ph, g.pw}, {g.dh, g.dw}, false,
      {0, 0}, g.G, mask);
  // the op's contract: gx in the input's layout, gw contiguous, a masked-off gradient empty
  const auto empty = [&] { return at::empty({0}, x.options()); };
  return {mask[0] ? gx.contiguous(out_format(x)) : empty(), mask[1] ? gw.contiguous() : empty(),
          mask[2] ? gb : empty()};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> wide_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& saved, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, bool relu, int64_t pool,
    std::array<bool, 3> output_mask) {
  const char* op = "wide_conv2d_backward";
  const Conv2dGeom g = check_backward_args(op, grad_out, input, weight, saved, stride, padding,
                                           dilation, groups, relu, pool);
  TORCH_CHECK(input.device().is_cpu(), op, ": input must be a CPU tensor, got ", input.device());
  SK_CHECK_FLOAT_OR_DOUBLE(op, input);
  check_padded_size(op, g, input.element_size());

  if (g.N > 0 && g.C > 0 && (output_mask[0] || output_mask[1] || output_mask[2]) &&
      backward_vendor_fits(g, input.element_size()))
    return backward_vendor(grad_out, input, weight, saved, g, relu, output_mask);
  // A masked-off output is its own empty tensor: outputs of an op must not alias each other.
  const auto empty = [&] { return at::empty({0}, input.options()); };
  at::Tensor gx = output_mask[0]
                      ? at::empty(input.sizes(), input.options().memory_format(out_format(input)))
                      : empty();
  at::Tensor gw = output_mask[1] ? at::empty(weight.sizes(), weight.options()) : empty();
  at::Tensor gb = output_mask[2] ? at::empty({g.K}, input.options()) : empty();
  if (!(output_mask[0] || output_mask[1] || output_mask[2])) return {gx, gw, gb};
  if (g.N == 0 || g.C == 0) {
    // Nothing flows back: the input gradient (if any) and the sums are all zero.
    if (output_mask[0]) gx.zero_();
    if (output_mask[1]) gw.zero_();
    if (output_mask[2]) gb.zero_();
    return {gx, gw, gb};
  }
  const at::Tensor w2 = weight.permute({0, 2, 3, 1}).contiguous();  // see the forward
  at::Tensor gw2 = output_mask[1] ? at::empty({g.K, g.R, g.S, g.Cg}, input.options()) : empty();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "wide_conv2d_backward_cpu", [&] {
    backward_impl<scalar_t>(grad_out, input, w2, saved, g, relu, output_mask, gx, gw2, gb);
  });
  if (output_mask[1]) gw.copy_(gw2.permute({0, 3, 1, 2}));
  return {gx, gw, gb};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> wide_conv2d_backward_meta(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& saved, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, bool relu, int64_t pool,
    std::array<bool, 3> output_mask) {
  const Conv2dGeom g = check_backward_args("wide_conv2d_backward", grad_out, input, weight, saved,
                                           stride, padding, dilation, groups, relu, pool);
  const auto empty = [&] { return at::empty({0}, input.options()); };
  return {output_mask[0]
              ? at::empty(input.sizes(), input.options().memory_format(out_format(input)))
              : empty(),
          output_mask[1] ? at::empty(weight.sizes(), weight.options()) : empty(),
          output_mask[2] ? at::empty({g.K}, input.options()) : empty()};
}

}  // namespace cpu
}  // namespace shallowkern
