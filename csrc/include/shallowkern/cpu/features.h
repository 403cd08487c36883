// CPU feature detection and the x86 SIMD switch of the C++ CPU kernels.
//
// SK_X86_SIMD is defined where the compiler can emit AVX2 / AVX-512 code for single functions
// (__attribute__((target("avx512f")))); such functions run only behind a run-time check below,
// so the library still loads and runs on any x86-64 CPU (and elsewhere without the SIMD paths).
#pragma once

#include "shallowkern/knobs.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SK_X86_SIMD 1
#endif

namespace shallowkern {
namespace cpu {

// AVX2 + FMA (the sparse backward's 8-lane kernels).
inline bool has_avx2_fma() {
#ifdef SK_X86_SIMD
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

// AVX-512F, unless the knob SHALLOWKERN_CPU_AVX512=0 (wide_conv2d.cpu_avx512) hides it, so that
// the AVX2 paths are testable on an AVX-512 machine.
inline bool has_avx512f() {
#ifdef SK_X86_SIMD
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes && knobs::cpu_avx512();
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace shallowkern
