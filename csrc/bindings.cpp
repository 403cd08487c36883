// The one pybind11 file: module init and build facts. Ops are registered through the
// dispatcher (registration.cpp, cpu/*.cpp, cuda/bindings.cu), not through pybind11.
#include <torch/extension.h>

#ifdef _OPENMP
#include <omp.h>
#endif

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
}
