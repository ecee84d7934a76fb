// Definition of launch_row_loss<T>: the pre-pass, the regime's kernels and
// the final reduction. Included by the row_loss_<dtype>.cu units only.
#pragma once

#include "launch_common.cuh"
#include "launchers.h"
#include "row_kernels.cuh"

namespace samplewt {
namespace cuda {
namespace detail {

template <typename T, int KIND, int VW>
inline void launch_row_main(const RowPlan& plan, const RowParams<AccT<T>>& kp,
                            cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.grid));
  switch (plan.regime) {
    case kRowSmall:
      with_lane_group(plan.group, [&](auto g) {
        SWT_LAUNCH(grid, kSmallBlock, stream,
                   row_small_kernel<T, KIND, decltype(g)::value, VW>)(kp);
      });
      break;
    case kRowBlock:
      SWT_LAUNCH(grid, plan.block, stream, row_block_kernel<T, KIND, VW>)(kp);
      break;
    default:
      SWT_LAUNCH(grid, kSplitBlock, stream, row_split_partial_kernel<T, KIND, VW>)(kp);
      SWT_LAUNCH(grid, kSplitBlock, stream, row_split_grad_kernel<T, KIND, VW>)(kp);
      if (kp.stats) {
        SWT_LAUNCH(stats_merge_grid(kp.rows), 256, stream, row_split_stats_kernel<AccT<T>>)(
            kp.rows, kp.nch, kp.ws_stat, KIND == kCrossEntropyProb, kp.stats);
      }
      break;
  }
}

template <typename T, int KIND>
inline void launch_row_kind(const RowPlan& plan, const RowParams<AccT<T>>& kp,
                            cudaStream_t stream) {
  with_vec_width<T>(plan.vw, [&](auto vw) {
    launch_row_main<T, KIND, decltype(vw)::value>(plan, kp, stream);
  });
}

}  // namespace detail

template <typename T>
cudaError_t launch_row_loss(const RowArgs& a, void* workspace, cudaStream_t stream) {
  using A = detail::AccT<T>;
  const detail::RowPlan plan = detail::plan_row_loss(a, sizeof(T));
  const double eps = a.kind == kFocal ? 0.0 : a.label_smoothing;
  detail::RowParams<A> kp;
  kp.rows = a.rows;
  kp.cols = static_cast<int>(a.cols);
  kp.ld_input = a.ld_input;
  kp.ld_grad = a.ld_grad;
  kp.target_prob = a.target_prob;
  kp.ld_target = a.ld_target;
  kp.cw = static_cast<const A*>(a.class_weight);
  kp.ignore_index = a.ignore_index;
  kp.eps = static_cast<A>(eps);
  kp.q_scale = static_cast<A>(1.0 - eps);
  kp.q_shift = a.cols > 0 ? static_cast<A>(eps) / static_cast<A>(a.cols) : A(0);
  kp.gamma = static_cast<A>(a.gamma);
  kp.z_loss = static_cast<A>(a.z_loss);
  kp.linear = a.kind == kCrossEntropyProb || (a.kind == kCrossEntropyIndex && eps != 0.0);
  kp.out = a.out;
  detail::set_shared_params<A>(kp, a, plan, workspace);
  const bool split = plan.regime == detail::kRowSplit && plan.run;
  kp.ws_part = split ? detail::ws_region<A>(workspace, plan.off_part) : nullptr;
  kp.ws_xy = split ? detail::ws_region<A>(workspace, plan.off_xy) : nullptr;
  kp.ws_stat = split ? detail::ws_region<A>(workspace, plan.off_stat) : nullptr;

  if (plan.run) {
    if (plan.n_denom > 0) {
      SWT_LAUNCH(plan.n_denom, 256, stream, detail::row_prepass_kernel<A>)(
          a.rows, kp.cols, a.kind == kCrossEntropyProb ? nullptr : a.target, a.ignore_index,
          a.kind == kCrossEntropyIndex ? kp.cw : nullptr, kp.sw,
          detail::ws_region<double>(workspace, plan.off_denom));
    }
    detail::with_kind<kCrossEntropyIndex, kCrossEntropyProb, kFocal>(a.kind, [&](auto kind) {
      detail::launch_row_kind<T, decltype(kind)::value>(plan, kp, stream);
    });
  }
  return detail::finish_launch<T>(a, plan, kp, stream);
}

}  // namespace cuda
}  // namespace samplewt
