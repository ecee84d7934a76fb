// N x C output buffers: the gradient of the non-in-place ops, and the
// per-element loss of reduction="none".
//
// A fresh multi-GB buffer costs more in first-touch page faults than the
// fused kernel itself (4 KiB pages: one fault per 1024 floats). Large buffers
// are therefore placed at a 2 MiB boundary inside an allocation of PyTorch's
// own CPU allocator (so memory accounting and profilers still see them) and
// advised as transparent huge pages before anything touches them, which cuts
// the faults ~500x where the kernel allows THP ("madvise" or "always").
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace samplewt {
namespace cpu {

inline at::Tensor alloc_large_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
#if defined(__linux__)
  constexpr int64_t kHugePage = int64_t(2) << 20;
  const int64_t elem = static_cast<int64_t>(options.dtype().itemsize());
  const int64_t bytes = c10::multiply_integers(sizes) * elem;
  if (bytes >= 4 * kHugePage) {
    at::Tensor raw = at::empty({bytes + kHugePage}, options.dtype(at::kByte));
    const auto base = reinterpret_cast<uintptr_t>(raw.data_ptr());
    const uintptr_t aligned = (base + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
    const int64_t offset = static_cast<int64_t>(aligned - base);
    if (offset % elem == 0) {
      // Advisory: a refusal only costs speed.
      madvise(reinterpret_cast<void*>(aligned), static_cast<size_t>(bytes), MADV_HUGEPAGE);
      return at::empty({0}, options).set_(raw.storage(), offset / elem, sizes,
                                          c10::contiguous_strides(sizes));
    }
  }
#endif
  return at::empty(sizes, options);
}

}  // namespace cpu
}  // namespace samplewt
