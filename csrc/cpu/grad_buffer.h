// The N x C gradient buffer of the non-in-place row and element-wise ops.
//
// A fresh multi-GB buffer costs more in first-touch page faults than the
// fused kernel itself (4 KiB pages: one fault per 1024 floats). Large buffers
// are therefore 2 MiB aligned and advised as transparent huge pages, which
// cuts the faults ~500x where the kernel allows THP ("madvise" or "always").
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace samplewt {
namespace cpu {

inline at::Tensor alloc_grad_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
#if defined(__linux__)
  constexpr size_t kHugePage = size_t(2) << 20;
  const size_t bytes = c10::multiply_integers(sizes) * c10::elementSize(
                           c10::typeMetaToScalarType(options.dtype()));
  if (bytes >= 4 * kHugePage) {
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = nullptr;
    if (posix_memalign(&p, kHugePage, rounded) == 0) {
      madvise(p, rounded, MADV_HUGEPAGE);  // advisory: failure only costs speed
      return at::from_blob(p, sizes, [](void* q) { std::free(q); }, options);
    }
  }
#endif
  return at::empty(sizes, options);
}

}  // namespace cpu
}  // namespace samplewt
