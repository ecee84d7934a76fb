// Every samplewt_ops schema, defined once: the extension's registry
// (ops.cpp) defines them, and so does the tests' host emulation of the CUDA
// kernels, under its own namespace.
//
// Conventions shared by all ops:
// - reduction is 0 none, 1 mean, 2 sum (at::Reduction).
// - compute_grad=False writes no gradient and returns an empty `grad`.
// - compute_stats=True also returns per-sample statistics (samples, 3) float32:
//   the loss without sample weight, the L2 norm of its gradient, and the GHM
//   gradient magnitude. They feed the adaptive weight tables.
// - Row ops (cross_entropy, focal_loss) take input (rows, C), or (N, C,
//   d1..dk) as N * d1 * .. * dk rows (target (N, d1..dk), sample_weight,
//   stats and an unreduced loss per row); with a table, (rows, C) only. The
//   Python layer folds (C,) into one row.
// - compute_target_grad=True (element-wise ops) also returns d(loss)/d(target),
//   scaled as `grad`; otherwise `target_grad` is empty.
// - The `_` variants write the gradient into `input` itself (inplace_grad).
// - An element-wise op's arguments are bound by name (op_wrappers.h): its own
//   scalars are among alpha, gamma and delta, its tensors among weight and
//   pos_weight.
// - Every loss op ends with the same table arguments (kTableArgs): an
//   adaptive weight table's tensors, which the op reads and updates in place
//   (table_step.h); policy=0 means no table.
#pragma once

#include <torch/library.h>

#include <string>

namespace samplewt {

// The loss ops that are not in place: those with autograd (autograd.cpp).
inline constexpr const char* kLossOps[] = {
    "cross_entropy", "focal_loss", "sigmoid_focal_loss", "binary_cross_entropy_with_logits",
    "mse_loss", "l1_loss", "huber_loss"};

// The in-place loss ops: they write d(loss)/d(input) into input (autograd.cpp).
inline constexpr const char* kInplaceLossOps[] = {"cross_entropy_", "focal_loss_"};

// The adaptive table's arguments of every loss op (table_step.h), before its
// outputs. Mutated in place: the table's EMAs, counts, running sums and GHM's
// bins.
inline constexpr const char* kTableArgs =
    ", Tensor? indices=None, Tensor(t0!)? table_ema=None, Tensor(t1!)? seen_count=None, "
    "Tensor(t2!)? stat_sum=None, Tensor(t3!)? bin_ema=None, Tensor(t4!)? bin_steps=None, "
    "Tensor? threshold=None, int policy=0, float[] policy_params=[]) -> ";

// A loss op's schema: its arguments, the table's, its outputs.
inline std::string loss_schema(const char* args, const char* outputs) {
  return std::string(args) + kTableArgs + outputs;
}

// The row ops' z-loss and softcap (op_wrappers.h), after their own arguments.
#define ROW_EXTRAS ", float z_loss=0., float? softcap=None"

inline void define_ops(torch::Library& m) {
  m.def(loss_schema(
      "cross_entropy(Tensor input, Tensor target, Tensor? weight, Tensor? "
      "sample_weight, int ignore_index, float label_smoothing, int reduction, bool "
      "compute_grad, bool compute_stats" ROW_EXTRAS,
      "(Tensor loss, Tensor grad, Tensor stats)").c_str());
  m.def(loss_schema(
      "cross_entropy_(Tensor(a!) input, Tensor target, Tensor? weight, Tensor? "
      "sample_weight, int ignore_index, float label_smoothing, int reduction, bool "
      "compute_stats" ROW_EXTRAS,
      "(Tensor loss, Tensor stats)").c_str());
  m.def(loss_schema(
      "focal_loss(Tensor input, Tensor target, Tensor? alpha, Tensor? sample_weight, "
      "float gamma, int ignore_index, int reduction, bool compute_grad, bool "
      "compute_stats" ROW_EXTRAS,
      "(Tensor loss, Tensor grad, Tensor stats)").c_str());
  m.def(loss_schema(
      "focal_loss_(Tensor(a!) input, Tensor target, Tensor? alpha, Tensor? "
      "sample_weight, float gamma, int ignore_index, int reduction, bool compute_stats"
      ROW_EXTRAS,
      "(Tensor loss, Tensor stats)").c_str());
  m.def(loss_schema(
      "sigmoid_focal_loss(Tensor input, Tensor target, Tensor? sample_weight, float "
      "alpha, float gamma, int reduction, bool compute_grad, bool compute_stats, bool "
      "compute_target_grad=False",
      "(Tensor loss, Tensor grad, Tensor stats, Tensor target_grad)").c_str());
  m.def(loss_schema(
      "binary_cross_entropy_with_logits(Tensor input, Tensor target, Tensor? weight, "
      "Tensor? pos_weight, Tensor? sample_weight, int reduction, bool compute_grad, "
      "bool compute_stats, bool compute_target_grad=False",
      "(Tensor loss, Tensor grad, Tensor stats, Tensor target_grad)").c_str());
  m.def(loss_schema(
      "mse_loss(Tensor input, Tensor target, Tensor? weight, Tensor? sample_weight, int "
      "reduction, bool compute_grad, bool compute_stats, bool compute_target_grad=False",
      "(Tensor loss, Tensor grad, Tensor stats, Tensor target_grad)").c_str());
  m.def(loss_schema(
      "l1_loss(Tensor input, Tensor target, Tensor? weight, Tensor? sample_weight, int "
      "reduction, bool compute_grad, bool compute_stats, bool compute_target_grad=False",
      "(Tensor loss, Tensor grad, Tensor stats, Tensor target_grad)").c_str());
  m.def(loss_schema(
      "huber_loss(Tensor input, Tensor target, Tensor? weight, Tensor? sample_weight, "
      "float delta, int reduction, bool compute_grad, bool compute_stats, bool "
      "compute_target_grad=False",
      "(Tensor loss, Tensor grad, Tensor stats, Tensor target_grad)").c_str());
}
#undef ROW_EXTRAS

}  // namespace samplewt
