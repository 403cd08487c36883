// EXPECT(cond, printf-args...) for the C++ tests: counts the checks, and on a failure prints the
// file, line, condition and message and counts it; main returns non-zero if any failed.
#pragma once

#include <cstdio>

namespace sk_test {
inline int checks = 0;
inline int failures = 0;
}  // namespace sk_test

#define EXPECT(cond, ...)                                                  \
  do {                                                                     \
    ++sk_test::checks;                                                     \
    if (!(cond)) {                                                         \
      ++sk_test::failures;                                                 \
      std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                   \
      std::fprintf(stderr, "\n");                                          \
    }                                                                      \
  } while (0)
