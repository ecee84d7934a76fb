// Row (softmax) kernels: cross_entropy with index or probability targets and
// focal_loss, in three regimes (see launch_plan.h):
//   small C  (ceil(C/VW) <= 256): G = 1, 4 or 32 lanes per row, 256/G rows
//            per 256-thread block, grid-stride over row tiles.
//   large C  : one block (128/256/512 threads) per row, grid-stride over
//            rows; pass 1 keeps an online max / sum-exp per thread in
//            registers, pass 2 re-reads the row (streaming loads) and writes
//            the gradient with streaming stores.
//   split    : very long rows and too few rows to fill the GPU: each row is
//            cut into chunks; kernel A writes per-chunk (max, sum-exp,
//            linear sums) to a workspace, kernel B merges them and writes
//            the chunk's gradient, and a small kernel merges the per-chunk
//            gradient norms when statistics are requested.
// The per-row loss and gradient coefficients come from samplewt_math.h, as
// on the CPU.
//
// Invalid class targets (outside [0, C) and not ignore_index) are never used
// to index memory: without validation, that row's loss is NaN, its gradient
// row is zero and its statistics are (NaN, 0, NaN). The mean's denominator
// counts the row as the reference does (weight of class 0), so the other
// rows keep their gradients while the reduced loss is NaN.
#pragma once

#include "device_utils.cuh"
#include "launch_plan.h"

namespace samplewt {
namespace cuda {
namespace detail {

template <typename A>
struct RowParams {
  int64_t rows;
  int cols;
  const void* input;
  int64_t ld_input;
  void* grad;
  int64_t ld_grad;
  const int64_t* target;
  const void* target_prob;
  int64_t ld_target;
  const A* cw;
  const A* sw;
  int reduction;
  int64_t ignore_index;
  A q_scale;   // 1 - eps (probability targets)
  A q_shift;   // eps / C (probability targets), the smoothing share a_smooth
  A eps;
  A gamma;
  A z_loss;
  bool linear;  // the loss has the linear term sum_c a_c x_c
  void* out;
  float* stats;
  const double* denom_parts;
  int n_denom;
  double denom_const;
  double* loss_parts;
  // split regime
  int nch;      // chunks per row
  int chunk;    // elements per chunk (a multiple of the vector width)
  A* ws_part;   // (rows * nch, 4): max, sum-exp, sum a_c x_c, sum a_c
  A* ws_xy;     // (rows): x_y of index targets
  A* ws_stat;   // (rows * nch, 2): sum u^2, sum |p - q|
};

// What a row's target says, the same in every lane that handles the row.
template <typename A>
struct RowTarget {
  int64_t y;     // class index (index targets), or -1
  bool ignored;  // y == ignore_index
  bool invalid;  // y outside [0, C) and not ignored
  bool live;     // active, not ignored, not invalid
  A w;           // sample weight (1 without)
};

template <int KIND, typename A>
__device__ __forceinline__ RowTarget<A> row_target(const RowParams<A>& p, int64_t r, bool active) {
  RowTarget<A> t;
  t.y = -1;
  t.ignored = false;
  t.invalid = false;
  t.w = A(1);
  if (active) {
    if (KIND != kCrossEntropyProb) {
      t.y = p.target[r];
      t.ignored = t.y == p.ignore_index;
      t.invalid = !t.ignored && (t.y < 0 || t.y >= p.cols);
    }
    if (p.sw) t.w = p.sw[r];
  }
  t.live = active && !t.ignored && !t.invalid;
  return t;
}

// Class c's coefficients b_c and a_c (samplewt_math.h), with KIND fixed.
template <int KIND, typename A>
__device__ __forceinline__ A lin_coef(const RowParams<A>& p, int c, A qv) {
  return linear_coef<ScalarMath<A>>(KIND, p.cw != nullptr, p.cw ? p.cw[c] : A(0), qv, p.q_scale,
                                    p.q_shift);
}

template <int KIND, typename A>
__device__ __forceinline__ A grad_coef_at(const RowParams<A>& p, int c, A qv) {
  return grad_coef<ScalarMath<A>>(KIND, p.cw != nullptr, p.cw ? p.cw[c] : A(0), qv, p.q_scale,
                                  p.q_shift);
}

// Online update of (m, s) with a block of values whose max is lm.
template <typename A>
__device__ __forceinline__ void online_rescale(A& m, A& s, A lm) {
  if (lm > m || lm != lm) {  // a NaN makes (m, s) NaN for good
    s = s * ScalarMath<A>::exp(m - lm);
    m = lm;
  }
}

template <typename A, int N>
__device__ __forceinline__ void online_add(A& m, A& s, const A (&v)[N]) {
  A lm = v[0];
#pragma unroll
  for (int k = 1; k < N; ++k) lm = ScalarMath<A>::max(lm, v[k]);
  online_rescale(m, s, lm);
  // m == -inf means every value so far is -inf: they add nothing (and
  // exp(-inf - -inf) would be NaN).
  if (m > neg_inf<A>()) {
#pragma unroll
    for (int k = 0; k < N; ++k) s += ScalarMath<A>::exp(v[k] - m);
  }
}

// Pass 1's step over two vectors: columns ca.. and cb.. (values xa, xb).
template <int KIND, int VW, bool LIN, typename A>
__device__ __forceinline__ void pass1_pair(const RowParams<A>& p, int ca, int cb, const A (&xa)[VW],
                                           const A (&xb)[VW], A& m, A& s, A& ax, A& as) {
  A both[2 * VW];
#pragma unroll
  for (int k = 0; k < VW; ++k) {
    both[k] = xa[k];
    both[VW + k] = xb[k];
  }
  online_add(m, s, both);
  if (LIN) {
#pragma unroll
    for (int k = 0; k < VW; ++k) {
      const A a1 = lin_coef<KIND>(p, ca + k, A(0));
      const A a2 = lin_coef<KIND>(p, cb + k, A(0));
      ax += a1 * xa[k] + a2 * xb[k];
      as += a1 + a2;
    }
  }
}

// Pass 1 of one thread over columns [c0, c1) of a row (c0 a multiple of VW):
// online max and sum-exp, and the linear sums when LIN.
template <typename T, int KIND, int VW, bool LIN>
__device__ __forceinline__ void row_pass1(const RowParams<AccT<T>>& p, const T* x, const T* q,
                                          int c0, int c1, int lane, int nthr, AccT<T>& m,
                                          AccT<T>& s, AccT<T>& ax, AccT<T>& as) {
  using A = AccT<T>;
  constexpr bool kProb = KIND == kCrossEntropyProb;
  const int nvec = (c1 - c0) / VW;
  int v = lane;
  // Four vectors in flight per thread (the large-C kernel runs at most two
  // 512-thread blocks per multiprocessor: the bytes in flight come from
  // each thread), converted and merged two at a time.
  if constexpr (!kProb && VW > 1) {
    for (; v + 3 * nthr < nvec; v += 4 * nthr) {
      uint4 raw[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) raw[u] = load16(x + c0 + (v + u * nthr) * VW);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        A xa[VW], xb[VW];
        Pack<T>::unpack(raw[2 * h], xa);
        Pack<T>::unpack(raw[2 * h + 1], xb);
        const int ca = c0 + (v + 2 * h * nthr) * VW;
        pass1_pair<KIND, VW, LIN>(p, ca, ca + nthr * VW, xa, xb, m, s, ax, as);
      }
    }
  }
  // Two vectors in flight per thread (probability targets load x and q:
  // one vector of each).
  for (; !kProb && v + nthr < nvec; v += 2 * nthr) {
    const int ca = c0 + v * VW, cb = ca + nthr * VW;
    A xa[VW], xb[VW];
    load_acc<T, VW>(x + ca, xa);
    load_acc<T, VW>(x + cb, xb);
    pass1_pair<KIND, VW, LIN>(p, ca, cb, xa, xb, m, s, ax, as);
  }
  for (; v < nvec; v += nthr) {
    const int ca = c0 + v * VW;
    A xa[VW];
    load_acc<T, VW>(x + ca, xa);
    online_add(m, s, xa);
    if (LIN) {
      A qa[VW];
      if (kProb) load_acc<T, VW>(q + ca, qa);
#pragma unroll
      for (int k = 0; k < VW; ++k) {
        const A a1 = lin_coef<KIND>(p, ca + k, kProb ? qa[k] : A(0));
        ax += a1 * xa[k];
        as += a1;
      }
    }
  }
  // Columns past the last full vector.
  for (int c = c0 + nvec * VW + lane; c < c1; c += nthr) {
    A xa[1];
    load_acc<T, 1>(x + c, xa);
    online_add(m, s, xa);
    if (LIN) {
      const A a1 = lin_coef<KIND>(p, c, kProb ? TypeInfo<T>::to_acc(q[c]) : A(0));
      ax += a1 * xa[0];
      as += a1;
    }
  }
}

// A row's loss and gradient coefficients (see samplewt_math.h).
template <typename A>
struct RowResult {
  A loss;      // without sample weight
  A lse;
  A A_;        // sum_c a_c
  A a_target;  // extra coefficient of the target class
  A scale;     // gradient factor: w (or w / denominator for the mean); 0 if dead
  A x_y;
};

template <int KIND, typename A>
__device__ __forceinline__ RowResult<A> row_result(const RowParams<A>& p, const RowTarget<A>& t,
                                                   A m, A s, A ax, A as, A x_y, double denom) {
  RowResult<A> r;
  r.lse = lse_finish(m, s);
  r.x_y = x_y;
  r.a_target = A(0);
  r.loss = A(0);
  r.A_ = A(0);
  if (t.live) {
    const A w_y = (KIND != kCrossEntropyProb && p.cw) ? p.cw[t.y] : A(1);
    const A sum_cw = p.cw ? as : static_cast<A>(p.cols);
    const RowCoef<A> rc = row_coefficients<ScalarMath<A>>(
        KIND, r.lse, x_y, w_y, p.eps, static_cast<A>(p.cols), sum_cw, p.linear ? ax : A(0), as,
        p.gamma, p.z_loss, r.lse);
    r.loss = rc.loss;
    r.A_ = rc.A;
    r.a_target = rc.a_target;
  }
  A scale = t.live ? t.w : A(0);
  if (p.reduction == kMean && scale != A(0)) {
    scale = static_cast<A>(static_cast<double>(scale) / denom);
  }
  r.scale = scale;
  return r;
}

// Pass 2 of one thread over columns [c0, c1): u_j = A softmax_j - a_j (minus
// a_target at the target), the gradient u * scale, and the statistics sums.
template <typename T, int KIND, int VW, bool LIN>
__device__ __forceinline__ void row_pass2(const RowParams<AccT<T>>& p, const T* x, const T* q,
                                          T* g, int c0, int c1, int lane, int nthr,
                                          const RowResult<AccT<T>>& res, int64_t y,
                                          bool want_stats, AccT<T>& sq, AccT<T>& l1) {
  using A = AccT<T>;
  using M = ScalarMath<A>;
  constexpr bool kProb = KIND == kCrossEntropyProb;
  auto body = [&](int c, A xv, A qv, A& gout) {
    // Index targets without label smoothing have a_c = 0: nothing to load.
    const A a = (kProb || (KIND == kCrossEntropyIndex && LIN)) ? grad_coef_at<KIND>(p, c, qv)
                                                               : A(0);
    A u = softmax_grad<M>(xv, res.lse, res.A_, a);
    if (!kProb && c == y) u -= res.a_target;
    if (want_stats) {
      sq += u * u;
      if (kProb) l1 += M::abs(M::exp(xv - res.lse) - qv);
    }
    gout = u * res.scale;
  };
  // Backwards through the row: its end, loaded last by pass 1, is the part
  // most likely still in L2.
  const int nvec = (c1 - c0) / VW;
  for (int c = c0 + nvec * VW + lane; c < c1; c += nthr) {
    A xa[1], ga[1];
    load_acc<T, 1>(x + c, xa);
    body(c, xa[0], kProb ? TypeInfo<T>::to_acc(q[c]) : A(0), ga[0]);
    if (g) store_acc<T, 1>(g + c, ga);
  }
  if (lane >= nvec) return;
  auto one_vector = [&](int v) {
    const int ca = c0 + v * VW;
    A xa[VW], qa[VW], ga[VW];
    load_acc<T, VW, true>(x + ca, xa);
    if (kProb) load_acc<T, VW, true>(q + ca, qa);
#pragma unroll
    for (int k = 0; k < VW; ++k) body(ca + k, xa[k], kProb ? qa[k] : A(0), ga[k]);
    if (g) store_acc<T, VW>(g + ca, ga);
  };
  int v = lane + ((nvec - 1 - lane) / nthr) * nthr;  // this thread's last vector
  if constexpr (kProb) {
    // Targets double the loads of a step already: one vector at a time.
    for (; v >= 0; v -= nthr) one_vector(v);
  } else {
    if constexpr (VW > 1) {
      // Four vectors in flight: v, v - nthr, v - 2 nthr, v - 3 nthr, all >= lane.
      for (; v >= 3 * nthr; v -= 4 * nthr) {
        uint4 raw[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) raw[u] = load16<true>(x + c0 + (v - u * nthr) * VW);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int ca = c0 + (v - u * nthr) * VW;
          A xa[VW], ga[VW];
          Pack<T>::unpack(raw[u], xa);
#pragma unroll
          for (int k = 0; k < VW; ++k) body(ca + k, xa[k], A(0), ga[k]);
          if (g) store_acc<T, VW>(g + ca, ga);
        }
      }
    }
    for (; v >= nthr; v -= 2 * nthr) {  // v and v - nthr, both >= lane
      const int ca = c0 + v * VW, cb = ca - nthr * VW;
      A xa[VW], xb[VW], ga[VW], gb[VW];
      load_acc<T, VW, true>(x + ca, xa);
      load_acc<T, VW, true>(x + cb, xb);
#pragma unroll
      for (int k = 0; k < VW; ++k) {
        body(ca + k, xa[k], A(0), ga[k]);
        body(cb + k, xb[k], A(0), gb[k]);
      }
      if (g) {
        store_acc<T, VW>(g + ca, ga);
        store_acc<T, VW>(g + cb, gb);
      }
    }
    if (v >= 0) one_vector(v);
  }
}

template <typename T, int VW>
__device__ __forceinline__ void zero_fill(T* g, int c0, int c1, int lane, int nthr) {
  const int nvec = (c1 - c0) / VW;
  for (int v = lane; v < nvec; v += nthr) store_zero<T, VW>(g + c0 + v * VW);
  for (int c = c0 + nvec * VW + lane; c < c1; c += nthr) store_zero<T, 1>(g + c);
}

// Writes a finished row's loss (or adds it to the block's total) and stats.
template <typename T, int KIND>
__device__ __forceinline__ void row_write(const RowParams<AccT<T>>& p, int64_t r,
                                          const RowTarget<AccT<T>>& t,
                                          const RowResult<AccT<T>>& res, AccT<T> sq, AccT<T> l1,
                                          bool write_stats_norm, double& total) {
  using A = AccT<T>;
  const A loss = t.ignored ? A(0) : (t.invalid ? quiet_nan<A>() : res.loss);
  if (p.reduction == kNone) {
    static_cast<T*>(p.out)[r] = TypeInfo<T>::from_acc(p.sw ? loss * t.w : loss);
  } else {
    total += p.sw ? static_cast<double>(t.w) * static_cast<double>(loss)
                  : static_cast<double>(loss);
  }
  if (p.stats) {
    float* st = p.stats + 3 * r;
    if (t.ignored) {
      st[0] = 0.f;
      st[2] = 0.f;
    } else if (t.invalid) {
      st[0] = static_cast<float>(quiet_nan<A>());
      st[2] = static_cast<float>(quiet_nan<A>());
    } else {
      st[0] = static_cast<float>(res.loss);
      if (KIND == kCrossEntropyProb) {
        if (write_stats_norm) st[2] = static_cast<float>(A(0.5) * l1);
      } else {
        st[2] = static_cast<float>(ghm_g_softmax<A>(ScalarMath<A>::exp(res.x_y - res.lse)));
      }
    }
    if (write_stats_norm) {
      st[1] = t.live ? static_cast<float>(ScalarMath<A>::sqrt(sq > A(0) ? sq : A(0))) : 0.f;
    }
  }
}

template <typename T>
__device__ __forceinline__ const T* row_ptr(const void* base, int64_t r, int64_t ld) {
  return static_cast<const T*>(base) + r * ld;
}

// --- small C: G lanes per row ----------------------------------------------

template <typename T, int KIND, int G, int VW>
__global__ void __launch_bounds__(kSmallBlock, MinBlocks<T>::k256)
    row_small_kernel(const RowParams<AccT<T>> p) {
  using A = AccT<T>;
  __shared__ double sh_d[32];
  const double denom = block_denominator(p.denom_parts, p.n_denom, p.denom_const, sh_d);
  constexpr int RPB = kSmallBlock / G;
  const int lane = static_cast<int>(threadIdx.x) % G;
  const int grp = static_cast<int>(threadIdx.x) / G;
  const int C = p.cols;
  const bool want_stats = p.stats != nullptr;
  double total = 0.0;
  // The trip count is the same for every thread of the block, so the lane
  // shuffles below always run with the whole warp converged.
  for (int64_t tile = blockIdx.x; tile * RPB < p.rows; tile += gridDim.x) {
    const int64_t r = tile * RPB + grp;
    const bool active = r < p.rows;
    const RowTarget<A> t = row_target<KIND>(p, r, active);
    const T* x = active ? row_ptr<T>(p.input, r, p.ld_input) : nullptr;
    const T* q = (KIND == kCrossEntropyProb && active)
                     ? row_ptr<T>(p.target_prob, r, p.ld_target)
                     : nullptr;
    T* g = (p.grad && active) ? static_cast<T*>(p.grad) + r * p.ld_grad : nullptr;
    A m = neg_inf<A>(), s = A(0), ax = A(0), as = A(0), x_y = A(0);
    if (t.live) {
      if (KIND != kCrossEntropyProb) x_y = TypeInfo<T>::to_acc(x[t.y]);
      if (p.linear) {
        row_pass1<T, KIND, VW, true>(p, x, q, 0, C, lane, G, m, s, ax, as);
      } else {
        row_pass1<T, KIND, VW, false>(p, x, q, 0, C, lane, G, m, s, ax, as);
      }
    }
    group_merge_lse<G>(m, s);
    if (p.linear) {
      ax = group_sum<G>(ax);
      as = group_sum<G>(as);
    }
    // Every read of the row (x_y included) precedes any gradient write: the
    // gradient may overwrite the logits.
    __syncwarp();
    const RowResult<A> res = row_result<KIND>(p, t, m, s, ax, as, x_y, denom);
    A sq = A(0), l1 = A(0);
    if (g || want_stats) {
      if (t.live) {
        if (p.linear) {
          row_pass2<T, KIND, VW, true>(p, x, q, g, 0, C, lane, G, res, t.y, want_stats, sq, l1);
        } else {
          row_pass2<T, KIND, VW, false>(p, x, q, g, 0, C, lane, G, res, t.y, want_stats, sq, l1);
        }
      } else if (g) {
        zero_fill<T, VW>(g, 0, C, lane, G);
      }
    }
    if (want_stats) {
      sq = group_sum<G>(sq);
      if (KIND == kCrossEntropyProb) l1 = group_sum<G>(l1);
    }
    if (active && lane == 0) row_write<T, KIND>(p, r, t, res, sq, l1, true, total);
  }
  if (p.loss_parts) {
    const double b = block_sum(total, sh_d);
    if (threadIdx.x == 0) p.loss_parts[blockIdx.x] = b;
  }
}

// --- large C: one block per row ---------------------------------------------

template <typename T, int KIND, int VW>
__global__ void __launch_bounds__(kBigBlockMax, MinBlocks<T>::k512)
    row_block_kernel(const RowParams<AccT<T>> p) {
  using A = AccT<T>;
  __shared__ double sh_d[32];
  __shared__ A sh[4][32];
  __shared__ double sh_denom;  // read where used: keeps registers for the row loops
  {
    const double d = block_denominator(p.denom_parts, p.n_denom, p.denom_const, sh_d);
    if (threadIdx.x == 0) sh_denom = d;
  }
  const int tid = static_cast<int>(threadIdx.x);
  const int nthr = static_cast<int>(blockDim.x);
  const int C = p.cols;
  const bool want_stats = p.stats != nullptr;
  double total = 0.0;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const RowTarget<A> t = row_target<KIND>(p, r, true);
    const T* x = row_ptr<T>(p.input, r, p.ld_input);
    const T* q =
        KIND == kCrossEntropyProb ? row_ptr<T>(p.target_prob, r, p.ld_target) : nullptr;
    T* g = p.grad ? static_cast<T*>(p.grad) + r * p.ld_grad : nullptr;
    if (!t.live) {  // uniform over the block
      if (g) zero_fill<T, VW>(g, 0, C, tid, nthr);
      if (tid == 0) {
        RowResult<A> res{};
        row_write<T, KIND>(p, r, t, res, A(0), A(0), true, total);
      }
      continue;
    }
    A m = neg_inf<A>(), s = A(0), ax = A(0), as = A(0);
    const A x_y = KIND != kCrossEntropyProb ? TypeInfo<T>::to_acc(x[t.y]) : A(0);
    if (p.linear) {
      row_pass1<T, KIND, VW, true>(p, x, q, 0, C, tid, nthr, m, s, ax, as);
    } else {
      row_pass1<T, KIND, VW, false>(p, x, q, 0, C, tid, nthr, m, s, ax, as);
    }
    // Its barriers also order every read of the row before the writes.
    block_merge4(m, s, ax, as, sh);
    const RowResult<A> res = row_result<KIND>(p, t, m, s, ax, as, x_y, sh_denom);
    A sq = A(0), l1 = A(0);
    if (g || want_stats) {
      if (p.linear) {
        row_pass2<T, KIND, VW, true>(p, x, q, g, 0, C, tid, nthr, res, t.y, want_stats, sq, l1);
      } else {
        row_pass2<T, KIND, VW, false>(p, x, q, g, 0, C, tid, nthr, res, t.y, want_stats, sq,
                                      l1);
      }
      if (want_stats) {
        A dummy_m = A(0), dummy_s = A(0);
        // Reuses the 4-way reduction: sums of sq and l1 (the merge part is idle).
        block_merge4(dummy_m, dummy_s, sq, l1, sh);
      }
    }
    if (tid == 0) row_write<T, KIND>(p, r, t, res, sq, l1, true, total);
  }
  if (p.loss_parts && tid == 0) p.loss_parts[blockIdx.x] = total;
}

// --- split rows: chunks of one row on several blocks -------------------------

// The chunk that a block of the split kernels handles: block b holds chunk k
// of row r, columns [c0, c1).
struct SplitChunk {
  int64_t b, r;
  int k, c0, c1;
};

template <typename A>
__device__ __forceinline__ SplitChunk split_chunk(const RowParams<A>& p) {
  SplitChunk ch;
  ch.b = blockIdx.x;
  ch.r = ch.b / p.nch;
  ch.k = static_cast<int>(ch.b - ch.r * p.nch);
  ch.c0 = ch.k * p.chunk;
  ch.c1 = min(p.cols, ch.c0 + p.chunk);
  return ch;
}

template <typename T, int KIND, int VW>
__global__ void __launch_bounds__(kSplitBlock, MinBlocks<T>::k256)
    row_split_partial_kernel(const RowParams<AccT<T>> p) {
  using A = AccT<T>;
  __shared__ A sh[4][32];
  const auto [b, r, k, c0, c1] = split_chunk(p);
  const RowTarget<A> t = row_target<KIND>(p, r, true);
  A* part = p.ws_part + 4 * b;
  if (!t.live) {
    if (threadIdx.x == 0) {
      part[0] = neg_inf<A>();
      part[1] = A(0);
      part[2] = A(0);
      part[3] = A(0);
      if (k == 0) p.ws_xy[r] = A(0);
    }
    return;
  }
  const T* x = row_ptr<T>(p.input, r, p.ld_input);
  const T* q = KIND == kCrossEntropyProb ? row_ptr<T>(p.target_prob, r, p.ld_target) : nullptr;
  A m = neg_inf<A>(), s = A(0), ax = A(0), as = A(0);
  const int tid = static_cast<int>(threadIdx.x);
  if (p.linear) {
    row_pass1<T, KIND, VW, true>(p, x, q, c0, c1, tid, kSplitBlock, m, s, ax, as);
  } else {
    row_pass1<T, KIND, VW, false>(p, x, q, c0, c1, tid, kSplitBlock, m, s, ax, as);
  }
  block_merge4(m, s, ax, as, sh);
  if (tid == 0) {
    part[0] = m;
    part[1] = s;
    part[2] = ax;
    part[3] = as;
    // x_y is saved before kernel B may overwrite the logits in place.
    if (k == 0 && KIND != kCrossEntropyProb) p.ws_xy[r] = TypeInfo<T>::to_acc(x[t.y]);
  }
}

template <typename T, int KIND, int VW>
__global__ void __launch_bounds__(kSplitBlock, MinBlocks<T>::k256)
    row_split_grad_kernel(const RowParams<AccT<T>> p) {
  using A = AccT<T>;
  __shared__ double sh_d[32];
  __shared__ A sh[4][32];
  const double denom = block_denominator(p.denom_parts, p.n_denom, p.denom_const, sh_d);
  const auto [b, r, k, c0, c1] = split_chunk(p);
  const int tid = static_cast<int>(threadIdx.x);
  const bool want_stats = p.stats != nullptr;
  const RowTarget<A> t = row_target<KIND>(p, r, true);
  T* g = p.grad ? static_cast<T*>(p.grad) + r * p.ld_grad : nullptr;
  double total = 0.0;
  if (!t.live) {
    if (g) zero_fill<T, VW>(g, c0, c1, tid, kSplitBlock);
    if (tid == 0) {
      if (want_stats) {
        p.ws_stat[2 * b] = A(0);
        p.ws_stat[2 * b + 1] = A(0);
      }
      if (k == 0) {
        RowResult<A> res{};
        row_write<T, KIND>(p, r, t, res, A(0), A(0), false, total);
        if (p.loss_parts) p.loss_parts[r] = total;
      }
    }
    return;
  }
  // Merge the row's chunk partials, in chunk order (nch <= block size).
  A m = neg_inf<A>(), s = A(0), ax = A(0), as = A(0);
  if (tid < p.nch) {
    const A* part = p.ws_part + 4 * (r * p.nch + tid);
    m = part[0];
    s = part[1];
    ax = part[2];
    as = part[3];
  }
  block_merge4(m, s, ax, as, sh);
  const A x_y = KIND != kCrossEntropyProb ? p.ws_xy[r] : A(0);
  const RowResult<A> res = row_result<KIND>(p, t, m, s, ax, as, x_y, denom);
  const T* x = row_ptr<T>(p.input, r, p.ld_input);
  const T* q = KIND == kCrossEntropyProb ? row_ptr<T>(p.target_prob, r, p.ld_target) : nullptr;
  A sq = A(0), l1 = A(0);
  if (g || want_stats) {
    if (p.linear) {
      row_pass2<T, KIND, VW, true>(p, x, q, g, c0, c1, tid, kSplitBlock, res, t.y, want_stats,
                                   sq, l1);
    } else {
      row_pass2<T, KIND, VW, false>(p, x, q, g, c0, c1, tid, kSplitBlock, res, t.y, want_stats,
                                    sq, l1);
    }
    if (want_stats) {
      A dm = A(0), ds = A(0);
      block_merge4(dm, ds, sq, l1, sh);
      if (tid == 0) {
        p.ws_stat[2 * b] = sq;
        p.ws_stat[2 * b + 1] = l1;
      }
    }
  }
  if (tid == 0 && k == 0) {
    row_write<T, KIND>(p, r, t, res, A(0), A(0), false, total);
    if (p.loss_parts) p.loss_parts[r] = total;
  }
}

// Gradient norms (and the probability targets' GHM term) of split rows.
template <typename A>
__global__ void __launch_bounds__(256)
    row_split_stats_kernel(int64_t rows, int nch, const A* ws_stat, bool prob, float* stats) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A sq = A(0), l1 = A(0);
    for (int k = 0; k < nch; ++k) {
      sq += ws_stat[2 * (r * nch + k)];
      l1 += ws_stat[2 * (r * nch + k) + 1];
    }
    stats[3 * r + 1] = static_cast<float>(ScalarMath<A>::sqrt(sq > A(0) ? sq : A(0)));
    // Ignored rows do not occur with probability targets; invalid ones
    // neither (no index). So every prob row is live here.
    if (prob) stats[3 * r + 2] = static_cast<float>(A(0.5) * l1);
  }
}

// --- the mean's denominator of the row losses ------------------------------
//   index targets: sum over non-ignored rows of w_r (x cw[y_r] for weighted
//   cross-entropy; an invalid y_r counts with class 0's weight, as in the
//   reference); probability targets: sum of w_r.
template <typename A>
__global__ void __launch_bounds__(256)
    row_prepass_kernel(int64_t rows, int cols, const int64_t* target, int64_t ignore_index,
                       const A* cw, const A* sw, double* parts) {
  __shared__ double sh[32];
  double v = 0.0;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double w = sw ? static_cast<double>(sw[r]) : 1.0;
    if (target) {
      const int64_t y = target[r];
      if (y == ignore_index) continue;
      if (cw) w *= static_cast<double>(cw[(y >= 0 && y < cols) ? y : 0]);
    }
    v += w;
  }
  v = block_sum(v, sh);
  if (threadIdx.x == 0) parts[blockIdx.x] = v;
}

}  // namespace detail
}  // namespace cuda
}  // namespace samplewt
