// The one pybind11 file: module init and build facts. Ops are registered through the
// dispatcher (registration.cpp, cpu/*.cpp, cuda/bindings.cu), not through pybind11.
#include <torch/extension.h>

#include "shallowkern/knobs.h"

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
  // The C++ side of shallowkern/_knobs.py: knobs are read from the environment once; these set
  // and read them at run time (std::invalid_argument -> ValueError on an unknown name or value).
  m.def("set_knob", &shallowkern::knobs::set_knob, pybind11::arg("env"), pybind11::arg("value"),
        "Set the C++ knob read from environment variable `env` ('' restores its default).");
  m.def("get_knob", &shallowkern::knobs::get_knob, pybind11::arg("env"),
        "The C++ knob's current value as text.");
}
