// C++ CPU kernels of shallowkern::quadric_linear (forward) and shallowkern::quadric_linear_backward
// (schemas in csrc/registration.cpp; C++ autograd in quadric_linear_autograd.cpp), float32 and
// float64 natively, float16/bfloat16 computed in float32, for the three forms of
// shallowkern/ops/quadric_linear.py (x: (B, n), K outputs, T = n(n+1)/2, r = rank):
//
//   diagonal  y = (x*x) Wq^T + x W^T + b
//   full      y_k = sum_{i<=j} P[k, t(i,j)] x_i x_j + W_k x + b_k      (P: packed triangle)
//   lowrank   y_k = sum_s (Wa x)_{sK+k} (Wb x)_{sK+k} + W_k x + b_k
//
// Backward (gy = dL/dy):
//   diagonal  [gq | gl] = gy [Wq | W];  gx = gl + 2 x*gq;  gWq = gy^T (x*x), gW = gy^T x
//   full      gP[:, t] = gy^T Z[:, t] with Z[b, t(i,j)] = x_i x_j;  G = gy P;
//             gx_i += sum_{j>=i} G[t(i,j)] x_j,  gx_j += G[t(i,j)] x_i;  gW = gy^T x
//   lowrank   ha = x Wa^T, hb = x Wb^T (saved by the training forward, else recomputed);
//             da = gy*hb, db = gy*ha (per rank);
//             gx = gy W + da Wa + db Wb;  gWa = da^T x, gWb = db^T x, gW = gy^T x
//   gbias = sum_b gy (all forms)
//
// Design. Everything that is O(B K n) or more is one MKL GEMM through ATen (multi-threaded by
// ATen's pool); the kernels here only build GEMM operands and epilogues, in parallel over rows.
// * diagonal: y = addmm(b, x, W^T) then y += (x*x) Wq^T in the same output (MKL beta = 1; no
//   intermediate B x K results, no add pass); the backward's input gradient is ONE GEMM
//   gy [Wq | W] (reduction K, 2n outputs) with the 2x* epilogue fused, then one GEMM per
//   weight gradient. (On GPU the Triton kernel squares x in its operand load instead.)
// * full: B x K x n is never built. The triangle is cut into chunks of whole rows (~kChunkCols
//   packed columns) and the batch into blocks of kRowBlock rows; per (chunk, block) the outer
//   products Z (block x chunk) are formed in a thread-local-sized buffer and multiplied by the
//   packed weight's columns (addmm_ accumulating into y): only the symmetric half is computed,
//   n(n+1)/2 multiply-adds per output instead of nn.Bilinear's n^2, and extra memory is
//   O(kRowBlock * kChunkCols) = O(B (n + K)) for B >= kRowBlock. The backward reuses the blocks:
//   gP[:, chunk] += gy_blk^T Z, G = gy_blk P[:, chunk], then a fused contraction into gx.
// * lowrank: three GEMMs on the same x (stacking the weights copied 3Kn values per call), then an
//   elementwise epilogue multiplies the factors and sums over the rank. The training forward
//   (_quadric_linear_lowrank_train) also returns the two factors, so the backward runs the six
//   GEMMs autograd of the composition runs, not eight.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "shallowkern/cpu/blas.h"

namespace shallowkern {
namespace {

constexpr int64_t kChunkCols = 4096;  // packed columns per chunk of the triangle (whole rows)
constexpr int64_t kRowBlock = 512;    // batch rows per block in the full form

const char* kOp = "quadric_linear";

struct RowChunk {
  int64_t i0, i1, t0, t1;  // triangle rows [i0, i1) = packed columns [t0, t1)
};

std::vector<RowChunk> row_chunks(int64_t n) {
  std::vector<RowChunk> out;
  int64_t i0 = 0, t0 = 0;
  while (i0 < n) {
    int64_t i1 = i0, t1 = t0;
    while (i1 < n && (t1 - t0 < kChunkCols || i1 == i0)) {
      t1 += n - i1;
      ++i1;
    }
    out.push_back({i0, i1, t0, t1});
    i0 = i1, t0 = t1;
  }
  return out;
}

void check_common(const at::Tensor& x, const at::Tensor& wq,
                  const std::optional<at::Tensor>& wq2, const at::Tensor& w,
                  const std::optional<at::Tensor>& bias, const std::string& form,
                  c10::string_view backend) {
  TORCH_CHECK(form == "diagonal" || form == "full" || form == "lowrank", kOp,
              ": form must be 'diagonal', 'full' or 'lowrank', got '", form, "'");
  TORCH_CHECK(backend.empty() || backend == "native" || backend == "triton" ||
                  backend == "reference",
              kOp, ": backend must be '', 'native', 'triton' or 'reference', got '",
              std::string(backend), "'");
  TORCH_CHECK(x.dim() == 2, kOp, ": input must be 2-D (B, n), got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), kOp,
              ": input must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK(w.dim() == 2 && w.size(1) == x.size(1), kOp, ": weight must be (K, ", x.size(1),
              "), got ", w.sizes());
  TORCH_CHECK(x.device().is_cpu(), kOp, ": input must be a CPU tensor, got ", x.device());
  const bool has_q2 = wq2.has_value() && wq2->defined();
  const bool has_b = bias.has_value() && bias->defined();
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == x.scalar_type() && t.device() == x.device(), kOp, ": ", name,
                " must be ", x.scalar_type(), " on ", x.device(), " like input, got ",
                t.scalar_type(), " on ", t.device());
  };
  same(wq, "weight_quad");
  same(w, "weight");
  if (has_q2) same(*wq2, "weight_quad2");
  if (has_b) {
    same(*bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == w.size(0), kOp, ": bias must be (",
                w.size(0), ",), got ", bias->sizes());
  }
  const int64_t n = x.size(1), k = w.size(0);
  TORCH_CHECK(form == "lowrank" || !has_q2, kOp,
              ": weight_quad2 is only used by form='lowrank'");
  if (form == "diagonal") {
    TORCH_CHECK(wq.sizes() == w.sizes(), kOp, ": diagonal weight_quad must be (", k, ", ", n,
                "), got ", wq.sizes());
  } else if (form == "full") {
    TORCH_CHECK(wq.dim() == 2 && wq.size(0) == k && wq.size(1) == n * (n + 1) / 2, kOp,
                ": full weight_quad must be (", k, ", ", n * (n + 1) / 2, "), got ", wq.sizes());
  } else {
    TORCH_CHECK(k > 0 && wq.dim() == 2 && wq.size(1) == n && wq.size(0) % k == 0 &&
                    wq.size(0) > 0, kOp, ": lowrank weight_quad must be (rank*", k, ", ", n,
                "), got ", wq.sizes());
    TORCH_CHECK(has_q2 && wq2->sizes() == wq.sizes(), kOp,
                ": lowrank needs weight_quad2 of weight_quad's shape ", wq.sizes());
  }
}

bool native_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble;
}

std::optional<at::Tensor> to_float(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  return t->to(at::kFloat);
}

at::Tensor linear_start(const at::Tensor& x, const at::Tensor& w,
                        const std::optional<at::Tensor>& bias) {
  return (bias.has_value() && bias->defined()) ? at::addmm(*bias, x, w.t()) : at::mm(x, w.t());
}

// Small products go straight to MKL (shallowkern/cpu/blas.h): through ATen each GEMM costs
// ~2-3 us of dispatch, which is most of a batch-32 layer (measured: the whole diagonal forward at
// B = 32, n = K = 64 took 11.7 us with two at::addmm, see docs/quadric.md).
using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

bool direct_gemm_ok(int64_t m, int64_t n, int64_t k) { return cpu::direct_gemm_ok(m, n, k); }

// Row-major C (M x N, ldc) = op(A) op(B) + beta C, straight to MKL (after direct_gemm_ok)
template <typename T>
void gemm(char ta, char tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  cpu::direct_gemm<T>(ta, tb, M, N, K, T(1), A, lda, B, ldb, beta, C, ldc);
}

template <typename T>
std::vector<T> squares(const T* x, int64_t count) {
  std::vector<T> sq(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) sq[i] = x[i] * x[i];
  return sq;
}

// The diagonal forward for small products: y = b + x W^T + (x*x) Wq^T with two direct GEMMs
// into one output and x*x in a stack-or-heap buffer (no ATen op at all).
at::Tensor diagonal_forward_small(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& w,
                                  const std::optional<at::Tensor>& bias) {
  const int64_t b = x.size(0), n = x.size(1), k = w.size(0);
  at::Tensor y = at::empty({b, k}, x.options());
  const bool has_bias = bias.has_value() && bias->defined();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "quadric_diag_small", [&] {
    // BLAS wants unit inner stride and a leading dimension >= n (a (1, n) view may have less)
    auto rows = [&](const at::Tensor& t) {
      return t.stride(1) == 1 && t.stride(0) >= n ? t : t.contiguous();
    };
    const at::Tensor wc = rows(w), qc = rows(wq);
    scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t beta = 0;
    if (has_bias) {
      const at::Tensor bc = bias->contiguous();
      const scalar_t* bp = bc.const_data_ptr<scalar_t>();
      for (int64_t r = 0; r < b; ++r) std::copy(bp, bp + k, yp + r * k);
      beta = 1;
    }
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    gemm<scalar_t>('N', 'T', b, k, n, xp, n, wc.const_data_ptr<scalar_t>(), wc.stride(0), beta,
                   yp, k);
    const std::vector<scalar_t> sq = squares(xp, b * n);
    gemm<scalar_t>('N', 'T', b, k, n, sq.data(), n, qc.const_data_ptr<scalar_t>(), qc.stride(0),
                   scalar_t(1), yp, k);
  });
  return y;
}

// The diagonal backward for small products, direct GEMMs: gx = gy W + 2 x*(gy Wq),
// gWq = gy^T (x*x), gW = gy^T x, gb = sum_b gy (x, gy contiguous).
Grads diagonal_backward_small(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& wq,
                              const at::Tensor& w, std::array<bool, 4> mask) {
  const int64_t b = x.size(0), n = x.size(1), k = w.size(0);
  at::Tensor gx, gq, gw, gb;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "quadric_diag_small_bwd", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = gy.const_data_ptr<scalar_t>();
    std::vector<scalar_t> sq;
    if (mask[1]) sq = squares(xp, b * n);
    if (mask[0]) {
      const at::Tensor wc = w.contiguous(), qc = wq.contiguous();
      gx = at::empty({b, n}, x.options());
      std::vector<scalar_t> d(static_cast<size_t>(b * n));
      scalar_t* o = gx.data_ptr<scalar_t>();
      gemm<scalar_t>('N', 'N', b, n, k, gp, k, wc.const_data_ptr<scalar_t>(), n, 0, o, n);
      gemm<scalar_t>('N', 'N', b, n, k, gp, k, qc.const_data_ptr<scalar_t>(), n, 0, d.data(), n);
      for (int64_t i = 0; i < b * n; ++i) o[i] += 2 * xp[i] * d[i];
    }
    if (mask[1]) {
      gq = at::empty({k, n}, x.options());
      gemm<scalar_t>('T', 'N', k, n, b, gp, k, sq.data(), n, 0, gq.data_ptr<scalar_t>(), n);
    }
    if (mask[2]) {
      gw = at::empty({k, n}, x.options());
      gemm<scalar_t>('T', 'N', k, n, b, gp, k, xp, n, 0, gw.data_ptr<scalar_t>(), n);
    }
    if (mask[3]) {
      gb = at::zeros({k}, x.options());
      scalar_t* bp = gb.data_ptr<scalar_t>();
      for (int64_t r = 0; r < b; ++r)
        for (int64_t j = 0; j < k; ++j) bp[j] += gp[r * k + j];
    }
  });
  auto or_empty = [&](at::Tensor t) { return t.defined() ? t : at::empty({0}, x.options()); };
  return {or_empty(gx), or_empty(gq), at::empty({0}, x.options()), or_empty(gw), or_empty(gb)};
}

// Z[r, t] = x[r, i] x[r, j] for the chunk's packed columns, rows [r0, r0 + rows).
template <typename scalar_t>
void outer_rows(const scalar_t* xp, int64_t n, int64_t r0, int64_t rows, const RowChunk& c,
                scalar_t* z) {
  const int64_t cols = c.t1 - c.t0;
  at::parallel_for(0, rows, 8, [&](int64_t a, int64_t e) {
    for (int64_t r = a; r < e; ++r) {
      const scalar_t* xr = xp + (r0 + r) * n;
      scalar_t* zr = z + r * cols;
      for (int64_t i = c.i0; i < c.i1; ++i) {
        const scalar_t xi = xr[i];
        for (int64_t j = i; j < n; ++j) *zr++ = xi * xr[j];
      }
    }
  });
}

// gx[r, i] += sum_{j>=i} G[r, t(i,j)] x_j ; gx[r, j] += G[r, t(i,j)] x_i (chunk's rows).
template <typename scalar_t>
void contract_rows(const scalar_t* xp, const scalar_t* g, int64_t n, int64_t r0, int64_t rows,
                   const RowChunk& c, scalar_t* gx) {
  const int64_t cols = c.t1 - c.t0;
  at::parallel_for(0, rows, 8, [&](int64_t a, int64_t e) {
    for (int64_t r = a; r < e; ++r) {
      const scalar_t* xr = xp + (r0 + r) * n;
      const scalar_t* gr = g + r * cols;
      scalar_t* out = gx + (r0 + r) * n;
      for (int64_t i = c.i0; i < c.i1; ++i) {
        const scalar_t xi = xr[i];
        scalar_t acc = 0;
        for (int64_t j = i; j < n; ++j) {
          acc += gr[j - i] * xr[j];
          out[j] += gr[j - i] * xi;
        }
        out[i] += acc;
        gr += n - i;
      }
    }
  });
}

at::Tensor full_forward(const at::Tensor& x, const at::Tensor& p, at::Tensor y) {
  const int64_t b = x.size(0), n = x.size(1);
  if (b == 0) return y;
  const auto chunks = row_chunks(n);
  const int64_t blk = std::min(b, kRowBlock);
  at::Tensor zbuf = at::empty({blk * std::min(p.size(1), std::max(kChunkCols, n) + n)},
                              x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "quadric_full_forward", [&] {
    for (const RowChunk& c : chunks) {
      const int64_t cols = c.t1 - c.t0;
      at::Tensor pc = p.narrow(1, c.t0, cols).t();  // (cols, K), leading dimension T
      for (int64_t r0 = 0; r0 < b; r0 += blk) {
        const int64_t rows = std::min(blk, b - r0);
        at::Tensor z = zbuf.narrow(0, 0, rows * cols).view({rows, cols});
        outer_rows<scalar_t>(x.const_data_ptr<scalar_t>(), n, r0, rows, c, z.data_ptr<scalar_t>());
        at::Tensor yb = y.narrow(0, r0, rows);
        yb.addmm_(z, pc);
      }
    }
  });
  return y;
}

// x*x into a fresh (B, n) buffer in one pass (ATen's mul allocates the same, but through the
// dispatcher: ~2 us that a batch-32 layer notices)
at::Tensor squared(const at::Tensor& x) {
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "quadric_square", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t a, int64_t e) {
      for (int64_t i = a; i < e; ++i) op[i] = xp[i] * xp[i];
    });
  });
  return out;
}

// lowrank: three GEMMs on the same x, no weight concatenation (stacking [Wb; Wa; W] copied 3Kn
// weights per call, 12 MB at n = K = 1024, which lost to the composition at small batches),
// then an epilogue y += sum_s ha_s * hb_s. ha, hb live in one (2, B, rK) buffer, handed to the
// caller through `factors` when it wants them (the training forward).
at::Tensor lowrank_forward(const at::Tensor& x, const at::Tensor& weight_quad,
                           const at::Tensor& weight_quad2, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::Tensor* factors) {
  const int64_t k = weight.size(0), rk = weight_quad.size(0), r = rk / k, b = x.size(0);
  at::Tensor h = at::empty({2, b, rk}, x.options());
  at::Tensor ha = h.select(0, 0), hb = h.select(0, 1);
  at::mm_out(ha, x, weight_quad.t());
  at::mm_out(hb, x, weight_quad2.t());
  at::Tensor y = linear_start(x, weight, bias);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "quadric_lowrank_forward", [&] {
    const scalar_t* pa = ha.const_data_ptr<scalar_t>();
    const scalar_t* pb = hb.const_data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, b, std::max<int64_t>(1, 16384 / std::max<int64_t>(rk, 1)),
                     [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        scalar_t* yr = yp + row * k;
        for (int64_t s = 0; s < r; ++s) {
          const scalar_t* a = pa + row * rk + s * k;
          const scalar_t* c = pb + row * rk + s * k;
          for (int64_t j = 0; j < k; ++j) yr[j] += a[j] * c[j];
        }
      }
    });
  });
  if (factors != nullptr) *factors = h;
  return y;
}

at::Tensor quadric_forward_cpu(const at::Tensor& input, const at::Tensor& weight_quad,
                               const std::optional<at::Tensor>& weight_quad2,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               c10::string_view form_sv, c10::string_view backend) {
  const std::string form(form_sv);
  check_common(input, weight_quad, weight_quad2, weight, bias, form, backend);
  if (!native_dtype(input)) {  // float16 / bfloat16: compute in float32, round once
    return quadric_forward_cpu(input.to(at::kFloat), weight_quad.to(at::kFloat),
                               to_float(weight_quad2), weight.to(at::kFloat), to_float(bias),
                               form_sv, backend)
        .to(input.scalar_type());
  }
  const at::Tensor x = input.contiguous();
  const int64_t n = x.size(1), k = weight.size(0);
  if (form == "diagonal") {
    if (direct_gemm_ok(x.size(0), k, n)) return diagonal_forward_small(x, weight_quad, weight, bias);
    // Two MKL GEMMs accumulating into one output (beta = 1): measured faster here than one
    // GEMM over [x*x | x] and [Wq | W] (723 vs 856 us at B = 512, n = K = 256), which pays
    // for concatenating the weights on every call; MKL cannot square in its operand load.
    at::Tensor y = linear_start(x, weight, bias);
    return y.addmm_(squared(x), weight_quad.t());
  }
  if (form == "full") {
    return full_forward(x, weight_quad.contiguous(), linear_start(x, weight, bias));
  }
  return lowrank_forward(x, weight_quad, *weight_quad2, weight, bias, nullptr);
}

// Training forward of the lowrank form: (y, factors) with factors[0] = x Wa^T, factors[1] =
// x Wb^T, which the forward computes anyway; the C++ autograd saves them so the backward does
// not recompute two of its GEMMs (the eager composition keeps the same two tensors).
std::tuple<at::Tensor, at::Tensor> quadric_lowrank_train_cpu(
    const at::Tensor& input, const at::Tensor& weight_quad, const at::Tensor& weight_quad2,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_common(input, weight_quad, weight_quad2, weight, bias, "lowrank", "native");
  TORCH_CHECK(native_dtype(input), "_quadric_linear_lowrank_train: input must be float32 or "
              "float64, got ", input.scalar_type());
  at::Tensor factors;
  at::Tensor y = lowrank_forward(input.contiguous(), weight_quad, weight_quad2, weight, bias,
                                 &factors);
  return {y, factors};
}

Grads quadric_backward_cpu(const at::Tensor& grad_out, const at::Tensor& input,
                           const at::Tensor& weight_quad,
                           const std::optional<at::Tensor>& weight_quad2,
                           const at::Tensor& weight, c10::string_view form_sv,
                           std::array<bool, 4> mask, c10::string_view backend,
                           const std::optional<at::Tensor>& factors) {
  const std::string form(form_sv);
  check_common(input, weight_quad, weight_quad2, weight, std::nullopt, form, backend);
  const bool has_f = factors.has_value() && factors->defined();
  TORCH_CHECK(!has_f || (form == "lowrank" && factors->dim() == 3 && factors->size(0) == 2 &&
                         factors->size(1) == input.size(0) &&
                         factors->size(2) == weight_quad.size(0) &&
                         factors->scalar_type() == input.scalar_type() &&
                         factors->device() == input.device()),
              kOp, "_backward: factors must be None, or for form='lowrank' the training "
              "forward's (2, ", input.size(0), ", ", weight_quad.size(0), ") ",
              input.scalar_type(), " tensor, got ",
              has_f ? factors->scalar_type() : input.scalar_type(), " ",
              has_f ? factors->sizes() : at::IntArrayRef{}, " for form='", form, "'");
  const int64_t b = input.size(0), n = input.size(1), k = weight.size(0);
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == b && grad_out.size(1) == k &&
                  grad_out.scalar_type() == input.scalar_type(),
              kOp, "_backward: grad_out must be ", input.scalar_type(), " of shape (", b, ", ", k,
              "), got ", grad_out.scalar_type(), " ", grad_out.sizes());
  if (!native_dtype(input)) {
    const auto dt = input.scalar_type();
    auto [gx, gq, gq2, gw, gb] =
        quadric_backward_cpu(grad_out.to(at::kFloat), input.to(at::kFloat),
                             weight_quad.to(at::kFloat), to_float(weight_quad2),
                             weight.to(at::kFloat), form_sv, mask, backend,
                             to_float(factors));
    return {gx.to(dt), gq.to(dt), gq2.to(dt), gw.to(dt), gb.to(dt)};
  }
  const at::Tensor x = input.contiguous(), gy = grad_out.contiguous();
  if (form == "diagonal" && direct_gemm_ok(b, k, n)) {
    return diagonal_backward_small(gy, x, weight_quad, weight, mask);
  }
  at::Tensor gx, gq, gq2, gw, gb;
  if (form == "diagonal") {
    if (mask[0]) {
      // gx = gy W, then gx += 2 x * (gy Wq) in one pass (no [Wq | W] concatenation per call)
      gx = at::mm(gy, weight);
      at::Tensor d = at::mm(gy, weight_quad);
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "quadric_diag_gx", [&] {
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const scalar_t* dp = d.const_data_ptr<scalar_t>();
        scalar_t* gp = gx.data_ptr<scalar_t>();
        at::parallel_for(0, b * n, 1 << 16, [&](int64_t a, int64_t e) {
          for (int64_t i = a; i < e; ++i) gp[i] += 2 * xp[i] * dp[i];
        });
      });
    }
    if (mask[1]) gq = at::mm(gy.t(), squared(x));
    if (mask[2]) gw = at::mm(gy.t(), x);
  } else if (form == "full") {
    const at::Tensor p = weight_quad.contiguous();
    if (mask[0]) gx = at::mm(gy, weight);
    if (mask[1]) gq = at::empty_like(p);
    if (mask[2]) gw = at::mm(gy.t(), x);
    if ((mask[0] || mask[1]) && b == 0 && mask[1]) gq.zero_();
    if ((mask[0] || mask[1]) && b > 0) {
      const auto chunks = row_chunks(n);
      const int64_t blk = std::min(b, kRowBlock);
      const int64_t maxc = std::min(p.size(1), std::max(kChunkCols, n) + n);
      at::Tensor zbuf = at::empty({blk * maxc}, x.options());
      at::Tensor gbuf = at::empty({blk * maxc}, x.options());
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "quadric_full_backward", [&] {
        for (const RowChunk& c : chunks) {
          const int64_t cols = c.t1 - c.t0;
          at::Tensor pc = p.narrow(1, c.t0, cols);  // (K, cols)
          at::Tensor gqc = mask[1] ? gq.narrow(1, c.t0, cols) : at::Tensor();
          for (int64_t r0 = 0; r0 < b; r0 += blk) {
            const int64_t rows = std::min(blk, b - r0);
            at::Tensor gyb = gy.narrow(0, r0, rows);
            if (mask[1]) {
              at::Tensor z = zbuf.narrow(0, 0, rows * cols).view({rows, cols});
              outer_rows<scalar_t>(x.const_data_ptr<scalar_t>(), n, r0, rows, c,
                                   z.data_ptr<scalar_t>());
              if (r0 == 0) {
                at::mm_out(gqc, gyb.t(), z);
              } else {
                gqc.addmm_(gyb.t(), z);
              }
            }
            if (mask[0]) {
              at::Tensor g = gbuf.narrow(0, 0, rows * cols).view({rows, cols});
              at::mm_out(g, gyb, pc);
              contract_rows<scalar_t>(x.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
                                      n, r0, rows, c, gx.data_ptr<scalar_t>());
            }
          }
        }
      });
    }
  } else {
    // ha, hb: the training forward's saved factors, else recomputed (only x was saved); then
    // da = gy*hb, db = gy*ha, written over fresh ha, hb but never over saved ones (autograd may
    // run this backward again with retain_graph). Separate GEMMs accumulate into gx (no
    // stacked weights, no [da | db | gy] copy).
    const int64_t rk = weight_quad.size(0), r = rk / k;
    at::Tensor ha, hb;
    if (!has_f) {
      ha = at::mm(x, weight_quad.t());
      hb = at::mm(x, weight_quad2->t());
    } else {
      at::Tensor d = at::empty({2, b, rk}, x.options());
      ha = d.select(0, 0);
      hb = d.select(0, 1);
    }
    const at::Tensor fa = has_f ? factors->select(0, 0).contiguous() : ha;
    const at::Tensor fb = has_f ? factors->select(0, 1).contiguous() : hb;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "quadric_lowrank_dh", [&] {
      scalar_t* pa = ha.data_ptr<scalar_t>();
      scalar_t* pb = hb.data_ptr<scalar_t>();
      const scalar_t* sa = fa.const_data_ptr<scalar_t>();
      const scalar_t* sb = fb.const_data_ptr<scalar_t>();
      const scalar_t* gp = gy.const_data_ptr<scalar_t>();
      at::parallel_for(0, b, std::max<int64_t>(1, 16384 / std::max<int64_t>(rk, 1)),
                       [&](int64_t r0, int64_t r1) {
        for (int64_t row = r0; row < r1; ++row) {
          const scalar_t* g = gp + row * k;
          for (int64_t s = 0; s < r; ++s) {
            const int64_t o = row * rk + s * k;
            for (int64_t j = 0; j < k; ++j) {
              const scalar_t va = sa[o + j], vb = sb[o + j];
              pa[o + j] = g[j] * vb;  // da = gy*hb
              pb[o + j] = g[j] * va;  // db = gy*ha
            }
          }
        }
      });
    });
    const at::Tensor& da = ha;  // gy * hb
    const at::Tensor& db = hb;  // gy * ha
    if (mask[0]) {
      gx = at::mm(gy, weight);
      gx.addmm_(da, weight_quad);
      gx.addmm_(db, *weight_quad2);
    }
    if (mask[1]) {
      gq = at::mm(da.t(), x);
      gq2 = at::mm(db.t(), x);
    }
    if (mask[2]) gw = at::mm(gy.t(), x);
  }
  if (mask[3]) gb = gy.sum(0);
  auto or_empty = [&](at::Tensor t) { return t.defined() ? t : at::empty({0}, x.options()); };
  return {or_empty(gx), or_empty(gq), or_empty(gq2), or_empty(gw), or_empty(gb)};
}

}  // namespace
}  // namespace shallowkern

TORCH_LIBRARY_IMPL(shallowkern, CPU, m) {
  m.impl("quadric_linear", &shallowkern::quadric_forward_cpu);
  m.impl("quadric_linear_backward", &shallowkern::quadric_backward_cpu);
  m.impl("_quadric_linear_lowrank_train", &shallowkern::quadric_lowrank_train_cpu);
}
