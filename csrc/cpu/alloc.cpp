// See include/shallowkern/cpu/alloc.h.
#include "shallowkern/cpu/alloc.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <cstdint>
#include <map>
#include <mutex>

#include "shallowkern/knobs.h"

#if defined(__linux__)
#include <sys/mman.h>
#define SK_HUGE_PAGES 1
#endif

namespace shallowkern {
namespace cpu {

#ifdef SK_HUGE_PAGES
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kSmallUnit = size_t(64) << 10;

// Blocks mmap'd directly (not through malloc, whose dynamic mmap threshold would otherwise move
// with our frees and change how every other allocation of the process is served): from 2 MiB
// whole huge pages, 2 MiB-aligned and advised MADV_HUGEPAGE; below, 64 KiB steps of ordinary
// pages. A freed block is kept for the next request of its size while the cache holds less than
// kCacheBytes, so the outputs of a training step reuse the previous step's pages: already
// faulted in, no fault at all.
struct Block {
  void* ptr;
  size_t bytes;
};

class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n == 0) return {nullptr, nullptr, &release, cpu};
    // Huge-page blocks from 2 MiB; smaller ones in 64 KiB steps on ordinary pages (cached too).
    const size_t unit = n >= kHugePage ? kHugePage : kSmallUnit;
    const size_t bytes = (n + unit - 1) / unit * unit;
    Block* b = take(bytes);
    if (b == nullptr) b = new Block{map(bytes), bytes};
    return {b->ptr, b, &release, cpu};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }  // ctx != data
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  static HugePageAllocator& get() {
    static HugePageAllocator* a = new HugePageAllocator;  // never destroyed: tensors may outlive
    return *a;                                            // static destructors
  }

  static void* map(size_t bytes) {
    if (bytes < kHugePage) {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      TORCH_CHECK(p != MAP_FAILED, "shallowkern: out of memory mapping ", bytes, " bytes");
      return p;
    }
    // Over-map by one huge page and unmap the ends, so the block starts on a 2 MiB boundary.
    void* raw = mmap(nullptr, bytes + kHugePage, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(raw != MAP_FAILED, "shallowkern: out of memory mapping ", bytes, " bytes");
    const auto a = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t start = (a + kHugePage - 1) / kHugePage * kHugePage;
    if (start > a) munmap(raw, start - a);
    if (start + bytes < a + bytes + kHugePage)
      munmap(reinterpret_cast<void*>(start + bytes), a + bytes + kHugePage - start - bytes);
    void* p = reinterpret_cast<void*>(start);
    madvise(p, bytes, MADV_HUGEPAGE);  // advice only: where THP is off, ordinary pages
    return p;
  }

  int64_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int64_t>(cached_);
  }

  void empty() {
    std::multimap<size_t, Block*> blocks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      cached_ = 0;
    }
    for (auto& [bytes, b] : blocks) {
      munmap(b->ptr, bytes);
      delete b;
    }
  }

 private:
  Block* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(bytes);
    if (it == free_.end()) return nullptr;
    Block* b = it->second;
    free_.erase(it);
    cached_ -= bytes;
    return b;
  }

  static void release(void* ctx) {
    auto* b = static_cast<Block*>(ctx);
    if (b == nullptr) return;
    HugePageAllocator& a = get();
    {
      std::lock_guard<std::mutex> lock(a.mu_);
      if (knobs::cpu_huge_pages() && a.cached_ + b->bytes <= size_t(kCacheBytes)) {
        a.free_.emplace(b->bytes, b);
        a.cached_ += b->bytes;
        return;
      }
    }
    munmap(b->ptr, b->bytes);
    delete b;
  }

  std::mutex mu_;
  std::multimap<size_t, Block*> free_;
  size_t cached_ = 0;
};

}  // namespace
#endif

at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
#ifdef SK_HUGE_PAGES
  const auto dtype = c10::typeMetaToScalarType(options.dtype());
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  if (options.device().is_cpu() && knobs::cpu_huge_pages() &&
      numel * static_cast<int64_t>(c10::elementSize(dtype)) >= kLargeMin)
    return at::detail::empty_generic(sizes, &HugePageAllocator::get(),
                                     c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                     std::nullopt);
#endif
  return at::empty(sizes, options);
}

at::Tensor zeros_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return empty_large(sizes, options).zero_();
}

int64_t large_cache_bytes() {
#ifdef SK_HUGE_PAGES
  return HugePageAllocator::get().cached();
#else
  return 0;
#endif
}

void empty_large_cache() {
#ifdef SK_HUGE_PAGES
  HugePageAllocator::get().empty();
#endif
}

}  // namespace cpu
}  // namespace shallowkern
