// Plain argument blocks handed from the op layer (ops_cpu.cpp) to the
// ISA-specific kernels (kernels_*.cpp). They carry raw pointers only, so the
// ISA translation units need no at::Tensor and stay small.
#pragma once

#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>
#if defined(__linux__)
#include <unistd.h>
#endif

#include "../kernel_layout.h"

namespace samplewt {
namespace cpu {

// The CPU kernels' argument blocks: the shared layout, plus the per-row or
// per-sample gradient scale that the op layer's pre-pass fixes, and where
// the kernels leave each row's or sample's loss for the final reduction.
struct RowArgs : RowLayout {
  c10::ScalarType dtype = c10::ScalarType::Float;
  const void* grad_scale = nullptr;  // acc (rows): factor on each row's gradient
  bool grad_scale_uniform = false;   // grad_scale holds one value for every row
  void* row_loss = nullptr;          // acc (rows): out, loss without sample weight
  double sum_class_weight = 0.0;     // sum_c cw_c (cols when unweighted)
};

struct ElemArgs : ElemLayout {
  c10::ScalarType dtype = c10::ScalarType::Float;
  void* out_elem = nullptr;          // reduction "none": weighted loss per element
  const void* grad_scale = nullptr;  // acc (samples) or null: gradient factor
  bool grad_scale_uniform = false;   // grad_scale holds one value for every sample
  void* sample_loss = nullptr;       // acc (samples), zeroed: out, see elem_partial_sums
};

// An output larger than the caches keep for it is written with streaming
// stores: a plain store first reads each line it writes. Below that a plain
// store is faster, and leaves the output in cache for whoever reads it next
// (on a 480 MB L3: BCE's math over 10 MB arrays, one thread, 0.53 against
// 0.62 ns per element, plain against streamed; a 2-thread copy of 64 MB is
// even, of 128 MB 9.1 against 5.3 ms). An eighth of the last-level cache (a
// share of it that other tenants and the inputs leave), at least 16 MiB.
inline int64_t stream_bytes() {
  static const int64_t bytes = [] {
    int64_t llc = 0;
#if defined(__linux__) && defined(_SC_LEVEL3_CACHE_SIZE)
    llc = static_cast<int64_t>(sysconf(_SC_LEVEL3_CACHE_SIZE));
#endif
    return std::max<int64_t>(int64_t{16} << 20, llc / 8);
  }();
  return bytes;
}

// Elements per partial sum of the loss when no per-sample loss is asked for.
constexpr int64_t kElemSumBlock = 32768;

// Whether the flat span goes vector by vector, each vector in one sample:
// with sample weights, or a weight or pos_weight of one row per sample.
inline bool elem_flat_by_vector(const ElemArgs& a) {
  return a.sample_weight || (a.weight && !a.weight_full) || (a.pos_weight && !a.pos_weight_full);
}

// Short samples with nothing per sample to tell apart but their weights (no
// statistics) run as one flat span of elements. By vector, samples of a
// multiple of 16 elements: every vector of every instruction set then lies
// in one sample.
inline bool elem_flat(const ElemArgs& a) {
  return !a.stats && a.per_sample < kElemSumBlock &&
         (!elem_flat_by_vector(a) || a.per_sample % 16 == 0);
}

// Samples per partial sum outside the flat span.
inline int64_t elem_samples_per_sum(const ElemArgs& a) {
  return a.per_sample >= kElemSumBlock ? 1 : kElemSumBlock / (a.per_sample > 0 ? a.per_sample : 1);
}

// What the kernel leaves in sample_loss: with statistics, each sample's loss
// without its sample weight (returns -1); else this many partial sums of the
// loss with sample weights, over fixed blocks (elements when flat, samples
// otherwise), so that the total is the same whatever the threads.
inline int64_t elem_partial_sums(const ElemArgs& a) {
  if (a.stats) return -1;
  if (elem_flat(a)) return (a.samples * a.per_sample + kElemSumBlock - 1) / kElemSumBlock;
  const int64_t spb = elem_samples_per_sum(a);
  return (a.samples + spb - 1) / spb;
}

// Rows of at most this many classes take the narrow kernel
// (narrow_rows_impl.h), the only one that reads RowLayout::positions > 1.
// The same bound on every instruction set, so a row's path does not depend
// on the vector width.
constexpr int64_t kNarrowCols = 32;

using RowKernelFn = void (*)(const RowArgs&);
using ElemKernelFn = void (*)(const ElemArgs&);

// One pair per instruction set, defined in kernels_<isa>.cpp.
#define SWT_DECLARE_ISA(isa)            \
  namespace isa {                       \
  void row_loss_kernel(const RowArgs&); \
  void elem_loss_kernel(const ElemArgs&); \
  }
SWT_DECLARE_ISA(DEFAULT)
SWT_DECLARE_ISA(AVX2)
SWT_DECLARE_ISA(AVX512)
#undef SWT_DECLARE_ISA

// Picks the widest instruction set this CPU runs (SAMPLEWT_CPU_ISA overrides,
// so tests can pin the portable path too).
const char* selected_isa();
RowKernelFn row_kernel();
ElemKernelFn elem_kernel();

}  // namespace cpu
}  // namespace samplewt
