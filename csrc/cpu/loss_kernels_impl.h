// The CPU loss kernels, compiled once per instruction set.
//
// Each unit (kernels_default.cpp, and through isa_unit.h kernels_avx2.cpp and
// kernels_avx512.cpp) defines CPU_CAPABILITY (and its CPU_CAPABILITY_<ISA>
// flag, which selects at::vec's implementation), SWT_ISA_NAMESPACE and the
// compiler target, then includes this file. Row kernels follow ATen's
// SoftMaxKernel: rows in parallel with at::parallel_for, each row swept with
// at::vec::Vectorized, reduced-precision inputs accumulated in float.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../samplewt_math.h"
#include "kernel_args.h"
#include "vec_ops.h"

namespace samplewt {
namespace cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// Rows per parallel task: enough elements that a task outweighs its dispatch.
constexpr int64_t kGrainElems = 8192;
inline int64_t grain_rows(int64_t cols) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(cols, 1));
}

// ---------------------------------------------------------------------------
// Softmax rows: cross-entropy (index or probability targets) and focal loss.

#if defined(__GNUC__)
#define SWT_FLATTEN __attribute__((flatten))
#else
#define SWT_FLATTEN
#endif

// Rows are handled up to kBlockRows at a time (see row_kernel_typed), as
// many as keep about kBlockElems logits and their parked exps in L2 between
// the passes (128 KB in float; 8 or more rows of up to 2048 classes). Where
// fewer than kMinBlockRows fit, a row goes alone: a vector call for a few
// lanes costs what the libm calls it replaces do.
constexpr int64_t kBlockRows = 16;
constexpr int64_t kMinBlockRows = 8;
constexpr int64_t kBlockElems = 16384;

// The first pass over a row reads it from memory: asked for 2 KB ahead, its
// lines arrive while the exps of the ones before are computed, where the
// hardware's prefetch alone leaves the two waiting on each other (a 1 GB
// forward: 0.54 -> 0.35 ns per element and thread, where x.sum() takes 0.29
// and the same rows in cache 0.22). The element-wise kernels ask for their
// input and target the same way (see elem_kernel_typed).
// kBytes: the bytes read from p on, one prefetch per 64-byte line. Always
// inlined: as a plain inline function GCC compiled the element-wise kernels
// without a single prefetch.
constexpr int64_t kPrefetchBytes = 2048;
template <int64_t kBytes>
SWT_HD void prefetch_ahead(const void* p) {
#if defined(__GNUC__)
  for (int64_t b = 0; b < kBytes; b += 64) {
    __builtin_prefetch(static_cast<const char*>(p) + kPrefetchBytes + b, 0, 3);
  }
#else
  (void)p;
#endif
}

// The scalars both softmax row kernels (narrow_row_kernel_typed,
// row_kernel_typed) take from their RowArgs, in the accumulation type.
template <typename acc_t>
struct RowScalars {
  const acc_t* cw;          // class weights (focal: alpha), or null
  const acc_t* grad_scale;  // per row, one for all rows (scale_uniform), or null
  bool scale_uniform;
  acc_t* row_loss;
  bool prob, focal;
  acc_t eps, gamma, z_loss;
  acc_t q_scale, q_shift;  // a probability target's (1 - eps) q_c + eps / C

  explicit RowScalars(const RowArgs& a)
      : cw(static_cast<const acc_t*>(a.class_weight)),
        grad_scale(static_cast<const acc_t*>(a.grad_scale)),
        scale_uniform(a.grad_scale_uniform),
        row_loss(static_cast<acc_t*>(a.row_loss)),
        prob(a.kind == kCrossEntropyProb),
        focal(a.kind == kFocal),
        eps(focal ? acc_t(0) : static_cast<acc_t>(a.label_smoothing)),
        gamma(static_cast<acc_t>(a.gamma)),
        z_loss(static_cast<acc_t>(a.z_loss)),
        q_scale(acc_t(1) - eps),
        q_shift(eps / static_cast<acc_t>(a.cols)) {}

  // Row r's gradient factor.
  acc_t scale(int64_t r) const { return grad_scale ? grad_scale[scale_uniform ? 0 : r] : acc_t(1); }
};

#include "narrow_rows_impl.h"

template <typename scalar_t>
void row_kernel_typed(const RowArgs& a) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vectorized<acc_t>;
  using M = VecMath<acc_t>;
  constexpr int64_t W = V::size();
  const int64_t C = a.cols;
  const RowScalars<acc_t> sc(a);
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();

  // The row's state between its passes over the logits (pass 1 and 2) and
  // its gradient pass (3), which needs log s.
  struct RowState {
    int64_t r, y;
    bool skip;       // ignored: done in full by the first part
    acc_t mx, xs_y;  // row max, shifted target logit
    acc_t s, bx, b;  // sum exp(x - m), and the linear sums
    acc_t* parked;   // exp(x_c - m) of the row, or null
  };
  // Rows go several at a time: their log s and the two exps after it
  // are one vector call for the block, not three libm calls (and the spills
  // of every vector register around them) per row. Each lane is computed
  // alone, so a row's result does not depend on its block.
  const int64_t fit = kBlockElems / std::max<int64_t>(C, 1);
  const int64_t block = fit >= kMinBlockRows ? std::min(fit, kBlockRows) : 1;
  // A gradient larger than the caches keep, in its own memory, is streamed
  // out (every row on whole lines), and the exps park in a row of this
  // task's own instead of in it: parked in the gradient, each of its lines was
  // read from memory before pass 2 wrote it (1 GB of logits: 105 against
  // 75 ms, in place 75). In place the logits' own lines are in cache already.
  const bool stream = a.grad != nullptr && a.grad != a.input &&
                      a.rows * a.ld_grad * static_cast<int64_t>(sizeof(scalar_t)) >= stream_bytes() &&
                      reinterpret_cast<uintptr_t>(a.grad) % 64 == 0 &&
                      (a.ld_grad * static_cast<int64_t>(sizeof(scalar_t))) % 64 == 0;

  at::parallel_for(0, a.rows, grain_rows(C), [&](int64_t begin, int64_t end) {
    // bfloat16/float16 rows park exp(x - m) in a float row of their own (a
    // 16-bit gradient row would round it, and with label smoothing A p - a
    // cancels), so that every dtype computes one exp per element.
    std::vector<acc_t> exp_row;
    RowState rows[kBlockRows];
    acc_t lane_s[kBlockRows], lane_xs_y[kBlockRows];
    acc_t lane_log_s[kBlockRows], lane_inv_s[kBlockRows], lane_p_y[kBlockRows];
    acc_t lane_focal_mod[kBlockRows], lane_focal_g[kBlockRows];

    // Passes 1 and 2 of row r (state rs), with k its place in the block.
    // flatten: ATen's exp_u20 must stay inlined in the passes' loops (a call
    // per vector costs a third of the row); GCC's own limits drop it here.
    auto first_part = [&](int64_t r, int64_t k, RowState& rs) SWT_FLATTEN {
      const scalar_t* x = static_cast<const scalar_t*>(a.input) + r * a.ld_input;
      scalar_t* g = a.grad ? static_cast<scalar_t*>(a.grad) + r * a.ld_grad : nullptr;
      float* st = a.stats ? a.stats + 3 * r : nullptr;
      const scalar_t* q =
          sc.prob ? static_cast<const scalar_t*>(a.target_prob) + r * a.ld_target : nullptr;
      rs.r = r;
      rs.y = -1;
      rs.skip = false;
      if (!sc.prob) {
        rs.y = a.target[r];
        if (rs.y == a.ignore_index) {
          sc.row_loss[r] = 0;
          if (g) std::fill(g, g + C, scalar_t(0));
          if (st) st[0] = st[1] = st[2] = 0.f;
          rs.skip = true;
          return;
        }
      }
      const int64_t y = rs.y;
      const bool linear = sc.prob || sc.eps != acc_t(0);
      auto lin_coef = [&](int64_t j, int64_t n) -> V {
        return linear_coef<M>(a.kind, sc.cw != nullptr, sc.cw ? V::loadu(sc.cw + j, n) : V(0),
                              sc.prob ? vload(q + j, n) : V(0), V(sc.q_scale), V(sc.q_shift));
      };

      // Pass 1: the row max m. Everything after works on x - m, which keeps
      // full precision where x itself is large (lse = m + log s would not).
      // (Rows of kNarrowCols classes or fewer take narrow_row_kernel_typed.)
      V vmax(neg_inf);
      // A long row without gradient nor linear terms (a forward, or its
      // statistics): passes 1 and 2 as one, reading the row once. Each lane
      // keeps its running max and its sum of exp(x - max), rescaled when the
      // max grows (a few times a row, after its first vectors).
      if (g == nullptr && !linear) {
        // From the lowest finite value, not -inf: a lane that has seen only
        // -inf then adds exp(-inf) = 0, not exp(-inf + inf).
        vmax = V(std::numeric_limits<acc_t>::lowest());
        V vsum(0);
        const auto absorb = [&](const V& block_max) {
          const V grown = M::max(vmax, block_max);
          if ((grown != vmax).zero_mask() != (1 << W) - 1) {
            vsum = vsum * M::softmax_exp(vmax - grown);
            vmax = grown;
          }
        };
        int64_t j = 0;
        for (; j + 4 * W <= C; j += 4 * W) {
          prefetch_ahead<4 * W * sizeof(scalar_t)>(x + j);
          const V x0 = vload(x + j, W), x1 = vload(x + j + W, W);
          const V x2 = vload(x + j + 2 * W, W), x3 = vload(x + j + 3 * W, W);
          absorb(M::max(M::max(x0, x1), M::max(x2, x3)));
          vsum = vsum + ((M::softmax_exp(x0 - vmax) + M::softmax_exp(x1 - vmax)) +
                         (M::softmax_exp(x2 - vmax) + M::softmax_exp(x3 - vmax)));
        }
        for (; j < C; j += W) {
          const int64_t n = std::min(W, C - j);
          const V xv = vload(x + j, n);
          absorb(n < W ? V::set(V(neg_inf), xv, n) : xv);
          const V e = M::softmax_exp(xv - vmax);
          vsum = vsum + (n < W ? V::set(V(0), e, n) : e);
        }
        const acc_t mx = hmax(vmax);
        rs.mx = mx;
        rs.xs_y = sc.prob ? acc_t(0) : static_cast<acc_t>(x[y]) - mx;
        rs.parked = nullptr;
        rs.s = hsum(vsum * M::softmax_exp(vmax - V(mx)));
        rs.bx = rs.b = acc_t(0);
        return;
      }
      // Four running maxima: one would make the pass wait on each max's
      // latency (a max is exact, so the order does not change it).
      V m1(neg_inf), m2(neg_inf), m3(neg_inf);
      int64_t j = 0;
      for (; j + 4 * W <= C; j += 4 * W) {
        prefetch_ahead<4 * W * sizeof(scalar_t)>(x + j);
        vmax = M::max(vmax, vload(x + j, W));
        m1 = M::max(m1, vload(x + j + W, W));
        m2 = M::max(m2, vload(x + j + 2 * W, W));
        m3 = M::max(m3, vload(x + j + 3 * W, W));
      }
      for (; j < C; j += W) {
        const int64_t n = std::min(W, C - j);
        const V xv = vload(x + j, n);
        vmax = M::max(vmax, n < W ? V::set(V(neg_inf), xv, n) : xv);
      }
      vmax = M::max(M::max(vmax, m1), M::max(m2, m3));
      const acc_t mx = hmax(vmax);
      rs.mx = mx;
      rs.xs_y = sc.prob ? acc_t(0) : static_cast<acc_t>(x[y]) - mx;
      // Pass 2: s = sum_c exp(x_c - m), and the linear terms sum_c b_c (x_c - m),
      // sum_c b_c when the loss has them. exp(x_c - m) is parked (in the
      // gradient row where it has the accumulation type, even in place: x_c
      // is not read again; else in exp_row) so that pass 3 needs no second exp.
      acc_t* parked = nullptr;
      if (g != nullptr) {
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          parked = stream ? exp_row.data() + k * C : g;
        } else {
          parked = exp_row.data() + k * C;
        }
      }
      rs.parked = parked;
      V vs(0), vbx(0), vb(0);
      const V vmx(mx);
      for (int64_t j = 0; j < C; j += W) {
        const int64_t n = std::min(W, C - j);
        const V xs = vload(x + j, n) - vmx;
        const V e = M::softmax_exp(xs);
        if (parked) e.store(parked + j, n);
        vs = vs + (n < W ? V::set(V(0), e, n) : e);
        if (linear) {
          const V bv = V::set(V(0), lin_coef(j, n), n);
          vbx = vbx + V::set(V(0), bv * xs, n);
          vb = vb + bv;
        }
      }
      rs.s = hsum(vs);
      rs.bx = linear ? hsum(vbx) : acc_t(0);
      rs.b = linear ? hsum(vb) : acc_t(0);
    };

    // The loss and pass 3 of a row, given log s, exp(-log s) and p_y.
    auto second_part = [&](const RowState& rs, acc_t log_s, acc_t inv_s, acc_t p_y,
                           const FocalTerms<ScalarMath<acc_t>>* focal_row) SWT_FLATTEN {
      const int64_t r = rs.r, y = rs.y;
      const scalar_t* x = static_cast<const scalar_t*>(a.input) + r * a.ld_input;
      scalar_t* g = a.grad ? static_cast<scalar_t*>(a.grad) + r * a.ld_grad : nullptr;
      float* st = a.stats ? a.stats + 3 * r : nullptr;
      const scalar_t* q =
          sc.prob ? static_cast<const scalar_t*>(a.target_prob) + r * a.ld_target : nullptr;
      // Every a_j is 0 for the focal loss and for index targets without label
      // smoothing (the target's own term is applied once, below): nothing to load.
      const bool zero_coef = sc.focal || (!sc.prob && sc.eps == acc_t(0));
      auto grad_coef_at = [&](int64_t j, int64_t n) -> V {
        if (zero_coef) return V(0);
        return grad_coef<M>(a.kind, sc.cw != nullptr, sc.cw ? V::loadu(sc.cw + j, n) : V(0),
                            sc.prob ? vload(q + j, n) : V(0), V(sc.q_scale), V(sc.q_shift));
      };
      const bool linear = sc.prob || sc.eps != acc_t(0);

      // The row's loss and gradient coefficients, from shifted logits.
      const acc_t a_smooth = sc.prob ? acc_t(0) : sc.q_shift;
      const acc_t w_y = (!sc.prob && sc.cw) ? sc.cw[y] : acc_t(1);
      const RowCoef<acc_t> rc = row_coefficients<ScalarMath<acc_t>>(
          static_cast<int>(a.kind), log_s, rs.xs_y, w_y, sc.eps, acc_t(C),
          static_cast<acc_t>(a.sum_class_weight), linear ? rs.bx : acc_t(0),
          linear ? rs.b : acc_t(0), sc.gamma, sc.z_loss, rs.mx + log_s, focal_row);
      const acc_t loss = rc.loss, A = rc.A, a_target = rc.a_target;
      sc.row_loss[r] = loss;
      if (!g && !st) return;

      // Pass 3: u_j = A softmax_j - a_j; the gradient is grad_scale * u.
      const acc_t scale = sc.scale(r);
      const V vA(A), vlog_s(log_s), vscale(scale), vinv_s(inv_s), vmx(rs.mx);
      // Without statistics or per-class coefficients the gradient is one
      // product per element: exp(x_j - m) * (A / s * scale).
      const bool lean = zero_coef && st == nullptr;
      const V vlean(A * inv_s * scale);
      // The lean pass's element y, with the target's own coefficient, set in
      // its vector (a store after a streamed one would need a fence).
      const acc_t a_y = (!sc.prob && sc.cw) ? a_smooth * sc.cw[y] : a_smooth;
      const acc_t g_y = (A * p_y - a_y - a_target) * scale;
      const acc_t* parked = rs.parked;
      V vsq(0), vl1(0);
      for (int64_t j = 0; j < C; j += W) {
        const int64_t n = std::min(W, C - j);
        if (lean) {
          const V e = parked ? V::loadu(parked + j, n) : M::softmax_exp(vload(x + j, n) - vmx);
          V u = e * vlean;
          if (!sc.prob && y >= j && y < j + n) {
            u = V::blendv(u, V(g_y), V::arange(acc_t(0), acc_t(1)) == V(static_cast<acc_t>(y - j)));
          }
          vstore_out(g + j, u, n, stream);
          continue;
        }
        const V av = grad_coef_at(j, n);
        const V p = parked ? V::loadu(parked + j, n) * vinv_s
                           : M::softmax_exp(vload(x + j, n) - vmx - vlog_s);
        V u = softmax_grad_p<M>(p, vA, av);
        if (n < W) u = V::set(V(0), u, n);
        if (!sc.prob && y >= j && y < j + n) {
          // The target's own coefficient, applied to element y's lane: a
          // correction of the sum of squares afterwards would cancel
          // catastrophically when p_y is near 1.
          u = u - (V(a_target) & (V::arange(acc_t(0), acc_t(1)) == V(static_cast<acc_t>(y - j))));
        }
        if (st) {
          vsq = vsq + u * u;
          // For probability targets |p_j - q_j| feeds the GHM magnitude.
          if (sc.prob) {
            V d = (p - vload(q + j, n)).abs();
            vl1 = vl1 + (n < W ? V::set(V(0), d, n) : d);
          }
        }
        if (g) vstore_out(g + j, u * vscale, n, stream);
      }
      if (st) {
        st[0] = static_cast<float>(loss);
        st[1] = static_cast<float>(std::sqrt(hsum(vsq)));
        // GHM's g = 1 - p_y, from the p_y just computed (as the reference has it).
        st[2] = static_cast<float>(sc.prob ? acc_t(0.5) * hsum(vl1) : ghm_g_softmax<acc_t>(p_y));
      }
    };

    if (a.grad != nullptr && (stream || !std::is_same_v<scalar_t, acc_t>)) {
      exp_row.resize(block * C);
    }
    for (int64_t r0 = begin; r0 < end; r0 += block) {
      const int64_t nb = std::min(block, end - r0);
      for (int64_t k = 0; k < nb; ++k) first_part(r0 + k, k, rows[k]);
      if (block == 1) {
        const RowState& rs = rows[0];
        if (rs.skip) continue;
        const acc_t log_s = std::log(rs.s);
        // p_y only feeds the lean pass's target element and the statistics.
        const bool want_p_y = !sc.prob && (a.stats || a.grad);
        second_part(rs, log_s, std::exp(-log_s), want_p_y ? std::exp(rs.xs_y - log_s) : acc_t(0),
                    nullptr);
        continue;
      }
      // The block's log s, exp(-log s) and p_y = exp(x_y - m - log s), lane
      // by lane (an ignored row's lane holds s = 1 and is not used).
      for (int64_t k = 0; k < kBlockRows; ++k) {
        const bool live = k < nb && !rows[k].skip;
        lane_s[k] = live ? rows[k].s : acc_t(1);
        lane_xs_y[k] = live ? rows[k].xs_y : acc_t(0);
      }
      for (int64_t k = 0; k < kBlockRows; k += W) {
        const V vlog = M::log(V::loadu(lane_s + k));
        vlog.store(lane_log_s + k);
        M::exp(-vlog).store(lane_inv_s + k);
        const V logp = V::loadu(lane_xs_y + k) - vlog;
        M::exp(logp).store(lane_p_y + k);
        if (sc.focal) {  // the focal terms too, lane by lane
          const FocalTerms<M> ft = focal_terms<M>(logp, V(sc.gamma));
          ft.mod.store(lane_focal_mod + k);
          ft.g.store(lane_focal_g + k);
        }
      }
      for (int64_t k = 0; k < nb; ++k) {
        if (rows[k].skip) continue;
        FocalTerms<ScalarMath<acc_t>> ft{};
        if (sc.focal) ft = {lane_focal_mod[k], lane_focal_g[k]};
        second_part(rows[k], lane_log_s[k], lane_inv_s[k], sc.prob ? acc_t(0) : lane_p_y[k],
                    sc.focal ? &ft : nullptr);
      }
    }
    if (stream) stream_fence();
  });
}

// ---------------------------------------------------------------------------
// Element-wise losses.
// TARGET_GRAD: also store d(loss)/d(target); a separate instantiation, so
// that the usual call computes none of it.
template <typename scalar_t, int64_t KIND, bool TARGET_GRAD>
void elem_kernel_typed(const ElemArgs& a) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vectorized<acc_t>;
  using M = VecMath<acc_t>;
  constexpr int64_t W = V::size();
  constexpr bool kSigmoid = KIND == kSigmoidFocal || KIND == kBCEWithLogits;
  const int64_t S = a.per_sample;
  const auto* input = static_cast<const scalar_t*>(a.input);
  const auto* target = static_cast<const scalar_t*>(a.target);
  auto* grad = static_cast<scalar_t*>(a.grad);
  auto* target_grad = static_cast<scalar_t*>(a.target_grad);
  auto* out_elem = static_cast<scalar_t*>(a.out_elem);
  const auto* weight = static_cast<const acc_t*>(a.weight);
  const auto* pos_weight = static_cast<const acc_t*>(a.pos_weight);
  const auto* sample_weight = static_cast<const acc_t*>(a.sample_weight);
  const auto* grad_scale = static_cast<const acc_t*>(a.grad_scale);
  auto* sample_loss = static_cast<acc_t*>(a.sample_loss);
  const V vgamma = M::splat(a.gamma), valpha = M::splat(a.alpha), vdelta = M::splat(a.delta);
  const bool use_alpha = a.alpha >= 0;
  const int gamma_code = focal_gamma_code(a.gamma);
  // Streamed outputs start on a vector boundary and every vector stays on
  // one (flat, or samples a whole number of vectors long): a line is never
  // written partly streamed.
  const auto vector_aligned = [](const void* p) {
    return reinterpret_cast<uintptr_t>(p) % sizeof(Vectorized<float>) == 0;
  };
  const bool stream = a.samples * S * static_cast<int64_t>(sizeof(scalar_t)) >= stream_bytes() &&
                      (grad == nullptr || vector_aligned(grad)) &&
                      (target_grad == nullptr || vector_aligned(target_grad)) &&
                      (elem_flat(a) || (S * sizeof(scalar_t)) % sizeof(Vectorized<float>) == 0);

  // The lambdas below are always inlined: called once per vector under sample
  // weights, an out-of-line span passed its sums through memory (BCE 65536x80
  // with sample weights: 3.2 against 1.9 ms). They hold copies of what they
  // read, and each task runs its own copies (`const auto run = span;`): the
  // vector stores may alias anything, so pointers read through references were
  // reloaded after each.
  const ElemArgs args = a;
  // The n <= W elements at `at` of the flat arrays; w and pw point at the
  // vector's own weights. Called with n = W (a constant) for a full vector,
  // so that its masks and tail branches fold away.
  const auto vec = [=](int64_t at, int64_t n, const acc_t* w, const acc_t* pw, const V vsw,
                       const V vgs, V& vloss, V& vsq, V& vg) SWT_INLINE_LAMBDA {
    const ElemArgs& a = args;
    if (n == W) {
      // Without it the loads wait on memory behind the sigmoid losses' math
      // (BCE 1M x 16 with sample weights, fwd+bwd: 19.9 -> 9.1 ms; mse 8.5
      // -> 7.2 ms).
      prefetch_ahead<W * sizeof(scalar_t)>(input + at);
      prefetch_ahead<W * sizeof(scalar_t)>(target + at);
    }
    const V xv = vload(input + at, n);
    const V tv = vload(target + at, n);
    const V pwv = pw ? V::loadu(pw, n) : V(1);
    LossGrad<M> lg = elem_loss<KIND, M>(xv, tv, pwv, vgamma, valpha, use_alpha, gamma_code, vdelta);
    if (w) {
      const V wv = V::loadu(w, n);
      lg.loss = lg.loss * wv;
      lg.grad = lg.grad * wv;
      if constexpr (TARGET_GRAD) lg.target_grad = lg.target_grad * wv;
    }
    if (n < W) {
      lg.loss = V::set(V(0), lg.loss, n);
      lg.grad = V::set(V(0), lg.grad, n);
    }
    vloss = vloss + lg.loss;
    if (a.stats) {
      vsq = vsq + lg.grad * lg.grad;
      if constexpr (kSigmoid) {
        V d = (sigmoid_parts<M>(xv).p - tv).abs();
        vg = vg + (n < W ? V::set(V(0), d, n) : d);
      }
    }
    if (grad) vstore_out(grad + at, lg.grad * vgs, n, stream);
    if constexpr (TARGET_GRAD) vstore_out(target_grad + at, lg.target_grad * vgs, n, stream);
    if (out_elem) vstore(out_elem + at, lg.loss * vsw, n);
  };
  // Elements [off, off + len) of the flat arrays; w and pw already offset.
  const auto span = [=](int64_t off, int64_t len, const acc_t* w, const acc_t* pw, const V vsw,
                        const V vgs, V& vloss, V& vsq, V& vg) SWT_INLINE_LAMBDA {
    int64_t j = 0;
    for (; j + W <= len; j += W) {
      vec(off + j, W, w ? w + j : nullptr, pw ? pw + j : nullptr, vsw, vgs, vloss, vsq, vg);
    }
    if (j < len) {
      vec(off + j, len - j, w ? w + j : nullptr, pw ? pw + j : nullptr, vsw, vgs, vloss, vsq, vg);
    }
  };

  // A flat span of elements (see elem_flat): block k of kElemSumBlock
  // elements leaves its sum in sample_loss[k].
  if (elem_flat(a)) {
    const int64_t total = a.samples * S;
    const int64_t blocks = elem_partial_sums(a);
    const auto scale_of = [=](int64_t i) {
      return V(grad_scale ? grad_scale[args.grad_scale_uniform ? 0 : i] : acc_t(1));
    };
    const bool by_vector = elem_flat_by_vector(a);
    const auto sample_weight_of = [=](int64_t i) {
      return V(sample_weight ? sample_weight[i] : acc_t(1));
    };
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      // This task's own copies (see span).
      const auto run = span;
      const auto run_vec = vec;
      const auto scale_at = scale_of;
      const auto sample_weight_at = sample_weight_of;
      const acc_t* const w_base = weight;
      const acc_t* const pw_base = pos_weight;
      const bool w_full = a.weight_full, pw_full = a.pos_weight_full;
      for (int64_t k = begin; k < end; ++k) {
        const int64_t off = k * kElemSumBlock, len = std::min(kElemSumBlock, total - off);
        V vloss(0), vsq(0), vg(0);
        if (!by_vector) {  // weights absent or full; one scale for all
          run(off, len, w_base ? w_base + off : nullptr, pw_base ? pw_base + off : nullptr, V(1),
              scale_at(0), vloss, vsq, vg);
          sample_loss[k] = hsum(vloss);
          continue;
        }
        // Vector by vector (each in one sample, len a multiple of W), the
        // sample's weight and scale changing at its boundary; a weight of one
        // row is read at the vector's place in its sample.
        const auto at_vector = [off](const acc_t* p, bool full, int64_t j, int64_t in_sample) {
          return p ? p + (full ? off + j : in_sample) : nullptr;
        };
        int64_t i = off / S, left = S - off % S;
        V vsw = sample_weight_at(i), vgs = scale_at(i);
        for (int64_t j = 0; j < len; j += W, left -= W) {
          if (left == 0) {
            ++i;
            left = S;
            vsw = sample_weight_at(i);
            vgs = scale_at(i);
          }
          V vl(0);
          run_vec(off + j, W, at_vector(w_base, w_full, j, S - left),
                  at_vector(pw_base, pw_full, j, S - left), vsw, vgs, vl, vsq, vg);
          vloss = vloss + vl * vsw;
        }
        sample_loss[k] = hsum(vloss);
      }
      if (stream) stream_fence();
    });
    return;
  }

  // One sample; copied per task as span is.
  const auto sample = [=](int64_t i, V& vloss, V& vsq, V& vg) SWT_INLINE_LAMBDA {
    const int64_t off = i * S;
    const acc_t* w = weight ? weight + (args.weight_full ? off : 0) : nullptr;
    const acc_t* pw = pos_weight ? pos_weight + (args.pos_weight_full ? off : 0) : nullptr;
    const V vsw(sample_weight ? sample_weight[i] : acc_t(1));
    const V vgs(grad_scale ? grad_scale[args.grad_scale_uniform ? 0 : i] : acc_t(1));
    span(off, S, w, pw, vsw, vgs, vloss, vsq, vg);
    return vsw;
  };

  if (!a.stats) {
    // No per-sample loss wanted: block k of samples leaves its weighted sum in
    // sample_loss[k], with no horizontal sum per sample.
    const int64_t spb = elem_samples_per_sum(a);
    at::parallel_for(0, elem_partial_sums(a), 1, [&](int64_t begin, int64_t end) {
      const auto run_sample = sample;
      for (int64_t k = begin; k < end; ++k) {
        V vtotal(0), vsq(0), vg(0);
        for (int64_t i = k * spb, e = std::min(a.samples, i + spb); i < e; ++i) {
          V vloss(0);
          const V vsw = run_sample(i, vloss, vsq, vg);
          vtotal = vtotal + vloss * vsw;
        }
        sample_loss[k] = hsum(vtotal);
      }
      if (stream) stream_fence();
    });
    return;
  }

  at::parallel_for(0, a.samples, grain_rows(S), [&](int64_t begin, int64_t end) {
    const auto run_sample = sample;
    for (int64_t i = begin; i < end; ++i) {
      V vloss(0), vsq(0), vg(0);
      run_sample(i, vloss, vsq, vg);
      const acc_t l = hsum(vloss);
      sample_loss[i] = l;
      float* st = a.stats + 3 * i;
      st[0] = static_cast<float>(l);
      st[1] = static_cast<float>(std::sqrt(hsum(vsq)));
      st[2] = S > 0 ? static_cast<float>(hsum(vg) / acc_t(S)) : 0.f;
    }
    if (stream) stream_fence();
  });
}

}  // namespace CPU_CAPABILITY

namespace CPU_CAPABILITY {
void row_loss_kernel(const RowArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dtype, "samplewt_row_loss",
                                  [&] {
                                    if (a.cols <= kNarrowCols) {
                                      narrow_row_kernel_typed<scalar_t>(a);
                                    } else {
                                      row_kernel_typed<scalar_t>(a);
                                    }
                                  });
}

void elem_loss_kernel(const ElemArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dtype, "samplewt_elem_loss", [&] {
    with_elem_loss(a.kind, [&](auto kind) {
      constexpr int64_t K = decltype(kind)::value;
      if (a.target_grad) {
        elem_kernel_typed<scalar_t, K, true>(a);
      } else {
        elem_kernel_typed<scalar_t, K, false>(a);
      }
    });
  });
}
}  // namespace CPU_CAPABILITY

}  // namespace cpu
}  // namespace samplewt
