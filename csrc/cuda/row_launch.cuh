// Definition of launch_row_loss<T>: the pre-pass, the regime's kernels and
// the final reduction. Included by the row_loss_<dtype>.cu units only.
#pragma once

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
      if (plan.group == 1) {
        SWT_LAUNCH(grid, kSmallBlock, stream, row_small_kernel<T, KIND, 1, VW>)(kp);
      } else if (plan.group == 4) {
        SWT_LAUNCH(grid, kSmallBlock, stream, row_small_kernel<T, KIND, 4, VW>)(kp);
      } else {
        SWT_LAUNCH(grid, kSmallBlock, stream, row_small_kernel<T, KIND, 32, VW>)(kp);
      }
      break;
    case kRowBlock:
      SWT_LAUNCH(grid, plan.block, stream, row_block_kernel<T, KIND, VW>)(kp);
      break;
    default:
      SWT_LAUNCH(grid, kSplitBlock, stream, row_split_partial_kernel<T, KIND, VW>)(kp);
      SWT_LAUNCH(grid, kSplitBlock, stream, row_split_grad_kernel<T, KIND, VW>)(kp);
      if (kp.stats) {
        const unsigned g = static_cast<unsigned>(max64(1, min64(ceil_div(kp.rows, 256), 1024)));
        SWT_LAUNCH(g, 256, stream, row_split_stats_kernel<AccT<T>>)(
            kp.rows, kp.nch, kp.ws_stat, KIND == kCrossEntropyProb, kp.stats);
      }
      break;
  }
}

template <typename T, int KIND>
inline void launch_row_kind(const RowPlan& plan, const RowParams<AccT<T>>& kp,
                            cudaStream_t stream) {
  if (plan.vw == 1) {
    launch_row_main<T, KIND, 1>(plan, kp, stream);
  } else {
    launch_row_main<T, KIND, Vec16<T>::value>(plan, kp, stream);
  }
}

}  // namespace detail

template <typename T>
cudaError_t launch_row_loss(const RowArgs& a, void* workspace, cudaStream_t stream) {
  using A = detail::AccT<T>;
  const detail::RowPlan plan = detail::plan_row_loss(a, sizeof(T));
  char* ws = static_cast<char*>(workspace);
  const double eps = a.kind == kFocal ? 0.0 : a.label_smoothing;
  detail::RowParams<A> kp;
  kp.rows = a.rows;
  kp.cols = static_cast<int>(a.cols);
  kp.input = a.input;
  kp.ld_input = a.ld_input;
  kp.grad = a.grad;
  kp.ld_grad = a.ld_grad;
  kp.target = a.target;
  kp.target_prob = a.target_prob;
  kp.ld_target = a.ld_target;
  kp.cw = static_cast<const A*>(a.class_weight);
  kp.sw = static_cast<const A*>(a.sample_weight);
  kp.reduction = a.reduction;
  kp.ignore_index = a.ignore_index;
  kp.eps = static_cast<A>(eps);
  kp.q_scale = static_cast<A>(1.0 - eps);
  kp.q_shift = a.cols > 0 ? static_cast<A>(eps) / static_cast<A>(a.cols) : A(0);
  kp.gamma = static_cast<A>(a.gamma);
  kp.linear = a.kind == kCrossEntropyProb || (a.kind == kCrossEntropyIndex && eps != 0.0);
  kp.out = a.out;
  kp.stats = a.stats;
  kp.denom_parts =
      plan.n_denom > 0 ? reinterpret_cast<const double*>(ws + plan.off_denom) : nullptr;
  kp.n_denom = plan.n_denom;
  kp.denom_const = plan.denom_const;
  kp.loss_parts =
      plan.n_loss_parts > 0 ? reinterpret_cast<double*>(ws + plan.off_loss) : nullptr;
  kp.nch = plan.nch;
  kp.chunk = plan.chunk;
  const bool split = plan.regime == detail::kRowSplit && plan.run;
  kp.ws_part = split ? reinterpret_cast<A*>(ws + plan.off_part) : nullptr;
  kp.ws_xy = split ? reinterpret_cast<A*>(ws + plan.off_xy) : nullptr;
  kp.ws_stat = split ? reinterpret_cast<A*>(ws + plan.off_stat) : nullptr;

  if (plan.run) {
    if (plan.n_denom > 0) {
      SWT_LAUNCH(plan.n_denom, 256, stream, detail::row_prepass_kernel<A>)(
          a.rows, kp.cols, a.kind == kCrossEntropyProb ? nullptr : a.target, a.ignore_index,
          a.kind == kCrossEntropyIndex ? kp.cw : nullptr, kp.sw,
          reinterpret_cast<double*>(ws + plan.off_denom));
    }
    detail::with_kind<kCrossEntropyIndex, kCrossEntropyProb, kFocal>(a.kind, [&](auto kind) {
      detail::launch_row_kind<T, decltype(kind)::value>(plan, kp, stream);
    });
  }
  detail::launch_finalize<T>(a.reduction, kp.loss_parts, plan.n_loss_parts, kp.denom_parts,
                             plan.n_denom, plan.denom_const, a.out, stream);
  return cudaGetLastError();
}

#define SWT_INSTANTIATE_ROW_LOSS(T) \
  template cudaError_t launch_row_loss<T>(const RowArgs&, void*, cudaStream_t);

}  // namespace cuda
}  // namespace samplewt
