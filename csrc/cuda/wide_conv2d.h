// wide_conv2d CUDA forward for small C_in: launcher declaration (shared with the torch binding
// csrc/cuda/bindings.cu) and the kernel's index arithmetic and per-thread math as SK_HD inline
// functions, so that the host test csrc/tests/test_cuda_indexing.cpp runs exactly the code the
// kernel runs (minus the thread mapping) against a naive convolution, on a machine without a GPU.
//
// Torch-free: raw pointers, int sizes, cudaStream_t. The kernel itself is in wide_conv2d.cu.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

// Relative, so the torch-free kernel compiles with no -I (e.g. the bare nvcc check in CI).
#include "../include/shallowkern/cuda_utils.cuh"
#include "../include/shallowkern/geometry.h"

namespace shallowkern {
namespace cuda {

enum class WideConv2dDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

constexpr int kWideConv2dMaxCin = 16;   // the kernel's limit; the op routes C_in <= 4 here
constexpr int kWideConv2dThreads = 256;  // threads per block (8 warps)

struct WideConv2dShape {
  int n, c, h, w;  // input (N, C, H, W), NCHW contiguous
  int k, r, s;     // weight (K, C, R, S), contiguous; bias (K) or null
  int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int pool;            // 1 (none) or 2 (2x2 window, stride 2, floor mode)
  bool relu;           // ReLU before the pool
  bool write_indices;  // pool == 2 only: uint8 window position of the max (4: ReLU zeroed it)
};

struct WideConv2dArgs {
  WideConv2dDtype dtype;  // storage type of input, weight, bias and out (fp32 accumulation)
  const void* input;      // (N, C, H, W)
  const void* weight;     // (K, C, R, S)
  const void* bias;       // (K) or nullptr
  void* out;              // (N, K, OH/pool, OW/pool), contiguous
  uint8_t* indices;       // same shape as out when shape.write_indices, else ignored
  WideConv2dShape shape;
};

// Enqueues the forward on `stream`. Returns cudaErrorInvalidValue for unsupported or inconsistent
// sizes (C > kWideConv2dMaxCin, kernel larger than the padded input, a tile that does not fit in
// shared memory, ...), the launch error otherwise; never aborts. N == 0 or K == 0 is a no-op.
cudaError_t wide_conv2d_forward(const WideConv2dArgs& args, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Geometry. Every thread item computes a 2x2 "quad" of conv outputs, (2i+di, 2j+dj), for KT
// output channels: with pool == 2 the quad is the pooling window of pooled output (i, j) (floor
// mode: QH = OH/2), with pool == 1 it is plain register blocking (QH = ceil(OH/2), the row/column
// past the edge is computed from the zero-padded tile and not stored).
// ---------------------------------------------------------------------------------------------
struct WideConv2dGeometry {
  int oh, ow;  // conv output
  int ph, pw;  // stored output: (OH/pool, OW/pool)
  int qh, qw;  // quad grid
};

// Floor division, as aten (shallowkern::conv_out_size, include/shallowkern/geometry.h).
SK_HD int64_t wc2d_conv_out(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  return shallowkern::conv_out_size(in, k, stride, pad, dil);
}

// False when the shape is outside the kernel contract (the launcher: cudaErrorInvalidValue).
inline bool wc2d_geometry(const WideConv2dShape& s, WideConv2dGeometry* g) {
  if (s.n < 0 || s.c < 1 || s.c > kWideConv2dMaxCin || s.h < 1 || s.w < 1 || s.k < 0 || s.r < 1 ||
      s.s < 1 || s.stride_h < 1 || s.stride_w < 1 || s.dil_h < 1 || s.dil_w < 1 || s.pad_h < 0 ||
      s.pad_w < 0 || (s.pool != 1 && s.pool != 2) || (s.write_indices && s.pool != 2))
    return false;
  const int64_t oh = wc2d_conv_out(s.h, s.r, s.stride_h, s.pad_h, s.dil_h);
  const int64_t ow = wc2d_conv_out(s.w, s.s, s.stride_w, s.pad_w, s.dil_w);
  if (oh < s.pool || ow < s.pool || oh > (1 << 30) || ow > (1 << 30)) return false;
  g->oh = static_cast<int>(oh);
  g->ow = static_cast<int>(ow);
  g->ph = g->oh / s.pool;
  g->pw = g->ow / s.pool;
  g->qh = s.pool == 2 ? g->oh / 2 : (g->oh + 1) / 2;
  g->qw = s.pool == 2 ? g->ow / 2 : (g->ow + 1) / 2;
  return true;
}

// Which specialization runs: 5 or 3 = compile-time RxS (5x5 / 3x3) with unit column stride and
// dilation (each thread reads its input rows as aligned float2 pairs and reuses them across s);
// 0 = generic (runtime R, S, strides, dilations).
SK_HD int wc2d_fast_path(const WideConv2dShape& s) {
  if (s.stride_w != 1 || s.dil_w != 1 || s.r != s.s) return 0;
  return (s.r == 5 || s.r == 3) ? s.r : 0;
}

// ---------------------------------------------------------------------------------------------
// Plan: how the work is cut into blocks. A block takes one image, a slab of KG*KT output channels
// and a TI x TJ tile of quads; it stages the slab's weights, its bias and the tile's input rows
// (with halo and zero padding) in shared memory as fp32, then its threads loop over the
// TI*TJ*KG items (consecutive threads -> consecutive quads of one channel group, so stores of a
// warp are contiguous runs of the output plane).
// ---------------------------------------------------------------------------------------------
struct WideConv2dDeviceLimits {
  int sms;                // multiprocessors
  size_t smem_per_block;  // opt-in maximum dynamic shared memory per block
  size_t smem_per_sm;     // shared memory per multiprocessor
};

struct WideConv2dPlan {
  int kt;  // output channels per thread item (template parameter: 4 or 16)
  int kg;  // channel groups per block: the slab is kg * kt channels
  int ti, tj;              // tile in quads
  int tiles_i, tiles_j;    // tiles per image
  int slabs;               // cdiv(K, kg * kt)
  int rows_in, cols_in;    // staged input tile per channel (fp32)
  int pitch;               // row pitch of the staged tile: even, >= cols_in (wc2d_pick_pitch)
  int64_t blocks;          // N * slabs * tiles_i * tiles_j
  size_t smem_bytes;       // dynamic shared memory per block
  double cost;             // modelled time (arbitrary units), for tests and debugging
};

// Shared memory layout, in floats: [weights kg*CRS*kt][bias kg*kt][input C*rows_in*pitch].
// Weights are stored [group][c][r][s][q] so that one thread's KT channels for one (c, r, s) are
// 16-byte aligned and contiguous (float4 broadcast reads), with compile-time offsets within a
// group when R and S are compile-time. kt is a multiple of 4, so every section starts 16-aligned.
SK_HD int64_t wc2d_smem_weights_floats(int kg, int kt, int crs) { return int64_t(kg) * kt * crs; }
SK_HD int64_t wc2d_smem_bias_offset(int kg, int kt, int crs) { return int64_t(kg) * kt * crs; }
SK_HD int64_t wc2d_smem_input_offset(int kg, int kt, int crs) {
  return int64_t(kg) * kt * crs + int64_t(kg) * kt;
}

SK_HD int64_t wc2d_tile_rows_in(const WideConv2dShape& s, int ti) {
  return int64_t(2 * ti - 1) * s.stride_h + int64_t(s.r - 1) * s.dil_h + 1;
}
SK_HD int64_t wc2d_tile_cols_in(const WideConv2dShape& s, int tj) {
  return int64_t(2 * tj - 1) * s.stride_w + int64_t(s.s - 1) * s.dil_w + 1;
}

// Modelled cost of one thread item (KT channels x one quad), in warp issue slots: the larger of
// the instructions issued (FFMA, LDS, address arithmetic) and 4x the shared-memory wavefronts
// (an SM issues 4 warp-instructions but serves 1 shared-memory wavefront per clock). Weight reads
// are warp-uniform float4 broadcasts (1 wavefront); a warp-wide LDS.64 is 2 wavefronts; the
// generic path's scalar input reads hit lanes 2*stride apart (2-way conflicts).
// `conflicts`: wavefronts of an input read over the conflict-free minimum (wc2d_input_conflicts).
inline double wc2d_item_cost(const WideConv2dShape& s, int kt, double conflicts) {
  double issue, wavefronts;
  if (wc2d_fast_path(s) != 0) {  // per (c, r): S taps, one row pair of S+1 values
    issue = s.s * (4.0 * kt + kt / 4) + (s.s + 1) + 2;
    wavefronts = s.s * (kt / 4.0) + 2.0 * (s.s + 1) * conflicts;
    issue *= s.r * s.c;
    wavefronts *= s.r * s.c;
  } else {  // per (c, r, s)
    const double crs = double(s.c) * s.r * s.s;
    issue = crs * (4.0 * kt + kt / 4 + 4 + 2);
    wavefronts = crs * (kt / 4.0 + 4.0 * conflicts);
  }
  return (issue > 4 * wavefronts ? issue : 4 * wavefronts) + 12.0 * kt;  // + epilogue
}

// Bank conflicts of the per-item input reads. Lanes take consecutive quads p -> (p / tj, p % tj)
// of a tile with tp quads; quad (ti, tj) reads at float offset 2*ti*sh*pitch + 2*tj*sw (+ a
// lane-independent offset). Fast path: float2 reads, a wavefront serves a half-warp over 16
// 8-byte banks (minimum 2 per warp); generic path: float reads, 32 4-byte banks (minimum 1).
// Returns the average wavefronts over that minimum for the first (up to 8) warps of a tile.
inline double wc2d_input_conflicts(const WideConv2dShape& s, int tp, int tj, int pitch) {
  const bool unit = wc2d_fast_path(s) != 0;
  const int warps = cdiv(tp, 32) < 8 ? cdiv(tp, 32) : 8;
  const int lanes_per_wf = unit ? 16 : 32;
  int total = 0;
  for (int wv = 0; wv < warps; ++wv) {
    for (int part = 0; part < 32 / lanes_per_wf; ++part) {
      int64_t addr[32];
      for (int l = 0; l < lanes_per_wf; ++l) {
        const int p = (32 * wv + part * lanes_per_wf + l) % tp;
        const int64_t ti = p / tj, tjj = p % tj;
        const int64_t words = 2 * ti * s.stride_h * pitch + 2 * tjj * s.stride_w;
        addr[l] = unit ? words / 2 : words;  // bank units: 8 bytes (fast path) or 4 bytes
      }
      int worst = 1;
      for (int bank = 0; bank < lanes_per_wf; ++bank) {  // distinct addresses per bank
        int distinct = 0;
        for (int l = 0; l < lanes_per_wf; ++l) {
          if (((addr[l] % lanes_per_wf) + lanes_per_wf) % lanes_per_wf != bank) continue;
          bool seen = false;
          for (int m = 0; m < l && !seen; ++m) seen = addr[m] == addr[l];
          distinct += !seen;
        }
        worst = distinct > worst ? distinct : worst;
      }
      total += worst;
    }
  }
  return double(total) / double(warps * (32 / lanes_per_wf));
}

// Row pitch of the staged input: even (aligned float2 reads), at least cols_in, and, among the
// next 16 even values, the one with the fewest bank conflicts for whole-row tiles (e.g. LeNet's
// 14-quad rows: pitch 46, not 32, so lanes 14..27 of a warp, one quad row further down, land on
// the banks after lanes 0..13 instead of on the same ones).
inline int wc2d_pick_pitch(const WideConv2dShape& s, int tp, int tj, int cols_in,
                           double* conflicts) {
  const int base = round_up(cols_in, 2);
  int best = base;
  double best_c = wc2d_input_conflicts(s, tp, tj, base);
  for (int pitch = base + 2; pitch < base + 32 && best_c > 1.0; pitch += 2) {
    const double c = wc2d_input_conflicts(s, tp, tj, pitch);
    if (c < best_c) best = pitch, best_c = c;
  }
  if (conflicts) *conflicts = best_c;
  return best;
}

// Modelled cost of one candidate; < 0 if it does not fit. The kernel is FFMA-bound (see the
// roofline in wide_conv2d.cu), so the model counts warp issue slots: wc2d_item_cost times the
// iterations of the block's item loop (lane utilization of the last one included), plus staging,
// times the blocks on the busiest SM.
inline double wc2d_plan_cost(const WideConv2dShape& s, const WideConv2dGeometry& g,
                             const WideConv2dDeviceLimits& lim, int kt, int kg, int ti, int tj,
                             int pitch, double conflicts, WideConv2dPlan* p) {
  const int crs = s.c * s.r * s.s;
  const int64_t rows_in = wc2d_tile_rows_in(s, ti);
  const int64_t cols_in = wc2d_tile_cols_in(s, tj);
  const int64_t floats = wc2d_smem_input_offset(kg, kt, crs) + int64_t(s.c) * rows_in * pitch;
  const size_t smem = size_t(floats) * sizeof(float);
  if (smem > lim.smem_per_block) return -1.0;
  const int slabs = cdiv(s.k, kg * kt);
  const int tiles_i = cdiv(g.qh, ti), tiles_j = cdiv(g.qw, tj);
  const int64_t blocks = int64_t(s.n) * slabs * tiles_i * tiles_j;
  if (blocks > INT32_MAX) return -1.0;
  const double item = wc2d_item_cost(s, kt, conflicts);
  const int64_t items = int64_t(ti) * tj * kg;
  const double iters = double(cdiv<int64_t>(items, kWideConv2dThreads));
  const double stage = 4.0 * double(floats) / kWideConv2dThreads + 200.0;
  const int64_t per_sm = cdiv<int64_t>(blocks, lim.sms);
  // Fewer than 16 resident warps per SM hides shared-memory latency less well.
  const int64_t fit = int64_t(lim.smem_per_sm / (smem + 1024));
  const int64_t resident = per_sm < fit ? per_sm : fit;
  const double occupancy_penalty = resident * (kWideConv2dThreads / 32) < 16 ? 1.15 : 1.0;
  const double cost = double(per_sm) * (iters * item + stage) * occupancy_penalty;
  if (p) {
    p->kt = kt;
    p->kg = kg;
    p->ti = ti;
    p->tj = tj;
    p->tiles_i = tiles_i;
    p->tiles_j = tiles_j;
    p->slabs = slabs;
    p->rows_in = int(rows_in);
    p->cols_in = int(cols_in);
    p->pitch = pitch;
    p->blocks = blocks;
    p->smem_bytes = smem;
    p->cost = cost;
  }
  return cost;
}

// Picks kt in {16, 4} (only `only_kt` if non-zero), kg in 1..16, the tile; false if nothing fits
// (cudaErrorInvalidValue).
inline bool wc2d_make_plan(const WideConv2dShape& s, const WideConv2dGeometry& g,
                           const WideConv2dDeviceLimits& lim, WideConv2dPlan* best,
                           int only_kt = 0) {
  if (s.n < 1 || s.k < 1 || lim.sms < 1) return false;
  // Tile width: whole quad rows when the tile's input rows fit in a quarter of shared memory
  // (contiguous stores), else halve.
  int tj = g.qw;
  while (tj > 1 && size_t(s.c) * size_t(wc2d_tile_rows_in(s, 1)) *
                           size_t(round_up<int64_t>(wc2d_tile_cols_in(s, tj), 2)) * sizeof(float) >
                       lim.smem_per_block / 4)
    tj = cdiv(tj, 2);
  const int64_t cols_in = wc2d_tile_cols_in(s, tj);
  if (cols_in > (1 << 24)) return false;
  double conflicts = 1.0;
  const int pitch = wc2d_pick_pitch(s, (g.qh < 64 ? g.qh : 64) * tj, tj, int(cols_in), &conflicts);
  bool found = false;
  best->cost = 0.0;
  const int kts[2] = {16, 4};
  for (int a = 0; a < 2; ++a) {
    const int kt = kts[a];
    if (only_kt != 0 && kt != only_kt) continue;
    const int kg_max = cdiv(s.k, kt) < 16 ? cdiv(s.k, kt) : 16;
    int last_ti = -1;
    for (int m = 1; m <= 16; ++m) {  // tile heights that cut the quad rows into m tiles
      const int ti = cdiv(g.qh, m);
      if (ti == last_ti) continue;
      last_ti = ti;
      for (int kg = 1; kg <= kg_max; ++kg) {
        WideConv2dPlan p;
        const double c = wc2d_plan_cost(s, g, lim, kt, kg, ti, tj, pitch, conflicts, &p);
        if (c >= 0.0 && (!found || c < best->cost)) {
          *best = p;
          found = true;
        }
      }
    }
  }
  return found;
}

// ---------------------------------------------------------------------------------------------
// Per-block decomposition. Block ids run over (n, slab, tile_i, tile_j), tiles fastest, so blocks
// of one image and slab are adjacent (the input and weights they share stay in L2).
// ---------------------------------------------------------------------------------------------
struct WideConv2dBlock {
  int n;         // image
  int k0, kge;   // first output channel of the slab, channel groups of KT in this block
  int i0, j0;    // first quad of the tile
  int tie, tje;  // quads in this tile (edge tiles are smaller)
  int y0, x0;    // input coordinates of staged tile element (0, 0) (may be negative: padding)
};

SK_HD WideConv2dBlock wc2d_block(const WideConv2dShape& s, const WideConv2dGeometry& g,
                                 const WideConv2dPlan& p, int64_t block) {
  WideConv2dBlock b;
  const int bj = int(block % p.tiles_j);
  block /= p.tiles_j;
  const int bi = int(block % p.tiles_i);
  block /= p.tiles_i;
  const int slab = int(block % p.slabs);
  b.n = int(block / p.slabs);
  b.k0 = slab * p.kg * p.kt;
  const int groups_left = cdiv(s.k - b.k0, p.kt);
  b.kge = groups_left < p.kg ? groups_left : p.kg;
  b.i0 = bi * p.ti;
  b.j0 = bj * p.tj;
  b.tie = g.qh - b.i0 < p.ti ? g.qh - b.i0 : p.ti;
  b.tje = g.qw - b.j0 < p.tj ? g.qw - b.j0 : p.tj;
  b.y0 = 2 * b.i0 * s.stride_h - s.pad_h;
  b.x0 = 2 * b.j0 * s.stride_w - s.pad_w;
  return b;
}

// ---------------------------------------------------------------------------------------------
// Staging (global -> shared, converted to fp32). `start`/`step` split the work over the block's
// threads (the host test passes 0/1).
// ---------------------------------------------------------------------------------------------
template <int KT, typename T>
SK_HD void wc2d_stage_weights(float* __restrict__ sw, float* __restrict__ sb,
                              const T* __restrict__ w, const T* __restrict__ bias,
                              const WideConv2dShape& s, const WideConv2dBlock& b, int start,
                              int step) {
  const int crs = s.c * s.r * s.s;
  const int n_w = b.kge * KT * crs;
  // e walks the slab's weights in global order (coalesced reads); channels past K read as 0.
  for (int e = start; e < n_w; e += step) {
    const int kk = e / crs;
    const int rem = e - kk * crs;
    const int grp = kk / KT;
    const int q = kk - grp * KT;
    const int k = b.k0 + kk;
    sw[(grp * crs + rem) * KT + q] = k < s.k ? to_float(w[int64_t(k) * crs + rem]) : 0.0f;
  }
  for (int e = start; e < b.kge * KT; e += step) {
    const int k = b.k0 + e;
    sb[e] = (bias != nullptr && k < s.k) ? to_float(bias[k]) : 0.0f;
  }
}

// Input tile: C x rows_in x pitch; element (c, y, x) is input (n, c, y0 + y, x0 + x), zero outside
// the image (this is the zero padding) and past cols_in. Rows go to `row_start/row_step` (warps),
// columns to `col_start/col_step` (lanes): consecutive lanes read consecutive addresses.
template <typename T>
SK_HD void wc2d_stage_input(float* __restrict__ sx, const T* __restrict__ x,
                            const WideConv2dShape& s, const WideConv2dBlock& b, int rows_in,
                            int cols_in, int pitch, int row_start, int row_step, int col_start,
                            int col_step) {
  const T* xn = x + int64_t(b.n) * s.c * s.h * s.w;
  for (int cy = row_start; cy < s.c * rows_in; cy += row_step) {
    const int c = cy / rows_in;
    const int gy = b.y0 + (cy - c * rows_in);
    float* dst = sx + cy * pitch;
    if (gy < 0 || gy >= s.h) {
      for (int xx = col_start; xx < pitch; xx += col_step) dst[xx] = 0.0f;
      continue;
    }
    const T* src = xn + (int64_t(c) * s.h + gy) * s.w;
    for (int xx = col_start; xx < pitch; xx += col_step) {
      const int gx = b.x0 + xx;
      dst[xx] = (xx < cols_in && gx >= 0 && gx < s.w) ? to_float(src[gx]) : 0.0f;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Per-item math: acc[2*di+dj][q] = sum_{c,r,s} x[2i+di, 2j+dj receptive field] * w[q][c][r][s].
// xs: staged tile at (c = 0, row 2*ti*sh, col 2*tj*sw); wg: the item's channel group.
// fp32 FMA throughout (exact fma, no TF32), summed over c, r, s in that order.
// ---------------------------------------------------------------------------------------------
SK_HD float wc2d_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

SK_HD float4 wc2d_ld4(const float* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const float4*>(p);
#else
  float4 v;
  v.x = p[0];
  v.y = p[1];
  v.z = p[2];
  v.w = p[3];
  return v;
#endif
}

SK_HD float2 wc2d_ld2(const float* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const float2*>(p);
#else
  float2 v;
  v.x = p[0];
  v.y = p[1];
  return v;
#endif
}

// acc[o][q] += xv[o] * wq for the four quad outputs o and the KT channels of a (c, r, s).
template <int KT>
SK_HD void wc2d_fma_quad(float (&acc)[4][KT], const float* __restrict__ wp, float x00, float x01,
                         float x10, float x11) {
  SK_UNROLL
  for (int q4 = 0; q4 < KT / 4; ++q4) {
    const float4 wv = wc2d_ld4(wp + 4 * q4);
    const float wq[4] = {wv.x, wv.y, wv.z, wv.w};
    SK_UNROLL
    for (int e = 0; e < 4; ++e) {
      const int q = 4 * q4 + e;
      acc[0][q] = wc2d_fma(x00, wq[e], acc[0][q]);
      acc[1][q] = wc2d_fma(x01, wq[e], acc[1][q]);
      acc[2][q] = wc2d_fma(x10, wq[e], acc[2][q]);
      acc[3][q] = wc2d_fma(x11, wq[e], acc[3][q]);
    }
  }
}

template <int KT, int RC, int SC>
SK_HD void wc2d_quad_conv(float (&acc)[4][KT], const float* __restrict__ xs,
                          const float* __restrict__ wg, const WideConv2dShape& s, int rows_in,
                          int pitch) {
  const int plane = rows_in * pitch;
  const int row_di = s.stride_h * pitch;  // di = 1
  const int row_r = s.dil_h * pitch;      // r -> r + 1
  if constexpr (RC > 0) {
    // Unit column stride and dilation: conv columns 2j, 2j+1 at tap s read input columns
    // 2j+s, 2j+s+1, so one row of SC+1 values (SC odd: (SC+1)/2 aligned float2 reads, 2tj is
    // even and the pitch is even) serves every tap of both columns.
    static_assert(SC % 2 == 1, "the float2 row reads assume an odd kernel width");
    for (int c = 0; c < s.c; ++c) {
      const float* xc = xs + c * plane;
      const float* wc = wg + c * (RC * SC * KT);
      // Rolled over r: one r is S*(4*KT FFMA + KT/4 LDS.128) + S+1 LDS.64 (KT = 16, 5x5: ~350
      // instructions, 5.6 KB of code); unrolling r and c as well would make the hot loop ~27 KB
      // and risk instruction-cache misses for no fewer FFMA.
      SK_NO_UNROLL
      for (int r = 0; r < RC; ++r) {
        const float* r0 = xc + r * row_r;
        const float* r1 = r0 + row_di;
        float a[SC + 1], b[SC + 1];
        SK_UNROLL
        for (int m = 0; m < (SC + 1) / 2; ++m) {
          const float2 va = wc2d_ld2(r0 + 2 * m);
          const float2 vb = wc2d_ld2(r1 + 2 * m);
          a[2 * m] = va.x;
          a[2 * m + 1] = va.y;
          b[2 * m] = vb.x;
          b[2 * m + 1] = vb.y;
        }
        SK_UNROLL
        for (int t = 0; t < SC; ++t)
          wc2d_fma_quad<KT>(acc, wc + (r * SC + t) * KT, a[t], a[t + 1], b[t], b[t + 1]);
      }
    }
  } else {
    const int col_dj = s.stride_w;
    for (int c = 0; c < s.c; ++c) {
      const float* xc = xs + c * plane;
      for (int r = 0; r < s.r; ++r) {
        const float* r0 = xc + r * row_r;
        const float* r1 = r0 + row_di;
        const float* wp = wg + (c * s.r + r) * s.s * KT;
        for (int t = 0; t < s.s; ++t) {
          const int col = t * s.dil_w;
          wc2d_fma_quad<KT>(acc, wp + t * KT, r0[col], r0[col + col_dj], r1[col],
                            r1[col + col_dj]);
        }
      }
    }
  }
}

// ReLU that keeps NaN (as torch.relu does; fmaxf(NaN, 0) would return 0).
SK_HD float wc2d_relu(float v) { return (v > 0.0f || is_nan(v)) ? v : 0.0f; }

// Bias, ReLU, pool, store for one item. With pool == 2 the four values are first rounded to the
// storage type, so the max and its index are those of the tensor conv -> relu -> max_pool2d would
// see (ties after rounding go to the first in scan order, as in the reference). Index: first max
// in scan order (0,0),(0,1),(1,0),(1,1) with `v > best || isnan(v)`; 4 when relu and max <= 0.
// pair_stores: OW even and `out` 2-element aligned, so pool == 1 writes (2j, 2j+1) as one store.
template <int KT, typename T>
SK_HD void wc2d_epilogue(const float (&acc)[4][KT], const float* __restrict__ sbg,
                         T* __restrict__ out, uint8_t* __restrict__ idx,
                         const WideConv2dShape& s, const WideConv2dGeometry& g, int n, int kbase,
                         int i, int j, bool pair_stores) {
  SK_UNROLL
  for (int q = 0; q < KT; ++q) {
    const int k = kbase + q;
    if (k >= s.k) break;
    const float bq = sbg[q];
    const int64_t plane = int64_t(n) * s.k + k;
    if (s.pool == 2) {
      float best = round_to<T>(acc[0][q] + bq);
      if (s.relu) best = wc2d_relu(best);
      int pos = 0;
      SK_UNROLL
      for (int o = 1; o < 4; ++o) {
        float v = round_to<T>(acc[o][q] + bq);
        if (s.relu) v = wc2d_relu(v);
        if (v > best || is_nan(v)) {
          best = v;
          pos = o;
        }
      }
      const int64_t off = (plane * g.ph + i) * g.pw + j;
      out[off] = from_float<T>(best);
      if (s.write_indices)
        idx[off] = static_cast<uint8_t>((s.relu && !(best > 0.0f) && !is_nan(best)) ? 4 : pos);
    } else {
      float v[4];
      SK_UNROLL
      for (int o = 0; o < 4; ++o) v[o] = s.relu ? wc2d_relu(acc[o][q] + bq) : acc[o][q] + bq;
      const int oy = 2 * i, ox = 2 * j;
      SK_UNROLL
      for (int di = 0; di < 2; ++di) {
        if (oy + di >= g.oh) break;
        T* row = out + (plane * g.oh + oy + di) * g.ow + ox;
        if (ox + 1 < g.ow) {
          if (pair_stores) {
            store2<T>(row, v[2 * di], v[2 * di + 1]);
          } else {
            row[0] = from_float<T>(v[2 * di]);
            row[1] = from_float<T>(v[2 * di + 1]);
          }
        } else {
          row[0] = from_float<T>(v[2 * di]);
        }
      }
    }
  }
}

// The item loop of one block: items it = start, start + step, ... over (group, quad), quads
// fastest. sw, sb, sx: the staged weights, bias and input tile.
template <typename T, int KT, int RC, int SC>
SK_HD void wc2d_block_items(const float* __restrict__ sw, const float* __restrict__ sb,
                            const float* __restrict__ sx, T* __restrict__ out,
                            uint8_t* __restrict__ idx, const WideConv2dShape& s,
                            const WideConv2dGeometry& g, const WideConv2dPlan& p,
                            const WideConv2dBlock& b, bool pair_stores, int start, int step) {
  const int crs = s.c * s.r * s.s;
  const int tp = b.tie * b.tje;
  const int items = tp * b.kge;
  for (int it = start; it < items; it += step) {
    const int grp = it / tp;
    const int pq = it - grp * tp;
    const int ti = pq / b.tje;
    const int tj = pq - ti * b.tje;
    float acc[4][KT];
    SK_UNROLL
    for (int o = 0; o < 4; ++o)
      SK_UNROLL
      for (int q = 0; q < KT; ++q) acc[o][q] = 0.0f;
    const float* xs = sx + (2 * ti * s.stride_h) * p.pitch + 2 * tj * s.stride_w;
    wc2d_quad_conv<KT, RC, SC>(acc, xs, sw + grp * crs * KT, s, p.rows_in, p.pitch);
    wc2d_epilogue<KT, T>(acc, sb + grp * KT, out, idx, s, g, b.n, b.k0 + grp * KT, b.i0 + ti,
                         b.j0 + tj, pair_stores);
  }
}

}  // namespace cuda
}  // namespace shallowkern
