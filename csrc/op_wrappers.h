// The op wrappers of the samplewt_ops schemas (ops.cpp), written once for
// every device. Each schema's arguments become a RowCall or an ElemCall; a
// device supplies only
//     static std::tuple<Tensor, Tensor, Tensor> row_loss(const RowCall&);
//     static std::tuple<Tensor, Tensor, Tensor> elem_loss(const ElemCall&);
// (loss, grad, stats; grad is the input itself for in-place calls), and
// registers the wrappers with OpWrappers<Device>::register_ops in its
// TORCH_LIBRARY_IMPL block.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "loss_kinds.h"

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
  // mse_loss and l1_loss with `weight`: PyTorch's mean divides by sum(weight).
  bool mean_over_weight;
};

inline Tensor stats_or_empty(bool compute_stats, int64_t n, const Tensor& input) {
  return compute_stats ? at::empty({n, 3}, input.options().dtype(at::kFloat))
                       : at::empty({0}, input.options().dtype(at::kFloat));
}

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

  static Out3 sigmoid_focal_loss(const Tensor& input, const Tensor& target,
                                 const optional<Tensor>& sample_weight, double alpha,
                                 double gamma, int64_t reduction, bool compute_grad,
                                 bool compute_stats) {
    const optional<Tensor> none;
    return Device::elem_loss({kSigmoidFocal, input, target, none, none, sample_weight, alpha,
                              gamma, 1.0, reduction, compute_grad, compute_stats, false});
  }

  static Out3 binary_cross_entropy_with_logits(const Tensor& input, const Tensor& target,
                                               const optional<Tensor>& weight,
                                               const optional<Tensor>& pos_weight,
                                               const optional<Tensor>& sample_weight,
                                               int64_t reduction, bool compute_grad,
                                               bool compute_stats) {
    return Device::elem_loss({kBCEWithLogits, input, target, weight, pos_weight, sample_weight,
                              0.0, 0.0, 1.0, reduction, compute_grad, compute_stats, false});
  }

  // mse_loss and l1_loss share a signature and PyTorch's mean over sum(weight).
  template <ElemLoss KIND>
  static Out3 regression(const Tensor& input, const Tensor& target,
                         const optional<Tensor>& weight, const optional<Tensor>& sample_weight,
                         int64_t reduction, bool compute_grad, bool compute_stats) {
    const optional<Tensor> none;
    return Device::elem_loss({KIND, input, target, weight, none, sample_weight, 0.0, 0.0, 1.0,
                              reduction, compute_grad, compute_stats, true});
  }

  static Out3 huber_loss(const Tensor& input, const Tensor& target,
                         const optional<Tensor>& weight, const optional<Tensor>& sample_weight,
                         double delta, int64_t reduction, bool compute_grad,
                         bool compute_stats) {
    const optional<Tensor> none;
    return Device::elem_loss({kHuber, input, target, weight, none, sample_weight, 0.0, 0.0, delta,
                              reduction, compute_grad, compute_stats, false});
  }

  // Calls `def(name, fn)` for every op: m.impl in a TORCH_LIBRARY_IMPL
  // block, or another binding (the tests' emulation binds them with pybind).
  template <class Def>
  static void for_each_op(Def&& def) {
    def("cross_entropy", &cross_entropy);
    def("cross_entropy_", &cross_entropy_);
    def("focal_loss", &focal_loss);
    def("focal_loss_", &focal_loss_);
    def("sigmoid_focal_loss", &sigmoid_focal_loss);
    def("binary_cross_entropy_with_logits", &binary_cross_entropy_with_logits);
    def("mse_loss", &regression<kMSE>);
    def("l1_loss", &regression<kL1>);
    def("huber_loss", &huber_loss);
  }

  static void register_ops(torch::Library& m) {
    for_each_op([&](const char* name, auto fn) { m.impl(name, fn); });
  }

 private:
  static Out2 loss_and_stats(const Out3& out) { return {std::get<0>(out), std::get<2>(out)}; }
};

}  // namespace samplewt
