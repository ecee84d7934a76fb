// Argument checks and preparation shared by the CPU (cpu/ops_cpu.cpp) and
// CUDA (cuda/ops_cuda.cu) implementations of the samplewt_ops schemas, so
// that both raise the same errors, with the same messages, for the same
// arguments.
//
// Everything here is structural: dtypes, shapes, devices and scalar
// arguments. Nothing reads tensor values, so nothing synchronises with a
// device. Value checks (target class range, sample_weight sign and
// finiteness) are the CPU op's own (it reads the data anyway); on CUDA they
// run in Python, in validation mode only.
#pragma once

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>

#include <vector>

#include "kernel_layout.h"
#include "loss_kinds.h"
#include "samplewt_math.h"  // ElemLoss

namespace samplewt {
namespace checks {

using at::Tensor;
using c10::optional;

inline bool has(const optional<Tensor>& t) { return t.has_value() && t->defined(); }

// float for float/half/bfloat16 inputs, double for double.
inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_reduction(int64_t reduction) {
  TORCH_CHECK_VALUE(reduction >= kNone && reduction <= kSum,
                    "samplewt_ops: reduction must be 0 (none), 1 (mean) or 2 (sum), got ",
                    reduction);
}

// `device` is the dispatch key's device type (CPU or CUDA).
inline void check_float_input(const Tensor& input, c10::DeviceType device) {
  TORCH_CHECK(input.device().type() == device, "samplewt_ops: input must be a ",
              c10::DeviceTypeName(device), " tensor here");
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()),
                   "samplewt_ops: input must be float32, float64, bfloat16 or float16, got ",
                   input.scalar_type());
}

inline void check_device(const Tensor& input, const optional<Tensor>& t, const char* name) {
  if (has(t)) {
    TORCH_CHECK(t->device() == input.device(), "samplewt_ops: ", name,
                " must be on the same device as input (", input.device(), "), got ",
                t->device());
  }
}

// sample_weight as a contiguous accumulation-type vector of length n, or an
// undefined tensor. Only its dtype and shape are checked here.
inline Tensor sample_weight_acc(const optional<Tensor>& sample_weight, int64_t n,
                                at::ScalarType acc) {
  if (!has(sample_weight)) return Tensor();
  const Tensor& w = *sample_weight;
  TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()),
                   "samplewt_ops: sample_weight must be a floating-point tensor, got ",
                   w.scalar_type());
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == n,
                    "samplewt_ops: sample_weight must have shape (", n, "), got ", w.sizes());
  return w.to(acc).contiguous();
}

// ---------------------------------------------------------------------------
// Row (softmax) ops: cross_entropy, focal_loss and their `_` variants.

// An index target's shape: input's without the class dimension (dim 1).
inline std::vector<int64_t> row_target_shape(const Tensor& input) {
  std::vector<int64_t> shape = input.sizes().vec();
  shape.erase(shape.begin() + 1);
  return shape;
}

struct RowInputs {
  // (N, C, d1..dk) input: N * d1 * .. * dk rows, d1 * .. * dk positions per
  // sample (RowLayout::positions); (rows, C): positions 1.
  int64_t rows = 0, positions = 1;
  bool prob = false;     // class-probability targets
  Tensor target;         // int64 (rows) or (N, d1..dk), or input's dtype and shape; contiguous
  Tensor class_weight;   // accumulation type (C), contiguous; or undefined
  Tensor sample_weight;  // accumulation type (rows), contiguous; or undefined
};

inline RowInputs prepare_row_inputs(bool focal, const Tensor& input, const Tensor& target,
                                    const optional<Tensor>& class_weight,
                                    const optional<Tensor>& sample_weight,
                                    int64_t ignore_index, double label_smoothing, double gamma,
                                    int64_t reduction, c10::DeviceType device) {
  check_float_input(input, device);
  check_reduction(reduction);
  check_device(input, target, "target");
  check_device(input, class_weight, focal ? "alpha" : "weight");
  check_device(input, sample_weight, "sample_weight");
  TORCH_CHECK_VALUE(input.dim() >= 2,
                    "samplewt_ops: input must be (rows, classes) or (N, classes, d1, ..., dk), got ",
                    input.sizes());
  const int64_t C = input.size(1);
  RowInputs out;
  const std::vector<int64_t> target_shape = row_target_shape(input);
  for (size_t d = 1; d < target_shape.size(); ++d) out.positions *= target_shape[d];
  out.rows = target_shape[0] * out.positions;
  const int64_t R = out.rows;
  TORCH_CHECK_VALUE(C > 0 || R == 0, "samplewt_ops: input must have at least one class, got ",
                    input.sizes());
  const at::ScalarType acc = acc_type(input.scalar_type());
  out.prob = at::isFloatingType(target.scalar_type());
  TORCH_CHECK_TYPE(!(out.prob && focal),
                   "samplewt_ops: focal_loss target must hold class indices (int64), got ",
                   target.scalar_type());
  if (out.prob) {
    TORCH_CHECK_VALUE(target.sizes() == input.sizes(),
                      "samplewt_ops: probability target must have input's shape ",
                      input.sizes(), ", got ", target.sizes());
    // As torch: a probability target has no class to ignore.
    TORCH_CHECK_VALUE(ignore_index < 0, "samplewt_ops: ignore_index=", ignore_index,
                      " is not supported with class-probability targets");
    out.target = target.to(input.scalar_type()).contiguous();
  } else {
    TORCH_CHECK_TYPE(target.scalar_type() == at::kLong || target.scalar_type() == at::kInt,
                     "samplewt_ops: target must hold class indices (int64) or class "
                     "probabilities (floating point), got ",
                     target.scalar_type());
    TORCH_CHECK_VALUE(target.sizes() == c10::IntArrayRef(target_shape),
                      "samplewt_ops: target must have shape ", c10::IntArrayRef(target_shape),
                      ", got ", target.sizes());
    out.target = target.to(at::kLong).contiguous();
  }
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0,
                    "samplewt_ops: label_smoothing must be in [0, 1], got ", label_smoothing);
  TORCH_CHECK_VALUE(gamma >= 0.0, "samplewt_ops: gamma must be >= 0, got ", gamma);
  if (has(class_weight)) {
    TORCH_CHECK_VALUE(class_weight->dim() == 1 && class_weight->size(0) == C,
                      "samplewt_ops: ", focal ? "alpha" : "weight", " must have shape (", C,
                      "), got ", class_weight->sizes());
    out.class_weight = class_weight->to(acc).contiguous();
  }
  out.sample_weight = sample_weight_acc(sample_weight, R, acc);
  return out;
}

// ---------------------------------------------------------------------------
// Element-wise ops

// A weight broadcast to input, as the kernels read it: one row of
// per-sample values shared by every sample, or the full tensor.
struct ElemWeight {
  Tensor values;  // accumulation type, contiguous; or undefined
  bool full = false;
};

inline ElemWeight prepare_elem_weight(const optional<Tensor>& weight, const Tensor& input,
                                      at::ScalarType acc, const char* name) {
  ElemWeight out;
  if (!has(weight)) return out;
  TORCH_CHECK_TYPE(at::isFloatingType(weight->scalar_type()), "samplewt_ops: ", name,
                   " must be a floating-point tensor, got ", weight->scalar_type());
  std::vector<int64_t> shape = at::infer_size(weight->sizes(), input.sizes());
  TORCH_CHECK_VALUE(c10::IntArrayRef(shape) == input.sizes(), "samplewt_ops: ", name,
                    " of shape ", weight->sizes(), " must broadcast to input's shape ",
                    input.sizes());
  Tensor expanded = weight->to(acc).expand(input.sizes());
  if (input.dim() >= 1 && input.size(0) > 0 && expanded.stride(0) == 0) {
    out.values = expanded.select(0, 0).contiguous();
  } else {
    out.values = expanded.contiguous();
    out.full = true;
  }
  return out;
}

struct ElemInputs {
  int64_t samples = 0;     // N: input's first dimension (1 for a 0-dim input)
  int64_t per_sample = 0;  // S: numel / N
  Tensor input;            // contiguous
  Tensor target;           // input's dtype, contiguous
  ElemWeight weight, pos_weight;
  Tensor sample_weight;    // accumulation type (N), contiguous; or undefined
};

inline ElemInputs prepare_elem_inputs(const Tensor& input, const Tensor& target,
                                      const optional<Tensor>& weight,
                                      const optional<Tensor>& pos_weight,
                                      const optional<Tensor>& sample_weight, int64_t reduction,
                                      c10::DeviceType device) {
  check_float_input(input, device);
  check_reduction(reduction);
  check_device(input, target, "target");
  check_device(input, weight, "weight");
  check_device(input, pos_weight, "pos_weight");
  check_device(input, sample_weight, "sample_weight");
  TORCH_CHECK_TYPE(at::isFloatingType(target.scalar_type()),
                   "samplewt_ops: target must be a floating-point tensor, got ",
                   target.scalar_type());
  TORCH_CHECK_VALUE(target.sizes() == input.sizes(), "samplewt_ops: target of shape ",
                    target.sizes(), " must have input's shape ", input.sizes());
  const at::ScalarType acc = acc_type(input.scalar_type());
  ElemInputs out;
  out.samples = input.dim() > 0 ? input.size(0) : 1;
  out.per_sample = out.samples > 0 ? input.numel() / out.samples : 0;
  out.input = input.contiguous();
  out.target = target.to(input.scalar_type()).contiguous();
  out.weight = prepare_elem_weight(weight, input, acc, "weight");
  out.pos_weight = prepare_elem_weight(pos_weight, input, acc, "pos_weight");
  out.sample_weight = sample_weight_acc(sample_weight, out.samples, acc);
  return out;
}

// ---------------------------------------------------------------------------
// From prepared tensors to the kernels' shared argument layout

inline const void* ptr_or_null(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

inline float* stats_ptr(bool compute_stats, const Tensor& stats) {
  return compute_stats ? stats.data_ptr<float>() : nullptr;
}

// The rows as the kernels read them, with unit column stride (other layouts
// are copied first, and in place the caller copies the gradient back), and
// the gradient buffer from `alloc(sizes, options)`, or the rows themselves.
struct RowBuffers {
  Tensor x, grad;
};

template <class Alloc>
RowBuffers row_buffers(const Tensor& input, bool inplace, bool compute_grad, Alloc&& alloc) {
  RowBuffers b;
  const bool as_is = input.dim() == 2 ? input.stride(1) == 1 || input.size(1) <= 1
                                      : input.is_contiguous();
  b.x = as_is ? input : input.contiguous();
  if (inplace) {
    b.grad = b.x;
  } else if (compute_grad) {
    b.grad = alloc(input.sizes(), input.options());
  }
  return b;
}

inline void fill_row_layout(RowLayout& a, bool focal, const RowInputs& in, const RowBuffers& b,
                            float* stats, int64_t ignore_index, double label_smoothing,
                            double gamma, double z_loss) {
  const int64_t R = in.rows, C = b.x.size(1), P = in.positions;
  a.kind = focal ? kFocal : (in.prob ? kCrossEntropyProb : kCrossEntropyIndex);
  a.rows = R;
  a.cols = C;
  a.positions = P;
  // (N, C, d1..dk): contiguous (row_buffers), a sample every C * P elements.
  const bool spatial = b.x.dim() > 2;
  a.input = b.x.data_ptr();
  a.ld_input = spatial ? C * P : (R > 1 ? b.x.stride(0) : C);
  a.grad = b.grad.defined() ? b.grad.data_ptr() : nullptr;
  a.ld_grad = b.grad.defined() ? (spatial ? C * P : (R > 1 ? b.grad.stride(0) : C)) : 0;
  a.target = in.prob ? nullptr : in.target.data_ptr<int64_t>();
  a.target_prob = in.prob ? in.target.data_ptr() : nullptr;
  a.ld_target = C * P;
  a.class_weight = ptr_or_null(in.class_weight);
  a.stats = stats;
  a.ignore_index = ignore_index;
  a.label_smoothing = label_smoothing;
  a.gamma = gamma;
  a.z_loss = z_loss;
}

inline void fill_elem_layout(ElemLayout& a, ElemLoss kind, const ElemInputs& in,
                             const Tensor& grad, const Tensor& target_grad, float* stats,
                             double alpha, double gamma, double delta) {
  a.kind = kind;
  a.samples = in.samples;
  a.per_sample = in.per_sample;
  a.input = in.input.data_ptr();
  a.target = in.target.data_ptr();
  a.grad = grad.defined() ? grad.data_ptr() : nullptr;
  a.target_grad = target_grad.defined() ? target_grad.data_ptr() : nullptr;
  a.weight = ptr_or_null(in.weight.values);
  a.weight_full = in.weight.full;
  a.pos_weight = ptr_or_null(in.pos_weight.values);
  a.pos_weight_full = in.pos_weight.full;
  a.sample_weight = ptr_or_null(in.sample_weight);
  a.stats = stats;
  a.gamma = gamma;
  a.alpha = alpha;
  a.delta = delta;
}

}  // namespace checks
}  // namespace samplewt
