// Host-side pieces that both launchers (row_launch.cuh, elem_launch.cuh)
// share: the kernel parameters the two families take alike, the selection of
// kernels templated on the plan's vector width and lanes per item, and the
// end of a launch. Everything is resolved at compile time: each selection is
// a plain branch over kernel instantiations, as if written out by hand.
#pragma once

#include <type_traits>

#include "device_utils.cuh"
#include "launch_plan.h"

namespace samplewt {
namespace cuda {
namespace detail {

// The region at byte offset off of a launch's workspace, as a U*.
template <typename U>
inline U* ws_region(void* workspace, size_t off) {
  return reinterpret_cast<U*>(static_cast<char*>(workspace) + off);
}

// The parameters that the argument block a, the plan and the workspace give
// the kernels of both families alike (A: the accumulation type).
template <typename A, class Params, class Args, class Plan>
inline void set_shared_params(Params& kp, const Args& a, const Plan& plan, void* workspace) {
  kp.input = a.input;
  kp.target = a.target;
  kp.grad = a.grad;
  kp.sw = static_cast<const A*>(a.sample_weight);
  kp.reduction = a.reduction;
  kp.stats = a.stats;
  kp.denom_parts = plan.n_denom > 0 ? ws_region<const double>(workspace, plan.off_denom) : nullptr;
  kp.n_denom = plan.n_denom;
  kp.denom_const = plan.denom_const;
  kp.loss_parts = plan.n_loss_parts > 0 ? ws_region<double>(workspace, plan.off_loss) : nullptr;
  kp.nch = plan.nch;
  kp.chunk = plan.chunk;
}

// Calls f(std::integral_constant<int, VW>{}) for the plan's elements per
// access: 1, or Vec16<T>::value (128-bit accesses).
template <typename T, class F>
inline void with_vec_width(int vw, F&& f) {
  if (vw == 1) {
    f(std::integral_constant<int, 1>{});
  } else {
    f(std::integral_constant<int, Vec16<T>::value>{});
  }
}

// Calls f(std::integral_constant<int, G>{}) for the small kernels' lanes per
// row or sample, G = 1, 4 or 32 (any other value: 32).
template <class F>
inline void with_lane_group(int group, F&& f) {
  if (group == 1) {
    f(std::integral_constant<int, 1>{});
  } else if (group == 4) {
    f(std::integral_constant<int, 4>{});
  } else {
    f(std::integral_constant<int, 32>{});
  }
}

// Blocks of the kernels that merge per-chunk statistics: one thread per row
// or sample, 256 per block, at most 1024 blocks.
inline unsigned stats_merge_grid(int64_t items) {
  return static_cast<unsigned>(max64(1, min64(ceil_div(items, 256), 1024)));
}

// The end of a launch: the final reduction of a sum or mean loss (nothing
// for reduction "none"), then the launches' error status.
template <typename T, class Args, class Plan, class Params>
inline cudaError_t finish_launch(const Args& a, const Plan& plan, const Params& kp,
                                 cudaStream_t stream) {
  launch_finalize<T>(a.reduction, kp.loss_parts, plan.n_loss_parts, kp.denom_parts,
                     plan.n_denom, plan.denom_const, a.out, stream);
  return cudaGetLastError();
}

}  // namespace detail
}  // namespace cuda
}  // namespace samplewt
