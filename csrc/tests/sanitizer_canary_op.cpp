// Test-only ops (namespace shallowkern_test), compiled ONLY into the sanitized Python extension
// (tests/sanitize/build.py), never into the shipped one: each has a deliberate bug for index >= 4,
// so a test can prove that the sanitized build turns such a bug into a failed run.
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <vector>

namespace {

// Reads element `index` of a 4-element heap array: index 4 is a heap-buffer-overflow.
int64_t oob_read(int64_t index) {
  std::vector<int64_t> v(4, 7);
  return v.data()[index];
}

// INT64_MAX - 3 + index: signed overflow (undefined behaviour) for index >= 4.
int64_t signed_overflow(int64_t index) {
  const int64_t base = std::numeric_limits<int64_t>::max() - 3;
  return base + index;
}

}  // namespace

TORCH_LIBRARY(shallowkern_test, m) {
  m.def("oob_read(int index) -> int", &oob_read);
  m.def("signed_overflow(int index) -> int", &signed_overflow);
}
