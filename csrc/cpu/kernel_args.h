// Plain argument blocks handed from the op layer (ops_cpu.cpp) to the
// ISA-specific kernels (kernels_*.cpp). They carry raw pointers only, so the
// ISA translation units need no at::Tensor and stay small.
#pragma once

#include <c10/core/ScalarType.h>
#include <cstdint>

#include "../kernel_layout.h"

namespace samplewt {
namespace cpu {

// The CPU kernels' argument blocks: the shared layout, plus the per-row or
// per-sample gradient scale that the op layer's pre-pass fixes, and where
// the kernels leave each row's or sample's loss for the final reduction.
struct RowArgs : RowLayout {
  c10::ScalarType dtype = c10::ScalarType::Float;
  const void* grad_scale = nullptr;  // acc (rows): factor on each row's gradient
  void* row_loss = nullptr;          // acc (rows): out, loss without sample weight
  double sum_class_weight = 0.0;     // sum_c cw_c (cols when unweighted)
};

struct ElemArgs : ElemLayout {
  c10::ScalarType dtype = c10::ScalarType::Float;
  void* out_elem = nullptr;          // reduction "none": weighted loss per element
  const void* grad_scale = nullptr;  // acc (samples) or null: gradient factor
  void* sample_loss = nullptr;       // acc (samples), zeroed: out, sum_j weight_ij l_ij
                                     // (the flat kernel: per-task partial sums)
};

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
