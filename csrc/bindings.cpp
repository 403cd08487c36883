// The one pybind11 file: module init and build facts. Ops are registered through the
// dispatcher (registration.cpp, cpu/*.cpp, cuda/bindings.cu), not through pybind11.
#include <torch/extension.h>

#include "shallowkern/cpu/alloc.h"
#include "shallowkern/cpu/features.h"
#include "shallowkern/cpu/small_gemm.h"
#include "shallowkern/knobs.h"

namespace shallowkern::spinal {
bool transposed_chain_ok(int64_t B, int64_t W);  // csrc/cpu/spinal_linear.cpp
}

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {
// the test hooks' operands: 2-D float32 CPU tensors with unit column stride, AVX-512 present
void check_rows(const char* fn, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 2 &&
                        t.stride(1) == 1,
                    fn, ": ", name, " must be a 2-D float32 CPU tensor with unit column stride");
  TORCH_CHECK_VALUE(shallowkern::cpu::has_avx512f(), fn, ": needs AVX-512 on this CPU");
}

shallowkern::cpu::Epilogue epilogue(const char* fn, const std::optional<at::Tensor>& row_bias,
                                    bool relu, int64_t M) {
  if (!row_bias.has_value()) return {nullptr, relu};
  TORCH_CHECK_VALUE(row_bias->device().is_cpu() && row_bias->scalar_type() == at::kFloat &&
                        row_bias->dim() == 1 && row_bias->size(0) == M &&
                        row_bias->is_contiguous(),
                    fn, ": row_bias must be a contiguous float32 CPU vector of ", M,
                    " elements (one per row of c)");
  return {row_bias->data_ptr<float>(), relu};
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "shallowkern native kernels (C++ CPU, CUDA)";
#ifdef SHALLOWKERN_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#ifdef _OPENMP
  m.attr("with_openmp") = true;
  m.def("omp_max_threads", []() { return omp_get_max_threads(); });
#else
  m.attr("with_openmp") = false;
  m.def("omp_max_threads", []() { return 1; });
#endif
  // The C++ side of shallowkern/_knobs.py: knobs are read from the environment once; these set
  // and read them at run time (std::invalid_argument -> ValueError on an unknown name or value).
  m.def("set_knob", &shallowkern::knobs::set_knob, pybind11::arg("env"), pybind11::arg("value"),
        "Set the C++ knob read from environment variable `env` ('' restores its default).");
  m.def("get_knob", &shallowkern::knobs::get_knob, pybind11::arg("env"),
        "The C++ knob's current value as text.");
  // Large CPU outputs (cpu/alloc.h): the cache of freed huge-page blocks, and a test hook.
  m.def("large_cache_bytes", &shallowkern::cpu::large_cache_bytes,
        "Bytes of freed large-output blocks kept for reuse.");
  m.def("empty_large_cache", &shallowkern::cpu::empty_large_cache,
        "Return the cached large-output blocks to the OS.");
  m.def(
      "empty_large",
      [](std::vector<int64_t> sizes, at::ScalarType dtype) {
        for (int64_t s : sizes) TORCH_CHECK_VALUE(s >= 0, "empty_large: negative size ", s);
        return shallowkern::cpu::empty_large(sizes, at::TensorOptions().dtype(dtype));
      },
      pybind11::arg("sizes"), pybind11::arg("dtype"));
  // The C++ kernels' GEMM routing, for the Python backend choice and for tests.
  m.def("small_gemm_ok", &shallowkern::cpu::small_gemm_ok, pybind11::arg("M"), pybind11::arg("N"),
        pybind11::arg("K"),
        "Whether a float M x N (reduction K) A B^T product takes the skinny kernel.");
  // Test hook: c = alpha a b^T + beta c through the skinny kernel itself (strided rows allowed).
  m.def(
      "small_gemm_nt",
      [](const at::Tensor& a, const at::Tensor& b, at::Tensor& c, double alpha, double beta) {
        const std::pair<const at::Tensor*, const char*> args[] = {{&a, "a"}, {&b, "b"}, {&c, "c"}};
        for (auto [t, name] : args) check_rows("small_gemm_nt", *t, name);
        const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
        TORCH_CHECK_VALUE(b.size(1) == K && c.size(0) == M && c.size(1) == N,
                          "small_gemm_nt: shapes a ", a.sizes(), ", b ", b.sizes(), ", c ",
                          c.sizes(), " do not give c = a b^T");
        TORCH_CHECK_VALUE(shallowkern::cpu::small_gemm_ok(M, N, K),
                          "small_gemm_nt: the skinny kernel does not take M=", M, ", N=", N,
                          ", K=", K, " on this CPU");
        shallowkern::cpu::small_gemm_nt(M, N, K, static_cast<float>(alpha), a.data_ptr<float>(),
                                        a.stride(0), b.data_ptr<float>(), b.stride(0),
                                        static_cast<float>(beta), c.data_ptr<float>(),
                                        c.stride(0));
      },
      pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("c"), pybind11::arg("alpha") = 1.0,
      pybind11::arg("beta") = 0.0);
  m.def("spinal_transposed_ok", &shallowkern::spinal::transposed_chain_ok, pybind11::arg("B"),
        pybind11::arg("W"),
        "Whether spinal_linear's fp32 row-block forward runs as the transposed chain.");
  m.def("bcast_gemm_ok", [](const std::string& ta, int64_t M, int64_t N, int64_t K) {
        return shallowkern::cpu::bcast_gemm_ok(ta == "T" ? 'T' : 'N', M, N, K);
      }, pybind11::arg("ta"), pybind11::arg("M"), pybind11::arg("N"), pybind11::arg("K"),
      "Whether a float op(A) B product (ta 'N' or 'T') is routed to the broadcast kernel.");
  // Test hooks: c = ep(alpha op(a) b + beta c) through the broadcast kernel (strided rows
  // allowed; ep: + row_bias[m], then ReLU); c = ep(sum_t a_t b_t) through bcast_gemm_sum; and
  // the AVX-512 transpose dst = src^T.
  m.def(
      "bcast_gemm",
      [](const at::Tensor& a, const at::Tensor& b, at::Tensor& c, const std::string& ta,
         double alpha, double beta, const std::optional<at::Tensor>& row_bias, bool relu) {
        TORCH_CHECK_VALUE(ta == "N" || ta == "T", "bcast_gemm: ta must be 'N' or 'T', got '",
                          ta, "'");
        const std::pair<const at::Tensor*, const char*> args[] = {{&a, "a"}, {&b, "b"}, {&c, "c"}};
        for (auto [t, name] : args) check_rows("bcast_gemm", *t, name);
        const bool tr = ta == "T";
        const int64_t M = tr ? a.size(1) : a.size(0), K = tr ? a.size(0) : a.size(1);
        const int64_t N = b.size(1);
        TORCH_CHECK_VALUE(b.size(0) == K && c.size(0) == M && c.size(1) == N,
                          "bcast_gemm: shapes a ", a.sizes(), " (ta '", ta, "'), b ", b.sizes(),
                          ", c ", c.sizes(), " do not give c = op(a) b");
        const auto ep = epilogue("bcast_gemm", row_bias, relu, M);
        if (M == 0 || N == 0) return;
        if (K == 0) {
          beta == 0.0 ? c.zero_() : c.mul_(beta);
          return;
        }
        shallowkern::cpu::bcast_gemm(tr ? 'T' : 'N', M, N, K, static_cast<float>(alpha),
                                     a.data_ptr<float>(), a.stride(0), b.data_ptr<float>(),
                                     b.stride(0), static_cast<float>(beta), c.data_ptr<float>(),
                                     c.stride(0), ep);
      },
      pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("c"), pybind11::arg("ta") = "N",
      pybind11::arg("alpha") = 1.0, pybind11::arg("beta") = 0.0,
      pybind11::arg("row_bias") = std::nullopt, pybind11::arg("relu") = false);
  m.def(
      "bcast_gemm_sum",
      [](const std::vector<at::Tensor>& as, const std::vector<at::Tensor>& bs, at::Tensor& c,
         const std::optional<at::Tensor>& row_bias, bool relu) {
        TORCH_CHECK_VALUE(!as.empty() && as.size() == bs.size(),
                          "bcast_gemm_sum: a and b must be equally long, non-empty lists");
        check_rows("bcast_gemm_sum", c, "c");
        const int64_t M = c.size(0), N = c.size(1);
        std::vector<shallowkern::cpu::Term> terms;
        for (size_t t = 0; t < as.size(); ++t) {
          check_rows("bcast_gemm_sum", as[t], "a[t]");
          check_rows("bcast_gemm_sum", bs[t], "b[t]");
          const int64_t K = as[t].size(1);
          TORCH_CHECK_VALUE(as[t].size(0) == M && bs[t].size(0) == K && bs[t].size(1) == N &&
                                K > 0,
                            "bcast_gemm_sum: term ", t, ": a ", as[t].sizes(), ", b ",
                            bs[t].sizes(), ", c ", c.sizes(), " do not give c += a b (K > 0)");
          terms.push_back({as[t].data_ptr<float>(), as[t].stride(0), bs[t].data_ptr<float>(),
                           bs[t].stride(0), K});
        }
        const auto ep = epilogue("bcast_gemm_sum", row_bias, relu, M);
        if (M == 0 || N == 0) return;
        shallowkern::cpu::bcast_gemm_sum(M, N, terms.data(), static_cast<int>(terms.size()),
                                         c.data_ptr<float>(), c.stride(0), ep);
      },
      pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("c"),
      pybind11::arg("row_bias") = std::nullopt, pybind11::arg("relu") = false);
  m.def(
      "transpose_f32",
      [](const at::Tensor& src, at::Tensor& dst) {
        check_rows("transpose_f32", src, "src");
        check_rows("transpose_f32", dst, "dst");
        TORCH_CHECK_VALUE(dst.size(0) == src.size(1) && dst.size(1) == src.size(0),
                          "transpose_f32: dst ", dst.sizes(), " is not src ", src.sizes(),
                          " transposed");
        if (src.numel() == 0) return;
        shallowkern::cpu::transpose(src.size(0), src.size(1), src.data_ptr<float>(),
                                    src.stride(0), dst.data_ptr<float>(), dst.stride(0));
      },
      pybind11::arg("src"), pybind11::arg("dst"));
}
