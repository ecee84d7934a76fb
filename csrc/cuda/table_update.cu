// The adaptive table's kernels (table_step.h): a history policy's weights of
// a batch, and the table's update from a batch's statistics. One thread per
// sample, or per group of equal indices, with the formulas of table_math.h;
// no host synchronisation, so a step stays capturable in a CUDA graph.
#include "device_utils.cuh"
#include "launchers.h"
#include "../table_math.h"

namespace samplewt {
namespace cuda {
namespace detail {

constexpr int kTableBlock = 256;

inline unsigned table_grid(int64_t n) {
  return static_cast<unsigned>(max64(1, ceil_div(n, kTableBlock)));
}

__global__ void __launch_bounds__(kTableBlock)
    table_history_weights_kernel(TableKernelArgs a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.batch) return;
  const int stat = a.policy == kGradNormEMA ? kGradNormStat : kLossStat;
  const double n_seen = a.stat_sum[2];
  const float mean = static_cast<float>(n_seen > 0 ? a.stat_sum[stat] / n_seen : 0.0);
  const int64_t s = a.indices[i];
  // An index outside the table (not checked on the device) counts as unseen.
  if (s < 0 || s >= a.num_samples) {
    a.weights[i] = 1.0f;
    return;
  }
  const float e = a.ema[stat * a.stat_stride + s * a.sample_stride];
  a.weights[i] = table_history_weight(a.policy, a.params, e, a.seen_count[s] > 0, s, mean,
                                      a.threshold);
}

// One thread per position of the indices sorted (stably): the first of each
// group of equal indices sums the group's observations in batch order and
// takes the sample's EMA step. delta (batch, 3) receives each group's change
// of the running sums (0 elsewhere), summed afterwards in a fixed order.
__global__ void __launch_bounds__(kTableBlock) table_update_kernel(TableKernelArgs a) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= a.batch) return;
  double* delta = a.delta + p * 3;
  delta[0] = delta[1] = delta[2] = 0.0;
  const int64_t s = a.sorted_indices[p];
  if ((p > 0 && a.sorted_indices[p - 1] == s) || s < 0 || s >= a.num_samples) return;
  const bool track_g = a.policy == kGHM;
  double obs[3] = {0.0, 0.0, 0.0};
  int64_t count = 0;
  for (int64_t q = p; q < a.batch && a.sorted_indices[q] == s; ++q) {
    const int64_t i = a.order[q];
    if (a.valid != nullptr && !a.valid[i]) continue;
    obs[0] += static_cast<double>(a.stats[i * 3 + kLossStat]);
    obs[1] += static_cast<double>(a.stats[i * 3 + kGradNormStat]);
    if (track_g) obs[2] += static_cast<double>(table_g_observation(a.stats[i * 3 + kGStat]));
    ++count;
  }
  if (count == 0) return;
  const bool seen_before = a.seen_count[s] > 0;
  const float m = static_cast<float>(a.params[kMomentum]);
  const float one_minus_m = static_cast<float>(1.0 - a.params[kMomentum]);
  for (int j = 0; j < (track_g ? 3 : 2); ++j) {
    float* e = a.ema + j * a.stat_stride + s * a.sample_stride;
    const float old = *e;
    *e = table_ema_step(old, obs[j], count, m, one_minus_m, seen_before);
    if (j < 2) delta[j] = static_cast<double>(*e) - (seen_before ? static_cast<double>(old) : 0.0);
  }
  delta[2] = seen_before ? 0.0 : 1.0;
  a.seen_count[s] += count;
}

}  // namespace detail

cudaError_t launch_table_history_weights(const TableKernelArgs& a, cudaStream_t stream) {
  if (a.batch > 0) {
    SWT_LAUNCH(detail::table_grid(a.batch), detail::kTableBlock, stream,
               detail::table_history_weights_kernel)(a);
  }
  return cudaGetLastError();
}

cudaError_t launch_table_update(const TableKernelArgs& a, cudaStream_t stream) {
  if (a.batch > 0) {
    SWT_LAUNCH(detail::table_grid(a.batch), detail::kTableBlock, stream,
               detail::table_update_kernel)(a);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace samplewt
