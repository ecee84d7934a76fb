// Definition of launch_elem_loss<T>: the pre-pass, the main kernel, the
// statistics merge and the final reduction. Included by the
// elem_loss_<dtype>.cu units only.
#pragma once

#include "elem_kernels.cuh"
#include "launch_common.cuh"
#include "launchers.h"

namespace samplewt {
namespace cuda {
namespace detail {

template <typename T, int KIND, int GI, int VW>
inline void launch_elem_main(const ElemPlan& plan, const ElemParams<AccT<T>>& kp,
                             cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.grid));
  if (plan.regime == kElemRows) {
    with_lane_group(plan.group, [&](auto g) {
      SWT_LAUNCH(grid, kSmallBlock, stream,
                 elem_rows_kernel<T, KIND, GI, decltype(g)::value, VW>)(kp);
    });
  } else {
    SWT_LAUNCH(grid, kChunkBlock, stream, elem_chunk_kernel<T, KIND, GI, VW>)(kp);
    if (kp.stats && kp.nch > 1) {
      SWT_LAUNCH(stats_merge_grid(kp.N), 256, stream, elem_chunk_stats_kernel<AccT<T>>)(kp);
    }
  }
}

template <typename T, int KIND, int GI>
inline void launch_elem_vw(const ElemPlan& plan, const ElemParams<AccT<T>>& kp,
                           cudaStream_t stream) {
  with_vec_width<T>(plan.vw, [&](auto vw) {
    launch_elem_main<T, KIND, GI, decltype(vw)::value>(plan, kp, stream);
  });
}

template <typename T, int KIND>
inline void launch_elem_kind(const ElemPlan& plan, const ElemParams<AccT<T>>& kp,
                             cudaStream_t stream) {
  // The sigmoid focal loss's default gamma = 2 gets its own kernels, with the
  // focal factor b * b folded in at compile time.
  if constexpr (KIND == kSigmoidFocal) {
    if (kp.gamma_code == 2) {
      launch_elem_vw<T, KIND, 2>(plan, kp, stream);
      return;
    }
  }
  launch_elem_vw<T, KIND, kGammaGeneral>(plan, kp, stream);
}

}  // namespace detail

template <typename T>
cudaError_t launch_elem_loss(const ElemArgs& a, void* workspace, cudaStream_t stream) {
  using A = detail::AccT<T>;
  const detail::ElemPlan plan = detail::plan_elem_loss(a, sizeof(T));
  detail::ElemParams<A> kp;
  kp.N = a.samples;
  kp.S = a.per_sample;
  kp.out = a.reduction == kNone ? a.out : nullptr;
  kp.target_grad = a.target_grad;
  kp.weight = static_cast<const A*>(a.weight);
  kp.weight_full = a.weight_full;
  kp.pos_weight = static_cast<const A*>(a.pos_weight);
  kp.pos_weight_full = a.pos_weight_full;
  kp.gamma = static_cast<A>(a.gamma);
  kp.alpha = static_cast<A>(a.alpha);
  kp.use_alpha = a.alpha >= 0.0;
  kp.gamma_code = focal_gamma_code(a.gamma);
  kp.delta = static_cast<A>(a.delta);
  detail::set_shared_params<A>(kp, a, plan, workspace);
  kp.ws = (plan.regime == detail::kElemChunk && plan.nch > 1 && a.stats && plan.run)
              ? detail::ws_region<A>(workspace, plan.off_ws)
              : nullptr;

  if (plan.run) {
    if (plan.n_denom > 0) {
      const bool share = a.mean_over_weight && a.weight != nullptr;
      SWT_LAUNCH(plan.n_denom, 256, stream, detail::elem_prepass_kernel<A>)(
          a.samples, a.per_sample, kp.sw, share ? kp.weight : nullptr, share && a.weight_full,
          detail::ws_region<double>(workspace, plan.off_denom));
    }
    with_elem_loss(a.kind, [&](auto kind) {
      detail::launch_elem_kind<T, decltype(kind)::value>(plan, kp, stream);
    });
  }
  return detail::finish_launch<T>(a, plan, kp, stream);
}

}  // namespace cuda
}  // namespace samplewt
