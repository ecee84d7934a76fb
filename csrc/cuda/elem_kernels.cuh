// Element-wise kernels (every ElemLoss of samplewt_math.h) over `samples`
// samples of `per_sample` contiguous elements: G lanes per sample for short samples, blocks over
// (sample, chunk) items for long ones. The per-element formulas are those of
// samplewt_math.h, evaluated through ScalarMath<acc_t>.
#pragma once

#include "device_utils.cuh"
#include "launch_plan.h"

namespace samplewt {
namespace cuda {
namespace detail {

template <typename A>
struct ElemParams {
  int64_t N, S;
  const void* input;
  const void* target;
  void* grad;
  void* target_grad;  // d(loss)/d(target), scaled as grad, or null
  void* out;  // reduction none: weighted loss per element
  const A* weight;
  bool weight_full;
  const A* pos_weight;
  bool pos_weight_full;
  const A* sw;
  int reduction;
  float* stats;
  A gamma, alpha, delta;
  bool use_alpha;
  int gamma_code;  // focal_gamma_code(gamma): see focal_pow in samplewt_math.h
  const double* denom_parts;
  int n_denom;
  double denom_const;
  double* loss_parts;
  int64_t nch;    // chunk kernel: chunks per sample
  int64_t chunk;  // elements per chunk (multiple of the vector width)
  A* ws;          // chunk kernel with nch > 1 and stats: (N * nch, 3)
};

// GI: the sigmoid focal loss's gamma_code fixed at compile time (2, the
// default gamma), or kGammaGeneral to take p.gamma_code at run time.
template <int KIND, int GI, typename A>
__device__ __forceinline__ LossGrad<ScalarMath<A>> elem_eval(A x, A t, A pw,
                                                             const ElemParams<A>& p) {
  return elem_loss<KIND, ScalarMath<A>>(x, t, pw, p.gamma, p.alpha, p.use_alpha,
                                        GI >= 0 ? GI : p.gamma_code, p.delta);
}

// Per-sample sums of one thread's elements.
template <typename A>
struct ElemSums {
  A loss = A(0);  // sum_j weight_ij l_ij
  A sq = A(0);    // sum_j (weight_ij dl_ij)^2
  A gh = A(0);    // sum_j |sigmoid(x_ij) - t_ij| (sigmoid losses)
};

// One thread's share of columns [c0, c1) of sample i (c0 a multiple of VW).
template <typename T, int KIND, int GI, int VW>
__device__ __forceinline__ void elem_span(const ElemParams<AccT<T>>& p, int64_t i, int64_t c0,
                                          int64_t c1, int lane, int nthr, AccT<T> w_i,
                                          AccT<T> scale, bool want_stats,
                                          ElemSums<AccT<T>>& acc) {
  using A = AccT<T>;
  using M = ScalarMath<A>;
  constexpr bool kSigmoid = KIND == kSigmoidFocal || KIND == kBCEWithLogits;
  const int64_t base = i * p.S;
  const T* x = static_cast<const T*>(p.input) + base;
  const T* tg = static_cast<const T*>(p.target) + base;
  T* g = p.grad ? static_cast<T*>(p.grad) + base : nullptr;
  T* tg_out = p.target_grad ? static_cast<T*>(p.target_grad) + base : nullptr;
  T* o = p.out ? static_cast<T*>(p.out) + base : nullptr;
  const A* wr = p.weight ? p.weight + (p.weight_full ? base : 0) : nullptr;
  const A* pwr = p.pos_weight ? p.pos_weight + (p.pos_weight_full ? base : 0) : nullptr;
  auto one = [&](int64_t c, A xv, A tv, A& gout, A& lout, A& tgout) {
    const A pw = (KIND == kBCEWithLogits && pwr) ? pwr[c] : A(1);
    LossGrad<M> lg = elem_eval<KIND, GI>(xv, tv, pw, p);
    if (wr) {
      const A wv = wr[c];
      lg.loss = lg.loss * wv;
      lg.grad = lg.grad * wv;
      lg.target_grad = lg.target_grad * wv;
    }
    acc.loss += lg.loss;
    if (want_stats) {
      acc.sq += lg.grad * lg.grad;
      if (kSigmoid) acc.gh += M::abs(sigmoid_parts<M>(xv).p - tv);
    }
    gout = lg.grad * scale;
    lout = lg.loss * w_i;
    tgout = lg.target_grad * scale;
  };
  const int64_t nvec = (c1 - c0) / VW;
  for (int64_t v = lane; v < nvec; v += nthr) {
    const int64_t c = c0 + v * VW;
    A xv[VW], tv[VW], gv[VW], lv[VW], tgv[VW];
    load_acc<T, VW, true>(x + c, xv);
    load_acc<T, VW, true>(tg + c, tv);
#pragma unroll
    for (int k = 0; k < VW; ++k) one(c + k, xv[k], tv[k], gv[k], lv[k], tgv[k]);
    if (g) store_acc<T, VW>(g + c, gv);
    if (o) store_acc<T, VW>(o + c, lv);
    if (tg_out) store_acc<T, VW>(tg_out + c, tgv);
  }
  for (int64_t c = c0 + nvec * VW + lane; c < c1; c += nthr) {
    A xv[1], tv[1], gv[1], lv[1], tgv[1];
    load_acc<T, 1>(x + c, xv);
    load_acc<T, 1>(tg + c, tv);
    one(c, xv[0], tv[0], gv[0], lv[0], tgv[0]);
    if (g) store_acc<T, 1>(g + c, gv);
    if (o) store_acc<T, 1>(o + c, lv);
    if (tg_out) store_acc<T, 1>(tg_out + c, tgv);
  }
}

template <typename A>
__device__ __forceinline__ A elem_scale(const ElemParams<A>& p, A w, double denom) {
  if (p.reduction == kMean && w != A(0)) return static_cast<A>(static_cast<double>(w) / denom);
  return w;
}

template <typename A>
__device__ __forceinline__ void elem_write_stats(const ElemParams<A>& p, int64_t i,
                                                 const ElemSums<A>& s) {
  float* st = p.stats + 3 * i;
  st[0] = static_cast<float>(s.loss);
  st[1] = static_cast<float>(ScalarMath<A>::sqrt(s.sq));
  st[2] = p.S > 0 ? static_cast<float>(s.gh / static_cast<A>(p.S)) : 0.f;
}

// Samples of up to a few thousand elements: G lanes per sample.
template <typename T, int KIND, int GI, int G, int VW>
__global__ void __launch_bounds__(kSmallBlock, MinBlocks<T>::k256)
    elem_rows_kernel(const ElemParams<AccT<T>> p) {
  using A = AccT<T>;
  __shared__ double sh_d[32];
  const double denom = block_denominator(p.denom_parts, p.n_denom, p.denom_const, sh_d);
  constexpr int RPB = kSmallBlock / G;
  const int lane = static_cast<int>(threadIdx.x) % G;
  const int grp = static_cast<int>(threadIdx.x) / G;
  const bool want_stats = p.stats != nullptr;
  const bool want_sums = want_stats || p.loss_parts != nullptr;
  double total = 0.0;
  for (int64_t tile = blockIdx.x; tile * RPB < p.N; tile += gridDim.x) {
    const int64_t i = tile * RPB + grp;
    const bool active = i < p.N;
    ElemSums<A> s;
    A w = A(1);
    if (active) {
      w = p.sw ? p.sw[i] : A(1);
      elem_span<T, KIND, GI, VW>(p, i, 0, p.S, lane, G, w, elem_scale(p, w, denom), want_stats,
                                 s);
    }
    if (want_sums) {
      s.loss = group_sum<G>(s.loss);
      if (want_stats) {
        s.sq = group_sum<G>(s.sq);
        s.gh = group_sum<G>(s.gh);
      }
    }
    if (active && lane == 0) {
      if (p.loss_parts) {
        total += p.sw ? static_cast<double>(w) * static_cast<double>(s.loss)
                      : static_cast<double>(s.loss);
      }
      if (want_stats) elem_write_stats(p, i, s);
    }
  }
  if (p.loss_parts) {
    const double b = block_sum(total, sh_d);
    if (threadIdx.x == 0) p.loss_parts[blockIdx.x] = b;
  }
}

// Long samples: blocks over (sample, chunk) items.
template <typename T, int KIND, int GI, int VW>
__global__ void __launch_bounds__(kChunkBlock, MinBlocks<T>::k256)
    elem_chunk_kernel(const ElemParams<AccT<T>> p) {
  using A = AccT<T>;
  __shared__ double sh_d[32];
  __shared__ A sh[32];
  const double denom = block_denominator(p.denom_parts, p.n_denom, p.denom_const, sh_d);
  const bool want_stats = p.stats != nullptr;
  const bool want_sums = want_stats || p.loss_parts != nullptr;
  const int tid = static_cast<int>(threadIdx.x);
  double total = 0.0;
  const int64_t items = p.N * p.nch;
  for (int64_t it = blockIdx.x; it < items; it += gridDim.x) {
    const int64_t i = it / p.nch;
    const int64_t k = it - i * p.nch;
    const int64_t c0 = k * p.chunk;
    const int64_t c1 = c0 + p.chunk < p.S ? c0 + p.chunk : p.S;
    const A w = p.sw ? p.sw[i] : A(1);
    ElemSums<A> s;
    elem_span<T, KIND, GI, VW>(p, i, c0, c1, tid, kChunkBlock, w, elem_scale(p, w, denom),
                               want_stats, s);
    if (want_sums) {
      s.loss = block_sum(s.loss, sh);
      if (want_stats) {
        s.sq = block_sum(s.sq, sh);
        s.gh = block_sum(s.gh, sh);
      }
    }
    if (tid == 0) {
      if (p.loss_parts) {
        total += p.sw ? static_cast<double>(w) * static_cast<double>(s.loss)
                      : static_cast<double>(s.loss);
      }
      if (want_stats) {
        if (p.nch == 1) {
          elem_write_stats(p, i, s);
        } else {
          A* wsi = p.ws + 3 * it;
          wsi[0] = s.loss;
          wsi[1] = s.sq;
          wsi[2] = s.gh;
        }
      }
    }
  }
  if (p.loss_parts && tid == 0) p.loss_parts[blockIdx.x] = total;
}

template <typename A>
__global__ void __launch_bounds__(256) elem_chunk_stats_kernel(const ElemParams<A> p) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    ElemSums<A> s;
    for (int64_t k = 0; k < p.nch; ++k) {
      const A* wsi = p.ws + 3 * (i * p.nch + k);
      s.loss += wsi[0];
      s.sq += wsi[1];
      s.gh += wsi[2];
    }
    elem_write_stats(p, i, s);
  }
}

// The mean's denominator of the element-wise losses: sum_i w_i * share_i,
// share_i = sum_j weight_ij (mse/l1 with weight) or per_sample.
template <typename A>
__global__ void __launch_bounds__(256)
    elem_prepass_kernel(int64_t N, int64_t S, const A* sw, const A* weight, bool weight_full,
                        double* parts) {
  __shared__ double sh[32];
  double v = 0.0;
  if (weight && weight_full) {
    // One warp per sample sums its weights.
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
    const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
    for (int64_t i = warp; i < N; i += nwarps) {
      double share = 0.0;
      for (int64_t j = lane; j < S; j += 32) share += static_cast<double>(weight[i * S + j]);
      share = group_sum<32>(share);
      if (lane == 0) v += (sw ? static_cast<double>(sw[i]) : 1.0) * share;
    }
  } else {
    double share = static_cast<double>(S);
    if (weight) {  // one row of weights shared by every sample
      double ws = 0.0;
      for (int64_t j = threadIdx.x; j < S; j += blockDim.x) ws += static_cast<double>(weight[j]);
      share = block_sum(ws, sh);
    }
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < N;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      v += (sw ? static_cast<double>(sw[i]) : 1.0) * share;
    }
  }
  v = block_sum(v, sh);
  if (threadIdx.x == 0) parts[blockIdx.x] = v;
}

}  // namespace detail
}  // namespace cuda
}  // namespace samplewt
