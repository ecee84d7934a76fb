// The loss ops' backward on CUDA: the gradient that the forward kernel wrote,
// times grad_output, in place. grad_output stays on the device (reading it
// would sync), so every block reads it and, when it is exactly 1, as for
// loss.backward(), returns at once: the common backward costs a launch, not
// a pass over the gradient. ATen's mul with a 0-dim CUDA operand takes its
// strided, unvectorised path and splits a gradient of 2^31+ elements in two.
#include "launch_common.cuh"
#include "launchers.h"

namespace samplewt {
namespace cuda {
namespace detail {

// v * s to g: VW values, read from g.
template <typename T, int VW>
__device__ __forceinline__ void store_scaled(T* g, AccT<T> (&v)[VW], AccT<T> s) {
#pragma unroll
  for (int k = 0; k < VW; ++k) v[k] *= s;
  store_acc<T, VW>(g, v);
}

template <typename T, int VW>
__device__ __forceinline__ void scale_vector(T* g, AccT<T> s) {
  AccT<T> v[VW];
  load_acc<T, VW, true>(g, v);
  store_scaled<T, VW>(g, v, s);
}

template <typename T, int VW>
__global__ void __launch_bounds__(kScaleBlock) scale_grad_kernel(const ScaleArgs a) {
  using A = AccT<T>;
  T* g = static_cast<T*>(a.grad);
  const T* scale = static_cast<const T*>(a.scale);
  const A s0 = TypeInfo<T>::to_acc(scale[0]);
  if (!a.per_row && s0 == A(1)) return;  // the same in every thread: x * 1 == x
  auto scale_of = [&](int64_t i) { return a.per_row ? TypeInfo<T>::to_acc(scale[i / a.cols]) : s0; };
  const int64_t nvec = a.numel / VW;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kScaleBlock;
  int64_t v = static_cast<int64_t>(blockIdx.x) * kScaleBlock + threadIdx.x;
  if constexpr (VW > 1) {
    for (; v + 3 * stride < nvec; v += 4 * stride) {
      uint4 raw[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) raw[u] = load16<true>(g + (v + u * stride) * VW);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int64_t i = (v + u * stride) * VW;
        A x[VW];
        Pack<T>::unpack(raw[u], x);
        store_scaled<T, VW>(g + i, x, scale_of(i));
      }
    }
  }
  for (; v < nvec; v += stride) scale_vector<T, VW>(g + v * VW, scale_of(v * VW));
  // Elements past the last full vector (VW > 1 only).
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kScaleBlock + threadIdx.x;
  for (int64_t i = nvec * VW + t; i < a.numel; i += stride) scale_vector<T, 1>(g + i, scale_of(i));
}

}  // namespace detail

template <typename T>
cudaError_t launch_scale_grad(const ScaleArgs& a, cudaStream_t stream) {
  if (a.numel > 0) {
    const detail::ScalePlan plan = detail::plan_scale_grad(a, sizeof(T));
    detail::with_vec_width<T>(plan.vw, [&](auto vw) {
      SWT_LAUNCH(static_cast<unsigned>(plan.grid), detail::kScaleBlock, stream,
                 detail::scale_grad_kernel<T, decltype(vw)::value>)(a);
    });
  }
  return cudaGetLastError();
}

SWT_FOR_EACH_KERNEL_DTYPE(SWT_INSTANTIATE_SCALE_GRAD)

}  // namespace cuda
}  // namespace samplewt
