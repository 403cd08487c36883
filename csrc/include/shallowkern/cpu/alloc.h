// Large CPU outputs on transparent huge pages.
//
// A fresh multi-MiB tensor from the default CPU allocator is new mmap'd memory, and its first
// touch costs one page fault per 4 KiB page: at B = 1 the spinal chain's weight gradients are
// outer products (52 MB at in_features 51200, width 512), and writing one into a new tensor took
// 22.4 ms against 3.5 ms into an existing one (1 thread, this project's Zen 4 VM). Autograd hands
// every backward new output tensors, so the faults recur each step. empty_large allocates such
// outputs 2 MiB-aligned with madvise(MADV_HUGEPAGE) (as PyTorch's own THP_MEM_ALLOC_ENABLE=1 does
// for every allocation): one fault per 2 MiB, 5.7 ms for the same outer product. And it keeps
// freed blocks (up to kCacheBytes) for the next request of the same size, as CUDA's caching
// allocator does: the next step's gradients land on pages already faulted in (blocks from
// kLargeMin = 256 KiB; below 2 MiB on ordinary pages in 64 KiB steps). Below kLargeMin bytes, off
// Linux, or with SHALLOWKERN_CPU_HUGE_PAGES=0 it is at::empty.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace shallowkern {
namespace cpu {

constexpr int64_t kLargeMin = int64_t(256) << 10;  // from here empty_large (cached)
constexpr int64_t kCacheBytes = int64_t(1) << 30;  // freed blocks kept for reuse, at most

// at::empty(sizes, options) (contiguous, CPU), from the cache of blocks from kLargeMin bytes.
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options);
// The same, zero-filled.
at::Tensor zeros_large(at::IntArrayRef sizes, const at::TensorOptions& options);

// Bytes held in freed blocks for reuse (live tensors not counted), and releasing them all to the
// OS (shallowkern.empty_cpu_cache()).
int64_t large_cache_bytes();
void empty_large_cache();
}  // namespace cpu
}  // namespace shallowkern
