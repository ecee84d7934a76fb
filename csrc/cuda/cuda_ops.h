// The CUDA side of the op wrappers (csrc/op_wrappers.h), templated on a
// backend B that supplies the device: its dispatch device type, guard,
// stream, multiprocessor count and error check. ops_cuda.cu instantiates it
// for CUDA; the tests instantiate it for the host emulation of CUDA
// (tests/cuda_emu), so the same argument handling, launch planning and
// kernels run in CI without a GPU.
//
// The same argument checks as the CPU ops (csrc/op_checks.h), then the
// torch-free launchers of launchers.h. Nothing here synchronises with the
// host: no .item(), no check that reads tensor values. The mean's
// denominator and every row's gradient scale are computed on the device.
// Target ranges and sample_weight values are checked in Python, when
// validation mode is on (samplewt_ops.set_validation / SAMPLEWT_VALIDATE=1);
// without it an out-of-range class makes that row's loss NaN (its gradient
// row is zero) and is never used as a memory index.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <climits>
#include <tuple>

#include "../op_checks.h"
#include "../op_wrappers.h"
#include "launchers.h"
#include "table_ops.h"

namespace samplewt {
namespace cuda {

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

// Scratch memory from the device's allocator (no initialisation needed).
inline Tensor workspace(size_t bytes, const Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

// Runs the launcher of argument block `a` for input's dtype, on B's stream,
// with scratch memory from the device's allocator.
template <class B, class Args>
void run_launcher(const Args& a, const Tensor& input) {
  Tensor ws = workspace(workspace_bytes(a, input.element_size()), input);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "samplewt_loss_cuda", [&] {
                                    using kernel_t = typename KernelType<scalar_t>::type;
                                    B::check(launch_loss<kernel_t>(a, ws.data_ptr(),
                                                                   B::stream(input)));
                                  });
}

// ---------------------------------------------------------------------------
// Row losses

// Returns (loss, grad, stats); grad is input itself when inplace.
template <class B>
std::tuple<Tensor, Tensor, Tensor> row_loss(const RowCall& o) {
  const Tensor& input = o.input;
  const bool focal = o.kind == kFocal;
  checks::RowInputs in = checks::prepare_row_inputs(
      focal, input, o.target, o.class_weight, o.sample_weight, o.ignore_index,
      o.label_smoothing, o.gamma, o.reduction, B::kDevice);
  const auto guard = B::guard(input);
  TORCH_CHECK(in.positions == 1, "samplewt_ops: (N, C, d1..dk) input must be folded to (rows, C) "
              "before the CUDA kernels (OpWrappers::row_pass)");
  const int64_t R = in.rows, C = input.size(1);
  TORCH_CHECK_VALUE(C <= INT_MAX / 2, "samplewt_ops: the CUDA kernels take at most ",
                    INT_MAX / 2, " classes, got input of shape ", input.sizes());

  const checks::RowBuffers buf = checks::row_buffers(
      input, o.inplace, o.compute_grad,
      [](c10::IntArrayRef sizes, const at::TensorOptions& opt) { return at::empty(sizes, opt); });
  Tensor grad = buf.grad;
  Tensor loss = o.reduction == kNone ? at::empty({R}, input.options())
                                     : at::empty({}, input.options());
  Tensor stats = stats_or_empty(o.compute_stats, R, input);

  RowArgs a;
  checks::fill_row_layout(a, focal, in, buf, checks::stats_ptr(o.compute_stats, stats),
                          o.ignore_index, o.label_smoothing, o.gamma, o.z_loss);
  a.reduction = static_cast<int>(o.reduction);
  a.sample_weight = checks::ptr_or_null(in.sample_weight);
  a.out = loss.data_ptr();
  a.num_sms = B::num_sms(input);

  run_launcher<B>(a, input);
  if (o.inplace && !buf.x.is_same(input)) input.copy_(buf.x);
  if (!grad.defined()) grad = at::empty({0}, input.options());
  return {loss, grad, stats};
}

// ---------------------------------------------------------------------------
// Element-wise losses

template <class B>
ElemOut elem_loss(const ElemCall& o) {
  const Tensor& input = o.input;
  checks::ElemInputs in = checks::prepare_elem_inputs(
      input, o.target, o.weight, o.pos_weight, o.sample_weight, o.reduction, B::kDevice);
  const auto guard = B::guard(input);
  const int64_t N = in.samples;

  Tensor grad = o.compute_grad ? at::empty(input.sizes(), input.options()) : Tensor();
  Tensor target_grad =
      o.compute_target_grad ? at::empty(input.sizes(), input.options()) : Tensor();
  Tensor loss = o.reduction == kNone ? at::empty(input.sizes(), input.options())
                                     : at::empty({}, input.options());
  Tensor stats = stats_or_empty(o.compute_stats, N, input);

  ElemArgs a;
  checks::fill_elem_layout(a, o.kind, in, grad, target_grad,
                           checks::stats_ptr(o.compute_stats, stats), o.alpha, o.gamma, o.delta);
  a.reduction = static_cast<int>(o.reduction);
  a.mean_over_weight = o.mean_over_weight;
  a.out = loss.data_ptr();
  a.num_sms = B::num_sms(input);

  run_launcher<B>(a, input);
  if (!grad.defined()) grad = at::empty({0}, input.options());
  if (!target_grad.defined()) target_grad = at::empty({0}, input.options());
  return {loss, grad, stats, target_grad};
}

// ---------------------------------------------------------------------------
// The backward's scaling

// grad *= grad_loss in place, on the device (autograd.cpp's backward of the
// loss ops): grad_loss 0-dim, or with rows one value per row of a 2-D grad.
// Returns false, having done nothing, for any other layout (the caller
// scales with ATen then).
template <class B>
bool scale_grad_(Tensor& grad, const Tensor& grad_loss, bool rows) {
  const bool per_row = grad_loss.dim() != 0;
  if (grad.device() != grad_loss.device() || !grad.is_contiguous() ||
      !grad.is_floating_point() || !grad_loss.is_floating_point() ||
      (per_row && !(rows && grad.dim() == 2 && grad_loss.dim() == 1 &&
                    grad_loss.size(0) == grad.size(0)))) {
    return false;
  }
  if (grad.numel() == 0) return true;
  const auto guard = B::guard(grad);
  // As ATen's grad * grad_loss.to(grad's dtype): the product of the two, rounded once.
  const Tensor scale = grad_loss.to(grad.scalar_type()).contiguous();
  ScaleArgs a;
  a.grad = grad.data_ptr();
  a.scale = scale.data_ptr();
  a.numel = grad.numel();
  a.cols = per_row ? grad.size(1) : 1;
  a.per_row = per_row;
  a.num_sms = B::num_sms(grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "samplewt_scale_grad_cuda", [&] {
                                    using kernel_t = typename KernelType<scalar_t>::type;
                                    B::check(launch_scale_grad<kernel_t>(a, B::stream(grad)));
                                  });
  return true;
}

// The device of OpWrappers (op_wrappers.h) for a backend B.
template <class B>
struct Device : TableSteps<B> {
  // (N, C, d1..dk) input: folded to (rows, C) by OpWrappers::row_pass.
  static bool takes_positions(int64_t) { return false; }
  static std::tuple<Tensor, Tensor, Tensor> row_loss(const RowCall& o) {
    return cuda::row_loss<B>(o);
  }
  static ElemOut elem_loss(const ElemCall& o) {
    return cuda::elem_loss<B>(o);
  }
};

}  // namespace cuda
}  // namespace samplewt
