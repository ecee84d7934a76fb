// The op wrappers of the samplewt_ops schemas (op_schemas.h), written once
// for every device. Each schema's arguments become a RowCall or an ElemCall; a
// device supplies only
//     static std::tuple<Tensor, Tensor, Tensor> row_loss(const RowCall&);
//     static ElemOut elem_loss(const ElemCall&);
// (loss, grad, stats, and for element-wise ops target_grad; grad is the input
// itself for in-place calls), and
// registers the wrappers with OpWrappers<Device>::register_ops in its
// TORCH_LIBRARY_IMPL block.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <memory>
#include <mutex>
#include <tuple>

#include "loss_kinds.h"
#include "samplewt_math.h"  // ElemLoss, kElemOps

namespace samplewt {

using at::Tensor;
using c10::optional;

// One call of a row (softmax) op.
struct RowCall {
  RowLoss kind;  // kFocal, or kCrossEntropyIndex (index or probability from the target)
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

// One call of an element-wise op.
struct ElemCall {
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
  bool compute_target_grad;  // d(loss)/d(target), scaled as grad
  // mse_loss and l1_loss with `weight`: PyTorch's mean divides by sum(weight).
  bool mean_over_weight;
};

// An element-wise op's outputs, in schema order.
using ElemOut = std::tuple<Tensor, Tensor, Tensor, Tensor>;  // loss, grad, stats, target_grad

inline Tensor stats_or_empty(bool compute_stats, int64_t n, const Tensor& input) {
  return compute_stats ? at::empty({n, 3}, input.options().dtype(at::kFloat))
                       : at::empty({0}, input.options().dtype(at::kFloat));
}

// The kernel of every element-wise op, whatever its schema: it binds the
// schema's arguments by name to an ElemCall. So a new element-wise loss needs
// no wrapper of its own, only its kElemOps entry and its schema.
template <class Device>
class ElemKernel final : public c10::OperatorKernel {
 public:
  explicit ElemKernel(const ElemOp& op) : op_(op) {}

  void operator()(const c10::OperatorHandle& handle, c10::DispatchKeySet,
                  torch::jit::Stack* stack) {
    std::call_once(bound_, [&] { bind(handle.schema()); });
    const size_t n = num_args_;
    const c10::IValue* arg = stack->data() + (stack->size() - n);
    const auto at = [&](Slot s) -> const c10::IValue* {
      return index_[s] < 0 ? nullptr : arg + index_[s];
    };
    const auto tensor = [&](Slot s) -> optional<Tensor> {
      const c10::IValue* v = at(s);
      return v == nullptr || v->isNone() ? optional<Tensor>() : optional<Tensor>(v->toTensor());
    };
    const auto number = [&](Slot s, double fallback) {
      const c10::IValue* v = at(s);
      return v == nullptr ? fallback : v->toDouble();
    };
    const Tensor input = at(kInput)->toTensor();
    const Tensor target = at(kTarget)->toTensor();
    const optional<Tensor> weight = tensor(kWeight), pos_weight = tensor(kPosWeight),
                           sample_weight = tensor(kSampleWeight);
    // alpha < 0: no balance term; the defaults are the formulas' neutral values.
    const double alpha = number(kAlpha, -1.0), gamma = number(kGamma, 0.0),
                 delta = number(kDelta, 1.0);
    TORCH_CHECK_VALUE(gamma >= 0.0, "samplewt_ops: gamma must be >= 0, got ", gamma);
    TORCH_CHECK_VALUE(delta > 0.0, "samplewt_ops: delta must be > 0, got ", delta);
    auto out = Device::elem_loss({op_.kind, input, target, weight, pos_weight, sample_weight,
                                  alpha, gamma, delta, at(kReduction)->toInt(),
                                  at(kComputeGrad)->toBool(), at(kComputeStats)->toBool(),
                                  at(kComputeTargetGrad)->toBool(), op_.mean_over_weight});
    torch::jit::drop(*stack, n);
    torch::jit::push(*stack, std::move(std::get<0>(out)), std::move(std::get<1>(out)),
                     std::move(std::get<2>(out)), std::move(std::get<3>(out)));
  }

 private:
  enum Slot {
    kInput, kTarget, kWeight, kPosWeight, kSampleWeight, kAlpha, kGamma, kDelta,
    kReduction, kComputeGrad, kComputeStats, kComputeTargetGrad, kNumSlots
  };

  void bind(const c10::FunctionSchema& schema) {
    static constexpr const char* kNames[kNumSlots] = {
        "input", "target", "weight", "pos_weight", "sample_weight", "alpha", "gamma",
        "delta", "reduction", "compute_grad", "compute_stats", "compute_target_grad"};
    index_.fill(-1);
    const auto& args = schema.arguments();
    num_args_ = args.size();
    for (size_t i = 0; i < args.size(); ++i) {
      int slot = 0;
      while (slot < kNumSlots && args[i].name() != kNames[slot]) ++slot;
      if (slot < kNumSlots) index_[slot] = static_cast<int>(i);
      TORCH_CHECK(slot < kNumSlots, "samplewt_ops: ", op_.name, "'s argument ",
                  args[i].name(), " has no meaning for the element-wise kernels (op_wrappers.h)");
    }
    for (Slot s : {kInput, kTarget, kReduction, kComputeGrad, kComputeStats, kComputeTargetGrad}) {
      TORCH_CHECK(index_[s] >= 0, "samplewt_ops: ", op_.name, "'s schema lacks ", kNames[s]);
    }
  }

  const ElemOp op_;
  std::once_flag bound_;
  std::array<int, kNumSlots> index_{};  // schema position of each slot, or -1
  size_t num_args_ = 0;
};

template <class Device>
struct OpWrappers {
  using Out3 = std::tuple<Tensor, Tensor, Tensor>;
  using Out2 = std::tuple<Tensor, Tensor>;

  static Out3 cross_entropy(const Tensor& input, const Tensor& target,
                            const optional<Tensor>& weight, const optional<Tensor>& sample_weight,
                            int64_t ignore_index, double label_smoothing, int64_t reduction,
                            bool compute_grad, bool compute_stats) {
    return Device::row_loss({kCrossEntropyIndex, input, target, weight, sample_weight,
                             ignore_index, label_smoothing, 0.0, reduction, compute_grad,
                             compute_stats, false});
  }

  static Out2 cross_entropy_(Tensor& input, const Tensor& target, const optional<Tensor>& weight,
                             const optional<Tensor>& sample_weight, int64_t ignore_index,
                             double label_smoothing, int64_t reduction, bool compute_stats) {
    return loss_and_stats(Device::row_loss({kCrossEntropyIndex, input, target, weight,
                                            sample_weight, ignore_index, label_smoothing, 0.0,
                                            reduction, true, compute_stats, true}));
  }

  static Out3 focal_loss(const Tensor& input, const Tensor& target, const optional<Tensor>& alpha,
                         const optional<Tensor>& sample_weight, double gamma,
                         int64_t ignore_index, int64_t reduction, bool compute_grad,
                         bool compute_stats) {
    return Device::row_loss({kFocal, input, target, alpha, sample_weight, ignore_index, 0.0,
                             gamma, reduction, compute_grad, compute_stats, false});
  }

  static Out2 focal_loss_(Tensor& input, const Tensor& target, const optional<Tensor>& alpha,
                          const optional<Tensor>& sample_weight, double gamma,
                          int64_t ignore_index, int64_t reduction, bool compute_stats) {
    return loss_and_stats(Device::row_loss({kFocal, input, target, alpha, sample_weight,
                                            ignore_index, 0.0, gamma, reduction, true,
                                            compute_stats, true}));
  }

  static void register_ops(torch::Library& m) {
    m.impl("cross_entropy", &cross_entropy);
    m.impl("cross_entropy_", &cross_entropy_);
    m.impl("focal_loss", &focal_loss);
    m.impl("focal_loss_", &focal_loss_);
    for (const ElemOp& op : kElemOps) {
      m.impl(op.name, torch::CppFunction::makeFromBoxedFunctor(
                          std::make_unique<ElemKernel<Device>>(op)));
    }
  }

 private:
  static Out2 loss_and_stats(const Out3& out) { return {std::get<0>(out), std::get<2>(out)}; }
};

}  // namespace samplewt
