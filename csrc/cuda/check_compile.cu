// Compile check of the CUDA kernels without torch (make nvcc-check):
//     nvcc -std=c++17 -arch=sm_90 -c csrc/cuda/check_compile.cu
// It explicitly instantiates every kernel template, and the launchers, for
// float, double, __half and __nv_bfloat16.
//
// setup.py compiles csrc/cuda/*.cu into the extension as well; there this
// unit is empty (the extension's instantiations come from ops_cuda.cu), which
// the build's own defines (SAMPLEWT_WITH_CUDA, TORCH_EXTENSION_NAME) select.
namespace samplewt {
namespace cuda {
namespace compile_check {}
}  // namespace cuda
}  // namespace samplewt

#if !defined(SAMPLEWT_WITH_CUDA) && !defined(TORCH_EXTENSION_NAME)

#include "loss_kernels.cuh"

namespace samplewt {
namespace cuda {
namespace detail {

// --- row kernels: T x kind x lanes-per-row x vector width -----------------
#define SWT_ROW_VW(T, KIND, VW)                                                          \
  template __global__ void row_small_kernel<T, KIND, 1, VW>(const RowParams<AccT<T>>);  \
  template __global__ void row_small_kernel<T, KIND, 4, VW>(const RowParams<AccT<T>>);  \
  template __global__ void row_small_kernel<T, KIND, 32, VW>(const RowParams<AccT<T>>); \
  template __global__ void row_block_kernel<T, KIND, VW>(const RowParams<AccT<T>>);     \
  template __global__ void row_split_partial_kernel<T, KIND, VW>(const RowParams<AccT<T>>); \
  template __global__ void row_split_grad_kernel<T, KIND, VW>(const RowParams<AccT<T>>);

#define SWT_ROW_KIND(T, KIND) \
  SWT_ROW_VW(T, KIND, 1)      \
  SWT_ROW_VW(T, KIND, Vec16<T>::value)

#define SWT_ROW(T)                         \
  SWT_ROW_KIND(T, kRowCrossEntropyIndex)   \
  SWT_ROW_KIND(T, kRowCrossEntropyProb)    \
  SWT_ROW_KIND(T, kRowFocal)               \
  template __global__ void finalize_loss_kernel<T>(const double*, int64_t, const double*, int, \
                                                   double, bool, T*);

// --- element-wise kernels: T x loss x gamma_int x lanes-per-sample x width ---
#define SWT_ELEM_VW(T, KIND, GI, VW)                                                          \
  template __global__ void elem_rows_kernel<T, KIND, GI, 1, VW>(const ElemParams<AccT<T>>);  \
  template __global__ void elem_rows_kernel<T, KIND, GI, 4, VW>(const ElemParams<AccT<T>>);  \
  template __global__ void elem_rows_kernel<T, KIND, GI, 32, VW>(const ElemParams<AccT<T>>); \
  template __global__ void elem_chunk_kernel<T, KIND, GI, VW>(const ElemParams<AccT<T>>);

#define SWT_ELEM_KIND(T, KIND, GI) \
  SWT_ELEM_VW(T, KIND, GI, 1)      \
  SWT_ELEM_VW(T, KIND, GI, Vec16<T>::value)

#define SWT_ELEM(T)                         \
  SWT_ELEM_KIND(T, kSigmoidFocal, 2)        \
  SWT_ELEM_KIND(T, kSigmoidFocal, -1)       \
  SWT_ELEM_KIND(T, kBCEWithLogits, -1)      \
  SWT_ELEM_KIND(T, kMSE, -1)                \
  SWT_ELEM_KIND(T, kL1, -1)                 \
  SWT_ELEM_KIND(T, kHuber, -1)

// --- accumulation-type kernels (float for float/half/bfloat16, double) -----
#define SWT_ACC(A)                                                                          \
  template __global__ void row_split_stats_kernel<A>(int64_t, int, const A*, bool, float*); \
  template __global__ void row_prepass_kernel<A>(int64_t, int, const int64_t*, int64_t,     \
                                                 const A*, const A*, double*);              \
  template __global__ void elem_chunk_stats_kernel<A>(const ElemParams<A>);                 \
  template __global__ void elem_prepass_kernel<A>(int64_t, int64_t, const A*, const A*,     \
                                                  bool, double*);

SWT_ROW(float)
SWT_ROW(double)
SWT_ROW(__half)
SWT_ROW(__nv_bfloat16)

SWT_ELEM(float)
SWT_ELEM(double)
SWT_ELEM(__half)
SWT_ELEM(__nv_bfloat16)

SWT_ACC(float)
SWT_ACC(double)

#undef SWT_ROW_VW
#undef SWT_ROW_KIND
#undef SWT_ROW
#undef SWT_ELEM_VW
#undef SWT_ELEM_KIND
#undef SWT_ELEM
#undef SWT_ACC

}  // namespace detail

// --- the launchers (host code that ops_cuda.cu calls) ----------------------
template cudaError_t launch_row_loss<float>(const RowLossArgs&, void*, cudaStream_t);
template cudaError_t launch_row_loss<double>(const RowLossArgs&, void*, cudaStream_t);
template cudaError_t launch_row_loss<__half>(const RowLossArgs&, void*, cudaStream_t);
template cudaError_t launch_row_loss<__nv_bfloat16>(const RowLossArgs&, void*, cudaStream_t);

template cudaError_t launch_elem_loss<float>(const ElemLossArgs&, void*, cudaStream_t);
template cudaError_t launch_elem_loss<double>(const ElemLossArgs&, void*, cudaStream_t);
template cudaError_t launch_elem_loss<__half>(const ElemLossArgs&, void*, cudaStream_t);
template cudaError_t launch_elem_loss<__nv_bfloat16>(const ElemLossArgs&, void*, cudaStream_t);

}  // namespace cuda
}  // namespace samplewt

#endif  // !SAMPLEWT_WITH_CUDA && !TORCH_EXTENSION_NAME
