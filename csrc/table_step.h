// A loss op's call with an adaptive weight table (the schemas' table
// arguments, op_schemas.h): the batch's weights, the fused pass over the
// logits, and the table's update, in one op call, for every device.
//
// The order is the table protocol of samplewt_ops/weights/table.py:
// - history policies weight the batch from the table as it was before it;
//   the pass runs with those weights times any sample_weight;
// - per-batch policies (OHEM, GHM) weight it from this pass's own
//   per-sample statistics: the pass runs unreduced, then its loss and
//   gradient are scaled by the weights and reduced here;
// - then the table absorbs the batch's statistics (its EMAs, counts,
//   running sums and the policy's own state), in place.
// Every step is O(batch): nothing reduces over the table. The device
// supplies the table's steps (Device::table_valid, table_weights,
// table_update); nothing here synchronises with it.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

#include "op_checks.h"
#include "table_math.h"

namespace samplewt {

using at::Tensor;
using c10::optional;

// The schemas' table arguments, as given.
struct TableArgs {
  const optional<Tensor>& indices;
  const optional<Tensor>& table_ema;
  const optional<Tensor>& seen_count;
  const optional<Tensor>& stat_sum;
  const optional<Tensor>& bin_ema;
  const optional<Tensor>& bin_steps;
  const optional<Tensor>& threshold;
  int64_t policy;
  c10::ArrayRef<double> params;

  bool active() const { return policy != kNoTable; }
};

// The table of one call, checked: its tensors as the devices' steps take them.
struct Table {
  int64_t policy = kNoTable;
  std::array<double, 4> params{};  // policy_params (at most 4; the rest 0)
  Tensor indices;     // int64 (N), contiguous
  // float32 (3, num_samples): loss, gradient norm, g. Entry (j, s) at
  // ema_ptr() + j * stat_stride + s * sample_stride: the table's own layout is
  // one record per sample (stat_stride 1), a contiguous tensor works too.
  Tensor ema;
  int64_t stat_stride = 0, sample_stride = 1;
  Tensor seen_count;  // int64 (num_samples)
  Tensor stat_sum;    // float64 (3): sums of the loss and gradient-norm EMAs over the seen samples, and their number
  Tensor bin_ema;     // GHM: float32 (bins)
  Tensor bin_steps;   // GHM: int64 ()
  Tensor threshold;   // SelfPaced: float64 (1,); SmallLoss: float64 (2,)
  int64_t num_samples = 0, batch = 0, positions = 1;
};

namespace table_detail {

inline size_t num_params(int64_t policy) {
  switch (policy) {
    case kLossEMA:
    case kGradNormEMA: return 4;
    case kOHEM:
    case kGHM: return 3;
    case kSmallLoss: return 2;
    default: return 1;
  }
}

inline Tensor required(const optional<Tensor>& t, const char* name, at::ScalarType dtype,
                       c10::IntArrayRef shape, const Tensor& input, bool strided = false) {
  TORCH_CHECK_VALUE(checks::has(t), "samplewt_ops: the table argument ", name,
                    " is required with this policy");
  TORCH_CHECK(t->device() == input.device(), "samplewt_ops: the table's ", name,
              " is on ", t->device(), " but input is on ", input.device(),
              "; move the table with table.to(device)");
  TORCH_CHECK_TYPE(t->scalar_type() == dtype, "samplewt_ops: the table's ", name, " must be ",
                   dtype, ", got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->sizes() == shape, "samplewt_ops: the table's ", name, " must have shape ",
                    shape, ", got ", t->sizes());
  if (strided) {
    // Any layout whose entries do not overlap (the update writes each once):
    // the smaller stride at least 1, the larger past the other dimension's extent.
    const bool rows_inner = t->stride(0) <= t->stride(1);
    const int64_t inner = rows_inner ? 0 : 1, outer = 1 - inner;
    TORCH_CHECK_VALUE(t->numel() <= 1 || (t->stride(inner) >= 1 &&
                                          t->stride(outer) >= t->stride(inner) * t->size(inner)),
                      "samplewt_ops: the table's ", name,
                      " must not have overlapping entries, got strides ", t->strides());
  } else {
    TORCH_CHECK_VALUE(t->is_contiguous(), "samplewt_ops: the table's ", name, " must be contiguous");
  }
  return *t;
}

}  // namespace table_detail

// Checks the table arguments of a call over `rows` items (rows of a row op,
// samples of an element-wise op) and prepares them.
inline Table check_table(const TableArgs& a, const Tensor& input, int64_t rows, bool row_op) {
  using table_detail::required;
  Table t;
  t.policy = a.policy;
  TORCH_CHECK_VALUE(a.policy > kNoTable && a.policy < kNumTablePolicies,
                    "samplewt_ops: policy must be in [0, ", int64_t(kNumTablePolicies), "), got ",
                    a.policy);
  TORCH_CHECK_VALUE(a.params.size() == table_detail::num_params(a.policy),
                    "samplewt_ops: policy ", a.policy, " takes ",
                    table_detail::num_params(a.policy), " policy_params, got ", a.params.size());
  std::copy(a.params.begin(), a.params.end(), t.params.begin());
  const double m = t.params[kMomentum];
  TORCH_CHECK_VALUE(m >= 0.0 && m < 1.0, "samplewt_ops: the table's momentum must be in [0, 1), got ", m);
  TORCH_CHECK_VALUE(checks::has(a.indices), "samplewt_ops: indices (the batch's dataset indices) "
                    "are required with a table");
  const Tensor& idx = *a.indices;
  TORCH_CHECK(idx.device() == input.device(), "samplewt_ops: indices is on ", idx.device(),
              " but input is on ", input.device());
  TORCH_CHECK_TYPE(idx.scalar_type() == at::kLong || idx.scalar_type() == at::kInt,
                   "samplewt_ops: indices must be int64 (or int32), got ", idx.scalar_type());
  TORCH_CHECK_VALUE(idx.dim() == 1, "samplewt_ops: indices must be 1-D, got shape ", idx.sizes());
  t.indices = idx.scalar_type() == at::kLong ? idx : idx.to(at::kLong);
  if (!t.indices.is_contiguous()) t.indices = t.indices.contiguous();
  t.batch = idx.size(0);
  TORCH_CHECK_VALUE(t.batch > 0 ? rows % t.batch == 0 : rows == 0,
                    "samplewt_ops: indices has length ", t.batch, " but the batch has ", rows,
                    row_op ? " rows" : " samples");
  t.positions = t.batch > 0 ? rows / t.batch : 1;
  TORCH_CHECK_VALUE(row_op || t.positions == 1, "samplewt_ops: indices has length ", t.batch,
                    " but the batch has ", rows, " samples");
  TORCH_CHECK_VALUE(checks::has(a.table_ema) && a.table_ema->dim() == 2,
                    "samplewt_ops: the table's table_ema must be a (3, num_samples) tensor");
  t.num_samples = a.table_ema->size(1);
  t.ema = required(a.table_ema, "table_ema", at::kFloat, {kNumTableStats, t.num_samples}, input,
                   /*strided=*/true);
  t.stat_stride = t.ema.stride(0);
  t.sample_stride = t.ema.stride(1);
  t.seen_count = required(a.seen_count, "seen_count", at::kLong, {t.num_samples}, input);
  t.stat_sum = required(a.stat_sum, "stat_sum", at::kDouble, {3}, input);
  if (a.policy == kGHM) {
    const double bins = t.params[kBins];
    TORCH_CHECK_VALUE(bins >= 1 && bins == static_cast<double>(static_cast<int64_t>(bins)),
                      "samplewt_ops: GHM bins must be an integer >= 1, got ", bins);
    t.bin_ema = required(a.bin_ema, "bin_ema", at::kFloat, {static_cast<int64_t>(bins)}, input);
    t.bin_steps = required(a.bin_steps, "bin_steps", at::kLong, {}, input);
  }
  if (a.policy == kSelfPacedHard || a.policy == kSelfPacedSoft) {
    t.threshold = required(a.threshold, "threshold", at::kDouble, {1}, input);
  } else if (a.policy == kSmallLoss) {
    t.threshold = required(a.threshold, "threshold", at::kDouble, {2}, input);
  }
  if (a.policy == kOHEM) {
    TORCH_CHECK_VALUE(t.params[kKeepNum] > 0 && t.params[kKeepDen] >= t.params[kKeepNum],
                      "samplewt_ops: OHEM's keep ratio must be in (0, 1]");
  }
  return t;
}

// Per-row statistics (rows, 3) summed up per sample (N, 3): loss sum, gradient
// norm over the sample, mean g.
inline Tensor per_sample_stats(const Tensor& stats, const Table& t) {
  if (t.positions == 1) return stats;
  const Tensor s = stats.view({t.batch, t.positions, 3});
  return at::stack({s.select(2, 0).sum(1), s.select(2, 1).square().sum(1).sqrt(),
                    s.select(2, 2).mean(1)}, 1);
}

// A per-sample vector as one value per row.
inline Tensor per_row(const Tensor& per_sample, const Table& t) {
  return t.positions == 1 ? per_sample
                          : per_sample.unsqueeze(1).expand({t.batch, t.positions}).reshape(-1);
}

// What a row's loss counts for in the mean, before weights (the op's mean
// rule): its class weight, 0 when ignored, 1 otherwise. float64 (rows), with
// ATen ops (the CPU reads them in place: table_detail::CpuRowShare).
inline Tensor row_mean_share(const Tensor& input, const Tensor& target, bool cross_entropy,
                             const optional<Tensor>& class_weight, int64_t ignore_index) {
  const int64_t R = input.size(0), C = input.size(1);
  const auto opt = input.options().dtype(at::kDouble);
  if (at::isFloatingType(target.scalar_type())) return at::ones({R}, opt);
  const Tensor y = target.to(at::kLong);
  const bool weighted = cross_entropy && checks::has(class_weight);
  const Tensor kept = y != ignore_index;
  if (weighted) {
    const Tensor cw = class_weight->to(at::kDouble).index_select(0, y.clamp(0, C - 1));
    return at::where(kept, cw, at::zeros({}, opt));
  }
  return kept.to(at::kDouble);
}

// What a sample's losses count for in an element-wise op's mean: its number
// of elements, or with mean_over_weight the sum of its `weight`. float64 (N).
inline Tensor elem_mean_share(const Tensor& input, const optional<Tensor>& weight,
                              bool mean_over_weight, int64_t batch) {
  const auto opt = input.options().dtype(at::kDouble);
  if (mean_over_weight && checks::has(weight)) {
    return weight->to(at::kDouble).expand(input.sizes()).reshape({batch, -1}).sum(1);
  }
  const int64_t per = batch > 0 ? input.numel() / batch : 0;
  return at::full({batch}, static_cast<double>(per), opt);
}

namespace table_detail {

// A row op's mean share of row r on the CPU, read from its index target and
// class weight in place (row_mean_share without its tensor).
struct CpuRowShare {
  const int64_t* y = nullptr;
  Tensor y_holder, cw_holder;
  const double* cw = nullptr;
  int64_t ignore_index = -100, classes = 0;
  bool prob = false;

  CpuRowShare(const Tensor& input, const Tensor& target, bool cross_entropy,
              const optional<Tensor>& class_weight, int64_t ignore_index_)
      : ignore_index(ignore_index_), classes(input.size(1)) {
    prob = at::isFloatingType(target.scalar_type());
    if (prob) return;
    y_holder = target.scalar_type() == at::kLong && target.is_contiguous() ? target
                                                                           : target.to(at::kLong).contiguous();
    y = y_holder.data_ptr<int64_t>();
    if (cross_entropy && checks::has(class_weight)) {
      cw_holder = class_weight->to(at::kDouble).contiguous();
      cw = cw_holder.data_ptr<double>();
    }
  }
  double operator()(int64_t r) const {
    if (prob) return 1.0;
    const int64_t c = y[r];
    return c == ignore_index ? 0.0 : (cw != nullptr && c >= 0 && c < classes ? cw[c] : 1.0);
  }
};

// Over rows r (positions rows per sample i, in order), with w_r = b[i] and
// sw_r the row's sample weight (sw null: 1): the sums of w_r sw_r share(r)
// (when share_sum is given) and of w_r sw_r row_loss[3 r] (when row_loss is),
// each in row order. Not inlined: inlined into scale_on_cpu, GCC kept its
// sums in memory, and each add waited for the last one's store.
template <class Share>
#if defined(__GNUC__)
__attribute__((noinline))
#endif
void weighted_row_sums(const float* b, int64_t batch, int64_t positions, const double* sw,
                       const Share& share, const float* row_loss, double* share_sum,
                       double* loss_sum) {
  double s0 = 0.0, s1 = 0.0;
  for (int64_t i = 0, r = 0; i < batch; ++i) {
    const double w = static_cast<double>(b[i]);
    for (int64_t p = 0; p < positions; ++p, ++r) {
      const double ws = w * (sw ? sw[r] : 1.0);
      if (share_sum) s0 += ws * share(r);
      if (row_loss) s1 += ws * static_cast<double>(row_loss[r * 3]);
    }
  }
  if (share_sum) *share_sum = s0;
  if (loss_sum) *loss_sum = s1;
}

// The CPU form of scale_by_batch_weights: one loop over each output; share(r)
// gives row r's share of the mean.
// row_loss (rows, 3): the pass's per-row statistics, whose first column is
// each row's loss without sample weight; when given (a sum or mean of a pass
// run with reduction sum), the loss is summed from them instead of `loss`.
template <class Share>
Tensor scale_on_cpu(const Table& t, const Tensor& bw, const Tensor& loss,
                    std::initializer_list<Tensor> grads, int64_t reduction, const Share& share,
                    const Tensor& sw_rows, const float* row_loss = nullptr) {
  const int64_t N = t.batch, P = t.positions, R = N * P;
  const float* b = bw.data_ptr<float>();  // sample i's weight, for its rows i P ... i P + P - 1
  const Tensor sw = sw_rows.defined() ? sw_rows.to(at::kDouble).contiguous() : Tensor();
  const double* swp = sw.defined() ? sw.data_ptr<double>() : nullptr;
  const bool mean = reduction == kMean;
  const bool loss_from_rows = row_loss != nullptr && reduction != kNone;
  double denom = 1.0, loss_sum = 0.0;
  if (mean || loss_from_rows) {
    weighted_row_sums(b, N, P, swp, share, loss_from_rows ? row_loss : nullptr,
                      mean ? &denom : nullptr, loss_from_rows ? &loss_sum : nullptr);
  }
  // A weight of 0 gives 0, even when the denominator is 0.
  const auto factor = [&](int64_t i) {
    const double w = static_cast<double>(b[i]);
    return mean && w != 0.0 ? w / denom : w;
  };
  for (const Tensor& g : grads) {
    if (!g.defined() || g.numel() == 0) continue;
    if (!g.is_contiguous()) {
      std::vector<double> f(R);
      for (int64_t r = 0; r < R; ++r) f[r] = factor(r / P);
      std::vector<int64_t> shape(g.dim(), 1);
      if (g.dim() > 0) shape[0] = g.size(0);
      g.mul_(at::tensor(f, g.options().dtype(at::kDouble)).to(g.scalar_type()).view(shape));
      continue;
    }
    const int64_t inner = N > 0 ? g.numel() / N : 0;  // a sample's elements: its rows'
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "samplewt_table_scale", [&] {
      scalar_t* row = g.data_ptr<scalar_t>();
      for (int64_t i = 0; i < N; ++i, row += inner) {
        const scalar_t f = static_cast<scalar_t>(factor(i));
        for (int64_t j = 0; j < inner; ++j) row[j] = row[j] * f;
      }
    });
  }
  if (loss_from_rows) {
    // Into the pass's own (scalar, fresh) loss tensor: no new tensor.
    const double value = mean ? loss_sum / denom : loss_sum;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, loss.scalar_type(), "samplewt_table_total", [&] {
      *loss.data_ptr<scalar_t>() = static_cast<scalar_t>(value);
    });
    return loss;
  }
  const Tensor l = loss.contiguous();
  const int64_t inner = N > 0 ? l.numel() / N : 0;  // a sample's losses
  Tensor out = reduction == kNone ? at::empty_like(l) : Tensor();
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "samplewt_table_loss", [&] {
    const scalar_t* p = l.data_ptr<scalar_t>();
    scalar_t* o = out.defined() ? out.data_ptr<scalar_t>() : nullptr;
    for (int64_t i = 0; i < N; ++i) {
      const double w = static_cast<double>(b[i]);
      for (int64_t j = i * inner; j < (i + 1) * inner; ++j) {
        const double v = static_cast<double>(p[j]) * w;
        if (o != nullptr) o[j] = static_cast<scalar_t>(v);
        else total += v;
      }
    }
  });
  if (reduction == kNone) return out;
  return at::scalar_tensor(mean ? total / denom : total, loss.options());
}

}  // namespace table_detail

// Scales an unreduced pass's outputs by per-batch weights `bw` (N) and
// reduces its loss as the op's reduction does with sample weights bw * sw.
// loss: (rows) or input's shape; grads: input's shape, scaled in place.
// share_rows: each row's share of the mean (undefined unless reduction is mean);
// sw_rows: the rows' sample weights (undefined: 1).
inline Tensor scale_by_batch_weights(const Table& t, const Tensor& bw, const Tensor& loss,
                                     std::initializer_list<Tensor> grads, int64_t reduction,
                                     const Tensor& share_rows, const Tensor& sw_rows) {
  if (loss.is_cpu()) {
    const double* sh = share_rows.defined() ? share_rows.data_ptr<double>() : nullptr;
    return table_detail::scale_on_cpu(t, bw, loss, grads, reduction,
                                      [sh](int64_t r) { return sh[r]; }, sw_rows);
  }
  const Tensor w = per_row(bw, t).to(at::kDouble);  // (rows)
  Tensor factor = w;
  Tensor denom;
  if (reduction == kMean) {
    Tensor d = sw_rows.defined() ? w * sw_rows.to(at::kDouble) : w;
    denom = (d * share_rows).sum();
    // A weight of 0 gives 0, even when the denominator is 0.
    factor = at::where(w == 0, at::zeros_like(w), w / denom);
  }
  for (const Tensor& g : grads) {
    if (!g.defined() || g.numel() == 0) continue;
    std::vector<int64_t> shape(g.dim(), 1);
    if (g.dim() > 0) shape[0] = g.size(0);
    g.mul_(factor.to(g.scalar_type()).view(shape));
  }
  std::vector<int64_t> shape(loss.dim(), 1);
  if (loss.dim() > 0) shape[0] = loss.size(0);
  const Tensor wl = loss.dim() > 0 ? w.view(shape) : w.reshape({});
  if (reduction == kNone) return (loss.to(at::kDouble) * wl).to(loss.scalar_type());
  const Tensor total = (loss.to(at::kDouble) * wl).sum();
  return (reduction == kMean ? total / denom : total).to(loss.scalar_type());
}

}  // namespace samplewt
