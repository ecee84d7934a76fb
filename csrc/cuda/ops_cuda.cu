// CUDA kernels of the samplewt_ops schemas: the shared op wrappers
// (op_wrappers.h) over cuda_ops.h, on the current CUDA stream of the input's
// device.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <atomic>

#include "cuda_ops.h"

namespace samplewt {
namespace cuda {
namespace {

// Multiprocessors of `device` (sizes the grids), cached per device. The
// attribute query neither synchronises nor breaks CUDA graph capture.
int num_sms(c10::DeviceIndex device) {
  constexpr int kMaxCached = 128;
  static std::atomic<int> cache[kMaxCached];
  const bool cacheable = device >= 0 && device < kMaxCached;
  if (cacheable) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  if (cacheable) cache[device].store(n, std::memory_order_relaxed);
  return n;
}

struct CudaBackend {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;
  static c10::cuda::CUDAGuard guard(const Tensor& input) {
    return c10::cuda::CUDAGuard(input.device());
  }
  static int num_sms(const Tensor& input) { return cuda::num_sms(input.device().index()); }
  static cudaStream_t stream(const Tensor&) { return at::cuda::getCurrentCUDAStream().stream(); }
  static void check(cudaError_t err) { C10_CUDA_CHECK(err); }
};

}  // namespace

bool scale_grad_(at::Tensor& grad, const at::Tensor& grad_loss, bool rows) {
  return grad.is_cuda() && cuda::scale_grad_<CudaBackend>(grad, grad_loss, rows);
}

TORCH_LIBRARY_IMPL(samplewt_ops, CUDA, m) { OpWrappers<Device<CudaBackend>>::register_ops(m); }

}  // namespace cuda
}  // namespace samplewt
