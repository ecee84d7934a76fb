// Large CPU buffers on transparent huge pages: the N x C outputs (the
// gradient of the non-in-place ops, and the per-element loss of
// reduction="none"), and the adaptive table's state.
//
// A fresh multi-MB buffer costs more in first-touch page faults (and the
// kernel's zeroing of each page) than the fused kernel itself. Large buffers
// are therefore:
// - taken from PyTorch's own CPU allocator (memory accounting still sees them),
//   placed at a 2 MiB boundary and advised as transparent huge pages before
//   anything touches them (~500x fewer faults where THP is "madvise" or
//   "always");
// - given back, when the last tensor viewing one is freed, to a small cache
//   (a few blocks, a bounded number of bytes) from which the next call of the
//   same size takes it with its pages already mapped: a training loop's
//   gradient of every step. A call of another size frees the cache first,
//   so it never adds to a call's peak. SAMPLEWT_CPU_BUFFER_CACHE_MB caps it
//   (0 turns it off; default an eighth of the machine's memory);
//   samplewt_ops.empty_cache() empties it.
// The buffers are fully overwritten by the kernels: nothing relies on zeros.
// The adaptive table's per-sample state takes huge pages too (huge_page_zeros),
// without the cache: it lives as long as its table.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace samplewt {
namespace cpu {

namespace buffer_detail {

constexpr int64_t kHugePage = int64_t(2) << 20;
constexpr size_t kMaxCachedBlocks = 4;

struct Block {
  c10::DataPtr raw;  // from the CPU allocator
  size_t bytes = 0;  // its size
};

// The bytes from p to the first 2 MiB boundary at or after it.
inline size_t to_huge_boundary(const void* p) {
  const auto base = reinterpret_cast<uintptr_t>(p);
  return static_cast<size_t>(((base + kHugePage - 1) & ~uintptr_t(kHugePage - 1)) - base);
}

// A block from PyTorch's CPU allocator whose memory from the first 2 MiB
// boundary on is advised as transparent huge pages, before anything touches it.
inline Block huge_block(size_t bytes) {
  Block b;
  b.raw = c10::GetCPUAllocator()->allocate(bytes);
  b.bytes = bytes;
#if defined(__linux__)
  const size_t lead = to_huge_boundary(b.raw.get());
  if (bytes > lead) {
    // Advisory: a refusal only costs speed.
    madvise(static_cast<char*>(b.raw.get()) + lead, bytes - lead, MADV_HUGEPAGE);
  }
#endif
  return b;
}

// A tensor of `sizes` over `block` (which it owns), from its first 2 MiB
// boundary; undefined (and the block freed) where that boundary does not fall
// on an element.
inline at::Tensor tensor_on_block(std::unique_ptr<Block> block, void (*release)(void*),
                                  at::IntArrayRef sizes, const at::TensorOptions& options) {
  const int64_t elem = static_cast<int64_t>(options.dtype().itemsize());
  const int64_t offset = static_cast<int64_t>(to_huge_boundary(block->raw.get()));
  if (offset % elem != 0) return at::Tensor();
  const size_t total = block->bytes;
  void* data = block->raw.get();
  c10::DataPtr ptr(data, block.release(), release, c10::Device(c10::kCPU));
  c10::Storage storage(c10::Storage::use_byte_size_t(), total, std::move(ptr),
                       /*allocator=*/nullptr, /*resizable=*/false);
  return at::empty({0}, options).set_(storage, offset / elem, sizes, c10::contiguous_strides(sizes));
}

inline void free_block(void* ctx) { delete static_cast<Block*>(ctx); }

class BlockCache {
 public:
  // Never destroyed: a tensor freed during interpreter shutdown still finds it.
  static BlockCache& get() {
    static BlockCache* cache = new BlockCache();
    return *cache;
  }

  Block take(size_t bytes) {
    if (cap_ > 0) {
      std::vector<Block> unused;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        for (size_t i = 0; i < free_.size(); ++i) {
          if (free_[i].bytes == bytes) {
            Block b = std::move(free_[i]);
            free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
            cached_ -= bytes;
            return b;
          }
        }
        // A size the cache does not hold: free the others first, so that the
        // cache never adds to a call's peak memory.
        unused.swap(free_);
        cached_ = 0;
      }
    }
    return huge_block(bytes);
  }

  // Frees every cached block; returns their bytes.
  size_t clear() {
    std::vector<Block> unused;
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      unused.swap(free_);
      bytes = cached_;
      cached_ = 0;
    }
    return bytes;
  }

  // Keeps the block for a later call, or frees it (the oldest go first).
  void give_back(Block&& b) {
    if (cap_ == 0 || b.bytes > cap_) return;  // b frees its memory
    std::lock_guard<std::mutex> lock(mutex_);
    while (!free_.empty() && (free_.size() >= kMaxCachedBlocks || cached_ + b.bytes > cap_)) {
      cached_ -= free_.front().bytes;
      free_.erase(free_.begin());
    }
    cached_ += b.bytes;
    free_.push_back(std::move(b));
  }

 private:
  BlockCache() {
    const char* env = std::getenv("SAMPLEWT_CPU_BUFFER_CACHE_MB");
    if (env != nullptr && *env != '\0') {
      const long long mb = std::atoll(env);
      cap_ = mb > 0 ? static_cast<size_t>(mb) << 20 : 0;
    } else {
      cap_ = default_cap();
    }
  }

  // An eighth of the machine's memory (512 MiB where unknown): room for the
  // gradient of the logits of a large batch.
  static size_t default_cap() {
#if defined(__linux__)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0) return static_cast<size_t>(pages) * static_cast<size_t>(page) / 8;
#endif
    return size_t(512) << 20;
  }

  std::mutex mutex_;
  std::vector<Block> free_;
  size_t cached_ = 0, cap_ = 0;
};

inline void release_block(void* ctx) {
  std::unique_ptr<Block> b(static_cast<Block*>(ctx));
  BlockCache::get().give_back(std::move(*b));
}

// A tensor of `sizes` on a block from take(bytes) with 2 MiB to spare, from
// its first 2 MiB boundary; undefined below 8 MiB (4 KiB pages are as good
// there) or where the boundary does not fall on an element.
template <class Take>
at::Tensor on_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options, Take take,
                         void (*release)(void*)) {
  const int64_t bytes = c10::multiply_integers(sizes) * static_cast<int64_t>(options.dtype().itemsize());
  if (bytes < 4 * kHugePage) return at::Tensor();
  return tensor_on_block(std::make_unique<Block>(take(static_cast<size_t>(bytes + kHugePage))),
                         release, sizes, options);
}
}  // namespace buffer_detail

inline at::Tensor alloc_large_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  using namespace buffer_detail;
  // The storage owns the block; freeing it hands the block back to the cache.
  const at::Tensor t = on_huge_pages(
      sizes, options, [](size_t bytes) { return BlockCache::get().take(bytes); }, &release_block);
  return t.defined() ? t : at::empty(sizes, options);
}

// A zeroed tensor for long-lived per-sample state (the adaptive table's
// EMAs and counts), on transparent huge pages from 8 MiB up: a table step
// reads and writes a few entries per sample scattered over the whole table,
// and with 4 KiB pages nearly every one of them missed the TLB (a 10^7 table,
// GHM, 256 samples: 67 -> 61 us a step). Not cached: it lives as long as its
// table.
inline at::Tensor huge_page_zeros(at::IntArrayRef sizes, const at::TensorOptions& options) {
  using namespace buffer_detail;
  at::Tensor t = on_huge_pages(sizes, options, &huge_block, &free_block);
  return t.defined() ? t.zero_() : at::zeros(sizes, options);
}

}  // namespace cpu
}  // namespace samplewt
