// The adaptive table's steps on CUDA (table_step.h), templated on the
// backend like cuda_ops.h: the history weights and the update by the kernels
// of table_update.cu, the per-batch policies (OHEM, GHM) by ATen ops on the
// device. Nothing reads a value back to the host, so a training step with a
// table stays capturable in a CUDA graph. Indices are not range-checked here
// (that would synchronise): Python checks them in validation mode, and the
// kernels never use one outside the table as an address.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

#include "../table_step.h"
#include "launchers.h"

namespace samplewt {
namespace cuda {

inline TableKernelArgs table_kernel_args(const Table& t) {
  TableKernelArgs a;
  a.policy = t.policy;
  std::copy(t.params.begin(), t.params.begin() + std::min<size_t>(t.params.size(), 4), a.params);
  a.batch = t.batch;
  a.num_samples = t.num_samples;
  a.indices = t.indices.data_ptr<int64_t>();
  a.ema = t.ema.data_ptr<float>();
  a.stat_stride = t.stat_stride;
  a.sample_stride = t.sample_stride;
  a.seen_count = t.seen_count.data_ptr<int64_t>();
  a.stat_sum = t.stat_sum.data_ptr<double>();
  a.threshold = t.threshold.defined() ? t.threshold.data_ptr<double>() : nullptr;
  return a;
}

// GHM's bins of the batch, and its bin density after the batch.
inline std::tuple<Tensor, Tensor, Tensor> ghm_density(const Table& t, const Tensor& stats,
                                                      const Tensor& valid) {
  const int64_t M = static_cast<int64_t>(t.params[kBins]);
  const double a = t.params[kBinMomentum];
  const Tensor g = at::nan_to_num(stats.select(1, kGStat), 1.0).clamp(0.0, 1.0);
  const Tensor bin = g.mul(static_cast<double>(M)).floor().to(at::kLong).clamp(0, M - 1);
  const Tensor vf = valid.defined() ? valid.to(at::kFloat) : at::ones({t.batch}, stats.options());
  const Tensor hist = at::zeros({M}, stats.options()).index_add_(0, bin, vf);
  const Tensor blended = t.bin_ema.mul(a).add_(hist.mul(1.0 - a));
  return {bin, vf, at::where(t.bin_steps > 0, blended, hist)};
}

template <class B>
struct TableSteps {
  static void table_check_indices(const Table&) {}

  static Tensor table_valid(const Table& t, const Tensor& target, int64_t ignore_index) {
    return target.view({t.batch, t.positions}).ne(ignore_index).any(1);
  }

  static Tensor table_weights(const Table& t, const Tensor& valid) {
    const auto guard = B::guard(t.ema);
    Tensor w = at::empty({t.batch}, t.ema.options());
    TableKernelArgs a = table_kernel_args(t);
    a.weights = w.data_ptr<float>();
    B::check(launch_table_history_weights(a, B::stream(t.ema)));
    return w;
  }

  // OHEM's and GHM's weights of a batch, from its statistics and the table
  // before it (GHM: its bins and density after the batch, `ghm`).
  static Tensor per_batch_weights(const Table& t, const Tensor& stats, const Tensor& valid,
                                  const std::tuple<Tensor, Tensor, Tensor>& ghm) {
    if (t.policy == kOHEM) {
      const int64_t num = static_cast<int64_t>(t.params[kKeepNum]);
      const int64_t den = static_cast<int64_t>(t.params[kKeepDen]);
      const int64_t k = std::min<int64_t>((num * t.batch + den - 1) / den, t.batch);
      Tensor loss = stats.select(1, kLossStat);
      if (valid.defined()) {
        loss = at::where(valid, loss, at::full({}, -std::numeric_limits<float>::infinity(), loss.options()));
      }
      Tensor w = at::zeros({t.batch}, stats.options());
      w.index_fill_(0, std::get<1>(at::topk(loss, k, 0, true, false)), 1.0);
      return valid.defined() ? w.mul_(valid) : w;
    }
    if (t.policy == kGHM) {
      const auto& [bin, vf, density] = ghm;
      const Tensor d = density.index_select(0, bin).mul(t.params[kBins]);
      return vf.sum().div(at::where(d > 0, d, at::ones_like(d))).mul_(vf);
    }
    return Tensor();
  }

  static Tensor table_update(const Table& t, const Tensor& stats, const Tensor& valid) {
    const auto guard = B::guard(t.ema);
    // GHM's density after the batch, from its bins before it: once, for
    // both the weights and the update.
    const auto ghm = t.policy == kGHM ? ghm_density(t, stats, valid)
                                      : std::tuple<Tensor, Tensor, Tensor>();
    const Tensor weights = per_batch_weights(t, stats, valid, ghm);
    const auto sorted = at::sort(t.indices, /*stable=*/true, 0, false);
    const Tensor sidx = std::get<0>(sorted).contiguous();
    const Tensor order = std::get<1>(sorted).contiguous();
    const Tensor st = stats.contiguous();
    const Tensor vb = valid.defined() ? valid.contiguous() : Tensor();
    Tensor delta = at::empty({t.batch, 3}, t.stat_sum.options());
    TableKernelArgs a = table_kernel_args(t);
    a.sorted_indices = sidx.data_ptr<int64_t>();
    a.order = order.data_ptr<int64_t>();
    a.stats = st.data_ptr<float>();
    a.valid = vb.defined() ? vb.data_ptr<bool>() : nullptr;
    a.delta = delta.data_ptr<double>();
    if (t.policy == kGHM) {
      t.bin_ema.copy_(std::get<2>(ghm));
      t.bin_steps.add_(1);
    }
    B::check(launch_table_update(a, B::stream(t.ema)));
    if (t.batch > 0) t.stat_sum.add_(delta.sum(0));
    return weights;
  }
};

}  // namespace cuda
}  // namespace samplewt
