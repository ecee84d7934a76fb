// The adaptive table's steps on the CPU (table_step.h): plain loops over the
// batch with the formulas of table_math.h, O(batch) and allocation-light,
// since a small batch's whole loss costs a few microseconds.
#pragma once

#include <ATen/ATen.h>

#include "../table_step.h"

namespace samplewt {
namespace cpu {

// Every index in [0, num_samples) (IndexError otherwise).
void table_check_indices(const Table& t);

// bool (N): whether each sample has a row whose target is not ignore_index.
at::Tensor table_valid(const Table& t, const at::Tensor& target, int64_t ignore_index);

// float32 (N): a history policy's weights of the batch (the table before it).
at::Tensor table_weights(const Table& t, const at::Tensor& valid);

// The table absorbs the batch's per-sample statistics (N, 3). Returns a
// per-batch policy's weights of the batch (from the table before the
// update), undefined for history policies.
at::Tensor table_update(const Table& t, const at::Tensor& stats, const at::Tensor& valid);

}  // namespace cpu
}  // namespace samplewt
