// The CUDA launchers that the op layer (ops_cuda.cu) calls. Each dtype's
// launchers are instantiated in a translation unit of their own
// (row_loss_<dtype>.cu, elem_loss_<dtype>.cu), so that ninja compiles them
// in parallel and the op layer, which includes torch, instantiates no kernel.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "kernel_args.h"
#include "launch_plan.h"

namespace samplewt {
namespace cuda {

// Bytes of device workspace the launcher needs (scratch, any alignment of
// 256 bytes; its contents need no initialisation).
inline size_t row_loss_workspace_bytes(const RowArgs& a, size_t elem_size) {
  return detail::plan_row_loss(a, elem_size).bytes;
}

inline size_t elem_loss_workspace_bytes(const ElemArgs& a, size_t elem_size) {
  return detail::plan_elem_loss(a, elem_size).bytes;
}

// The softmax losses on `stream`: pre-pass (mean), main kernel(s), final
// reduction (sum/mean). T is float, double, __half or __nv_bfloat16.
// Returns cudaGetLastError().
template <typename T>
cudaError_t launch_row_loss(const RowArgs& a, void* workspace, cudaStream_t stream);

// An element-wise loss on `stream` (pre-pass for the mean, main kernel,
// statistics merge for chunked samples, final reduction).
template <typename T>
cudaError_t launch_elem_loss(const ElemArgs& a, void* workspace, cudaStream_t stream);

// Both families by argument block, for code that handles either.
template <typename T>
inline cudaError_t launch_loss(const RowArgs& a, void* workspace, cudaStream_t stream) {
  return launch_row_loss<T>(a, workspace, stream);
}
template <typename T>
inline cudaError_t launch_loss(const ElemArgs& a, void* workspace, cudaStream_t stream) {
  return launch_elem_loss<T>(a, workspace, stream);
}
inline size_t workspace_bytes(const RowArgs& a, size_t elem_size) {
  return row_loss_workspace_bytes(a, elem_size);
}
inline size_t workspace_bytes(const ElemArgs& a, size_t elem_size) {
  return elem_loss_workspace_bytes(a, elem_size);
}

// The adaptive table on `stream` (table_update.cu): a history policy's
// weights of a batch, and the update of the table's EMAs and counts.
cudaError_t launch_table_history_weights(const TableKernelArgs& a, cudaStream_t stream);
cudaError_t launch_table_update(const TableKernelArgs& a, cudaStream_t stream);

// grad *= grad_output on `stream` (grad_scale.cu), in place; a scalar
// grad_output of exactly 1 leaves grad untouched without the host reading it.
template <typename T>
cudaError_t launch_scale_grad(const ScaleArgs& a, cudaStream_t stream);

// The launchers' explicit instantiations: declared here for every dtype,
// defined by each launcher unit (row_loss_<dtype>.cu: SWT_INSTANTIATE_ROW_LOSS,
// elem_loss_<dtype>.cu: SWT_INSTANTIATE_ELEM_LOSS; grad_scale.cu, all four:
// SWT_INSTANTIATE_SCALE_GRAD).
#define SWT_FOR_EACH_KERNEL_DTYPE(X) X(float) X(double) X(__half) X(__nv_bfloat16)
#define SWT_ROW_LAUNCHER(T) cudaError_t launch_row_loss<T>(const RowArgs&, void*, cudaStream_t)
#define SWT_ELEM_LAUNCHER(T) cudaError_t launch_elem_loss<T>(const ElemArgs&, void*, cudaStream_t)
#define SWT_INSTANTIATE_ROW_LOSS(T) template SWT_ROW_LAUNCHER(T);
#define SWT_INSTANTIATE_ELEM_LOSS(T) template SWT_ELEM_LAUNCHER(T);
#define SWT_INSTANTIATE_SCALE_GRAD(T) template SWT_SCALE_LAUNCHER(T);
#define SWT_SCALE_LAUNCHER(T) cudaError_t launch_scale_grad<T>(const ScaleArgs&, cudaStream_t)
#define SWT_EXTERN_LAUNCHERS(T)          \
  extern template SWT_ROW_LAUNCHER(T);  \
  extern template SWT_ELEM_LAUNCHER(T); \
  extern template SWT_SCALE_LAUNCHER(T);
SWT_FOR_EACH_KERNEL_DTYPE(SWT_EXTERN_LAUNCHERS)
#undef SWT_EXTERN_LAUNCHERS

}  // namespace cuda
}  // namespace samplewt
