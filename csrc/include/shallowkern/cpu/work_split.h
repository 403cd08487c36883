// How the C++ CPU conv kernels cut a batch into parallel work: units are (image, group) pairs,
// split evenly over threads by at::parallel_for and batched into chunks of B images, so that the
// GEMMs (or row combinations) of a chunk are wide enough to run near peak while its thread-local
// buffers stay bounded.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "shallowkern/geometry.h"

namespace shallowkern {
namespace cpu {

// Chunk sizing: enough GEMM columns (images x positions) that MKL runs near its peak (>= ~256 is
// within a few % of it on the 2-core dev machine), with thread-local buffers of at most ~48 MB.
// Big chunks matter most in the backward, where each chunk streams the weight (input grad) and
// the gw accumulator (weight grad) once: conv2 at d1 = 256 (2.5 MB of im2col per image) ran
// 1.13x faster with 6-image chunks than with 1, and its weight gradient at d1 = 512 (5 MB per
// image) 1.29x faster with 6 than with 3 (12 was slower again: the source block leaves L2).
constexpr int64_t kTargetCols = 512;
constexpr int64_t kMaxChunkBytes = 48 << 20;

// Images per chunk when each image needs `rows` values of `elem` bytes per conv position.
inline int64_t images_per_chunk(const Conv2dGeom& g, int64_t elem, int64_t rows) {
  int64_t b = std::max<int64_t>(1, std::min(g.N, div_up(kTargetCols, g.npos())));
  while (b > 1 && b * g.npos() * rows * elem > kMaxChunkBytes) --b;
  return b;
}

// Work is split over units u = grp * N + n (one image of one group); at::parallel_for hands each
// thread an equal contiguous range, which is cut here into chunks of <= B images of one group,
// balanced so that no chunk is much smaller than the others. f(grp, n0, nb).
template <typename F>
void for_each_chunk(const Conv2dGeom& g, int64_t B, int64_t begin, int64_t end, const F& f) {
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
inline int64_t unit_grain(const Conv2dGeom& g) {
  const int64_t units = g.G * g.N;
  return units < at::get_num_threads() ? units + 1 : 1;
}

}  // namespace cpu
}  // namespace shallowkern
