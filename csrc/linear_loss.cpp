// Fused linear cross-entropy and linear focal loss (issue 13): the loss of
// logits = input @ linear_weight.T + linear_bias without ever holding the
// N x V logits.
//
// The rows are processed in chunks. Per chunk:
//   1. one matmul (at::addmm) writes the chunk's logits into a chunk x V
//      buffer;
//   2. the existing in-place row op (cross_entropy_ / focal_loss_, through the
//      dispatcher, so the per-device row kernels of CPU and CUDA both serve)
//      writes the loss and d(loss)/d(logits) into that same buffer, softcap
//      and z-loss included (the row ops have both: z-loss in the kernels'
//      row formulas, softcap around them in op_wrappers.h);
//   3. grad_input[chunk] = dlogits @ linear_weight,
//      grad_linear_weight += dlogits^T @ input[chunk],
//      grad_linear_bias += sum of dlogits over the chunk's rows.
// The mean's denominator is computed first, from target, class weights and
// sample weights (O(N)), so every chunk's gradient is final when written.
// All of it runs in the forward when a gradient is wanted; backward only
// scales the three gradients by grad_output (reduction "none" recomputes the
// chunks with grad_output folded into each row's gradient, see grad_rows).
// softcap costs one more chunk-sized temporary (its tanh), never N x V.
//
// Device-generic: only ATen ops and the row ops through the dispatcher, so
// the one implementation is registered for CPU and CUDA alike. The schemas
// are defined here (a fragment of the samplewt_ops library); the autograd
// kernel is in linear_loss_autograd.cpp, the fake kernels in
// samplewt_ops/linear.py. Value
// checks (target range, weight signs) run on the CPU, and on CUDA only with
// SAMPLEWT_VALIDATE=1 (they cost a sync), as for the other ops.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "op_checks.h"

namespace samplewt {
namespace linear {
namespace {

using at::Tensor;
using c10::optional;
using Out5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// The chunk buffer's largest size when chunk_size is not given.
constexpr int64_t kChunkBytes = 32LL << 20;

// For tests: the rows of the last chunk buffer allocated (linear_loss_stats).
std::atomic<int64_t> g_last_chunk_rows{0};
std::atomic<int64_t> g_last_chunk_numel{0};

using checks::acc_type;
using checks::has;

bool validate_values(const Tensor& input) {
  if (input.is_cpu()) return true;
  const char* v = std::getenv("SAMPLEWT_VALIDATE");
  return v != nullptr && (std::strcmp(v, "1") == 0 || std::strcmp(v, "true") == 0 ||
                          std::strcmp(v, "yes") == 0 || std::strcmp(v, "on") == 0);
}

struct Call {
  bool focal;
  const Tensor& input;          // (N, D)
  const Tensor& linear_weight;  // (V, D)
  const Tensor& target;         // (N,)
  const optional<Tensor>& linear_bias;
  const optional<Tensor>& class_weight;  // weight, or focal alpha (V,)
  const optional<Tensor>& sample_weight;
  int64_t ignore_index;
  double label_smoothing;
  double gamma;
  double z_loss;
  optional<double> softcap;
  int64_t reduction;
  optional<int64_t> chunk_size;
  bool compute_grad;
  int64_t grad_mask;  // which gradients: 1 input, 2 linear_weight, 4 linear_bias
  const optional<Tensor>& grad_rows;  // (N,) or none: each row's gradient times this
  bool compute_stats;  // the rows' statistics (loss, |dlogits|, 1 - p_y), as the row ops give them
};

void check_tensor_on(const Tensor& input, const Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == input.device(), "samplewt_ops: ", name,
              " must be on the same device as input (", input.device(), "), got ", t.device());
}

// Structural checks: dtypes, shapes, devices, scalars. Nothing reads values.
void check_args(const Call& c) {
  const char* op = c.focal ? "linear_focal_loss" : "linear_cross_entropy";
  const char* cw_name = c.focal ? "alpha" : "weight";
  const Tensor& x = c.input;
  const Tensor& w = c.linear_weight;
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "samplewt_ops.", op,
                   ": input must be float32, float64, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2, "samplewt_ops.", op, ": input must be 2-D (N, D), got ",
                    x.sizes());
  TORCH_CHECK_VALUE(w.dim() == 2, "samplewt_ops.", op,
                    ": linear_weight must be 2-D (V, D), got ", w.sizes());
  TORCH_CHECK_VALUE(w.size(1) == x.size(1), "samplewt_ops.", op,
                    ": linear_weight's second dimension (", w.size(1),
                    ") must equal input's feature size D=", x.size(1));
  TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), "samplewt_ops.", op,
                   ": linear_weight must have input's dtype ", x.scalar_type(), ", got ",
                   w.scalar_type());
  check_tensor_on(x, w, "linear_weight");
  const int64_t N = x.size(0), V = w.size(0);
  TORCH_CHECK_VALUE(V > 0, "samplewt_ops.", op, ": linear_weight must have at least one row (class)");
  if (has(c.linear_bias)) {
    const Tensor& b = *c.linear_bias;
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == V, "samplewt_ops.", op,
                      ": linear_bias must have shape (", V, ",), got ", b.sizes());
    TORCH_CHECK_TYPE(b.scalar_type() == x.scalar_type(), "samplewt_ops.", op,
                     ": linear_bias must have input's dtype ", x.scalar_type(), ", got ",
                     b.scalar_type());
    check_tensor_on(x, b, "linear_bias");
  }
  const Tensor& t = c.target;
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, "samplewt_ops.",
                   op, ": target must hold class indices (int64), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == N, "samplewt_ops.", op,
                    ": target must have shape (", N, ",), got ", t.sizes());
  check_tensor_on(x, t, "target");
  if (has(c.class_weight)) {
    const Tensor& cw = *c.class_weight;
    TORCH_CHECK_TYPE(at::isFloatingType(cw.scalar_type()), "samplewt_ops.", op, ": ", cw_name,
                     " must be floating point, got ", cw.scalar_type());
    TORCH_CHECK_VALUE(cw.dim() == 1 && cw.size(0) == V, "samplewt_ops.", op, ": ", cw_name,
                      " must have shape (", V, ",), got ", cw.sizes());
    check_tensor_on(x, cw, cw_name);
  }
  if (has(c.sample_weight)) {
    const Tensor& sw = *c.sample_weight;
    TORCH_CHECK_TYPE(at::isFloatingType(sw.scalar_type()), "samplewt_ops.", op,
                     ": sample_weight must be floating point, got ", sw.scalar_type());
    TORCH_CHECK_VALUE(sw.dim() == 1 && sw.size(0) == N, "samplewt_ops.", op,
                      ": sample_weight must have shape (", N, ",), got ", sw.sizes());
    check_tensor_on(x, sw, "sample_weight");
  }
  TORCH_CHECK_VALUE(c.grad_mask >= 0 && c.grad_mask <= 7, "samplewt_ops.", op,
                    ": grad_mask must be in [0, 7] (1 input, 2 linear_weight, 4 linear_bias), got ",
                    c.grad_mask);
  if (has(c.grad_rows)) {
    TORCH_CHECK_VALUE(c.reduction == 0 && c.grad_rows->numel() == N, "samplewt_ops.", op,
                      ": grad_rows is for reduction none only, with one value per row");
    check_tensor_on(x, *c.grad_rows, "grad_rows");
  }
  TORCH_CHECK_VALUE(c.reduction >= 0 && c.reduction <= 2, "samplewt_ops.", op,
                    ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ", c.reduction);
  TORCH_CHECK_VALUE(c.label_smoothing >= 0.0 && c.label_smoothing <= 1.0, "samplewt_ops.", op,
                    ": label_smoothing must be in [0, 1], got ", c.label_smoothing);
  TORCH_CHECK_VALUE(c.gamma >= 0.0 && std::isfinite(c.gamma), "samplewt_ops.", op,
                    ": gamma must be >= 0, got ", c.gamma);
  TORCH_CHECK_VALUE(c.z_loss >= 0.0 && std::isfinite(c.z_loss), "samplewt_ops.", op,
                    ": z_loss must be >= 0 and finite, got ", c.z_loss);
  if (c.softcap.has_value()) {
    TORCH_CHECK_VALUE(*c.softcap > 0.0 && std::isfinite(*c.softcap), "samplewt_ops.", op,
                      ": softcap must be > 0 and finite (or None), got ", *c.softcap);
  }
  if (c.chunk_size.has_value()) {
    TORCH_CHECK_VALUE(*c.chunk_size > 0, "samplewt_ops.", op, ": chunk_size must be > 0, got ",
                      *c.chunk_size);
  }
}

// Value checks (a device sync off the CPU: there only with SAMPLEWT_VALIDATE=1).
void check_values(const Call& c, const Tensor& target, const Tensor& valid, int64_t V) {
  const char* op = c.focal ? "linear_focal_loss" : "linear_cross_entropy";
  const Tensor bad = valid.logical_and(target.lt(0).logical_or(target.ge(V)));
  if (bad.any().item<bool>()) {
    const int64_t i = bad.nonzero().select(1, 0)[0].item<int64_t>();
    TORCH_CHECK_INDEX(false, "samplewt_ops.", op, ": Target ", target[i].item<int64_t>(),
                      " is out of bounds for ", V, " classes (the rows of linear_weight), at target row ",
                      i);
  }
  const auto check_weight = [&](const optional<Tensor>& w, const char* name) {
    if (!has(w) || w->numel() == 0) return;
    const Tensor ok = at::isfinite(*w).logical_and(w->ge(0));
    TORCH_CHECK_VALUE(ok.all().item<bool>(), "samplewt_ops.", op, ": ", name,
                      " must be non-negative and finite");
  };
  check_weight(c.sample_weight, "sample_weight");
  check_weight(c.class_weight, c.focal ? "alpha" : "weight");
}

int64_t choose_chunk(const Call& c, int64_t N, int64_t V) {
  if (c.chunk_size.has_value()) return std::max<int64_t>(1, std::min(*c.chunk_size, N));
  const int64_t row_bytes = V * static_cast<int64_t>(c.input.element_size());
  int64_t rows = kChunkBytes / std::max<int64_t>(1, row_bytes);
  // A multiple of 64 rows where there are that many: the GEMMs' blocking
  // favours it (N=4096, V=32000: 256 rows run as fast as 262, in less memory).
  if (rows >= 128) rows -= rows % 64;
  return std::max<int64_t>(1, std::min<int64_t>(N, rows));
}

// A row op called by argument name, boxed: the arguments given by name,
// every other argument of its schema at its default. So the call keeps
// working when the row ops' schemas gain defaulted arguments (as the
// adaptive-table arguments); a given name the schema lacks is an error.
class RowOp {
 public:
  explicit RowOp(const char* name)
      : name_(name), op_(c10::Dispatcher::singleton().findSchemaOrThrow(name, "")) {}

  // The op's outputs: (loss, stats) of the `_` ops, (loss, grad, stats) of the others.
  torch::jit::Stack call(const std::vector<std::pair<const char*, c10::IValue>>& given) const {
    const auto& args = op_.schema().arguments();
    torch::jit::Stack stack;
    stack.reserve(args.size());
    size_t used = 0;
    for (const auto& a : args) {
      const c10::IValue* v = nullptr;
      for (const auto& g : given) {
        if (a.name() == g.first) v = &g.second;
      }
      if (v != nullptr) {
        stack.push_back(*v);
        ++used;
      } else {
        TORCH_CHECK(a.default_value().has_value(), "samplewt_ops: ", name_, "'s argument ",
                    a.name(), " has no default, and linear_loss.cpp does not pass it");
        stack.push_back(*a.default_value());
      }
    }
    TORCH_CHECK(used == given.size(), "samplewt_ops: ", name_,
                "'s schema lacks an argument that linear_loss.cpp passes");
    op_.callBoxed(stack);
    return stack;
  }

 private:
  const char* name_;
  c10::OperatorHandle op_;
};

// The in-place (gradient) or plain row op on one chunk: its loss (the
// weighted sum for reduction sum, the weighted per-row losses for none) and,
// with compute_stats, its rows' statistics.
std::pair<Tensor, Tensor> row_pass(const Call& c, Tensor& buf, const Tensor& target,
                                   const optional<Tensor>& scale, int64_t red, bool grad) {
  std::vector<std::pair<const char*, c10::IValue>> args = {
      {"input", buf}, {"target", target}, {c.focal ? "alpha" : "weight", c.class_weight},
      {"sample_weight", scale}, {"ignore_index", c.ignore_index}, {"reduction", red},
      {"compute_stats", c.compute_stats}, {"z_loss", c.z_loss}, {"softcap", c.softcap}};
  if (c.focal) args.emplace_back("gamma", c.gamma);
  else args.emplace_back("label_smoothing", c.label_smoothing);
  // Only the plain ops have compute_grad: the `_` ones always write the gradient.
  if (!grad) args.emplace_back("compute_grad", false);
  static const RowOp ce_("samplewt_ops::cross_entropy_"), ce("samplewt_ops::cross_entropy"),
      focal_("samplewt_ops::focal_loss_"), focal("samplewt_ops::focal_loss");
  const RowOp& op = c.focal ? (grad ? focal_ : focal) : (grad ? ce_ : ce);
  const torch::jit::Stack out = op.call(args);
  return {out[0].toTensor(), out[grad ? 1 : 2].toTensor()};
}

Out5 linear_loss(const Call& c) {
  check_args(c);
  const Tensor& x = c.input;
  const Tensor& W = c.linear_weight;
  const int64_t N = x.size(0), D = x.size(1), V = W.size(0);
  const at::ScalarType dt = x.scalar_type(), acc = acc_type(dt);
  const auto acc_opts = x.options().dtype(acc);
  const bool bias = has(c.linear_bias);
  // Only the gradients asked for: a frozen head (or input) saves its matmul.
  const bool want_x = c.compute_grad && (c.grad_mask & 1) != 0;
  const bool want_w = c.compute_grad && (c.grad_mask & 2) != 0;
  const bool want_b = c.compute_grad && bias && (c.grad_mask & 4) != 0;
  const bool grad = want_x || want_w || want_b;

  // Per-row weights and the mean's denominator, before any chunk: O(N).
  const Tensor target = c.target.to(at::kLong).contiguous();
  const Tensor valid = target.ne(c.ignore_index);
  if (validate_values(x) && N > 0) check_values(c, target, valid, V);
  const Tensor row_valid = valid.to(acc);
  const Tensor sw = has(c.sample_weight) ? c.sample_weight->to(acc).contiguous() : Tensor();
  Tensor share = sw.defined() ? sw * row_valid : row_valid;  // what the mean divides by
  if (!c.focal && has(c.class_weight)) {
    // cross-entropy's mean divides by sum(w * cw[y])
    share = share * c.class_weight->to(acc).index_select(0, at::where(valid, target, 0));
  }
  const bool mean = c.reduction == 1;
  const Tensor denom = share.sum();
  // 1/denom, or 0 when nothing counts (the loss is then 0/0 = nan, as torch's).
  const Tensor inv = mean ? at::where(denom > 0, denom.reciprocal(), at::zeros_like(denom)) : Tensor();
  // The row op's sample weights: the gradient of each row is final at once.
  optional<Tensor> scale;
  if (mean) scale = sw.defined() ? sw * inv : inv.expand({N}).contiguous();
  else if (sw.defined()) scale = sw;
  const Tensor grow = has(c.grad_rows) ? c.grad_rows->reshape({N}).to(acc) : Tensor();

  const int64_t red = c.reduction == 0 ? 0 : 2;  // the row op sums; the scales carry the mean
  Tensor loss_rows = c.reduction == 0 ? at::empty({N}, x.options()) : Tensor();
  Tensor total = at::zeros({}, acc_opts);
  Tensor grad_input, grad_w, grad_w_acc, grad_b_acc;
  if (want_x) grad_input = at::empty({N, D}, x.options());
  if (want_w) grad_w_acc = at::zeros({V, D}, acc_opts);  // float32 accumulation for half/bfloat16
  if (want_b) grad_b_acc = at::zeros({V}, acc_opts);

  Tensor stats = c.compute_stats ? at::empty({N, 3}, x.options().dtype(at::kFloat))
                                 : at::empty({0}, x.options().dtype(at::kFloat));
  const int64_t chunk = choose_chunk(c, N, V);
  Tensor buffer = N > 0 ? at::empty({chunk, V}, x.options()) : Tensor();
  g_last_chunk_rows.store(N > 0 ? chunk : 0);
  g_last_chunk_numel.store(N > 0 ? chunk * V : 0);
  const Tensor Wt = W.t();
  for (int64_t s = 0; s < N; s += chunk) {
    const int64_t n = std::min(chunk, N - s);
    Tensor buf = buffer.narrow(0, 0, n);
    const Tensor xc = x.narrow(0, s, n);
    // 1. the chunk's logits
    if (bias) at::addmm_out(buf, *c.linear_bias, xc, Wt);
    else at::mm_out(buf, xc, Wt);
    // 2. loss and d(loss)/d(logits) in one pass, into buf when grad
    const Tensor tc = target.narrow(0, s, n);
    optional<Tensor> sc;
    if (scale.has_value()) sc = scale->narrow(0, s, n);
    const auto [chunk_loss, chunk_stats] = row_pass(c, buf, tc, sc, red, grad);
    if (c.compute_stats) stats.narrow(0, s, n).copy_(chunk_stats);
    if (c.reduction == 0) loss_rows.narrow(0, s, n).copy_(chunk_loss);
    else total.add_(chunk_loss.to(acc));
    if (!grad) continue;
    if (grow.defined()) buf.mul_(grow.narrow(0, s, n).unsqueeze(1));
    // 3. the three gradients
    if (want_x) {
      Tensor gi = grad_input.narrow(0, s, n);
      at::mm_out(gi, buf, W);
    }
    if (!want_w) {
      // (no linear_weight gradient)
    } else if (dt == acc) {
      grad_w_acc.addmm_(buf.t(), xc);
    } else if (x.is_cpu()) {
      // CPU half/bfloat16: the product in float32 too (a chunk-sized float32
      // copy), so no partial sum is rounded to the input's dtype.
      grad_w_acc.addmm_(buf.to(acc).t(), xc.to(acc));
    } else {
      // CUDA: the chunk's product in the input dtype (float32 accumulation
      // inside the GEMM), summed over chunks in float32.
      grad_w_acc.add_(at::mm(buf.t(), xc));
    }
    if (want_b) grad_b_acc.add_(at::sum(buf, {0}, false, acc));
  }

  Tensor loss;
  if (c.reduction == 0) {
    loss = loss_rows;
  } else {
    // mean: the scales already divided by denom; 0/0 when nothing counts.
    loss = mean ? at::where(denom > 0, total, total / denom) : total;
    loss = loss.to(dt);
  }
  const auto empty = [&] { return at::empty({0}, x.options()); };
  if (!want_x) grad_input = empty();
  grad_w = !want_w ? empty() : dt == acc ? grad_w_acc : grad_w_acc.to(dt);
  Tensor grad_b = want_b ? grad_b_acc.to(dt) : empty();
  return {loss, grad_input, grad_w, grad_b, stats};
}

Out5 linear_cross_entropy(const Tensor& input, const Tensor& linear_weight, const Tensor& target,
                          const optional<Tensor>& linear_bias, const optional<Tensor>& weight,
                          const optional<Tensor>& sample_weight, int64_t ignore_index,
                          double label_smoothing, double z_loss, optional<double> softcap,
                          int64_t reduction, optional<int64_t> chunk_size, bool compute_grad,
                          int64_t grad_mask, const optional<Tensor>& grad_rows,
                          bool compute_stats) {
  return linear_loss({false, input, linear_weight, target, linear_bias, weight, sample_weight,
                      ignore_index, label_smoothing, 0.0, z_loss, softcap, reduction, chunk_size,
                      compute_grad, grad_mask, grad_rows, compute_stats});
}

Out5 linear_focal_loss(const Tensor& input, const Tensor& linear_weight, const Tensor& target,
                       const optional<Tensor>& linear_bias, const optional<Tensor>& alpha,
                       const optional<Tensor>& sample_weight, double gamma, int64_t ignore_index,
                       double z_loss, optional<double> softcap, int64_t reduction,
                       optional<int64_t> chunk_size, bool compute_grad, int64_t grad_mask,
                       const optional<Tensor>& grad_rows, bool compute_stats) {
  return linear_loss({true, input, linear_weight, target, linear_bias, alpha, sample_weight,
                      ignore_index, 0.0, gamma, z_loss, softcap, reduction, chunk_size,
                      compute_grad, grad_mask, grad_rows, compute_stats});
}

// ---------------------------------------------------------------------------
// Registration

// Reads how the last call chunked its rows (for the memory test).
std::tuple<int64_t, int64_t> last_chunk() {
  return {g_last_chunk_rows.load(), g_last_chunk_numel.load()};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(samplewt_ops, m) {
  // compute_stats gives each row's statistics (rows, 3), as the row ops do:
  // the adaptive tables (table=, indices=) take them in samplewt_ops/linear.py.
  m.def(
      "linear_cross_entropy(Tensor input, Tensor linear_weight, Tensor target, "
      "Tensor? linear_bias, Tensor? weight, Tensor? sample_weight, int ignore_index, "
      "float label_smoothing, float z_loss, float? softcap, int reduction, int? chunk_size, "
      "bool compute_grad, int grad_mask=7, Tensor? grad_rows=None, bool compute_stats=False) "
      "-> (Tensor loss, Tensor grad_input, Tensor grad_linear_weight, Tensor grad_linear_bias, "
      "Tensor stats)");
  m.def(
      "linear_focal_loss(Tensor input, Tensor linear_weight, Tensor target, "
      "Tensor? linear_bias, Tensor? alpha, Tensor? sample_weight, float gamma, int ignore_index, "
      "float z_loss, float? softcap, int reduction, int? chunk_size, "
      "bool compute_grad, int grad_mask=7, Tensor? grad_rows=None, bool compute_stats=False) "
      "-> (Tensor loss, Tensor grad_input, Tensor grad_linear_weight, Tensor grad_linear_bias, "
      "Tensor stats)");
  m.def("linear_loss_last_chunk() -> (int rows, int numel)");
}

// One device-generic implementation: ATen ops and the row ops' own per-device kernels.
TORCH_LIBRARY_IMPL(samplewt_ops, CPU, m) {
  m.impl("linear_cross_entropy", &linear_cross_entropy);
  m.impl("linear_focal_loss", &linear_focal_loss);
}

#ifdef SAMPLEWT_WITH_CUDA
// (Only where the row ops have CUDA kernels too: setup.py defines this with them.)
TORCH_LIBRARY_IMPL(samplewt_ops, CUDA, m) {
  m.impl("linear_cross_entropy", &linear_cross_entropy);
  m.impl("linear_focal_loss", &linear_focal_loss);
}
#endif

TORCH_LIBRARY_IMPL(samplewt_ops, CompositeExplicitAutograd, m) {
  m.impl("linear_loss_last_chunk", &last_chunk);
}

}  // namespace linear
}  // namespace samplewt
