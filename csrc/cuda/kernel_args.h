// Argument blocks of the CUDA launchers: plain pointers and scalars, no
// torch and no CUDA types, so that the op layer (ops_cuda.cu), the launch
// planners (launch_plan.h) and the host emulation of the tests all share them.
#pragma once

#include <cstdint>

#include "../kernel_layout.h"

namespace samplewt {
namespace cuda {

// The CUDA launchers' argument blocks: the shared layout, plus the
// reduction, done on the device, and the output it writes.
struct RowArgs : RowLayout {
  int reduction = kMean;  // samplewt::Reduction
  const void* sample_weight = nullptr;  // acc (rows) or null
  void* out = nullptr;  // input dtype: (rows) for reduction none, else (1)
  int num_sms = 132;    // multiprocessors of the device (sizes the grids)
};

struct ElemArgs : ElemLayout {
  int reduction = kMean;
  // mse/l1 with weight: the mean divides by sum(weight) (PyTorch).
  bool mean_over_weight = false;
  void* out = nullptr;  // input dtype: input's numel for none, else (1)
  int num_sms = 132;
};

// The adaptive table's kernels (table_update.cu): the table's tensors and a
// batch's, as plain pointers.
struct TableKernelArgs {
  int64_t policy = 0;
  double params[4] = {0.0, 0.0, 0.0, 0.0};  // policy_params (at most 4)
  int64_t batch = 0, num_samples = 0;
  const int64_t* indices = nullptr;         // (batch)
  float* ema = nullptr;                      // (3, num_samples): entry (j, s) at
  int64_t stat_stride = 0, sample_stride = 1;  // ema + j * stat_stride + s * sample_stride
  int64_t* seen_count = nullptr;             // (num_samples)
  const double* stat_sum = nullptr;          // (3)
  const double* threshold = nullptr;         // SelfPaced, SmallLoss
  float* weights = nullptr;                  // out: (batch)
  // The update:
  const int64_t* sorted_indices = nullptr;   // (batch), stably sorted
  const int64_t* order = nullptr;            // batch position of each sorted entry
  const float* stats = nullptr;              // (batch, 3)
  const bool* valid = nullptr;               // (batch) or null
  double* delta = nullptr;                   // out: (batch, 3)
};

// The backward's scaling of a saved gradient by grad_output (grad_scale.cu):
// grad (numel, contiguous) *= scale[0], or with per_row, each row of `cols`
// elements by its own scale. scale has grad's dtype and lives on the device.
struct ScaleArgs {
  void* grad = nullptr;
  const void* scale = nullptr;
  int64_t numel = 0, cols = 1;
  bool per_row = false;
  int num_sms = 132;
};

}  // namespace cuda
}  // namespace samplewt
