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
//   gy = out > 0 ? gout : 0  (pool 1 + relu),  gy = gout  (pool 1)
//   gx = col2im(W^T gy),  gw = sum_n gy col(x)^T,  gb = sum_{n,p,q} gy
// (selects, as aten's max_pool2d / threshold backward: a non-finite gout stays where it belongs.)
//
// Design. Work units are (image, group) pairs, split evenly over threads by at::parallel_for and
// batched into chunks of B images (GEMMs wide enough for MKL to run at its peak). Per image, the
// group's channels are copied once into a zero-padded HWC buffer; the im2col matrix colT
// (positions x CRS, CRS in (r, s, c) order) is then R contiguous runs of S*Cg values per position
// (memcpy, no bounds checks), and the weight is permuted to (K, R, S, Cg) to match. Only the
// P = EH*EW conv positions that reach the output are computed, ordered window-major for pool 2
// (the four positions of each 2x2 window in four contiguous sub-planes), so that the epilogue
// (bias, ReLU, 2x2 max with aten's first-max / NaN rule, uint8 indices) is an elementwise,
// vectorized pass over the GEMM result while it is in cache, writing only the pooled output: the
// unpooled activation never reaches memory (conv2d -> relu -> max_pool2d writes it twice and
// reads it twice). The GEMMs go through ATen (at::mm_out / addmm_out on views of thread-local
// buffers: MKL here; inside at::parallel_for it runs single-threaded, so no oversubscription).
// The forward has two more ways to y, chosen by reduction length (forward_path): short
// reductions (CRS <= 512: the first layer, conv2 at small d1) run a direct AVX-512 kernel with
// no im2col and the epilogue in registers (forward_direct); long ones (CRS >= 1024: conv2 from
// d1 ~ 41), where the conv is compute-bound, run oneDNN's convolution for the whole batch and
// fuse only the epilogue (one more read of y, cheap next to the conv).
// The backward mirrors it: gy of a chunk from grad_out + saved (window-major, branch-free), gw
// accumulated per thread with MKL beta = 1 and reduced in a fixed order (deterministic for a
// given thread count), gx = col2im(gy^T W) scatter-added into the padded buffer of the chunk's
// own images and channels (no races), gb summed in double. With pool 2 in float32 on AVX2 CPUs,
// the two backward GEMMs become sparse row combinations over the non-zeros of gy (at most one
// per 2x2 window: a quarter of the multiply-adds; see combine_rows), ~2x faster on conv2 shapes;
// SHALLOWKERN_CPU_SPARSE_BACKWARD=0 selects the dense GEMMs (tests run both).
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
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "shallowkern/checks.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SK_X86_SIMD 1  // the AVX-512 direct kernels and the AVX2 sparse backward below, each
                       // behind a run-time CPU check
#endif

namespace shallowkern {
namespace {

constexpr uint8_t kNoGrad = 4;  // idx value where the ReLU zeroed the window
// Chunk sizing: enough GEMM columns (images x positions) that MKL runs near its peak (>= ~256 is
// within a few % of it on the 2-core dev machine), with thread-local buffers of at most ~48 MB.
// Big chunks matter most in the backward, where each chunk streams the weight (input grad) and
// the gw accumulator (weight grad) once: conv2 at d1 = 256 (2.5 MB of im2col per image) ran
// 1.13x faster with 6-image chunks than with 1, and its weight gradient at d1 = 512 (5 MB per
// image) 1.29x faster with 6 than with 3 (12 was slower again: the source block leaves L2).
constexpr int64_t kTargetCols = 512;
constexpr int64_t kMaxChunkBytes = 48 << 20;

inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

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
  TORCH_CHECK(input.dim() == 4, op, ": input must be a 4-D (N, C, H, W) tensor, got ", input.dim(),
              "-D");
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be a 4-D (K, C/groups, R, S) tensor, got ",
              weight.dim(), "-D");
  TORCH_CHECK(input.device().is_cpu(), op, ": input must be a CPU tensor, got ", input.device());
  TORCH_CHECK(weight.device().is_cpu(), op, ": weight must be a CPU tensor, got ", weight.device());
  SK_CHECK_FLOAT_OR_DOUBLE(op, input);
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), op, ": weight dtype ",
              weight.scalar_type(), " must equal the input dtype ", input.scalar_type());
  TORCH_CHECK(stride.size() == 2, op, ": stride must have 2 elements, got ", stride.size());
  TORCH_CHECK(padding.size() == 2, op, ": padding must have 2 elements, got ", padding.size());
  TORCH_CHECK(dilation.size() == 2, op, ": dilation must have 2 elements, got ", dilation.size());
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be >= 0, got ", padding);
  TORCH_CHECK(dilation[0] >= 1 && dilation[1] >= 1, op, ": dilation must be >= 1, got ", dilation);
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
              " kernel (weight) does not fit the padded ", g.H, "x", g.W, " input (output ", g.OH,
              "x", g.OW, ")");
  TORCH_CHECK(pool == 1 || (g.OH >= 2 && g.OW >= 2), op,
              ": pool=2 needs a conv output of at least 2x2, got ", g.OH, "x", g.OW);
  g.pool = pool;
  g.PH = g.OH / pool, g.PW = g.OW / pool;
  g.EH = g.PH * pool, g.EW = g.PW * pool;
  return g;
}

// Images per chunk: see kTargetCols / kMaxChunkBytes.
int64_t images_per_chunk(const Geom& g, int64_t elem, int64_t rows) {
  int64_t b = std::max<int64_t>(1, std::min(g.N, div_up(kTargetCols, g.npos())));
  while (b > 1 && b * g.npos() * rows * elem > kMaxChunkBytes) --b;
  return b;
}

// Work is split over units u = grp * N + n (one image of one group); at::parallel_for hands each
// thread an equal contiguous range, which is cut here into chunks of <= B images of one group,
// balanced so that no chunk is much smaller than the others.
template <typename F>
void for_each_chunk(const Geom& g, int64_t B, int64_t begin, int64_t end, const F& f) {
  for (int64_t u = begin; u < end;) {
    const int64_t grp = u / g.N, n0 = u % g.N;
    const int64_t avail = std::min(end - u, g.N - n0);
    const int64_t nb = div_up(avail, div_up(avail, B));
    f(grp, n0, nb);
    u += nb;
  }
}

// Grain of the parallel loop over units. Fewer units than threads (a batch of one): run them
// in the calling thread, outside any parallel region, so that the GEMMs are multi-threaded by
// MKL instead of leaving threads idle.
int64_t unit_grain(const Geom& g) {
  const int64_t units = g.G * g.N;
  return units < at::get_num_threads() ? units + 1 : 1;
}

// The backward's weight gradient keeps one (K x CRS) partial per thread (summed in a fixed
// order: deterministic). At huge widths times many threads that is too much memory (conv2 at
// d1 = 2048 has a 1.2 GB weight), so fewer threads share the work there: the partials stay under
// kMaxPartialBytes in all (SHALLOWKERN_CPU_PARTIALS_MB overrides it; tests).
constexpr int64_t kMaxPartialBytes = int64_t(2) << 30;

int64_t backward_grain(const Geom& g, int64_t elem, bool weight_grad) {
  const int64_t grain = unit_grain(g);
  if (!weight_grad) return grain;
  int64_t budget = kMaxPartialBytes;
  if (const char* env = std::getenv("SHALLOWKERN_CPU_PARTIALS_MB")) budget = std::atoll(env) << 20;
  const int64_t one = std::max<int64_t>(1, g.K * g.crs() * elem);
  const int64_t partials = std::max<int64_t>(1, budget / one);
  return std::max(grain, div_up(g.G * g.N, partials));
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
std::vector<int64_t> position_offsets(const Geom& g, const Padded& pd) {
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
void pad_hwc(Plane<const T> x, const Geom& g, const Padded& pd, T* dst) {
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
void unpad_hwc(const T* src, const Geom& g, const Padded& pd, Plane<T> x) {
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
void im2col(const T* xpad, const Geom& g, const Padded& pd, const std::vector<int64_t>& off,
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
void col2im_add(const T* colT, const Geom& g, const Padded& pd, const std::vector<int64_t>& off,
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
// it runs at the adds' throughput rather than their latency, in a fixed order (deterministic).
template <bool kMasked, typename T>
double sum_double_impl(const T* __restrict v, const int32_t* __restrict q, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t t = 0;
  for (; t + 8 <= n; t += 8)
#pragma omp simd
    for (int l = 0; l < 8; ++l) {
      const double x = v[t + l];
      acc[l] += (!kMasked || q[t + l] < 4) ? x : 0.0;
    }
  for (; t < n; ++t) {
    const double x = v[t];
    acc[0] += (!kMasked || q[t] < 4) ? x : 0.0;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename T>
double sum_double(const T* v, const int32_t* q, int64_t n) {
  return q ? sum_double_impl<true>(v, q, n) : sum_double_impl<false>(v, q, n);
}

// 2D row-major (rows x cols, leading dimension ld) ATen view of a raw buffer, for at::mm_out.
template <typename T>
at::Tensor mat(T* p, int64_t rows, int64_t cols, int64_t ld, const at::TensorOptions& opt) {
  return at::from_blob(const_cast<std::remove_const_t<T>*>(p), {rows, cols}, {ld, 1}, opt);
}

// Run-time CPU checks for the x86 SIMD kernels below (built with per-function target attributes).
bool cpu_has_avx2_fma() {
#ifdef SK_X86_SIMD
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

bool cpu_has_avx512f() {  // SHALLOWKERN_CPU_AVX512=0: as if it had none (tests the AVX2 paths)
#ifdef SK_X86_SIMD
  static const bool yes = __builtin_cpu_supports("avx512f");
  const char* env = std::getenv("SHALLOWKERN_CPU_AVX512");
  return yes && !(env && env[0] == '0');
#else
  return false;
#endif
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
  const bool cpu = cpu_has_avx2_fma();
  const char* env = std::getenv("SHALLOWKERN_CPU_SPARSE_BACKWARD");  // "0": dense GEMMs (tests)
  return cpu && !(env && env[0] == '0');
#else
  return false;
#endif
}

#ifdef SK_X86_SIMD
__attribute__((target("avx2,fma"))) void combine_rows_avx2(const int64_t* off, const int32_t* idx,
                                                           const float* val, int64_t nrows,
                                                           const float* src, int64_t ld_src,
                                                           float* out, int64_t ld_out,
                                                           int64_t ncols, bool accumulate) {
  int64_t c0 = 0;
  for (; c0 + 32 <= ncols; c0 += 32) {
    for (int64_t r = 0; r < nrows; ++r) {
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      int64_t e = off[r];
      const int64_t e1 = off[r + 1];
      for (; e + 2 <= e1; e += 2) {
        const __m256 g0 = _mm256_set1_ps(val[e]), g1 = _mm256_set1_ps(val[e + 1]);
        const float* s0 = src + int64_t(idx[e]) * ld_src + c0;
        const float* s1 = src + int64_t(idx[e + 1]) * ld_src + c0;
        a0 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0), a0);
        a1 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0 + 8), a1);
        a2 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0 + 16), a2);
        a3 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0 + 24), a3);
        b0 = _mm256_fmadd_ps(g1, _mm256_loadu_ps(s1), b0);
        b1 = _mm256_fmadd_ps(g1, _mm256_loadu_ps(s1 + 8), b1);
        b2 = _mm256_fmadd_ps(g1, _mm256_loadu_ps(s1 + 16), b2);
        b3 = _mm256_fmadd_ps(g1, _mm256_loadu_ps(s1 + 24), b3);
      }
      if (e < e1) {
        const __m256 g0 = _mm256_set1_ps(val[e]);
        const float* s0 = src + int64_t(idx[e]) * ld_src + c0;
        a0 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0), a0);
        a1 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0 + 8), a1);
        a2 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0 + 16), a2);
        a3 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(s0 + 24), a3);
      }
      a0 = _mm256_add_ps(a0, b0), a1 = _mm256_add_ps(a1, b1);
      a2 = _mm256_add_ps(a2, b2), a3 = _mm256_add_ps(a3, b3);
      float* o = out + r * ld_out + c0;
      if (accumulate) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(o)), a1 = _mm256_add_ps(a1, _mm256_loadu_ps(o + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(o + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(o + 24));
      }
      _mm256_storeu_ps(o, a0), _mm256_storeu_ps(o + 8, a1);
      _mm256_storeu_ps(o + 16, a2), _mm256_storeu_ps(o + 24, a3);
    }
  }
  for (; c0 + 8 <= ncols; c0 += 8) {
    for (int64_t r = 0; r < nrows; ++r) {
      __m256 a0 = _mm256_setzero_ps();
      for (int64_t e = off[r]; e < off[r + 1]; ++e)
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(val[e]),
                             _mm256_loadu_ps(src + int64_t(idx[e]) * ld_src + c0), a0);
      float* o = out + r * ld_out + c0;
      _mm256_storeu_ps(o, accumulate ? _mm256_add_ps(a0, _mm256_loadu_ps(o)) : a0);
    }
  }
  for (; c0 < ncols; ++c0) {
    for (int64_t r = 0; r < nrows; ++r) {
      float a = 0.f;
      for (int64_t e = off[r]; e < off[r + 1]; ++e)
        a += val[e] * src[int64_t(idx[e]) * ld_src + c0];
      float* o = out + r * ld_out + c0;
      *o = accumulate ? *o + a : a;
    }
  }
}
#endif

#ifdef SK_X86_SIMD
// The same with 16-lane vectors (AVX-512): column blocks of 64 (two sets of 4 accumulators, each
// FMA taking its value as an embedded broadcast), then 16-wide blocks, the last one masked.
__attribute__((target("avx512f"))) void combine_rows_avx512(
    const int64_t* off, const float* const* rows, const float* val, int64_t nrows, float* out,
    int64_t ld_out, int64_t ncols, bool accumulate) {
  int64_t c0 = 0;
  for (; c0 + 64 <= ncols; c0 += 64) {
    for (int64_t r = 0; r < nrows; ++r) {
      __m512 a[4], b[4];
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) a[v] = b[v] = _mm512_setzero_ps();
      int64_t e = off[r];
      const int64_t e1 = off[r + 1];
      for (; e + 2 <= e1; e += 2) {
        const __m512 g0 = _mm512_set1_ps(val[e]), g1 = _mm512_set1_ps(val[e + 1]);
        const float* s0 = rows[e] + c0;
        const float* s1 = rows[e + 1] + c0;
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
          a[v] = _mm512_fmadd_ps(g0, _mm512_loadu_ps(s0 + 16 * v), a[v]);
          b[v] = _mm512_fmadd_ps(g1, _mm512_loadu_ps(s1 + 16 * v), b[v]);
        }
      }
      if (e < e1) {
        const __m512 g0 = _mm512_set1_ps(val[e]);
        const float* s0 = rows[e] + c0;
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) a[v] = _mm512_fmadd_ps(g0, _mm512_loadu_ps(s0 + 16 * v), a[v]);
      }
      float* o = out + r * ld_out + c0;
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        __m512 t = _mm512_add_ps(a[v], b[v]);
        if (accumulate) t = _mm512_add_ps(t, _mm512_loadu_ps(o + 16 * v));
        _mm512_storeu_ps(o + 16 * v, t);
      }
    }
  }
  for (; c0 < ncols; c0 += 16) {
    const __mmask16 m = ncols - c0 >= 16 ? __mmask16(0xFFFF)
                                         : static_cast<__mmask16>((1u << (ncols - c0)) - 1);
    for (int64_t r = 0; r < nrows; ++r) {
      __m512 a0 = _mm512_setzero_ps(), b0 = a0;
      int64_t e = off[r];
      const int64_t e1 = off[r + 1];
      for (; e + 2 <= e1; e += 2) {
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(val[e]),
                             _mm512_maskz_loadu_ps(m, rows[e] + c0), a0);
        b0 = _mm512_fmadd_ps(_mm512_set1_ps(val[e + 1]),
                             _mm512_maskz_loadu_ps(m, rows[e + 1] + c0),
                             b0);
      }
      if (e < e1)
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(val[e]),
                             _mm512_maskz_loadu_ps(m, rows[e] + c0), a0);
      float* o = out + r * ld_out + c0;
      __m512 t = _mm512_add_ps(a0, b0);
      if (accumulate) t = _mm512_add_ps(t, _mm512_maskz_loadu_ps(m, o));
      _mm512_mask_storeu_ps(o, m, t);
    }
  }
}
#endif

void combine_rows(const int64_t* off, const int32_t* idx, const float* val, int64_t nrows,
                  const float* src, int64_t ld_src, float* out, int64_t ld_out, int64_t ncols,
                  bool accumulate) {
#ifdef SK_X86_SIMD
  if (cpu_has_avx512f()) {
    // The source row of every non-zero, once: the kernel revisits them per column block.
    std::vector<const float*> rows(off[nrows]);
    for (int64_t e = 0; e < off[nrows]; ++e) rows[e] = src + int64_t(idx[e]) * ld_src;
    combine_rows_avx512(off, rows.data(), val, nrows, out, ld_out, ncols, accumulate);
  } else {
    combine_rows_avx2(off, idx, val, nrows, src, ld_src, out, ld_out, ncols, accumulate);
  }
#else
  TORCH_INTERNAL_ASSERT(false, "combine_rows: built without the AVX2 kernels");
#endif
}

// Weight gradient of short kernel rows (S*Cg <= 16: the first layer's 5 x 3 = 15) without
// im2col, AVX-512: for each output channel k, 16-lane accumulators per kernel row r (kR of them,
// in registers) take g * (the S*Cg input values of row r at the non-zero's position), read with
// one masked load from the padded HWC images; gw (Kg x R*S*Cg, rows in (r, s, c) order) += them.
// xoff[row] is the offset of chunk position `row` (b*P + p) in xpads. On conv1 this replaces
// im2col + combine_rows, whose 75-wide rows end in 8- and 1-wide tails.
bool direct_wgrad_fits(const Geom& g) {
  return cpu_has_avx512f() && g.S * g.Cg <= 16 && (g.R == 3 || g.R == 5) && g.dw == 1;
}

#ifdef SK_X86_SIMD
template <int kR>
__attribute__((target("avx512f"))) void wgrad_direct_avx512(
    const int64_t* koff, const int32_t* erow, const float* eval, int64_t nrows,
    const float* xpads, const int64_t* xoff, int64_t run, int64_t rstep, float* gw) {
  const __mmask16 m = static_cast<__mmask16>((1u << run) - 1);
  for (int64_t k = 0; k < nrows; ++k) {
    __m512 acc[kR];
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t e = koff[k]; e < koff[k + 1]; ++e) {
      const float* base = xpads + xoff[erow[e]];
      const __m512 gv = _mm512_set1_ps(eval[e]);
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r)
        acc[r] = _mm512_fmadd_ps(gv, _mm512_maskz_loadu_ps(m, base + r * rstep), acc[r]);
    }
    float* o = gw + k * kR * run;
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r)
      _mm512_mask_storeu_ps(o + r * run, m,
                            _mm512_add_ps(_mm512_maskz_loadu_ps(m, o + r * run), acc[r]));
  }
}
#endif

void wgrad_direct(const int64_t* koff, const int32_t* erow, const float* eval, int64_t nrows,
                  const float* xpads, const int64_t* xoff, const Geom& g, int64_t rstep,
                  float* gw) {
#ifdef SK_X86_SIMD
  const int64_t run = g.S * g.Cg;
  if (g.R == 5)
    wgrad_direct_avx512<5>(koff, erow, eval, nrows, xpads, xoff, run, rstep, gw);
  else
    wgrad_direct_avx512<3>(koff, erow, eval, nrows, xpads, xoff, run, rstep, gw);
#else
  TORCH_INTERNAL_ASSERT(false, "wgrad_direct: built without the AVX-512 kernels");
#endif
}

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

// Two ways to the conv output y, each followed by the fused epilogue:
//  * fused (the default): per chunk of images, im2col + GEMM into a cache-resident y in
//    window-major column order, epilogue at once; y never reaches memory. Wins where writing y
//    costs as much as computing it (the first layer: CRS = 75).
//  * vendor_conv: ATen's convolution (oneDNN, all threads) for the whole batch, then one parallel
//    epilogue pass over y (N, K, OH, OW). Wins where the conv is compute-bound (CRS large): oneDNN
//    is faster than per-thread im2col + GEMM there and reading y once more is cheap next to it.
template <typename T>
void forward_impl(const at::Tensor& x, const at::Tensor& weight, const T* bias, const Geom& g,
                  bool relu, bool vendor_conv, at::Tensor& out, at::Tensor* idx) {
  const int64_t CRS = g.crs(), P = g.npos(), PHW = g.PH * g.PW, OHW = g.OH * g.OW;
  const int64_t B = images_per_chunk(g, sizeof(T), CRS + g.Kg);
  const Padded pd{g.H + 2 * g.ph, g.W + 2 * g.pw, g.Cg};
  const std::vector<int64_t> off = vendor_conv ? std::vector<int64_t>() : position_offsets(g, pd);
  // (K, Cg, R, S) -> (K, R, S, Cg): the column order of im2col over the padded HWC image.
  const at::Tensor w2 = vendor_conv ? weight : weight.permute({0, 2, 3, 1}).contiguous();
  const at::Tensor yv = vendor_conv ? at::conv2d(x, weight, {}, {g.sh, g.sw}, {g.ph, g.pw},
                                                 {g.dh, g.dw}, g.G).contiguous()
                                    : at::Tensor();
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
    std::vector<T> colT(vendor_conv ? 0 : B * P * CRS), y(vendor_conv ? 0 : g.Kg * B * P);
    std::vector<T> xpad(vendor_conv ? 0 : pd.size(), T(0)), tmp(PHW);
    std::vector<uint8_t> tix(PHW);
    for_each_chunk(g, B, begin, end, [&](int64_t grp, int64_t n0, int64_t nb) {
      const T* yb = y.data();
      if (vendor_conv) {  // this chunk's planes of y
        yb = yv.const_data_ptr<T>() + (n0 * g.K + grp * g.Kg) * OHW;
      } else {
        for (int64_t b = 0; b < nb; ++b) {
          pad_hwc(Plane<const T>{xp + (n0 + b) * xs[0] + grp * g.Cg * xs[1], xs[1], xs[2], xs[3]},
                  g, pd, xpad.data());
          im2col(xpad.data(), g, pd, off, colT.data() + b * P * CRS);
        }
        auto ym = mat(y.data(), g.Kg, nb * P, nb * P, opt);
        at::mm_out(ym, mat(wp + grp * g.Kg * CRS, g.Kg, CRS, CRS, opt),
                   mat(colT.data(), nb * P, CRS, CRS, opt).t());
      }
      for (int64_t k = 0; k < g.Kg; ++k) {
        const int64_t kk = grp * g.Kg + k;
        const T bv = bias ? bias[kk] : T(0);
        for (int64_t b = 0; b < nb; ++b) {
          T* o = op + (n0 + b) * os[0] + kk * os[1];
          uint8_t* ix = ip ? ip + (n0 + b) * os[0] + kk * os[1] : nullptr;
          T* ot = dense ? o : tmp.data();
          uint8_t* it = dense && ix ? ix : tix.data();
          if (vendor_conv) {
            const T* v = yb + (b * g.K + k) * OHW;
            if (g.pool == 1) {
              epilogue<T>(v, nullptr, nullptr, nullptr, 1, PHW, bv, act, ot, it);
            } else {
              for (int64_t i = 0; i < g.PH; ++i) {  // rows 2i, 2i+1 of the plane
                const T* r0 = v + 2 * i * g.OW;
                const T* r1 = r0 + g.OW;
                epilogue<T>(r0, r0 + 1, r1, r1 + 1, 2, g.PW, bv, act, ot + i * g.PW,
                            it + i * g.PW);
              }
            }
          } else {  // window-major: four contiguous sub-planes
            const T* v = yb + k * nb * P + b * P;
            if (g.pool == 1)
              epilogue<T>(v, nullptr, nullptr, nullptr, 1, PHW, bv, act, ot, it);
            else
              epilogue<T>(v, v + PHW, v + 2 * PHW, v + 3 * PHW, 1, PHW, bv, act, ot, it);
          }
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
// groups 1, pool 2 and CRS <= kDirectMaxCRS; SHALLOWKERN_CPU_FORWARD=direct|fused|vendor
// forces a path (tests run all three).
// Measured (2 threads, batch 32, direct / fused GEMM time): CRS 75 (conv1, d1 = 64..256) 0.76-0.89,
// 150 0.95, 400 0.86, 800 1.06, 1600 1.13, 3200 1.25: the GEMM's blocking wins on long reductions.
constexpr int64_t kDirectMaxCRS = 512;

bool direct_forward_fits(const Geom& g) {
  return cpu_has_avx512f() && g.pool == 2 && g.G == 1 && g.sh == 1 && g.sw == 1 && g.dh == 1 &&
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
template <int kW>
__attribute__((target("avx512f"))) void direct_windows_avx512(
    const float* xp, int64_t C, int64_t Hp, int64_t Wp, int64_t R, int64_t S, const float* wt,
    int64_t Kp, int64_t k0, const float* bias, int64_t i, int64_t j0, int32_t act, float* tv,
    uint8_t* ti) {
  __m512 acc[4 * kW];
#pragma GCC unroll 12
  for (int a = 0; a < 4 * kW; ++a) acc[a] = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t r = 0; r < R; ++r) {
      const float* row0 = xp + (c * Hp + 2 * i + r) * Wp + 2 * j0;  // conv row 2i, column 2j0
      const float* row1 = row0 + Wp;                               // conv row 2i + 1
      const float* wr = wt + (c * R + r) * S * Kp + k0;
      for (int64_t s = 0; s < S; ++s) {
        const __m512 wv = _mm512_loadu_ps(wr + s * Kp);
#pragma GCC unroll 3
        for (int t = 0; t < kW; ++t) {  // window j0 + t: positions (0,0), (0,1), (1,0), (1,1)
          const int64_t o = 2 * t + s;
          acc[4 * t + 0] = _mm512_fmadd_ps(wv, _mm512_set1_ps(row0[o]), acc[4 * t + 0]);
          acc[4 * t + 1] = _mm512_fmadd_ps(wv, _mm512_set1_ps(row0[o + 1]), acc[4 * t + 1]);
          acc[4 * t + 2] = _mm512_fmadd_ps(wv, _mm512_set1_ps(row1[o]), acc[4 * t + 2]);
          acc[4 * t + 3] = _mm512_fmadd_ps(wv, _mm512_set1_ps(row1[o + 1]), acc[4 * t + 3]);
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

void forward_direct(const at::Tensor& x, const at::Tensor& weight, const float* bias,
                    const Geom& g, bool relu, at::Tensor& out, at::Tensor* idx) {
#ifdef SK_X86_SIMD
  const int64_t CRS = g.crs(), Kp = div_up(g.K, 16) * 16;
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw;
  // (K, C, R, S) -> (C*R*S, Kp), zero-padded lanes; bias likewise.
  std::vector<float> wt(CRS * Kp, 0.f), bp(Kp, 0.f);
  const float* w = weight.const_data_ptr<float>();
  for (int64_t k = 0; k < g.K; ++k) {
    for (int64_t e = 0; e < CRS; ++e) wt[e * Kp + k] = w[k * CRS + e];
    if (bias) bp[k] = bias[k];
  }
  const float* xdata = x.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  uint8_t* ip = idx ? idx->mutable_data_ptr<uint8_t>() : nullptr;
  const auto xs = x.strides();
  const auto os = out.strides();
  const int32_t act = relu ? 1 : 0;
  constexpr int64_t KB = 16, WB = 3;  // channels and windows per kernel call
  const int64_t PHW = g.PH * g.PW;
  const bool dense = os[3] == 1 && os[2] == g.PW;  // each (n, k) plane is contiguous
  at::parallel_for(0, g.N, unit_grain(g), [&](int64_t begin, int64_t end) {
    std::vector<float> xpad(g.C * Hp * Wp, 0.f);  // borders stay zero
    // One channel block's pooled planes, window-major ([i*PW + j][lane]; 12.5 KB for LeNet's
    // 14x14): vector stores from the kernel, transposed into the output once per block.
    std::vector<float> tv(PHW * KB);
    std::vector<uint8_t> ti(PHW * KB);
    for (int64_t n = begin; n < end; ++n) {
      const float* xn = xdata + n * xs[0];
      for (int64_t c = 0; c < g.C; ++c)
        for (int64_t h = 0; h < g.H; ++h) {
          float* d = xpad.data() + (c * Hp + h + g.ph) * Wp + g.pw;
          const float* src = xn + c * xs[1] + h * xs[2];
          for (int64_t w2 = 0; w2 < g.W; ++w2) d[w2] = src[w2 * xs[3]];
        }
      for (int64_t k0 = 0; k0 < g.K; k0 += KB) {
        for (int64_t i = 0; i < g.PH; ++i)
          for (int64_t j0 = 0; j0 < g.PW; j0 += WB) {
            const int64_t at = (i * g.PW + j0) * KB;
            const auto kernel = g.PW - j0 >= 3   ? direct_windows_avx512<3>
                                : g.PW - j0 == 2 ? direct_windows_avx512<2>
                                                 : direct_windows_avx512<1>;
            kernel(xpad.data(), g.C, Hp, Wp, g.R, g.S, wt.data(), Kp, k0, bp.data(), i, j0, act,
                   tv.data() + at, ti.data() + at);
          }
        const int64_t lanes = std::min<int64_t>(KB, g.K - k0);
        for (int64_t l = 0; l < lanes; ++l) {
          float* o = op + n * os[0] + (k0 + l) * os[1];
          uint8_t* ix = ip ? ip + n * os[0] + (k0 + l) * os[1] : nullptr;
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

// The forward's path: direct where it fits (forward_direct), else the vendor conv from a
// reduction length of kVendorConvMinCRS, else fused im2col + GEMM (forward_impl);
// SHALLOWKERN_CPU_FORWARD=direct|fused|vendor forces one (direct only where it fits). Measured on
// the dev machine (2 threads, Zen 4, batch 32, LeNet conv2 shapes, fused / vendor time): CRS 400
// 1.02, 800 0.97, 1600 1.00-1.03, 2400 1.14, 3200 1.12, 4800 1.33, 6400 1.41 (the vendor path
// also saves eager's separate ReLU and pool passes, so it is the one that stays >= 1x eager).
constexpr int64_t kVendorConvMinCRS = 1024;

enum class ForwardPath { kDirect, kFused, kVendor };

ForwardPath forward_path(const Geom& g, bool is_float) {
  const char* env = std::getenv("SHALLOWKERN_CPU_FORWARD");
  const bool direct_ok = is_float && direct_forward_fits(g);
  if (env && std::strcmp(env, "fused") == 0) return ForwardPath::kFused;
  if (env && std::strcmp(env, "vendor") == 0) return ForwardPath::kVendor;
  if (env && std::strcmp(env, "direct") == 0 && direct_ok) return ForwardPath::kDirect;
  if (direct_ok) return ForwardPath::kDirect;
  return g.crs() >= kVendorConvMinCRS ? ForwardPath::kVendor : ForwardPath::kFused;
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
  at::Tensor idx =
      pool == 2 && return_indices
          ? at::empty({g.N, g.K, g.PH, g.PW}, input.options().dtype(at::kByte).memory_format(fmt))
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
    forward_impl<scalar_t>(input, w, has_bias ? b.const_data_ptr<scalar_t>() : nullptr, g, relu,
                           path == ForwardPath::kVendor, out, idx.numel() ? &idx : nullptr);
  });
  return {out, idx};
}

// ------------------------------------------------------------------------------------------------
// backward
// ------------------------------------------------------------------------------------------------
template <typename T>
void backward_impl(const at::Tensor& gout, const at::Tensor& x, const at::Tensor& w2,
                   const at::Tensor& saved, const Geom& g, bool relu, std::array<bool, 3> mask,
                   at::Tensor& gx, at::Tensor& gw2, at::Tensor& gb) {
  const int64_t CRS = g.crs(), P = g.npos(), PHW = g.PH * g.PW;
  // pool 2, float, AVX2: the sparse row combinations instead of the dense GEMMs (see
  // combine_rows). Chunks of B images either way: each chunk streams the weight (input grad) and
  // the gw accumulator (weight grad) once, so B images share that traffic.
  const bool sparse = std::is_same_v<T, float> && g.pool == 2 && sparse_backward_enabled();
  // The sparse weight gradient straight from the padded images (no im2col) where it fits.
  const bool wdirect = sparse && mask[1] && direct_wgrad_fits(g);
  const bool need_colT = mask[0] || (mask[1] && !wdirect);  // im2col, or dcolT of the input grad
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
            combine_rows(poff.data(), pk.data(), pval.data(), ld, wp + grp * g.Kg * CRS, CRS,
                         colT.data(), CRS, CRS, false);
          }
        }
        if (!sparse) {
          auto dcol = mat(colT.data(), ld, CRS, CRS, opt);
          at::mm_out(dcol, mat(gy.data(), g.Kg, ld, ld, opt).t(),
                     mat(wp + grp * g.Kg * CRS, g.Kg, CRS, CRS, opt));
        }
        for (int64_t b = 0; b < nb; ++b) {
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
    TORCH_CHECK(saved.sizes() == c10::IntArrayRef(oshape), op,
                ": saved (pool indices) must have "
                "shape ",
                c10::IntArrayRef(oshape), ", got ", saved.sizes());
  } else if (relu) {
    TORCH_CHECK(saved.defined() && saved.scalar_type() == input.scalar_type(), op,
                ": saved must be the forward output (dtype ", input.scalar_type(),
                ") when pool=1 and relu, got ",
                saved.defined() ? c10::toString(saved.scalar_type()) : "undefined");
    TORCH_CHECK(saved.sizes() == c10::IntArrayRef(oshape), op,
                ": saved (forward output) must "
                "have shape ",
                c10::IntArrayRef(oshape), ", got ", saved.sizes());
  }
  if (saved.defined() && saved.numel() > 0)
    TORCH_CHECK(saved.device().is_cpu(), op, ": saved must be a CPU tensor, got ", saved.device());

  // A masked-off output is its own empty tensor: outputs of an op must not alias each other.
  const auto empty = [&] { return at::empty({0}, input.options()); };
  at::Tensor gx = output_mask[0]
                      ? at::empty(input.sizes(), input.options().memory_format(out_format(input)))
                      : empty();
  at::Tensor gw = output_mask[1] ? at::empty(weight.sizes(), weight.options()) : empty();
  at::Tensor gb = output_mask[2] ? at::empty({g.K}, input.options()) : empty();
  if (!(output_mask[0] || output_mask[1] || output_mask[2])) return {gx, gw, gb};
  if (g.N == 0 || g.K == 0) {
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

}  // namespace

TORCH_LIBRARY_IMPL(shallowkern, CPU, m) {
  m.impl("_wide_conv2d_native", &wide_conv2d_forward_cpu);
  m.impl("_wide_conv2d_native_backward", &wide_conv2d_backward_cpu);
}

}  // namespace shallowkern
