// The op wrappers of the samplewt_ops schemas (op_schemas.h), written once
// for every device. Each schema's arguments become a RowCall or an ElemCall; a
// device supplies only
//     static std::tuple<Tensor, Tensor, Tensor> row_loss(const RowCall&);
//     static ElemOut elem_loss(const ElemCall&);
// (loss, grad, stats, and for element-wise ops target_grad; grad is the input
// itself for in-place calls), whether its row kernels read (N, C, d1..dk)
// input of `cols` classes as it is (RowLayout::positions; else row_pass folds it)
//     static bool takes_positions(int64_t cols);
// the adaptive table's steps (table_step.h)
//     static void table_check_indices(const Table&);
//     static Tensor table_valid(const Table&, const Tensor& target, int64_t ignore_index);
//     static Tensor table_weights(const Table&, const Tensor& valid);  // history policies
//     static Tensor table_update(const Table&, const Tensor& stats, const Tensor& valid);
// (table_update returns a per-batch policy's weights of the batch)
// and registers the wrappers with OpWrappers<Device>::register_ops in its
// TORCH_LIBRARY_IMPL block.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <memory>
#include <mutex>
#include <tuple>

#include "loss_kinds.h"
#include "samplewt_math.h"  // ElemLoss, kElemOps
#include "table_step.h"

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
  double z_loss = 0.0;             // z-loss coefficient, in the kernels' row formulas
  optional<double> softcap = {};   // logits -> softcap * tanh(logits / softcap) first
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

template <class Device>
struct OpWrappers;

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
    const optional<Tensor> indices = tensor(kIndices), table_ema = tensor(kTableEma),
                           seen_count = tensor(kSeenCount), stat_sum = tensor(kStatSum),
                           bin_ema = tensor(kBinEma), bin_steps = tensor(kBinSteps),
                           threshold = tensor(kThreshold);
    const int64_t policy = at(kPolicy) == nullptr ? 0 : at(kPolicy)->toInt();
    const std::vector<double> params =
        at(kPolicyParams) == nullptr ? std::vector<double>() : at(kPolicyParams)->toDoubleVector();
    const TableArgs table{indices, table_ema, seen_count, stat_sum, bin_ema, bin_steps,
                          threshold, policy, params};
    auto out = OpWrappers<Device>::elem_with_table(
        {op_.kind, input, target, weight, pos_weight, sample_weight, alpha, gamma, delta,
         at(kReduction)->toInt(), at(kComputeGrad)->toBool(), at(kComputeStats)->toBool(),
         at(kComputeTargetGrad)->toBool(), op_.mean_over_weight},
        table);
    torch::jit::drop(*stack, n);
    torch::jit::push(*stack, std::move(std::get<0>(out)), std::move(std::get<1>(out)),
                     std::move(std::get<2>(out)), std::move(std::get<3>(out)));
  }

 private:
  enum Slot {
    kInput, kTarget, kWeight, kPosWeight, kSampleWeight, kAlpha, kGamma, kDelta,
    kReduction, kComputeGrad, kComputeStats, kComputeTargetGrad, kIndices, kTableEma,
    kSeenCount, kStatSum, kBinEma, kBinSteps, kThreshold, kPolicy, kPolicyParams, kNumSlots
  };

  void bind(const c10::FunctionSchema& schema) {
    static constexpr const char* kNames[kNumSlots] = {
        "input", "target", "weight", "pos_weight", "sample_weight", "alpha", "gamma",
        "delta", "reduction", "compute_grad", "compute_stats", "compute_target_grad",
        "indices", "table_ema", "seen_count", "stat_sum", "bin_ema", "bin_steps", "threshold",
        "policy", "policy_params"};
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

  // The table's parameters of every loss op (kTableArgs), and the TableArgs built from them.
#define SWT_TABLE_PARAMS                                                                 \
  const optional<Tensor>&indices, const optional<Tensor>&table_ema,                      \
      const optional<Tensor>&seen_count, const optional<Tensor>&stat_sum,                \
      const optional<Tensor>&bin_ema, const optional<Tensor>&bin_steps,                  \
      const optional<Tensor>&threshold, int64_t policy, c10::ArrayRef<double> policy_params
#define SWT_TABLE_ARGS \
  { indices, table_ema, seen_count, stat_sum, bin_ema, bin_steps, threshold, policy, policy_params }

  static Out3 cross_entropy(const Tensor& input, const Tensor& target,
                            const optional<Tensor>& weight, const optional<Tensor>& sample_weight,
                            int64_t ignore_index, double label_smoothing, int64_t reduction,
                            bool compute_grad, bool compute_stats, double z_loss,
                            optional<double> softcap, SWT_TABLE_PARAMS) {
    return row_with_table({kCrossEntropyIndex, input, target, weight, sample_weight,
                           ignore_index, label_smoothing, 0.0, reduction, compute_grad,
                           compute_stats, false, z_loss, softcap},
                          SWT_TABLE_ARGS);
  }

  static Out2 cross_entropy_(Tensor& input, const Tensor& target, const optional<Tensor>& weight,
                             const optional<Tensor>& sample_weight, int64_t ignore_index,
                             double label_smoothing, int64_t reduction, bool compute_stats,
                             double z_loss, optional<double> softcap, SWT_TABLE_PARAMS) {
    return loss_and_stats(row_with_table({kCrossEntropyIndex, input, target, weight,
                                          sample_weight, ignore_index, label_smoothing, 0.0,
                                          reduction, true, compute_stats, true, z_loss, softcap},
                                         SWT_TABLE_ARGS));
  }

  static Out3 focal_loss(const Tensor& input, const Tensor& target, const optional<Tensor>& alpha,
                         const optional<Tensor>& sample_weight, double gamma,
                         int64_t ignore_index, int64_t reduction, bool compute_grad,
                         bool compute_stats, double z_loss, optional<double> softcap,
                         SWT_TABLE_PARAMS) {
    return row_with_table({kFocal, input, target, alpha, sample_weight, ignore_index, 0.0,
                           gamma, reduction, compute_grad, compute_stats, false, z_loss, softcap},
                          SWT_TABLE_ARGS);
  }

  static Out2 focal_loss_(Tensor& input, const Tensor& target, const optional<Tensor>& alpha,
                          const optional<Tensor>& sample_weight, double gamma,
                          int64_t ignore_index, int64_t reduction, bool compute_stats,
                          double z_loss, optional<double> softcap, SWT_TABLE_PARAMS) {
    return loss_and_stats(row_with_table({kFocal, input, target, alpha, sample_weight,
                                          ignore_index, 0.0, gamma, reduction, true,
                                          compute_stats, true, z_loss, softcap},
                                         SWT_TABLE_ARGS));
  }
#undef SWT_TABLE_PARAMS
#undef SWT_TABLE_ARGS

  // A row op's pass on one device. softcap (Gemma 2) runs the kernels on
  // cap * tanh(input / cap) and multiplies their gradient by 1 - tanh^2, with
  // ATen ops around the kernels (the same on every device). Both happen in
  // the accumulation type: capped bfloat16 logits would be rounded to 8 bits
  // before the softmax. tanh is kept for the gradient, so the call holds one
  // or two more rows x C tensors. The statistics are those of the capped
  // logits, which the softmax sees.
  static Out3 row_pass(const RowCall& o) {
    TORCH_CHECK_VALUE(o.z_loss >= 0.0 && std::isfinite(o.z_loss),
                      "samplewt_ops: z_loss must be >= 0 and finite, got ", o.z_loss);
    if (o.input.dim() > 2 && !Device::takes_positions(o.input.size(1)) && folds(o)) {
      return folded_row_pass(o);
    }
    if (!o.softcap.has_value()) return Device::row_loss(o);
    const double cap = *o.softcap;
    TORCH_CHECK_VALUE(cap > 0.0 && std::isfinite(cap),
                      "samplewt_ops: softcap must be > 0 and finite (or None), got ", cap);
    const Tensor& x = o.input;
    TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()),
                     "samplewt_ops: input must be floating point, got ", x.scalar_type());
    const at::ScalarType dt = x.scalar_type(), acc = checks::acc_type(dt);
    const auto with_input = [&](const Tensor& in, bool grad, bool inplace) {
      Out3 out = Device::row_loss({o.kind, in, o.target, o.class_weight, o.sample_weight,
                                   o.ignore_index, o.label_smoothing, o.gamma, o.reduction, grad,
                                   o.compute_stats, inplace, o.z_loss, {}});
      std::get<0>(out) = std::get<0>(out).to(dt);
      return out;
    };
    const Tensor t = at::tanh(x.to(acc) / cap);
    const Tensor c = at::scalar_tensor(cap, at::kDouble);
    if (!o.compute_grad) return with_input(t.mul_(c), false, false);
    // The gradient's buffer: input itself in place (when it has the accumulation type).
    Tensor buf = (o.inplace && acc == dt) ? x : at::empty_like(t, at::MemoryFormat::Contiguous);
    at::mul_out(buf, t, c);
    Out3 out = with_input(buf, true, true);
    at::tanh_backward_out(buf, buf, t);
    if (o.inplace && !buf.is_same(x)) x.copy_(buf);
    std::get<1>(out) = o.inplace ? x : (acc == dt ? buf : buf.to(dt));
    return out;
  }

  // Whether an (N, C, d1..dk) call folds to rows: with a floating-point
  // input and a target of the right shape (else the device's checks raise
  // their error on the call as it is).
  static bool folds(const RowCall& o) {
    const bool prob = at::isFloatingType(o.target.scalar_type());
    return at::isFloatingType(o.input.scalar_type()) &&
           (prob ? o.target.sizes() == o.input.sizes()
                 : o.target.sizes() == c10::IntArrayRef(checks::row_target_shape(o.input)));
  }

  // (N, C, d1..dk) for kernels that read (rows, C) rows only: the class
  // dimension moved last (a copy), and the gradient moved back into a
  // contiguous tensor of input's shape (in place: into input).
  static Out3 folded_row_pass(const RowCall& o) {
    const Tensor& x = o.input;
    const int64_t C = x.size(1);
    std::vector<int64_t> moved = checks::row_target_shape(x);  // (N, d1..dk)
    const int64_t R = c10::multiply_integers(moved);
    const bool prob = at::isFloatingType(o.target.scalar_type());
    const Tensor rows = x.movedim(1, -1).reshape({R, C});
    const Tensor target = prob ? o.target.movedim(1, -1).reshape({R, C}) : o.target.reshape({R});
    Out3 out = row_pass({o.kind, rows, target, o.class_weight, o.sample_weight, o.ignore_index,
                         o.label_smoothing, o.gamma, o.reduction, o.compute_grad,
                         o.compute_stats, o.inplace, o.z_loss, o.softcap});
    Tensor& grad = std::get<1>(out);
    if (!o.compute_grad) return out;
    moved.push_back(C);  // (N, d1..dk, C)
    // In place, rows is a view of x where the fold moves nothing (every d_i
    // = 1), and the device has written x already.
    if (o.inplace && rows.is_alias_of(x)) {
      grad = x;
      return out;
    }
    const Tensor back = grad.reshape(moved).movedim(-1, 1);
    grad = o.inplace ? x.copy_(back) : back.contiguous();
    return out;
  }

  // A row op's call, through its table when one is given (table_step.h).
  static Out3 row_with_table(const RowCall& o, const TableArgs& ta) {
    if (!ta.active()) return row_pass(o);
    TORCH_CHECK_VALUE(o.input.dim() == 2, "samplewt_ops: with a table, input must be 2-D "
                      "(rows, classes), got ", o.input.sizes());
    const Table t = check_table(ta, o.input, o.input.size(0), true);
    Device::table_check_indices(t);
    const bool index_target = !at::isFloatingType(o.target.scalar_type());
    const Tensor valid = index_target ? Device::table_valid(t, o.target, o.ignore_index) : Tensor();
    const bool per_batch = table_per_batch(t.policy);
    optional<Tensor> sw = o.sample_weight;
    if (!per_batch) sw = history_sample_weight(t, valid, o.sample_weight);
    // A per-batch policy's pass runs unreduced, or, on the CPU, as a sum whose
    // per-row losses (below float64, where the statistics have the kernels'
    // own precision) come from the statistics.
    const bool loss_from_stats = per_batch && o.input.is_cpu() && o.reduction != kNone &&
                                 o.input.scalar_type() != at::kDouble;
    const int64_t pass_reduction = !per_batch ? o.reduction : (loss_from_stats ? kSum : kNone);
    Out3 out = row_pass({o.kind, o.input, o.target, o.class_weight, sw, o.ignore_index,
                         o.label_smoothing, o.gamma, pass_reduction, o.compute_grad, true,
                         o.inplace, o.z_loss, o.softcap});
    const Tensor stats = per_sample_stats(std::get<2>(out), t);
    if (per_batch) {
      const Tensor bw = Device::table_update(t, stats, valid);
      if (o.input.is_cpu()) {
        const table_detail::CpuRowShare share(o.input, o.target, o.kind != kFocal,
                                              o.class_weight, o.ignore_index);
        const Tensor& row_stats = std::get<2>(out);
        std::get<0>(out) = table_detail::scale_on_cpu(
            t, bw, std::get<0>(out), {std::get<1>(out)}, o.reduction, share,
            sample_weights(o.sample_weight), loss_from_stats ? row_stats.data_ptr<float>() : nullptr);
      } else {
        const Tensor share =
            o.reduction == kMean ? row_mean_share(o.input, o.target, o.kind != kFocal,
                                                  o.class_weight, o.ignore_index)
                                 : Tensor();
        std::get<0>(out) = scale_by_batch_weights(t, bw, std::get<0>(out), {std::get<1>(out)},
                                                  o.reduction, share, sample_weights(o.sample_weight));
      }
    } else {
      Device::table_update(t, stats, valid);
    }
    if (!o.compute_stats) std::get<2>(out) = stats_or_empty(false, 0, o.input);
    return out;
  }

  // An element-wise op's call, through its table when one is given.
  static ElemOut elem_with_table(const ElemCall& o, const TableArgs& ta) {
    if (!ta.active()) return Device::elem_loss(o);
    const int64_t samples = o.input.dim() == 0 ? 1 : o.input.size(0);
    const Table t = check_table(ta, o.input, samples, false);
    Device::table_check_indices(t);
    const bool per_batch = table_per_batch(t.policy);
    optional<Tensor> sw = o.sample_weight;
    if (!per_batch) sw = history_sample_weight(t, Tensor(), o.sample_weight);
    ElemOut out = Device::elem_loss({o.kind, o.input, o.target, o.weight, o.pos_weight, sw,
                                     o.alpha, o.gamma, o.delta, per_batch ? kNone : o.reduction,
                                     o.compute_grad, true, o.compute_target_grad,
                                     o.mean_over_weight});
    const Tensor stats = std::get<2>(out);
    if (per_batch) {
      const Tensor bw = Device::table_update(t, stats, Tensor());
      const Tensor share = o.reduction == kMean
                               ? elem_mean_share(o.input, o.weight, o.mean_over_weight, samples)
                               : Tensor();
      std::get<0>(out) =
          scale_by_batch_weights(t, bw, std::get<0>(out), {std::get<1>(out), std::get<3>(out)},
                                 o.reduction, share, sample_weights(o.sample_weight));
    } else {
      Device::table_update(t, stats, Tensor());
    }
    if (!o.compute_stats) std::get<2>(out) = stats_or_empty(false, 0, o.input);
    return out;
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

  static Tensor sample_weights(const optional<Tensor>& sw) {
    return checks::has(sw) ? *sw : Tensor();
  }

  // A history policy's weights of the batch (before it), times the rows'
  // sample weights, one per row (float32, as the reference multiplies them).
  static Tensor history_sample_weight(const Table& t, const Tensor& valid,
                                      const optional<Tensor>& sample_weight) {
    Tensor w = per_row(Device::table_weights(t, valid), t);
    if (checks::has(sample_weight)) {
      TORCH_CHECK_VALUE(sample_weight->dim() == 1 && sample_weight->size(0) == w.size(0),
                        "samplewt_ops: sample_weight must have shape (", w.size(0), "), got ",
                        sample_weight->sizes());
      w = w * sample_weight->to(at::kFloat);
    }
    return w;
  }
};

}  // namespace samplewt
