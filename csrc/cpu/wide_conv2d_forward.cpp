// C++ CPU forward of shallowkern::_wide_conv2d_native, float32 and float64: three ways to the
// conv output y (direct AVX-512, fused im2col + GEMM, vendor conv), each followed by the fused
// bias / ReLU / 2x2 max-pool epilogue. Math and design: csrc/cpu/wide_conv2d.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
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

// ------------------------------------------------------------------------------------------------
// forward
// ------------------------------------------------------------------------------------------------
// The fused epilogue over n outputs: bias, ReLU and, with pool 2, the 2x2 max of v0..v3 (the
// window's positions in scan order, each read at t * vs), with uint8 indices. Branch-free, so GCC
// vectorizes it (float: an int32 index lane, narrowed to uint8 on store).
template <typename T>
inline void epilogue(const T* __restrict v0, const T* __restrict v1, const T* __restrict v2,
                     const T* __restrict v3, int64_t vs, int64_t n, T bv, int32_t act,
                     T* __restrict ot, uint8_t* __restrict it) {
  if (v1 == nullptr) {  // pool 1
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) {
      const T v = v0[t * vs] + bv;
      ot[t] = ((act == 0) | (v > T(0)) | (v != v)) ? v : T(0);
    }
    return;
  }
#pragma omp simd
  for (int64_t t = 0; t < n; ++t) {
    // max_pool2d scans from -inf with `v > best || isnan(v)`; starting at position 0 is the
    // same (v0 either wins the first comparison or is -inf like the start). Bitwise | and & (no
    // short-circuit) keep this branch-free.
    T best = v0[t * vs] + bv;
    int32_t bi = 0;
    const T a1 = v1[t * vs] + bv, a2 = v2[t * vs] + bv, a3 = v3[t * vs] + bv;
    bool u = (a1 > best) | (a1 != a1);
    best = u ? a1 : best, bi = u ? 1 : bi;
    u = (a2 > best) | (a2 != a2);
    best = u ? a2 : best, bi = u ? 2 : bi;
    u = (a3 > best) | (a3 != a3);
    best = u ? a3 : best, bi = u ? 3 : bi;
    // relu then pool == pool then relu, with the same first index whenever out > 0 (positive
    // values are unchanged, the rest become 0 < out; NaN survives both).
    const bool z = (act != 0) & (best <= T(0));
    ot[t] = z ? T(0) : best;
    it[t] = static_cast<uint8_t>(z ? int32_t(kNoGrad) : bi);
  }
}

// Fused im2col + GEMM: per chunk of images, im2col + GEMM into a cache-resident y in
// window-major column order, epilogue at once; y never reaches memory. Wins where writing y
// costs as much as computing it and the reduction is too long for the direct kernel.
template <typename T>
void forward_impl(const at::Tensor& x, const at::Tensor& weight, const T* bias, const Conv2dGeom& g,
                  bool relu, at::Tensor& out, at::Tensor* idx) {
  const int64_t CRS = g.crs(), P = g.npos(), PHW = g.PH * g.PW;
  const int64_t B = images_per_chunk(g, sizeof(T), CRS + g.Kg);
  const Padded pd{g.H + 2 * g.ph, g.W + 2 * g.pw, g.Cg};
  const std::vector<int64_t> off = position_offsets(g, pd);
  // (K, Cg, R, S) -> (K, R, S, Cg): the column order of im2col over the padded HWC image.
  const at::Tensor w2 = weight.permute({0, 2, 3, 1}).contiguous();
  const T* xp = x.const_data_ptr<T>();
  const T* wp = w2.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  uint8_t* ip = idx ? idx->mutable_data_ptr<uint8_t>() : nullptr;
  const auto xs = x.strides();
  const auto os = out.strides();                   // indices share the output's shape and layout
  const bool dense = os[3] == 1 && os[2] == g.PW;  // each (n, k) plane is contiguous
  const auto opt = x.options();
  // As an int, not a captured bool: a bool loaded through the lambda's reference has no vector
  // type, and GCC then gives up on the epilogue loops.
  const int32_t act = relu ? 1 : 0;

  at::parallel_for(0, g.G * g.N, unit_grain(g), [&](int64_t begin, int64_t end) {
    std::vector<T> colT(B * P * CRS), y(g.Kg * B * P);
    std::vector<T> xpad(pd.size(), T(0)), tmp(PHW);
    std::vector<uint8_t> tix(PHW);
    for_each_chunk(g, B, begin, end, [&](int64_t grp, int64_t n0, int64_t nb) {
      for (int64_t b = 0; b < nb; ++b) {
        pad_hwc(Plane<const T>{xp + (n0 + b) * xs[0] + grp * g.Cg * xs[1], xs[1], xs[2], xs[3]},
                g, pd, xpad.data());
        im2col(xpad.data(), g, pd, off, colT.data() + b * P * CRS);
      }
      auto ym = mat(y.data(), g.Kg, nb * P, nb * P, opt);
      at::mm_out(ym, mat(wp + grp * g.Kg * CRS, g.Kg, CRS, CRS, opt),
                 mat(colT.data(), nb * P, CRS, CRS, opt).t());
      for (int64_t k = 0; k < g.Kg; ++k) {
        const int64_t kk = grp * g.Kg + k;
        const T bv = bias ? bias[kk] : T(0);
        for (int64_t b = 0; b < nb; ++b) {
          T* o = op + (n0 + b) * os[0] + kk * os[1];
          uint8_t* ix = ip ? ip + (n0 + b) * os[0] + kk * os[1] : nullptr;
          T* ot = dense ? o : tmp.data();
          uint8_t* it = dense && ix ? ix : tix.data();
          const T* v = y.data() + k * nb * P + b * P;  // window-major: four contiguous sub-planes
          if (g.pool == 1)
            epilogue<T>(v, nullptr, nullptr, nullptr, 1, PHW, bv, act, ot, it);
          else
            epilogue<T>(v, v + PHW, v + 2 * PHW, v + 3 * PHW, 1, PHW, bv, act, ot, it);
          if (!dense) {  // channels_last or otherwise strided output
            for (int64_t i = 0; i < g.PH; ++i)
              for (int64_t j = 0; j < g.PW; ++j) {
                o[i * os[2] + j * os[3]] = ot[i * g.PW + j];
                if (ix) ix[i * os[2] + j * os[3]] = it[i * g.PW + j];
              }
          }
        }
      }
    });
  });
}

// Vendor conv: ATen's convolution (oneDNN, all threads) with the bias, for the whole batch, in
// channels_last (NHWC) as torch.compile's inductor runs it on CPU (NCHW oneDNN convs reorder
// their operands on every call: 0.68-0.88x inductor's conv -> ReLU -> pool at LeNet conv2
// d1 = 23..91, measured), then one parallel epilogue pass per image: the 2x2 max over the K
// contiguous channels of the window's four positions (vectorized over channels), written to a
// (PH*PW, K) buffer and from there to the output in its layout. Wins where the conv is
// compute-bound (CRS large): oneDNN beats per-thread im2col + GEMM there, and reading y once
// more is cheap next to it.
//
// Layout: which of oneDNN's two convolutions is faster depends on the shape (planar NCHW won at
// LeNet conv2 d1 = 256 and 362, channels_last at d1 = 128 by 10-12 %; docs/study.md). Inference
// calls (no pool indices wanted) time both once per shape and keep the faster
// (vendor_conv_chosen); training calls and deterministic mode follow a size rule (planar for
// huge weights, where the backward is ATen's as well; channels_last otherwise), so a training
// run never depends on a timing. SHALLOWKERN_CPU_CONV_LAYOUT=channels_last|planar forces one.
at::Tensor vendor_conv(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, const Conv2dGeom& g, bool planar) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const auto fmt = planar ? at::MemoryFormat::Contiguous : cl;
  return at::conv2d(x.contiguous(fmt), weight.contiguous(fmt), bias, {g.sh, g.sw}, {g.ph, g.pw},
                    {g.dh, g.dw}, g.G)
      .contiguous(cl);
}

// The conv output (channels_last) in the layout chosen for this call (see above).
at::Tensor vendor_conv_chosen(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const Conv2dGeom& g,
                              bool inference) {
  switch (knobs::cpu_conv_layout()) {
    case knobs::CpuConvLayout::kChannelsLast: return vendor_conv(x, weight, bias, g, false);
    case knobs::CpuConvLayout::kPlanar: return vendor_conv(x, weight, bias, g, true);
    case knobs::CpuConvLayout::kAuto: break;
  }
  // training and deterministic mode: a size rule, no timing (planar where the backward will be
  // ATen's too, as in eager)
  if (!inference || at::globalContext().deterministicAlgorithms())
    return vendor_conv(x, weight, bias, g, huge_weight(g.K, g.crs(), x.element_size()));
  using Key = std::array<int64_t, 17>;  // the shape, dtype, input layout and thread count
  const Key key{g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.G,
                static_cast<int64_t>(x.scalar_type()),
                x.is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0, at::get_num_threads()};
  static std::mutex mu;
  static std::map<Key, bool> chosen;
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto it = chosen.find(key);
    if (it != chosen.end()) return vendor_conv(x, weight, bias, g, it->second);
  }
  // Time both, alternating, best of each. The first round also pays each primitive's creation
  // (~1 ms), so convs under 2^32 multiply-adds (~40 ms here) get three rounds and longer ones
  // one; the winner's last output is the result, so the first call of a shape costs five or one
  // extra convolutions (LeNet conv2 at d1 = 1024, batch 100: one more ~2.5 s conv).
  const int64_t macs = g.N * g.K * g.OH * g.OW * g.crs();
  const int rounds = macs < (int64_t(1) << 32) ? 3 : 1;
  double best[2] = {1e300, 1e300};
  at::Tensor last[2];
  for (int round = 0; round < rounds; ++round) {
    for (int planar = 0; planar < 2; ++planar) {
      const auto t0 = std::chrono::steady_clock::now();
      last[planar] = vendor_conv(x, weight, bias, g, planar == 1);
      const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
      best[planar] = std::min(best[planar], dt.count());
    }
  }
  const bool planar = best[1] < best[0];
  std::lock_guard<std::mutex> lock(mu);
  return last[chosen.emplace(key, planar).first->second ? 1 : 0];
}

template <typename T>
void forward_vendor(const at::Tensor& x, const at::Tensor& weight,
                    const std::optional<at::Tensor>& bias, const Conv2dGeom& g, bool relu,
                    at::Tensor& out, at::Tensor* idx) {
  const at::Tensor y = vendor_conv_chosen(x, weight, bias, g, idx == nullptr);
  const int64_t K = g.K, PHW = g.PH * g.PW, OW = g.OW;
  const T* yp = y.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  uint8_t* ip = idx ? idx->mutable_data_ptr<uint8_t>() : nullptr;
  const auto os = out.strides();
  const bool nhwc = os[1] == 1 && os[3] == K && os[2] == g.PW * K;  // channels_last output
  const int32_t act = relu ? 1 : 0;
  at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> tv(nhwc ? 0 : PHW * K);
    std::vector<uint8_t> ti(nhwc ? K : PHW * K);  // nhwc: scratch indices when none are wanted
    for (int64_t n = begin; n < end; ++n) {
      const T* yn = yp + n * g.OH * OW * K;
      T* ov = nhwc ? op + n * os[0] : tv.data();
      uint8_t* iv = nhwc ? (ip ? ip + n * os[0] : nullptr) : ti.data();
      for (int64_t i = 0; i < g.PH; ++i)
        for (int64_t j = 0; j < g.PW; ++j) {
          const int64_t p = i * g.PW + j;
          if (g.pool == 1) {
            const T* v = yn + p * K;
            epilogue<T>(v, nullptr, nullptr, nullptr, 1, K, T(0), act, ov + p * K, nullptr);
          } else {
            const T* v = yn + (2 * i * OW + 2 * j) * K;  // positions (0,0) (0,1) (1,0) (1,1)
            uint8_t* it = iv ? iv + p * K : ti.data();   // the kernel always writes indices
            epilogue<T>(v, v + K, v + OW * K, v + OW * K + K, 1, K, T(0), act, ov + p * K, it);
          }
        }
      if (nhwc) continue;
      for (int64_t k = 0; k < K; ++k) {  // (PH*PW, K) -> the output's (K, PH, PW) planes
        T* o = op + n * os[0] + k * os[1];
        uint8_t* ix = ip ? ip + n * os[0] + k * os[1] : nullptr;
        for (int64_t i = 0; i < g.PH; ++i)
          for (int64_t j = 0; j < g.PW; ++j) {
            const int64_t p = i * g.PW + j;
            o[i * os[2] + j * os[3]] = tv[p * K + k];
            if (ix && g.pool == 2) ix[i * os[2] + j * os[3]] = ti[p * K + k];
          }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// direct forward for short reductions (the first layer), float, pool 2, AVX-512
// ------------------------------------------------------------------------------------------------
// For CRS = 75 a GEMM (M = K channels, K = 75) spends a good part of its time packing, and im2col
// plus a GEMM-result buffer add more (the fused path ran at ~146 of the ~200 GFLOP/s that MKL
// reaches on this machine's two cores for conv1 at d1 = 256). Here each 16-lane vector holds 16
// output channels: per (c, r, s), one weight vector times a broadcast input value for each of 12
// conv positions (3 pool windows x their 4 positions; fewer at a row's end) into 12
// accumulators, so the reduction runs from registers with no im2col. The 2x2 max / index / ReLU are then lane-wise between the
// 4 accumulators of a window, with the same first-max and NaN rule as the scalar epilogue, and
// only pooled values are stored. Weights are transposed once to (C*R*S, Kp) with Kp = K rounded
// up to 16 (zero lanes). The input of each image is copied into a zero-padded CHW buffer, so
// padding costs no bounds checks. Taken for float on AVX-512 CPUs with stride 1, dilation 1,
// up to 16 groups (below), pool 2 and CRS <= kDirectMaxCRS; SHALLOWKERN_CPU_FORWARD=direct|fused|vendor
// forces a path (tests run all three).
// Measured (2 threads, batch 32, direct / fused GEMM time): CRS 75 (conv1, d1 = 64..256) 0.76-0.89,
// 150 0.95, 400 0.86, 800 1.06, 1600 1.13, 3200 1.25: the GEMM's blocking wins on long reductions.
constexpr int64_t kDirectMaxCRS = 512;

// Groups: G in {1, 2, 4, 8, 16} (a divisor of the 16 lanes; packed trials, shallowkern.sweep.packed)
// The image's groups are interleaved in the padded buffer, (Cg, Hp, Wp, G), and lane L of the
// channel vectors is group L % G, channel L / G of that group, so one load broadcasts the G
// groups' values of a position across the 16 lanes (G = 1: one value, as before) and the lanes
// fill up with channels of all groups (LeNet conv1 at d1 = 4: 4 lanes of 16 alone, 16 of 16 for
// 4 packed trials).
// Other group counts up to 16 take the next of these (lane slot count Gs >= G): the extra slots
// hold zero input and zero weights, and their lanes are not stored (3 packed trials, the study's
// seeds, run as 4 slots: 12 of 16 lanes at d1 = 4). More than 16 groups (depthwise-like convs)
// take the fused or vendor path.
int64_t group_slots(int64_t G) { return G <= 1 ? 1 : G <= 2 ? 2 : G <= 4 ? 4 : G <= 8 ? 8 : 16; }

bool direct_forward_fits(const Conv2dGeom& g) {
  return has_avx512f() && g.pool == 2 && g.G <= 16 && g.sh == 1 && g.sw == 1 && g.dh == 1 &&
         g.dw == 1 && g.crs() <= kDirectMaxCRS;
}

#ifdef SK_X86_SIMD
// Windows j0 .. j0+kW-1 (kW <= 3) of pooled row i, channels k0..k0+15: pooled values and
// indices into tv[t * 16 + lane], ti[t * 16 + lane]. xp: padded CHW image (C, Hp, Wp); wt: (C*R*S, Kp); bias:
// Kp values (zeros without bias). 4*kW accumulators; each FMA takes its input value as an
// embedded broadcast from memory. (An AVX2 version of this, 8 channels per vector and a separate
// broadcast per FMA, ran at 59 GFLOP/s per core against 107 for this one on the dev machine's
// Zen 4, below MKL's GEMM: the broadcasts compete with the FMAs for issue. Without AVX-512 the
// fused GEMM path runs.)
// The G values at p (G consecutive floats: one position of each group) repeated across 16 lanes.
// (Storing the 16 lane values per position in the padded buffer instead, for a plain vector load
// folded into the FMA, was measured slower still: 2.1x instead of 2.6x per trial for 4 packed
// LeNet conv1s at d1 = 4, the larger buffer costing more than the broadcast uop.)
template <int G>
__attribute__((target("avx512f"))) inline __m512 bcast_groups(const float* p) {
  if constexpr (G == 1) return _mm512_set1_ps(*p);
  if constexpr (G == 2) {
    double d;
    std::memcpy(&d, p, sizeof d);
    return _mm512_castpd_ps(_mm512_set1_pd(d));
  }
  if constexpr (G == 4) return _mm512_broadcast_f32x4(_mm_loadu_ps(p));
  if constexpr (G == 8) return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(
                                   reinterpret_cast<const double*>(p))));
  if constexpr (G == 16) return _mm512_loadu_ps(p);
}

template <int kW, int G>
__attribute__((target("avx512f"))) void direct_windows_avx512(
    const float* xp, int64_t C, int64_t Hp, int64_t Wp, int64_t R, int64_t S, const float* wt,
    int64_t Kp, int64_t k0, const float* bias, int64_t i, int64_t j0, int32_t act, float* tv,
    uint8_t* ti) {
  __m512 acc[4 * kW];
#pragma GCC unroll 12
  for (int a = 0; a < 4 * kW; ++a) acc[a] = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t r = 0; r < R; ++r) {
      const float* row0 = xp + ((c * Hp + 2 * i + r) * Wp + 2 * j0) * G;  // row 2i, column 2j0
      const float* row1 = row0 + Wp * G;                                  // conv row 2i + 1
      const float* wr = wt + (c * R + r) * S * Kp + k0;
      for (int64_t s = 0; s < S; ++s) {
        const __m512 wv = _mm512_loadu_ps(wr + s * Kp);
#pragma GCC unroll 3
        for (int t = 0; t < kW; ++t) {  // window j0 + t: positions (0,0), (0,1), (1,0), (1,1)
          const int64_t o = (2 * t + s) * G;
          acc[4 * t + 0] = _mm512_fmadd_ps(wv, bcast_groups<G>(row0 + o), acc[4 * t + 0]);
          acc[4 * t + 1] = _mm512_fmadd_ps(wv, bcast_groups<G>(row0 + o + G), acc[4 * t + 1]);
          acc[4 * t + 2] = _mm512_fmadd_ps(wv, bcast_groups<G>(row1 + o), acc[4 * t + 2]);
          acc[4 * t + 3] = _mm512_fmadd_ps(wv, bcast_groups<G>(row1 + o + G), acc[4 * t + 3]);
        }
      }
    }
  }
  const __m512 bv = _mm512_loadu_ps(bias + k0), zero = _mm512_setzero_ps();
#pragma GCC unroll 3
  for (int t = 0; t < kW; ++t) {
    // As the scalar epilogue: scan positions 0..3 with `v > best || isnan(v)`.
    __m512 best = _mm512_add_ps(acc[4 * t], bv);
    __m512i bi = _mm512_setzero_si512();
#pragma GCC unroll 3
    for (int q = 1; q < 4; ++q) {
      const __m512 a = _mm512_add_ps(acc[4 * t + q], bv);
      const __mmask16 u = _mm512_cmp_ps_mask(a, best, _CMP_GT_OQ) |
                          _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
      best = _mm512_mask_mov_ps(best, u, a);
      bi = _mm512_mask_mov_epi32(bi, u, _mm512_set1_epi32(q));
    }
    if (act) {  // relu: out <= 0 (not NaN) -> 0 and NO_GRAD
      const __mmask16 z = _mm512_cmp_ps_mask(best, zero, _CMP_LE_OQ);
      best = _mm512_mask_mov_ps(best, z, zero);
      bi = _mm512_mask_mov_epi32(bi, z, _mm512_set1_epi32(kNoGrad));
    }
    _mm512_storeu_ps(tv + 16 * t, best);
    _mm512_mask_cvtepi32_storeu_epi8(ti + 16 * t, static_cast<__mmask16>(0xFFFF), bi);
  }
}
#endif

// G: the lane slot count (group_slots(g.G)); slots p >= g.G are empty.
template <int G>
void forward_direct_g(const at::Tensor& x, const at::Tensor& weight, const float* bias,
                      const Conv2dGeom& g, bool relu, at::Tensor& out, at::Tensor* idx) {
#ifdef SK_X86_SIMD
  // Lane L = k * G + p: channel k of group p, i.e. output channel p * Kg + k (G = 1: lane k).
  const int64_t CRS = g.crs(), KL = g.Kg * G, Kp = div_up(KL, 16) * 16;
  const auto empty_slot = [&](int64_t L) { return L % G >= g.G; };
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw;
  // (K, Cg, R, S) -> (Cg*R*S, Kp), zero-padded lanes; bias likewise.
  std::vector<float> wt(CRS * Kp, 0.f), bp(Kp, 0.f);
  const float* w = weight.const_data_ptr<float>();
  for (int64_t L = 0; L < KL; ++L) {
    if (empty_slot(L)) continue;
    const int64_t ch = (L % G) * g.Kg + L / G;
    for (int64_t e = 0; e < CRS; ++e) wt[e * Kp + L] = w[ch * CRS + e];
    if (bias) bp[L] = bias[ch];
  }
  const float* xdata = x.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  uint8_t* ip = idx ? idx->mutable_data_ptr<uint8_t>() : nullptr;
  const auto xs = x.strides();
  const auto os = out.strides();
  const int32_t act = relu ? 1 : 0;
  constexpr int64_t KB = 16, WB = 3;  // lanes and windows per kernel call
  const int64_t PHW = g.PH * g.PW;
  const bool dense = os[3] == 1 && os[2] == g.PW;  // each (n, k) plane is contiguous
  at::parallel_for(0, g.N, unit_grain(g), [&](int64_t begin, int64_t end) {
    std::vector<float> xpad(g.Cg * Hp * Wp * G, 0.f);  // (Cg, Hp, Wp, G); borders stay zero
    // One lane block's pooled planes, window-major ([i*PW + j][lane]; 12.5 KB for LeNet's
    // 14x14): vector stores from the kernel, transposed into the output once per block.
    std::vector<float> tv(PHW * KB);
    std::vector<uint8_t> ti(PHW * KB);
    for (int64_t n = begin; n < end; ++n) {
      const float* xn = xdata + n * xs[0];
      for (int64_t c = 0; c < g.Cg; ++c)
        for (int64_t h = 0; h < g.H; ++h) {
          float* d = xpad.data() + ((c * Hp + h + g.ph) * Wp + g.pw) * G;
          for (int64_t p = 0; p < g.G; ++p) {  // empty slots stay zero
            const float* src = xn + (p * g.Cg + c) * xs[1] + h * xs[2];
            for (int64_t w2 = 0; w2 < g.W; ++w2) d[w2 * G + p] = src[w2 * xs[3]];
          }
        }
      for (int64_t k0 = 0; k0 < KL; k0 += KB) {
        for (int64_t i = 0; i < g.PH; ++i)
          for (int64_t j0 = 0; j0 < g.PW; j0 += WB) {
            const int64_t at = (i * g.PW + j0) * KB;
            const auto kernel = g.PW - j0 >= 3   ? direct_windows_avx512<3, G>
                                : g.PW - j0 == 2 ? direct_windows_avx512<2, G>
                                                 : direct_windows_avx512<1, G>;
            kernel(xpad.data(), g.Cg, Hp, Wp, g.R, g.S, wt.data(), Kp, k0, bp.data(), i, j0, act,
                   tv.data() + at, ti.data() + at);
          }
        const int64_t lanes = std::min<int64_t>(KB, KL - k0);
        for (int64_t l = 0; l < lanes; ++l) {
          const int64_t L = k0 + l, ch = (L % G) * g.Kg + L / G;
          if (empty_slot(L)) continue;
          float* o = op + n * os[0] + ch * os[1];
          uint8_t* ix = ip ? ip + n * os[0] + ch * os[1] : nullptr;
          if (dense) {
            for (int64_t p = 0; p < PHW; ++p) o[p] = tv[p * KB + l];
            if (ix)
              for (int64_t p = 0; p < PHW; ++p) ix[p] = ti[p * KB + l];
          } else {  // channels_last or otherwise strided output
            for (int64_t i = 0; i < g.PH; ++i)
              for (int64_t j = 0; j < g.PW; ++j) {
                o[i * os[2] + j * os[3]] = tv[(i * g.PW + j) * KB + l];
                if (ix) ix[i * os[2] + j * os[3]] = ti[(i * g.PW + j) * KB + l];
              }
          }
        }
      }
    }
  });
#else
  TORCH_INTERNAL_ASSERT(false, "forward_direct: built without the AVX-512 kernels");
#endif
}

// Whether the G groups run one after another, each as an ungrouped direct conv over its channel
// slice, rather than interleaved in the lanes. Interleaving fills lanes a single group leaves idle
// (LeNet conv1 at d1 = 4: 4 of 16) but replaces each FMA's embedded broadcast by a separate
// G-value broadcast, which cost 20-25 % where one group already fills its lanes (d1 = 16, 4
// packed trials: conv1 and conv2 forward 0.80x per trial). So: one group at a time when its lane
// blocks, G * ceil(Kg / 16), are at most 1.25x the interleaved ones, ceil(G * Kg / 16).
// Measured (1 thread, batch 100, 4 groups, LeNet k = 2.8; interleaved / one by one ms): conv1
// d1 = 4 2.95 / 7.68, 8 5.58 / 8.23, 16 10.9 / 8.36; conv2 d1 = 4 1.32 / 1.34, 8 4.86 / 5.22,
// 11 8.80 / 6.94, 16 18.8 / 15.2. The rule picks the faster in each (d1 = 11 conv1: a tie).
bool direct_groups_one_by_one(const Conv2dGeom& g) {
  return g.G > 1 && 4 * g.G * div_up(g.Kg, 16) <= 5 * div_up(group_slots(g.G) * g.Kg, 16);
}

void forward_direct(const at::Tensor& x, const at::Tensor& weight, const float* bias,
                    const Conv2dGeom& g, bool relu, at::Tensor& out, at::Tensor* idx) {
  if (direct_groups_one_by_one(g)) {
    Conv2dGeom g1 = g;
    g1.G = 1, g1.C = g.Cg, g1.K = g.Kg;
    for (int64_t p = 0; p < g.G; ++p) {
      at::Tensor o = out.narrow(1, p * g.Kg, g.Kg);
      at::Tensor i = idx ? idx->narrow(1, p * g.Kg, g.Kg) : at::Tensor();
      forward_direct_g<1>(x.narrow(1, p * g.Cg, g.Cg), weight.narrow(0, p * g.Kg, g.Kg),
                          bias ? bias + p * g.Kg : nullptr, g1, relu, o, idx ? &i : nullptr);
    }
    return;
  }
  switch (group_slots(g.G)) {
    case 1: return forward_direct_g<1>(x, weight, bias, g, relu, out, idx);
    case 2: return forward_direct_g<2>(x, weight, bias, g, relu, out, idx);
    case 4: return forward_direct_g<4>(x, weight, bias, g, relu, out, idx);
    case 8: return forward_direct_g<8>(x, weight, bias, g, relu, out, idx);
    case 16: return forward_direct_g<16>(x, weight, bias, g, relu, out, idx);
    default: TORCH_INTERNAL_ASSERT(false, "forward_direct: at most 16 groups");
  }
}

// The forward's path: direct where it fits (forward_direct), else the vendor conv from a
// reduction length of kVendorConvMinCRS, else fused im2col + GEMM (forward_impl);
// SHALLOWKERN_CPU_FORWARD=direct|fused|vendor forces one (direct only where it fits). Measured on
// the dev machine (2 threads, Zen 4, LeNet conv2 shapes, fused / vendor time, interleaved best of
// 5; batch 32 | 100): CRS 400 1.10 | 1.14, 575 1.21 | 1.14, 800 1.08 | 1.06 forward, training
// step 0.93 | 1.03, 1.09 | 1.07, 1.01 | 1.00 (2026-11-30, after the vendor path went
// channels_last; before it CRS 800 was 0.97 and 2400 1.14). Direct covers CRS <= 512 on AVX-512,
// so there the vendor conv takes everything longer; the fused path serves the rest (no AVX-512,
// double, groups the direct kernel does not take) below this length.
constexpr int64_t kVendorConvMinCRS = 512;

enum class ForwardPath { kDirect, kFused, kVendor };

ForwardPath forward_path(const Conv2dGeom& g, bool is_float) {
  const knobs::CpuForward want = knobs::cpu_forward();
  const bool direct_ok = is_float && direct_forward_fits(g);
  if (want == knobs::CpuForward::kFused) return ForwardPath::kFused;
  if (want == knobs::CpuForward::kVendor) return ForwardPath::kVendor;
  if (direct_ok) return ForwardPath::kDirect;  // by default, or forced where it fits
  return g.crs() >= kVendorConvMinCRS ? ForwardPath::kVendor : ForwardPath::kFused;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> wide_conv2d_forward_cpu(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    bool relu, int64_t pool, bool return_indices) {
  const char* op = "wide_conv2d";
  const bool has_bias = bias.has_value() && bias->defined();
  const Conv2dGeom g = check_conv2d_args(op, input, weight, has_bias ? &*bias : nullptr, stride,
                                         padding, dilation, groups, pool);
  TORCH_CHECK(input.device().is_cpu(), op, ": input must be a CPU tensor, got ", input.device());
  SK_CHECK_FLOAT_OR_DOUBLE(op, input);
  check_padded_size(op, g, input.element_size());
  const auto fmt = out_format(input);
  const std::vector<int64_t> shape{g.N, conv2d_out_channels(g), g.PH, g.PW};
  at::Tensor out = at::empty(shape, input.options().memory_format(fmt));
  at::Tensor idx =
      pool == 2 && return_indices
          ? at::empty(shape, input.options().dtype(at::kByte).memory_format(fmt))
          : at::empty({0}, input.options().dtype(at::kByte));
  if (out.numel() == 0) return {out, idx};
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  const at::Tensor w = weight.contiguous();
  const ForwardPath path = forward_path(g, input.scalar_type() == at::kFloat);
  if (path == ForwardPath::kDirect) {
    forward_direct(input, w, has_bias ? b.const_data_ptr<float>() : nullptr, g, relu, out,
                   idx.numel() ? &idx : nullptr);
    return {out, idx};
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "wide_conv2d_forward_cpu", [&] {
    if (path == ForwardPath::kVendor)
      forward_vendor<scalar_t>(input, w, has_bias ? std::optional<at::Tensor>(b) : std::nullopt,
                               g, relu, out, idx.numel() ? &idx : nullptr);
    else
      forward_impl<scalar_t>(input, w, has_bias ? b.const_data_ptr<scalar_t>() : nullptr, g,
                             relu, out, idx.numel() ? &idx : nullptr);
  });
  return {out, idx};
}

std::tuple<at::Tensor, at::Tensor> wide_conv2d_forward_meta(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    bool relu, int64_t pool, bool return_indices) {
  const bool has_bias = bias.has_value() && bias->defined();
  const Conv2dGeom g = check_conv2d_args("wide_conv2d", input, weight, has_bias ? &*bias : nullptr,
                                         stride, padding, dilation, groups, pool);
  const auto fmt = out_format(input);
  const std::vector<int64_t> shape{g.N, conv2d_out_channels(g), g.PH, g.PW};
  at::Tensor out = at::empty(shape, input.options().memory_format(fmt));
  at::Tensor idx = pool == 2 && return_indices
                       ? at::empty(shape, input.options().dtype(at::kByte).memory_format(fmt))
                       : at::empty({0}, input.options().dtype(at::kByte));
  return {out, idx};
}

}  // namespace cpu
}  // namespace shallowkern
