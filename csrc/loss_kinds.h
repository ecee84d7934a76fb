// The row loss kinds and reductions that the op layer, the CPU kernels and
// the CUDA kernels all name. Outside the per-ISA namespace of samplewt_math.h:
// plain enums, one definition for every translation unit.
#pragma once

#include <cstdint>

namespace samplewt {

// Same values as at::Reduction so the Python layer can pass them through.
enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

// Loss kinds of the row (softmax) kernels, on both devices.
enum RowLoss : int64_t { kCrossEntropyIndex = 0, kCrossEntropyProb = 1, kFocal = 2 };

// The element-wise kinds (ElemLoss) are in samplewt_math.h, beside their
// formulas.

}  // namespace samplewt
