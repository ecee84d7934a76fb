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

}  // namespace cuda
}  // namespace samplewt
