// CUDA implementations of the samplewt_ops schemas (csrc/ops.cpp).
//
// The same argument checks as the CPU ops (csrc/op_checks.h), then the
// torch-free kernels of loss_kernels.cuh on the current stream. Nothing here
// synchronises with the host: no .item(), no check that reads tensor values.
// The mean's denominator and every row's gradient scale are computed on the
// device. Target ranges and sample_weight values are checked in Python, when
// validation mode is on (samplewt_ops.set_validation / SAMPLEWT_VALIDATE=1);
// without it an out-of-range class makes that row's loss NaN (its gradient
// row is zero) and is never used as a memory index.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <atomic>
#include <climits>
#include <tuple>

#include "../op_checks.h"
#include "../samplewt_math.h"
#include "loss_kernels.cuh"

namespace samplewt {
namespace cuda {
namespace {

using at::Tensor;
using c10::optional;

// at:: dtypes -> the CUDA types the kernels are written for (same layout).
template <typename scalar_t>
struct KernelType {
  using type = scalar_t;
};
template <>
struct KernelType<at::Half> {
  using type = __half;
};
template <>
struct KernelType<at::BFloat16> {
  using type = __nv_bfloat16;
};

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

// Scratch memory from the caching allocator (no initialisation needed).
Tensor workspace(size_t bytes, const Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

Tensor stats_or_empty(bool compute_stats, int64_t n, const Tensor& input) {
  return compute_stats ? at::empty({n, 3}, input.options().dtype(at::kFloat))
                       : at::empty({0}, input.options().dtype(at::kFloat));
}

const void* ptr_or_null(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// ---------------------------------------------------------------------------
// Row losses

struct RowOpArgs {
  int kind;  // kRowFocal, or cross-entropy (index/probability from the target)
  const Tensor& input;
  const Tensor& target;
  const optional<Tensor>& class_weight;  // or focal alpha
  const optional<Tensor>& sample_weight;
  int64_t ignore_index;
  double label_smoothing;
  double gamma;
  int64_t reduction;
  bool compute_grad;
  bool compute_stats;
  bool inplace;  // write the gradient into input
};

// Returns (loss, grad, stats); grad is input itself when inplace.
std::tuple<Tensor, Tensor, Tensor> row_loss(const RowOpArgs& o) {
  const Tensor& input = o.input;
  const bool focal = o.kind == kRowFocal;
  checks::RowInputs in = checks::prepare_row_inputs(
      focal, input, o.target, o.class_weight, o.sample_weight, o.label_smoothing, o.gamma,
      o.reduction, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t R = input.size(0), C = input.size(1);
  TORCH_CHECK_VALUE(C <= INT_MAX / 2, "samplewt_ops: the CUDA kernels take at most ",
                    INT_MAX / 2, " classes, got input of shape ", input.sizes());

  // Kernels need unit column stride; other layouts are copied first and,
  // in place, the gradient is copied back.
  Tensor x = input.stride(1) == 1 || C <= 1 ? input : input.contiguous();
  Tensor grad;
  if (o.inplace) {
    grad = x;
  } else if (o.compute_grad) {
    grad = at::empty({R, C}, input.options());
  }
  Tensor loss = o.reduction == kNone ? at::empty({R}, input.options())
                                     : at::empty({}, input.options());
  Tensor stats = stats_or_empty(o.compute_stats, R, input);

  RowLossArgs a;
  a.kind = focal ? kRowFocal : (in.prob ? kRowCrossEntropyProb : kRowCrossEntropyIndex);
  a.reduction = static_cast<int>(o.reduction);
  a.rows = R;
  a.cols = C;
  a.input = x.data_ptr();
  a.ld_input = R > 1 ? x.stride(0) : C;
  a.grad = grad.defined() ? grad.data_ptr() : nullptr;
  a.ld_grad = grad.defined() ? (R > 1 ? grad.stride(0) : C) : 0;
  a.target = in.prob ? nullptr : in.target.data_ptr<int64_t>();
  a.target_prob = in.prob ? in.target.data_ptr() : nullptr;
  a.ld_target = C;
  a.class_weight = ptr_or_null(in.class_weight);
  a.sample_weight = ptr_or_null(in.sample_weight);
  a.out = loss.data_ptr();
  a.stats = o.compute_stats ? stats.data_ptr<float>() : nullptr;
  a.ignore_index = o.ignore_index;
  a.label_smoothing = o.label_smoothing;
  a.gamma = o.gamma;
  a.num_sms = num_sms(input.device().index());

  Tensor ws = workspace(row_loss_workspace_bytes(a, input.element_size()), input);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "samplewt_row_loss_cuda", [&] {
                                    using kernel_t = typename KernelType<scalar_t>::type;
                                    C10_CUDA_CHECK(
                                        launch_row_loss<kernel_t>(a, ws.data_ptr(), stream));
                                  });
  if (o.inplace && !x.is_same(input)) input.copy_(x);
  if (!grad.defined()) grad = at::empty({0}, input.options());
  return {loss, grad, stats};
}

std::tuple<Tensor, Tensor, Tensor> cross_entropy(const Tensor& input, const Tensor& target,
                                                 const optional<Tensor>& weight,
                                                 const optional<Tensor>& sample_weight,
                                                 int64_t ignore_index, double label_smoothing,
                                                 int64_t reduction, bool compute_grad,
                                                 bool compute_stats) {
  return row_loss({kRowCrossEntropyIndex, input, target, weight, sample_weight, ignore_index,
                   label_smoothing, 0.0, reduction, compute_grad, compute_stats, false});
}

std::tuple<Tensor, Tensor> cross_entropy_(Tensor& input, const Tensor& target,
                                          const optional<Tensor>& weight,
                                          const optional<Tensor>& sample_weight,
                                          int64_t ignore_index, double label_smoothing,
                                          int64_t reduction, bool compute_stats) {
  auto out = row_loss({kRowCrossEntropyIndex, input, target, weight, sample_weight,
                       ignore_index, label_smoothing, 0.0, reduction, true, compute_stats,
                       true});
  return {std::get<0>(out), std::get<2>(out)};
}

std::tuple<Tensor, Tensor, Tensor> focal_loss(const Tensor& input, const Tensor& target,
                                              const optional<Tensor>& alpha,
                                              const optional<Tensor>& sample_weight,
                                              double gamma, int64_t ignore_index,
                                              int64_t reduction, bool compute_grad,
                                              bool compute_stats) {
  return row_loss({kRowFocal, input, target, alpha, sample_weight, ignore_index, 0.0, gamma,
                   reduction, compute_grad, compute_stats, false});
}

std::tuple<Tensor, Tensor> focal_loss_(Tensor& input, const Tensor& target,
                                       const optional<Tensor>& alpha,
                                       const optional<Tensor>& sample_weight, double gamma,
                                       int64_t ignore_index, int64_t reduction,
                                       bool compute_stats) {
  auto out = row_loss({kRowFocal, input, target, alpha, sample_weight, ignore_index, 0.0, gamma,
                       reduction, true, compute_stats, true});
  return {std::get<0>(out), std::get<2>(out)};
}

// ---------------------------------------------------------------------------
// Element-wise losses

struct ElemOpArgs {
  ElemLoss kind;
  const Tensor& input;
  const Tensor& target;
  const optional<Tensor>& weight;
  const optional<Tensor>& pos_weight;
  const optional<Tensor>& sample_weight;
  double alpha, gamma, delta;
  int64_t reduction;
  bool compute_grad;
  bool compute_stats;
  // mse_loss and l1_loss with `weight`: PyTorch's mean divides by sum(weight).
  bool mean_over_weight;
};

std::tuple<Tensor, Tensor, Tensor> elem_loss(const ElemOpArgs& o) {
  const Tensor& input = o.input;
  checks::ElemInputs in = checks::prepare_elem_inputs(
      o.kind, input, o.target, o.weight, o.pos_weight, o.sample_weight, o.gamma, o.delta,
      o.reduction, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t N = in.samples;

  Tensor grad = o.compute_grad ? at::empty(input.sizes(), input.options()) : Tensor();
  Tensor loss = o.reduction == kNone ? at::empty(input.sizes(), input.options())
                                     : at::empty({}, input.options());
  Tensor stats = stats_or_empty(o.compute_stats, N, input);

  ElemLossArgs a;
  a.kind = static_cast<int>(o.kind);
  a.reduction = static_cast<int>(o.reduction);
  a.samples = N;
  a.per_sample = in.per_sample;
  a.input = in.input.data_ptr();
  a.target = in.target.data_ptr();
  a.grad = grad.defined() ? grad.data_ptr() : nullptr;
  a.weight = ptr_or_null(in.weight.values);
  a.weight_full = in.weight.full;
  a.pos_weight = ptr_or_null(in.pos_weight.values);
  a.pos_weight_full = in.pos_weight.full;
  a.sample_weight = ptr_or_null(in.sample_weight);
  a.mean_over_weight = o.mean_over_weight;
  a.out = loss.data_ptr();
  a.stats = o.compute_stats ? stats.data_ptr<float>() : nullptr;
  a.gamma = o.gamma;
  a.alpha = o.alpha;
  a.delta = o.delta;
  a.num_sms = num_sms(input.device().index());

  Tensor ws = workspace(elem_loss_workspace_bytes(a, input.element_size()), input);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "samplewt_elem_loss_cuda", [&] {
                                    using kernel_t = typename KernelType<scalar_t>::type;
                                    C10_CUDA_CHECK(
                                        launch_elem_loss<kernel_t>(a, ws.data_ptr(), stream));
                                  });
  if (!grad.defined()) grad = at::empty({0}, input.options());
  return {loss, grad, stats};
}

std::tuple<Tensor, Tensor, Tensor> sigmoid_focal_loss(const Tensor& input, const Tensor& target,
                                                      const optional<Tensor>& sample_weight,
                                                      double alpha, double gamma,
                                                      int64_t reduction, bool compute_grad,
                                                      bool compute_stats) {
  optional<Tensor> none;
  return elem_loss({kSigmoidFocal, input, target, none, none, sample_weight, alpha, gamma, 1.0,
                    reduction, compute_grad, compute_stats, false});
}

std::tuple<Tensor, Tensor, Tensor> binary_cross_entropy_with_logits(
    const Tensor& input, const Tensor& target, const optional<Tensor>& weight,
    const optional<Tensor>& pos_weight, const optional<Tensor>& sample_weight,
    int64_t reduction, bool compute_grad, bool compute_stats) {
  return elem_loss({kBCEWithLogits, input, target, weight, pos_weight, sample_weight, 0.0, 0.0,
                    1.0, reduction, compute_grad, compute_stats, false});
}

std::tuple<Tensor, Tensor, Tensor> mse_loss(const Tensor& input, const Tensor& target,
                                            const optional<Tensor>& weight,
                                            const optional<Tensor>& sample_weight,
                                            int64_t reduction, bool compute_grad,
                                            bool compute_stats) {
  optional<Tensor> none;
  return elem_loss({kMSE, input, target, weight, none, sample_weight, 0.0, 0.0, 1.0, reduction,
                    compute_grad, compute_stats, true});
}

std::tuple<Tensor, Tensor, Tensor> l1_loss(const Tensor& input, const Tensor& target,
                                           const optional<Tensor>& weight,
                                           const optional<Tensor>& sample_weight,
                                           int64_t reduction, bool compute_grad,
                                           bool compute_stats) {
  optional<Tensor> none;
  return elem_loss({kL1, input, target, weight, none, sample_weight, 0.0, 0.0, 1.0, reduction,
                    compute_grad, compute_stats, true});
}

std::tuple<Tensor, Tensor, Tensor> huber_loss(const Tensor& input, const Tensor& target,
                                              const optional<Tensor>& weight,
                                              const optional<Tensor>& sample_weight,
                                              double delta, int64_t reduction,
                                              bool compute_grad, bool compute_stats) {
  optional<Tensor> none;
  return elem_loss({kHuber, input, target, weight, none, sample_weight, 0.0, 0.0, delta,
                    reduction, compute_grad, compute_stats, false});
}

}  // namespace

TORCH_LIBRARY_IMPL(samplewt_ops, CUDA, m) {
  m.impl("cross_entropy", &cross_entropy);
  m.impl("cross_entropy_", &cross_entropy_);
  m.impl("focal_loss", &focal_loss);
  m.impl("focal_loss_", &focal_loss_);
  m.impl("sigmoid_focal_loss", &sigmoid_focal_loss);
  m.impl("binary_cross_entropy_with_logits", &binary_cross_entropy_with_logits);
  m.impl("mse_loss", &mse_loss);
  m.impl("l1_loss", &l1_loss);
  m.impl("huber_loss", &huber_loss);
}

}  // namespace cuda
}  // namespace samplewt
