// CPU implementations of the samplewt_ops schemas (csrc/ops.cpp): argument
// checks, the O(rows) pre-pass that fixes each row's gradient scale, the
// call into the vectorised kernel of the selected instruction set, and the
// final reduction.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <tuple>

#include "../samplewt_math.h"
#include "grad_buffer.h"
#include "kernel_args.h"

namespace samplewt {
namespace cpu {

using at::Tensor;
using c10::optional;

// ---------------------------------------------------------------------------
// Instruction-set dispatch

namespace {
bool cpu_has_avx512() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_has_avx2() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}
}  // namespace

// Read on every call (a getenv is cheap next to a kernel) so that tests can
// switch instruction sets within one process.
const char* selected_isa() {
  const char* want = std::getenv("SAMPLEWT_CPU_ISA");
  const bool avx512 = cpu_has_avx512(), avx2 = cpu_has_avx2();
  if (want && *want) {
    if (std::strcmp(want, "DEFAULT") == 0) return "DEFAULT";
    if (std::strcmp(want, "AVX2") == 0 && avx2) return "AVX2";
    if (std::strcmp(want, "AVX512") == 0 && avx512) return "AVX512";
  }
  return avx512 ? "AVX512" : avx2 ? "AVX2" : "DEFAULT";
}

RowKernelFn row_kernel() {
  const char* isa = selected_isa();
  if (std::strcmp(isa, "AVX512") == 0) return AVX512::row_loss_kernel;
  if (std::strcmp(isa, "AVX2") == 0) return AVX2::row_loss_kernel;
  return DEFAULT::row_loss_kernel;
}

ElemKernelFn elem_kernel() {
  const char* isa = selected_isa();
  if (std::strcmp(isa, "AVX512") == 0) return AVX512::elem_loss_kernel;
  if (std::strcmp(isa, "AVX2") == 0) return AVX2::elem_loss_kernel;
  return DEFAULT::elem_loss_kernel;
}

// ---------------------------------------------------------------------------
// Shared checks

namespace {

at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void check_reduction(int64_t reduction) {
  TORCH_CHECK_VALUE(reduction >= kNone && reduction <= kSum,
                    "samplewt_ops: reduction must be 0 (none), 1 (mean) or 2 (sum), got ",
                    reduction);
}

void check_float_input(const Tensor& input) {
  TORCH_CHECK(input.device().is_cpu(), "samplewt_ops: input must be a CPU tensor here");
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()),
                   "samplewt_ops: input must be float32, float64, bfloat16 or float16, got ",
                   input.scalar_type());
}

void check_device(const Tensor& input, const optional<Tensor>& t, const char* name) {
  if (t.has_value() && t->defined()) {
    TORCH_CHECK(t->device() == input.device(), "samplewt_ops: ", name,
                " must be on the same device as input (", input.device(), "), got ",
                t->device());
  }
}

// sample_weight as a contiguous accumulation-type vector of length n,
// checked to be non-negative and finite (never silently garbage).
Tensor prepare_sample_weight(const optional<Tensor>& sample_weight, int64_t n,
                             at::ScalarType acc) {
  if (!sample_weight.has_value() || !sample_weight->defined()) return Tensor();
  const Tensor& w = *sample_weight;
  TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()),
                   "samplewt_ops: sample_weight must be a floating-point tensor, got ",
                   w.scalar_type());
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == n,
                    "samplewt_ops: sample_weight must have shape (", n, "), got ",
                    w.sizes());
  Tensor out = w.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "samplewt_check_sample_weight", [&] {
    const scalar_t* p = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK_VALUE(std::isfinite(p[i]) && p[i] >= 0,
                        "samplewt_ops: sample_weight must be non-negative and finite, got ",
                        p[i], " at index ", i);
    }
  });
  return out;
}

Tensor empty_like_nothing(const Tensor& input) { return at::empty({0}, input.options()); }

Tensor stats_or_empty(bool compute_stats, int64_t n, const Tensor& input) {
  return compute_stats ? at::empty({n, 3}, input.options().dtype(at::kFloat))
                       : at::empty({0}, input.options().dtype(at::kFloat));
}

// ---------------------------------------------------------------------------
// Row losses

struct RowOpArgs {
  RowLoss kind;
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
  check_float_input(input);
  check_reduction(o.reduction);
  check_device(input, o.target, "target");
  check_device(input, o.class_weight, o.kind == kFocal ? "alpha" : "weight");
  check_device(input, o.sample_weight, "sample_weight");
  TORCH_CHECK_VALUE(input.dim() == 2, "samplewt_ops: input must be 2-D (rows, classes), got ",
                    input.sizes());
  const int64_t R = input.size(0), C = input.size(1);
  const at::ScalarType acc = acc_type(input.scalar_type());
  const bool prob = at::isFloatingType(o.target.scalar_type());
  TORCH_CHECK_TYPE(!(prob && o.kind == kFocal),
                   "samplewt_ops: focal_loss target must hold class indices (int64), got ",
                   o.target.scalar_type());
  RowLoss kind = o.kind == kFocal ? kFocal : (prob ? kCrossEntropyProb : kCrossEntropyIndex);

  Tensor target;
  if (prob) {
    TORCH_CHECK_VALUE(o.target.sizes() == input.sizes(),
                      "samplewt_ops: probability target must have input's shape ",
                      input.sizes(), ", got ", o.target.sizes());
    target = o.target.to(input.scalar_type()).contiguous();
  } else {
    TORCH_CHECK_TYPE(o.target.scalar_type() == at::kLong || o.target.scalar_type() == at::kInt,
                     "samplewt_ops: target must hold class indices (int64) or class "
                     "probabilities (floating point), got ",
                     o.target.scalar_type());
    TORCH_CHECK_VALUE(o.target.dim() == 1 && o.target.size(0) == R,
                      "samplewt_ops: target must have shape (", R, "), got ", o.target.sizes());
    target = o.target.to(at::kLong).contiguous();
  }
  TORCH_CHECK_VALUE(o.label_smoothing >= 0.0 && o.label_smoothing <= 1.0,
                    "samplewt_ops: label_smoothing must be in [0, 1], got ", o.label_smoothing);
  TORCH_CHECK_VALUE(o.gamma >= 0.0, "samplewt_ops: gamma must be >= 0, got ", o.gamma);

  Tensor cw;
  double sum_cw = static_cast<double>(C);
  if (o.class_weight.has_value() && o.class_weight->defined()) {
    TORCH_CHECK_VALUE(o.class_weight->dim() == 1 && o.class_weight->size(0) == C,
                      "samplewt_ops: ", kind == kFocal ? "alpha" : "weight",
                      " must have shape (", C, "), got ", o.class_weight->sizes());
    cw = o.class_weight->to(acc).contiguous();
    sum_cw = cw.sum().item<double>();
  }
  Tensor sw = prepare_sample_weight(o.sample_weight, R, acc);

  // Pre-pass over rows: check targets, and fix each row's gradient scale,
  // which for "mean" needs the whole batch's denominator first.
  Tensor grad_scale = at::empty({R}, input.options().dtype(acc));
  double denom = 0.0;
  AT_DISPATCH_FLOATING_TYPES(acc, "samplewt_row_prepass", [&] {
    const int64_t* y = prob ? nullptr : target.data_ptr<int64_t>();
    const scalar_t* w = sw.defined() ? sw.data_ptr<scalar_t>() : nullptr;
    const scalar_t* cwp = cw.defined() ? cw.data_ptr<scalar_t>() : nullptr;
    scalar_t* gs = grad_scale.data_ptr<scalar_t>();
    for (int64_t r = 0; r < R; ++r) {
      const double wr = w ? static_cast<double>(w[r]) : 1.0;
      double share = wr;
      if (y) {
        if (y[r] == o.ignore_index) {
          gs[r] = 0;
          continue;
        }
        TORCH_CHECK_INDEX(y[r] >= 0 && y[r] < C, "samplewt_ops: target ", y[r],
                          " is out of bounds for ", C, " classes (row ", r, ")");
        if (kind == kCrossEntropyIndex && cwp) share = wr * static_cast<double>(cwp[y[r]]);
      }
      denom += share;
      gs[r] = static_cast<scalar_t>(wr);
    }
    if (o.reduction == kMean) {
      for (int64_t r = 0; r < R; ++r) {
        if (gs[r] != scalar_t(0)) gs[r] = static_cast<scalar_t>(gs[r] / denom);
      }
    }
  });

  // Kernels need unit column stride; other layouts are copied first and,
  // in place, the gradient is copied back.
  Tensor x = input.stride(1) == 1 || C <= 1 ? input : input.contiguous();
  Tensor grad;
  if (o.inplace) {
    grad = x;
  } else if (o.compute_grad) {
    grad = alloc_grad_buffer({R, C}, input.options());
  }
  Tensor row_loss_acc = at::empty({R}, input.options().dtype(acc));
  Tensor stats = stats_or_empty(o.compute_stats, R, input);

  RowArgs a;
  a.kind = kind;
  a.dtype = input.scalar_type();
  a.rows = R;
  a.cols = C;
  a.input = x.data_ptr();
  a.ld_input = R > 1 ? x.stride(0) : C;
  a.grad = grad.defined() ? grad.data_ptr() : nullptr;
  a.ld_grad = grad.defined() ? (R > 1 ? grad.stride(0) : C) : 0;
  a.target = prob ? nullptr : target.data_ptr<int64_t>();
  a.target_prob = prob ? target.data_ptr() : nullptr;
  a.ld_target = C;
  a.class_weight = cw.defined() ? cw.data_ptr() : nullptr;
  a.grad_scale = grad_scale.data_ptr();
  a.row_loss = row_loss_acc.data_ptr();
  a.stats = o.compute_stats ? stats.data_ptr<float>() : nullptr;
  a.ignore_index = o.ignore_index;
  a.label_smoothing = o.label_smoothing;
  a.gamma = o.gamma;
  a.sum_class_weight = sum_cw;
  if (R > 0 && C > 0) row_kernel()(a);
  if (o.inplace && !x.is_same(input)) input.copy_(x);

  // Reduction, in double so that large batches sum exactly enough.
  Tensor loss;
  if (o.reduction == kNone) {
    loss = (sw.defined() ? row_loss_acc * sw : row_loss_acc).to(input.scalar_type());
  } else {
    double total = 0.0;
    AT_DISPATCH_FLOATING_TYPES(acc, "samplewt_row_reduce", [&] {
      const scalar_t* l = row_loss_acc.data_ptr<scalar_t>();
      const scalar_t* w = sw.defined() ? sw.data_ptr<scalar_t>() : nullptr;
      for (int64_t r = 0; r < R; ++r) {
        total += w ? static_cast<double>(w[r]) * static_cast<double>(l[r])
                   : static_cast<double>(l[r]);
      }
    });
    if (o.reduction == kMean) total /= denom;
    loss = at::scalar_tensor(total, input.options());
  }
  if (!grad.defined()) grad = empty_like_nothing(input);
  return {loss, grad, stats};
}

std::tuple<Tensor, Tensor, Tensor> cross_entropy(const Tensor& input, const Tensor& target,
                                                 const optional<Tensor>& weight,
                                                 const optional<Tensor>& sample_weight,
                                                 int64_t ignore_index, double label_smoothing,
                                                 int64_t reduction, bool compute_grad,
                                                 bool compute_stats) {
  return row_loss({kCrossEntropyIndex, input, target, weight, sample_weight, ignore_index,
                   label_smoothing, 0.0, reduction, compute_grad, compute_stats, false});
}

std::tuple<Tensor, Tensor> cross_entropy_(Tensor& input, const Tensor& target,
                                          const optional<Tensor>& weight,
                                          const optional<Tensor>& sample_weight,
                                          int64_t ignore_index, double label_smoothing,
                                          int64_t reduction, bool compute_stats) {
  auto out = row_loss({kCrossEntropyIndex, input, target, weight, sample_weight, ignore_index,
                       label_smoothing, 0.0, reduction, true, compute_stats, true});
  return {std::get<0>(out), std::get<2>(out)};
}

std::tuple<Tensor, Tensor, Tensor> focal_loss(const Tensor& input, const Tensor& target,
                                              const optional<Tensor>& alpha,
                                              const optional<Tensor>& sample_weight,
                                              double gamma, int64_t ignore_index,
                                              int64_t reduction, bool compute_grad,
                                              bool compute_stats) {
  return row_loss({kFocal, input, target, alpha, sample_weight, ignore_index, 0.0, gamma,
                   reduction, compute_grad, compute_stats, false});
}

std::tuple<Tensor, Tensor> focal_loss_(Tensor& input, const Tensor& target,
                                       const optional<Tensor>& alpha,
                                       const optional<Tensor>& sample_weight, double gamma,
                                       int64_t ignore_index, int64_t reduction,
                                       bool compute_stats) {
  auto out = row_loss({kFocal, input, target, alpha, sample_weight, ignore_index, 0.0, gamma,
                       reduction, true, compute_stats, true});
  return {std::get<0>(out), std::get<2>(out)};
}

// ---------------------------------------------------------------------------
// Element-wise losses

// A weight broadcast to input, as the kernel reads it: one row of per_sample
// values shared by every sample, or the full tensor.
struct ElemWeight {
  Tensor values;
  bool full = false;
};

ElemWeight prepare_elem_weight(const optional<Tensor>& weight, const Tensor& input,
                               at::ScalarType acc, const char* name) {
  ElemWeight out;
  if (!weight.has_value() || !weight->defined()) return out;
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
  check_float_input(input);
  check_reduction(o.reduction);
  check_device(input, o.target, "target");
  check_device(input, o.weight, "weight");
  check_device(input, o.pos_weight, "pos_weight");
  check_device(input, o.sample_weight, "sample_weight");
  TORCH_CHECK_TYPE(at::isFloatingType(o.target.scalar_type()),
                   "samplewt_ops: target must be a floating-point tensor, got ",
                   o.target.scalar_type());
  TORCH_CHECK_VALUE(o.target.sizes() == input.sizes(), "samplewt_ops: target of shape ",
                    o.target.sizes(), " must have input's shape ", input.sizes());
  if (o.kind == kSigmoidFocal) {
    TORCH_CHECK_VALUE(o.gamma >= 0.0, "samplewt_ops: gamma must be >= 0, got ", o.gamma);
  }
  if (o.kind == kHuber) {
    TORCH_CHECK_VALUE(o.delta > 0.0, "samplewt_ops: delta must be > 0, got ", o.delta);
  }
  const at::ScalarType acc = acc_type(input.scalar_type());
  const int64_t N = input.dim() > 0 ? input.size(0) : 1;
  const int64_t numel = input.numel();
  const int64_t S = N > 0 ? numel / N : 0;
  Tensor x = input.contiguous();
  Tensor t = o.target.to(input.scalar_type()).contiguous();
  ElemWeight w = prepare_elem_weight(o.weight, input, acc, "weight");
  ElemWeight pw = prepare_elem_weight(o.pos_weight, input, acc, "pos_weight");
  Tensor sw = prepare_sample_weight(o.sample_weight, N, acc);

  // What "mean" divides by: each sample's share (S elements, or its weight
  // sum) times its sample weight.
  double denom = 0.0;
  Tensor grad_scale;
  if (sw.defined() || o.reduction == kMean) {
    Tensor share;
    if (o.mean_over_weight && w.values.defined()) {
      share = w.full ? w.values.view({N, S}).sum(1, false, at::kDouble)
                     : at::full({N}, w.values.sum().item<double>(), input.options().dtype(at::kDouble));
    } else {
      share = at::full({N}, static_cast<double>(S), input.options().dtype(at::kDouble));
    }
    Tensor wd = sw.defined() ? sw.to(at::kDouble) : at::ones({N}, share.options());
    denom = (wd * share).sum().item<double>();
    Tensor gs = o.reduction == kMean ? wd / denom : wd;
    // A sample of weight 0 contributes nothing, even when denom is 0.
    grad_scale = at::where(wd == 0, at::zeros_like(gs), gs).to(acc).contiguous();
  }

  Tensor grad = o.compute_grad ? alloc_grad_buffer(input.sizes(), input.options()) : Tensor();
  Tensor out_elem = o.reduction == kNone ? at::empty(input.sizes(), input.options()) : Tensor();
  Tensor sample_loss = at::empty({N}, input.options().dtype(acc));
  Tensor stats = stats_or_empty(o.compute_stats, N, input);

  ElemArgs a;
  a.kind = o.kind;
  a.dtype = input.scalar_type();
  a.samples = N;
  a.per_sample = S;
  a.input = x.data_ptr();
  a.target = t.data_ptr();
  a.grad = grad.defined() ? grad.data_ptr() : nullptr;
  a.out_elem = out_elem.defined() ? out_elem.data_ptr() : nullptr;
  a.weight = w.values.defined() ? w.values.data_ptr() : nullptr;
  a.weight_full = w.full;
  a.pos_weight = pw.values.defined() ? pw.values.data_ptr() : nullptr;
  a.pos_weight_full = pw.full;
  a.sample_weight = sw.defined() ? sw.data_ptr() : nullptr;
  a.grad_scale = grad_scale.defined() ? grad_scale.data_ptr() : nullptr;
  a.sample_loss = sample_loss.data_ptr();
  a.stats = o.compute_stats ? stats.data_ptr<float>() : nullptr;
  a.gamma = o.gamma;
  a.alpha = o.alpha;
  a.delta = o.delta;
  if (numel > 0) elem_kernel()(a);

  Tensor loss;
  if (o.reduction == kNone) {
    loss = out_elem;
  } else {
    double total = 0.0;
    AT_DISPATCH_FLOATING_TYPES(acc, "samplewt_elem_reduce", [&] {
      const scalar_t* l = sample_loss.data_ptr<scalar_t>();
      const scalar_t* wp = sw.defined() ? sw.data_ptr<scalar_t>() : nullptr;
      for (int64_t i = 0; i < (numel > 0 ? N : 0); ++i) {
        total += wp ? static_cast<double>(wp[i]) * static_cast<double>(l[i])
                    : static_cast<double>(l[i]);
      }
    });
    if (o.reduction == kMean) total /= denom;
    loss = at::scalar_tensor(total, input.options());
  }
  if (!grad.defined()) grad = empty_like_nothing(input);
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

TORCH_LIBRARY_IMPL(samplewt_ops, CPU, m) {
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

}  // namespace cpu
}  // namespace samplewt
