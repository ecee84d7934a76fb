// CPU kernels of the samplewt_ops schemas (csrc/ops.cpp), behind the shared
// op wrappers of op_wrappers.h: argument checks, the O(rows) pre-pass that
// checks values and fixes each row's gradient scale, the call into the
// vectorised kernel of the selected instruction set, and the final
// reduction.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "../op_checks.h"
#include "../op_wrappers.h"
#include "../samplewt_math.h"
#include "large_buffer.h"
#include "table_cpu.h"
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
// Shared checks (structural ones live in op_checks.h, shared with CUDA)

namespace {

using checks::acc_type;

// The values of a prepared (contiguous, accumulation-type) sample_weight:
// non-negative and finite (never silently garbage).
void check_sample_weight_values(const Tensor& w) {
  const int64_t n = w.numel();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "samplewt_check_sample_weight", [&] {
    const scalar_t* p = w.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK_VALUE(std::isfinite(p[i]) && p[i] >= 0,
                        "samplewt_ops: sample_weight must be non-negative and finite, got ",
                        p[i], " at index ", i);
    }
  });
}

Tensor empty_like_nothing(const Tensor& input) { return at::empty({0}, input.options()); }

// Per-row or per-sample values of the accumulation type (float or double)
// that only the op itself reads: plain host memory, since an at::empty costs
// more than a small batch's whole kernel.
// Zeroed unless the caller writes every value (zeroed = false): zeroing the
// scales of a million samples cost a few percent of an mse call.
class AccScratch {
 public:
  AccScratch(int64_t n, at::ScalarType acc, bool zeroed = true)
      : acc_(acc), words_(zeroed ? new double[words(n, acc)]() : new double[words(n, acc)]) {}
  void* data() { return words_.get(); }
  template <typename T>
  T* as() { return reinterpret_cast<T*>(words_.get()); }
  at::ScalarType dtype() const { return acc_; }

 private:
  static size_t words(int64_t n, at::ScalarType acc) {
    return static_cast<size_t>(n) * at::elementSize(acc) / sizeof(double) + 1;
  }
  at::ScalarType acc_;
  std::unique_ptr<double[]> words_;
};

// The pre-pass's last step for "mean": each nonzero gradient scale (a sample
// weight) divided by the denominator. A weight of 0 stays 0 even when the
// denominator is 0.
template <typename scalar_t>
void divide_scales_by(scalar_t* gs, int64_t n, double denom) {
  if (!(std::abs(denom) >= 1e-300 && std::abs(denom) < 1e300)) {
    for (int64_t i = 0; i < n; ++i) {
      if (gs[i] != scalar_t(0)) gs[i] = static_cast<scalar_t>(gs[i] / denom);
    }
    return;
  }
  // Times the reciprocal, branch-free: within a double ulp of the quotient,
  // and a division per sample made this pass cost a third of an mse kernel.
  const double inv = 1.0 / denom;
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(gs[i]);
    gs[i] = v != 0.0 ? static_cast<scalar_t>(v * inv) : scalar_t(0);
  }
}

// The sum or mean loss from the kernels' first n per-item losses (item_loss,
// accumulation dtype, without sample weight) and the sample weights sw (when
// defined). Summed in double so that large batches sum exactly enough.
Tensor reduced_loss(AccScratch& item_loss, const Tensor& sw, int64_t n, int64_t reduction,
                    double denom, const Tensor& input) {
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES(item_loss.dtype(), "samplewt_reduce", [&] {
    const scalar_t* l = item_loss.as<scalar_t>();
    const scalar_t* w = sw.defined() ? sw.data_ptr<scalar_t>() : nullptr;
    double part[4] = {0.0, 0.0, 0.0, 0.0};  // four chains: the loop is not latency-bound
    for (int64_t i = 0; i < n; ++i) {
      part[i & 3] += w ? static_cast<double>(w[i]) * static_cast<double>(l[i])
                       : static_cast<double>(l[i]);
    }
    total = (part[0] + part[1]) + (part[2] + part[3]);
  });
  if (reduction == kMean) total /= denom;
  return at::scalar_tensor(total, input.options());
}

// Reduction "none" of a row op: each row's loss times its sample weight, in
// input's dtype.
Tensor per_item_loss(AccScratch& item_loss, const Tensor& sw, int64_t n, const Tensor& input) {
  Tensor out = at::empty({n}, input.options());
  AT_DISPATCH_FLOATING_TYPES(item_loss.dtype(), "samplewt_per_item", [&] {
    const scalar_t* l = item_loss.as<scalar_t>();
    const scalar_t* w = sw.defined() ? sw.data_ptr<scalar_t>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "samplewt_out", [&] {
      using out_t = scalar_t;
      out_t* o = out.data_ptr<out_t>();
      for (int64_t i = 0; i < n; ++i) o[i] = static_cast<out_t>(w ? w[i] * l[i] : l[i]);
    });
  });
  return out;
}

// ---------------------------------------------------------------------------
// Row losses

// Returns (loss, grad, stats); grad is input itself when inplace.
std::tuple<Tensor, Tensor, Tensor> row_loss(const RowCall& o) {
  const Tensor& input = o.input;
  checks::RowInputs in = checks::prepare_row_inputs(
      o.kind == kFocal, input, o.target, o.class_weight, o.sample_weight, o.ignore_index,
      o.label_smoothing, o.gamma, o.reduction, c10::DeviceType::CPU);
  const int64_t R = in.rows, C = input.size(1);
  TORCH_CHECK(in.positions == 1 || C <= kNarrowCols, "samplewt_ops: (N, C, d1..dk) rows of ", C,
              " classes must be folded to (rows, C) first (OpWrappers::row_pass)");
  const at::ScalarType acc = acc_type(input.scalar_type());
  const bool prob = in.prob;
  RowLoss kind = o.kind == kFocal ? kFocal : (prob ? kCrossEntropyProb : kCrossEntropyIndex);
  Tensor target = in.target;
  Tensor cw = in.class_weight;
  double sum_cw = static_cast<double>(C);
  if (cw.defined()) sum_cw = cw.sum().item<double>();
  Tensor sw = in.sample_weight;
  if (sw.defined()) check_sample_weight_values(sw);

  // Pre-pass over rows: check targets, and fix each row's gradient scale,
  // which for "mean" needs the whole batch's denominator first. Without
  // sample weights that scale is one value for every row (the kernels skip
  // ignored rows whatever their scale), and without class weights either the
  // denominator is a count.
  const bool uniform = !sw.defined();
  AccScratch grad_scale(uniform ? 1 : R, acc);
  double denom = 0.0;
  AT_DISPATCH_FLOATING_TYPES(acc, "samplewt_row_prepass", [&] {
    const int64_t* y = prob ? nullptr : target.data_ptr<int64_t>();
    const scalar_t* w = sw.defined() ? sw.data_ptr<scalar_t>() : nullptr;
    const scalar_t* cwp = cw.defined() && kind == kCrossEntropyIndex ? cw.data_ptr<scalar_t>() : nullptr;
    scalar_t* gs = grad_scale.as<scalar_t>();
    const auto check_target = [&](int64_t r) {
      TORCH_CHECK_INDEX(y[r] == o.ignore_index || (y[r] >= 0 && y[r] < C), "samplewt_ops: Target ",
                        y[r], " is out of bounds for ", C, " classes (target at row ", r, ")");
    };
    if (uniform && !cwp) {
      // Branch-free, so that it vectorises: a batch of small rows spent a
      // fifth of its time here, on one thread.
      int64_t valid = R;
      if (y) {
        int64_t ignored = 0, bad = 0;
        for (int64_t r = 0; r < R; ++r) {
          const bool ig = y[r] == o.ignore_index;
          ignored += ig;
          bad += !ig & (static_cast<uint64_t>(y[r]) >= static_cast<uint64_t>(C));
        }
        if (bad) {
          for (int64_t r = 0; r < R; ++r) check_target(r);
        }
        valid = R - ignored;
      }
      denom = static_cast<double>(valid);
    } else {
      for (int64_t r = 0; r < R; ++r) {
        const double wr = w ? static_cast<double>(w[r]) : 1.0;
        double share = wr;
        if (y) {
          if (y[r] == o.ignore_index) {
            if (!uniform) gs[r] = 0;
            continue;
          }
          check_target(r);
          if (cwp) share = wr * static_cast<double>(cwp[y[r]]);
        }
        denom += share;
        if (!uniform) gs[r] = static_cast<scalar_t>(wr);
      }
    }
    if (uniform) gs[0] = scalar_t(1);
    if (o.reduction == kMean) divide_scales_by(gs, uniform ? 1 : R, denom);
  });

  const checks::RowBuffers buf = checks::row_buffers(input, o.inplace, o.compute_grad, alloc_large_buffer);
  Tensor grad = buf.grad;
  AccScratch row_loss_acc(R, acc);
  Tensor stats = stats_or_empty(o.compute_stats, R, input);

  RowArgs a;
  checks::fill_row_layout(a, o.kind == kFocal, in, buf, checks::stats_ptr(o.compute_stats, stats),
                          o.ignore_index, o.label_smoothing, o.gamma, o.z_loss);
  a.dtype = input.scalar_type();
  a.grad_scale = grad_scale.data();
  a.grad_scale_uniform = uniform;
  a.row_loss = row_loss_acc.data();
  a.sum_class_weight = sum_cw;
  if (R > 0 && C > 0) row_kernel()(a);
  if (o.inplace && !buf.x.is_same(input)) input.copy_(buf.x);

  const Tensor loss =
      o.reduction == kNone
          ? per_item_loss(row_loss_acc, sw, R, input)
          : reduced_loss(row_loss_acc, sw, R, o.reduction, denom, input);
  return {loss, grad.defined() ? grad : empty_like_nothing(input), stats};
}

// ---------------------------------------------------------------------------
// Element-wise losses

using checks::ElemWeight;

ElemOut elem_loss(const ElemCall& o) {
  const Tensor& input = o.input;
  checks::ElemInputs in = checks::prepare_elem_inputs(
      input, o.target, o.weight, o.pos_weight, o.sample_weight, o.reduction, c10::DeviceType::CPU);
  const at::ScalarType acc = acc_type(input.scalar_type());
  const int64_t N = in.samples;
  const int64_t numel = input.numel();
  const int64_t S = in.per_sample;
  const ElemWeight& w = in.weight;
  Tensor sw = in.sample_weight;

  // What "mean" divides by: each sample's share (S elements, or its weight
  // sum) times its sample weight. One O(N) loop where the shares or weights
  // differ by sample, else one value for all; a sample of weight 0 gets a
  // gradient scale of 0 even when the denominator is 0.
  const bool by_weight = o.mean_over_weight && w.values.defined();
  const bool per_sample_scale = sw.defined() || (by_weight && w.full);
  const bool want_scale = sw.defined() || o.reduction == kMean;
  double denom = 0.0;
  AccScratch grad_scale(want_scale ? (per_sample_scale ? N : 1) : 0, acc, /*zeroed=*/false);
  if (want_scale) {
    AT_DISPATCH_FLOATING_TYPES(acc, "samplewt_elem_prepass", [&] {
      const scalar_t* wp = sw.defined() ? sw.data_ptr<scalar_t>() : nullptr;
      const scalar_t* wv = by_weight ? w.values.data_ptr<scalar_t>() : nullptr;
      double shared_share = static_cast<double>(S);
      if (by_weight && !w.full) {
        shared_share = 0.0;
        for (int64_t j = 0; j < S; ++j) shared_share += static_cast<double>(wv[j]);
      }
      scalar_t* gs = grad_scale.as<scalar_t>();
      if (!per_sample_scale) {
        denom = static_cast<double>(N) * shared_share;
        gs[0] = scalar_t(1);
        if (o.reduction == kMean) divide_scales_by(gs, 1, denom);
        return;
      }
      // Blocks of samples summed in parallel, then added in block order: the
      // same denominator whatever the threads.
      constexpr int64_t kBlock = 16384;
      constexpr double kInf = std::numeric_limits<double>::infinity();
      const int64_t nblocks = (N + kBlock - 1) / kBlock;
      std::vector<double> block_sum(nblocks, 0.0);
      std::vector<char> bad(nblocks, 0);
      at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          double part[4] = {0.0, 0.0, 0.0, 0.0};  // four chains: not latency-bound
          int64_t i = b * kBlock;
          const int64_t e = std::min(N, i + kBlock);
          if (wp && !(by_weight && w.full)) {
            // The plain case in groups of four (blocks start at a multiple of
            // 4, so chain i & 3 as below): loops the compiler can vectorise.
            bool any_bad = false;
            for (; i + 4 <= e; i += 4) {
              const double w0 = static_cast<double>(wp[i]), w1 = static_cast<double>(wp[i + 1]);
              const double w2 = static_cast<double>(wp[i + 2]), w3 = static_cast<double>(wp[i + 3]);
              part[0] += w0 * shared_share;
              part[1] += w1 * shared_share;
              part[2] += w2 * shared_share;
              part[3] += w3 * shared_share;
              gs[i] = wp[i];
              gs[i + 1] = wp[i + 1];
              gs[i + 2] = wp[i + 2];
              gs[i + 3] = wp[i + 3];
              // & not &&: no branches (NaN fails both comparisons).
              any_bad |= !((w0 >= 0.0) & (w1 >= 0.0) & (w2 >= 0.0) & (w3 >= 0.0) &
                           (w0 < kInf) & (w1 < kInf) & (w2 < kInf) & (w3 < kInf));
            }
            bad[b] = any_bad;
          }
          const int64_t unchecked = i;  // the weights from here on: checked below
          for (; i < e; ++i) {
            double share = shared_share;
            if (by_weight && w.full) {
              share = 0.0;
              for (int64_t j = 0; j < S; ++j) share += static_cast<double>(wv[i * S + j]);
            }
            const double wi = wp ? static_cast<double>(wp[i]) : 1.0;
            part[i & 3] += wi * share;
            gs[i] = static_cast<scalar_t>(wi);
          }
          block_sum[b] = (part[0] + part[1]) + (part[2] + part[3]);
          // A negative or non-finite weight makes its block's sum so (NaN
          // stays NaN); checked once below.
          if (wp) {
            for (int64_t j = unchecked; j < e; ++j) {
              bad[b] |= !(wp[j] >= scalar_t(0) && wp[j] < std::numeric_limits<scalar_t>::infinity());
            }
          }
        }
      });
      for (int64_t b = 0; b < nblocks; ++b) {
        if (bad[b]) check_sample_weight_values(sw);  // raises, naming the first bad value
        denom += block_sum[b];
      }
      if (o.reduction == kMean) {
        at::parallel_for(0, N, kBlock, [&](int64_t i0, int64_t i1) {
          divide_scales_by(gs + i0, i1 - i0, denom);
        });
      }
    });
  }

  Tensor grad = o.compute_grad ? alloc_large_buffer(input.sizes(), input.options()) : Tensor();
  Tensor target_grad =
      o.compute_target_grad ? alloc_large_buffer(input.sizes(), input.options()) : Tensor();
  Tensor out_elem =
      o.reduction == kNone ? alloc_large_buffer(input.sizes(), input.options()) : Tensor();
  Tensor stats = stats_or_empty(o.compute_stats, N, input);

  ElemArgs a;
  checks::fill_elem_layout(a, o.kind, in, grad, target_grad,
                           checks::stats_ptr(o.compute_stats, stats), o.alpha, o.gamma, o.delta);
  a.dtype = input.scalar_type();
  a.out_elem = out_elem.defined() ? out_elem.data_ptr() : nullptr;
  a.grad_scale = want_scale ? grad_scale.data() : nullptr;
  a.grad_scale_uniform = want_scale && !per_sample_scale;
  // With statistics one loss per sample, else weighted partial sums
  // (elem_partial_sums); the kernel did not run on an empty input.
  const int64_t partial = elem_partial_sums(a);
  AccScratch sample_loss(partial >= 0 ? partial : N, acc);
  a.sample_loss = sample_loss.data();
  if (numel > 0) elem_kernel()(a);

  const Tensor loss =
      o.reduction == kNone ? out_elem
      : partial >= 0       ? reduced_loss(sample_loss, Tensor(), numel > 0 ? partial : 0,
                                          o.reduction, denom, input)
                           : reduced_loss(sample_loss, sw, numel > 0 ? N : 0, o.reduction, denom,
                                          input);
  return {loss, grad.defined() ? grad : empty_like_nothing(input), stats,
          target_grad.defined() ? target_grad : empty_like_nothing(input)};
}

struct CpuDevice {
  // (N, C, d1..dk) rows the kernels read in place: the narrow kernel's.
  static bool takes_positions(int64_t cols) { return cols <= kNarrowCols; }
  static std::tuple<Tensor, Tensor, Tensor> row_loss(const RowCall& o) { return cpu::row_loss(o); }
  static ElemOut elem_loss(const ElemCall& o) {
    return cpu::elem_loss(o);
  }
  static void table_check_indices(const Table& t) { cpu::table_check_indices(t); }
  static Tensor table_valid(const Table& t, const Tensor& target, int64_t ignore_index) {
    return cpu::table_valid(t, target, ignore_index);
  }
  static Tensor table_weights(const Table& t, const Tensor& valid) {
    return cpu::table_weights(t, valid);
  }
  static Tensor table_update(const Table& t, const Tensor& stats, const Tensor& valid) {
    return cpu::table_update(t, stats, valid);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(samplewt_ops, CPU, m) { OpWrappers<CpuDevice>::register_ops(m); }

// cpu_isa, cpu_stream_bytes, empty_cpu_buffer_cache and table_zeros take no tensor: a kernel
// for every backend.
TORCH_LIBRARY_IMPL(samplewt_ops, CompositeExplicitAutograd, m) {
  m.impl("cpu_isa", []() { return std::string(selected_isa()); });
  m.impl("cpu_stream_bytes", []() { return stream_bytes(); });
  m.impl("empty_cpu_buffer_cache",
         []() { return static_cast<int64_t>(buffer_detail::BlockCache::get().clear()); });
  m.impl("table_zeros", [](c10::IntArrayRef size, at::ScalarType dtype) {
    for (const int64_t n : size) {
      TORCH_CHECK_VALUE(n >= 0, "samplewt_ops: table_zeros: size must be non-negative, got ", size);
    }
    return huge_page_zeros(size, at::TensorOptions().dtype(dtype));
  });
}

}  // namespace cpu
}  // namespace samplewt
