// The fields of the kernels' argument blocks that every device shares. The
// CPU (cpu/kernel_args.h) and CUDA (cuda/kernel_args.h) blocks extend these
// with their own reduction plumbing; op_checks.h fills them from tensors.
// Plain pointers and scalars: no torch, no CUDA types.
#pragma once

#include <cstdint>

#include "loss_kinds.h"

namespace samplewt {

// Softmax losses over `rows` rows of `cols` classes. "acc" pointers point to
// the accumulation type: float, or double for double inputs.
struct RowLayout {
  RowLoss kind = kCrossEntropyIndex;
  int64_t rows = 0, cols = 0;
  // Rows per sample of an (N, C, d1..dk) input, contiguous: row r is sample
  // r / positions at position r % positions, and class c of it lies at
  // (r / positions) * ld + r % positions + c * positions (input, grad and
  // probability target alike). 1 for (rows, C) rows of unit column stride.
  // Only the CPU's narrow kernel takes more than 1 (OpWrappers::row_pass
  // folds the others' calls).
  int64_t positions = 1;
  const void* input = nullptr;  // rows x cols, unit column stride (see positions)
  int64_t ld_input = 0;
  void* grad = nullptr;         // rows x cols or null; may equal input (in place)
  int64_t ld_grad = 0;
  const int64_t* target = nullptr;     // index targets (rows)
  const void* target_prob = nullptr;   // probability targets, input dtype
  int64_t ld_target = 0;
  const void* class_weight = nullptr;  // acc (cols): class weight, or focal alpha
  float* stats = nullptr;              // (rows, 3) or null: loss, |grad|, GHM g
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  double gamma = 0.0;
  double z_loss = 0.0;  // z-loss coefficient (row_coefficients)
};

// Element-wise losses over `samples` samples of `per_sample` contiguous
// elements each.
struct ElemLayout {
  // An ElemLoss: samplewt_math.h, which holds the per-ISA formulas, is not
  // included by this ISA-neutral header.
  int64_t kind = 0;
  int64_t samples = 0, per_sample = 0;
  const void* input = nullptr;   // contiguous, input dtype
  const void* target = nullptr;  // contiguous, input dtype
  void* grad = nullptr;          // contiguous or null
  void* target_grad = nullptr;   // contiguous or null: d(loss)/d(target), scaled as grad
  // acc arrays, either full (samples * per_sample) or one row of per_sample
  // values repeated for every sample.
  const void* weight = nullptr;
  bool weight_full = false;
  const void* pos_weight = nullptr;
  bool pos_weight_full = false;
  const void* sample_weight = nullptr;  // acc (samples) or null
  float* stats = nullptr;               // (samples, 3) or null
  double gamma = 2.0, alpha = 0.25, delta = 1.0;
};

}  // namespace samplewt
