// Plain argument blocks handed from the op layer (ops_cpu.cpp) to the
// ISA-specific kernels (kernels_*.cpp). They carry raw pointers only, so the
// ISA translation units need no at::Tensor and stay small.
#pragma once

#include <c10/core/ScalarType.h>
#include <cstdint>

namespace samplewt {
namespace cpu {

enum RowLoss : int64_t { kCrossEntropyIndex = 0, kCrossEntropyProb = 1, kFocal = 2 };

// Softmax losses over rows of `cols` classes. acc_t is float, or double for
// double inputs; "acc" pointers below point to acc_t.
struct RowArgs {
  RowLoss kind = kCrossEntropyIndex;
  c10::ScalarType dtype = c10::ScalarType::Float;
  int64_t rows = 0, cols = 0;
  const void* input = nullptr;  // rows x cols, unit column stride
  int64_t ld_input = 0;
  void* grad = nullptr;         // rows x cols or null; may equal input (in place)
  int64_t ld_grad = 0;
  const int64_t* target = nullptr;      // index targets (rows)
  const void* target_prob = nullptr;    // probability targets, input dtype
  int64_t ld_target = 0;
  const void* class_weight = nullptr;   // acc (cols): class weight, or focal alpha
  const void* grad_scale = nullptr;     // acc (rows): factor on each row's gradient
  void* row_loss = nullptr;             // acc (rows): out, loss without sample weight
  float* stats = nullptr;               // (rows, 3) or null: loss, |grad|, ghm g
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  double gamma = 0.0;
  double sum_class_weight = 0.0;        // sum_c cw_c (cols when unweighted)
};

// Element-wise losses over `samples` samples of `per_sample` contiguous
// elements each.
struct ElemArgs {
  int64_t kind = 0;  // samplewt::ElemLoss
  c10::ScalarType dtype = c10::ScalarType::Float;
  int64_t samples = 0, per_sample = 0;
  const void* input = nullptr;   // contiguous
  const void* target = nullptr;  // contiguous, input dtype
  void* grad = nullptr;          // contiguous or null
  void* out_elem = nullptr;      // reduction "none": weighted loss per element
  // `weight` and `pos_weight` are acc arrays, either full (numel) or one row
  // of per_sample values repeated for every sample.
  const void* weight = nullptr;
  bool weight_full = false;
  const void* pos_weight = nullptr;
  bool pos_weight_full = false;
  const void* sample_weight = nullptr;  // acc (samples) or null: loss factor
  const void* grad_scale = nullptr;     // acc (samples) or null: gradient factor
  void* sample_loss = nullptr;          // acc (samples): out, sum_j weight_ij l_ij
  float* stats = nullptr;               // (samples, 3) or null
  double gamma = 2.0, alpha = 0.25, delta = 1.0;
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
