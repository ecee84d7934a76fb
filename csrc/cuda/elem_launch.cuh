// Definition of launch_elem_loss<T>: the pre-pass, the main kernel, the
// statistics merge and the final reduction. Included by the
// elem_loss_<dtype>.cu units only.
#pragma once

#include "elem_kernels.cuh"
#include "launchers.h"

namespace samplewt {
namespace cuda {
namespace detail {

template <typename T, int KIND, int GI, int VW>
inline void launch_elem_main(const ElemPlan& plan, const ElemParams<AccT<T>>& kp,
                             cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.grid));
  if (plan.regime == kElemRows) {
    if (plan.group == 1) {
      SWT_LAUNCH(grid, kSmallBlock, stream, elem_rows_kernel<T, KIND, GI, 1, VW>)(kp);
    } else if (plan.group == 4) {
      SWT_LAUNCH(grid, kSmallBlock, stream, elem_rows_kernel<T, KIND, GI, 4, VW>)(kp);
    } else {
      SWT_LAUNCH(grid, kSmallBlock, stream, elem_rows_kernel<T, KIND, GI, 32, VW>)(kp);
    }
  } else {
    SWT_LAUNCH(grid, kChunkBlock, stream, elem_chunk_kernel<T, KIND, GI, VW>)(kp);
    if (kp.stats && kp.nch > 1) {
      const unsigned g = static_cast<unsigned>(max64(1, min64(ceil_div(kp.N, 256), 1024)));
      SWT_LAUNCH(g, 256, stream, elem_chunk_stats_kernel<AccT<T>>)(kp);
    }
  }
}

template <typename T, int KIND, int GI>
inline void launch_elem_vw(const ElemPlan& plan, const ElemParams<AccT<T>>& kp,
                           cudaStream_t stream) {
  if (plan.vw == 1) {
    launch_elem_main<T, KIND, GI, 1>(plan, kp, stream);
  } else {
    launch_elem_main<T, KIND, GI, Vec16<T>::value>(plan, kp, stream);
  }
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
  char* ws = static_cast<char*>(workspace);
  detail::ElemParams<A> kp;
  kp.N = a.samples;
  kp.S = a.per_sample;
  kp.input = a.input;
  kp.target = a.target;
  kp.grad = a.grad;
  kp.out = a.reduction == kNone ? a.out : nullptr;
  kp.weight = static_cast<const A*>(a.weight);
  kp.weight_full = a.weight_full;
  kp.pos_weight = static_cast<const A*>(a.pos_weight);
  kp.pos_weight_full = a.pos_weight_full;
  kp.sw = static_cast<const A*>(a.sample_weight);
  kp.reduction = a.reduction;
  kp.stats = a.stats;
  kp.gamma = static_cast<A>(a.gamma);
  kp.alpha = static_cast<A>(a.alpha);
  kp.use_alpha = a.alpha >= 0.0;
  kp.gamma_code = focal_gamma_code(a.gamma);
  kp.delta = static_cast<A>(a.delta);
  kp.denom_parts =
      plan.n_denom > 0 ? reinterpret_cast<const double*>(ws + plan.off_denom) : nullptr;
  kp.n_denom = plan.n_denom;
  kp.denom_const = plan.denom_const;
  kp.loss_parts =
      plan.n_loss_parts > 0 ? reinterpret_cast<double*>(ws + plan.off_loss) : nullptr;
  kp.nch = plan.nch;
  kp.chunk = plan.chunk;
  kp.ws = (plan.regime == detail::kElemChunk && plan.nch > 1 && a.stats && plan.run)
              ? reinterpret_cast<A*>(ws + plan.off_ws)
              : nullptr;

  if (plan.run) {
    if (plan.n_denom > 0) {
      const bool share = a.mean_over_weight && a.weight != nullptr;
      SWT_LAUNCH(plan.n_denom, 256, stream, detail::elem_prepass_kernel<A>)(
          a.samples, a.per_sample, kp.sw, share ? kp.weight : nullptr, share && a.weight_full,
          reinterpret_cast<double*>(ws + plan.off_denom));
    }
    detail::with_kind<kSigmoidFocal, kBCEWithLogits, kMSE, kL1, kHuber>(a.kind, [&](auto kind) {
      detail::launch_elem_kind<T, decltype(kind)::value>(plan, kp, stream);
    });
  }
  detail::launch_finalize<T>(a.reduction, kp.loss_parts, plan.n_loss_parts, kp.denom_parts,
                             plan.n_denom, plan.denom_const, a.out, stream);
  return cudaGetLastError();
}

#define SWT_INSTANTIATE_ELEM_LOSS(T) \
  template cudaError_t launch_elem_loss<T>(const ElemArgs&, void*, cudaStream_t);

}  // namespace cuda
}  // namespace samplewt
