// Host test of the wide_conv2d CUDA kernel's index arithmetic, on a machine without a GPU.
//
// The kernel (csrc/cuda/wide_conv2d.cu) is a thin __global__ shell around SK_HD functions in
// csrc/cuda/wide_conv2d.h: the plan, the block decomposition, the shared-memory staging, the
// per-item math and the epilogue. This test runs those same functions on the CPU, block by block
// (one "thread": start 0, step 1) on exactly-sized shared-memory buffers, and compares with a
// naive float64 conv -> relu -> max-pool: values, indices (away from near-ties), every output
// written (outputs poisoned first), and the plan's invariants. Build with -fsanitize=address to
// also catch any read past the staged tile. What it cannot see: the thread mapping, the
// __syncthreads, vector-load alignment on the device, and fp16/bf16 storage (fp32 only here).
//
//   g++ -std=c++17 -O2 -Wall -Wextra -I csrc/include -I csrc/cuda -I /usr/local/cuda/include
//       csrc/tests/test_cuda_indexing.cpp -o /tmp/test_cuda_indexing && /tmp/test_cuda_indexing
//   (add -fsanitize=address,undefined -g for the bounds check; no CUDA runtime library needed)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "expect.h"
#include "wide_conv2d.h"

namespace skc = shallowkern::cuda;

namespace {

const skc::WideConv2dDeviceLimits kH100 = {132, 227 * 1024, 228 * 1024};
// A small device: 48 KB per block forces spatial tiles and narrow slabs.
const skc::WideConv2dDeviceLimits kSmall = {4, 48 * 1024, 100 * 1024};

skc::WideConv2dShape make_shape(int n, int c, int h, int w, int k, int r, int s, int sh, int sw,
                                int ph, int pw, int dh, int dw, int pool, bool relu, bool idx) {
  skc::WideConv2dShape x;
  x.n = n, x.c = c, x.h = h, x.w = w, x.k = k, x.r = r, x.s = s;
  x.stride_h = sh, x.stride_w = sw, x.pad_h = ph, x.pad_w = pw, x.dil_h = dh, x.dil_w = dw;
  x.pool = pool, x.relu = relu, x.write_indices = idx;
  return x;
}

template <int KT, int RC, int SC>
void run_block(const skc::WideConv2dShape& s, const skc::WideConv2dGeometry& g,
               const skc::WideConv2dPlan& p, int64_t block, const float* x, const float* w,
               const float* bias, float* out, uint8_t* idx, bool pair_stores) {
  const int crs = s.c * s.r * s.s;
  // Exactly the kernel's dynamic shared memory, poisoned: an unstaged read shows up as NaN (and
  // as an ASan error past the end).
  std::vector<float> smem(p.smem_bytes / sizeof(float), std::nanf(""));
  float* sw = smem.data();
  float* sb = smem.data() + skc::wc2d_smem_bias_offset(p.kg, KT, crs);
  float* sx = smem.data() + skc::wc2d_smem_input_offset(p.kg, KT, crs);
  const skc::WideConv2dBlock b = skc::wc2d_block(s, g, p, block);
  skc::wc2d_stage_weights<KT>(sw, sb, w, bias, s, b, 0, 1);
  skc::wc2d_stage_input(sx, x, s, b, p.rows_in, p.cols_in, p.pitch, 0, 1, 0, 1);
  skc::wc2d_block_items<float, KT, RC, SC>(sw, sb, sx, out, idx, s, g, p, b, pair_stores, 0, 1);
}

// The launcher's dispatch, on the host.
void emulate(const skc::WideConv2dShape& s, const skc::WideConv2dGeometry& g,
             const skc::WideConv2dPlan& p, const float* x, const float* w, const float* bias,
             float* out, uint8_t* idx) {
  const int path = skc::wc2d_fast_path(s);
  const bool pair = s.pool == 1 && g.ow % 2 == 0;
  for (int64_t blk = 0; blk < p.blocks; ++blk) {
    if (p.kt == 16) {
      if (path == 5) run_block<16, 5, 5>(s, g, p, blk, x, w, bias, out, idx, pair);
      else if (path == 3) run_block<16, 3, 3>(s, g, p, blk, x, w, bias, out, idx, pair);
      else run_block<16, 0, 0>(s, g, p, blk, x, w, bias, out, idx, pair);
    } else {
      if (path == 5) run_block<4, 5, 5>(s, g, p, blk, x, w, bias, out, idx, pair);
      else if (path == 3) run_block<4, 3, 3>(s, g, p, blk, x, w, bias, out, idx, pair);
      else run_block<4, 0, 0>(s, g, p, blk, x, w, bias, out, idx, pair);
    }
  }
}

void check_plan(const skc::WideConv2dShape& s, const skc::WideConv2dGeometry& g,
                const skc::WideConv2dDeviceLimits& lim, const skc::WideConv2dPlan& p) {
  EXPECT(p.kt == 4 || p.kt == 16, "kt=%d", p.kt);
  EXPECT(p.kg >= 1 && p.kg <= 16, "kg=%d", p.kg);
  EXPECT(p.smem_bytes <= lim.smem_per_block, "smem %zu > %zu", p.smem_bytes, lim.smem_per_block);
  EXPECT(p.pitch % 2 == 0 && p.pitch >= p.cols_in, "pitch %d cols_in %d", p.pitch, p.cols_in);
  EXPECT(int64_t(p.tiles_i) * p.ti >= g.qh && int64_t(p.tiles_i - 1) * p.ti < g.qh, "tiles_i");
  EXPECT(int64_t(p.tiles_j) * p.tj >= g.qw && int64_t(p.tiles_j - 1) * p.tj < g.qw, "tiles_j");
  EXPECT(int64_t(p.slabs) * p.kg * p.kt >= s.k && int64_t(p.slabs - 1) * p.kg * p.kt < s.k,
         "slabs");
  EXPECT(p.blocks == int64_t(s.n) * p.slabs * p.tiles_i * p.tiles_j, "blocks");
  EXPECT(p.rows_in == skc::wc2d_tile_rows_in(s, p.ti), "rows_in");
  const int crs = s.c * s.r * s.s;
  EXPECT(skc::wc2d_smem_input_offset(p.kg, p.kt, crs) % 4 == 0, "input section not 16B aligned");
  EXPECT(int64_t(p.smem_bytes) == 4 * (skc::wc2d_smem_input_offset(p.kg, p.kt, crs) +
                                       int64_t(s.c) * p.rows_in * p.pitch),
         "smem size");
}

// Runs one case; returns false (and counts failures) on mismatch.
// integer_data: small integers, so fp32 is exact and ties are frequent: values must match exactly
// and indices everywhere (first maximum in scan order). nan_data: a few input NaNs (the NaN wins
// the pool, survives the ReLU, and its index is never 4).
void run_case(const skc::WideConv2dShape& s, const skc::WideConv2dDeviceLimits& lim,
              bool with_bias, unsigned seed, bool integer_data = false, bool nan_data = false) {
  skc::WideConv2dGeometry g;
  EXPECT(skc::wc2d_geometry(s, &g), "geometry rejected");
  skc::WideConv2dPlan p;
  const bool planned = skc::wc2d_make_plan(s, g, lim, &p);
  EXPECT(planned, "no plan");
  if (!planned) return;
  check_plan(s, g, lim, p);

  std::mt19937 gen(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t(s.n) * s.c * s.h * s.w), w(size_t(s.k) * s.c * s.r * s.s),
      bias(s.k);
  std::uniform_int_distribution<int> small(-2, 2);
  for (auto* t : {&x, &w, &bias})
    for (auto& v : *t) v = integer_data ? float(small(gen)) : nd(gen);
  if (nan_data)
    for (size_t e = 0; e < x.size(); e += 1 + gen() % 97) x[e] = std::nanf("");
  const size_t n_out = size_t(s.n) * s.k * g.ph * g.pw;
  std::vector<float> out(n_out, std::nanf(""));
  std::vector<uint8_t> idx(s.write_indices ? n_out : 0, 255);
  emulate(s, g, p, x.data(), w.data(), with_bias ? bias.data() : nullptr, out.data(),
          s.write_indices ? idx.data() : nullptr);

  const int crs = s.c * s.r * s.s;
  const double tol = integer_data ? 0.0 : 1e-5 * std::sqrt(double(crs));
  auto conv = [&](int n, int k, int oy, int ox) {
    double acc = with_bias ? bias[k] : 0.0;
    for (int c = 0; c < s.c; ++c)
      for (int r = 0; r < s.r; ++r)
        for (int t = 0; t < s.s; ++t) {
          const int iy = oy * s.stride_h - s.pad_h + r * s.dil_h;
          const int ix = ox * s.stride_w - s.pad_w + t * s.dil_w;
          if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
          acc += double(x[((size_t(n) * s.c + c) * s.h + iy) * s.w + ix]) *
                 double(w[((size_t(k) * s.c + c) * s.r + r) * s.s + t]);
        }
    return s.relu ? std::max(acc, 0.0) : acc;
  };
  int bad = 0;
  for (int n = 0; n < s.n; ++n)
    for (int k = 0; k < s.k; ++k)
      for (int i = 0; i < g.ph; ++i)
        for (int j = 0; j < g.pw; ++j) {
          const size_t off = ((size_t(n) * s.k + k) * g.ph + i) * g.pw + j;
          double ref;
          int ref_pos = 0;
          double gap = 1e30;
          if (s.pool == 2) {
            double v[4];
            for (int o = 0; o < 4; ++o) v[o] = conv(n, k, 2 * i + o / 2, 2 * j + o % 2);
            ref = v[0];
            for (int o = 1; o < 4; ++o)
              if (v[o] > ref || std::isnan(v[o])) ref = v[o], ref_pos = o;
            for (int o = 0; o < 4; ++o)
              if (o != ref_pos) gap = std::min(gap, ref - v[o]);
            if (std::isnan(ref)) gap = 1e30;  // exact: the last NaN in scan order
            if (s.relu && ref <= 0.0) ref_pos = 4;
          } else {
            ref = conv(n, k, i, j);
          }
          const double got = out[off];
          const bool ok = std::isnan(ref) ? std::isnan(got)
                                          : std::fabs(got - ref) <= tol + 1e-5 * std::fabs(ref);
          if (!ok) {
            if (bad++ < 5)
              std::fprintf(stderr, "  out[%d,%d,%d,%d] = %.8g, reference %.8g\n", n, k, i, j,
                           got, ref);
          }
          if (s.write_indices) {
            const bool tie = !integer_data && !std::isnan(ref) &&
                             (gap < 100 * tol || (s.relu && std::fabs(ref) < 100 * tol));
            if (idx[off] > 4 || (!tie && idx[off] != ref_pos)) {
              if (bad++ < 5)
                std::fprintf(stderr, "  idx[%d,%d,%d,%d] = %d, reference %d\n", n, k, i, j,
                             idx[off], ref_pos);
            }
          }
        }
  EXPECT(bad == 0,
         "%d mismatches: N=%d C=%d H=%d W=%d K=%d R=%d S=%d stride=(%d,%d) pad=(%d,%d) "
         "dil=(%d,%d) pool=%d relu=%d idx=%d bias=%d | plan kt=%d kg=%d tile=%dx%d (%dx%d tiles) "
         "slabs=%d smem=%zu",
         bad, s.n, s.c, s.h, s.w, s.k, s.r, s.s, s.stride_h, s.stride_w, s.pad_h, s.pad_w,
         s.dil_h, s.dil_w, s.pool, int(s.relu), int(s.write_indices), int(with_bias), p.kt, p.kg,
         p.ti, p.tj, p.tiles_i, p.tiles_j, p.slabs, p.smem_bytes);
}

void test_geometry_rejects() {
  skc::WideConv2dGeometry g;
  EXPECT(!skc::wc2d_geometry(make_shape(1, 17, 8, 8, 4, 3, 3, 1, 1, 0, 0, 1, 1, 1, 0, 0), &g),
         "C=17 accepted");
  EXPECT(!skc::wc2d_geometry(make_shape(1, 3, 4, 4, 4, 5, 5, 1, 1, 0, 0, 1, 1, 1, 0, 0), &g),
         "kernel larger than input accepted");
  EXPECT(!skc::wc2d_geometry(make_shape(1, 3, 5, 5, 4, 5, 5, 1, 1, 0, 0, 1, 1, 2, 0, 0), &g),
         "pool 2 on a 1x1 conv output accepted");
  EXPECT(!skc::wc2d_geometry(make_shape(1, 3, 8, 8, 4, 3, 3, 1, 1, 0, 0, 1, 1, 1, 0, 1), &g),
         "indices without pool accepted");
  EXPECT(!skc::wc2d_geometry(make_shape(1, 3, 8, 8, 4, 3, 3, 0, 1, 0, 0, 1, 1, 1, 0, 0), &g),
         "stride 0 accepted");
  EXPECT(!skc::wc2d_geometry(make_shape(1, 3, 8, 8, 4, 3, 3, 1, 1, 0, 0, 1, 1, 3, 0, 0), &g),
         "pool 3 accepted");
  EXPECT(skc::wc2d_geometry(make_shape(1, 3, 31, 31, 4, 5, 5, 1, 1, 0, 0, 1, 1, 2, 0, 0), &g) &&
             g.oh == 27 && g.ph == 13 && g.qh == 13,
         "31x31 5x5 pool 2");
  EXPECT(skc::wc2d_geometry(make_shape(1, 3, 31, 31, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 0), &g) &&
             g.oh == 31 && g.ph == 31 && g.qh == 16,
         "31x31 3x3 pad 1 pool 1");
}

void print_lenet_plans() {
  std::printf("plans for LeNet conv1 (x N x 3 x 32 x 32, w d1 x 3 x 5 x 5, pool 2) on %d SMs:\n",
              kH100.sms);
  for (int n : {128, 512})
    for (int d1 : {6, 64, 256, 1024, 2048}) {
      const auto s = make_shape(n, 3, 32, 32, d1, 5, 5, 1, 1, 0, 0, 1, 1, 2, true, true);
      skc::WideConv2dGeometry g;
      skc::WideConv2dPlan p;
      if (!skc::wc2d_geometry(s, &g) || !skc::wc2d_make_plan(s, g, kH100, &p)) {
        EXPECT(false, "no plan for LeNet N=%d d1=%d", n, d1);
        continue;
      }
      check_plan(s, g, kH100, p);
      // Modelled efficiency: the work of KT = 16 items spread perfectly over the SMs, over the
      // modelled cost of the plan.
      const double items = double(n) * g.qh * g.qw * d1 / 16.0;
      const double ideal = items * skc::wc2d_item_cost(s, 16, 1.0) /
                           (double(kH100.sms) * skc::kWideConv2dThreads);
      double conflicts = 0;
      skc::wc2d_pick_pitch(s, p.ti * p.tj, p.tj, p.cols_in, &conflicts);
      skc::WideConv2dPlan p16;  // the best KT = 16 plan, for comparison
      const bool has16 = skc::wc2d_make_plan(s, g, kH100, &p16, 16);
      std::printf("  N=%3d d1=%4d: kt=%2d kg=%2d slab=%3d tile=%dx%d pitch=%d (conflicts x%.2f) "
                  "blocks=%lld smem=%zu B, modelled efficiency %.0f%% (best kt=16: %.0f%%)\n",
                  n, d1, p.kt, p.kg, p.kt * p.kg, p.ti, p.tj, p.pitch, conflicts,
                  (long long)p.blocks, p.smem_bytes, 100.0 * ideal / p.cost,
                  has16 ? 100.0 * ideal / p16.cost : 0.0);
    }
}

}  // namespace

int main() {
  test_geometry_rejects();

  // Hand-picked: every kernel path (5x5 / 3x3 unit-stride, generic), pool 1 / 2, relu, bias,
  // odd sizes, padding, stride, dilation, K not a multiple of the slab, C = 1..16.
  struct Case {
    skc::WideConv2dShape s;
    bool bias;
  };
  const Case cases[] = {
      {make_shape(2, 3, 32, 32, 20, 5, 5, 1, 1, 0, 0, 1, 1, 2, true, true), true},    // LeNet
      {make_shape(1, 3, 31, 31, 127, 5, 5, 1, 1, 2, 2, 1, 1, 2, true, true), true},   // odd, pad
      {make_shape(2, 1, 31, 31, 6, 5, 5, 1, 1, 0, 0, 1, 1, 2, false, true), false},   // no relu
      {make_shape(1, 3, 31, 31, 1, 5, 5, 1, 1, 0, 0, 1, 1, 1, true, false), true},    // K = 1
      {make_shape(1, 3, 31, 31, 33, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, false), true},   // 3x3 pool1
      {make_shape(1, 3, 32, 32, 17, 3, 3, 1, 1, 0, 0, 1, 1, 1, false, false), true},  // even OW
      {make_shape(1, 4, 31, 31, 40, 3, 3, 1, 1, 0, 0, 1, 1, 2, true, true), true},    // 3x3 pool2
      {make_shape(1, 3, 31, 31, 19, 5, 5, 2, 2, 1, 1, 1, 1, 2, true, true), true},    // stride 2
      {make_shape(1, 3, 31, 31, 9, 3, 3, 1, 1, 2, 2, 2, 2, 2, true, true), false},    // dilation
      {make_shape(1, 2, 31, 29, 21, 4, 2, 2, 1, 1, 0, 1, 2, 1, false, false), true},  // even RxS
      {make_shape(2, 3, 31, 31, 23, 1, 1, 1, 1, 0, 0, 1, 1, 2, true, true), true},    // 1x1
      {make_shape(1, 3, 31, 31, 5, 5, 5, 1, 1, 0, 0, 3, 1, 2, true, true), true},     // dil_h 3
      {make_shape(1, 3, 30, 31, 12, 5, 5, 1, 1, 0, 0, 1, 1, 2, true, true), true},    // even H
      {make_shape(1, 16, 15, 17, 24, 5, 5, 1, 1, 2, 2, 1, 1, 2, true, true), true},   // C = 16
      {make_shape(1, 3, 2, 2, 3, 1, 1, 1, 1, 0, 0, 1, 1, 2, true, true), true},       // tiny
      {make_shape(1, 3, 1, 1, 3, 1, 1, 1, 1, 0, 0, 1, 1, 1, true, false), true},      // 1x1 image
      {make_shape(1, 3, 9, 9, 8, 5, 5, 1, 1, 4, 4, 1, 1, 2, true, true), true},       // pad > H/3
      {make_shape(1, 3, 31, 31, 1000, 5, 5, 1, 1, 0, 0, 1, 1, 2, true, true), true},  // wide
  };
  unsigned seed = 1;
  for (const auto& c : cases) {
    run_case(c.s, kH100, c.bias, seed++);
    run_case(c.s, kSmall, c.bias, seed++);
  }
  // Exact arithmetic with many ties: tie-breaking and the relu index 4, on every path.
  for (const auto& c : cases) run_case(c.s, kH100, c.bias, seed++, /*integer_data=*/true);

  // NaN inputs.
  for (const auto& c : cases) run_case(c.s, kH100, c.bias, seed++, false, /*nan_data=*/true);

  // Large images: spatial tiles (rows and, on the small device, columns).
  run_case(make_shape(1, 3, 131, 157, 20, 5, 5, 1, 1, 2, 2, 1, 1, 2, true, true), kSmall, true, 99);
  run_case(make_shape(1, 3, 67, 600, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, false), kSmall, true, 98);
  run_case(make_shape(1, 4, 40, 900, 8, 5, 5, 2, 2, 0, 0, 1, 1, 2, false, true), kSmall, false, 97);

  // Random small shapes.
  std::mt19937 gen(1234);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); };
  int random_cases = 0;
  for (int t = 0; t < 300 && random_cases < 150; ++t) {
    auto s = make_shape(uni(1, 2), uni(1, 5), uni(1, 24), uni(1, 24), uni(1, 40), uni(1, 6),
                        uni(1, 6), uni(1, 3), uni(1, 3), uni(0, 3), uni(0, 3), uni(1, 2),
                        uni(1, 2), uni(1, 2), uni(0, 1) == 1, false);
    if (uni(0, 3) == 0) s.r = s.s = (uni(0, 1) ? 5 : 3), s.stride_w = s.dil_w = 1;  // fast paths
    s.write_indices = s.pool == 2 && uni(0, 1) == 1;
    skc::WideConv2dGeometry g;
    if (!skc::wc2d_geometry(s, &g)) continue;
    ++random_cases;
    run_case(s, uni(0, 1) ? kH100 : kSmall, uni(0, 1) == 1, 1000 + t);
  }

  print_lenet_plans();
  if (sk_test::failures) {
    std::printf("test_cuda_indexing: %d FAILED checks\n", sk_test::failures);
    return 1;
  }
  std::printf("test_cuda_indexing: all checks passed (%d random shapes)\n", random_cases);
  return 0;
}
