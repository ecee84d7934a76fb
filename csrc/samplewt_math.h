// Per-element loss and gradient formulas, shared by the CPU and CUDA kernels.
//
// Torch-free on purpose: the CUDA kernels include it and must compile with a
// plain `nvcc -c`, and the CPU kernels instantiate the same templates, so the
// CPU tests exercise the exact formulas the GPU runs.
//
// Element-wise formulas are written once against a math policy `M`:
//   M::V             value type (float, double, or a SIMD vector)
//   M::splat(c)      broadcast a constant
//   M::exp/log/log1p/expm1/abs/max/min/sqrt
//   M::max_bound/min_bound(v, c)  max/min with a bound c that is never NaN
//   M::exp_nonpos    exp of x <= 0 (the sigmoid losses' exp(-|x|)), within
//                    about 1 ulp, and 0 where the result would be denormal
//   M::softmax_exp   exp for softmax terms, where a few ulp do not matter
//   M::select(c,a,b) branch-free choice; comparisons of V give M's mask type
// ScalarMath<T> below is the policy for scalars (host and device); the CPU
// provides a SIMD policy over at::vec::Vectorized with the same members.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "loss_kinds.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SWT_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined on the host too: GCC left sigmoid_parts out of line in the
// long flat span, and its four vectors went through memory on every call.
#define SWT_HD inline __attribute__((always_inline))
#else
#define SWT_HD inline
#endif
// The same for a hot lambda of a host kernel.
#if defined(__GNUC__) && !defined(__CUDACC__)
#define SWT_INLINE_LAMBDA __attribute__((always_inline))
#else
#define SWT_INLINE_LAMBDA
#endif

// Each CPU instruction-set translation unit compiles these templates with its
// own target flags; a distinct inline namespace per unit keeps the linker from
// merging an AVX-512 instantiation into the portable path.
#ifndef SWT_ISA_NAMESPACE
#define SWT_ISA_NAMESPACE portable
#endif

namespace samplewt {

// The element-wise losses. One is added here and nowhere else in C++ but its
// schema (op_schemas.h): its kind (before kNumElemLosses), its op in
// kElemOps, and its formula and branch in elem_loss() below. The op layer
// registers every kElemOps entry on each device; both devices' kernels take
// the kind through with_elem_loss().
enum ElemLoss : int64_t {
  kSigmoidFocal,
  kBCEWithLogits,
  kMSE,
  kL1,
  kHuber,
  kNumElemLosses
};

struct ElemOp {
  const char* name;  // the op's schema name
  ElemLoss kind;
  // reduction="mean" divides by sum(weight) when a weight is given, as
  // F.mse_loss and F.l1_loss do; otherwise by the element count.
  bool mean_over_weight;
};

inline constexpr ElemOp kElemOps[] = {
    {"sigmoid_focal_loss", kSigmoidFocal, false},
    {"binary_cross_entropy_with_logits", kBCEWithLogits, false},
    {"mse_loss", kMSE, true},
    {"l1_loss", kL1, true},
    {"huber_loss", kHuber, false},
};
static_assert(sizeof(kElemOps) / sizeof(kElemOps[0]) == kNumElemLosses,
              "every ElemLoss needs its op in kElemOps");

inline namespace SWT_ISA_NAMESPACE {

template <typename T>
struct ScalarMath {
  using V = T;
  using Scalar = T;  // a value shared by every row (V's lanes, on the CPU)
  static SWT_HD V splat(double c) { return static_cast<T>(c); }
  static SWT_HD V exp(V x) { return std::exp(x); }
  static SWT_HD V exp_nonpos(V x) { return std::exp(x); }
  static SWT_HD V softmax_exp(V x) { return std::exp(x); }
  static SWT_HD V log(V x) { return std::log(x); }
  static SWT_HD V log1p(V x) { return std::log1p(x); }
  static SWT_HD V log1p_unit(V x) { return std::log1p(x); }
  static SWT_HD V expm1(V x) { return std::expm1(x); }
  static SWT_HD V abs(V x) { return std::fabs(x); }
  static SWT_HD V sqrt(V x) { return std::sqrt(x); }
  // NaN-propagating max/min, like torch.clamp: fmax would drop the NaN.
  static SWT_HD V max(V a, V b) { return (a != a || a > b) ? a : b; }
  static SWT_HD V min(V a, V b) { return (a != a || a < b) ? a : b; }
  // Against a bound c that is never NaN (the SIMD policies' cheaper form).
  static SWT_HD V max_bound(V v, V c) { return max(v, c); }
  static SWT_HD V min_bound(V v, V c) { return min(v, c); }
  static SWT_HD V select(bool c, V a, V b) { return c ? a : b; }
};

// ---------------------------------------------------------------------------
// Building blocks

// e = exp(-|x|) is the one transcendental shared by every sigmoid-based loss:
// sigmoid, softplus and log-sigmoid all follow from it without overflow.
template <class M>
struct SigmoidParts {
  typename M::V p;         // sigmoid(x)
  typename M::V q;         // sigmoid(-x) = 1 - p, without cancellation
  typename M::V sp_pos;    // softplus(x)  = log(1 + e^x)
  typename M::V sp_neg;    // softplus(-x) = -log sigmoid(x)
};

template <class M>
SWT_HD SigmoidParts<M> sigmoid_parts(typename M::V x) {
  using V = typename M::V;
  const V zero = M::splat(0.0), one = M::splat(1.0);
  const V e = M::exp_nonpos(-M::abs(x));
  const V inv = one / (one + e);
  const V l1pe = M::log1p_unit(e);  // e in (0, 1]
  const auto pos = x >= zero;
  const V e_inv = e * inv;
  SigmoidParts<M> s;
  s.p = M::select(pos, inv, e_inv);
  s.q = M::select(pos, e_inv, inv);
  // max(+-x, 0) + l1pe with the sign already known: the same values (a NaN x
  // makes l1pe NaN), without the NaN-propagating max (four SIMD instructions).
  s.sp_pos = M::select(pos, x + l1pe, l1pe);
  s.sp_neg = M::select(pos, l1pe, l1pe - x);
  return s;
}

// b^gamma for b in [0, 1], with 0^0 = 1 as torch.pow has it.
template <class M>
SWT_HD typename M::V pow_unit(typename M::V b, typename M::V gamma) {
  using V = typename M::V;
  const V zero = M::splat(0.0), one = M::splat(1.0);
  return M::select(gamma == zero, one, M::exp(gamma * M::log(b)));
}

// d/db b^gamma = gamma * b^(gamma-1), given b^gamma; 0 where b == 0 so that a
// saturated element contributes no NaN (its other factor is 0 there).
template <class M>
SWT_HD typename M::V dpow_unit(typename M::V b, typename M::V b_pow_gamma,
                               typename M::V gamma) {
  using V = typename M::V;
  const V zero = M::splat(0.0);
  return M::select(b > zero, gamma * b_pow_gamma / b, zero);
}

// Which closed form focal_pow takes for gamma (focal_gamma_code): the
// integers 0..3 are their own codes; k + 1/2 have the codes below.
enum FocalGammaCode : int {
  kGammaGeneral = -1,  // exp(gamma log b)
  kGammaHalf = 10,     // 0.5
  kGammaOneHalf = 11,  // 1.5
  kGammaTwoHalf = 12,  // 2.5
};

// The focal factor b^gamma and its derivative. The usual gammas go without a
// log/exp per element: integers 0..3 by multiplication, and k + 1/2
// (0.5, 1.5, 2.5) as b^k sqrt(b). focal_gamma_code() picks the case on the
// host.
template <class M>
SWT_HD void focal_pow(typename M::V b, typename M::V gamma, int gamma_code,
                      typename M::V& b_pow, typename M::V& d_pow) {
  using V = typename M::V;
  const V zero = M::splat(0.0), one = M::splat(1.0);
  switch (gamma_code) {
    case 0: b_pow = one; d_pow = zero; return;
    case 1: b_pow = b; d_pow = one; return;
    case 2: b_pow = b * b; d_pow = M::splat(2.0) * b; return;
    case 3: d_pow = b * b; b_pow = d_pow * b; d_pow = M::splat(3.0) * d_pow; return;
    case kGammaHalf: {  // the derivative is 0 at b = 0, where its factor is 0 too
      const V r = M::sqrt(b);
      b_pow = r;
      d_pow = M::select(b > zero, M::splat(0.5) / r, zero);
      return;
    }
    case kGammaOneHalf: {
      const V r = M::sqrt(b);
      b_pow = b * r;
      d_pow = M::splat(1.5) * r;
      return;
    }
    case kGammaTwoHalf: {
      const V r = M::sqrt(b);
      b_pow = b * b * r;
      d_pow = M::splat(2.5) * b * r;
      return;
    }
    default:
      b_pow = pow_unit<M>(b, gamma);
      d_pow = dpow_unit<M>(b, b_pow, gamma);
  }
}

SWT_HD int focal_gamma_code(double gamma) {
  for (int k = 0; k <= 3; ++k) {
    if (gamma == k) return k;
    if (k < 3 && gamma == k + 0.5) return kGammaHalf + k;
  }
  return kGammaGeneral;
}

// ---------------------------------------------------------------------------
// Element-wise losses: the loss of one element, d(loss)/d(input) and
// d(loss)/d(target). Kernels store target_grad only when asked, and the
// compiler drops its arithmetic where it is not stored.

template <class M>
struct LossGrad {
  typename M::V loss;
  typename M::V grad;
  typename M::V target_grad;
};

// torchvision.ops.sigmoid_focal_loss:
//   ce = BCE(x, t); 1 - p_t = t (1-p) + (1-t) p; loss = a_t ce (1-p_t)^gamma
// d/dt: dce/dt = -x, d(1-p_t)/dt = (1-p) - p, da_t/dt = 2 alpha - 1.
template <class M>
SWT_HD LossGrad<M> sigmoid_focal(typename M::V x, typename M::V t,
                                 typename M::V gamma, typename M::V alpha,
                                 bool use_alpha, int gamma_code = kGammaGeneral) {
  using V = typename M::V;
  const V one = M::splat(1.0), two = M::splat(2.0);
  const SigmoidParts<M> s = sigmoid_parts<M>(x);
  const V ce = s.sp_pos - x * t;
  const V b = t * s.q + (one - t) * s.p;            // 1 - p_t
  V mod, dmod_db;
  focal_pow<M>(b, gamma, gamma_code, mod, dmod_db);
  const V db_dx = s.p * s.q * (one - two * t);
  const V dmod = dmod_db * db_dx;
  V loss = ce * mod;
  V grad = (s.p - t) * mod + ce * dmod;
  V target_grad = ce * dmod_db * (s.q - s.p) - x * mod;
  if (use_alpha) {
    const V alpha_t = alpha * t + (one - alpha) * (one - t);
    target_grad = alpha_t * target_grad + (two * alpha - one) * loss;
    loss = alpha_t * loss;
    grad = alpha_t * grad;
  }
  return {loss, grad, target_grad};
}

// F.binary_cross_entropy_with_logits with pos_weight pw:
//   loss = (1-t) x + (1 + (pw-1) t) softplus(-x)
//   d/dt = (pw-1) softplus(-x) - x
template <class M>
SWT_HD LossGrad<M> bce_with_logits(typename M::V x, typename M::V t,
                                   typename M::V pos_weight) {
  using V = typename M::V;
  const V one = M::splat(1.0);
  const SigmoidParts<M> s = sigmoid_parts<M>(x);
  const V lw = one + (pos_weight - one) * t;
  return {(one - t) * x + lw * s.sp_neg, (one - t) - lw * s.q,
          (pos_weight - one) * s.sp_neg - x};
}

// torch.sign, as l1_loss's gradient has it: (0 < d) - (d < 0), so +0 for
// +-0 and for NaN.
template <class M>
SWT_HD typename M::V sign(typename M::V d) {
  using V = typename M::V;
  const V zero = M::splat(0.0), one = M::splat(1.0);
  return M::select(d > zero, one, zero) - M::select(d < zero, one, zero);
}

template <class M>
SWT_HD LossGrad<M> mse(typename M::V x, typename M::V t) {
  const typename M::V d = x - t;
  const typename M::V g = M::splat(2.0) * d;
  return {d * d, g, -g};
}

template <class M>
SWT_HD LossGrad<M> l1(typename M::V x, typename M::V t) {
  const typename M::V d = x - t;
  const typename M::V g = sign<M>(d);
  return {M::abs(d), g, -g};
}

// F.huber_loss: quadratic inside |d| < delta, linear outside. With
// c = min(|d|, delta) both pieces are c (|d| - c/2): inside, |d| times the
// exact |d|/2, the bits of d/2 * d; outside, delta (|d| - delta/2). The
// gradient, d inside and delta sign(d) outside, is d clamped to
// [-delta, delta]. The same values (NaN, -0 and |d| = delta included), with
// no select: sign's and the loss's selects made huber 0.2 ns per element
// slower than mse.
template <class M>
SWT_HD LossGrad<M> huber(typename M::V x, typename M::V t, typename M::V delta) {
  using V = typename M::V;
  const V half = M::splat(0.5);
  const V d = x - t;
  const V ad = M::abs(d);
  const V c = M::min_bound(ad, delta);  // delta > 0: never NaN
  const V g = M::min_bound(M::max_bound(d, -delta), delta);
  return {c * (ad - half * c), g, -g};
}

// One element of the element-wise loss KIND (an ElemLoss), for kernels that
// are templated on the kind. Parameters a kind does not use are ignored.
template <int KIND, class M>
SWT_HD LossGrad<M> elem_loss(typename M::V x, typename M::V t, typename M::V pos_weight,
                             typename M::V gamma, typename M::V alpha, bool use_alpha,
                             int gamma_code, typename M::V delta) {
  if constexpr (KIND == kSigmoidFocal) {
    return sigmoid_focal<M>(x, t, gamma, alpha, use_alpha, gamma_code);
  } else if constexpr (KIND == kBCEWithLogits) {
    return bce_with_logits<M>(x, t, pos_weight);
  } else if constexpr (KIND == kMSE) {
    return mse<M>(x, t);
  } else if constexpr (KIND == kL1) {
    return l1<M>(x, t);
  } else {
    static_assert(KIND == kHuber, "elem_loss: a kind without a formula");
    return huber<M>(x, t, delta);
  }
}

// Calls f(std::integral_constant<int, KIND>{}) for the runtime `kind`: the
// one place where host code turns an ElemLoss into a kernel template argument.
template <int KIND = 0, class F>
inline void with_elem_loss(int64_t kind, F&& f) {
  if constexpr (KIND + 1 >= kNumElemLosses) {
    f(std::integral_constant<int, KIND>{});
  } else if (kind == KIND) {
    f(std::integral_constant<int, KIND>{});
  } else {
    with_elem_loss<KIND + 1>(kind, f);
  }
}

// ---------------------------------------------------------------------------
// Row losses (softmax over C classes). The kernels find m = max_j x_j and
// s = sum_j exp(x_j - m), and pass the formulas below shifted logits
// x_j - m with log s in place of lse: the same algebra, but exact where the
// logits are large (m + log s would round away log s at |x| ~ 1e4).

// Merge two partial (max, sum) pairs of an online log-sum-exp.
template <typename T>
SWT_HD void lse_merge(T& m, T& s, T m2, T s2) {
  if (m2 > m) {
    s = s * std::exp(m - m2) + s2;
    m = m2;
  } else if (m2 == m || m2 != m2 || m != m) {
    s = s + s2;
    m = (m2 != m2) ? m2 : m;
  } else {
    s = s + s2 * std::exp(m2 - m);
  }
}

template <typename T>
SWT_HD T lse_finish(T m, T s) {
  // A row of -inf logits has no defined softmax; keep NaN like PyTorch.
  return m + std::log(s);
}

// Every softmax-based loss here is l = sum_c a_c (lse - x_c) for per-class
// coefficients a_c >= 0, so its gradient is (sum_c a_c) softmax_j - a_j.
// The kernels pass A = sum_c a_c and the element's own a_j (x and lse may
// both be shifted by m).
template <class M>
SWT_HD typename M::V softmax_grad_p(typename M::V p, typename M::V A, typename M::V a) {
  return A * p - a;
}

template <class M>
SWT_HD typename M::V softmax_grad(typename M::V x, typename M::V lse,
                                  typename M::V A, typename M::V a) {
  return softmax_grad_p<M>(M::softmax_exp(x - lse), A, a);
}

// Cross-entropy with an index target y, class weights cw and label smoothing
// eps, as PyTorch defines it:
//   l = (1-eps) cw_y (lse - x_y) + eps/C sum_c cw_c (lse - x_c)
// so a_c = (1-eps) cw_y [c==y] + eps/C cw_c.
template <typename T>
struct CERow {
  T loss;
  T A;         // sum_c a_c
  T a_target;  // (1-eps) cw_y, the target's extra coefficient
  T a_smooth;  // eps / C, multiplied by cw_c per class
};

template <class M, typename V = typename M::V>
SWT_HD CERow<V> ce_index_row(V lse, V x_y, V cw_y, typename M::Scalar eps, V num_classes,
                             V sum_cw, V sum_cw_x) {
  using S = typename M::Scalar;
  CERow<V> r;
  r.a_target = V(S(1) - eps) * cw_y;
  r.a_smooth = V(eps) / num_classes;
  r.A = r.a_target + r.a_smooth * sum_cw;
  r.loss = r.a_target * (lse - x_y);
  if (eps != S(0)) r.loss = r.loss + r.a_smooth * (lse * sum_cw - sum_cw_x);
  return r;
}

// Softmax focal loss of one row with log p_y = logp (Lin et al. 2017):
//   l = -alpha (1-p)^gamma log p
//   dl/dx_j = alpha g (softmax_j - [j==y]),
//   g = (1-p)^gamma - gamma p (1-p)^(gamma-1) log p
// 1-p comes from expm1 so that confident rows keep their precision.
// FocalTerms: the factors that depend on log p alone, (1-p)^gamma and g,
// under any math policy M: one row, or on the CPU a vector of rows (one per
// lane).
template <class M>
struct FocalTerms {
  typename M::V mod;  // (1-p)^gamma
  typename M::V g;
};

template <class M>
SWT_HD FocalTerms<M> focal_terms(typename M::V logp, typename M::V gamma) {
  using V = typename M::V;
  const V one_minus_p = -M::expm1(logp);
  const V p = M::exp(logp);
  const V mod = pow_unit<M>(one_minus_p, gamma);
  const V dmod = dpow_unit<M>(one_minus_p, mod, gamma);
  return {mod, mod - dmod * p * logp};
}

// The coefficients of one row, for the CPU and the CUDA row kernels alike.
//
// b_c, class c's coefficient in the loss's linear term sum_c b_c x_c (label
// smoothing, probability targets): cw_c for index targets, and
// cw_c ((1-eps) q_c + eps/C) for probability targets, with q_scale = 1-eps
// and q_shift = eps/C. Without class weights (has_cw false) cw_c is 1 and
// the value passed for it is ignored.
template <class M>
SWT_HD typename M::V linear_coef(int kind, bool has_cw, typename M::V cw_c, typename M::V q_c,
                                 typename M::V q_scale, typename M::V q_shift) {
  if (kind == kCrossEntropyProb) {
    const typename M::V qa = q_scale * q_c + q_shift;
    return has_cw ? qa * cw_c : qa;
  }
  return has_cw ? cw_c : M::splat(1.0);
}

// a_c of softmax_grad without the target's own term: eps/C cw_c for index
// targets, b_c for probability targets, 0 for the focal loss.
template <class M>
SWT_HD typename M::V grad_coef(int kind, bool has_cw, typename M::V cw_c, typename M::V q_c,
                               typename M::V q_scale, typename M::V q_shift) {
  if (kind == kCrossEntropyProb) return linear_coef<M>(kind, has_cw, cw_c, q_c, q_scale, q_shift);
  if (kind == kFocal) return M::splat(0.0);
  return has_cw ? cw_c * q_shift : q_shift;
}

// A row's loss (without sample weight) and its gradient coefficients: the
// gradient is A softmax_j - a_j, minus a_target at the target class.
template <typename T>
struct RowCoef {
  T loss;
  T A;
  T a_target;
};

// From the row's log-sum-exp lse and target logit x_y (both may be shifted
// by the row max), w_y the target's class weight (focal: its alpha; 1
// without, and for probability targets), sum_cw = sum_c cw_c, and the linear
// sums bx = sum_c b_c x_c and b = sum_c b_c where the loss has a linear term.
//
// z-loss (PaLM) adds z w_y lse^2 with the unshifted lse_abs, weighted like
// the loss's own term; its gradient 2 z w_y lse softmax_j only adds to A.
// focal: the focal row's terms when the caller has them, else null. Under
// the CPU's SIMD policy each lane is a row (the narrow kernel); kind, eps
// and z_loss are the same for every row.
template <class M, typename V = typename M::V>
SWT_HD RowCoef<V> row_coefficients(int kind, V lse, V x_y, V w_y, typename M::Scalar eps,
                                   V num_classes, V sum_cw, V bx, V b, V gamma,
                                   typename M::Scalar z_loss, V lse_abs,
                                   const FocalTerms<M>* focal = nullptr) {
  using S = typename M::Scalar;
  RowCoef<V> r;
  if (kind == kCrossEntropyProb) {
    r.A = b;
    r.loss = lse * b - bx;
    r.a_target = V(S(0));
  } else if (kind == kFocal) {
    const V logp = x_y - lse;
    const FocalTerms<M> ft = focal ? *focal : focal_terms<M>(logp, gamma);
    r.loss = -w_y * ft.mod * logp;  // w_y: the target's alpha
    r.A = r.a_target = w_y * ft.g;
  } else {
    const CERow<V> cr = ce_index_row<M>(lse, x_y, w_y, eps, num_classes, sum_cw, bx);
    r.loss = cr.loss;
    r.A = cr.A;
    r.a_target = cr.a_target;
  }
  if (z_loss != S(0)) {
    const V z = V(z_loss) * w_y;
    r.loss = r.loss + z * lse_abs * lse_abs;
    r.A = r.A + V(S(2)) * z * lse_abs;
  }
  return r;
}

// 1 - p_y, the GHM gradient magnitude of a softmax row, from p_y (which the
// row's gradient needs anyway; the reference computes it the same way).
template <typename T>
SWT_HD T ghm_g_softmax(T p_y) {
  return T(1) - p_y;
}

}  // namespace SWT_ISA_NAMESPACE
}  // namespace samplewt
